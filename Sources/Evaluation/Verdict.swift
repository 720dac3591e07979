import Foundation
import TensorCore

// The decision framework of issue 7: the relative loss of the headline metric against the float baseline decides
// ship (below the first threshold), improve (between, inclusive), or stay at FP16 (above the second).

public struct VerdictThresholds: Sendable, Equatable, Codable {
    /// Fractions: 0.01 = 1 %.
    public var ship: Double
    public var stay: Double
    public init(ship: Double = 0.01, stay: Double = 0.03) { self.ship = ship; self.stay = stay }

    /// Parses "1,3" (percent) as used by --thresholds.
    public init(parsing s: String) throws {
        let parts = s.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces).replacingOccurrences(of: "%", with: "") }
        guard parts.count == 2, let a = Double(parts[0]), let b = Double(parts[1]), a.isFinite, b.isFinite, a >= 0, b >= a else {
            throw QuantKitError(.input, "--thresholds: expected two percentages SHIP,STAY with 0 <= SHIP <= STAY (e.g. 1,3), got \"\(s)\"")
        }
        self.init(ship: a / 100, stay: b / 100)
    }
}

public enum Decision: String, Sendable, Encodable {
    case ship = "ship"
    case improve = "improve"
    case stayFloat = "stay FP16"
}

public struct Verdict: Sendable {
    public var decision: Decision
    /// Relative loss of the headline metric (fraction; positive = worse than the baseline).
    public var relativeLoss: Double
    /// How the loss was measured, e.g. "QError (ppl_q/ppl_base - 1)".
    public var measure: String
    public var interval: ConfidenceInterval?
    /// Concrete next steps when the decision is improve (or stay, to say what might get there).
    public var nextSteps: [String]
    /// When the CI straddles a threshold, the point estimate decides and this says so.
    public var note: String?

    public init(decision: Decision, relativeLoss: Double, measure: String, interval: ConfidenceInterval?, nextSteps: [String], note: String?) {
        self.decision = decision; self.relativeLoss = relativeLoss; self.measure = measure; self.interval = interval
        self.nextSteps = nextSteps; self.note = note
    }
}

public enum VerdictLogic {
    /// loss < ship -> ship; ship <= loss <= stay -> improve; loss > stay -> stay FP16.
    public static func decide(_ loss: Double, _ t: VerdictThresholds) -> Decision {
        if loss < t.ship { return .ship }
        if loss <= t.stay { return .improve }
        return .stayFloat
    }

    /// A fraction from a value that may be written in percent (agreement 97.5 or 0.975).
    static func fraction(_ v: Double) -> Double { v > 1 ? v / 100 : v }

    /// The headline relative loss of `run` against `base`, or nil when the needed metrics are absent.
    public static func relativeLoss(base: ResultRun, run: ResultRun) -> (loss: Double, measure: String)? {
        switch run.kind {
        case .perplexity:
            guard let b = base.metric("ppl"), let q = run.metric("ppl"), b > 0 else { return nil }
            return (q / b - 1, "QError (ppl_q/ppl_base - 1)")
        case .retrieval:
            guard let b = base.metric("ndcg@10"), let q = run.metric("ndcg@10"), b > 0 else { return nil }
            return ((b - q) / b, "relative nDCG@10 drop")
        case .answers:
            if let a = run.metric("agreementem") { return (1 - fraction(a), "1 - agreement EM") }
            var best: (Double, String)? = nil
            for m in ["em", "f1"] {
                guard let b = base.metric(m), let q = run.metric(m), b > 0 else { continue }
                let l = (b - q) / b
                if best == nil || l > best!.0 { best = (l, "relative \(m.uppercased()) drop") }
            }
            return best
        case .layers, .finetune:
            return nil
        }
    }

