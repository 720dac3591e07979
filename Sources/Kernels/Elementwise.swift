import TensorCore

// Vectorized elementwise math on SIMD8<Float>.

/// exp(x) per lane. Cody-Waite reduction x = n·ln2 + r, |r| <= ln2/2, and the degree-7 polynomial of Cephes' expf
/// (S. Moshier, Cephes Math Library, expf.c: relative error ~1e-7 on the reduced range). 2^n is applied in two
/// halves so results from about -103.9 (gradual underflow) to +88.72 (then +inf) come out right. NaN stays NaN.
@inline(__always)
func vexp(_ x: SIMD8<Float>) -> SIMD8<Float> {
    let xc = vmin(vmax(x, SIMD8(repeating: -104)), SIMD8(repeating: 89))
    let fn = (xc * 1.442_695_04).rounded(.toNearestOrEven)
    var r = xc - fn * 0.693_359_375
    r = r - fn * -2.121_944_4e-4
    var p = SIMD8<Float>(repeating: 1.987_569_15e-4)
    p = p * r + 1.398_199_95e-3
    p = p * r + 8.333_451_9e-3
    p = p * r + 4.166_579_59e-2
    p = p * r + 1.666_666_55e-1
    p = p * r + 5.000_000_12e-1
    var y = p * (r * r) + r + 1
    let n = truncToInt32(fn)
    let e1 = n &>> 1, e2 = n &- e1
    y = y * unsafeBitCast((e1 &+ 127) &<< 23, to: SIMD8<Float>.self)
    y = y * unsafeBitCast((e2 &+ 127) &<< 23, to: SIMD8<Float>.self)
    y.replace(with: 0, where: x .< -103.972_08)  // below ln(2^-150) the true result rounds to 0
    return y.replacing(with: x, where: x .!= x)
}

/// Scalar twin of `vexp` for tails (same arithmetic lane by lane).
@inline(__always)
func vexpTail(_ p: UnsafeMutablePointer<Float>, _ count: Int, _ f: (SIMD8<Float>) -> SIMD8<Float>) {
    var v = SIMD8<Float>()
    for i in 0..<count { v[i] = p[i] }
    let y = f(v)
    for i in 0..<count { p[i] = y[i] }
}

/// erfc(z) for z >= 0 with fractional error < 1.2e-7 everywhere: the Chebyshev-fitted formula "erfcc" of
/// Numerical Recipes in C (2nd ed., section 6.2).
@inline(__always)
func verfcNonNegative(_ z: SIMD8<Float>) -> SIMD8<Float> {
    let t = 1 / (1 + 0.5 * z)
    var p = SIMD8<Float>(repeating: 0.170_872_77)
    p = p * t - 0.822_152_23
    p = p * t + 1.488_515_87
    p = p * t - 1.135_203_98
    p = p * t + 0.278_868_07
    p = p * t - 0.186_288_06
    p = p * t + 0.096_784_18
    p = p * t + 0.374_091_96
    p = p * t + 1.000_023_68
    p = p * t - 1.265_512_23
    return t * vexp(p - z * z)
}

/// Exact (erf) GELU per lane: 0.5·x·(1 + erf(x/√2)), written with erfc so negative x keep full relative accuracy.
@inline(__always)
func vgelu(_ x: SIMD8<Float>) -> SIMD8<Float> {
    let ax = unsafeBitCast(unsafeBitCast(x, to: SIMD8<UInt32>.self) & 0x7FFF_FFFF, to: SIMD8<Float>.self)
    let z = ax * Float(0.707_106_781_186_547_6)
    let c = verfcNonNegative(z)
    let hx = x * Float(0.5)
    let pos = hx * (SIMD8<Float>(repeating: 2) - c)
    let neg = hx * c
    return pos.replacing(with: neg, where: x .< 0)
}

enum Elementwise {
    static func rmsNorm(x: UnsafePointer<Float>, weight: UnsafePointer<Float>, rows: Int, dim: Int, eps: Float,
                        out: UnsafeMutablePointer<Float>) {
        let d8 = dim & ~7
        for r in 0..<rows {
            let p = x + r * dim, o = out + r * dim
            // Sum of squares in Double lanes: norms of long rows stay exact to Float precision.
            var s0 = SIMD4<Double>(), s1 = SIMD4<Double>()
            var i = 0
            while i < d8 {
                let v = loadU(p + i), sq = v * v
                s0 += SIMD4<Double>(sq.lowHalf); s1 += SIMD4<Double>(sq.highHalf)
                i += 8
            }
            var ss = (s0 + s1).sum()
            while i < dim { ss += Double(p[i]) * Double(p[i]); i += 1 }
            let inv = Float(1.0 / (ss / Double(dim) + Double(eps)).squareRoot())
            i = 0
            while i < d8 { storeU(loadU(p + i) * inv * loadU(weight + i), o + i); i += 8 }
            while i < dim { o[i] = p[i] * inv * weight[i]; i += 1 }
        }
    }

