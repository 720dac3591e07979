import Foundation
import TensorCore

public enum MarkdownReport {
    static func cell(_ s: String) -> String { s.replacingOccurrences(of: "|", with: "\\|") }

    /// A table and a verdict line, for a pull-request comment.
    public static func render(_ c: Comparison) -> String {
        var m = "### QuantKit \(c.kind.rawValue) comparison\n\n"
        m += "**Verdict: \(c.worstDecision?.rawValue ?? "none")** (ship < \(reportPercent(c.thresholds.ship)), improve <= \(reportPercent(c.thresholds.stay)), else stay FP16; baseline `\(c.baseline.label)`)\n\n"
        m += body(c, heading: "####")
        for n in c.notes { m += "\n> note: \(n)\n" }
        return m
    }

    /// The study (`quantkit report --markdown`): recommendation, ladder, variants, one section per kind, notes.
    public static func render(_ s: Study) -> String {
        var m = "## QuantKit study report\n\n"
        for r in s.recommendations {
            m += "**\(r.headline)**\n\n"
            if !r.nextSteps.isEmpty { m += "Try next:\n" + r.nextSteps.map { "- \($0)\n" }.joined() + "\n" }
            m += "Baselines: " + r.baselines.map { "\($0.kind.rawValue) `\($0.label)`" }.joined(separator: ", ") + "\n\n"
        }
        if let l = s.ladderLine { m += "\(l)\n\n" }
        for c in s.comparisons { if let l = c.referenceLine { m += "\(l)\n\n" } }
        m += "Thresholds: ship < \(reportPercent(s.thresholds.ship)), improve <= \(reportPercent(s.thresholds.stay)), else stay FP16 (relative loss of each kind's headline metric).\n\n"
        m += "### Variants\n\n"
        let t = s.variantTable()
        m += "| " + t[0].map(cell).joined(separator: " | ") + " |\n|" + t[0].map { _ in "---|" }.joined() + "\n"
        for row in t.dropFirst() { m += "| " + row.map(cell).joined(separator: " | ") + " |\n" }
        for c in s.comparisons {
            m += "\n### \(c.kind.rawValue.capitalizedFirst) (baseline `\(c.baseline.label)`; worst verdict: \(c.worstDecision?.rawValue ?? "none"))\n\n"
            m += body(c, heading: "####")
        }
        if !s.fineTunes.isEmpty {
            m += "\n### Fine-tuning\n\n"
            let f = s.fineTuneTable()
            m += "| " + f[0].map(cell).joined(separator: " | ") + " |\n|" + f[0].map { _ in "---|" }.joined() + "\n"
            for row in f.dropFirst() { m += "| " + row.map(cell).joined(separator: " | ") + " |\n" }
            m += "\nTraining loss (KL to the teacher per token), every tenth of the run:\n\n"
            for ft in s.fineTunes {
                let every = max(1, ft.result.curve.count / 10)
                let points = ft.result.curve.enumerated().filter { $0.offset % every == 0 || $0.offset == ft.result.curve.count - 1 }
                m += "- `\(ft.name)`: " + points.map { "\($0.element.step): \(reportFormat($0.element.loss, 4))" }.joined(separator: ", ") + "\n"
            }
        }
        for n in s.notes { m += "\n> note: \(n)\n" }
        return m
    }

    static func body(_ c: Comparison, heading: String) -> String {
        let (_, hName, _) = Comparison.headline(c.kind)
        var m = ""
        m += "| run | bits/w | \(hName) | delta | rel. delta | 95% CI of loss | verdict |\n|---|---:|---:|---:|---:|---|---|\n"
        for r in c.rows {
            m += "| \(cell(r.run.label))\(Comparison.roleSuffix(r)) | \(r.run.bitsPerWeight.map { reportFormat($0, 2) } ?? "-") | \(r.value.map { reportFormat($0) } ?? "-") | "
            m += "\(r.delta.map(reportSigned) ?? "") | \(r.relativeDelta.map { reportPercent($0, signed: true) } ?? "") | "
            m += "\(r.verdict?.interval.map { "[\(reportPercent($0.lower, signed: true)), \(reportPercent($0.upper, signed: true))]" } ?? "") | "
            m += "\(r.verdict.map { "\($0.decision.rawValue) (\(reportPercent($0.relativeLoss, signed: true)))" } ?? (r.role == .reference ? "reference" : "")) |\n"
        }
        if let l = c.referenceLine { m += "\n\(l)\n" }
        for r in c.rows {
            guard let v = r.verdict, !v.nextSteps.isEmpty else { continue }
            m += "\n`\(r.run.label)` — \(v.decision.rawValue); try:\n" + v.nextSteps.map { "- \($0)\n" }.joined()
        }
        let segs = c.worstSegmentsPerGroup(limit: 5)
        if !segs.isEmpty {
            let several = c.segmentsFromSeveralRuns
            m += "\n\(heading) Largest per-segment degradations (the 5 worst per group)\n\n"
            m += (several ? "| run " : "") + "| group | segment | count | base | quantized | rel. loss | KLD mean |\n"
            m += (several ? "|---" : "") + "|---|---|---:|---:|---:|---:|---:|\n"
            for s in segs {
                m += (several ? "| \(cell(s.run ?? "-")) " : "") + "| \(cell(s.group)) | \(cell(s.segment)) | \(s.count) | \(reportFormat(s.base)) | "
                m += "\(reportFormat(s.quantized)) | \(reportPercent(s.relativeLoss, signed: true)) | \(s.kldMean.map { reportFormat($0) } ?? "-") |\n"
            }
        }
        return m
    }
}
