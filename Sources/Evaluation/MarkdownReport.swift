import Foundation
import TensorCore

public enum MarkdownReport {
    static func cell(_ s: String) -> String { s.replacingOccurrences(of: "|", with: "\\|") }

    /// A table and a verdict line, for a pull-request comment.
    public static func render(_ c: Comparison) -> String {
        let (_, hName, _) = Comparison.headline(c.kind)
        var m = "### QuantKit \(c.kind.rawValue) comparison\n\n"
        m += "**Verdict: \(c.worstDecision?.rawValue ?? "none")** (ship < \(reportPercent(c.thresholds.ship)), improve <= \(reportPercent(c.thresholds.stay)), else stay FP16; baseline `\(c.baseline.label)`)\n\n"
        m += "| run | bits/w | \(hName) | delta | rel. delta | 95% CI of loss | verdict |\n|---|---:|---:|---:|---:|---|---|\n"
        for r in c.rows {
            m += "| \(cell(r.run.label))\(r.delta == nil ? " (baseline)" : "") | \(r.run.bitsPerWeight.map { reportFormat($0, 2) } ?? "-") | \(r.value.map { reportFormat($0) } ?? "-") | "
            m += "\(r.delta.map(reportSigned) ?? "") | \(r.relativeDelta.map { reportPercent($0, signed: true) } ?? "") | "
            m += "\(r.verdict?.interval.map { "[\(reportPercent($0.lower, signed: true)), \(reportPercent($0.upper, signed: true))]" } ?? "") | "
            m += "\(r.verdict.map { "\($0.decision.rawValue) (\(reportPercent($0.relativeLoss, signed: true)))" } ?? "") |\n"
        }
        for r in c.rows {
            guard let v = r.verdict, !v.nextSteps.isEmpty else { continue }
            m += "\n`\(r.run.label)` — \(v.decision.rawValue); try:\n" + v.nextSteps.map { "- \($0)\n" }.joined()
        }
        let segs = c.worstSegmentsPerGroup(limit: 5)
        if !segs.isEmpty {
            let several = c.segmentsFromSeveralRuns
            m += "\n#### Largest per-segment degradations (the 5 worst per group)\n\n"
            m += (several ? "| run " : "") + "| group | segment | count | base | quantized | rel. loss | KLD mean |\n"
            m += (several ? "|---" : "") + "|---|---|---:|---:|---:|---:|---:|\n"
            for s in segs {
                m += (several ? "| \(cell(s.run ?? "-")) " : "") + "| \(cell(s.group)) | \(cell(s.segment)) | \(s.count) | \(reportFormat(s.base)) | "
                m += "\(reportFormat(s.quantized)) | \(reportPercent(s.relativeLoss, signed: true)) | \(s.kldMean.map { reportFormat($0) } ?? "-") |\n"
            }
        }
        for n in c.notes { m += "\n> note: \(n)\n" }
        return m
    }
}
