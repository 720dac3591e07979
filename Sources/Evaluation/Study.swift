import Foundation
import TensorCore

// `quantkit report`: the result files of one study (perplexity + KLD + segments, retrieval, answers, layers, in any
// mix) gathered into one comparison per measured kind, and the recommendation a user came for.
//
// Variants: every candidate row (not a baseline, not a reference) of every comparison. Rows of the same variant
// measured on several kinds are matched by the last path component of their label ("gptq-int4-g32" from
// perplexity and ".build/demo/gptq-int4-g32" from answers are one variant), within one model role: perplexity and
// answers measure the language model, retrieval the embedder, so each role gets its own recommendation.
//
// Recommendation per role: the variant with the fewest bits per weight among those whose every verdict is
// "ship" (a variant without bits per weight ranks after all with, those among themselves by their quantization's
// nominal bits; ties: smaller worst loss, then label). When none
// ships: the variant closest to shipping (best worst decision, then smallest worst loss, then fewest bits), with
// the next steps (Verdict.swift's ladder) from the quantization settings any of its results name.

/// One quantized variant of a model, over every kind it was measured on.
public struct StudyVariant: Sendable {
    public var name: String
    public var role: StudyRole
    public var bitsPerWeight: Double?
    /// The verdict per measured kind, in the order perplexity, retrieval, answers.
    public var verdicts: [(kind: ResultKind, label: String, verdict: Verdict)]
    /// Quantization settings from the first of its results that names them (for the advice).
    public var quantization: [String: ResultValue]

    public init(name: String, role: StudyRole, bitsPerWeight: Double?, verdicts: [(kind: ResultKind, label: String, verdict: Verdict)],
                quantization: [String: ResultValue] = [:]) {
        self.name = name; self.role = role; self.bitsPerWeight = bitsPerWeight; self.verdicts = verdicts; self.quantization = quantization
    }

    /// The worst decision over its verdicts.
    public var decision: Decision {
        let ds = verdicts.map(\.verdict.decision)
        if ds.contains(.stayFloat) { return .stayFloat }
        if ds.contains(.improve) { return .improve }
        return .ship
    }
    public var ships: Bool { !verdicts.isEmpty && decision == .ship }
    /// The verdict with the largest relative loss.
    public var worst: (kind: ResultKind, label: String, verdict: Verdict)? { verdicts.max { $0.verdict.relativeLoss < $1.verdict.relativeLoss } }
    public var worstLoss: Double { worst?.verdict.relativeLoss ?? .infinity }
}

/// Which model of the study a kind measures.
public enum StudyRole: String, Sendable, CaseIterable {
    case languageModel = "language model"
    case embedder = "embedder"

    public static func of(_ k: ResultKind) -> StudyRole { k == .retrieval ? .embedder : .languageModel }
}

public struct Recommendation: Sendable {
    public var role: StudyRole
    /// The kinds measured for this role.
    public var kinds: [ResultKind]
    /// The baseline of each kind's comparison.
    public var baselines: [(kind: ResultKind, label: String)]
    /// The recommended variant when one ships, else the one closest to shipping (nil: no verdicts at all).
    public var variant: StudyVariant?
    public var ships: Bool
    /// What to try next when none ships (the chosen variant's worst verdict's steps).
    public var nextSteps: [String]

    /// The one-line headline.
    public var headline: String {
        let measured = kinds.map(\.rawValue).joined(separator: ", ")
        guard let v = variant else { return "\(role.rawValue.capitalizedFirst) (\(measured)): no verdicts (no candidate with its headline metric on both sides)" }
        let bits = v.bitsPerWeight.map { "\(reportFormat($0, 2)) bits/weight" } ?? "bits per weight unknown"
        let losses = v.verdicts.map { "\($0.kind.rawValue) \(reportPercent($0.verdict.relativeLoss, signed: true))" }.joined(separator: ", ")
        if ships {
            let why = v.bitsPerWeight == nil ? "under the ship threshold on every metric it was measured on (its size is unknown, so not ranked by it)"
                : "the smallest variant under the ship threshold on every metric it was measured on"
            return "\(role.rawValue.capitalizedFirst): ship \(v.name) (\(bits)), \(why) (\(losses))"
        }
        let what = v.decision == .improve ? "improve \(v.name) before shipping" : "stay FP16"
        return "\(role.rawValue.capitalizedFirst): no variant ships; \(what) — closest: \(v.name) (\(bits); \(losses))"
    }
}

/// One step of the precision ladder, e.g. "INT8 6.0 (gptq-int8)".
public struct LadderStep: Sendable, Equatable {
    public var precision: String
    public var label: String
    public var value: Double
    public var role: CompareRole
}

