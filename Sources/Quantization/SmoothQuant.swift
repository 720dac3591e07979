import Foundation
import Models
import TensorCore

/// SmoothQuant (Xiao et al. 2022), METHODS.md §2: per input channel s_j = a_j^α / b_j^(1-α) moves the activation
/// outliers of the normed stream into the weights that read it (x -> x / s, W -> W diag(s)), folded into the
/// RMSNorm gain so the float model is unchanged. Applied where the inputs come from a norm: q/k/v and gate/up.
public enum SmoothQuant {
    /// Per block, the max |x_j| over the calibration tokens of the attention and MLP norms' outputs.
    public struct Statistics: Sendable {
        public var attention: [[Double]]
        public var mlp: [[Double]]
        /// The SwiGLU product entering down_proj (for the extension that smooths it through up_proj's rows).
        public var down: [[Double]]
        public var tokens: Int
    }

    /// Runs the float `model` on `windows` (each from position 0) and records the statistics.
    public static func statistics(model: LlamaModel, windows: [[Int32]]) throws -> Statistics {
        var wanted: [String: (inputs: Bool, outputs: Bool)] = [:]
        for b in model.blocks {
            wanted[b.prefix + "self_attn.q_proj"] = (false, false)
            wanted[b.prefix + "mlp.gate_proj"] = (false, false)
            wanted[b.prefix + "mlp.down_proj"] = (false, false)
        }
        let capture = ActivationCapture(wanted)
        let saved = model.observer
        model.observer = capture
        defer { model.observer = saved }
        let longest = windows.map(\.count).max() ?? 0
        guard longest > 0 else { throw QuantKitError(.input, "SmoothQuant needs calibration tokens") }
        let cache = model.makeCache(capacity: longest)
        let state = model.makeState(maxRows: longest)
        var tokens = 0
        for w in windows where !w.isEmpty {
            try model.validate(tokens: w)
            cache.reset()
            _ = model.forward(w, cache: cache, state: state)
            tokens += w.count
        }
        let mods = capture.modules
        return Statistics(attention: model.blocks.map { mods[$0.prefix + "self_attn.q_proj"]!.absMax },
                          mlp: model.blocks.map { mods[$0.prefix + "mlp.gate_proj"]!.absMax },
                          down: model.blocks.map { mods[$0.prefix + "mlp.down_proj"]!.absMax }, tokens: tokens)
    }

    /// s_j = max(a_j^α / max(b_j, 1e-5)^(1-α), 1e-5), b_j = max |W_ij| over the rows of every linear sharing the input.
    public static func scales(activationMax a: [Double], weights: LlamaFloatWeights, linears: [String], alpha: Double) -> [Double] {
        var b = [Double](repeating: 0, count: a.count)
        for l in linears {
            let shape = weights.shape(l), w = weights.values(l)
            for r in 0..<shape[0] { for j in 0..<shape[1] { b[j] = max(b[j], abs(w[r * shape[1] + j])) } }
        }
        return zip(a, b).map { max(pow($0, alpha) / pow(max($1, 1e-5), 1 - alpha), 1e-5) }
    }

    /// Folds the smoothing into `weights` in place; returns the scales per block (attention, mlp). With
    /// `smoothDown` (an extension beyond the paper, METHODS.md §2) down_proj's input is smoothed too, folded into
    /// up_proj's rows (exact: silu(gate) * up is linear in up).
    @discardableResult
    public static func apply(to weights: LlamaFloatWeights, statistics st: Statistics, alpha: Double,
                             smoothDown: Bool = false) throws -> [(attention: [Double], mlp: [Double])] {
        guard alpha >= 0, alpha <= 1 else { throw QuantKitError(.input, "--smoothquant-alpha must be in [0, 1] (got \(alpha))") }
        let c = weights.config
        guard st.attention.count == c.numHiddenLayers else { throw QuantKitError(.shape, "SmoothQuant statistics do not match the model") }
        var out: [(attention: [Double], mlp: [Double])] = []
        for i in 0..<c.numHiddenLayers {
            let p = "model.layers.\(i)."
            let attn = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"].map { p + $0 + ".weight" }
            let mlp = ["mlp.gate_proj", "mlp.up_proj"].map { p + $0 + ".weight" }
            let sa = scales(activationMax: st.attention[i], weights: weights, linears: attn, alpha: alpha)
            let sm = scales(activationMax: st.mlp[i], weights: weights, linears: mlp, alpha: alpha)
            weights.divideGain(p + "input_layernorm.weight", by: sa)
            for l in attn { weights.scaleColumns(l, by: sa) }
            weights.divideGain(p + "post_attention_layernorm.weight", by: sm)
            for l in mlp { weights.scaleColumns(l, by: sm) }
            if smoothDown {
                let down = p + "mlp.down_proj"
                let sd = scales(activationMax: st.down[i], weights: weights, linears: [down + ".weight"], alpha: alpha)
                weights.divideRows(p + "mlp.up_proj", by: sd)
                weights.scaleColumns(down + ".weight", by: sd)
            }
            out.append((sa, sm))
        }
        return out
    }
}
