import _Builtin_intrinsics.intel
import CHints

// The W4A8 tile on AVX512-VNNI (see W8A8VNNI): the unsigned 4-bit codes go straight into vpdpbusd against the
// int8 activations, where AVX2 needs vpmaddubsw, int16 adds and a final vpmaddwd. The block sums are the same
// exact integers, so the outputs equal the AVX2 tile's bit for bit.

public enum W4A8VNNI {
    /// Up to 3 activation rows against one octet of 8 output rows. Layouts as Kernels' W4A8Panels and Int8Rows:
    /// `codes` the first row's int8 codes (rows k bytes apart), `blockScales` (d, d x code sum) per block,
    /// `weights` the octet's 8-input groups of 32 nibble-pair bytes, `scales` and `zeros` the octet's [group][8],
    /// `blockGroup` each block's group. Returns each row's 8 sums.
    public static func tile(codes: UnsafeRawPointer, k: Int, rows: Int, blockScales: UnsafePointer<Float>,
                            weights: UnsafeRawPointer, scales: UnsafePointer<Float>, zeros: UnsafePointer<Float>,
                            blockGroup: UnsafePointer<Int32>) -> (SIMD8<Float>, SIMD8<Float>, SIMD8<Float>) {
        switch rows {
        case 3: return rowsTile(codes, k, 3, blockScales, weights, scales, zeros, blockGroup)
        case 2: return rowsTile(codes, k, 2, blockScales, weights, scales, zeros, blockGroup)
        default: return rowsTile(codes, k, 1, blockScales, weights, scales, zeros, blockGroup)
        }
    }

    @inline(__always)
    static func rowsTile(_ codes: UnsafeRawPointer, _ k: Int, _ rows: Int, _ blockScales: UnsafePointer<Float>,
                         _ weights: UnsafeRawPointer, _ scales: UnsafePointer<Float>, _ zeros: UnsafePointer<Float>,
                         _ blockGroup: UnsafePointer<Int32>) -> (SIMD8<Float>, SIMD8<Float>, SIMD8<Float>) {
        let blocks = k / 32
        let nib = _mm256_set1_epi8(15)
        var xp = codes, wp = weights, dp = blockScales
        let ox1 = min(1, rows - 1) * k, ox2 = min(2, rows - 1) * k
        let od1 = min(1, rows - 1) * blocks * 2, od2 = min(2, rows - 1) * blocks * 2
        var y0 = SIMD8<Float>(), y1 = SIMD8<Float>(), y2 = SIMD8<Float>()
        @inline(__always) func bcast4(_ at: Int) -> SIMD4<Int64> {
            _mm256_set1_epi32(xp.loadUnaligned(fromByteOffset: at, as: Int32.self))
        }
        for b in 0..<blocks {
            var a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0
            for s in 0..<4 {
                let v = wp.load(fromByteOffset: s * 32, as: SIMD4<Int64>.self)
                let lo = _mm256_and_si256(v, nib), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib)
                a0 = quantkit_dpbusd256(quantkit_dpbusd256(a0, lo, bcast4(s * 8)), hi, bcast4(s * 8 + 4))
                if rows > 1 { a1 = quantkit_dpbusd256(quantkit_dpbusd256(a1, lo, bcast4(ox1 + s * 8)), hi, bcast4(ox1 + s * 8 + 4)) }
                if rows > 2 { a2 = quantkit_dpbusd256(quantkit_dpbusd256(a2, lo, bcast4(ox2 + s * 8)), hi, bcast4(ox2 + s * 8 + 4)) }
            }
            wp += 128
            xp += 32
            let g = Int(blockGroup[b])
            let sw = UnsafeRawPointer(scales + g * 8).loadUnaligned(as: SIMD8<Float>.self)
            let zw = UnsafeRawPointer(zeros + g * 8).loadUnaligned(as: SIMD8<Float>.self)
            @inline(__always) func step(_ y: inout SIMD8<Float>, _ a: SIMD4<Int64>, _ d: Float, _ e: Float) {
                var t = _mm256_cvtepi32_ps(a) * SIMD8(repeating: d)
                t.addProduct(-zw, SIMD8(repeating: e))
                y.addProduct(t, sw)
            }
            step(&y0, a0, dp[0], dp[1])
            if rows > 1 { step(&y1, a1, dp[od1], dp[od1 + 1]) }
            if rows > 2 { step(&y2, a2, dp[od2], dp[od2 + 1]) }
            dp += 2
        }
        return (y0, y1, y2)
    }
}