public struct Study: Sendable, Encodable {
    public var comparisons: [Comparison]
    public var layers: [LayerFigure]
    public var variants: [StudyVariant]
    public var recommendations: [Recommendation]
    /// Fine-tuning runs (`finetune` results), with the perplexity runs before and after when the study holds them.
    public var fineTunes: [StudyFineTune] = []
    public var thresholds: VerdictThresholds
    public var files: [String]

    /// Groups the files by kind (layer results go with the language-model kinds), builds one comparison per kind
    /// and the recommendations. `baseline` names the result file whose run is the baseline of its kind.
    public static func build(files: [ResultFile], thresholds: VerdictThresholds = VerdictThresholds(), baseline: String? = nil,
                             resamples: Int = Bootstrap.defaultResamples, seed: UInt64 = Bootstrap.defaultSeed) throws -> Study {
        guard !files.isEmpty else { throw QuantKitError(.input, "report: no result files given") }
        let layerFiles = files.filter { $0.kind == .layers }
        let kinds = ResultKind.allCases.filter { k in k.isMeasured && files.contains { $0.kind == k } }
        guard !kinds.isEmpty else {
            throw QuantKitError(.input, "report: only layer results given; add perplexity, retrieval or answers results")
        }
        if let b = baseline, !files.contains(where: { $0.kind.isMeasured && Comparison.samePath($0.path, b) }) {
            throw QuantKitError(.input, "--baseline \(b): not one of the perplexity, retrieval or answers result files given")
        }
        var comparisons: [Comparison] = []
        for k in kinds {
            let own = files.filter { $0.kind == k }
            let extra = StudyRole.of(k) == .languageModel ? layerFiles : []
            let b = baseline.flatMap { b in own.contains { Comparison.samePath($0.path, b) } ? b : nil }
            comparisons.append(try Comparison.build(files: own + extra, thresholds: thresholds, resamples: resamples, seed: seed, baseline: b))
        }
        let variants = Study.variants(comparisons)
        let layers = layerFiles.flatMap(\.layers)
        let recs = StudyRole.allCases.compactMap { role -> Recommendation? in
            let cs = comparisons.filter { StudyRole.of($0.kind) == role }
            guard !cs.isEmpty else { return nil }
            let (pick, ships) = recommend(variants.filter { $0.role == role })
            var steps: [String] = []
            if let v = pick, !ships {
                // The advice from the settings the variant's results name (any kind), ranked by the layer results.
                let run = ResultRun(label: v.name, file: "", kind: cs[0].kind, quantization: v.quantization)
                steps = VerdictLogic.nextSteps(run: run, layers: role == .languageModel ? layers : [])
            }
            return Recommendation(role: role, kinds: cs.map(\.kind), baselines: cs.map { ($0.kind, $0.baseline.label) },
                                  variant: pick, ships: ships, nextSteps: steps)
        }
        var study = Study(comparisons: comparisons, layers: layers, variants: variants, recommendations: recs,
                          thresholds: thresholds, files: files.map(\.path))
        study.fineTunes = StudyFineTune.build(files, perplexity: comparisons.first { $0.kind == .perplexity })
        return study
    }

    /// The variant key of a run label: its last path component.
    public static func variantName(_ label: String) -> String {
        let l = URL(fileURLWithPath: label).lastPathComponent
        return l.isEmpty ? label : l
    }

    /// Candidate rows with a verdict, matched across kinds by variant name within a model role, in first-seen order.
    public static func variants(_ comparisons: [Comparison]) -> [StudyVariant] {
        var out: [StudyVariant] = []
        for c in comparisons {
            let role = StudyRole.of(c.kind)
            for r in c.rows where r.role == .candidate {
                guard let v = r.verdict else { continue }
                let name = variantName(r.run.label)
                if let i = out.firstIndex(where: { $0.role == role && $0.name == name }) {
                    out[i].verdicts.append((c.kind, r.run.label, v))
                    if out[i].bitsPerWeight == nil { out[i].bitsPerWeight = r.run.bitsPerWeight }
                    if out[i].quantization.isEmpty { out[i].quantization = r.run.quantization }
                } else {
                    out.append(StudyVariant(name: name, role: role, bitsPerWeight: r.run.bitsPerWeight, verdicts: [(c.kind, r.run.label, v)],
                                            quantization: r.run.quantization))
                }
            }
        }
        return out
    }

