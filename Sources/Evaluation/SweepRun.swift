import Datasets
import Foundation
import Quantization
import TensorCore

/// One point of a sweep: a method with its recovery flags, at a bit width and group size; or a smaller student
/// distilled from the float model (`student`, no method), written as f16.
public struct SweepVariant: Sendable, Equatable, Codable {
    public var method: QuantMethod?
    /// Quantization-aware fine-tuning from the method's result (`quantkit finetune --init`).
    public var finetune = false
    /// A distilled student's shape ("LAYERSxHIDDEN"): method nil, bits 16.
    public var student: String?
    public var awq = false
    public var rotate = false
    public var mse = false
    public var actOrder = false
    public var gptaq = false
    public var bits: Int
    public var groupSize: Int

    /// "gptq+rotate+mse-int4-g32".
    public var label: String {
        if let s = student { return "distill-\(s)-f16" }
        var parts = [method?.rawValue ?? "?"]
        if awq { parts.append("awq") }
        if rotate { parts.append("rotate") }
        if mse { parts.append("mse") }
        if actOrder { parts.append("actorder") }
        if gptaq { parts.append("gptaq") }
        if finetune { parts.append("finetune") }
        return parts.joined(separator: "+") + "-int\(bits)-" + (groupSize > 0 ? "g\(groupSize)" : "pc")
    }

    /// A distilled student of shape "LAYERSxHIDDEN" (either side "-" for the teacher's), checked in form here and
    /// against the model when it runs.
    public static func student(_ shape: String) throws -> SweepVariant {
        let parts = shape.lowercased().split(separator: "x", omittingEmptySubsequences: false)
        guard parts.count == 2, parts.allSatisfy({ $0 == "-" || (Int($0).map { $0 > 0 } ?? false) }) else {
            throw QuantKitError(.input, "--students '\(shape)': expected LAYERSxHIDDEN, e.g. 2x100 or 3x-")
        }
        return SweepVariant(method: nil, student: shape.lowercased(), bits: 16, groupSize: -1)
    }

    /// A method spec: a method name, optionally with "+awq", "+rotate", "+mse", "+actorder", "+gptaq", "+finetune" (e.g. "gptq+rotate+mse").
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
            case "finetune" where m != .hqq: v.finetune = true
            default: throw QuantKitError(.input, "--methods '\(spec)': '+\(flag)' does not combine with \(m.rawValue) (flags: +awq for gptq/rtn, +rotate, +mse, +actorder and +gptaq for gptq, +finetune for all but hqq)")
            }
        }
        return v
    }
}

