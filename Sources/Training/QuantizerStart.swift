import Foundation
import Quantization
import TensorCore

/// Where a grouped layer's fake quantizer starts: scales, integer zero points and column groups, either derived
/// from float weights by round-to-nearest or read from a post-training result (whose dequantized codes then
/// become the latent weights, so that step 0 reproduces that result exactly).
public struct QuantizerStart: Sendable {
    public var scales: [Float]
    public var zeros: [Float]
    public var groups: [Int32]

    /// The parameters QuantKit's RTN (the GPTQ reference quantizer) derives for `weight` [out, in].
    public static func roundToNearest(_ weight: [Float], outFeatures: Int, inFeatures: Int, scheme: QuantScheme,
                                      name: String) throws -> QuantizerStart {
        guard scheme.groupSize != QuantScheme.perTensor else {
            throw QuantKitError(.config, "\(name): fine-tuning trains per-channel or per-group scales, not one per tensor")
        }
        let q = try RTN.quantize(weight, outFeatures: outFeatures, inFeatures: inFeatures, scheme: scheme, name: name)
        return QuantizerStart(q)
    }

    public init(_ q: QuantizedWeight) {
        scales = q.scales
        zeros = q.zeros.map(Float.init)
        groups = q.gIdx
    }
}
