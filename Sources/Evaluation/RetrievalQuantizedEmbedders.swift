import Foundation
import Models
import Quantization
import TensorCore

/// Linear layers of an RTN-quantized embedder, quantized at load time by the Quantization target (the same
/// quantizer and QuantizedLinear layer the causal models use). A GPTQ checkpoint directory of an embedder
/// loads through Quantization's QuantizedLinearBackend instead.
public struct RTNEmbedderBackend: LinearBackend {
    public let scheme: QuantScheme
    public init(scheme: QuantScheme) { self.scheme = scheme }

    public func makeLinear(name: String, source: WeightSource) throws -> LinearLayer {
        let w = try source.tensor(name + ".weight")
        guard w.shape.count == 2 else { throw QuantKitError(.shape, "\(name).weight: expected 2-D, got \(w.shape)") }
        let q = try RTN.quantize(w.floats(), outFeatures: w.shape[0], inFeatures: w.shape[1], scheme: scheme, name: name)
        let b = source.contains(name + ".bias") ? try source.tensor(name + ".bias") : nil
        return try QuantizedLinear(q, bias: b, name: name)
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
        do { return try QuantScheme(bits: bits, symmetric: sym, groupSize: group) } catch let e as QuantKitError {
            throw QuantKitError(.input, "quantized embedder \"\(spec)\": \(e.message)")
        }
    }
}