/// Everything `quantkit sweep` decides.
public struct SweepRunOptions: Sendable, Codable {
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
    /// Distilled students ("LAYERSxHIDDEN"), each one point beside the quantized ones.
    public var students: [String] = []
    /// Optimizer steps of every fine-tuning (+finetune points) and distillation (students).
    public var fineTuneSteps = 200
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
        for s in students {
            let v = try SweepVariant.student(s)
            if !out.contains(v) { out.append(v) }
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

/// One unit of a sweep's work. A sweep is stages of independent tasks (`SweepPlan.stages`); a task of a stage
/// needs only the outputs of the stages before it, so a scheduler can run each stage as an array job.
public enum SweepTask: Equatable, Sendable, CustomStringConvertible {
    /// The float model's evaluation, with the base logits every variant's KLD is measured against.
    case base
    /// Variant i quantized and evaluated.
    case point(Int)
    /// Variant i quantized (when its evaluation is sharded).
    case quantize(Int)
    /// Shard s of variant i's evaluation.
    case evaluate(Int, shard: Int)
    /// Shards merged, the table, the study report and sweep.json.
    case report

    public var description: String {
        switch self {
        case .base: return "base"
        case .point(let i): return "point:\(i)"
        case .quantize(let i): return "quantize:\(i)"
        case .evaluate(let i, let s): return "evaluate:\(i):\(s)"
        case .report: return "report"
        }
    }

    public init(parsing s: String) throws {
        let p = s.split(separator: ":").map(String.init)
        switch (p.first, p.count) {
        case ("base", 1): self = .base
        case ("report", 1): self = .report
        case ("point", 2) where Int(p[1]) != nil: self = .point(Int(p[1])!)
        case ("quantize", 2) where Int(p[1]) != nil: self = .quantize(Int(p[1])!)
        case ("evaluate", 3) where Int(p[1]) != nil && Int(p[2]) != nil: self = .evaluate(Int(p[1])!, shard: Int(p[2])!)
        default: throw QuantKitError(.input, "sweep task '\(s)': expected base, point:I, quantize:I, evaluate:I:S or report")
        }
    }
}

/// A sweep laid out as stages of tasks: what `--emit` writes beside its scheduler scripts, and what every task
/// of the emitted jobs reads back.
public struct SweepPlan: Codable, Sendable {
    public static let currentFormat = 1
    public var format = SweepPlan.currentFormat
    public var quantkitVersion = ResultEnvelope.toolVersion
    public var options: SweepRunOptions
    public var variants: [SweepVariant]
    /// Shards of each variant's evaluation (1: a variant is one task).
    public var evalShards: Int
    /// Task names per stage; each stage runs after the one before it has finished.
    public var stages: [[String]]

    public func write(to path: String) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        try AtomicFile.write(try enc.encode(self), to: path)
    }

    public static func read(_ path: String) throws -> SweepPlan {
        let plan: SweepPlan
        do { plan = try JSONDecoder().decode(SweepPlan.self, from: try readFile(path)) } catch let e as QuantKitError { throw e } catch {
            throw QuantKitError(.format, "\(path): not a sweep plan (\(ShardMerge.describe(error)))")
        }
        guard plan.format == currentFormat, plan.quantkitVersion == ResultEnvelope.toolVersion else {
            throw QuantKitError(.input, "\(path): a sweep plan of QuantKit \(plan.quantkitVersion) (format \(plan.format)); this is \(ResultEnvelope.toolVersion): emit the plan again")
        }
        return plan
    }

    /// Task `index` of stage `stage`, with one line naming what is out of range.
    public func task(stage: Int, index: Int) throws -> SweepTask {
        guard stage >= 0, stage < stages.count else { throw QuantKitError(.input, "--stage \(stage): the plan has stages 0...\(stages.count - 1)") }
        guard index >= 0, index < stages[stage].count else {
            throw QuantKitError(.input, "--task \(index): stage \(stage) has tasks 0...\(stages[stage].count - 1)")
        }
        return try SweepTask(parsing: stages[stage][index])
    }
}

/// What a finished quantize task recorded (`LABEL.quantized.json`).
struct SweepQuantizedRecord: Codable {
    var sizeBytes: Int
    var quantizeSeconds: Double
}

/// What a finished evaluation recorded (`LABEL.point.json`, `float.point.json`): the figures the table needs, bit
/// for bit, so the report computes the same QError whichever machine evaluated.
struct SweepPointRecord: Codable {
    var ppl: ExactDouble
    var bitsPerWeight: ExactDouble?
    var kldMean: ExactDouble?
    var sameTopPercent: ExactDouble?
    var evaluateSeconds: Double

    init(_ r: PerplexityReport, seconds: Double) {
        ppl = ExactDouble(r.ppl)
        bitsPerWeight = r.bitsPerWeight.map(ExactDouble.init)
        kldMean = r.kld.map { ExactDouble($0.kld_mean) }
        sameTopPercent = r.kld.map { ExactDouble($0.same_top_percent) }
        evaluateSeconds = seconds
    }
}

/// `quantkit sweep`: quantize a grid of methods x bits x group sizes on one calibration set and evaluate every
/// variant with the same protocol on the same held-out text, against one float base run (its logits computed
/// once, every variant's KLD against them), then one table and one study report. A run on one machine executes
/// the plan's tasks in order; `--emit` hands the same tasks to a scheduler. Each task writes its outputs
/// atomically and is skipped when they exist, so a failed array can be resubmitted as it is.
public enum SweepRun {
    public static func run(_ o: SweepRunOptions, progress: any ProgressObserver = NoProgress()) throws -> SweepReport {
        let t0 = Date()
        try AtomicFile.checkDestination(o.output, flag: "--output", directory: true)
        let p = try plan(o, evalShards: 1)
        let executor = SweepExecutor(plan: p, progress: progress)
        var report: SweepReport?
        let task = progress.task("sweep", total: p.variants.count, unit: "variants")
        for stage in p.stages {
            for name in stage {
                let t = try SweepTask(parsing: name)
                report = try executor.execute(t) ?? report
                if case .point(let i) = t { task.update(done: i + 1, detail: p.variants[i].label) }
            }
        }
        guard var r = report else { throw QuantKitError(.input, "sweep plan has no report stage") }
        r.seconds = Date().timeIntervalSince(t0)
        return r
    }

