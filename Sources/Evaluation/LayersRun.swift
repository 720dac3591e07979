import Datasets
import Foundation
import Models
import Quantization
import TensorCore
import Tokenization

/// Everything `quantkit layers` decides: the float model, its quantized weights (a checkpoint or an RTN scheme),
/// the token inputs, and an optional mixed-precision plan target.
public struct LayersRunOptions: Sendable {
    public enum PlanTarget: Sendable, Equatable {
        /// Promote the most sensitive modules to 8 bits within this many bits per weight.
        case bitsPerWeight(Double)
        /// Promote until the measured held-out QError is at most this fraction.
        case qerror(Double)
    }

    /// The float model (HF directory or llama2.c .bin).
    public var model: String
    /// A GPTQ-layout directory of the same model; nil: quantize here with `scheme` (RTN).
    public var quantized: String?
    /// BITS[:GROUP][:asym] (RTN), when `quantized` is nil.
    public var scheme: String?
    /// Calibration text or JSON token ids.
    public var calibration: String
    /// Held-out text or JSON token ids for the enable-one / disable-one effects; nil: no effects.
    public var heldout: String?
    public var tokenizer: String?
    public var ctx = 128
    public var windows = 8
    public var chunks = 4
    public var planTarget: PlanTarget?
    public var threads: Int?
    /// Analyse only this shard's modules and write a partial result (`LayersRun.runShard`); nil: every module.
    public var shard: Shard?

    public init(model: String, calibration: String) {
        self.model = model
        self.calibration = calibration
    }

    public func validate() throws {
        if (quantized == nil) == (scheme == nil) { throw QuantKitError(.input, "give exactly one of --quantized DIR or --scheme BITS[:GROUP]") }
        if case .qerror = planTarget, heldout == nil { throw QuantKitError(.input, "--target-qerror needs --heldout tokens to measure QError") }
        try UserLimits.check(ctx, "--ctx", 2...UserLimits.contextTokens)
        try UserLimits.check(windows, "--windows", 1...(UserLimits.heldTokens / ctx), "windows x --ctx at most \(UserLimits.heldTokens) tokens")
        try UserLimits.check(chunks, "--chunks", 1...(UserLimits.heldTokens / ctx), "chunks x --ctx at most \(UserLimits.heldTokens) tokens")
        if shard != nil, let t = planTarget {
            let flag: String
            switch t { case .bitsPerWeight: flag = "--target-bits"; case .qerror: flag = "--target-qerror" }
            throw QuantKitError(.input, "\(flag) with --shard: a plan needs every module's sensitivity; run the shards without --plan, merge first, then build the plan with an unsharded `quantkit layers --plan auto \(flag) ...`")
        }
    }

    /// --scheme BITS[:GROUP][:asym] (GROUP -1 = per channel).
    public static func parseScheme(_ s: String) throws -> QuantScheme {
        let p = s.split(separator: ":").map(String.init)
        guard let bits = p.first.flatMap(Int.init) else { throw QuantKitError(.input, "--scheme: expected BITS[:GROUP][:asym], got \"\(s)\"") }
        let group = p.count > 1 ? Int(p[1]) : QuantScheme.perChannel
        guard let g = group else { throw QuantKitError(.input, "--scheme: group \"\(p[1])\" is not an integer") }
        do { return try QuantScheme(bits: bits, symmetric: !(p.count > 2 && p[2] == "asym"), groupSize: g) } catch let e as QuantKitError {
            throw QuantKitError(.input, "--scheme \(s): \(e.message)")
        }
    }
}

/// A mixed-precision plan as written to --plan-out (`kind: plan`; `quantkit quantize --plan` reads it back).
public struct PlanDocument: Encodable, Sendable {
    public var plan: MixedPrecisionPlan
    public var bitsPerWeight: Double
    public var model: String
    public var source: String
    public var target: LayersRunOptions.PlanTarget
    public var measuredQError: Double?

