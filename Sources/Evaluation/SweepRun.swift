import Datasets
import Foundation
import Quantization
import TensorCore

/// One point of a sweep: a method with its recovery flags, at a bit width and group size.
public struct SweepVariant: Sendable, Equatable, Encodable {
    public var method: QuantMethod
    public var awq = false
    public var rotate = false
    public var mse = false
    public var actOrder = false
    public var gptaq = false
    public var bits: Int
    public var groupSize: Int

    /// "gptq+rotate+mse-int4-g32".
    public var label: String {
        var parts = [method.rawValue]
        if awq { parts.append("awq") }
        if rotate { parts.append("rotate") }
        if mse { parts.append("mse") }
        if actOrder { parts.append("actorder") }
        if gptaq { parts.append("gptaq") }
        return parts.joined(separator: "+") + "-int\(bits)-" + (groupSize > 0 ? "g\(groupSize)" : "pc")
    }

    /// A method spec: a method name, optionally with "+awq", "+rotate", "+mse", "+actorder", "+gptaq" (e.g. "gptq+rotate+mse").
    public static func parse(_ spec: String, bits: Int, groupSize: Int) throws -> SweepVariant {
        let parts = spec.lowercased().split(separator: "+").map(String.init)
        guard let first = parts.first, let m = QuantMethod(rawValue: first), m != .sparsegpt else {
            throw QuantKitError(.input, "--methods '\(spec)': expected one of gptq, rtn, awq, hqq, optionally with +awq, +rotate, +mse, +actorder, +gptaq")
        }
        var v = SweepVariant(method: m, bits: bits, groupSize: groupSize)
        for flag in parts.dropFirst() {
            switch flag {
            case "awq" where m == .gptq || m == .rtn: v.awq = true
            case "rotate": v.rotate = true
            case "mse": v.mse = true
            case "actorder" where m == .gptq: v.actOrder = true
            case "gptaq" where m == .gptq: v.gptaq = true
            default: throw QuantKitError(.input, "--methods '\(spec)': '+\(flag)' does not combine with \(m.rawValue) (flags: +awq for gptq/rtn, +rotate, +mse, +actorder and +gptaq for gptq)")
            }
        }
        return v
    }
}

/// Everything `quantkit sweep` decides.
public struct SweepRunOptions: Sendable {
    /// The float model (a Llama-family directory or llama2.c file).
    public var model: String
    public var tokenizer: String?
    /// Calibration text (default: SciFact, as quantize).
    public var calibration: String?
    /// The evaluation corpus and protocol (the same for every variant and the float base).
    public var corpus: String
    public var evaluation: PerplexityOptions
    /// Method specs (SweepVariant.parse), bit widths and group sizes: the grid is their product.
    public var methods = ["rtn", "gptq", "awq", "gptq+awq", "rtn+rotate", "gptq+rotate+mse"]
    public var bits = [8, 4]
    public var groupSizes = [32]
    public var samples = 128
    public var seqlen = 512
    public var seed: UInt64 = 0
    /// Where the checkpoints, per-variant results and the study report go.
    public var output: String
    public var threads: Int?
    public var thresholds = VerdictThresholds()

    public init(model: String, corpus: String, evaluation: PerplexityOptions, output: String) {
        self.model = model
        self.corpus = corpus
        self.evaluation = evaluation
        self.output = output
    }

    /// The grid in run order: for each bit width, each group size, each method. 8-bit points keep one group
    /// size (per channel) since groups barely matter there and the table stays readable.
    public func variants() throws -> [SweepVariant] {
        guard !methods.isEmpty, !bits.isEmpty, !groupSizes.isEmpty else { throw QuantKitError(.input, "--methods, --bits and --group-sizes must not be empty") }
        var out: [SweepVariant] = []
        for b in bits {
            guard [2, 3, 4, 8].contains(b) else { throw QuantKitError(.input, "--bits \(b): use 2, 3, 4 or 8") }
            for g in b == 8 ? [-1] : groupSizes {
                guard g == -1 || g > 0 else { throw QuantKitError(.input, "--group-sizes \(g): use -1 (per channel) or a positive size") }
                for m in methods {
                    let v = try SweepVariant.parse(m, bits: b, groupSize: g)
                    if !out.contains(v) { out.append(v) }
                }
            }
        }
        return out
    }
}