    /// The grid as stages of tasks, after the checks that must pass before any work (grid, leakage).
    public static func plan(_ o: SweepRunOptions, evalShards: Int) throws -> SweepPlan {
        let variants = try o.variants()
        try o.evaluation.validate()
        try UserLimits.checkCalibration(samples: o.samples, seqlen: o.seqlen)
        guard evalShards >= 1, evalShards <= 10_000 else { throw QuantKitError(.input, "--eval-shards \(evalShards): use 1...10000") }
        if let m = o.evaluation.maxChunks, m < evalShards {
            throw QuantKitError(.input, "--eval-shards \(evalShards) exceeds --max-chunks \(m): a shard is at least one window")
        }
        let calibration = o.calibration ?? QuantizeRunOptions.defaultCalibration
        // Leakage guard before any work: calibration and evaluation text must not overlap.
        let evalBytes = try readMaybeCompressed(o.corpus)
        guard let evalText = String(data: evalBytes, encoding: .utf8) else { throw QuantKitError(.format, "\(o.corpus): not valid UTF-8 text") }
        let calText = try CalibrationText.load(calibration)
        let overlap = CalibrationFingerprint(text: calText).overlap(with: evalText)
        guard overlap <= 0.1 else {
            throw QuantKitError(.input, String(format: "--eval %@ overlaps the calibration text %@ (%.0f%% of its 8-grams); choose disjoint texts", o.corpus, calibration, overlap * 100))
        }
        var opts = o
        opts.calibration = calibration
        // +finetune points start from their plain variant's checkpoint: they run a stage after the plain points, so
        // no array task quantizes a directory that another is reading.
        let plain = variants.indices.filter { !variants[$0].finetune }, tuned = variants.indices.filter { variants[$0].finetune }
        let first = evalShards == 1 ? "point" : "quantize"
        var stages: [[String]] = [["base"], plain.map { "\(first):\($0)" }, tuned.map { "\(first):\($0)" }]
        if evalShards > 1 { stages.append(variants.indices.flatMap { i in (0..<evalShards).map { "evaluate:\(i):\($0)" } }) }
        stages.append(["report"])
        stages.removeAll { $0.isEmpty }
        return SweepPlan(options: opts, variants: variants, evalShards: evalShards, stages: stages)
    }
}

/// Runs the tasks of one sweep plan; the calibration windows are tokenized and sampled once per process.
public final class SweepExecutor {
    public let plan: SweepPlan
    let progress: any ProgressObserver
    private var prepared: PreparedCalibration?

    public init(plan: SweepPlan, progress: any ProgressObserver = NoProgress()) {
        self.plan = plan
        self.progress = progress
    }

    var o: SweepRunOptions { plan.options }
    var dir: String { o.output }
    var baseJSON: String { dir + "/float.json" }
    var baseLogits: String { dir + "/float.logits.zst" }
    func checkpoint(_ i: Int) -> String { dir + "/" + plan.variants[i].label }
    func exists(_ path: String) -> Bool { FileManager.default.fileExists(atPath: path) }

    /// Runs one task; the report task returns the sweep's report. A task whose outputs exist does nothing.
    @discardableResult
    public func execute(_ t: SweepTask) throws -> SweepReport? {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        switch t {
        case .base:
            guard !exists(baseJSON + ".point") else { return nil }
            let t0 = Date()
            let r = try evaluate(o.model, json: baseJSON, saveLogits: baseLogits, kldBase: nil)
            try write(SweepPointRecord(r, seconds: Date().timeIntervalSince(t0)), to: baseJSON + ".point")
        case .point(let i):
            try checkVariant(i)
            guard !exists(checkpoint(i) + ".json.point") else { return nil }
            try quantize(i)
            let t0 = Date()
            let r = try evaluate(checkpoint(i), json: checkpoint(i) + ".json", saveLogits: nil, kldBase: baseLogits)
            try write(SweepPointRecord(r, seconds: Date().timeIntervalSince(t0)), to: checkpoint(i) + ".json.point")
        case .quantize(let i):
            try checkVariant(i)
            try quantize(i)
        case .evaluate(let i, let s):
            try checkVariant(i)
            let part = checkpoint(i) + ".part\(s).json"
            guard !exists(part) else { return nil }
            var p = perplexityOptions(checkpoint(i), kldBase: baseLogits)
            p.shard = try Shard(index: s, count: plan.evalShards)
            try PerplexityRun.runShard(p, progress: progress).write(to: part)
        case .report:
            return try report()
        }
        return nil
    }

