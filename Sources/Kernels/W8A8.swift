import _Builtin_intrinsics.intel
import KernelsVNNI
import TensorCore

// W8A8: 8-bit weights in blocks of 32 inputs (Q8_0: int8 codes c, one scale s per block, w = s c) times 8-bit
// activations quantized the same way (Int8Rows), in integer arithmetic as llama.cpp runs Q8_0 x Q8_0:
//   y[n] = sum over blocks b of  s_b d_b * sum_b(c q).
// AVX2 has no signed x signed byte product: vpmaddubsw takes |c| (unsigned, <= 128) and q with c's sign applied
// (vpsignb), so each pairwise sum is at most 2 * 128 * 127 = 32,512 (no saturation); vpmaddwd then widens every
// pair to int32 before they add up.

/// Q8_0 codes re-laid out for the W8A8 kernel, in octets of 8 output rows: for each 4 inputs 4s..<4s+4, 32 bytes
/// whose byte 4c + i holds row c's code at input 4s + i, so one vpmaddubsw yields the 8 rows' pairwise sums in
/// lane order. Scales as [octet][block][8].
public final class W8A8Panels: @unchecked Sendable {
    public let n: Int, k: Int
    let octets: Int
    let codes: UnsafeMutableRawPointer
    let scales: UnsafeMutablePointer<Float>
    public var byteCount: Int { octets * k * 8 + octets * (k / 32) * 8 * 4 }

    /// codes: [n, k] row-major; scales: [n, k / 32]. nil unless k is a positive multiple of 32.
    public init?(n: Int, k: Int, codes src: [Int8], scales s: [Float]) {
        guard n > 0, k > 0, k % 32 == 0, src.count == n * k, s.count == n * (k / 32) else { return nil }
        self.n = n
        self.k = k
        octets = (n + 7) / 8
        let blocks = k / 32
        codes = .allocate(byteCount: octets * k * 8, alignment: 64)
        codes.initializeMemory(as: Int8.self, repeating: 0, count: octets * k * 8)
        scales = .allocate(capacity: octets * blocks * 8)
        scales.initialize(repeating: 0, count: octets * blocks * 8)
        let bytes = codes.assumingMemoryBound(to: Int8.self)
        for row in 0..<n {
            let o = row / 8, c = row % 8
            for j in 0..<k { bytes[o * k * 8 + (j / 4) * 32 + c * 4 + j % 4] = src[row * k + j] }
            for b in 0..<blocks { scales[(o * blocks + b) * 8 + c] = s[row * blocks + b] }
        }
    }

    deinit { codes.deallocate(); scales.deallocate() }
}

extension Kernels {
    /// out[m, n] = W8A8 product of x [m, k] with the 8-bit weight, + bias; the activations are quantized as
    /// llama.cpp's x86 quantize_row_q8_0 does (Int8Rows with ggml scales); work split as W4A8's.
    /// `vnni` picks the AVX512-VNNI tile (default: where the processor has it); both give identical outputs.
    public static func matmulW8A8(x: UnsafePointer<Float>, m: Int, panels w: W8A8Panels, bias: UnsafePointer<Float>? = nil,
                                  out: UnsafeMutablePointer<Float>, threads: Int = Parallel.defaultThreads,
                                  vnni: Bool = CPUFeatures.avx512VNNI) {
        guard m > 0, let a = Int8Rows(m: m, k: w.k) else { return }
        let t = m * w.n * w.k < 1 << 17 ? 1 : threads
        a.quantize(x, threads: t, ggmlScales: true)
        let os = SendablePointer(out), bs = bias.map { SendablePointer($0) }
        let useVNNI = vnni && CPUFeatures.hardwareAVX512VNNI
        forEachOctetStrip(m: m, octets: w.octets, threads: t) { r, rows, o in
            if useVNNI {
                let k = w.k, blocks = k / 32
                let y = W8A8VNNI.tile(codes: UnsafeRawPointer(a.codes + r * k), k: k, rows: rows,
                                      blockScales: a.blockScales + r * blocks * 2,
                                      weights: UnsafeRawPointer(w.codes) + o * k * 8,
                                      scales: UnsafeRawPointer(w.scales + o * blocks * 8))
                storeOctet(os.base, n: w.n, r0: r, rows: rows, octet: o, bias: bs?.base, y.0, y.1, y.2)
                return
            }
            switch rows {
            case 3: W8A8Kernel.tile(w, a, r0: r, rows: 3, octet: o, bias: bs?.base, out: os.base)
            case 2: W8A8Kernel.tile(w, a, r0: r, rows: 2, octet: o, bias: bs?.base, out: os.base)
            default: W8A8Kernel.tile(w, a, r0: r, rows: 1, octet: o, bias: bs?.base, out: os.base)
            }
        }
    }
}

