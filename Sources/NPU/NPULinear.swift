import Foundation
import Kernels
import TensorCore

/// One fully connected layer on the simulated NPU: float activations are quantized to int8 with the layer's
/// calibrated input parameters, multiplied on the integer GEMM with int32 bias, requantized to int8 with the
/// calibrated output parameters under `rule`, and dequantized back to float for the model code (the float value is
/// exactly what the int8 tensor represents).
public final class NPULinear: @unchecked Sendable {
    public let name: String
    public let weights: NPUWeights
    public let input: Int8AffineParams
    public let output: Int8AffineParams
    public let multipliers: [Requant.Multiplier]
    public let rule: RequantRule
    public let bias: [Int32]?
    public var inFeatures: Int { weights.k }
    public var outFeatures: Int { weights.n }

    /// bias (float, optional) is quantized to int32 with scale s_in * s_w[j] (zero point 0).
    public init(name: String, weights: NPUWeights, bias: [Float]?, input: Int8AffineParams, output: Int8AffineParams,
                rule: RequantRule = .default) throws {
        self.name = name
        self.weights = weights
        self.input = input
        self.output = output
        self.rule = rule
        var mults: [Requant.Multiplier] = []
        for j in 0..<weights.n {
            let m = Double(input.scale) * Double(weights.scales[j]) / Double(output.scale)
            // The xnnpack rule's float32 scale can overflow where the double is still finite.
            guard m.isFinite, m > 0, rule != .xnnpack || (input.scale * weights.scales[j] / output.scale).isFinite else {
                throw QuantKitError(.numeric, "\(name): requantization multiplier for channel \(j) is \(m) "
                                    + "(input \(input), weight scale \(weights.scales[j]), output \(output))")
            }
            mults.append(Requant.multiplier(inputScale: input.scale, weightScale: weights.scales[j], outputScale: output.scale,
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
        let yq = UnsafeMutablePointer<Int8>.allocate(capacity: rows * n)
        defer { xq.deallocate(); yq.deallocate() }
        input.quantize(x, count: rows * k, into: xq)
        multipliers.withUnsafeBufferPointer { mp in
            if let bias {
                bias.withUnsafeBufferPointer { bp in
                    IntGemm.run(x: xq, m: rows, k: k, weights: weights,
                                output: .int8(yq, zpX: input.zeroPoint, bias: bp.baseAddress!, multipliers: mp.baseAddress!,
                                              zpOut: output.zeroPoint, rule: rule), threads: threads)
                }
            } else {
                IntGemm.run(x: xq, m: rows, k: k, weights: weights,
                            output: .int8(yq, zpX: input.zeroPoint, bias: nil, multipliers: mp.baseAddress!,
                                          zpOut: output.zeroPoint, rule: rule), threads: threads)
            }
        }
        output.dequantize(yq, count: rows * n, into: out)
    }
}
