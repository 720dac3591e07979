import Foundation
import Kernels
import TensorCore

/// One fully connected layer on the simulated NPU: float activations are quantized to int8 with the layer's
/// calibrated input parameters, multiplied on the integer GEMM with int32 bias, requantized to int8 with the
/// calibrated output parameters, and dequantized back to float for the model code (the float value is exactly
/// what the int8 tensor represents).
public final class NPULinear: @unchecked Sendable {
    public let name: String
    public let weights: NPUWeights
    public let input: QuantParams
    public let output: QuantParams
    public let multipliers: [Requant.Multiplier]
    public let bias: [Int32]?
    public var inFeatures: Int { weights.k }
    public var outFeatures: Int { weights.n }

    /// bias (float, optional) is quantized to int32 with scale s_in * s_w[j] (zero point 0).
    public init(name: String, weights: NPUWeights, bias: [Float]?, input: QuantParams, output: QuantParams) throws {
        self.name = name
        self.weights = weights
        self.input = input
        self.output = output
        var mults: [Requant.Multiplier] = []
        for j in 0..<weights.n {
            let m = Double(input.scale) * Double(weights.scales[j]) / Double(output.scale)
            guard m.isFinite, m > 0 else {
                throw QuantKitError(.numeric, "\(name): requantization multiplier for channel \(j) is \(m) "
                                    + "(input \(input), weight scale \(weights.scales[j]), output \(output))")
            }
            mults.append(Requant.quantizeMultiplier(m))
        }
        self.multipliers = mults
        if let bias {
            guard bias.count == weights.n else {
                throw QuantKitError(.shape, "\(name): bias has \(bias.count) values for \(weights.n) outputs")
            }
            self.bias = (0..<weights.n).map { j in
                let v = (Double(bias[j]) / (Double(input.scale) * Double(weights.scales[j]))).rounded(.toNearestOrAwayFromZero)
                return Int32(max(Double(Int32.min), min(Double(Int32.max), v)))
            }
        } else {
            self.bias = nil
        }
    }

    /// out[rows, outFeatures] = NPU(x[rows, inFeatures]).
    public func forward(x: UnsafePointer<Float>, rows: Int, out: UnsafeMutablePointer<Float>,
                        threads: Int = Parallel.defaultThreads) {
        let k = inFeatures, n = outFeatures
        let xq = UnsafeMutablePointer<Int8>.allocate(capacity: rows * k)
        let yq = UnsafeMutablePointer<Int8>.allocate(capacity: rows * n)
        defer { xq.deallocate(); yq.deallocate() }
        input.quantize(x, count: rows * k, into: xq)
        multipliers.withUnsafeBufferPointer { mp in
            if let bias {
                bias.withUnsafeBufferPointer { bp in
                    IntGemm.run(x: xq, m: rows, k: k, weights: weights,
                                output: .int8(yq, zpX: input.zeroPoint, bias: bp.baseAddress!, multipliers: mp.baseAddress!,
                                              zpOut: output.zeroPoint), threads: threads)
                }
            } else {
                IntGemm.run(x: xq, m: rows, k: k, weights: weights,
                            output: .int8(yq, zpX: input.zeroPoint, bias: nil, multipliers: mp.baseAddress!,
                                          zpOut: output.zeroPoint), threads: threads)
            }
        }
        output.dequantize(yq, count: rows * n, into: out)
    }
}

/// Error of an approximation against a reference tensor (SPECS.md "Quantization error per tensor").
public struct ErrorMetrics: Codable, Equatable, Sendable {
    public var count: Int
    public var mse: Double
    public var cosine: Double
    /// 10 log10(sum ref^2 / sum (ref - q)^2)
    public var sqnrDB: Double
    /// 10 log10(max(ref)^2 / MSE), max over |ref|
    public var psnrDB: Double
    public var maxAbsError: Double

    enum CodingKeys: String, CodingKey {
        case count, mse, cosine, sqnrDB = "sqnr_db", psnrDB = "psnr_db", maxAbsError = "max_abs_error"
    }

    public static let definitions = "SQNR = 10 log10(sum ref^2 / sum (ref - npu)^2) dB; PSNR = 10 log10(max|ref|^2 / MSE) dB"

    public init(reference ref: UnsafePointer<Float>, approximation q: UnsafePointer<Float>, count: Int) {
        var se = 0.0, sr = 0.0, sq = 0.0, dot = 0.0, peak = 0.0, mx = 0.0
        for i in 0..<count {
            let r = Double(ref[i]), a = Double(q[i]), d = r - a
            se += d * d; sr += r * r; sq += a * a; dot += r * a
            peak = max(peak, abs(r)); mx = max(mx, abs(d))
        }
        self.count = count
        mse = count > 0 ? se / Double(count) : 0
        cosine = sr > 0 && sq > 0 ? dot / (sr.squareRoot() * sq.squareRoot()) : (sr == sq ? 1 : 0)
        sqnrDB = se > 0 ? 10 * log10(sr / se) : .infinity
        psnrDB = mse > 0 ? 10 * log10(peak * peak / mse) : .infinity
        maxAbsError = mx
    }

    public init(reference: [Float], approximation: [Float]) {
        precondition(reference.count == approximation.count)
        self = reference.withUnsafeBufferPointer { r in
            approximation.withUnsafeBufferPointer { a in ErrorMetrics(reference: r.baseAddress!, approximation: a.baseAddress!, count: r.count) }
        }
    }
}

/// Running error totals over many calls of one layer (sums, so the result equals ErrorMetrics on the
/// concatenated outputs).
public final class ErrorAccumulator: @unchecked Sendable {
    var se = 0.0, sr = 0.0, sq = 0.0, dot = 0.0, peak = 0.0, mx = 0.0
    var count = 0
    private let lock = NSLock()
    public init() {}

    public func add(reference ref: UnsafePointer<Float>, approximation q: UnsafePointer<Float>, count n: Int) {
        lock.lock(); defer { lock.unlock() }
        for i in 0..<n {
            let r = Double(ref[i]), a = Double(q[i]), d = r - a
            se += d * d; sr += r * r; sq += a * a; dot += r * a
            peak = max(peak, abs(r)); mx = max(mx, abs(d))
        }
        count += n
    }

    public var metrics: ErrorMetrics {
        lock.lock(); defer { lock.unlock() }
        var m = ErrorMetrics(reference: [], approximation: [])
        m.count = count
        m.mse = count > 0 ? se / Double(count) : 0
        m.cosine = sr > 0 && sq > 0 ? dot / (sr.squareRoot() * sq.squareRoot()) : (sr == sq ? 1 : 0)
        m.sqnrDB = se > 0 ? 10 * log10(sr / se) : .infinity
        m.psnrDB = m.mse > 0 ? 10 * log10(peak * peak / m.mse) : .infinity
        m.maxAbsError = mx
        return m
    }
}
