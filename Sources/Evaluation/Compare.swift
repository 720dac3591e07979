import Foundation
import TensorCore

// `quantkit compare`: runs of one kind against the float baseline: deltas, relative deltas, bootstrap intervals
// and the verdict per run.
//
// The baseline: the run of `--baseline FILE` when given; else the one 16-bit float run (bits per weight 16, no
// quantization settings), since FP16 is what a quantized variant replaces; else the first plain run (the float
// run given first), else a base named inside a quantized-vs-base file. Float runs with more bits than the
// baseline (FP32 beside an FP16 baseline) are references: shown with their delta, never given a verdict.

/// What a row is in a comparison.
public enum CompareRole: String, Sendable {
    case baseline, reference, candidate
}

public struct CompareRow: Sendable {
    public var run: ResultRun
    public var value: Double?
    public var delta: Double?
    public var relativeDelta: Double?
    public var verdict: Verdict?
    /// Every shared metric: normalized name -> (base, run).
    public var metricDeltas: [(name: String, base: Double, value: Double)]
    public var role: CompareRole = .candidate
}

public struct Comparison: Sendable, Encodable {
    public var kind: ResultKind
    public var files: [String]
    public var baseline: ResultRun
    public var rows: [CompareRow]
    public var layers: [LayerFigure]
    public var thresholds: VerdictThresholds
    public var notes: [String]

    /// The headline metric's normalized key and display name.
    public static func headline(_ k: ResultKind) -> (key: String, name: String, higherIsBetter: Bool) {
        switch k {
        case .perplexity: return ("ppl", "ppl", false)
        case .retrieval: return ("ndcg10", "nDCG@10", true)
        case .answers: return ("em", "EM", true)
        case .layers, .finetune: return ("", "", false)
        }
    }

    /// Display names of known normalized metric keys.
    public static func displayName(_ key: String) -> String {
        let known = ["ppl": "ppl", "pplerror": "ppl error", "kldmean": "KLD mean", "kldstderr": "KLD stderr",
                     "kldmax": "KLD max", "rmsdp": "RMS dp", "sametop": "same-top %", "pplratio": "ppl ratio",
                     "qerror": "QError", "em": "EM", "f1": "F1", "agreementem": "agreement EM",
                     "mrr10": "MRR@10", "recall10": "Recall@10", "recall100": "Recall@100"]
        if let k = known[key] { return k }
        if key.hasPrefix("ndcg") { return "nDCG@" + key.dropFirst(4) }
        if key.hasPrefix("recall") { return "Recall@" + key.dropFirst(6) }
        return key
    }

    /// A 16-bit float run: 16 bits per weight and no quantization settings (FP16 or BF16 weights).
    public static func isHalfPrecisionFloat(_ r: ResultRun) -> Bool {
        !r.isBase && r.bitsPerWeight == 16 && r.quantization.isEmpty
    }

    /// A float run with more bits per weight than `baseline` (FP32 beside an FP16 baseline).
    static func isReference(_ r: ResultRun, baseline: ResultRun) -> Bool {
        guard !r.isBase, r.quantization.isEmpty, let b = r.bitsPerWeight, let bb = baseline.bitsPerWeight else { return false }
        return b > bb
    }

    /// Perplexities over different numbers of chunks or tokens (another --max-chunks, a truncated run, a shard) are
    /// not the same measurement: no delta or verdict is given for them.
    static func checkSameScoring(baseline b: ResultRun, others: [ResultRun]) throws {
        func describe(_ r: ResultRun) -> String {
            [r.tokensScored.map { "\($0) tokens" }, r.chunkCount.map { "\($0) chunks" }].compactMap { $0 }.joined(separator: " in ")
        }
        for r in others {
            let tokensDiffer = b.tokensScored != nil && r.tokensScored != nil && b.tokensScored != r.tokensScored
            let chunksDiffer = b.chunkCount != nil && r.chunkCount != nil && b.chunkCount != r.chunkCount
            let perChunkDiffer = b.chunks != nil && r.chunks != nil && b.chunks!.map(\.count) != r.chunks!.map(\.count)
            guard tokensDiffer || chunksDiffer || perChunkDiffer else { continue }
            throw QuantKitError(.input, "compare: not comparable: the baseline \(b.label) (\(b.file)) scored \(describe(b)) but \(r.label) (\(r.file)) scored \(describe(r))\(perChunkDiffer && !tokensDiffer && !chunksDiffer ? " (per-chunk token counts differ)" : ""); only runs over the same chunks and tokens are comparable: evaluate both with the same corpus, --ctx and --max-chunks")
        }
    }