    func checkVariant(_ i: Int) throws {
        guard i >= 0, i < plan.variants.count else { throw QuantKitError(.input, "sweep task: variant \(i) is not in the plan's 0...\(plan.variants.count - 1)") }
    }

    func perplexityOptions(_ model: String, kldBase: String?) -> PerplexityRunOptions {
        var p = PerplexityRunOptions(model: model, corpus: o.corpus, evaluation: o.evaluation)
        p.tokenizer = o.tokenizer
        p.threads = o.threads
        p.kldBase = kldBase
        return p
    }

    func evaluate(_ model: String, json: String, saveLogits: String?, kldBase: String?) throws -> PerplexityReport {
        var p = perplexityOptions(model, kldBase: kldBase)
        p.saveLogits = saveLogits
        let r = try PerplexityRun.run(p, progress: progress)
        try ResultEnvelope(kind: "perplexity").write(r, to: json)
        return r
    }

    func write<T: Encodable>(_ value: T, to path: String) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        try AtomicFile.write(try enc.encode(value), to: path)
    }

    func read<T: Decodable>(_ type: T.Type, _ path: String, writtenBy task: String) throws -> T {
        guard exists(path) else { throw QuantKitError(.input, "\(path): missing; the sweep's \(task) task has not finished") }
        do { return try JSONDecoder().decode(T.self, from: try readFile(path)) } catch {
            throw QuantKitError(.format, "\(path): damaged sweep record (\(ShardMerge.describe(error))); delete it and rerun \(task)")
        }
    }

    /// Quantizes variant i unless its record exists.
    func quantize(_ i: Int) throws {
        let record = checkpoint(i) + ".quantized"
        guard !exists(record) else { return }
        let v = plan.variants[i]
        let t0 = Date()
        if v.student != nil || v.finetune {
            try fineTune(i, record: record, started: t0)
            return
        }
        var q = QuantizeRunOptions(model: o.model, output: checkpoint(i))
        q.calibration = o.calibration
        q.tokenizer = o.tokenizer
        q.samples = o.samples
        q.seqlen = o.seqlen
        q.seed = o.seed
        if prepared == nil { prepared = try QuantizeRun.prepareCalibration(q) }
        q.method = v.method ?? .rtn
        q.bits = v.bits
        q.groupSize = v.groupSize
        q.awq = v.awq
        q.rotate = v.rotate
        q.mseSearch = v.mse
        q.actOrder = v.actOrder
        q.gptaqAlpha = v.gptaq ? 0.25 : nil
        q.preparedCalibration = prepared
        q.threads = o.threads
        let qr = try QuantizeRun.run(q, progress: progress)
        try write(SweepQuantizedRecord(sizeBytes: qr.size.modelOutputFileBytes, quantizeSeconds: Date().timeIntervalSince(t0)), to: record)
    }