    enum CodingKeys: String, CodingKey {
        case scheme, modules, bitsPerWeight = "bits_per_weight", model, source, target, measuredQError = "measured_qerror", kind
    }
    struct Module: Encodable { var bits: Int?; var float: Bool? }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(["bits": plan.defaultBits, "group_size": plan.groupSize], forKey: .scheme)
        try c.encode(plan.overrides.mapValues { $0 >= 16 ? Module(float: true) : Module(bits: $0) }, forKey: .modules)
        try c.encode(bitsPerWeight, forKey: .bitsPerWeight)
        try c.encode(model, forKey: .model)
        try c.encode(source, forKey: .source)
        switch target {
        case .bitsPerWeight(let b): try c.encode(["bits_per_weight": b], forKey: .target)
        case .qerror(let q): try c.encode(["qerror": q], forKey: .target)
        }
        try c.encodeIfPresent(measuredQError, forKey: .measuredQError)
        try c.encode("plan", forKey: .kind)  // also when nested in a layers result, where no envelope adds it
    }
}

/// Per-module sensitivity of a quantized model (`kind: layers`), most sensitive first, with the plan when asked.
public struct LayersReport: Encodable, Sendable {
    public var model: String
    /// The quantized checkpoint's path, or "rtn SCHEME".
    public var source: String
    public var ctx: Int
    /// Of the quantized modules at the default scheme (MixedPrecisionPlan.bitsPerWeight).
    public var bitsPerWeight: Double
    public var calibration: String
    public var heldout: String?
    public var chunks: Int
    public var sensitivity: SensitivityReport
    public var plan: PlanDocument?
    /// Even with every module at 8 bits or float, the QError target was not met.
    public var planTargetMissed: Bool

    enum CodingKeys: String, CodingKey {
        case model, quantized, ctx, bitsPerWeight = "bits_per_weight", calibration, layers, definitions, heldout
        case pplFloat = "ppl_float", pplQuantized = "ppl_quantized", qerrorAll = "qerror_all", plan
    }
    enum LayerKeys: String, CodingKey {
        case rank, name, parameters, cosine, mse, sqnrDB = "sqnr_db", enableOne = "enable_one_qerror", disableOne = "disable_one_qerror"
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(model, forKey: .model)
        try c.encode(source, forKey: .quantized)
        try c.encode(ctx, forKey: .ctx)
        try c.encode(bitsPerWeight, forKey: .bitsPerWeight)
        var cal = c.nestedContainer(keyedBy: AnyKey.self, forKey: .calibration)
        try cal.encode(calibration, forKey: AnyKey("path"))
        try cal.encode(sensitivity.calibrationTokens, forKey: AnyKey("tokens"))
        var layers = c.nestedUnkeyedContainer(forKey: .layers)
        for (i, x) in sensitivity.ranked.enumerated() {
            var l = layers.nestedContainer(keyedBy: LayerKeys.self)
            try l.encode(i + 1, forKey: .rank)
            try l.encode(x.name, forKey: .name)
            try l.encode(x.parameters, forKey: .parameters)
            try l.encode(x.error.cosine, forKey: .cosine)
            try l.encode(x.error.mse, forKey: .mse)
            try l.encode(x.error.sqnrDB.isFinite ? x.error.sqnrDB : 999, forKey: .sqnrDB)  // an exact module: 999 dB
            try l.encodeIfPresent(x.enableOneQError, forKey: .enableOne)
            try l.encodeIfPresent(x.disableOneQError, forKey: .disableOne)
        }
        try c.encode(["sqnr_db": "\(ErrorMetrics.definitions()["sqnr_db"]!), module output on float inputs",
                      "qerror": "ppl_q / ppl_float - 1 on the held-out sample (protocol gptq)"], forKey: .definitions)
        if let heldout {
            var h = c.nestedContainer(keyedBy: AnyKey.self, forKey: .heldout)
            try h.encode(heldout, forKey: AnyKey("path"))
            try h.encode(sensitivity.heldoutTokensScored, forKey: AnyKey("tokens_scored"))
            try h.encode(chunks, forKey: AnyKey("chunks"))
        }
        try c.encodeIfPresent(sensitivity.floatPPL, forKey: .pplFloat)
        try c.encodeIfPresent(sensitivity.quantizedPPL, forKey: .pplQuantized)
        try c.encodeIfPresent(sensitivity.qerrorAll, forKey: .qerrorAll)
        try c.encodeIfPresent(plan, forKey: .plan)
    }
}