    static func samePath(_ a: String, _ b: String) -> Bool {
        a == b || URL(fileURLWithPath: a).standardizedFileURL.path == URL(fileURLWithPath: b).standardizedFileURL.path
    }

    /// `baseline`: the result file whose run is the baseline (`--baseline`); nil picks it as described at the top.
    public static func build(files: [ResultFile], thresholds: VerdictThresholds = VerdictThresholds(),
                             resamples: Int = Bootstrap.defaultResamples, seed: UInt64 = Bootstrap.defaultSeed,
                             baseline baselineFile: String? = nil) throws -> Comparison {
        guard !files.isEmpty else { throw QuantKitError(.input, "compare: no result files given") }
        try ResultFile.checkComparable(files)
        let measured = files.filter { $0.kind.isMeasured }
        let layers = files.filter { $0.kind == .layers }.flatMap(\.layers)
        guard let kind = measured.first?.kind else {
            throw QuantKitError(.input, "compare: only layer results given; add perplexity, retrieval or answers results to compare")
        }
        var all = measured.flatMap(\.runs)
        // Same labels from different files: add the file name.
        let dupes = Dictionary(grouping: all.indices, by: { all[$0].label }).filter { $0.value.count > 1 }
        for (_, idx) in dupes { for i in idx { all[i].label += " [\(URL(fileURLWithPath: all[i].file).lastPathComponent)]" } }
        let chosen: ResultRun?
        if let bf = baselineFile {
            let inFile = all.filter { samePath($0.file, bf) }
            guard let r = inFile.first(where: { !$0.isBase }) ?? inFile.first else {
                throw QuantKitError(.input, "--baseline \(bf): not one of the \(kind.rawValue) result files given")
            }
            chosen = r
        } else if let half = all.first(where: isHalfPrecisionFloat) {
            chosen = half
        } else {
            // A plain float run given first is the baseline; otherwise a base named inside a quantized-vs-base file.
            let firstPlain = all.first.flatMap { $0.isBase || $0.metrics["kldmean"] != nil ? nil : $0 }
            chosen = firstPlain ?? all.first(where: \.isBase) ?? all.first
        }
        guard let baseline = chosen else {
            throw QuantKitError(.input, "compare: the result files hold no runs")
        }
        var notes: [String] = []
        let (hKey, hName, _) = headline(kind)
        let isBaseline = { (r: ResultRun) in r.file == baseline.file && r.label == baseline.label }
        let references = all.filter { !isBaseline($0) && isReference($0, baseline: baseline) }
        // Other files' own bases are dropped; say so if they disagree with the baseline (or a reference run).
        var kldAgainst: Set<String> = []
        for r in all where r.isBase && !isBaseline(r) {
            // 1e-6 relative: a --kld-base file's base ppl is summed from Double log-softmax rows, the float run's
            // own from Float logit differences; the same run's two figures differ by a few 1e-9.
            func same(_ o: ResultRun) -> Bool {
                guard let a = r.metrics[hKey], let b = o.metrics[hKey] else { return true }
                return abs(a - b) <= 1e-6 * max(1, abs(b))
            }
            if same(baseline) { continue }
            if let ref = references.first(where: same) { kldAgainst.insert(ref.label); continue }
            if let a = r.metrics[hKey], let b = baseline.metrics[hKey] {
                notes.append("\(r.file): its base \(hName) \(reportFormat(a)) differs from the baseline's \(reportFormat(b)); compared against the baseline")
            }
        }
        for l in kldAgainst.sorted() {
            notes.append("KLD and segment figures are against \(l) (the --kld-base run); relative losses and verdicts against the baseline \(baseline.label)")
        }
        let others = all.filter { !$0.isBase && !isBaseline($0) }
        if kind == .perplexity { try checkSameScoring(baseline: baseline, others: others) }
        if others.isEmpty { throw QuantKitError(.input, "compare: need at least two runs (a baseline and a quantized run); got only \(baseline.label) from \(baseline.file)") }
        var rows: [CompareRow] = []
        rows.append(CompareRow(run: baseline, value: baseline.metrics[hKey], delta: nil, relativeDelta: nil, verdict: nil, metricDeltas: [],
                               role: .baseline))
        for r in others {
            let v = r.metrics[hKey], b = baseline.metrics[hKey]
            if isReference(r, baseline: baseline) {
                rows.append(CompareRow(run: r, value: v, delta: v.flatMap { x in b.map { x - $0 } },
                                       relativeDelta: (v != nil && b != nil && b! != 0) ? v! / b! - 1 : nil,
                                       verdict: nil, metricDeltas: [], role: .reference))
                continue
            }
            var ci: ConfidenceInterval? = nil
            switch kind {
            case .perplexity:
                if let bc = baseline.chunks, let rc = r.chunks {
                    do { ci = try Bootstrap.qerror(base: bc, quantized: rc, resamples: resamples, seed: seed) }
                    catch { notes.append("no CI for \(r.label): \(error)") }
                } else {
                    notes.append("no CI for \(r.label): per-chunk NLL sums (a \"chunks\" array of {nll_sum, count}) absent in \(baseline.chunks == nil ? baseline.file : r.file)")
                }
            case .retrieval:
                let ids = baseline.perQuery.keys.filter { baseline.perQuery[$0]?[hKey] != nil && r.perQuery[$0]?[hKey] != nil }.sorted()
                if ids.count >= 2 {
                    if ids.count < max(baseline.perQuery.count, r.perQuery.count) {
                        notes.append("\(r.label): CI over the \(ids.count) queries with per-query nDCG@10 on both sides")
                    }
                    ci = try? Bootstrap.relativeDrop(base: ids.map { baseline.perQuery[$0]![hKey]! },
                                                     quantized: ids.map { r.perQuery[$0]![hKey]! }, resamples: resamples, seed: seed)
                } else {
                    notes.append("no CI for \(r.label): per-query nDCG@10 values absent")
                }
            case .answers, .layers, .finetune:
                break
            }
            let verdict = VerdictLogic.verdict(base: baseline, run: r, thresholds: thresholds, interval: ci, layers: layers)
            if verdict == nil { notes.append("no verdict for \(r.label): the headline metric is missing on one side") }
            var md: [(String, Double, Double)] = []
            for k in r.metrics.keys.sorted() { if let bv = baseline.metrics[k], let rv = r.metrics[k] { md.append((k, bv, rv)) } }
            rows.append(CompareRow(run: r, value: v, delta: v.flatMap { x in b.map { x - $0 } },
                                   relativeDelta: (v != nil && b != nil && b! != 0) ? v! / b! - 1 : nil,
                                   verdict: verdict, metricDeltas: md))
        }
        return Comparison(kind: kind, files: files.map(\.path), baseline: baseline, rows: rows, layers: layers,
                          thresholds: thresholds, notes: notes)
    }

