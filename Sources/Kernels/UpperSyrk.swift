import CHints
import TensorCore

/// C[i, j] += sum_t X[t, i] X[t, j] for i <= j: the Float64 upper-triangle rank-t update GPTQ's Hessian needs, from
/// Float32 rows X [t, n]. Laid out after BLIS (Van Zee & van de Geijn, "BLIS: A Framework for Rapidly Instantiating
/// BLAS Functionality", 2015): tokens are packed to Float64 in blocks of `kc`, once as k-major 6-column A strips and
/// once as k-major 8-column B panels, and a 6x8 register tile (12 SIMD4<Double> accumulators; per token 2 B vector
/// loads and 6 A broadcasts, the shape of `Gemm.kernel`) is run over the tiles on or above the diagonal (tiles that
/// straddle it are computed whole, so a few entries below the diagonal get written too; callers read only i <= j).
/// Work units are (512-column block, 120-row chunk) pairs, dynamically scheduled (the triangle makes them uneven);
/// each unit loops over all token blocks of a pass before moving on.
public final class UpperSyrk: @unchecked Sendable {
    public let columns: Int
    static let mr = 6, nr = 8, kc = 256
    /// A unit: a row chunk of 20 strips (120 rows; its A strips, 240 KiB a token block, stay in L2) against a block
    /// of up to 64 panels (512 columns; each 16 KiB B micro-panel is reused from L1 by all 20 strips). Measured on the
    /// 2-core EPYC: 64 x 20 ran ~10% faster than 8 x 16; 32-128 panels and 12-28 strips were within noise.
    static let blockPanels = 64, chunkStrips = 20
    /// Tokens packed per pass (a multiple of kc, at most 1024): bounded so the two packs stay under ~32 MiB. Each pass
    /// reads and writes C once, so longer passes mean less C traffic.
    let passTokens: Int
    /// 24-column groups (lcm of 6 and 8): packing splits over them; strips/panels are padded to whole groups.
    let groups: Int, strips: Int, panels: Int
    let apack: UnsafeMutablePointer<Double>
    let bpack: UnsafeMutablePointer<Double>
    struct Unit { var p0: Int, p1: Int, s0: Int, s1: Int }
    let units: [Unit]