    /// The smallest shipping variant, or (ships false) the one closest to shipping; nil when there are none.
    public static func recommend(_ variants: [StudyVariant]) -> (variant: StudyVariant?, ships: Bool) {
        let withVerdicts = variants.filter { !$0.verdicts.isEmpty }
        let bits = { (v: StudyVariant) in v.bitsPerWeight ?? .infinity }
        // Among runs of unknown size, the nominal bit width (quantization "bits") orders them.
        let nominal = { (v: StudyVariant) in ResultValue.object(v.quantization).first(["bits", "w_bits"])?.double ?? .infinity }
        let shipping = withVerdicts.filter(\.ships).sorted {
            (bits($0), nominal($0), $0.worstLoss, $0.name) < (bits($1), nominal($1), $1.worstLoss, $1.name)
        }
        if let s = shipping.first { return (s, true) }
        func rank(_ d: Decision) -> Int { d == .ship ? 0 : d == .improve ? 1 : 2 }
        let best = withVerdicts.min {
            (rank($0.decision), $0.worstLoss, bits($0), $0.name) < (rank($1.decision), $1.worstLoss, bits($1), $1.name)
        }
        return (best, false)
    }

    /// Perplexity precision ladder: reference, baseline, then the best (lowest ppl) variant per integer bit width,
    /// widest first, e.g. FP32 / FP16 / INT8 / INT4. Runs that name no bit width (NPU, unknown) are left out.
    public var ladder: [LadderStep] {
        guard let c = comparisons.first(where: { $0.kind == .perplexity }) else { return [] }
        var steps: [LadderStep] = []
        func float(_ r: CompareRow) -> String { r.run.bitsPerWeight.map { "FP\(Int($0.rounded()))" } ?? r.run.label }
        for r in c.rows where r.role == .reference { if let v = r.value { steps.append(LadderStep(precision: float(r), label: r.run.label, value: v, role: .reference)) } }
        if let b = c.rows.first, let v = b.value { steps.append(LadderStep(precision: float(b), label: b.run.label, value: v, role: .baseline)) }
        var best: [Int: CompareRow] = [:]
        for r in c.rows where r.role == .candidate {
            guard let bits = ResultValue.object(r.run.quantization).first(["bits", "w_bits"])?.int, let v = r.value else { continue }
            if let old = best[bits], let ov = old.value, ov <= v { continue }
            best[bits] = r
        }
        for bits in best.keys.sorted(by: >) {
            let r = best[bits]!
            steps.append(LadderStep(precision: "INT\(bits)", label: r.run.label, value: r.value!, role: .candidate))
        }
        return steps
    }

    /// "FP32 167.72 / FP16 167.72 / INT8 168.01 (gptq-int8) / INT4 175.20 (gptq-int4-g32)"
    public var ladderLine: String? {
        let l = ladder
        guard l.count >= 2 else { return nil }
        return "ppl " + l.map { s in
            "\(s.precision) \(String(format: "%.2f", s.value))" + (s.role == .candidate ? " (\(s.label))" : "")
        }.joined(separator: " / ")
    }

    public var notes: [String] {
        var out: [String] = []
        for c in comparisons { out += c.notes.map { "\(c.kind.rawValue): \($0)" } }
        let unknown = variants.filter { $0.bitsPerWeight == nil }.map(\.name)
        if !unknown.isEmpty {
            out.append("bits per weight unknown (ranked after every variant with a size): \(unknown.joined(separator: ", "))")
        }
        return out
    }

    // MARK: text

    /// Headline, ladder and the variant table, as the command prints them.
    public func summary() -> String {
        var out = "Study report (thresholds: ship < \(reportPercent(thresholds.ship)), improve <= \(reportPercent(thresholds.stay)), else stay FP16)\n"
        for r in recommendations {
            out += "\n" + r.headline + "\n"
            for s in r.nextSteps { out += "  try: \(s)\n" }
            out += "  baselines: " + r.baselines.map { "\($0.kind.rawValue) \($0.label)" }.joined(separator: ", ") + "\n"
        }
        if let l = ladderLine { out += "\n" + l + "\n" }
        for c in comparisons { if let l = c.referenceLine { out += l + "\n" } }
        out += "\n" + Comparison.align(variantTable()) + "\n"
        if !fineTunes.isEmpty { out += "\nFine-tuning:\n" + Comparison.align(fineTuneTable()) + "\n" }
        return out
    }

    /// The perplexity baseline's value, against which fine-tuning's recovered share is measured.
    public var basePPL: Double? { comparisons.first { $0.kind == .perplexity }?.baseline.metrics["ppl"] }

    func fineTuneTable() -> [[String]] { StudyFineTune.table(fineTunes, basePPL: basePPL) }

    /// Rows: variant, role, bits/w, the relative loss and decision per kind, overall.
    func variantTable() -> [[String]] {
        let kinds = comparisons.map(\.kind)
        var t: [[String]] = [["variant", "model", "bits/w"] + kinds.map { "\($0.rawValue) loss" } + ["overall"]]
        for v in variants {
            var row = [v.name, v.role.rawValue, v.bitsPerWeight.map { reportFormat($0, 2) } ?? "unknown"]
            for k in kinds {
                row.append(v.verdicts.first { $0.kind == k }.map { "\(reportPercent($0.verdict.relativeLoss, signed: true)) \($0.verdict.decision.rawValue)" } ?? "-")
            }
            row.append(v.decision.rawValue)
            t.append(row)
        }
        return t
    }