    /// All segments carried by the compared runs, worst first.
    /// Retrieval runs whose per-query entries carry the query text also get query-length buckets (unless the file
    /// already has them).
    public var segments: [SegmentDelta] {
        var all: [SegmentDelta] = []
        for row in rows where row.role == .candidate && row.delta != nil {
            all += row.run.segments.map { var s = $0; s.run = row.run.label; return s }
            if kind == .retrieval, !row.run.segments.contains(where: { $0.group == "query length" }) {
                let texts = row.run.queryTexts.isEmpty ? baseline.queryTexts : row.run.queryTexts
                let items = texts.keys.sorted().compactMap { id -> (text: String, base: Double, quantized: Double)? in
                    guard let b = baseline.perQuery[id]?["ndcg10"], let q = row.run.perQuery[id]?["ndcg10"] else { return nil }
                    return (texts[id]!, b, q)
                }
                if !items.isEmpty { all += Segments.byQueryLength(items).map { var s = $0; s.run = row.run.label; return s } }
            }
        }
        return Segments.worstFirst(all)
    }

    /// True when segments come from more than one compared run (reports then name the run of each segment).
    public var segmentsFromSeveralRuns: Bool { Set(segments.compactMap(\.run)).count > 1 }

    /// The `limit` worst segments of each group (groups in order of their worst segment), for the reports.
    public func worstSegmentsPerGroup(limit: Int = 5) -> [SegmentDelta] {
        Segments.worstPerGroup(segments, limit: limit).flatMap(\.segments)
    }

