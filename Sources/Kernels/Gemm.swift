import TensorCore
#if canImport(Glibc)
import Glibc
#endif
import CHints

// GEMM out[m, n] = x[m, k] · w[n, k]^T + bias, BLIS-style (Van Zee & van de Geijn, "BLIS: A Framework for Rapidly
// Instantiating BLAS Functionality", 2015): the weight is packed into k-major panels of 16 columns (converted to
// Float32 while packing, so one micro-kernel serves f32, f16, bf16 and quantized weights), and a 6x16 register
// tile (12 ymm accumulators, 2 B loads + 6 broadcasts per k step) runs over it. x is read in place, straight from
// its rows: packing it (BLIS's A panels) cost 2-7% at prefill shapes, where every thread packed all of x.

/// A weight matrix [n, k] that can hand out 8 consecutive elements of a row as Float32.
protocol RowSource: Sendable {
    /// Elements row, col..<col+8 (col + 8 <= k).
    func load8(_ row: Int, _ col: Int) -> SIMD8<Float>
    func scalar(_ row: Int, _ col: Int) -> Float
}

struct F32Rows: RowSource, @unchecked Sendable {
    let p: UnsafePointer<Float>, k: Int
    @inline(__always) func load8(_ row: Int, _ col: Int) -> SIMD8<Float> {
        UnsafeRawPointer(p + row * k + col).loadUnaligned(as: SIMD8<Float>.self)
    }
    @inline(__always) func scalar(_ row: Int, _ col: Int) -> Float { p[row * k + col] }
}

struct F16Rows: RowSource, @unchecked Sendable {
    let p: UnsafePointer<Float16>, k: Int
    // Compiles to vcvtph2ps (F16C) with -target-cpu haswell.
    @inline(__always) func load8(_ row: Int, _ col: Int) -> SIMD8<Float> {
        f16x8(UnsafeRawPointer(p + row * k + col))
    }
    @inline(__always) func scalar(_ row: Int, _ col: Int) -> Float { Float(p[row * k + col]) }
}

struct BF16Rows: RowSource, @unchecked Sendable {
    let p: UnsafePointer<UInt16>, k: Int
    // bf16 is the top half of a Float32: widen and shift.
    @inline(__always) func load8(_ row: Int, _ col: Int) -> SIMD8<Float> {
        bf16x8(UnsafeRawPointer(p + row * k + col))
    }
    @inline(__always) func scalar(_ row: Int, _ col: Int) -> Float { bf16ToFloat(p[row * k + col]) }
}

@inline(__always) func loadU(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
}
@inline(__always) func storeU(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self)
}

