import Foundation
import TensorCore

/// Half-Quadratic Quantization (Badri & Shaji 2023; METHODS.md §4; behaviour of mobiusml/hqq
/// hqq/core/optimize.py, rewritten): calibration-free, per group of contiguous inputs of a row. The step Δ is fixed
/// by the group's min-max; only the zero point z is optimised, by alternating an l_p shrinkage of the error
/// (p < 1, robust to outliers) with a closed-form z update. The result is stored with integer zero points (the
/// AutoGPTQ layout), so the optimised z is rounded and each group is re-checked against min-max RTN.
///
/// Choices, with hqq's behaviour for comparison:
/// - Δ = (max - min)/maxq over the group's own min and max (0 need not be in range). A constant group gets Δ = 1 and
///   z = -min, which reconstructs it exactly; hqq's fp16 guards (Δ = 1 below a 1e-4 range, Δ >= 1/2e4) are not
///   needed in Double and are left out.
/// - z0 = -min/Δ, rounded when `roundInitialZero` (default: 4 bits only, as hqq_base_quant_config's round_zero).
/// - Early stop per group (hqq: on the error of the whole tensor): the error mean|W - W_r| of the current z is
///   measured before each update; when it does not fall, the best z so far is restored (hqq v2). The last update
///   is never kept unmeasured (v2 keeps it when no stop happens), so the reported error is the returned z's.
/// - Codes are clamp(round(W/Δ + z), 0, maxq) for the fractional and the integer z alike, rounding half to even.
///
/// Measured (stories260K, 2-8 bits): the fractional z lowers the weight MSE by 7-22%, but once z is rounded the
/// stored groups equal min-max RTN's (the rounded z is RTN's zero, or worse and replaced): the gain needs a format
/// that keeps a fractional zero.
public enum HQQ {
    public struct Config: Sendable, Equatable {
        /// Most z updates per group.
        public var iterations: Int
        /// The l_p norm of the error (0 < p <= 1).
        public var p: Double
        /// Half-quadratic penalty: starts at beta0, grows by kappa each iteration.
        public var beta0: Double
        public var kappa: Double
        /// Round z0 = -min/Δ before optimising; nil = hqq's default (4 bits only).
        public var roundInitialZero: Bool?

        public init(iterations: Int = 20, p: Double = 0.7, beta0: Double = 10, kappa: Double = 1.01,
                    roundInitialZero: Bool? = nil) {
            self.iterations = iterations
            self.p = p
            self.beta0 = beta0
            self.kappa = kappa
            self.roundInitialZero = roundInitialZero
        }

        func validate() throws {
            guard iterations >= 0 else { throw QuantKitError(.config, "HQQ iterations must be >= 0 (got \(iterations))") }
            guard p > 0, p <= 1 else { throw QuantKitError(.config, "HQQ p must be in (0, 1] (got \(p))") }
            guard beta0 > 0, beta0.isFinite else { throw QuantKitError(.config, "HQQ beta0 must be positive (got \(beta0))") }
            guard kappa >= 1, kappa.isFinite else { throw QuantKitError(.config, "HQQ kappa must be >= 1 (got \(kappa))") }
        }
    }