    /// The first reference row (FP32 beside an FP16 baseline), for the "FP32 -> FP16" line.
    public var reference: CompareRow? { rows.first { $0.role == .reference } }

    /// "FP32 -> FP16: a 167.7219 -> b 167.7230 (+0.00%)", when a reference run is present.
    public var referenceLine: String? {
        guard let ref = reference, let rv = ref.value, let bv = rows.first?.value, rv != 0 else { return nil }
        let (_, hName, _) = Comparison.headline(kind)
        func name(_ r: ResultRun) -> String { r.bitsPerWeight.map { "FP\(Int($0))" } ?? r.label }
        return "\(name(ref.run)) -> \(name(baseline)) (\(hName)): \(ref.run.label) \(reportFormat(rv)) -> \(baseline.label) \(reportFormat(bv)) " +
            "(\(reportSigned(bv - rv)), \(reportPercent(bv / rv - 1, signed: true)))"
    }

    /// The suffix a row's label gets in tables.
    static func roleSuffix(_ r: CompareRow) -> String {
        switch r.role {
        case .baseline: return " (baseline)"
        case .reference: return " (reference)"
        case .candidate: return ""
        }
    }

    /// The worst verdict over the compared runs, i.e. whether every run could ship.
    public var worstDecision: Decision? {
        let ds = rows.compactMap(\.verdict?.decision)
        if ds.contains(.stayFloat) { return .stayFloat }
        if ds.contains(.improve) { return .improve }
        return ds.isEmpty ? nil : .ship
    }

    // MARK: text

