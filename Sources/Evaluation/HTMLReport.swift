import Foundation
import TensorCore

// One self-contained XHTML file: verdict, table, inline SVG charts; no scripts, no external resources. One page
// per comparison (`compare`) or per study (`report`).

public enum HTMLReport {
    static func e(_ s: String) -> String { SVGChart.escape(s) }

    static func color(_ d: Decision?) -> String {
        switch d {
        case .ship: return "#2e7d32"
        case .improve: return "#ef6c00"
        case .stayFloat: return "#c62828"
        case nil: return "#555"
        }
    }

    static let style = "body{font-family:sans-serif;margin:24px;color:#222;max-width:1000px}table{border-collapse:collapse;margin:8px 0}"
        + "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
        + ".verdict{color:#fff;padding:2px 8px;border-radius:4px}.banner{font-size:20px;margin:12px 0}figure{margin:16px 0}"
        + ".headline{font-size:18px;margin:10px 0;padding:10px 14px;border-left:6px solid #555;background:#f6f6f6}"
        + "section{margin-top:28px}code{overflow-wrap:anywhere}p,li{overflow-wrap:anywhere}"

    static func page(_ title: String, _ body: String) -> String {
        var h = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE html>\n"
        h += "<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\"><head><meta charset=\"UTF-8\"/>"
        h += "<title>\(e(title))</title><style>\(style)</style></head><body>"
        return h + "<h1>\(e(title))</h1>" + body + "</body></html>\n"
    }

    static func badge(_ d: Decision?) -> String {
        "<span class=\"verdict\" style=\"background:\(color(d))\">\(e(d?.rawValue ?? "none"))</span>"
    }

    /// One comparison's page (`quantkit compare --html`).
    public static func render(_ c: Comparison, title: String = "QuantKit comparison") -> String {
        let worst = c.worstDecision
        var h = "<p class=\"banner\">Verdict: \(badge(worst)) "
        h += "(\(e(c.kind.rawValue)); baseline \(e(c.baseline.label)); ship below \(e(reportPercent(c.thresholds.ship))), improve up to \(e(reportPercent(c.thresholds.stay))), else stay FP16)</p>"
        h += comparisonBody(c, heading: "h2")
        h += layersFigure(c.layers)
        if !c.notes.isEmpty {
            h += "<h2>Notes</h2><ul>" + c.notes.map { "<li>\(e($0))</li>" }.joined() + "</ul>"
        }
        h += "<p style=\"color:#777\">Files: \(e(c.files.joined(separator: ", ")))</p>"
        return page(title, h)
    }

    /// The study page (`quantkit report --html`): the recommendation first, then the variants across kinds, one
    /// section per measured kind, layer sensitivity, notes. Sections carry ids: recommendation, variants,
    /// perplexity / retrieval / answers, layers, notes, files.
    public static func render(_ s: Study, title: String = "QuantKit study report") -> String {
        var h = "<section id=\"recommendation\"><h2>Recommendation</h2>"
        for r in s.recommendations {
            let d: Decision? = r.ships ? .ship : r.variant?.decision
            h += "<p class=\"headline\" style=\"border-color:\(color(d))\">\(badge(d)) \(e(r.headline))</p>"
            if !r.nextSteps.isEmpty {
                h += "<p>Try next:</p><ul>" + r.nextSteps.map { "<li>\(e($0))</li>" }.joined() + "</ul>"
            }
            h += "<p>Baselines: " + e(r.baselines.map { "\($0.kind.rawValue) \($0.label)" }.joined(separator: "; ")) + "</p>"
        }
        if let l = s.ladderLine { h += "<p class=\"ladder\"><b>\(e(l))</b></p>" }
        for c in s.comparisons { if let l = c.referenceLine { h += "<p>\(e(l))</p>" } }
        h += "<p>Thresholds: ship below \(e(reportPercent(s.thresholds.ship))) relative loss, improve up to \(e(reportPercent(s.thresholds.stay))), else stay FP16; "
        h += "the recommendation is the variant with the fewest bits per weight that ships on every kind it was measured on.</p></section>"

        h += "<section id=\"variants\"><h2>Variants</h2><table><thead><tr>"
        let t = s.variantTable()
        h += t[0].map { "<th>\(e($0))</th>" }.joined() + "</tr></thead><tbody>"
        for (v, row) in zip(s.variants, t.dropFirst()) {
            h += "<tr>" + row.dropLast().map { "<td>\(e($0))</td>" }.joined() + "<td>\(badge(v.decision))</td></tr>"
        }
        h += "</tbody></table></section>"

        let names: [ResultKind: String] = [.perplexity: "Perplexity and KL divergence", .retrieval: "Retrieval", .answers: "Answers"]
        for c in s.comparisons {
            h += "<section id=\"\(c.kind.rawValue)\"><h2>\(e(names[c.kind] ?? c.kind.rawValue))</h2>"
            h += "<p>Worst verdict in this section: \(badge(c.worstDecision)); baseline \(e(c.baseline.label)).</p>"
            h += comparisonBody(c, heading: "h3") + "</section>"
        }
        if !s.layers.isEmpty {
            h += "<section id=\"layers\"><h2>Layer sensitivity</h2>" + layersFigure(s.layers) + "</section>"
        }
        if !s.fineTunes.isEmpty { h += fineTuneSection(s) }
        let notes = s.notes
        if !notes.isEmpty {
            h += "<section id=\"notes\"><h2>Notes</h2><ul>" + notes.map { "<li>\(e($0))</li>" }.joined() + "</ul></section>"
        }
        h += "<section id=\"files\"><p style=\"color:#777\">Files: \(e(s.files.joined(separator: ", ")))</p></section>"
        return page(title, h)
    }

