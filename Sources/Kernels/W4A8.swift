import _Builtin_intrinsics.intel
import KernelsVNNI
import TensorCore

// W4A8: 4-bit weights times 8-bit activations in integer arithmetic, the way llama.cpp runs Q4_0 (its vec-dot
// type for Q4_0 is Q8_0). Activations are quantized per row in blocks of 32 inputs: d = max|x| / 127,
// q = round-to-nearest-even(x / d) in -127...127 (Q8_0's block and scale; llama.cpp rounds half away from zero).
// A weight group g (a multiple of 32 inputs) has scale s and zero z, w = s (c - z) with codes c in 0...15. Then
//   y[n] = sum over blocks b of  s[g(b)] * (d_b * sum_b(c q) - z[g(b)] * d_b * sum_b(q)),
// the inner sum exact in integers: vpmaddubsw multiplies 32 unsigned codes by 32 signed activations into 16
// pairwise sums (|pair| <= 2 * 15 * 127, no saturation), eight of which add up in int16 (<= 30,480) before
// vpmaddwd widens them. This is a different numerical contract from W4A16 (activations lose ~0.4% RMS); it is
// opt-in (QuantizedLinear.useInt8Activations).

/// A row block of activations quantized for W4A8: codes [m, k] Int8, and per (row, 32-block) d and d * sum(q).
public final class Int8Rows: @unchecked Sendable {
    public let m: Int, k: Int
    public let codes: UnsafeMutablePointer<Int8>
    /// Per (row, block) the pair (d, d * sum(q)), [m, k / 32, 2]: one pointer serves both in the kernel.
    public let blockScales: UnsafeMutablePointer<Float>

    /// nil unless k is a multiple of 32 (the block size).
    public init?(m: Int, k: Int) {
        guard k % 32 == 0, m >= 0 else { return nil }
        self.m = m
        self.k = k
        codes = .allocate(capacity: max(1, m * k))
        blockScales = .allocate(capacity: max(2, m * k / 16))
    }

    deinit { codes.deallocate(); blockScales.deallocate() }

    /// Quantizes x [m, k] (vectorised: vmaxps over |x|, vcvtps2dq under the default round-to-nearest-even mode).
    /// `ggmlScales`: as llama.cpp's x86 quantize_row_q8_0 does, the codes use 127 / amax and the block keeps
    /// d = amax / 127 rounded to fp16 (its Q8_0 block stores d as fp16).
    public func quantize(_ x: UnsafePointer<Float>, threads: Int = 1, ggmlScales: Bool = false) {
        let xs = SendablePointer(x)
        Parallel.forRanges(m, threads: threads, minPerThread: max(1, 16_384 / max(1, k))) { rows in
            self.quantize(xs.base, rows: rows, ggmlScales: ggmlScales)
        }
    }

    private func quantize(_ x: UnsafePointer<Float>, rows: Range<Int>, ggmlScales: Bool) {
        let blocks = k / 32
        let signMask = SIMD8<Float>(repeating: -0.0)
        for r in rows {
            for b in 0..<blocks {
                let src = x + r * k + b * 32
                var v = (loadU(src), loadU(src + 8), loadU(src + 16), loadU(src + 24))
                let a0 = _mm256_andnot_ps(signMask, v.0), a1 = _mm256_andnot_ps(signMask, v.1)
                let a2 = _mm256_andnot_ps(signMask, v.2), a3 = _mm256_andnot_ps(signMask, v.3)
                let amax = hmax(vmax(vmax(a0, a1), vmax(a2, a3)))
                let d = ggmlScales ? Float(Float16(amax / 127)) : amax / 127
                let id: Float = ggmlScales ? (amax != 0 ? 127 / amax : 0) : (d != 0 ? 1 / d : 0)
                let s = SIMD8<Float>(repeating: id)
                v = (v.0 * s, v.1 * s, v.2 * s, v.3 * s)
                let i0 = _mm256_cvtps_epi32(v.0), i1 = _mm256_cvtps_epi32(v.1)
                let i2 = _mm256_cvtps_epi32(v.2), i3 = _mm256_cvtps_epi32(v.3)
                // int32 -> int16 -> int8 with saturation (values are within -127...127); packs interleave the
                // 128-bit halves, which the final vpermd puts back in order.
                let p16a = _mm256_packs_epi32(i0, i1), p16b = _mm256_packs_epi32(i2, i3)
                let p8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p16a, p16b), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
                UnsafeMutableRawPointer(codes + r * k + b * 32).storeBytes(of: p8, as: SIMD4<Int64>.self)
                // Sum of the 32 codes: vpmaddubsw with all-ones unsigned bytes, then vpmaddwd with ones.
                let sum16 = _mm256_maddubs_epi16(_mm256_set1_epi8(1), p8)
                let sum32 = unsafeBitCast(_mm256_madd_epi16(sum16, _mm256_set1_epi16(1)), to: SIMD8<Int32>.self)
                blockScales[(r * blocks + b) * 2] = d
                blockScales[(r * blocks + b) * 2 + 1] = d * Float(sum32.wrappedSum())
            }
        }
    }
}

