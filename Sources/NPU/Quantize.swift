import Foundation
import TensorCore

/// Round half away from zero, as TFLite's TfLiteRound / std::round.
@inlinable @inline(__always)
func roundAway(_ x: Float) -> Float { x.rounded(.toNearestOrAwayFromZero) }

/// Per-tensor affine int8 parameters: real = scale * (q - zeroPoint), q in [-128, 127].
public struct Int8AffineParams: Codable, Equatable, Sendable, CustomStringConvertible {
    public var scale: Float
    public var zeroPoint: Int32

    public init(scale: Float, zeroPoint: Int32) {
        self.scale = scale
        self.zeroPoint = zeroPoint
    }

    /// TFLite's choice for an int8 range: the range is widened to include 0 (so 0 is exact), scale =
    /// (max - min) / 255, zero point = round(-128 - min / scale) clamped to [-128, 127].
    public static func fromRange(min lo: Float, max hi: Float) -> Int8AffineParams {
        let lo = Swift.min(lo, 0), hi = Swift.max(hi, 0)
        // An all-zero tensor: any scale represents it; pick one that keeps the multiplier finite.
        let scale = hi - lo > 1e-30 ? (hi - lo) / 255 : 1e-8
        let zp = roundAway(-128 - lo / scale)
        return Int8AffineParams(scale: scale, zeroPoint: Int32(Swift.min(127, Swift.max(-128, zp))))
    }

    @inlinable @inline(__always)
    public func quantize(_ x: Float) -> Int8 {
        let v = roundAway(x / scale)
        // Clamp in Float first: huge inputs must not trap on the Int32 conversion.
        let c = Swift.min(Swift.max(v + Float(zeroPoint), -128), 127)
        return c.isNaN ? Int8(truncatingIfNeeded: zeroPoint) : Int8(c)
    }

    @inlinable @inline(__always)
    public func dequantize(_ q: Int8) -> Float { scale * Float(Int32(q) - zeroPoint) }

    public func quantize(_ x: UnsafePointer<Float>, count: Int, into out: UnsafeMutablePointer<Int8>) {
        for i in 0..<count { out[i] = quantize(x[i]) }
    }

    public func dequantize(_ q: UnsafePointer<Int8>, count: Int, into out: UnsafeMutablePointer<Float>) {
        for i in 0..<count { out[i] = dequantize(q[i]) }
    }

    public var description: String { String(format: "scale=%.6g zp=%d", scale, zeroPoint) }
}

/// How activation ranges are chosen from calibration samples.
public enum CalibrationMethod: Equatable, Sendable, CustomStringConvertible {
    /// The observed minimum and maximum.
    case minMax
    /// The p-th and (100-p)-th percentiles of the observed values (p in (50, 100)), e.g. 99.99.
    case percentile(Double)
    /// The range [a*min, a*max], a in {0.30, 0.31, ..., 1.00}, minimising the int8 round-trip MSE of the samples.
    case mse

    public var description: String {
        switch self {
        case .minMax: return "minmax"
        case .percentile(let p): return "percentile(\(p))"
        case .mse: return "mse"
        }
    }

    /// Values a tensor needs before this method means anything: a percentile p needs at least 1/(1 - p/100)
    /// samples to place one sample beyond it.
    public var minimumSamples: Int {
        switch self {
        case .minMax: return 1
        case .percentile(let p): return Int((1 / (1 - p / 100)).rounded(.up))
        case .mse: return 256
        }
    }
}

/// Collects a tensor's range during calibration: exact min/max plus a bounded deterministic reservoir sample
/// (Algorithm R) for percentile and MSE ranges.
public final class RangeObserver: @unchecked Sendable {
    public let name: String
    public private(set) var minValue: Float = .infinity
    public private(set) var maxValue: Float = -.infinity
    public private(set) var count: Int = 0
    public private(set) var samples: [Float] = []
    public let capacity: Int
    private var rng = SplitMix64(seed: 0x243F6A8885A308D3)
    private let lock = NSLock()