    /// Concrete steps to try, from the run's quantization settings (the result's `quantization` object) and, when
    /// given, the sensitivity ranking. A run on the simulated NPU gets the NPU's recovery (rotation, SmoothQuant)
    /// until it has one. Otherwise the ladder, first applicable step first:
    /// 0. no rotation recorded -> rotation with GPTQ and MSE clipping (AWQ scales as the rotation-free option);
    /// 1. round-to-nearest (or a method the result does not name) -> GPTQ with act-order;
    /// 2. GPTQ without act-order -> enable act-order;
    /// 3. below 8 bits with groups larger than 32 or per-channel scales -> smaller groups (g32);
    /// 4. last (and the only step for GPTQ act-order g32, or 8-bit GPTQ act-order): mixed precision, keeping the
    ///    most sensitive modules at 8 bits, named from the layers results when given.
    public static func nextSteps(run: ResultRun, layers: [LayerFigure], keep: Int = 3) -> [String] {
        var steps: [String] = []
        let q = run.quantization
        func get(_ k: [String]) -> ResultValue? { ResultValue.object(q).first(k) }
        // A raw quantize_config.json says quant_method "gptq" for every AutoGPTQ-layout checkpoint (the format);
        // QuantKit's own method record (method, or quantkit.method) wins over it.
        let method = (get(["method"]) ?? get(["quantkit"])?["method"] ?? get(["quant_method"]))?.string?.lowercased()
        let bits = get(["bits", "w_bits"])?.int
        let group = get(["group_size", "groupsize"])?.int
        let actOrder = get(["act_order", "desc_act"])?.bool
        let quantizedGGUF = run.ggufTensorTypes.map { $0.keys.contains { !["F32", "F16", "BF16"].contains($0) } } ?? false
        if run.backend == "npu" {
            // Per-tensor int8 activations: outlier channels set the scales. Rotation spreads them (down_proj's input
            // included, which SmoothQuant leaves alone); bits and groups are the NPU's own.
            // Then the largest single share of the rest: q_proj's and k_proj's int8 outputs, which feed q.k and the
            // softmax (BENCHMARKS.md, "Where the NPU's W8A8 error comes from").
            let wideQK = run.npuWideOutputs.contains("q_proj") && run.npuWideOutputs.contains("k_proj") ? [] :
                ["give q_proj's and k_proj's outputs a scale per channel (--npu-config with \"per_channel_outputs\": [\"q_proj\", \"k_proj\"]; still int8, the output stage's per-channel multipliers carry it) or, if the NPU can write 16-bit outputs, int16 (\"int16_outputs\"): their per-tensor int8 requantization is the largest single share of the W8A8 error; then fine-tune for that NPU (quantkit finetune --target npu --activations int8 --npu-config FILE)"]
            return run.npuRecovered
                ? wideQK + ["keep the modules the NPU handles worst on the CPU: `quantkit npu report` ranks them; a float model that was rotated and smoothed has no further post-training step here"]
                : ["rotate the float model before the NPU (--backend npu --rotate: randomized Hadamard on the residual stream, online Hadamard before down_proj), or migrate activation outliers into the weights (--smoothquant)"] + wideQK
        }
        let rotated = get(["recovery"])?["rotation"] != nil
        if !quantizedGGUF && !rotated {
            steps.append("rotate the residual stream before quantizing, with GPTQ and MSE clipping (--method gptq --rotate --mse); AWQ's activation-aware scales (--method gptq --awq) are the rotation-free alternative")
        }
        if quantizedGGUF {
            // A llama.cpp file: its types are llama-quantize's round-to-nearest (imatrix-free unless made so).
            steps.append("a llama.cpp k-quant mix (llama-quantize Q4_K_M or Q5_K_M, with --imatrix), or QuantKit's GPTQ in the same file format: quantkit quantize --method gptq --act-order --static-groups --group-size 32, then quantkit export --type q4_0")
        } else if method != "gptq" {
            steps.append(method.map { "quantize with GPTQ and act-order (--method gptq --act-order) instead of \($0.uppercased())" }
                         ?? "quantize with GPTQ and act-order (--method gptq --act-order) if this run used round-to-nearest (the result does not name its method)")
        } else if actOrder != true {
            steps.append("enable act-order (--act-order)")
        }
        if bits.map({ $0 < 8 }) ?? true {
            if let g = group, g > 32 { steps.append("smaller groups (--group-size 32 instead of \(g))") }
            else if let g = group, g <= 0 { steps.append("smaller groups: grouped scales (--group-size 32) instead of per-channel") }
        }
        let ranked = layers.sorted { $0.sensitivity > $1.sensitivity }.prefix(keep)
        let eight = bits == 8 ? "float (--skip)" : "8 bits"
        if quantizedGGUF {
            let names = ranked.isEmpty ? "" : " (\(ranked.map(\.name).joined(separator: ", ")))"
            steps.append("mixed precision: keep the most sensitive tensors\(names) at Q8_0 with llama-quantize --tensor-type NAME=q8_0; `quantkit layers` ranks them")
        } else if ranked.isEmpty {
            steps.append("mixed precision: keep the most sensitive modules at \(eight); run `quantkit layers` to rank module sensitivity, then pass them with --override NAME=8 or --skip NAME")
        } else {
            let names = ranked.map(\.name)
            let flags = bits == 8 ? names.map { "--skip '\($0)'" } : names.map { "--override '\($0)=8'" }
            steps.append("mixed precision: keep the most sensitive modules at \(eight): \(names.joined(separator: ", ")) (" +
                         flags.joined(separator: " ") + ")")
        }
        return steps
    }

    public static func verdict(base: ResultRun, run: ResultRun, thresholds: VerdictThresholds,
                               interval: ConfidenceInterval?, layers: [LayerFigure]) -> Verdict? {
        guard let (loss, measure) = relativeLoss(base: base, run: run) else { return nil }
        let d = decide(loss, thresholds)
        var note: String? = nil
        if let ci = interval {
            let lo = decide(ci.lower, thresholds), hi = decide(ci.upper, thresholds)
            if lo != hi {
                note = "the \(Int((ci.level * 100).rounded()))% interval spans \(lo.rawValue) to \(hi.rawValue); the point estimate decides"
            }
        }
        return Verdict(decision: d, relativeLoss: loss, measure: measure, interval: interval,
                       nextSteps: d == .ship ? [] : nextSteps(run: run, layers: layers), note: note)
    }
}