/// A coding key made from any string.
struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(_ s: String) { stringValue = s }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

/// A `quantkit layers` shard's partial result: its modules' figures (bit for bit), the whole-model figures, and the
/// options the merge rebuilds the LayersReport with (the provenance in the header pins models and inputs).
public struct LayersShardBody: Codable, Sendable {
    /// One module's figures (ModuleSensitivity), every Double by its bit pattern.
    public struct Module: Codable, Sendable {
        public var name: String
        public var parameters: Int
        public var count: Int
        public var mse, cosine, sqnrDB, psnrDB, maxAbsError: ExactDouble
        public var enableOneQError, disableOneQError: ExactDouble?
        enum CodingKeys: String, CodingKey {
            case name, parameters, count, mse, cosine, sqnrDB = "sqnr_db", psnrDB = "psnr_db", maxAbsError = "max_abs_error"
            case enableOneQError = "enable_one_qerror", disableOneQError = "disable_one_qerror"
        }

        init(_ m: ModuleSensitivity) {
            name = m.name; parameters = m.parameters; count = m.error.count
            mse = ExactDouble(m.error.mse); cosine = ExactDouble(m.error.cosine); sqnrDB = ExactDouble(m.error.sqnrDB)
            psnrDB = ExactDouble(m.error.psnrDB); maxAbsError = ExactDouble(m.error.maxAbsError)
            enableOneQError = m.enableOneQError.map(ExactDouble.init); disableOneQError = m.disableOneQError.map(ExactDouble.init)
        }

        var sensitivity: ModuleSensitivity {
            ModuleSensitivity(name: name, parameters: parameters,
                              error: ErrorMetrics(count: count, mse: mse.value, cosine: cosine.value, sqnrDB: sqnrDB.value,
                                                  psnrDB: psnrDB.value, maxAbsError: maxAbsError.value),
                              enableOneQError: enableOneQError?.value, disableOneQError: disableOneQError?.value)
        }
    }
    public var model: String
    public var source: String
    public var ctx: Int
    public var bitsPerWeight: ExactDouble
    public var calibration: String
    public var heldout: String?
    public var chunks: Int
    public var modules: [Module]
    /// Measured by every shard (each module's QError divides by it); the merge checks they agree.
    public var floatPPL: ExactDouble?
    /// The first shard's only (nil elsewhere).
    public var quantizedPPL: ExactDouble?
    public var calibrationTokens: Int
    public var heldoutTokensScored: Int

    enum CodingKeys: String, CodingKey {
        case model, source, ctx, bitsPerWeight = "bits_per_weight", calibration, heldout, chunks, modules
        case floatPPL = "ppl_float", quantizedPPL = "ppl_quantized", calibrationTokens = "calibration_tokens"
        case heldoutTokensScored = "heldout_tokens_scored"
    }
}