    public init(name: String, capacity: Int = 1 << 18) {
        self.name = name
        self.capacity = capacity
    }

    public func observe(_ x: UnsafePointer<Float>, count n: Int) {
        lock.lock(); defer { lock.unlock() }
        for i in 0..<n {
            let v = x[i]
            guard v.isFinite else { continue }
            minValue = min(minValue, v)
            maxValue = max(maxValue, v)
            count += 1
            if samples.count < capacity {
                samples.append(v)
            } else {
                let j = rng.index(count)
                if j < capacity { samples[j] = v }
            }
        }
    }

    public func observe(_ x: [Float]) { x.withUnsafeBufferPointer { observe($0.baseAddress!, count: $0.count) } }

    /// The int8 parameters this tensor gets under `method`; throws when calibration saw too few values.
    public func params(_ method: CalibrationMethod) throws -> Int8AffineParams {
        try checkCount(method)
        switch method {
        case .minMax:
            return Int8AffineParams.fromRange(min: minValue, max: maxValue)
        case .percentile(let p):
            let sorted = samples.sorted()
            let hi = Self.percentile(sorted, p / 100), lo = Self.percentile(sorted, 1 - p / 100)
            return Int8AffineParams.fromRange(min: lo, max: hi)
        case .mse:
            return Self.mseOptimal(samples: samples, min: minValue, max: maxValue)
        }
    }

    /// The symmetric int16 scale (zero point 0) this tensor gets under `method`: the larger magnitude of the
    /// method's range over 32767. mse, whose search is over int8 ranges, takes the min/max range (int16 steps are
    /// 256 times finer, so clipping buys nothing).
    public func int16Scale(_ method: CalibrationMethod) throws -> Float {
        try checkCount(method == .mse ? .minMax : method)
        var lo = minValue, hi = maxValue
        if case .percentile(let p) = method {
            let sorted = samples.sorted()
            (lo, hi) = (Self.percentile(sorted, 1 - p / 100), Self.percentile(sorted, p / 100))
        }
        let amax = Swift.max(abs(lo), abs(hi))
        return amax > 1e-30 ? amax / 32767 : 1e-8
    }

    /// Throws when calibration saw fewer values than `method` needs.
    func checkCount(_ method: CalibrationMethod) throws {
        let need = method.minimumSamples
        guard count >= need else {
            throw QuantKitError(.input, "calibration too small for tensor '\(name)': \(count) finite values observed, "
                                + "\(method) needs at least \(need); give more calibration tokens or use minmax")
        }
    }

    /// Linear interpolation between closest ranks (numpy's default "linear" method).
    static func percentile(_ sorted: [Float], _ q: Double) -> Float {
        if sorted.count == 1 { return sorted[0] }
        let pos = q * Double(sorted.count - 1)
        let i = Int(pos.rounded(.down)), f = Float(pos - Double(i))
        if i + 1 >= sorted.count { return sorted[sorted.count - 1] }
        return sorted[i] + (sorted[i + 1] - sorted[i]) * f
    }

    static func mseOptimal(samples: [Float], min lo: Float, max hi: Float) -> Int8AffineParams {
        // Score at most 65,536 evenly strided samples: enough to rank 71 candidate ranges.
        let stride = Swift.max(1, samples.count / 65536)
        var best = Int8AffineParams.fromRange(min: lo, max: hi), bestErr = Double.infinity
        for step in 30...100 {
            let a = Float(step) / 100
            let p = Int8AffineParams.fromRange(min: a * lo, max: a * hi)
            var err: Double = 0
            var i = 0
            while i < samples.count {
                let d = Double(samples[i] - p.dequantize(p.quantize(samples[i])))
                err += d * d
                i += stride
            }
            if err < bestErr { bestErr = err; best = p }
        }
        return best
    }
}
