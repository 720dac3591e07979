import Foundation
import TensorCore

// Paired percentile bootstrap (Efron & Tibshirani 1993, ch. 13): resample the units (perplexity chunks or
// retrieval queries) with replacement, the same indices for base and quantized, and take percentiles of the
// statistic. Indices come from SplitMix64.index, so Tools/reference_bootstrap.py draws the very same resamples.

public struct ConfidenceInterval: Sendable, Equatable {
    public var estimate: Double
    public var lower: Double
    public var upper: Double
    public var level: Double
    public var resamples: Int
    public init(estimate: Double, lower: Double, upper: Double, level: Double, resamples: Int) {
        self.estimate = estimate; self.lower = lower; self.upper = upper; self.level = level; self.resamples = resamples
    }
}

public enum Bootstrap {
    public static let defaultSeed: UInt64 = 20_240_601
    public static let defaultResamples = 2000

    /// numpy's default percentile ("linear": position (n-1)*q between the sorted values).
    public static func percentile(_ sorted: [Double], _ q: Double) -> Double {
        guard !sorted.isEmpty else { return .nan }
        let pos = (Double(sorted.count) - 1) * q
        let lo = Int(pos.rounded(.down)), hi = min(lo + 1, sorted.count - 1)
        return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - Double(lo))
    }

    /// Generic paired bootstrap of `statistic(indices)` over `n` units; the estimate is the statistic of all units.
    static func run(n: Int, resamples: Int, seed: UInt64, level: Double,
                    statistic: ([Int]) -> Double) throws -> ConfidenceInterval {
        guard n >= 2 else { throw QuantKitError(.input, "a bootstrap needs at least 2 units, got \(n)") }
        guard resamples >= 10, level > 0, level < 1 else {
            throw QuantKitError(.input, "bootstrap needs >= 10 resamples and a level in (0, 1)")
        }
        var rng = SplitMix64(seed: seed)
        var idx = [Int](repeating: 0, count: n)
        var stats = [Double](); stats.reserveCapacity(resamples)
        for _ in 0..<resamples {
            for j in 0..<n { idx[j] = rng.index(n) }
            stats.append(statistic(idx))
        }
        stats.sort()
        let a = (1 - level) / 2
        return ConfidenceInterval(estimate: statistic(Array(0..<n)), lower: percentile(stats, a), upper: percentile(stats, 1 - a),
                                  level: level, resamples: resamples)
    }

    /// CI of QError = ppl_q / ppl_base - 1 over chunks: ppl = exp(sum NLL / sum count) on each resample.
    public static func qerror(base: [ChunkNLL], quantized: [ChunkNLL], resamples: Int = defaultResamples,
                              seed: UInt64 = defaultSeed, level: Double = 0.95) throws -> ConfidenceInterval {
        guard base.count == quantized.count else {
            throw QuantKitError(.input, "per-chunk NLL arrays differ in length (\(base.count) vs \(quantized.count)): not the same chunks")
        }
        for i in base.indices where base[i].count != quantized[i].count {
            throw QuantKitError(.input, "chunk \(i) scores \(base[i].count) tokens in the base run but \(quantized[i].count) in the quantized run")
        }
        return try run(n: base.count, resamples: resamples, seed: seed, level: level) { idx in
            var sb = 0.0, sq = 0.0, c = 0
            for i in idx { sb += base[i].nllSum; sq += quantized[i].nllSum; c += base[i].count }
            return exp((sq - sb) / Double(c)) - 1
        }
    }

    /// A bootstrap over paired per-query values (`base[i]` and `quantized[i]` score the same query).
    static func perQuery(base: [Double], quantized: [Double], resamples: Int, seed: UInt64, level: Double,
                         statistic: ([Int]) -> Double) throws -> ConfidenceInterval {
        guard base.count == quantized.count else {
            throw QuantKitError(.input, "per-query arrays differ in length (\(base.count) vs \(quantized.count))")
        }
        return try run(n: base.count, resamples: resamples, seed: seed, level: level, statistic: statistic)
    }

    /// CI of the relative drop of a mean metric (base mean - quantized mean) / base mean over paired units
    /// (queries). A resample with base mean 0 contributes 0.
    public static func relativeDrop(base: [Double], quantized: [Double], resamples: Int = defaultResamples,
                                    seed: UInt64 = defaultSeed, level: Double = 0.95) throws -> ConfidenceInterval {
        try perQuery(base: base, quantized: quantized, resamples: resamples, seed: seed, level: level) { idx in
            var sb = 0.0, sq = 0.0
            for i in idx { sb += base[i]; sq += quantized[i] }
            return sb == 0 ? 0 : (sb - sq) / sb
        }
    }

    /// CI of the mean difference (quantized - base) over paired units.
    public static func meanDelta(base: [Double], quantized: [Double], resamples: Int = defaultResamples,
                                 seed: UInt64 = defaultSeed, level: Double = 0.95) throws -> ConfidenceInterval {
        try perQuery(base: base, quantized: quantized, resamples: resamples, seed: seed, level: level) { idx in
            var s = 0.0
            for i in idx { s += quantized[i] - base[i] }
            return s / Double(idx.count)
        }
    }
}