/// 4-bit codes re-laid out for the W4A8 kernel, in octets of 8 output rows: for each 8 inputs 8s..<8s+8, 32 bytes
/// whose byte 4c + i holds row c's codes at inputs 8s + i (low nibble) and 8s + 4 + i (high nibble). Masking and
/// shifting give two vectors of 8 rows x 4 inputs, so one vpmaddubsw + vpmaddwd yields all 8 rows' sums in lane
/// order. Scales and zeros as [octet][group][8].
public final class W4A8Panels: @unchecked Sendable {
    public let n: Int, k: Int
    let octets: Int
    let nGroups: Int
    let codes: UnsafeMutableRawPointer
    let scales: UnsafeMutablePointer<Float>
    let zeros: UnsafeMutablePointer<Float>
    /// Group of each 32-input block (in packed input order).
    let blockGroup: UnsafeMutablePointer<Int32>
    public let inputPermutation: [Int32]?
    public var byteCount: Int { octets * k * 4 + 2 * octets * nGroups * 8 * 4 }

    /// Whether a matrix can run as W4A8: codes of at most 4 bits, k and every group boundary (in packed order) on a
    /// multiple of 32.
    public static func supports(_ p: QuantizedPanels) -> Bool {
        p.container == 4 && p.k % 32 == 0 && (0...p.nGroups).allSatisfy { p.groupStarts[$0] % 32 == 0 }
    }

    public init?(_ p: QuantizedPanels) {
        guard W4A8Panels.supports(p) else { return nil }
        n = p.n
        k = p.k
        octets = (p.n + 7) / 8
        nGroups = p.nGroups
        inputPermutation = p.inputPermutation
        codes = .allocate(byteCount: max(1, octets * k * 4), alignment: 64)
        scales = .allocate(capacity: max(1, octets * nGroups * 8))
        zeros = .allocate(capacity: max(1, octets * nGroups * 8))
        blockGroup = .allocate(capacity: max(1, k / 32))
        for g in 0..<nGroups {
            for b in (p.groupStarts[g] / 32)..<(p.groupStarts[g + 1] / 32) { blockGroup[b] = Int32(g) }
        }
        let bytes = codes.assumingMemoryBound(to: UInt8.self)
        bytes.initialize(repeating: 0, count: octets * k * 4)
        for o in 0..<octets {
            for c in 0..<8 {
                let row = o * 8 + c
                for g in 0..<nGroups {
                    let at = (o * nGroups + g) * 8 + c
                    let from = ((row / 16) * nGroups + g) * 16 + row % 16
                    scales[at] = row < n ? p.scales[from] : 0
                    zeros[at] = row < n ? p.zeros[from] : 0
                }
                guard row < n else { continue }
                let words = UnsafeRawPointer(p.codes).assumingMemoryBound(to: UInt64.self) + (row / 16) * k
                for j in 0..<k {
                    let code = UInt8((words[j] >> UInt64(4 * (row % 16))) & 15)
                    let at = o * k * 4 + (j / 8) * 32 + c * 4 + j % 4
                    bytes[at] |= j % 8 < 4 ? code : code << 4
                }
            }
        }
    }

    deinit { codes.deallocate(); scales.deallocate(); zeros.deallocate(); blockGroup.deallocate() }
}

