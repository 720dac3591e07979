import Foundation
import Kernels
import TensorCore

/// One fully connected layer on the simulated NPU: float activations are quantized to int8 with the layer's
/// calibrated input parameters, multiplied on the integer GEMM with int32 bias, requantized to int8 with the
/// calibrated output parameters under `rule`, and dequantized back to float for the model code (the float value is
/// exactly what the int8 tensor represents). With `int16OutputScale` the output is int16 instead (symmetric, zero
/// point 0, that scale), as an NPU with 16-bit activations writes it; the input stays int8.
public final class NPULinear: @unchecked Sendable {
    public let name: String
    public let weights: NPUWeights
    public let input: Int8AffineParams
    public let output: Int8AffineParams
    /// The int16 output's scale, or nil for the int8 output `output`.
    public let int16OutputScale: Float?
    public let multipliers: [Requant.Multiplier]
    public let rule: RequantRule
    public let bias: [Int32]?
    public var inFeatures: Int { weights.k }
    public var outFeatures: Int { weights.n }

    /// bias (float, optional) is quantized to int32 with scale s_in * s_w[j] (zero point 0).
    public init(name: String, weights: NPUWeights, bias: [Float]?, input: Int8AffineParams, output: Int8AffineParams,
                int16OutputScale: Float? = nil, rule: RequantRule = .default) throws {
        self.name = name
        self.weights = weights
        self.input = input
        self.output = output
        self.int16OutputScale = int16OutputScale
        self.rule = rule
        let outScale = int16OutputScale ?? output.scale
        var mults: [Requant.Multiplier] = []
        for j in 0..<weights.n {
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
            if let s16 = int16OutputScale {
                let yq = UnsafeMutablePointer<Int16>.allocate(capacity: rows * n)
                defer { yq.deallocate() }
                IntGemm.run(x: xq, m: rows, k: k, weights: weights,
                            output: .int16(yq, zpX: zpX, bias: bias, multipliers: mults, rule: rule), threads: threads)
                for i in 0..<rows * n { out[i] = s16 * Float(yq[i]) }
            } else {
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
