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

/// The integer codes a trained grouped layer stores: each latent weight rounded with its (trained) scale, the
/// scale first rounded to the checkpoint's float16, so that the file dequantizes to what training computed up to
/// that rounding.
public enum TrainedCodes {
    public static func quantized(_ m: TrainableLlama<Float>, module: String, bits: Int, symmetric: Bool, groupSize: Int) -> QuantizedWeight {
        let p = m.parameters
        let e = p.entry(module + ".weight")!
        let (out, inF) = (e.shape[0], e.shape[1])
        let w = p.value(module + ".weight"), s = p.array(module + ".scales").map { Float(Float16($0)) }
        let zeros = m.zeros[module]!, groups = m.groups[module]!
        let ng = s.count / out, maxq = Double((1 << bits) - 1)
        var codes = [UInt8](repeating: 0, count: out * inF)
        for r in 0..<out {
            for c in 0..<inF {
                let g = r * ng + Int(groups[c])
                let code = min(max((Double(w[r * inF + c]) / Double(s[g])).rounded(.toNearestOrEven) + Double(zeros[g]), 0), maxq)
                codes[r * inF + c] = UInt8(code)
            }
        }
        return QuantizedWeight(outFeatures: out, inFeatures: inF, bits: bits, symmetric: symmetric, groupSize: groupSize,
                               codes: codes, scales: s, zeros: zeros.map { Int32($0) }, gIdx: groups)
    }
}