/// The integer kernels' epilogue: up to 3 rows of one octet's 8 outputs (fewer at the matrix edge), plus bias.
@inline(__always)
func storeOctet(_ out: UnsafeMutablePointer<Float>, n: Int, r0: Int, rows: Int, octet o: Int, bias: UnsafePointer<Float>?,
                _ y0: SIMD8<Float>, _ y1: SIMD8<Float>, _ y2: SIMD8<Float>) {
    let cols = min(8, n - o * 8)
    @inline(__always) func put(_ r: Int, _ y: SIMD8<Float>) {
        let dst = out + (r0 + r) * n + o * 8
        for j in 0..<cols { dst[j] = y[j] + (bias?[o * 8 + j] ?? 0) }
    }
    put(0, y0)
    if rows > 1 { put(1, y1) }
    if rows > 2 { put(2, y2) }
}

enum W4A8Kernel {
    /// out rows r0..<r0+rows (rows <= 3) x octet o's columns, over all of k.
    @inline(__always)
    static func tile(_ w: W4A8Panels, _ a: Int8Rows, r0: Int, rows: Int, octet o: Int, bias: UnsafePointer<Float>?,
                     out: UnsafeMutablePointer<Float>) {
        let k = w.k, blocks = k / 32, ng = w.nGroups
        let nib = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1)
        // One pointer per operand, rows 1 and 2 at offsets (clamped to the last real row): the kernel then keeps
        // its pointers in registers instead of spilling them.
        var xp = UnsafeRawPointer(a.codes + r0 * k)
        let ox1 = min(1, rows - 1) * k, ox2 = min(2, rows - 1) * k
        var dp = a.blockScales + r0 * blocks * 2
        let od1 = min(1, rows - 1) * blocks * 2, od2 = min(2, rows - 1) * blocks * 2
        var y0 = SIMD8<Float>(), y1 = SIMD8<Float>(), y2 = SIMD8<Float>()
        var wp = UnsafeRawPointer(w.codes) + o * k * 4
        @inline(__always) func bcast4(_ at: Int) -> SIMD4<Int64> {
            _mm256_set1_epi32(xp.loadUnaligned(fromByteOffset: at, as: Int32.self))
        }
        for b in 0..<blocks {
            // int16 lanes: 2 per row (input pairs), each summing 16 products of at most 15 * 127: <= 30,480.
            var a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0
            for s in 0..<4 {
                let v = wp.load(fromByteOffset: s * 32, as: SIMD4<Int64>.self)
                let lo = _mm256_and_si256(v, nib), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib)
                a0 = _mm256_add_epi16(a0, _mm256_add_epi16(_mm256_maddubs_epi16(lo, bcast4(s * 8)),
                                                           _mm256_maddubs_epi16(hi, bcast4(s * 8 + 4))))
                if rows > 1 {
                    a1 = _mm256_add_epi16(a1, _mm256_add_epi16(_mm256_maddubs_epi16(lo, bcast4(ox1 + s * 8)),
                                                               _mm256_maddubs_epi16(hi, bcast4(ox1 + s * 8 + 4))))
                }
                if rows > 2 {
                    a2 = _mm256_add_epi16(a2, _mm256_add_epi16(_mm256_maddubs_epi16(lo, bcast4(ox2 + s * 8)),
                                                               _mm256_maddubs_epi16(hi, bcast4(ox2 + s * 8 + 4))))
                }
            }
            wp += 128
            xp += 32
            let g = Int(w.blockGroup[b])
            let sw = UnsafeRawPointer(w.scales + (o * ng + g) * 8).loadUnaligned(as: SIMD8<Float>.self)
            let zw = UnsafeRawPointer(w.zeros + (o * ng + g) * 8).loadUnaligned(as: SIMD8<Float>.self)
            // The block's 8 integer dot products, as floats.
            @inline(__always) func dots(_ a: SIMD4<Int64>) -> SIMD8<Float> {
                _mm256_cvtepi32_ps(_mm256_madd_epi16(a, ones))
            }
            @inline(__always) func step(_ y: inout SIMD8<Float>, _ f: SIMD8<Float>, _ d: Float, _ e: Float) {
                var t = f * SIMD8(repeating: d)
                t.addProduct(-zw, SIMD8(repeating: e))
                y.addProduct(t, sw)
            }
            step(&y0, dots(a0), dp[0], dp[1])
            if rows > 1 { step(&y1, dots(a1), dp[od1], dp[od1 + 1]) }
            if rows > 2 { step(&y2, dots(a2), dp[od2], dp[od2 + 1]) }
            dp += 2
        }
        storeOctet(out, n: w.n, r0: r0, rows: rows, octet: o, bias: bias, y0, y1, y2)
    }
}