    public func table() -> String {
        let (_, hName, _) = Comparison.headline(kind)
        var header = ["run", "bits/w", hName, "delta", "rel. delta", "95% CI (loss)", "verdict"]
        let extraKeys: [String] = kind == .perplexity ? ["kldmean", "sametop"] : (kind == .retrieval ? ["recall100", "mrr10"] : ["f1", "agreementem"])
        let extras = extraKeys.filter { k in rows.contains { $0.run.metrics[k] != nil } }
        header.insert(contentsOf: extras.map(Comparison.displayName), at: 5)
        var lines: [[String]] = [header]
        for row in rows {
            var cells = [row.run.label + Comparison.roleSuffix(row),
                         row.run.bitsPerWeight.map { reportFormat($0, 2) } ?? "-",
                         row.value.map { reportFormat($0) } ?? "-",
                         row.delta.map { reportSigned($0) } ?? "",
                         row.relativeDelta.map { reportPercent($0, signed: true) } ?? ""]
            for k in extras { cells.append(row.run.metrics[k].map { reportFormat($0) } ?? "-") }
            cells.append(row.verdict?.interval.map { "[\(reportPercent($0.lower, signed: true)), \(reportPercent($0.upper, signed: true))]" } ?? "")
            cells.append(row.verdict.map { "\($0.decision.rawValue) (\($0.measure.components(separatedBy: " (").first!) \(reportPercent($0.relativeLoss, signed: true)))" } ?? (row.role == .reference ? "reference" : ""))
            lines.append(cells)
        }
        var out = "Comparison of \(kind.rawValue) results (baseline: \(baseline.label); thresholds: ship < \(reportPercent(thresholds.ship)), improve <= \(reportPercent(thresholds.stay)), else stay FP16)\n"
        out += Comparison.align(lines)
        if let l = referenceLine { out += "\n" + l }
        for row in rows {
            guard let v = row.verdict else { continue }
            out += "\n\(row.run.label): \(v.decision.rawValue.uppercased()) — \(v.measure) = \(reportPercent(v.relativeLoss, signed: true))"
            if let n = v.note { out += " (\(n))" }
            for s in v.nextSteps { out += "\n  try: \(s)" }
        }
        if kind == .retrieval {
            out += "\n\nMetric deltas (run - baseline):\n"
            var t: [[String]] = [["run", "metric", "baseline", "run", "delta"]]
            for row in rows where !row.metricDeltas.isEmpty {
                for m in row.metricDeltas { t.append([row.run.label, Comparison.displayName(m.name), reportFormat(m.base), reportFormat(m.value), reportSigned(m.value - m.base)]) }
            }
            out += Comparison.align(t)
        }
        let segs = worstSegmentsPerGroup(limit: 5)
        if !segs.isEmpty {
            let several = segmentsFromSeveralRuns
            out += "\n\nLargest per-segment degradations (the 5 worst per group):\n"
            var t: [[String]] = [(several ? ["run"] : []) + ["group", "segment", "count", "base", "quantized", "rel. loss", "KLD mean"]]
            for s in segs {
                t.append((several ? [s.run ?? "-"] : []) + [s.group, s.segment, String(s.count), reportFormat(s.base), reportFormat(s.quantized),
                          reportPercent(s.relativeLoss, signed: true), s.kldMean.map { reportFormat($0) } ?? "-"])
            }
            out += Comparison.align(t)
        }
        if !layers.isEmpty {
            out += "\n\nMost sensitive modules:\n"
            var t: [[String]] = [["module", "cosine", "SQNR dB", "MSE", "loss", "QError (only this module)"]]
            for l in layers.sorted(by: { $0.sensitivity > $1.sensitivity }).prefix(5) {
                t.append([l.name, l.cosine.map { reportFormat($0, 6) } ?? "-", l.sqnrDB.map { reportFormat($0, 2) } ?? "-", l.mse.map { reportFormat($0) } ?? "-",
                          l.loss.map { reportFormat($0) } ?? "-", l.qerror.map { reportPercent($0, signed: true) } ?? "-"])
            }
            out += Comparison.align(t)
        }
        for n in notes { out += "\nnote: \(n)" }
        return out + "\n"
    }

    static func align(_ rows: [[String]]) -> String {
        let n = rows.map(\.count).max() ?? 0
        var w = [Int](repeating: 0, count: n)
        for r in rows { for (i, c) in r.enumerated() { w[i] = max(w[i], c.count) } }
        return rows.map { r in
            r.enumerated().map { i, c in c.padding(toLength: w[i], withPad: " ", startingAt: 0) }.joined(separator: "  ")
                .trimmingCharacters(in: .whitespaces)
        }.joined(separator: "\n")
    }

    // MARK: JSON

    /// The `kind: compare` body (docs/RESULTS.md).
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: AnyKey.self)
        try c.encode(kind.rawValue, forKey: AnyKey("compared_kind"))
        try c.encode(files, forKey: AnyKey("files"))
        try c.encode(baseline.label, forKey: AnyKey("baseline"))
        try c.encode(Comparison.headline(kind).name, forKey: AnyKey("headline"))
        try c.encode(["ship_below": thresholds.ship, "stay_above": thresholds.stay], forKey: AnyKey("thresholds"))
        try c.encode(worstDecision?.rawValue, forKey: AnyKey("decision"))  // null: no verdict
        var rs = c.nestedUnkeyedContainer(forKey: AnyKey("runs"))
        for r in rows { try rs.encode(RowRecord(row: r)) }
        try c.encode(segments, forKey: AnyKey("segments"))
        var ls = c.nestedUnkeyedContainer(forKey: AnyKey("layers"))
        for l in layers {
            var o = ls.nestedContainer(keyedBy: AnyKey.self)
            try o.encode(l.name, forKey: AnyKey("name"))
            try o.encode(l.sensitivity, forKey: AnyKey("sensitivity"))
            try o.encodeIfPresent(l.cosine, forKey: AnyKey("cosine"))
            try o.encodeIfPresent(l.sqnrDB, forKey: AnyKey("sqnr_db"))
            try o.encodeIfPresent(l.mse, forKey: AnyKey("mse"))
            try o.encodeIfPresent(l.loss, forKey: AnyKey("loss"))
        }
        try c.encode(notes, forKey: AnyKey("notes"))
        try c.encodeIfPresent(reference?.run.label, forKey: AnyKey("reference"))
    }

    /// One compared run.
    struct RowRecord: Encodable {
        let row: CompareRow

        func encode(to encoder: Encoder) throws {
            let r = row
            var o = encoder.container(keyedBy: AnyKey.self)
            try o.encode(r.run.label, forKey: AnyKey("label"))
            try o.encode(r.run.file, forKey: AnyKey("file"))
            try o.encode(r.role == .baseline, forKey: AnyKey("baseline"))
            try o.encode(Dictionary(uniqueKeysWithValues: r.run.metrics.map { (Comparison.displayName($0.key), $0.value) }),
                         forKey: AnyKey("metrics"))
            if r.role == .reference { try o.encode(true, forKey: AnyKey("reference")) }
            try o.encodeIfPresent(r.run.bitsPerWeight, forKey: AnyKey("bits_per_weight"))
            try o.encodeIfPresent(r.value, forKey: AnyKey("value"))
            try o.encodeIfPresent(r.delta, forKey: AnyKey("delta"))
            try o.encodeIfPresent(r.relativeDelta, forKey: AnyKey("relative_delta"))
            if let v = r.verdict {
                var vc = o.nestedContainer(keyedBy: AnyKey.self, forKey: AnyKey("verdict"))
                try vc.encode(v.decision.rawValue, forKey: AnyKey("decision"))
                try vc.encode(v.relativeLoss, forKey: AnyKey("relative_loss"))
                try vc.encode(v.measure, forKey: AnyKey("measure"))
                if let ci = v.interval {
                    try vc.encode(["estimate": ci.estimate, "lower": ci.lower, "upper": ci.upper, "level": ci.level,
                                   "resamples": Double(ci.resamples)], forKey: AnyKey("interval"))
                } else {
                    try vc.encodeNil(forKey: AnyKey("interval"))
                }
                try vc.encode(v.nextSteps, forKey: AnyKey("next_steps"))
                try vc.encode(v.note, forKey: AnyKey("note"))  // null when none
            }
        }
    }
}

// Number formatting shared by the reports.
func reportFormat(_ v: Double, _ digits: Int = 4) -> String {
    if !v.isFinite { return String(v) }
    if v != 0 && (abs(v) >= 1e6 || abs(v) < 1e-4) { return String(format: "%.3e", v) }
    return String(format: "%.\(digits)f", v)
}
func reportSigned(_ v: Double) -> String { (v >= 0 ? "+" : "") + reportFormat(v) }
func reportPercent(_ v: Double, signed s: Bool = false) -> String {
    (s && v >= 0 ? "+" : "") + String(format: "%.2f%%", v * 100)
}
