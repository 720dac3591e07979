import Foundation
import Kernels
import TensorCore

/// A linear layer's output format other than per-tensor affine int8.
public enum NPUOutputFormat: Equatable, Sendable {
    /// Symmetric int16 (zero point 0) at this scale.
    case int16(scale: Float)
    /// Symmetric int8 (zero point 0), one scale per output channel.
    case int8PerChannel(scales: [Float])
}

/// One fully connected layer on the simulated NPU: float activations are quantized to int8 with the layer's
/// calibrated input parameters, multiplied on the integer GEMM with int32 bias, requantized to int8 with the
/// calibrated output parameters under `rule`, and dequantized back to float for the model code (the float value is
/// exactly what the int8 tensor represents). `outputFormat` replaces the per-tensor int8 output: int16 (symmetric,
/// zero point 0), as an NPU with 16-bit activations writes it, or int8 with a symmetric scale per channel; the
/// input stays per-tensor int8.
public final class NPULinear: @unchecked Sendable {
    public let name: String
    public let weights: NPUWeights
    public let input: Int8AffineParams
    public let output: Int8AffineParams
    /// The output when it is not the per-tensor int8 `output`.
    public let outputFormat: NPUOutputFormat?
    public let multipliers: [Requant.Multiplier]
    public let rule: RequantRule
    public let bias: [Int32]?
    public var inFeatures: Int { weights.k }
    public var outFeatures: Int { weights.n }

    /// bias (float, optional) is quantized to int32 with scale s_in * s_w[j] (zero point 0).
    public init(name: String, weights: NPUWeights, bias: [Float]?, input: Int8AffineParams, output: Int8AffineParams,
                outputFormat: NPUOutputFormat? = nil, rule: RequantRule = .default) throws {
        self.name = name
        self.weights = weights
        self.input = input
        self.output = output
        self.outputFormat = outputFormat
        self.rule = rule
        if case .int8PerChannel(let s) = outputFormat, s.count != weights.n {
            throw QuantKitError(.shape, "\(name): \(s.count) per-channel output scales for \(weights.n) outputs")
        }
        var mults: [Requant.Multiplier] = []
        for j in 0..<weights.n {
            let outScale: Float
            switch outputFormat {
            case nil: outScale = output.scale
            case .int16(let s): outScale = s
            case .int8PerChannel(let s): outScale = s[j]
            }
            let m = Double(input.scale) * Double(weights.scales[j]) / Double(outScale)
            // The xnnpack rule's float32 scale can overflow where the double is still finite.
            guard m.isFinite, m > 0, rule != .xnnpack || (input.scale * weights.scales[j] / outScale).isFinite else {
                throw QuantKitError(.numeric, "\(name): requantization multiplier for channel \(j) is \(m) "
                                    + "(input \(input), weight scale \(weights.scales[j]), output scale \(outScale))")
            }
            mults.append(Requant.multiplier(inputScale: input.scale, weightScale: weights.scales[j], outputScale: outScale,
                                            perTensor: weights.granularity == .perTensor, rule: rule))
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
        defer { xq.deallocate() }
        input.quantize(x, count: rows * k, into: xq)
        let zpX = input.zeroPoint
        func run(_ bias: UnsafePointer<Int32>?, _ mults: UnsafePointer<Requant.Multiplier>) {
            switch outputFormat {
            case .int16(let s16):
                let yq = UnsafeMutablePointer<Int16>.allocate(capacity: rows * n)
                defer { yq.deallocate() }
                IntGemm.run(x: xq, m: rows, k: k, weights: weights,
                            output: .int16(yq, zpX: zpX, bias: bias, multipliers: mults, rule: rule), threads: threads)
                for i in 0..<rows * n { out[i] = s16 * Float(yq[i]) }
            case .int8PerChannel(let scales):
                let yq = UnsafeMutablePointer<Int8>.allocate(capacity: rows * n)
                defer { yq.deallocate() }
                IntGemm.run(x: xq, m: rows, k: k, weights: weights,
                            output: .int8(yq, zpX: zpX, bias: bias, multipliers: mults, zpOut: 0, rule: rule), threads: threads)
                for r in 0..<rows { for j in 0..<n { out[r * n + j] = scales[j] * Float(yq[r * n + j]) } }
            case nil:
                let yq = UnsafeMutablePointer<Int8>.allocate(capacity: rows * n)
                defer { yq.deallocate() }
                IntGemm.run(x: xq, m: rows, k: k, weights: weights,
                            output: .int8(yq, zpX: zpX, bias: bias, multipliers: mults, zpOut: output.zeroPoint, rule: rule),
                            threads: threads)
                output.dequantize(yq, count: rows * n, into: out)
            }
        }
        multipliers.withUnsafeBufferPointer { mp in
            if let bias { bias.withUnsafeBufferPointer { run($0.baseAddress!, mp.baseAddress!) } } else { run(nil, mp.baseAddress!) }
        }
    }
}