    /// A +finetune point (the method's result, then `finetune --init` from it) or a distilled student, with
    /// finetune's default recipe on the sweep's calibration text.
    func fineTune(_ i: Int, record: String, started t0: Date) throws {
        var v = plan.variants[i]
        var f = FineTuneRunOptions(model: o.model, output: checkpoint(i))
        f.calibration = o.calibration
        f.tokenizer = o.tokenizer
        f.seed = o.seed
        f.steps = o.fineTuneSteps
        f.warmupSteps = min(f.warmupSteps, o.fineTuneSteps)
        f.checkpointEvery = 0
        f.threads = o.threads
        if let s = v.student {
            f.target = .float; f.student = s; f.outputDType = .f16; f.learningRate = 1e-3
        } else {
            // The starting point is the same variant without fine-tuning, quantized beside it.
            v.finetune = false
            let start = dir + "/" + v.label
            let startRecord = start + ".quantized"
            if !exists(startRecord) {
                let shadow = SweepExecutor(plan: SweepPlan(options: o, variants: [v], evalShards: 1, stages: []), progress: progress)
                try shadow.quantize(0)
            }
            f.initCheckpoint = start
        }
        let r = try FineTuneRun.run(f, progress: progress)
        try ResultEnvelope(kind: "finetune").write(r, to: checkpoint(i) + ".finetune.json")
        try write(SweepQuantizedRecord(sizeBytes: QuantizeRun.outputFileBytes(checkpoint(i)), quantizeSeconds: Date().timeIntervalSince(t0)),
                  to: record)
    }

    /// Merges sharded evaluations, then the table and the study report from every task's records.
    func report() throws -> SweepReport {
        let base = try read(SweepPointRecord.self, baseJSON + ".point", writtenBy: "base")
        var rows: [SweepRow] = []
        var seconds = base.evaluateSeconds
        for (i, v) in plan.variants.enumerated() {
            let ckpt = checkpoint(i), json = ckpt + ".json"
            if plan.evalShards > 1 && !exists(json + ".point") {
                let parts = (0..<plan.evalShards).map { ckpt + ".part\($0).json" }
                for p in parts where !exists(p) { throw QuantKitError(.input, "\(p): missing; the sweep's evaluate:\(i) tasks have not all finished") }
                let t0 = Date()
                guard case .perplexity(let r) = try MergeRun.run(parts) else { throw QuantKitError(.format, "\(parts[0]): not a perplexity partial") }
                try ResultEnvelope(kind: "perplexity").write(r, to: json)
                try write(SweepPointRecord(r, seconds: r.timings.evaluateSeconds + Date().timeIntervalSince(t0)), to: json + ".point")
            }
            let q = try read(SweepQuantizedRecord.self, ckpt + ".quantized", writtenBy: plan.evalShards > 1 ? "quantize:\(i)" : "point:\(i)")
            let e = try read(SweepPointRecord.self, json + ".point", writtenBy: plan.evalShards > 1 ? "evaluate:\(i)" : "point:\(i)")
            let qerror = e.ppl.value / base.ppl.value - 1
            rows.append(SweepRow(variant: v.label, settings: v, bitsPerWeight: e.bitsPerWeight?.value, sizeBytes: q.sizeBytes,
                                 ppl: e.ppl.value, qerror: qerror, kldMean: e.kldMean?.value, sameTopPercent: e.sameTopPercent?.value,
                                 verdict: VerdictLogic.decide(qerror, o.thresholds), quantizeSeconds: q.quantizeSeconds,
                                 evaluateSeconds: e.evaluateSeconds, checkpoint: ckpt, result: json))
            seconds += q.quantizeSeconds + e.evaluateSeconds
        }
        let shipping = rows.filter { $0.verdict == .ship }
            .min { ($0.bitsPerWeight ?? 32, $0.qerror) < ($1.bitsPerWeight ?? 32, $1.qerror) }
        // The study report over the float base and every variant (verdicts, intervals, segments, charts).
        let trained = rows.map { $0.checkpoint + ".finetune.json" }.filter(exists)
        let files = try ([baseJSON] + rows.map(\.result) + trained).map { try ResultFile(path: $0) }
        let study = try Study.build(files: files, thresholds: o.thresholds, baseline: nil, resamples: 200, seed: 0)
        let html = dir + "/report.html"
        try AtomicFile.write(Data(HTMLReport.render(study, title: "QuantKit sweep: \(URL(fileURLWithPath: o.model).lastPathComponent)").utf8), to: html)
        try AtomicFile.write(Data(MarkdownReport.render(study).utf8), to: dir + "/report.md")
        return SweepReport(model: o.model, corpus: o.corpus, protocolName: o.evaluation.protocolKind.rawValue, ctx: o.evaluation.ctx,
                           calibration: o.calibration ?? QuantizeRunOptions.defaultCalibration, basePPL: base.ppl.value, rows: rows,
                           smallestShipping: shipping?.variant, baseResult: baseJSON, report: html, seconds: seconds)
    }
}
