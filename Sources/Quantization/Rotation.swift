import Foundation
import Kernels
import Models
import TensorCore

/// Rotation of the residual stream (QuaRot, Ashkboos et al. 2024; SpinQuant's R1/R4 without training), as
/// METHODS.md §3 states it: the RMSNorm gains are folded into the linears that read the normed stream, then an
/// orthogonal Q turns every weight that reads or writes the stream (x -> x Q) and an orthonormal Hadamard T is
/// folded into down_proj and applied online to its input. RMSNorm commutes with Q once its gain is 1, so the float
/// model computes the same function; the rotated weights have far fewer outliers, which is what quantization needs.
public enum Rotation {
    /// Rotates `weights` in place with Q = `Hadamard.orthogonal(n: hidden, seed:)` (a randomized Hadamard, or a
    /// random orthogonal matrix when no Hadamard order fits) and, when `onlineHadamard` and the MLP width has a
    /// Hadamard order, T = H/sqrt(n) on down_proj's input.
    public static func apply(to weights: LlamaFloatWeights, seed: UInt64, onlineHadamard: Bool = true,
                             threads: Int = Parallel.defaultThreads) throws -> RecoveryRecord.RotationSettings {
        let c = weights.config
        let q = Hadamard.orthogonal(n: c.hiddenSize, seed: seed)
        var t: [Double]?
        if onlineHadamard, let s = Hadamard.signMatrix(order: c.intermediateSize) {
            let scale = 1 / Double(c.intermediateSize).squareRoot()
            t = s.map { Double($0) * scale }
        }
        try apply(to: weights, q: q, t: t, threads: threads)
        return .init(seed: seed, residual: Hadamard.factorization(of: c.hiddenSize) != nil ? "hadamard" : "orthogonal",
                     onlineHadamard: t != nil)
    }

    /// The transform with explicit matrices: Q [hidden, hidden] and optional T [intermediate, intermediate], both
    /// orthogonal, row-major. With T the model is marked to apply the Hadamard online, so T must be H/sqrt(n) for
    /// the marked model to compute the original function (tests may pass any orthogonal T and apply it themselves).
    public static func apply(to weights: LlamaFloatWeights, q: [Double], t: [Double]?, threads: Int = Parallel.defaultThreads) throws {
        let c = weights.config
        let dim = c.hiddenSize
        guard q.count == dim * dim else { throw QuantKitError(.shape, "rotation: Q must be \(dim)x\(dim)") }
        if let t, t.count != c.intermediateSize * c.intermediateSize {
            throw QuantKitError(.shape, "rotation: T must be \(c.intermediateSize)x\(c.intermediateSize)")
        }
        guard c.downProjInputHadamard != true else { throw QuantKitError(.input, "\(weights.label): the model is already rotated") }
        foldNorms(weights)
        weights.rightMultiply("model.embed_tokens.weight", by: q, threads: threads)
        weights.rightMultiply("lm_head.weight", by: q, threads: threads)
        for i in 0..<c.numHiddenLayers {
            let p = "model.layers.\(i)."
            for rel in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"] {
                weights.rightMultiply(p + rel + ".weight", by: q, threads: threads)
            }
            weights.leftMultiplyTransposed(p + "self_attn.o_proj", by: q, threads: threads)
            weights.leftMultiplyTransposed(p + "mlp.down_proj", by: q, threads: threads)
            if let t { weights.rightMultiply(p + "mlp.down_proj.weight", by: t, threads: threads) }
        }
        weights.setDownProjHadamard(t != nil)
    }

    /// Folds every RMSNorm gain into the linears reading its output (columns scaled) and sets it to 1; a tied
    /// head is untied first (the embedding must not take the final norm's gain).
    public static func foldNorms(_ weights: LlamaFloatWeights) {
        let c = weights.config
        weights.untieHead()
        func fold(_ gain: String, into linears: [String]) {
            let g = weights.values(gain)
            for l in linears { weights.scaleColumns(l, by: g) }
            weights.set(gain, shape: [g.count], values: [Double](repeating: 1, count: g.count))
        }
        for i in 0..<c.numHiddenLayers {
            let p = "model.layers.\(i)."
            fold(p + "input_layernorm.weight", into: ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"].map { p + $0 + ".weight" })
            fold(p + "post_attention_layernorm.weight", into: ["mlp.gate_proj", "mlp.up_proj"].map { p + $0 + ".weight" })
        }
        fold("model.norm.weight", into: ["lm_head.weight"])
    }
}
