import Foundation
import Models
import Quantization
import TensorCore

/// Linear layers of a quantized embedder. Weights are quantized by the Quantization target (RTN here, or read
/// from an AutoGPTQ-layout checkpoint) and run as their dequantized values, scale * (q - zero), through the float
/// kernel: the numerics of weight-only quantization with float activations (what the quantized CPU kernels
/// compute, up to summation order).
public struct RTNEmbedderBackend: LinearBackend {
    public let scheme: QuantScheme
    public init(scheme: QuantScheme) { self.scheme = scheme }

    public func makeLinear(name: String, source: WeightSource) throws -> LinearLayer {
        let w = try source.tensor(name + ".weight")
        guard w.shape.count == 2 else { throw QuantKitError(.shape, "\(name).weight: expected 2-D, got \(w.shape)") }
        let q = try RTN.quantize(w.floats(), outFeatures: w.shape[0], inFeatures: w.shape[1], scheme: scheme, name: name)
        let b = source.contains(name + ".bias") ? try source.tensor(name + ".bias") : nil
        return try DenseLinear(weight: Tensor(shape: w.shape, floats: q.dequantized()), bias: b, name: name)
    }
}

/// Linear layers read from a GPTQ checkpoint (qweight/qzeros/scales/g_idx, quantize_config.json).
public struct GPTQEmbedderBackend: LinearBackend {
    public let config: GPTQQuantizeConfig
    public init(directory: String) throws { config = try GPTQCheckpoint.readConfig(directory).config }

    public func makeLinear(name: String, source: WeightSource) throws -> LinearLayer {
        if source.contains(name + ".weight") { return try DenseBackend().makeLinear(name: name, source: source) }
        guard let ckpt = source as? SafetensorsCheckpoint else {
            throw QuantKitError(.unsupported, "\(name): GPTQ layers must come from a safetensors checkpoint")
        }
        let s = config.settings(for: name)
        let q = try GPTQPacking.readLayer(ckpt, prefix: name, bits: s.bits, groupSize: s.groupSize, symmetric: config.sym)
        let b = source.contains(name + ".bias") ? try source.tensor(name + ".bias") : nil
        return try DenseLinear(weight: Tensor(shape: [q.outFeatures, q.inFeatures], floats: q.dequantized()), bias: b, name: name)
    }
}

public enum EmbedderQuantSpec {
    /// "rtn-int8", "rtn-int4", "rtn-int4-g32", "rtn-int4-asym-g64": RTN with per-channel (default) or grouped
    /// scales, symmetric unless "asym".
    public static func parseRTN(_ spec: String) throws -> QuantScheme {
        let parts = spec.lowercased().split(separator: "-").map(String.init)
        guard parts.first == "rtn", parts.count >= 2, parts[1].hasPrefix("int"), let bits = Int(parts[1].dropFirst(3)) else {
            throw QuantKitError(.input, "quantized embedder \"\(spec)\": expected a GPTQ checkpoint directory or a scheme like rtn-int8, rtn-int4-g32, rtn-int4-asym-g64")
        }
        var sym = true, group = QuantScheme.perChannel
        for p in parts.dropFirst(2) {
            if p == "asym" { sym = false } else if p == "sym" { sym = true }
            else if p.hasPrefix("g"), let g = Int(p.dropFirst()), g > 0 { group = g }
            else { throw QuantKitError(.input, "quantized embedder \"\(spec)\": unknown part \"\(p)\"") }
        }
        return try QuantScheme(bits: bits, symmetric: sym, groupSize: group)
    }
}
