import TensorCore
import _Builtin_intrinsics.intel

/// The form llama.cpp's CPU backend converts a matmul's float activations to before the dot products: the weight
/// type's vec_dot_type (ggml-cpu.c type_traits_cpu). roundTrip gives the values the dot product then multiplies.
public enum GGMLActivationFormat: String, Sendable, CaseIterable {
    case f32, f16, bf16, q8_0, q8_1, q8_K

    /// ggml-cpu.c type_traits_cpu[t].vec_dot_type. Types that table leaves unset (Q8_K, I8...I64, F64: ggml has
    /// no vec_dot for them) read as GGML_TYPE_F32 there, and so here.
    public static func companion(of t: GGMLType) -> GGMLActivationFormat {
        switch t {
        case .f32: return .f32
        case .f16: return .f16
        case .bf16: return .bf16
        case .q4_0, .q5_0, .q8_0, .iq4_nl, .mxfp4: return .q8_0
        case .q4_1, .q5_1, .q8_1: return .q8_1
        case .q2_K, .q3_K, .q4_K, .q5_K, .q6_K, .iq2_xxs, .iq2_xs, .iq3_xxs, .iq3_s, .iq2_s, .iq1_s, .iq1_m,
             .iq4_xs, .tq1_0, .tq2_0:
            return .q8_K
        case .q8_K, .i8, .i16, .i32, .i64, .f64: return .f32
        }
    }

    /// Elements per block: count passed to roundTrip must be a multiple.
    public var blockSize: Int {
        switch self {
        case .f32, .f16, .bf16: return 1
        case .q8_0, .q8_1: return 32
        case .q8_K: return 256
        }
    }

    /// out = the activations as the dot product sees them: ggml's CPU from_float for this format (x86 AVX2 paths for
    /// q8_0/q8_1, quantize_row_q8_K_ref for q8_K, F16C rounding for f16, ggml's bf16 rounding), then the stored
    /// values as floats (fp16(d) * q; q8_K: d * q with an fp32 d). For q8_1, `sums` (count/32 entries) receives each
    /// block's stored s = fp16(d * sum q) with the fp32 d, which Q4_1/Q5_1 dot products use for the weights' min
    /// term instead of the sum of out. Bit-identical to llama.cpp, NaN and infinities included (same operations; NaN
    /// payloads aside). `x` and `out` may be the same buffer.
    public func roundTrip(_ x: UnsafePointer<Float>, count: Int, into out: UnsafeMutablePointer<Float>,
                          sums: UnsafeMutablePointer<Float>? = nil) {
        precondition(count >= 0 && count % blockSize == 0, "roundTrip \(rawValue): \(count) is not a multiple of \(blockSize)")
        switch self {
        case .f32:
            if UnsafePointer(out) != x { out.update(from: x, count: count) }
        case .f16:
            for i in 0..<count { out[i] = Float(Float16(x[i])) }
        case .bf16:
            for i in 0..<count { out[i] = Self.bf16(x[i]) }
        case .q8_0, .q8_1:
            for b in 0..<count / 32 {
                let s = Self.q8Block(x + 32 * b, out + 32 * b)
                if self == .q8_1, let sums { sums[b] = s }
            }
        case .q8_K:
            for b in 0..<count / 256 { Self.q8KBlock(x + 256 * b, out + 256 * b) }
        }
    }

    /// roundTrip on `rows` contiguous rows of `k` values, rows in parallel; sums (q8_1) holds k/32 per row.
    public func roundTripRows(_ x: UnsafePointer<Float>, rows: Int, k: Int, into out: UnsafeMutablePointer<Float>,
                              sums: UnsafeMutablePointer<Float>?, threads: Int) {
        let src = SendablePointer(x), dst = SendablePointer(out), s = sums.map { SendablePointer($0) }
        let perRow = k / 32
        Parallel.forRanges(rows, threads: threads, minPerThread: max(1, 32_768 / max(1, k))) { range in
            for r in range {
                self.roundTrip(UnsafePointer(src.base + r * k), count: k, into: dst.base + r * k,
                               sums: s.map { $0.base + r * perRow })
            }
        }
    }