    /// Quantizes `weight` [out, in] (row-major) with the asymmetric `scheme` (bits, group size, minZero). Rows run
    /// in parallel; all arithmetic is Double.
    public static func quantize(_ weight: [Float], outFeatures: Int, inFeatures: Int, scheme: QuantScheme,
                                config: Config = Config(), name: String = "weight",
                                threads: Int = Parallel.defaultThreads) throws -> (QuantizedWeight, HQQReport) {
        guard !scheme.symmetric else {
            throw QuantKitError(.config, "\(name): HQQ optimises zero points and needs an asymmetric scheme (pass --asym)")
        }
        guard scheme.groupSize != QuantScheme.perTensor else {
            throw QuantKitError(.config, "\(name): HQQ works per group or per channel, not per tensor (group size 0)")
        }
        try config.validate()
        try scheme.validate(outFeatures: outFeatures, inFeatures: inFeatures, name: name)
        guard weight.count == outFeatures * inFeatures else {
            throw QuantKitError(.shape, "\(name): \(weight.count) values do not fill [\(outFeatures), \(inFeatures)]")
        }
        if let bad = weight.firstIndex(where: { !$0.isFinite }) {
            throw QuantKitError(.numeric, "\(name): non-finite weight \(weight[bad]) at [\(bad / inFeatures), \(bad % inFeatures)]")
        }
        let ng = scheme.groupCount(inFeatures: inFeatures), gs = scheme.effectiveGroupSize(inFeatures: inFeatures)
        let groups = outFeatures * ng
        let settings = GroupSettings(scheme: scheme, config: config)
        var codes = [UInt8](repeating: 0, count: weight.count)
        var scales = [Float](repeating: 0, count: groups)
        var zeros = [Int32](repeating: 0, count: groups)
        var results = [GroupResult](repeating: GroupResult(), count: groups)
        weight.withUnsafeBufferPointer { wb in
            codes.withUnsafeMutableBufferPointer { cb in
                scales.withUnsafeMutableBufferPointer { sb in
                    zeros.withUnsafeMutableBufferPointer { zb in
                        results.withUnsafeMutableBufferPointer { rb in
                            let wp = SendablePointer(wb.baseAddress!), cp = SendablePointer(cb.baseAddress!)
                            let sp = SendablePointer(sb.baseAddress!), zp = SendablePointer(zb.baseAddress!)
                            let rp = SendablePointer(rb.baseAddress!)
                            // ~20 passes over each weight: a few rows per thread already pay for the dispatch.
                            Parallel.forRanges(outFeatures, threads: threads, minPerThread: max(1, 4096 / inFeatures)) { rows in
                                let x = UnsafeMutablePointer<Double>.allocate(capacity: inFeatures)
                                let q = UnsafeMutablePointer<Double>.allocate(capacity: gs)
                                defer { x.deallocate(); q.deallocate() }
                                for r in rows {
                                    for c in 0..<inFeatures { x[c] = Double(wp[r * inFeatures + c]) }
                                    for g in 0..<ng {
                                        let c0 = g * gs, count = min(gs, inFeatures - c0)
                                        let out = settings.quantize(x + c0, count: count, codes: q)
                                        for c in 0..<count { cp[r * inFeatures + c0 + c] = UInt8(q[c]) }
                                        sp[r * ng + g] = Float(out.scale)
                                        zp[r * ng + g] = Int32(out.zero)
                                        rp[r * ng + g] = out.result
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        let gIdx = (0..<inFeatures).map { Int32($0 / gs) }
        let qw = QuantizedWeight(outFeatures: outFeatures, inFeatures: inFeatures, bits: scheme.bits, symmetric: false,
                                 groupSize: scheme.groupSize, codes: codes, scales: scales, zeros: zeros, gIdx: gIdx)
        return (qw, HQQReport(results, weights: weight.count))
    }

    /// One group's outcome (errors are sums of squares over the group).
    struct GroupResult: Sendable {
        var fractionalZero = 0.0
        var sseRTN = 0.0, sseFractional = 0.0, sseInteger = 0.0
        var usedRTN = false
        var updates = 0
    }

    /// The per-group algorithm with the scheme's constants.
    struct GroupSettings: Sendable {
        let maxq: Double, minZero: Double, roundInitial: Bool
        let iterations: Int, p: Double, beta0: Double, kappa: Double
        let scheme: QuantScheme

        init(scheme: QuantScheme, config: Config) {
            self.scheme = scheme
            maxq = Double(scheme.maxq)
            minZero = Double(scheme.minZero)
            roundInitial = config.roundInitialZero ?? (scheme.bits == 4)
            iterations = config.iterations
            p = config.p
            beta0 = config.beta0
            kappa = config.kappa
        }

        @inline(__always) func code(_ x: Double, step: Double, zero: Double) -> Double {
            min(max((x / step + zero).rounded(.toNearestOrEven), 0), maxq)
        }

        /// Quantizes x[0..<count]; the stored codes go to `codes`, the stored (scale, integer zero) are returned.
        func quantize(_ x: UnsafePointer<Double>, count: Int, codes: UnsafeMutablePointer<Double>)
            -> (scale: Double, zero: Double, result: GroupResult) {
            var lo = x[0], hi = x[0]
            for i in 1..<count { lo = min(lo, x[i]); hi = max(hi, x[i]) }
            let step = hi > lo ? (hi - lo) / maxq : 1
            var z = -lo / step
            if roundInitial { z = z.rounded(.toNearestOrEven) }
            var result = GroupResult()
            var best = Double.infinity, bestZ = z, beta = beta0
            for update in 0..<iterations {
                // One pass: the error of z, and the next z from it. W_e shrinks e toward 0 by |e|^(p-1)/β (the l_p
                // proximal step); z' = mean(W_q - (W - W_e)/Δ).
                var err = 0.0, sum = 0.0
                for i in 0..<count {
                    let qi = code(x[i], step: step, zero: z), e = x[i] - step * (qi - z)
                    let a = abs(e)
                    err += a
                    let shrunk = a == 0 ? 0 : max(a - pow(a, p - 1) / beta, 0)
                    sum += qi - (x[i] - (e < 0 ? -shrunk : shrunk)) / step
                }
                err /= Double(count)
                guard err < best else { break }
                best = err
                bestZ = z
                result.updates = update
                z = sum / Double(count)
                beta *= kappa
            }
            result.fractionalZero = bestZ
            result.sseFractional = sse(x, count: count, step: step, zero: bestZ)
            let zInt = min(max(bestZ.rounded(.toNearestOrEven), minZero), maxq)
            result.sseInteger = sse(x, count: count, step: step, zero: zInt)
            let rtn = Quantizer.params(x, count: count, scheme: scheme)
            var sseRTN = 0.0
            for i in 0..<count { let d = x[i] - Quantizer.dequantize(x[i], rtn, maxq: maxq); sseRTN += d * d }
            result.sseRTN = sseRTN
            if result.sseInteger > sseRTN {
                result.usedRTN = true
                for i in 0..<count { codes[i] = Quantizer.code(x[i], rtn, maxq: maxq) }
                return (rtn.scale, rtn.zero, result)
            }
            for i in 0..<count { codes[i] = code(x[i], step: step, zero: zInt) }
            return (step, zInt, result)
        }

        func sse(_ x: UnsafePointer<Double>, count: Int, step: Double, zero: Double) -> Double {
            var s = 0.0
            for i in 0..<count { let d = x[i] - step * (code(x[i], step: step, zero: zero) - zero); s += d * d }
            return s
        }
    }
}

/// What HQQ did to one matrix. Per-group arrays are [out, groups] like the scales; squared errors are in Double
/// with the Double step (before the scale is stored as Float).
public struct HQQReport: Sendable {
    public let groups: Int
    /// Groups whose integer-zero HQQ error is strictly below min-max RTN's.
    public let improved: Int
    /// Groups whose integer-zero HQQ error is above RTN's: the RTN group was stored instead.
    public let fellBack: Int
    /// Mean squared weight error over the matrix: min-max RTN (QuantScheme's quantizer), HQQ with its fractional
    /// z, HQQ with z rounded to an integer, and what was stored (the better of the last and RTN, per group).
    public let mseRTN: Double, mseFractional: Double, mseInteger: Double, mseStored: Double
    /// The optimised (fractional) zero point of every group.
    public let fractionalZeros: [Double]
    public let sseRTN: [Double], sseFractional: [Double], sseInteger: [Double]
    public let usedRTN: [Bool]
    /// z updates behind each group's returned z (0: z0 was best; at most iterations - 1).
    public let updates: [Int]

    init(_ r: [HQQ.GroupResult], weights: Int) {
        groups = r.count
        improved = r.filter { $0.sseInteger < $0.sseRTN }.count
        fellBack = r.filter(\.usedRTN).count
        fractionalZeros = r.map(\.fractionalZero)
        sseRTN = r.map(\.sseRTN)
        sseFractional = r.map(\.sseFractional)
        sseInteger = r.map(\.sseInteger)
        usedRTN = r.map(\.usedRTN)
        updates = r.map(\.updates)
        let n = Double(weights)
        mseRTN = sseRTN.reduce(0, +) / n
        mseFractional = sseFractional.reduce(0, +) / n
        mseInteger = sseInteger.reduce(0, +) / n
        mseStored = r.reduce(0) { $0 + min($1.sseInteger, $1.sseRTN) } / n
    }
}
