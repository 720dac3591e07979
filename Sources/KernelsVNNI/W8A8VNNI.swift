import _Builtin_intrinsics.intel
import CHints

// The W8A8 tile on AVX512-VNNI, for processors that have it (Kernels dispatches here after checking): vpdpbusd
// multiplies unsigned by signed bytes and adds each 4 products into an int32 lane in one instruction, where AVX2
// needs vpmaddubsw, vpmaddwd and vpaddd. The sign trick is AVX2's (|c| unsigned, q with c's sign), and every lane
// holds the same exact integer sum per block, so both paths give bit-identical outputs.
// This module alone is compiled with the AVX-512 features (Package.swift); nothing here runs without the check.

public enum W8A8VNNI {
    /// Up to 3 activation rows against one octet of 8 output rows, over all of k (a multiple of 32). Layouts as
    /// Kernels' W8A8Panels and Int8Rows: `codes` is the first row's int8 codes (rows k bytes apart), `blockScales`
    /// its per-block scales (2 floats per block: the scale, then Int8Rows' second value), `weights` the octet's
    /// 4-input groups of 32 bytes, `scales` its [block][8] weight scales. Returns each row's 8 sums.
    public static func tile(codes: UnsafeRawPointer, k: Int, rows: Int, blockScales: UnsafePointer<Float>,
                            weights: UnsafeRawPointer, scales: UnsafeRawPointer)
        -> (SIMD8<Float>, SIMD8<Float>, SIMD8<Float>) {
        switch rows {
        case 3: return rowsTile(codes, k, 3, blockScales, weights, scales)
        case 2: return rowsTile(codes, k, 2, blockScales, weights, scales)
        default: return rowsTile(codes, k, 1, blockScales, weights, scales)
        }
    }

    @inline(__always)
    static func rowsTile(_ codes: UnsafeRawPointer, _ k: Int, _ rows: Int, _ blockScales: UnsafePointer<Float>,
                         _ weights: UnsafeRawPointer, _ scales: UnsafeRawPointer) -> (SIMD8<Float>, SIMD8<Float>, SIMD8<Float>) {
        let blocks = k / 32
        var xp = codes, wp = weights, sp = scales, dp = blockScales
        let ox1 = min(1, rows - 1) * k, ox2 = min(2, rows - 1) * k
        let od1 = min(1, rows - 1) * blocks * 2, od2 = min(2, rows - 1) * blocks * 2
        var y0 = SIMD8<Float>(), y1 = SIMD8<Float>(), y2 = SIMD8<Float>()
        @inline(__always) func bcast4(_ at: Int) -> SIMD4<Int64> {
            _mm256_set1_epi32(xp.loadUnaligned(fromByteOffset: at, as: Int32.self))
        }
        for _ in 0..<blocks {
            var a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0
            for s in 0..<8 {
                let v = wp.load(fromByteOffset: s * 32, as: SIMD4<Int64>.self)
                let av = _mm256_abs_epi8(v)
                a0 = quantkit_dpbusd256(a0, av, _mm256_sign_epi8(bcast4(s * 4), v))
                if rows > 1 { a1 = quantkit_dpbusd256(a1, av, _mm256_sign_epi8(bcast4(ox1 + s * 4), v)) }
                if rows > 2 { a2 = quantkit_dpbusd256(a2, av, _mm256_sign_epi8(bcast4(ox2 + s * 4), v)) }
            }
            wp += 256
            xp += 32
            let sw = sp.loadUnaligned(as: SIMD8<Float>.self)
            sp += 32
            y0.addProduct(_mm256_cvtepi32_ps(a0), sw * SIMD8(repeating: dp[0]))
            if rows > 1 { y1.addProduct(_mm256_cvtepi32_ps(a1), sw * SIMD8(repeating: dp[od1])) }
            if rows > 2 { y2.addProduct(_mm256_cvtepi32_ps(a2), sw * SIMD8(repeating: dp[od2])) }
            dp += 2
        }
        return (y0, y1, y2)
    }
}