enum W8A8Kernel {
    /// out rows r0..<r0+rows (rows <= 3) x octet o's columns, over all of k.
    @inline(__always)
    static func tile(_ w: W8A8Panels, _ a: Int8Rows, r0: Int, rows: Int, octet o: Int, bias: UnsafePointer<Float>?,
                     out: UnsafeMutablePointer<Float>) {
        let k = w.k, blocks = k / 32
        let ones = _mm256_set1_epi16(1)
        var xp = UnsafeRawPointer(a.codes + r0 * k)
        let ox1 = min(1, rows - 1) * k, ox2 = min(2, rows - 1) * k
        var dp = a.blockScales + r0 * blocks * 2
        let od1 = min(1, rows - 1) * blocks * 2, od2 = min(2, rows - 1) * blocks * 2
        var y0 = SIMD8<Float>(), y1 = SIMD8<Float>(), y2 = SIMD8<Float>()
        var wp = UnsafeRawPointer(w.codes) + o * k * 8
        var sp = UnsafeRawPointer(w.scales + o * blocks * 8)
        @inline(__always) func bcast4(_ at: Int) -> SIMD4<Int64> {
            _mm256_set1_epi32(xp.loadUnaligned(fromByteOffset: at, as: Int32.self))
        }
        // One row's products of 4 inputs: |c| times q with c's sign, pairwise, widened to int32 per row.
        @inline(__always) func dot4(_ av: SIMD4<Int64>, _ v: SIMD4<Int64>, _ q: SIMD4<Int64>) -> SIMD4<Int64> {
            _mm256_madd_epi16(_mm256_maddubs_epi16(av, _mm256_sign_epi8(q, v)), ones)
        }
        for _ in 0..<blocks {
            var a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0
            for s in 0..<8 {
                let v = wp.load(fromByteOffset: s * 32, as: SIMD4<Int64>.self)
                let av = _mm256_abs_epi8(v)
                a0 = _mm256_add_epi32(a0, dot4(av, v, bcast4(s * 4)))
                if rows > 1 { a1 = _mm256_add_epi32(a1, dot4(av, v, bcast4(ox1 + s * 4))) }
                if rows > 2 { a2 = _mm256_add_epi32(a2, dot4(av, v, bcast4(ox2 + s * 4))) }
            }
            wp += 256
            xp += 32
            let sw = sp.loadUnaligned(as: SIMD8<Float>.self)
            sp += 32
            // s_b * d_b (both fp16 values: the product is exact in Float32), then the block's integer sums.
            y0.addProduct(_mm256_cvtepi32_ps(a0), sw * SIMD8(repeating: dp[0]))
            if rows > 1 { y1.addProduct(_mm256_cvtepi32_ps(a1), sw * SIMD8(repeating: dp[od1])) }
            if rows > 2 { y2.addProduct(_mm256_cvtepi32_ps(a2), sw * SIMD8(repeating: dp[od2])) }
            dp += 2
        }
        storeOctet(out, n: w.n, r0: r0, rows: rows, octet: o, bias: bias, y0, y1, y2)
    }
}