    /// ggml_compute_fp32_to_bf16 then back: NaN is kept and made quiet, everything else rounds to nearest even
    /// (overflowing to infinity, subnormals kept).
    @inline(__always) static func bf16(_ v: Float) -> Float {
        let u = v.bitPattern
        if u & 0x7FFF_FFFF > 0x7F80_0000 { return Float(bitPattern: ((u >> 16) | 64) << 16) }
        return Float(bitPattern: ((u &+ (0x7FFF &+ ((u >> 16) & 1))) >> 16) << 16)
    }

    /// One q8_0/q8_1 block as x86 quantize_row_q8_0/q8_1 make it, with the same instructions: amax = max |x| by
    /// vmaxps in ggml's operand order (so NaN lanes resolve as there), d = amax / 127 (stored fp16), id = 127 / amax
    /// (not 1/d), q = vcvtps2dq of x * id (round half to even; INT32_MIN for NaN or out of range, as when 127/amax
    /// overflows for a subnormal amax) saturated to int8 as the packs do. Returns q8_1's s = fp16(d * sum q) with the
    /// fp32 d and the unsaturated int32 codes (wrapping adds).
    @inline(__always) static func q8Block(_ x: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>) -> Float {
        let p = UnsafeRawPointer(x)
        let v0 = p.loadUnaligned(as: SIMD8<Float>.self), v1 = p.loadUnaligned(fromByteOffset: 32, as: SIMD8<Float>.self)
        let v2 = p.loadUnaligned(fromByteOffset: 64, as: SIMD8<Float>.self), v3 = p.loadUnaligned(fromByteOffset: 96, as: SIMD8<Float>.self)
        let sign = SIMD8<Float>(repeating: -0.0)
        var m = _mm256_andnot_ps(sign, v0)
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v1))
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v2))
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v3))
        var m4 = _mm_max_ps(m.highHalf, m.lowHalf)
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4))
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4))
        let amax = m4[0]
        let d = amax / 127
        let dStored = SIMD8<Float>(repeating: Float(Float16(d)))
        let mul = SIMD8<Float>(repeating: amax != 0 ? 127 / amax : 0)
        let lo = _mm256_set1_epi32(-128), hi = _mm256_set1_epi32(127)
        let o = UnsafeMutableRawPointer(out)
        // Stores 8 values and returns their int32 codes (all loads above happen first, so out may alias x).
        @inline(__always) func store(_ v: SIMD8<Float>, _ at: Int) -> SIMD8<Int32> {
            let q = _mm256_cvtps_epi32(v * mul)
            let clamped = _mm256_cvtepi32_ps(_mm256_min_epi32(_mm256_max_epi32(q, lo), hi))
            o.storeBytes(of: dStored * clamped, toByteOffset: at, as: SIMD8<Float>.self)
            return unsafeBitCast(q, to: SIMD8<Int32>.self)
        }
        let lanes = (store(v0, 0) &+ store(v1, 32)) &+ (store(v2, 64) &+ store(v3, 96))
        return Float(Float16(d * Float(lanes.wrappedSum())))
    }

    /// One q8_K block as quantize_row_q8_K_ref (x86 uses it too): the signed value of largest magnitude (first on
    /// ties), iscale = -127 / max, q = nearest_int(iscale * x) (the 1.5 * 2^23 add: round half to even), capped at
    /// 127, d = 1 / iscale kept in fp32. All-zero blocks give d = 0, q = 0.
    @inline(__always) static func q8KBlock(_ x: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>) {
        var amax: Float = 0, signedMax: Float = 0
        for j in 0..<256 where abs(x[j]) > amax {
            amax = abs(x[j])
            signedMax = x[j]
        }
        if amax == 0 {
            out.update(repeating: 0, count: 256)
            return
        }
        let iscale = -127 / signedMax
        let d = 1 / iscale
        for j in 0..<256 {
            // nearest_int: the bits of v + 12582912 minus the offset; NaN lands on 0 as in C.
            let bits = Int32(bitPattern: (iscale * x[j] + 12_582_912).bitPattern)
            let v = (bits & 0x007F_FFFF) - 0x0040_0000
            out[j] = d * Float(Int8(truncatingIfNeeded: min(127, v)))
        }
    }
}