    // MARK: JSON

    /// The `kind: report` body (docs/RESULTS.md).
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: AnyKey.self)
        try c.encode(files, forKey: AnyKey("files"))
        try c.encode(["ship_below": thresholds.ship, "stay_above": thresholds.stay], forKey: AnyKey("thresholds"))
        var rs = c.nestedUnkeyedContainer(forKey: AnyKey("recommendations"))
        for r in recommendations {
            var o = rs.nestedContainer(keyedBy: AnyKey.self)
            try o.encode(r.role.rawValue, forKey: AnyKey("model"))
            try o.encode(r.kinds.map(\.rawValue), forKey: AnyKey("kinds"))
            try o.encode(r.ships, forKey: AnyKey("ships"))
            try o.encode(r.headline, forKey: AnyKey("headline"))
            try o.encode(r.nextSteps, forKey: AnyKey("next_steps"))
            try o.encode(Dictionary(uniqueKeysWithValues: r.baselines.map { ($0.kind.rawValue, $0.label) }), forKey: AnyKey("baselines"))
            if let v = r.variant {
                try o.encode(v.name, forKey: AnyKey("variant"))
                try o.encode(v.decision.rawValue, forKey: AnyKey("decision"))
                try o.encodeIfPresent(v.bitsPerWeight, forKey: AnyKey("bits_per_weight"))
            }
        }
        var vs = c.nestedUnkeyedContainer(forKey: AnyKey("variants"))
        for v in variants {
            var o = vs.nestedContainer(keyedBy: AnyKey.self)
            try o.encode(v.name, forKey: AnyKey("name"))
            try o.encode(v.role.rawValue, forKey: AnyKey("model"))
            try o.encode(v.decision.rawValue, forKey: AnyKey("decision"))
            var ds = o.nestedUnkeyedContainer(forKey: AnyKey("verdicts"))
            for x in v.verdicts {
                var d = ds.nestedContainer(keyedBy: AnyKey.self)
                try d.encode(x.kind.rawValue, forKey: AnyKey("kind"))
                try d.encode(x.label, forKey: AnyKey("label"))
                try d.encode(x.verdict.decision.rawValue, forKey: AnyKey("decision"))
                try d.encode(x.verdict.relativeLoss, forKey: AnyKey("relative_loss"))
                try d.encode(x.verdict.measure, forKey: AnyKey("measure"))
            }
            try o.encodeIfPresent(v.bitsPerWeight, forKey: AnyKey("bits_per_weight"))
        }
        var ls = c.nestedUnkeyedContainer(forKey: AnyKey("ladder"))
        for l in ladder {
            var o = ls.nestedContainer(keyedBy: AnyKey.self)
            try o.encode(l.precision, forKey: AnyKey("precision"))
            try o.encode(l.label, forKey: AnyKey("label"))
            try o.encode(l.value, forKey: AnyKey("ppl"))
            try o.encode(l.role.rawValue, forKey: AnyKey("role"))
        }
        try c.encode(comparisons, forKey: AnyKey("comparisons"))
        var fs = c.nestedUnkeyedContainer(forKey: AnyKey("fine_tunes"))
        for f in fineTunes {
            var o = fs.nestedContainer(keyedBy: AnyKey.self)
            let r = f.result
            try o.encode(f.name, forKey: AnyKey("name"))
            try o.encode(r.weights, forKey: AnyKey("weights"))
            try o.encode(r.initialization, forKey: AnyKey("initialization"))
            try o.encode(r.steps, forKey: AnyKey("steps"))
            try o.encode(r.curve.map { [Double($0.step), $0.loss, $0.kl] }, forKey: AnyKey("curve"))
            try o.encodeIfPresent(f.start?.label, forKey: AnyKey("start_run"))
            try o.encodeIfPresent(f.trained?.label, forKey: AnyKey("trained_run"))
            for (key, metric) in [("ppl", "ppl"), ("kld_mean", "kldmean"), ("same_top_percent", "sametop")] {
                if let ch = f.change(metric) { try o.encode(["before": ch.before, "after": ch.after], forKey: AnyKey(key)) }
            }
            try o.encodeIfPresent(f.recovered(basePPL: basePPL), forKey: AnyKey("ppl_loss_recovered"))
            if let b = r.before, let a = r.after {
                try o.encode(["kl_before": b.kl, "kl_after": a.kl, "same_top_before": b.sameTop, "same_top_after": a.sameTop],
                             forKey: AnyKey("validation"))
            }
        }
        try c.encode(notes, forKey: AnyKey("notes"))
    }
}

extension String {
    var capitalizedFirst: String { prefix(1).uppercased() + dropFirst() }
}
