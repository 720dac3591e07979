import Foundation

/// Full-vocabulary log-sum-exp for perplexity: every scored row needs Σ exp over the whole vocabulary (32,000
/// terms for a Llama-2 vocabulary), which libm's scalar exp made as costly as a layer. Double precision
/// throughout, four lanes at a time.
enum LogSumExp {
    // Cody-Waite split of ln 2 (the high part has zero low bits, so n * ln2Hi is exact for |n| < 2^11).
    static let ln2Hi = 6.93147180369123816490e-01
    static let ln2Lo = 1.90821492927058770002e-10
    static let log2e = 1.44269504088896338700e+00
    /// 1.5 * 2^52: adding it rounds a double of magnitude < 2^51 to an integer held in the low mantissa bits.
    static let shifter = 6755399441055744.0
    /// 1/k! for k = 12 ... 0, Horner order.
    static let taylor: [Double] = (0...12).reversed().map { k in 1 / (1...max(1, k)).reduce(1.0) { $0 * Double($1) } }

    /// exp of four doubles x <= 0. x = n ln2 + r with |r| <= ln2/2, exp(r) by its degree-12 Taylor polynomial
    /// (remainder below 2e-16 relative), times 2^n built in the exponent bits. Inputs below -708 give exp(-708)
    /// (about 3e-308, nothing next to the row's largest term, which is 1); NaN stays NaN.
    @inline(__always)
    static func exp4(_ x: SIMD4<Double>) -> SIMD4<Double> {
        let xc = x.replacing(with: -708, where: x .< -708)
        let sh = SIMD4<Double>(repeating: shifter)
        let t = sh.addingProduct(xc, SIMD4(repeating: log2e))
        let n = t - sh
        let r = xc.addingProduct(n, SIMD4(repeating: -ln2Hi)).addingProduct(n, SIMD4(repeating: -ln2Lo))
        var p = SIMD4<Double>(repeating: taylor[0])
        for k in 1...12 { p = SIMD4<Double>(repeating: taylor[k]).addingProduct(p, r) }
        let ni = unsafeBitCast(t, to: SIMD4<UInt64>.self) &- unsafeBitCast(sh, to: SIMD4<UInt64>.self)
        let scale = unsafeBitCast((ni &+ 1023) &<< 52, to: SIMD4<Double>.self)
        return p * scale
    }

    /// Σ exp(Double(x[i] - shift)), shift >= every x[i]; the differences are taken in Float, as the scalar
    /// reference (Reference.negativeLogLikelihood) takes them.
    static func sumExp(_ x: UnsafePointer<Float>, count: Int, shift: Float) -> Double {
        var a0 = SIMD4<Double>(), a1 = SIMD4<Double>()
        let s = SIMD8<Float>(repeating: shift)
        var i = 0
        while i + 8 <= count {
            let d = loadU(x + i) - s
            a0 += exp4(SIMD4<Double>(d.lowHalf))
            a1 += exp4(SIMD4<Double>(d.highHalf))
            i += 8
        }
        var total = (a0 + a1).sum()
        while i < count {
            total += exp4(SIMD4<Double>(repeating: Double(x[i] - shift)))[0]
            i += 1
        }
        return total
    }

    static func maximum(_ x: UnsafePointer<Float>, count: Int) -> Float {
        var m = SIMD8<Float>(repeating: -.infinity)
        var i = 0
        // A compare-and-blend (vmaxps-like) the optimizer inlines; the generic pointwiseMax stayed a call.
        while i + 8 <= count { let v = loadU(x + i); m = m.replacing(with: v, where: v .> m); i += 8 }
        var best = m.max()
        while i < count { best = max(best, x[i]); i += 1 }
        return best
    }
}

extension Kernels {
    /// log softmax of a Float row, in Double: x[i] - (max + log Σ exp(x - max)), the differences taken in Float
    /// for the sum as Reference.logSoftmax takes them. For the KL-divergence files and statistics.
    public static func logSoftmax(_ x: UnsafePointer<Float>, count: Int, into out: UnsafeMutablePointer<Double>) {
        let mx = LogSumExp.maximum(x, count: count)
        let lse = Double(mx) + Foundation.log(LogSumExp.sumExp(x, count: count, shift: mx))
        for i in 0..<count { out[i] = Double(x[i]) - lse }
    }

    /// Negative log-likelihood of `target` under softmax(logits[0..<vocab]): max subtraction, exp and sum in
    /// Double (LogSumExp). Matches Reference.negativeLogLikelihood to about 1e-15 relative.
    public static func negativeLogLikelihood(_ logits: UnsafePointer<Float>, vocab: Int, target: Int) -> Double {
        let mx = LogSumExp.maximum(logits, count: vocab)
        let s = LogSumExp.sumExp(logits, count: vocab, shift: mx)
        return -(Double(logits[target] - mx) - Foundation.log(s))
    }
}

extension Kernels {
    /// Softmax and log-softmax of a Double row (the distillation loss): p[i] = exp(x[i] - max) / Σ, logs[i] =
    /// x[i] - max - log Σ, the exps four lanes at a time (LogSumExp.exp4, within 2e-16 relative of libm's).
    /// Returns the index of the largest entry (the first on ties).
    public static func softmaxAndLogs(_ x: UnsafePointer<Double>, count n: Int, logs: UnsafeMutablePointer<Double>,
                                      probabilities p: UnsafeMutablePointer<Double>) -> Int {
        var mx = -Double.infinity, arg = 0
        for i in 0..<n where x[i] > mx { mx = x[i]; arg = i }
        let m4 = SIMD4<Double>(repeating: mx)
        var a0 = SIMD4<Double>(), a1 = SIMD4<Double>()
        var i = 0
        while i + 8 <= n {
            let e0 = LogSumExp.exp4(UnsafeRawPointer(x + i).loadUnaligned(as: SIMD4<Double>.self) - m4)
            let e1 = LogSumExp.exp4(UnsafeRawPointer(x + i + 4).loadUnaligned(as: SIMD4<Double>.self) - m4)
            UnsafeMutableRawPointer(p + i).storeBytes(of: e0, as: SIMD4<Double>.self)
            UnsafeMutableRawPointer(p + i + 4).storeBytes(of: e1, as: SIMD4<Double>.self)
            a0 += e0; a1 += e1
            i += 8
        }
        var sum = (a0 + a1).sum()
        while i < n { p[i] = LogSumExp.exp4(SIMD4(repeating: x[i] - mx))[0]; sum += p[i]; i += 1 }
        let logSum = Foundation.log(sum), inv = 1 / sum
        for j in 0..<n { logs[j] = x[j] - mx - logSum; p[j] *= inv }
        return arg
    }

    /// The vector exp on one value (tests compare it with libm).
    public static func expForTesting(_ x: Double) -> Double { LogSumExp.exp4(SIMD4(repeating: x))[0] }
}