/// In-register 8x8 transpose (rows r0..r7 become columns).
@inline(__always)
func transpose8x8(_ r0: SIMD8<Float>, _ r1: SIMD8<Float>, _ r2: SIMD8<Float>, _ r3: SIMD8<Float>,
                  _ r4: SIMD8<Float>, _ r5: SIMD8<Float>, _ r6: SIMD8<Float>, _ r7: SIMD8<Float>,
                  _ dst: UnsafeMutablePointer<Float>, _ stride: Int) {
    // unpack pairs of rows, then pairs of pairs, then swap 128-bit halves.
    @inline(__always) func lo(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> {
        SIMD8(a[0], b[0], a[1], b[1], a[4], b[4], a[5], b[5])
    }
    @inline(__always) func hi(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> {
        SIMD8(a[2], b[2], a[3], b[3], a[6], b[6], a[7], b[7])
    }
    @inline(__always) func lo2(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> {
        SIMD8(a[0], a[1], b[0], b[1], a[4], a[5], b[4], b[5])
    }
    @inline(__always) func hi2(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> {
        SIMD8(a[2], a[3], b[2], b[3], a[6], a[7], b[6], b[7])
    }
    let t0 = lo(r0, r1), t1 = hi(r0, r1), t2 = lo(r2, r3), t3 = hi(r2, r3)
    let t4 = lo(r4, r5), t5 = hi(r4, r5), t6 = lo(r6, r7), t7 = hi(r6, r7)
    let u0 = lo2(t0, t2), u1 = hi2(t0, t2), u2 = lo2(t1, t3), u3 = hi2(t1, t3)
    let u4 = lo2(t4, t6), u5 = hi2(t4, t6), u6 = lo2(t5, t7), u7 = hi2(t5, t7)
    storeU(SIMD8(lowHalf: u0.lowHalf, highHalf: u4.lowHalf), dst)
    storeU(SIMD8(lowHalf: u1.lowHalf, highHalf: u5.lowHalf), dst + stride)
    storeU(SIMD8(lowHalf: u2.lowHalf, highHalf: u6.lowHalf), dst + 2 * stride)
    storeU(SIMD8(lowHalf: u3.lowHalf, highHalf: u7.lowHalf), dst + 3 * stride)
    storeU(SIMD8(lowHalf: u0.highHalf, highHalf: u4.highHalf), dst + 4 * stride)
    storeU(SIMD8(lowHalf: u1.highHalf, highHalf: u5.highHalf), dst + 5 * stride)
    storeU(SIMD8(lowHalf: u2.highHalf, highHalf: u6.highHalf), dst + 6 * stride)
    storeU(SIMD8(lowHalf: u3.highHalf, highHalf: u7.highHalf), dst + 7 * stride)
}

/// How the micro-kernel reads one k step (16 columns) of a panel as two Float32 vectors.
protocol PanelLayout {
    static var bytesPerStep: Int { get }
    static func load(_ p: UnsafeRawPointer) -> (SIMD8<Float>, SIMD8<Float>)
}

/// Float32 panels (packed or widened into the thread's scratch, or pre-packed f32 weights).
enum F32Layout: PanelLayout {
    static var bytesPerStep: Int { 64 }
    @inline(__always) static func load(_ p: UnsafeRawPointer) -> (SIMD8<Float>, SIMD8<Float>) {
        (p.load(as: SIMD8<Float>.self), p.load(fromByteOffset: 32, as: SIMD8<Float>.self))
    }
}

/// Pre-packed IEEE half panels, widened by the micro-kernel itself (vcvtph2ps from memory): no widening pass over
/// each block, and half the bytes in cache.
enum F16Layout: PanelLayout {
    static var bytesPerStep: Int { 32 }
    @inline(__always) static func load(_ p: UnsafeRawPointer) -> (SIMD8<Float>, SIMD8<Float>) {
        (f16x8(p), f16x8(p + 16))
    }
}

/// Where the GEMM gets a k-major [kcur][16] panel of weight rows n0..<n0+nv, columns k0..<k0+kcur: packed now
/// from the row-major matrix into `scratch` (as Float32), or (pre-packed weights) straight from memory in the
/// source's `Layout`.
protocol PanelSource: Sendable {
    associatedtype Layout: PanelLayout = F32Layout
    func panel(n0: Int, nv: Int, k0: Int, kcur: Int, scratch: UnsafeMutablePointer<Float>) -> UnsafeRawPointer
    /// The contiguous bytes `panel` will read for this block, when there are such (pre-packed weights), so the
    /// GEMM can prefetch them while it computes the block before.
    func sourceBytes(n0: Int, k0: Int, kcur: Int) -> UnsafeRawBufferPointer?
}

extension PanelSource {
    func sourceBytes(n0: Int, k0: Int, kcur: Int) -> UnsafeRawBufferPointer? { nil }
}

/// Spreads prefetches of the next (k, n) block's weight panels over the kernel calls of the current one, so the
/// panel copy that starts the next block reads from cache instead of stalling on DRAM.
struct PanelPrefetcher {
    private var regions: [UnsafeRawBufferPointer] = []
    private var region = 0, offset = 0
    private(set) var linesPerCall = 0

    init() { regions.reserveCapacity(Gemm.nc / 16) }

    mutating func plan<S: PanelSource>(_ src: S, n0: Int, ncur: Int, k0: Int, kcur: Int, calls: Int) {
        regions.removeAll(keepingCapacity: true)
        region = 0
        offset = 0
        var bytes = 0
        var p = 0
        while p * 16 < ncur {
            guard let r = src.sourceBytes(n0: n0 + p * 16, k0: k0, kcur: kcur) else { break }
            regions.append(r)
            bytes += r.count
            p += 1
        }
        linesPerCall = calls > 0 ? (bytes / 64 + calls - 1) / calls : 0
    }

    @inline(__always) mutating func step() {
        var left = linesPerCall
        while left > 0 && region < regions.count {
            let r = regions[region]
            quantkit_prefetch(r.baseAddress! + offset)
            offset += 64
            if offset >= r.count { region += 1; offset = 0 }
            left -= 1
        }
    }
}

struct RowPanels<S: RowSource>: PanelSource {
    let rows: S
    @inline(__always)
    func panel(n0: Int, nv: Int, k0: Int, kcur: Int, scratch: UnsafeMutablePointer<Float>) -> UnsafeRawPointer {
        Gemm.packPanel(rows, n0: n0, nv: nv, k0: k0, kcur: kcur, dst: scratch)
        return UnsafeRawPointer(scratch)
    }
}

/// A weight stored k-major, [k][n] row-major (the transpose of the usual [n][k]): a panel's k step is 16
/// consecutive floats of one row, so packing is a plain copy. The backward's products read their second operand
/// this way without transposing it first.
struct KMajorPanels: PanelSource, @unchecked Sendable {
    let p: UnsafePointer<Float>
    let n: Int
    @inline(__always)
    func panel(n0: Int, nv: Int, k0: Int, kcur: Int, scratch: UnsafeMutablePointer<Float>) -> UnsafeRawPointer {
        if nv == 16 {
            for kk in 0..<kcur {
                let s = p + (k0 + kk) * n + n0, d = scratch + kk * 16
                storeU(loadU(s), d)
                storeU(loadU(s + 8), d + 8)
            }
        } else {
            for kk in 0..<kcur {
                let s = p + (k0 + kk) * n + n0, d = scratch + kk * 16
                for j in 0..<16 { d[j] = j < nv ? s[j] : 0 }
            }
        }
        return UnsafeRawPointer(scratch)
    }
}

/// Each thread's GEMM scratch (a kc x nc panel block, the edge tile, panel pointers), allocated on its first GEMM
/// and freed when the thread exits: with several column chunks per thread per GEMM, a fresh 256 KiB allocation
/// per chunk cost page faults.
final class GemmScratch {
    let pack: UnsafeMutablePointer<Float>
    let tile: UnsafeMutablePointer<Float>
    let panels: UnsafeMutablePointer<UnsafeRawPointer>

    private init() {
        pack = UnsafeMutableRawPointer.allocate(byteCount: (Gemm.kc * Gemm.nc + 96) * 4, alignment: 64)
            .bindMemory(to: Float.self, capacity: Gemm.kc * Gemm.nc + 96)
        tile = pack + Gemm.kc * Gemm.nc
        panels = UnsafeMutablePointer<UnsafeRawPointer>.allocate(capacity: Gemm.nc / 16)
    }

    deinit {
        pack.deallocate()
        panels.deallocate()
    }

    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key) { p in
            if let p { Unmanaged<GemmScratch>.fromOpaque(p).release() }
        }
        return key
    }()

    static func forThisThread() -> GemmScratch {
        if let p = pthread_getspecific(key) { return Unmanaged<GemmScratch>.fromOpaque(p).takeUnretainedValue() }
        let scratch = GemmScratch()
        pthread_setspecific(key, Unmanaged.passRetained(scratch).toOpaque())
        return scratch
    }
}

/// Row counts the micro-kernel is specialised for: the accumulators of rows past `count` fold away.
protocol StripRows { static var count: Int { get } }
enum Rows6: StripRows { static var count: Int { 6 } }
enum Rows4: StripRows { static var count: Int { 4 } }
enum Rows3: StripRows { static var count: Int { 3 } }

enum Gemm {
    static let mr = 6, nr = 16
    static let kc = 256          // k block: a 16 KiB B micro-panel stays in L1
    static let nc = 256          // columns packed at once: kc x nc x 4 = 256 KiB, in L2 (512 KiB per core)
    static let mc = 72           // rows of x per block: 72 KiB of x (one k block) reused from L2

    /// Packs rows n0..<n0+nv (nv <= 16) and columns k0..<k0+kcur of the weight into dst[kcur][16], zero-padding
    /// missing rows.
    @inline(__always)
    static func packPanel<S: RowSource>(_ src: S, n0: Int, nv: Int, k0: Int, kcur: Int, dst: UnsafeMutablePointer<Float>) {
        let k8 = kcur & ~7
        if nv == 16 {
            var kk = 0
            while kk < k8 {
                for half in 0..<2 {
                    let r = n0 + half * 8, c = k0 + kk
                    transpose8x8(src.load8(r, c), src.load8(r + 1, c), src.load8(r + 2, c), src.load8(r + 3, c),
                                 src.load8(r + 4, c), src.load8(r + 5, c), src.load8(r + 6, c), src.load8(r + 7, c),
                                 dst + kk * 16 + half * 8, 16)
                }
                kk += 8
            }
            for kk in k8..<kcur {
                for j in 0..<16 { dst[kk * 16 + j] = src.scalar(n0 + j, k0 + kk) }
            }
        } else {
            for j in 0..<16 {
                if j < nv {
                    for kk in 0..<kcur { dst[kk * 16 + j] = src.scalar(n0 + j, k0 + kk) }
                } else {
                    for kk in 0..<kcur { dst[kk * 16 + j] = 0 }
                }
            }
        }
    }

    /// C[rows x cols] (+)= A[rows][kcur] (row stride lda, read in place) · B-panel [kcur][16], with rows <= R.count
    /// and cols <= 16. Rows past `rows` re-read the last row and are not stored. With `accumulate` false the tile
    /// is overwritten with the product plus bias.
    @inline(__always)
    static func kernel<R: StripRows, L: PanelLayout>(_: R.Type, _: L.Type, _ a: UnsafePointer<Float>, _ lda: Int, _ rows: Int,
                                     _ b: UnsafeRawPointer, _ kcur: Int, _ c: UnsafeMutablePointer<Float>,
                                     _ ldc: Int, _ cols: Int, _ accumulate: Bool, _ bias: UnsafePointer<Float>?,
                                     _ tile: UnsafeMutablePointer<Float>) {
        let n = R.count
        var c00 = SIMD8<Float>(), c01 = SIMD8<Float>(), c10 = SIMD8<Float>(), c11 = SIMD8<Float>()
        var c20 = SIMD8<Float>(), c21 = SIMD8<Float>(), c30 = SIMD8<Float>(), c31 = SIMD8<Float>()
        var c40 = SIMD8<Float>(), c41 = SIMD8<Float>(), c50 = SIMD8<Float>(), c51 = SIMD8<Float>()
        // Element offsets of rows 1...5 from row 0, clamped to the last real row.
        let o1 = min(1, rows - 1) * lda, o2 = min(2, rows - 1) * lda, o3 = min(3, rows - 1) * lda
        let o4 = min(4, rows - 1) * lda, o5 = min(5, rows - 1) * lda
        var pb = b
        var pa = a
        for _ in 0..<kcur {
            let (b0, b1) = L.load(pb)
            var v = SIMD8<Float>(repeating: pa[0]); c00.addProduct(v, b0); c01.addProduct(v, b1)
            if n > 1 { v = SIMD8<Float>(repeating: pa[o1]); c10.addProduct(v, b0); c11.addProduct(v, b1) }
            if n > 2 { v = SIMD8<Float>(repeating: pa[o2]); c20.addProduct(v, b0); c21.addProduct(v, b1) }
            if n > 3 { v = SIMD8<Float>(repeating: pa[o3]); c30.addProduct(v, b0); c31.addProduct(v, b1) }
            if n > 4 { v = SIMD8<Float>(repeating: pa[o4]); c40.addProduct(v, b0); c41.addProduct(v, b1) }
            if n > 5 { v = SIMD8<Float>(repeating: pa[o5]); c50.addProduct(v, b0); c51.addProduct(v, b1) }
            pb += L.bytesPerStep
            pa += 1
        }
        var b0 = SIMD8<Float>(), b1 = SIMD8<Float>()
        if !accumulate, let bias {
            if cols == 16 { b0 = loadU(bias); b1 = loadU(bias + 8) } else {
                for j in 0..<cols { if j < 8 { b0[j] = bias[j] } else { b1[j - 8] = bias[j] } }
            }
        }
        if rows == n && cols == 16 {
            @inline(__always) func put(_ p: UnsafeMutablePointer<Float>, _ x0: SIMD8<Float>, _ x1: SIMD8<Float>) {
                if accumulate {
                    storeU(loadU(p) + x0, p); storeU(loadU(p + 8) + x1, p + 8)
                } else {
                    storeU(x0 + b0, p); storeU(x1 + b1, p + 8)
                }
            }
            put(c, c00, c01)
            if n > 1 { put(c + ldc, c10, c11) }
            if n > 2 { put(c + 2 * ldc, c20, c21) }
            if n > 3 { put(c + 3 * ldc, c30, c31) }
            if n > 4 { put(c + 4 * ldc, c40, c41) }
            if n > 5 { put(c + 5 * ldc, c50, c51) }
        } else {
            storeU(c00, tile); storeU(c01, tile + 8); storeU(c10, tile + 16); storeU(c11, tile + 24)
            storeU(c20, tile + 32); storeU(c21, tile + 40); storeU(c30, tile + 48); storeU(c31, tile + 56)
            storeU(c40, tile + 64); storeU(c41, tile + 72); storeU(c50, tile + 80); storeU(c51, tile + 88)
            for r in 0..<rows {
                for j in 0..<cols {
                    let v = tile[r * 16 + j]
                    if accumulate { c[r * ldc + j] += v } else { c[r * ldc + j] = v + (j < 8 ? b0[j] : b1[j - 8]) }
                }
            }
        }
    }

    /// How many rows the next strip takes when `left` rows remain, and which kernel runs it: 6-row strips, with
    /// the last 7-8 rows as 4 + 3/4 and a short tail on the 3-row kernel, so m = 128 wastes no rows (a 6-row
    /// kernel on a 2-row tail costs a full strip; 4 rows keep 8 accumulators, enough to hide the FMA latency).
    @inline(__always)
    static func strip(_ left: Int) -> Int {
        switch left {
        case 7, 8, 4: return 4
        case 1, 2, 3: return left
        case 5: return 5
        default: return 6
        }
    }

    /// Runs the kernel for one strip of `rows` rows (from `strip`).
    @inline(__always)
    static func stripKernel<L: PanelLayout>(_ layout: L.Type, _ a: UnsafePointer<Float>, _ lda: Int, _ rows: Int,
                                            _ b: UnsafeRawPointer, _ kcur: Int, _ c: UnsafeMutablePointer<Float>,
                                            _ ldc: Int, _ cols: Int, _ accumulate: Bool, _ bias: UnsafePointer<Float>?,
                                            _ tile: UnsafeMutablePointer<Float>) {
        switch rows {
        case 4: kernel(Rows4.self, layout, a, lda, rows, b, kcur, c, ldc, cols, accumulate, bias, tile)
        case 1, 2, 3: kernel(Rows3.self, layout, a, lda, rows, b, kcur, c, ldc, cols, accumulate, bias, tile)
        default: kernel(Rows6.self, layout, a, lda, rows, b, kcur, c, ldc, cols, accumulate, bias, tile)
        }
    }

    /// The size of equal blocks (a multiple of `multiple`, at most `limit`) that cover `total` in the fewest blocks.
    static func evenBlock(_ total: Int, _ limit: Int, multiple: Int) -> Int {
        guard total > limit else { return limit }
        let blocks = (total + limit - 1) / limit
        let size = (total + blocks - 1) / blocks
        return min(limit, (size + multiple - 1) / multiple * multiple)
    }

    /// Computes out rows mRange x columns nRange with a per-thread packing buffer.
    static func block<S: PanelSource>(_ src: S, x: UnsafePointer<Float>, k: Int, n: Int, bias: UnsafePointer<Float>?,
                                      out: UnsafeMutablePointer<Float>, mRange: Range<Int>, nRange: Range<Int>) {
        let scratch = GemmScratch.forThisThread()
        let pack = scratch.pack, tile = scratch.tile, panelPtr = scratch.panels
        // Equal blocks instead of full ones plus a remainder (k 384: 192 + 192, not 256 + 128): a short last block
        // pays the same packing and tile load/store overhead for half the work.
        let kcB = evenBlock(k, kc, multiple: 8), ncB = evenBlock(nRange.count, nc, multiple: 16)
        var prefetcher = PanelPrefetcher()
        let strips = ((mRange.count + mc - 1) / mc) * ((mc + mr - 1) / mr)
        var jc = nRange.lowerBound
        while jc < nRange.upperBound {
            let ncur = min(ncB, nRange.upperBound - jc)
            let panels = (ncur + 15) / 16
            var pc = 0
            while pc < k {
                let kcur = min(kcB, k - pc)
                for p in 0..<panels {
                    panelPtr[p] = src.panel(n0: jc + p * 16, nv: min(16, ncur - p * 16), k0: pc, kcur: kcur,
                                            scratch: pack + p * kcur * 16)
                }
                // The block after this one: the next k range of these columns, else the next columns' first.
                if pc + kcur < k {
                    prefetcher.plan(src, n0: jc, ncur: ncur, k0: pc + kcur, kcur: min(kcB, k - pc - kcur),
                                    calls: panels * strips)
                } else if jc + ncur < nRange.upperBound {
                    prefetcher.plan(src, n0: jc + ncur, ncur: min(ncB, nRange.upperBound - jc - ncur), k0: 0,
                                    kcur: min(kcB, k), calls: panels * strips)
                } else {
                    prefetcher.plan(src, n0: 0, ncur: 0, k0: 0, kcur: 0, calls: 0)
                }
                var ic = mRange.lowerBound
                while ic < mRange.upperBound {
                    let mcur = min(mc, mRange.upperBound - ic)
                    for p in 0..<panels {
                        let col = jc + p * 16
                        let cols = min(16, ncur - p * 16)
                        var ir = 0
                        while ir < mcur {
                            let rows = strip(mcur - ir)
                            let row = ic + ir
                            prefetcher.step()
                            stripKernel(S.Layout.self, x + row * k + pc, k, rows, panelPtr[p], kcur, out + row * n + col, n, cols,
                                        pc > 0, bias.map { $0 + col }, tile)
                            ir += rows
                        }
                    }
                    ic += mcur
                }
                pc += kcur
            }
            jc += ncur
        }
    }

    /// Splits the work across threads: over 16-column panels when there are enough, else over 6-row strips.
    static func run<S: RowSource>(_ src: S, x: UnsafePointer<Float>, m: Int, k: Int, n: Int,
                                  bias: UnsafePointer<Float>?, out: UnsafeMutablePointer<Float>, threads: Int) {
        run(panels: RowPanels(rows: src), x: x, m: m, k: k, n: n, bias: bias, out: out, threads: threads)
    }

    static func run<S: PanelSource>(panels src: S, x: UnsafePointer<Float>, m: Int, k: Int, n: Int,
                                    bias: UnsafePointer<Float>?, out: UnsafeMutablePointer<Float>, threads: Int) {
        let xs = SendablePointer(x), os = SendablePointer(out), bs = bias.map { SendablePointer($0) }
        let panels = (n + 15) / 16
        let work = m * n * k
        let t = work < 1 << 17 ? 1 : threads
        if panels >= 2 * t || m < 12 * t {
            // Column chunks taken dynamically, largest first: on a shared host one core often runs slower than the
            // other, and with one fixed half each the faster core sat waiting at every GEMM's end. Each chunk takes
            // 1/(2t) of the panels left (guided scheduling), so the last chunks are single panels (a short wait at
            // the end) while the early ones are large (each chunk re-reads all of x).
            var bounds = [0]
            if t > 1 {
                var left = panels
                while left > 0 {
                    let size = min(left, max(1, left / (2 * t)))
                    bounds.append(bounds[bounds.count - 1] + size)
                    left -= size
                }
            } else {
                bounds.append(panels)
            }
            let cuts = bounds
            Parallel.forEach(cuts.count - 1, threads: t) { c in
                block(src, x: xs.base, k: k, n: n, bias: bs?.base, out: os.base, mRange: 0..<m,
                      nRange: (cuts[c] * 16)..<min(n, cuts[c + 1] * 16))
            }
        } else {
            let strips = (m + mr - 1) / mr
            let chunks = t == 1 ? 1 : max(t, min(strips / 2, chunksPerThread * t))
            Parallel.forEach(chunks, threads: t) { c in
                let lo = strips * c / chunks, hi = strips * (c + 1) / chunks
                block(src, x: xs.base, k: k, n: n, bias: bs?.base, out: os.base,
                      mRange: (lo * mr)..<min(m, hi * mr), nRange: 0..<n)
            }
        }
    }
}

/// Matrix-vector products for decode and tiny batches (m <= 3): weight rows are streamed once per pair of x rows,
/// 4 weight rows at a time, converted on the fly. Memory-bandwidth bound.
enum Gemv {
    @inline(__always)
    static func rows<S: RowSource>(_ src: S, x: UnsafePointer<Float>, m: Int, k: Int, n: Int,
                                   bias: UnsafePointer<Float>?, out: UnsafeMutablePointer<Float>, range: Range<Int>) {
        let k8 = k & ~7
        var i = 0
        while i < m {
            let two = m - i >= 2
            let x0 = x + i * k, x1 = two ? x + (i + 1) * k : x + i * k
            var j = range.lowerBound
            while j < range.upperBound {
                let nw = min(4, range.upperBound - j)
                let r0 = j, r1 = nw > 1 ? j + 1 : j, r2 = nw > 2 ? j + 2 : j, r3 = nw > 3 ? j + 3 : j
                var a00 = SIMD8<Float>(), a01 = SIMD8<Float>(), a02 = SIMD8<Float>(), a03 = SIMD8<Float>()
                var a10 = SIMD8<Float>(), a11 = SIMD8<Float>(), a12 = SIMD8<Float>(), a13 = SIMD8<Float>()
                var kk = 0
                if two {
                    while kk < k8 {
                        let w0 = src.load8(r0, kk), w1 = src.load8(r1, kk), w2 = src.load8(r2, kk), w3 = src.load8(r3, kk)
                        let v0 = loadU(x0 + kk), v1 = loadU(x1 + kk)
                        a00.addProduct(v0, w0); a01.addProduct(v0, w1); a02.addProduct(v0, w2); a03.addProduct(v0, w3)
                        a10.addProduct(v1, w0); a11.addProduct(v1, w1); a12.addProduct(v1, w2); a13.addProduct(v1, w3)
                        kk += 8
                    }
                } else {
                    while kk < k8 {
                        let v0 = loadU(x0 + kk)
                        a00.addProduct(v0, src.load8(r0, kk)); a01.addProduct(v0, src.load8(r1, kk))
                        a02.addProduct(v0, src.load8(r2, kk)); a03.addProduct(v0, src.load8(r3, kk))
                        kk += 8
                    }
                }
                var s0 = SIMD4<Float>(a00.sum(), a01.sum(), a02.sum(), a03.sum())
                var s1 = SIMD4<Float>(a10.sum(), a11.sum(), a12.sum(), a13.sum())
                for kt in k8..<k {
                    let w = SIMD4<Float>(src.scalar(r0, kt), src.scalar(r1, kt), src.scalar(r2, kt), src.scalar(r3, kt))
                    s0.addProduct(x0[kt], w); s1.addProduct(x1[kt], w)
                }
                for q in 0..<nw {
                    let b = bias?[j + q] ?? 0
                    out[i * n + j + q] = s0[q] + b
                    if two { out[(i + 1) * n + j + q] = s1[q] + b }
                }
                j += nw
            }
            i += two ? 2 : 1
        }
    }

    static func run<S: RowSource>(_ src: S, x: UnsafePointer<Float>, m: Int, k: Int, n: Int,
                                  bias: UnsafePointer<Float>?, out: UnsafeMutablePointer<Float>, threads: Int) {
        let xs = SendablePointer(x), os = SendablePointer(out), bs = bias.map { SendablePointer($0) }
        // ~32K multiply-adds per thread pay for a dispatch.
        let minRows = max(4, (1 << 15) / max(1, k * m))
        Parallel.forRanges(n, threads: threads, minPerThread: minRows) { r in
            rows(src, x: xs.base, m: m, k: k, n: n, bias: bs?.base, out: os.base, range: r)
        }
    }
}

/// Largest m for which the GEMV path (no packing) is used; its sums run in a different order from the GEMM's.
public let gemvMaxRows = 3

/// Column (or row-strip) chunks per thread in a threaded GEMM: 8 measured 4-6% ahead of 4 at ctx 128.
let chunksPerThread = 8

@inline(__always)
func dispatchMatmul<S: RowSource>(_ src: S, x: UnsafePointer<Float>, m: Int, k: Int, n: Int,
                                  bias: UnsafePointer<Float>?, out: UnsafeMutablePointer<Float>, threads: Int) {
    if m <= 0 || n <= 0 { return }
    if k == 0 {
        for i in 0..<m { for j in 0..<n { out[i * n + j] = bias?[j] ?? 0 } }
        return
    }
    if m <= gemvMaxRows {
        Gemv.run(src, x: x, m: m, k: k, n: n, bias: bias, out: out, threads: threads)
    } else {
        Gemm.run(src, x: x, m: m, k: k, n: n, bias: bias, out: out, threads: threads)
    }
}