/// `quantkit layers`: per-module sensitivity and, optionally, a mixed-precision plan built from it.
public enum LayersRun {
    public static func run(_ o: LayersRunOptions, progress: any ProgressObserver = NoProgress()) throws -> LayersReport {
        guard o.shard == nil else { throw QuantKitError(.input, "--shard: a shard writes a partial result (LayersRun.runShard)") }
        let a = try analyze(o, progress: progress)
        let (m, low, held, defaultBits, groupSize, source, rep, shapes) = (a.model, a.low, a.heldout, a.bits, a.groupSize, a.source, a.report, a.shapes)
        var plan: PlanDocument?
        var missed = false
        if let target = o.planTarget {
            let ranking = rep.ranked.map(\.name)
            var p: MixedPrecisionPlan, measured: Double? = nil
            let eight = try eightBit(m, names: Array(low.keys))
            switch target {
            case .bitsPerWeight(let tb):
                p = try MixedPrecisionPlan.forTargetBits(ranking: ranking, modules: shapes, defaultBits: defaultBits, groupSize: groupSize, targetBits: tb)
                if let h = held {
                    measured = try LayerSensitivity.planForTargetQError(model: m, low: p.weights(low: low, eight: eight), eight: eight, ranking: [],
                                                                       heldout: h, ctx: o.ctx, chunks: o.chunks, target: .infinity,
                                                                       defaultBits: defaultBits, groupSize: groupSize).qerror
                }
            case .qerror(let tq):
                (p, measured) = try LayerSensitivity.planForTargetQError(model: m, low: low, eight: eight, ranking: ranking, heldout: held!, ctx: o.ctx,
                                                                         chunks: o.chunks, target: tq, defaultBits: defaultBits, groupSize: groupSize)
                missed = measured! > tq
            }
            plan = PlanDocument(plan: p, bitsPerWeight: p.bitsPerWeight(modules: shapes), model: o.model, source: source, target: target,
                                measuredQError: measured)
        }
        return LayersReport(model: o.model, source: source, ctx: o.ctx, bitsPerWeight: a.bitsPerWeight, calibration: o.calibration, heldout: o.heldout,
                            chunks: o.chunks, sensitivity: rep, plan: plan, planTargetMissed: missed)
    }

    /// The shard `o.shard` of a layers run: the per-module figures of its modules (a contiguous slice in the
    /// analysis's module order). Every shard runs the calibration forwards and the float held-out perplexity; the
    /// all-quantized perplexity is measured by shard 0 only.
    public static func runShard(_ o: LayersRunOptions, progress: any ProgressObserver = NoProgress()) throws -> PartialResult<LayersShardBody> {
        guard let shard = o.shard else { throw QuantKitError(.input, "--shard is required for a partial run") }
        let a = try analyze(o, progress: progress)
        let rep = a.report
        var provenance = [
            "model_sha256": try Digest.sha256(modelPath: o.model),
            "quantized": try o.quantized.map { "sha256 " + (try Digest.sha256(modelPath: $0)) } ?? a.source,
            "calibration_sha256": try Digest.sha256(file: o.calibration),
            "heldout_sha256": try o.heldout.map { try Digest.sha256(file: $0) } ?? "none",
            "tokenizer": o.tokenizer.map { "sha256 " + ((try? Digest.sha256(file: $0)) ?? $0) } ?? "the model's",
            "ctx": String(o.ctx), "windows": String(o.windows), "chunks": String(o.chunks),
        ]
        provenance["modules"] = String(a.totalModules)
        let body = LayersShardBody(model: o.model, source: a.source, ctx: o.ctx, bitsPerWeight: ExactDouble(a.bitsPerWeight),
                                   calibration: o.calibration, heldout: o.heldout, chunks: o.chunks,
                                   modules: rep.modules.map(LayersShardBody.Module.init), floatPPL: rep.floatPPL.map(ExactDouble.init),
                                   quantizedPPL: rep.quantizedPPL.map(ExactDouble.init), calibrationTokens: rep.calibrationTokens,
                                   heldoutTokensScored: rep.heldoutTokensScored)
        return PartialResult(header: PartialHeader(partialOf: "layers", shard: shard, provenance: provenance,
                                                   items: ShardItems(unit: "modules", first: a.modules.lowerBound, count: a.modules.count,
                                                                     total: a.totalModules)),
                             body: body)
    }