/// One row of the sweep table.
public struct SweepRow: Encodable, Sendable {
    public var variant: String
    public var settings: SweepVariant
    public var bitsPerWeight: Double?
    /// Bytes of the written model.safetensors.
    public var sizeBytes: Int
    public var ppl: Double
    public var qerror: Double
    public var kldMean: Double?
    public var sameTopPercent: Double?
    public var verdict: Decision
    public var quantizeSeconds: Double
    public var evaluateSeconds: Double
    public var checkpoint: String
    public var result: String

    enum CodingKeys: String, CodingKey {
        case variant, settings, bitsPerWeight = "bits_per_weight", sizeBytes = "size_bytes", ppl, qerror, kldMean = "kld_mean"
        case sameTopPercent = "same_top_percent", verdict, quantizeSeconds = "quantize_s", evaluateSeconds = "evaluate_s", checkpoint, result
    }
}

/// What a sweep measured (the `kind: sweep` result).
public struct SweepReport: Encodable, Sendable {
    public var model: String
    public var corpus: String
    public var protocolName: String
    public var ctx: Int
    public var calibration: String
    public var basePPL: Double
    public var rows: [SweepRow]
    /// The smallest variant (bits per weight, then QError) whose verdict is ship; nil when none ships.
    public var smallestShipping: String?
    public var baseResult: String
    public var report: String
    public var seconds: Double

    enum CodingKeys: String, CodingKey {
        case model, corpus, protocolName = "protocol", ctx, calibration, basePPL = "base_ppl", rows, smallestShipping = "smallest_shipping"
        case baseResult = "base_result", report, seconds = "total_s"
    }

    /// The table a person reads.
    public var table: String {
        func pad(_ s: String, _ n: Int) -> String { s.padding(toLength: max(n, s.count), withPad: " ", startingAt: 0) }
        var lines = [pad("variant", 34) + "  bits  group  bpw     size KB  ppl        QError %  KLD       same-top %  verdict     quant s"]
        for r in rows {
            lines.append(pad(r.variant, 34) + String(format: "  %4d  %5@  %5@  %8.1f  %9.4f  %8.3f  %@  %@  %@  %7.2f",
                r.settings.bits, r.settings.groupSize > 0 ? "\(r.settings.groupSize)" : "pc",
                r.bitsPerWeight.map { String(format: "%.2f", $0) } ?? "-", Double(r.sizeBytes) / 1024, r.ppl, r.qerror * 100,
                pad(r.kldMean.map { String(format: "%.5f", $0) } ?? "-", 8), pad(r.sameTopPercent.map { String(format: "%.2f", $0) } ?? "-", 10),
                pad(r.verdict.rawValue, 10), r.quantizeSeconds))
        }
        lines.append(String(format: "float ppl %.4f (%@, ctx %d, %@)", basePPL, protocolName, ctx, corpus))
        lines.append(smallestShipping.map { "smallest variant that ships (QError < 1%): \($0)" } ?? "no variant ships (QError < 1%)")
        return lines.joined(separator: "\n")
    }
}