    /// The fine-tuning runs: before/after table and the loss curves (at most 200 points each).
    static func fineTuneSection(_ s: Study) -> String {
        var h = "<section id=\"finetune\"><h2>Fine-tuning</h2><table><thead><tr>"
        let t = s.fineTuneTable()
        h += t[0].map { "<th>\(e($0))</th>" }.joined() + "</tr></thead><tbody>"
        for row in t.dropFirst() { h += "<tr>" + row.map { "<td>\(e($0))</td>" }.joined() + "</tr>" }
        h += "</tbody></table>"
        let series = s.fineTunes.map { f -> (name: String, points: [SVGChart.Point]) in
            let every = max(1, (f.result.curve.count + 199) / 200)
            let kept = f.result.curve.enumerated().filter { $0.offset % every == 0 || $0.offset == f.result.curve.count - 1 }
            return (f.name, kept.map { SVGChart.Point(x: Double($0.element.step), y: $0.element.loss, label: "") })
        }
        h += figure(SVGChart.lines(title: "Training loss per step", xLabel: "step", yLabel: "loss (KL to the teacher + CE)",
                                   series: series, marks: false))
        return h + "</section>"
    }

    /// Table, verdict lines, charts and segments of one comparison.
    static func comparisonBody(_ c: Comparison, heading: String) -> String {
        let (_, hName, _) = Comparison.headline(c.kind)
        var h = "<table><thead><tr><th>run</th><th>bits/weight</th><th>\(e(hName))</th><th>delta</th><th>rel. delta</th><th>95% CI of loss</th><th>verdict</th></tr></thead><tbody>"
        for r in c.rows {
            h += "<tr><td>\(e(r.run.label))\(e(Comparison.roleSuffix(r)))</td>"
            h += "<td>\(e(r.run.bitsPerWeight.map { reportFormat($0, 2) } ?? "-"))</td><td>\(e(r.value.map { reportFormat($0) } ?? "-"))</td>"
            h += "<td>\(e(r.delta.map(reportSigned) ?? ""))</td><td>\(e(r.relativeDelta.map { reportPercent($0, signed: true) } ?? ""))</td>"
            h += "<td>\(e(r.verdict?.interval.map { "[\(reportPercent($0.lower, signed: true)), \(reportPercent($0.upper, signed: true))]" } ?? ""))</td>"
            if let v = r.verdict {
                h += "<td>\(badge(v.decision)) \(e(reportPercent(v.relativeLoss, signed: true)))</td></tr>"
            } else { h += "<td>\(r.role == .reference ? "reference" : "")</td></tr>" }
        }
        h += "</tbody></table>"
        if let l = c.referenceLine { h += "<p>\(e(l))</p>" }
        for r in c.rows {
            guard let v = r.verdict else { continue }
            h += "<p><b>\(e(r.run.label))</b>: \(e(v.decision.rawValue)) — \(e(v.measure)) = \(e(reportPercent(v.relativeLoss, signed: true)))"
            if let n = v.note { h += " (\(e(n)))" }
            h += "</p>"
            if !v.nextSteps.isEmpty {
                h += "<ul>" + v.nextSteps.map { "<li>\(e($0))</li>" }.joined() + "</ul>"
            }
        }

        // Charts
        h += "<\(heading)>Charts</\(heading)>"
        let losses = c.rows.compactMap { r in r.verdict.map { (label: r.run.label, value: $0.relativeLoss * 100) } }
        if !losses.isEmpty {
            h += figure(SVGChart.bars(title: "Relative loss of \(hName) per run (%)", items: losses,
                                      color: "#e45756", negativeColor: "#54a24b",
                                      markers: [(c.thresholds.ship * 100, "ship < \(reportPercent(c.thresholds.ship))"),
                                                (c.thresholds.stay * 100, "stay FP16 > \(reportPercent(c.thresholds.stay))")],
                                      format: { String(format: "%+.3f%%", $0) }))
        }
        if c.kind == .perplexity {
            // One series per quantization method, so only like runs are joined by a line; a run without bits per
            // weight sits in the chart's "unknown" lane.
            let groups = Dictionary(grouping: c.rows.filter { $0.value != nil }) { HTMLReport.method($0.run) }
            let names = groups.keys.sorted()
            let missing = c.rows.filter { $0.run.bitsPerWeight == nil }.map(\.run.label)
            if !groups.isEmpty {
                h += figure(SVGChart.lines(title: "Perplexity vs bits per weight", xLabel: "bits per weight", yLabel: "perplexity",
                                           series: names.map { m in (m, groups[m]!.compactMap { r in r.value.map { SVGChart.Point(x: r.run.bitsPerWeight ?? .nan, y: $0, label: r.run.label) } }) }))
                let kld = names.map { m in (m, groups[m]!.compactMap { r in r.run.metrics["kldmean"].map { SVGChart.Point(x: r.run.bitsPerWeight ?? .nan, y: $0, label: r.run.label) } }) }
                    .filter { !$0.1.isEmpty }
                if !kld.isEmpty {
                    h += figure(SVGChart.lines(title: "Mean KLD vs bits per weight", xLabel: "bits per weight", yLabel: "mean KLD (nats)", series: kld))
                }
            }
            if !missing.isEmpty {
                h += "<p>Bits per weight unknown (no <code>bits_per_weight</code> in the result; drawn in the charts' \"unknown\" lane) for: \(e(missing.joined(separator: ", "))).</p>"
            }
        }
        if c.kind == .retrieval || c.kind == .answers {
            var items: [(label: String, value: Double)] = []
            for r in c.rows where !r.metricDeltas.isEmpty {
                for m in r.metricDeltas { items.append(("\(r.run.label): \(Comparison.displayName(m.name))", m.value - m.base)) }
            }
            if !items.isEmpty {
                h += figure(SVGChart.bars(title: c.kind == .retrieval ? "Retrieval metric deltas (run - baseline)" : "Answer metric deltas (run - baseline)",
                                          items: items, width: SVGChart.barWidth(items.map(\.label)), format: { String(format: "%+.4f", $0) }))
            }
        }
        let segs = c.worstSegmentsPerGroup(limit: 8)
        if !segs.isEmpty {
            let several = c.segmentsFromSeveralRuns
            let items = segs.map { ((several ? "\($0.run ?? "-") " : "") + "\($0.group): \($0.segment)", $0.relativeLoss * 100) }
            h += figure(SVGChart.bars(title: "Per-segment relative loss (%), worst first", items: items,
                                      width: SVGChart.barWidth(items.map(\.0)), color: "#e45756", negativeColor: "#54a24b", format: { String(format: "%+.2f%%", $0) }))
            h += "<table><thead><tr>" + (several ? "<th>run</th>" : "")
            h += "<th>group</th><th>segment</th><th>count</th><th>base</th><th>quantized</th><th>rel. loss</th><th>KLD mean</th></tr></thead><tbody>"
            for s in segs {
                h += "<tr>" + (several ? "<td>\(e(s.run ?? "-"))</td>" : "")
                h += "<td>\(e(s.group))</td><td>\(e(s.segment))</td><td>\(s.count)</td><td>\(e(reportFormat(s.base)))</td>"
                h += "<td>\(e(reportFormat(s.quantized)))</td><td>\(e(reportPercent(s.relativeLoss, signed: true)))</td>"
                h += "<td>\(e(s.kldMean.map { reportFormat($0) } ?? "-"))</td></tr>"
            }
            h += "</tbody></table>"
        }
        return h
    }