    /// The whole run's report from its shards (ShardMerge.order checked and ordered them): the modules concatenated
    /// in shard order (the analysis's module order; the ranking is computed from them as the unsharded run does),
    /// the whole-model figures from shard 0.
    static func merge(_ files: [(path: String, header: PartialHeader)]) throws -> LayersReport {
        let parts = try files.map { f -> LayersShardBody in
            let b = try PartialResult<LayersShardBody>.read(f.path).body
            guard b.modules.count == f.header.items.count else {
                throw QuantKitError(.format, "\(f.path): holds \(b.modules.count) modules but says it covers \(f.header.items.count)")
            }
            return b
        }
        let first = parts[0]
        for (p, f) in zip(parts, files).dropFirst() {
            guard p.floatPPL?.value.bitPattern == first.floatPPL?.value.bitPattern, p.calibrationTokens == first.calibrationTokens,
                  p.heldoutTokensScored == first.heldoutTokensScored, p.bitsPerWeight == first.bitsPerWeight else {
                throw QuantKitError(.input, "\(f.path): its float model measured differently from \(files[0].path)'s (float ppl, token counts or bits per weight differ); rerun the shards on one build")
            }
        }
        guard first.heldout == nil || first.quantizedPPL != nil else {
            throw QuantKitError(.format, "\(files[0].path): shard 0 lacks the all-quantized perplexity")
        }
        let sensitivity = SensitivityReport(modules: parts.flatMap { $0.modules.map(\.sensitivity) }, floatPPL: first.floatPPL?.value,
                                            quantizedPPL: first.quantizedPPL?.value, calibrationTokens: first.calibrationTokens,
                                            heldoutTokensScored: first.heldoutTokensScored)
        return LayersReport(model: first.model, source: first.source, ctx: first.ctx, bitsPerWeight: first.bitsPerWeight.value,
                            calibration: first.calibration, heldout: first.heldout, chunks: first.chunks, sensitivity: sensitivity,
                            plan: nil, planTargetMissed: false)
    }

    /// Loads the model, its inputs and quantized weights and analyses the run's modules (the shard's, or all).
    static func analyze(_ o: LayersRunOptions, progress: any ProgressObserver) throws
        -> (model: LlamaModel, low: [String: [Float]], heldout: [Int32]?, bits: Int, groupSize: Int, source: String,
            report: SensitivityReport, shapes: [String: (out: Int, in: Int)], bitsPerWeight: Double, modules: Range<Int>, totalModules: Int) {
        try o.validate()
        // Sensitivity is measured against the float model: a quantized --model would be its own baseline.
        try ModelLoading.requireFloatModel(o.model, advice: "layers needs the float model as --model (a quantized directory goes to --quantized)")
        let m = try ModelLoading.loadModel(o.model)
        if let t = o.threads { m.threads = max(1, t) }
        let cal = try readTokens(o.calibration, model: o.model, tokenizer: o.tokenizer, m: m)
        let held = try o.heldout.map { try readTokens($0, model: o.model, tokenizer: o.tokenizer, m: m) }
        let (low, defaultBits, groupSize, source) = try quantizedWeights(o, model: m)
        let total = LayerSensitivity.moduleOrder(low).count
        let range = try o.shard?.range(of: total, unit: "modules") ?? 0..<total
        let rep = try LayerSensitivity.analyze(model: m, quantized: low, calibration: cal, ctx: o.ctx, calibrationWindows: o.windows,
                                               heldout: held, heldoutChunks: o.chunks, only: o.shard == nil ? nil : range,
                                               quantizedPPL: (o.shard?.index ?? 0) == 0, progress: progress)
        var shapes: [String: (out: Int, in: Int)] = [:]
        for n in low.keys {
            if let l = m.blocks.first(where: { n.hasPrefix($0.prefix) })?.linear(named: n) { shapes[n] = (l.outFeatures, l.inFeatures) }
        }
        let bpw = MixedPrecisionPlan(defaultBits: defaultBits, groupSize: groupSize).bitsPerWeight(modules: shapes)
        return (m, low, held, defaultBits, groupSize, source, rep, shapes, bpw, range, total)
    }

