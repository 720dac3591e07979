import _Builtin_intrinsics.intel

// Conversions written with AVX2 intrinsics: Swift's generic SIMD conversions (integer widening, float -> int with
// a rounding rule) compile to library calls, not single instructions.

/// 8 bfloat16 -> Float32 (vpmovzxwd + vpslld).
@inline(__always) func bf16x8(_ p: UnsafeRawPointer) -> SIMD8<Float> {
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(p.loadUnaligned(as: SIMD2<Int64>.self)), 16))
}

/// 8 unsigned bytes -> Float32 (vpmovzxbd + vcvtdq2ps).
@inline(__always) func u8x8(_ p: UnsafeRawPointer) -> SIMD8<Float> {
    let v = SIMD2<Int64>(Int64(bitPattern: p.loadUnaligned(as: UInt64.self)), 0)
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))
}

/// The 8 nibbles of a word, lowest first -> Float32 (vpsrlvd + vpand + vcvtdq2ps).
@inline(__always) func nibbles8(_ w: UInt32) -> SIMD8<Float> {
    let v = _mm256_srlv_epi32(_mm256_set1_epi32(Int32(bitPattern: w)), _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28))
    return _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(15)))
}

/// Float32 lanes holding integral values -> Int32 lanes (vcvttps2dq).
@inline(__always) func truncToInt32(_ x: SIMD8<Float>) -> SIMD8<Int32> {
    unsafeBitCast(_mm256_cvttps_epi32(x), to: SIMD8<Int32>.self)
}

/// 8 IEEE half -> Float32 (vcvtph2ps, F16C).
@inline(__always) func f16x8(_ p: UnsafeRawPointer) -> SIMD8<Float> {
    _mm256_cvtph_ps(p.loadUnaligned(as: SIMD2<Int64>.self))
}

@inline(__always) func vmax(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> { _mm256_max_ps(a, b) }
@inline(__always) func vmin(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> { _mm256_min_ps(a, b) }

/// Largest lane.
@inline(__always) func hmax(_ a: SIMD8<Float>) -> Float {
    let m4 = _mm_max_ps(a.lowHalf, a.highHalf)
    let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4))
    return max(m2[0], m2[1])
}