/// `quantkit sweep`: quantize a grid of methods x bits x group sizes on one calibration set and evaluate every
/// variant with the same protocol on the same held-out text, against one float base run (its logits computed
/// once, every variant's KLD against them), then one table and one study report. The calibration windows are
/// tokenized once; the calibration passes themselves run per variant, since each method's quantized prefix
/// changes the inputs the later layers see.
public enum SweepRun {
    public static func run(_ o: SweepRunOptions, progress: any ProgressObserver = NoProgress()) throws -> SweepReport {
        let t0 = Date()
        let variants = try o.variants()
        let dir = o.output
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let calibration = o.calibration ?? QuantizeRunOptions.defaultCalibration
        // Leakage guard before any work: calibration and evaluation text must not overlap.
        let evalBytes = try readMaybeCompressed(o.corpus)
        guard let evalText = String(data: evalBytes, encoding: .utf8) else { throw QuantKitError(.format, "\(o.corpus): not valid UTF-8 text") }
        let calText = try CalibrationText.load(calibration)
        let overlap = CalibrationFingerprint(text: calText).overlap(with: evalText)
        guard overlap <= 0.1 else {
            throw QuantKitError(.input, String(format: "--eval %@ overlaps the calibration text %@ (%.0f%% of its 8-grams); choose disjoint texts", o.corpus, calibration, overlap * 100))
        }
        func evaluate(_ model: String, json: String, saveLogits: String?, kldBase: String?) throws -> PerplexityReport {
            var p = PerplexityRunOptions(model: model, corpus: o.corpus, evaluation: o.evaluation)
            p.tokenizer = o.tokenizer
            p.threads = o.threads
            p.saveLogits = saveLogits
            p.kldBase = kldBase
            let r = try PerplexityRun.run(p, progress: progress)
            try ResultEnvelope(kind: "perplexity").write(r, to: json)
            return r
        }
        let baseJSON = dir + "/float.json", logits = dir + "/float.logits.zst"
        let base = try evaluate(o.model, json: baseJSON, saveLogits: logits, kldBase: nil)
        // The calibration windows are tokenized and sampled once for the whole grid.
        var cal = QuantizeRunOptions(model: o.model, output: dir)
        cal.calibration = calibration
        cal.tokenizer = o.tokenizer
        cal.samples = o.samples
        cal.seqlen = o.seqlen
        cal.seed = o.seed
        let prepared = try QuantizeRun.prepareCalibration(cal)
        let task = progress.task("sweep", total: variants.count, unit: "variants")
        var rows: [SweepRow] = []
        for (i, v) in variants.enumerated() {
            let ckpt = dir + "/" + v.label, json = dir + "/" + v.label + ".json"
            var q = QuantizeRunOptions(model: o.model, output: ckpt)
            q.method = v.method
            q.bits = v.bits
            q.groupSize = v.groupSize
            q.awq = v.awq
            q.rotate = v.rotate
            q.mseSearch = v.mse
            q.actOrder = v.actOrder
            q.gptaqAlpha = v.gptaq ? 0.25 : nil
            q.preparedCalibration = prepared
            q.calibration = calibration
            q.tokenizer = o.tokenizer
            q.samples = o.samples
            q.seqlen = o.seqlen
            q.seed = o.seed
            q.threads = o.threads
            let t1 = Date()
            let qr = try QuantizeRun.run(q, progress: progress)
            let quantSecs = Date().timeIntervalSince(t1)
            let t2 = Date()
            let r = try evaluate(ckpt, json: json, saveLogits: nil, kldBase: logits)
            let qerror = r.ppl / base.ppl - 1
            rows.append(SweepRow(variant: v.label, settings: v, bitsPerWeight: r.bitsPerWeight, sizeBytes: qr.size.modelOutputFileBytes,
                                 ppl: r.ppl, qerror: qerror, kldMean: r.kld?.kld_mean, sameTopPercent: r.kld?.same_top_percent,
                                 verdict: VerdictLogic.decide(qerror, o.thresholds), quantizeSeconds: quantSecs,
                                 evaluateSeconds: Date().timeIntervalSince(t2), checkpoint: ckpt, result: json))
            task.update(done: i + 1, detail: String(format: "%@ QError %.2f%%", v.label, qerror * 100))
        }
        let shipping = rows.filter { $0.verdict == .ship }
            .min { ($0.bitsPerWeight ?? 32, $0.qerror) < ($1.bitsPerWeight ?? 32, $1.qerror) }
        // The study report over the float base and every variant (verdicts, intervals, segments, charts).
        let files = try ([baseJSON] + rows.map(\.result)).map { try ResultFile(path: $0) }
        let study = try Study.build(files: files, thresholds: o.thresholds, baseline: nil, resamples: 200, seed: 0)
        let html = dir + "/report.html"
        try AtomicFile.write(Data(HTMLReport.render(study, title: "QuantKit sweep: \(URL(fileURLWithPath: o.model).lastPathComponent)").utf8), to: html)
        try AtomicFile.write(Data(MarkdownReport.render(study).utf8), to: dir + "/report.md")
        return SweepReport(model: o.model, corpus: o.corpus, protocolName: o.evaluation.protocolKind.rawValue, ctx: o.evaluation.ctx,
                           calibration: calibration, basePPL: base.ppl, rows: rows, smallestShipping: shipping?.variant,
                           baseResult: baseJSON, report: html, seconds: Date().timeIntervalSince(t0))
    }
}