    static func layerNorm(x: UnsafePointer<Float>, gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>,
                          rows: Int, dim: Int, eps: Float, out: UnsafeMutablePointer<Float>) {
        let d8 = dim & ~7
        for r in 0..<rows {
            let p = x + r * dim, o = out + r * dim
            var s0 = SIMD4<Double>(), s1 = SIMD4<Double>()
            var i = 0
            while i < d8 { let v = loadU(p + i); s0 += SIMD4<Double>(v.lowHalf); s1 += SIMD4<Double>(v.highHalf); i += 8 }
            var sum = (s0 + s1).sum()
            while i < dim { sum += Double(p[i]); i += 1 }
            let mean = sum / Double(dim)
            // Two-pass variance in Double (no cancellation for rows with a large mean).
            let m4 = SIMD4<Double>(repeating: mean)
            s0 = SIMD4<Double>(); s1 = SIMD4<Double>()
            i = 0
            while i < d8 {
                let v = loadU(p + i)
                let a = SIMD4<Double>(v.lowHalf) - m4, b = SIMD4<Double>(v.highHalf) - m4
                s0 += a * a; s1 += b * b
                i += 8
            }
            var v = (s0 + s1).sum()
            while i < dim { let d = Double(p[i]) - mean; v += d * d; i += 1 }
            let inv = 1 / (v / Double(dim) + Double(eps)).squareRoot()
            let mf = Float(mean), invf = Float(inv)
            i = 0
            while i < d8 {
                let y = (loadU(p + i) - mf) * invf
                storeU(y * loadU(gamma + i) + loadU(beta + i), o + i)
                i += 8
            }
            while i < dim { o[i] = (p[i] - mf) * invf * gamma[i] + beta[i]; i += 1 }
        }
    }

    /// In-place softmax of one row.
    @inline(__always)
    static func softmaxRow(_ p: UnsafeMutablePointer<Float>, _ cols: Int) {
        let c8 = cols & ~7
        var mv = SIMD8<Float>(repeating: -.infinity)
        var i = 0
        while i < c8 { mv = vmax(mv, loadU(p + i)); i += 8 }
        var mx = hmax(mv)
        while i < cols { mx = max(mx, p[i]); i += 1 }
        if mx == -.infinity { mx = 0 }  // an all-masked row: exp(-inf) = 0 everywhere, then 0/0 as the reference
        let m8 = SIMD8<Float>(repeating: mx)
        var s0 = SIMD4<Double>(), s1 = SIMD4<Double>()
        i = 0
        while i < c8 {
            let e = vexp(loadU(p + i) - m8)
            storeU(e, p + i)
            s0 += SIMD4<Double>(e.lowHalf); s1 += SIMD4<Double>(e.highHalf)
            i += 8
        }
        var s = (s0 + s1).sum()
        if i < cols {
            vexpTail(p + i, cols - i) { vexp($0 - m8) }
            while i < cols { s += Double(p[i]); i += 1 }
        }
        let inv = Float(1 / s)
        i = 0
        while i < c8 { storeU(loadU(p + i) * inv, p + i); i += 8 }
        while i < cols { p[i] *= inv; i += 1 }
    }

    static func swiglu(gate: UnsafeMutablePointer<Float>, up: UnsafePointer<Float>, count: Int) {
        let c8 = count & ~7
        var i = 0
        while i < c8 {
            let g = loadU(gate + i)
            storeU(g / (1 + vexp(-g)) * loadU(up + i), gate + i)
            i += 8
        }
        if i < count {
            var g = SIMD8<Float>(), u = SIMD8<Float>()
            for j in i..<count { g[j - i] = gate[j]; u[j - i] = up[j] }
            let y = g / (1 + vexp(-g)) * u
            for j in i..<count { gate[j] = y[j - i] }
        }
    }

    static func gelu(_ x: UnsafeMutablePointer<Float>, count: Int) {
        let c8 = count & ~7
        var i = 0
        while i < c8 { storeU(vgelu(loadU(x + i)), x + i); i += 8 }
        if i < count { vexpTail(x + i, count - i, vgelu) }
    }
}