    public init(columns n: Int) {
        columns = max(0, n)
        groups = (n + 23) / 24
        strips = groups * 4
        panels = groups * 3
        let perToken = groups * 24 * 2 * MemoryLayout<Double>.stride
        passTokens = max(1, min(4, (32 << 20) / (perToken * Self.kc))) * Self.kc
        // Cache-line aligned: 32-byte B loads at a 16-byte offset (malloc's) would split a line every other token.
        let bytes = passTokens * groups * 24 * MemoryLayout<Double>.stride
        apack = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64).bindMemory(to: Double.self, capacity: bytes / 8)
        bpack = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64).bindMemory(to: Double.self, capacity: bytes / 8)
        // Units: blocks of columns from the widest triangle rows down, so the small units come last.
        var units: [Unit] = []
        guard n > 0 else { self.units = []; return }
        let realPanels = (n + Self.nr - 1) / Self.nr
        var p0 = ((realPanels - 1) / Self.blockPanels) * Self.blockPanels
        while p0 >= 0 {
            let p1 = min(realPanels, p0 + Self.blockPanels)
            let lastCol = min(n, p1 * Self.nr) - 1
            let sEnd = lastCol / Self.mr + 1
            var s0 = 0
            while s0 < sEnd {
                let s1 = min(sEnd, s0 + Self.chunkStrips)
                units.append(Unit(p0: p0, p1: p1, s0: s0, s1: s1))
                s0 = s1
            }
            p0 -= Self.blockPanels
        }
        self.units = units
    }

    deinit {
        UnsafeMutableRawPointer(apack).deallocate()
        UnsafeMutableRawPointer(bpack).deallocate()
    }

    /// Adds X X^T (upper triangle) of `count` rows `x` (row stride `ldx`) into `c` [columns, columns] (row stride `ldc`).
    public func accumulate(_ x: UnsafePointer<Float>, count: Int, ldx: Int, into c: UnsafeMutablePointer<Double>, ldc: Int,
                           threads: Int = Parallel.defaultThreads) {
        guard columns > 0 else { return }
        var t0 = 0
        while t0 < count {
            let tp = min(passTokens, count - t0)
            pack(x + t0 * ldx, count: tp, ldx: ldx, threads: threads)
            compute(count: tp, c: c, ldc: ldc, threads: threads)
            t0 += tp
        }
    }

    /// Token block kb of a pass of `count` tokens: its first token and length.
    @inline(__always) func block(_ kb: Int, of count: Int) -> (Int, Int) {
        let k0 = kb * Self.kc
        return (k0, min(Self.kc, count - k0))
    }

    /// A strip s of token block (k0, kt) lives at apack + k0 * strips * 6 + s * kt * 6 (B alike with 8), so each
    /// micro-panel is one contiguous [kt][6] or [kt][8] run.
    func pack(_ x: UnsafePointer<Float>, count: Int, ldx: Int, threads: Int) {
        let n = columns, strips = strips, panels = panels
        let xp = SendablePointer(x), ap = SendablePointer(apack), bp = SendablePointer(bpack)
        let blocks = (count + Self.kc - 1) / Self.kc
        Parallel.forRanges(groups, threads: threads, minPerThread: 8) { gr in
            for kb in 0..<blocks {
                let k0 = kb * Self.kc, kt = min(Self.kc, count - k0)
                let aBlock = ap.base + k0 * strips * 6, bBlock = bp.base + k0 * panels * 8
                for g in gr {
                    let c0 = g * 24
                    let a0 = aBlock + 4 * g * kt * 6, b0 = bBlock + 3 * g * kt * 8
                    if c0 + 24 <= n {
                        for t in 0..<kt {
                            let src = xp.base + (k0 + t) * ldx + c0
                            for q in 0..<3 {
                                let d = b0 + q * kt * 8 + t * 8
                                for e in 0..<8 { d[e] = Double(src[q * 8 + e]) }
                            }
                            for q in 0..<4 {
                                let d = a0 + q * kt * 6 + t * 6
                                for e in 0..<6 { d[e] = Double(src[q * 6 + e]) }
                            }
                        }
                    } else {
                        // Last group: columns past n are zero, so padded tile rows/columns add nothing.
                        for t in 0..<kt {
                            let src = xp.base + (k0 + t) * ldx
                            for e in 0..<24 {
                                let col = c0 + e
                                let v = col < n ? Double(src[col]) : 0
                                b0[(e / 8) * kt * 8 + t * 8 + e % 8] = v
                                a0[(e / 6) * kt * 6 + t * 6 + e % 6] = v
                            }
                        }
                    }
                }
            }
        }
    }

    func compute(count: Int, c: UnsafeMutablePointer<Double>, ldc: Int, threads: Int) {
        let n = columns, strips = strips, panels = panels
        let ap = SendablePointer(apack), bp = SendablePointer(bpack), cp = SendablePointer(c)
        let blocks = (count + Self.kc - 1) / Self.kc
        let units = units
        Parallel.forEach(units.count, threads: threads) { u in
            let unit = units[u]
            for kb in 0..<blocks {
                let k0 = kb * Self.kc, kt = min(Self.kc, count - k0)
                let aBlock = ap.base + k0 * strips * 6, bBlock = bp.base + k0 * panels * 8
                for p in unit.p0..<unit.p1 {
                    let col = p * Self.nr, cols = min(Self.nr, n - col)
                    // Strips whose first row is at or left of this panel's last column touch the upper triangle.
                    let sHi = min(unit.s1, (col + cols - 1) / Self.mr + 1)
                    let b = bBlock + p * kt * 8
                    var s = unit.s0
                    while s < sHi {
                        let row = s * Self.mr
                        Self.kernel(aBlock + s * kt * 6, b, kt, cp.base + row * ldc + col, ldc, min(Self.mr, n - row), cols)
                        s += 1
                    }
                }
            }
        }
    }

    typealias V4 = SIMD4<Double>

    @inline(__always) static func addTo(_ p: UnsafeMutablePointer<Double>, _ v: V4) {
        let r = UnsafeMutableRawPointer(p)
        r.storeBytes(of: r.loadUnaligned(as: V4.self) + v, as: V4.self)
    }

    /// C[rows x cols] += sum over kt tokens of A-strip[t][0..<6] (outer) B-panel[t][0..<8]; rows <= 6, cols <= 8.
    @inline(__always)
    static func kernel(_ a: UnsafePointer<Double>, _ b: UnsafePointer<Double>, _ kt: Int, _ c: UnsafeMutablePointer<Double>,
                       _ ldc: Int, _ rows: Int, _ cols: Int) {
        // The C tile is read once per call, likely from memory (C is large): fetch its rows while the loop runs.
        var r = 0
        while r < rows { quantkit_prefetch(c + r * ldc); quantkit_prefetch(c + r * ldc + cols - 1); r += 1 }
        var c00 = V4(), c01 = V4(), c10 = V4(), c11 = V4(), c20 = V4(), c21 = V4()
        var c30 = V4(), c31 = V4(), c40 = V4(), c41 = V4(), c50 = V4(), c51 = V4()
        var pb = UnsafeRawPointer(b)
        var pa = a
        for _ in 0..<kt {
            let b0 = pb.load(as: V4.self), b1 = pb.load(fromByteOffset: 32, as: V4.self)
            var v = V4(repeating: pa[0]); c00.addProduct(v, b0); c01.addProduct(v, b1)
            v = V4(repeating: pa[1]); c10.addProduct(v, b0); c11.addProduct(v, b1)
            v = V4(repeating: pa[2]); c20.addProduct(v, b0); c21.addProduct(v, b1)
            v = V4(repeating: pa[3]); c30.addProduct(v, b0); c31.addProduct(v, b1)
            v = V4(repeating: pa[4]); c40.addProduct(v, b0); c41.addProduct(v, b1)
            v = V4(repeating: pa[5]); c50.addProduct(v, b0); c51.addProduct(v, b1)
            pb += 64
            pa += 6
        }
        if rows == 6 && cols == 8 {
            addTo(c, c00); addTo(c + 4, c01)
            addTo(c + ldc, c10); addTo(c + ldc + 4, c11)
            addTo(c + 2 * ldc, c20); addTo(c + 2 * ldc + 4, c21)
            addTo(c + 3 * ldc, c30); addTo(c + 3 * ldc + 4, c31)
            addTo(c + 4 * ldc, c40); addTo(c + 4 * ldc + 4, c41)
            addTo(c + 5 * ldc, c50); addTo(c + 5 * ldc + 4, c51)
        } else {
            edge(rows, cols, c, ldc, (c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51))
        }
    }

    /// Partial tile (matrix edge): only the valid rows x cols are added.
    @inline(never)
    static func edge(_ rows: Int, _ cols: Int, _ c: UnsafeMutablePointer<Double>, _ ldc: Int,
                     _ t: (V4, V4, V4, V4, V4, V4, V4, V4, V4, V4, V4, V4)) {
        withUnsafeBytes(of: t) { raw in
            let v = raw.bindMemory(to: Double.self)
            for r in 0..<rows { for j in 0..<cols { c[r * ldc + j] += v[r * 8 + j] } }
        }
    }
}