    /// Dequantized low-bit weights of every quantized module, with the default bits, group size and a label.
    static func quantizedWeights(_ o: LayersRunOptions, model m: LlamaModel) throws
        -> (weights: [String: [Float]], bits: Int, groupSize: Int, source: String) {
        guard let q = o.quantized else {
            let s = try LayersRunOptions.parseScheme(o.scheme!)
            return (try rtnWeights(m, scheme: s), s.bits, s.groupSize, "rtn " + s.label)
        }
        let (cfg, _) = try GPTQCheckpoint.readConfig(q)
        let ckpt = try SafetensorsCheckpoint(path: q)
        var low: [String: [Float]] = [:]
        for prefix in GPTQCheckpoint.quantizedPrefixes(ckpt) {
            guard let l = m.blocks.first(where: { prefix.hasPrefix($0.prefix) })?.linear(named: prefix) else {
                throw QuantKitError(.input, "\(q): quantized module \(prefix) is not a linear module of \(o.model)")
            }
            let s = cfg.settings(for: prefix)
            low[prefix] = try GPTQPacking.readLayer(ckpt, prefix: prefix, bits: s.bits, groupSize: s.groupSize,
                                                    inFeatures: l.inFeatures, outFeatures: l.outFeatures, symmetric: cfg.sym).dequantized()
        }
        return (low, cfg.bits, cfg.groupSize, q)
    }

    /// JSON token ids, or text (plain, BEIR .jsonl, SQuAD .json) tokenized with the model's tokenizer, BOS
    /// prepended when the tokenizer adds one.
    public static func readTokens(_ path: String, model: String, tokenizer: String?, m: LlamaModel) throws -> [Int32] {
        let data = try readMaybeCompressed(path)
        let any: Any
        do { any = try JSONSerialization.jsonObject(with: data) } catch {
            guard String(data: data, encoding: .utf8) != nil else { throw QuantKitError(.format, "\(path): neither JSON token ids nor UTF-8 text") }
            let text = try CalibrationText.load(path)
            let tokPath = try ModelLoading.tokenizerPath(model: model, explicit: tokenizer)
            let tok = try ModelLoading.loadTokenizer(tokPath)
            try ModelLoading.checkVocab(tok, model: m, tokenizerPath: tokPath)
            return PerplexityRun.tokens(text, tokenizer: tok, model: m).tokens
        }
        let list = (any as? [Any]) ?? ((any as? [String: Any])?["tokens"] as? [Any])
        guard let l = list else { throw QuantKitError(.format, "\(path): expected a JSON list of token ids or an object with \"tokens\"") }
        return try l.enumerated().map { i, v in
            guard let n = v as? NSNumber, n.doubleValue == n.doubleValue.rounded(), abs(n.doubleValue) < 1e9 else {
                throw QuantKitError(.format, "\(path): token \(i) is not an integer id")
            }
            return n.int32Value
        }
    }

    /// Dequantized weights of every block linear module under an RTN scheme.
    static func rtnWeights(_ model: LlamaModel, scheme: QuantScheme) throws -> [String: [Float]] {
        try rtnWeights(model, names: model.blocks.flatMap { $0.linearGroups.flatMap { $0 } }, scheme: scheme)
    }

    static func eightBit(_ m: LlamaModel, names: [String]) throws -> [String: [Float]] {
        try rtnWeights(m, names: names, scheme: try QuantScheme(bits: 8, symmetric: true, groupSize: QuantScheme.perChannel))
    }

    static func rtnWeights(_ m: LlamaModel, names: [String], scheme s: QuantScheme) throws -> [String: [Float]] {
        var out: [String: [Float]] = [:]
        for n in names {
            let w = try m.source.tensor(n + ".weight")
            out[n] = try RTN.quantize(w.floats(), outFeatures: w.shape[0], inFeatures: w.shape[1], scheme: s, name: n).dequantized()
        }
        return out
    }
}