    static func layersFigure(_ layers: [LayerFigure]) -> String {
        guard !layers.isEmpty else { return "" }
        let ranked = layers.sorted { $0.sensitivity > $1.sensitivity }.prefix(40)
        let (title, value): (String, (LayerFigure) -> Double) = {
            if layers.allSatisfy({ $0.qerror != nil }) { return ("Per-module QError with only this module quantized (%)", { $0.qerror! * 100 }) }
            if layers.allSatisfy({ $0.sqnrDB != nil }) { return ("Per-module sensitivity: SQNR (dB, lower = more sensitive)", { $0.sqnrDB! }) }
            if layers.allSatisfy({ $0.cosine != nil }) { return ("Per-module sensitivity: 1 - cosine similarity", { 1 - $0.cosine! }) }
            return ("Per-module sensitivity", { $0.sensitivity })
        }()
        return figure(SVGChart.bars(title: title, items: ranked.map { ($0.name, value($0)) }, width: SVGChart.barWidth(ranked.map(\.name)),
                                    color: "#b279a2"))
    }

    /// The series a run belongs to in the bits-per-weight charts.
    static func method(_ r: ResultRun) -> String {
        if let m = ResultValue.object(r.quantization).first(["method", "quant_method"])?.string { return m.uppercased() }
        if r.isBase || (r.bitsPerWeight ?? 0) >= 16 { return "float" }
        return "quantized"
    }

    static func figure(_ svg: String) -> String { "<figure>\(svg)</figure>" }

    public static func write(_ c: Comparison, to path: String) throws {
        try AtomicFile.write(Data(render(c).utf8), to: path)
    }

    public static func write(_ s: Study, to path: String) throws {
        try AtomicFile.write(Data(render(s).utf8), to: path)
    }
}