extension Kernels {
    /// out[m, n] = W4A8 product of x [m, k] (original input order; an act-order permutation is applied here) with
    /// the 4-bit weight, + bias. Threads take chunks of octets; inside a chunk each octet's codes (k / 2 bytes)
    /// stay in L1 while every 3-row strip of the quantized activations passes over them.
    /// `ggmlActivations`: quantize the activations exactly as llama.cpp's CPU backend does for a Q4_0 weight
    /// (Int8Rows.quantize's ggmlScales), so the product is llama.cpp's Q4_0 x Q8_0 dot product.
    public static func matmulW4A8(x: UnsafePointer<Float>, m: Int, panels w: W4A8Panels, bias: UnsafePointer<Float>? = nil,
                                  out: UnsafeMutablePointer<Float>, threads: Int = Parallel.defaultThreads,
                                  ggmlActivations: Bool = false, vnni: Bool = CPUFeatures.avx512VNNI) {
        guard m > 0 else { return }
        let t = m * w.n * w.k < 1 << 17 ? 1 : threads
        // W4A8Panels exist only for k divisible by 32.
        guard let a = Int8Rows(m: m, k: w.k) else { return }
        withPackedOrder(x, m: m, k: w.k, permutation: w.inputPermutation) { a.quantize($0, threads: t, ggmlScales: ggmlActivations) }
        let os = SendablePointer(out), bs = bias.map { SendablePointer($0) }
        let useVNNI = vnni && CPUFeatures.hardwareAVX512VNNI
        forEachOctetStrip(m: m, octets: w.octets, threads: t) { r, rows, o in
            if useVNNI {
                let k = w.k, blocks = k / 32, ng = w.nGroups
                let y = W4A8VNNI.tile(codes: UnsafeRawPointer(a.codes + r * k), k: k, rows: rows,
                                      blockScales: a.blockScales + r * blocks * 2, weights: UnsafeRawPointer(w.codes) + o * k * 4,
                                      scales: w.scales + o * ng * 8, zeros: w.zeros + o * ng * 8, blockGroup: w.blockGroup)
                storeOctet(os.base, n: w.n, r0: r, rows: rows, octet: o, bias: bs?.base, y.0, y.1, y.2)
                return
            }
            switch rows {
            case 3: W4A8Kernel.tile(w, a, r0: r, rows: 3, octet: o, bias: bs?.base, out: os.base)
            case 2: W4A8Kernel.tile(w, a, r0: r, rows: 2, octet: o, bias: bs?.base, out: os.base)
            default: W4A8Kernel.tile(w, a, r0: r, rows: 1, octet: o, bias: bs?.base, out: os.base)
            }
        }
    }

    /// The work split of the integer kernels (W4A8, W8A8): `strip(r0, rows, octet)` for every strip of at most 3
    /// activation rows and every octet of 8 output columns. Threads take chunks of octets; inside a chunk each
    /// octet's codes stay in L1 while rows pass over them in blocks of 48 (48 x k activation bytes stay in L2).
    static func forEachOctetStrip(m: Int, octets: Int, threads t: Int, _ strip: @Sendable (Int, Int, Int) -> Void) {
        let chunks = t == 1 ? 1 : max(t, min(octets / 2, 2 * chunksPerThread * t))
        let rowBlock = 48
        Parallel.forEach(chunks, threads: t) { c in
            let range = (octets * c / chunks)..<(octets * (c + 1) / chunks)
            for rb in stride(from: 0, to: m, by: rowBlock) {
                let end = min(m, rb + rowBlock)
                for o in range {
                    var r = rb
                    while r < end {
                        let rows = min(3, end - r)
                        strip(r, rows, o)
                        r += rows
                    }
                }
            }
        }
    }
}
