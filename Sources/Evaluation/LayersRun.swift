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

    public init(model: String, calibration: String) {
        self.model = model
        self.calibration = calibration
    }

    public func validate() throws {
        if (quantized == nil) == (scheme == nil) { throw QuantKitError(.input, "give exactly one of --quantized DIR or --scheme BITS[:GROUP]") }
        if case .qerror = planTarget, heldout == nil { throw QuantKitError(.input, "--target-qerror needs --heldout tokens to measure QError") }
        guard ctx >= 2, windows >= 1, chunks >= 1 else { throw QuantKitError(.input, "--ctx >= 2, --windows >= 1, --chunks >= 1") }
    }

    /// --scheme BITS[:GROUP][:asym] (GROUP -1 = per channel).
    public static func parseScheme(_ s: String) throws -> QuantScheme {
        let p = s.split(separator: ":").map(String.init)
        guard let bits = p.first.flatMap(Int.init) else { throw QuantKitError(.input, "--scheme: expected BITS[:GROUP][:asym], got \"\(s)\"") }
        let group = p.count > 1 ? Int(p[1]) : QuantScheme.perChannel
        guard let g = group else { throw QuantKitError(.input, "--scheme: group \"\(p[1])\" is not an integer") }
        return try QuantScheme(bits: bits, symmetric: !(p.count > 2 && p[2] == "asym"), groupSize: g)
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

/// `quantkit layers`: per-module sensitivity and, optionally, a mixed-precision plan built from it.
public enum LayersRun {
    public static func run(_ o: LayersRunOptions, progress: any ProgressObserver = NoProgress()) throws -> LayersReport {
        try o.validate()
        let m = try LlamaModel.load(path: o.model)
        if let t = o.threads { m.threads = max(1, t) }
        let cal = try readTokens(o.calibration, model: o.model, tokenizer: o.tokenizer, m: m)
        let held = try o.heldout.map { try readTokens($0, model: o.model, tokenizer: o.tokenizer, m: m) }
        let (low, defaultBits, groupSize, source) = try quantizedWeights(o, model: m)
        let rep = try LayerSensitivity.analyze(model: m, quantized: low, calibration: cal, ctx: o.ctx, calibrationWindows: o.windows,
                                               heldout: held, heldoutChunks: o.chunks, progress: progress)
        var shapes: [String: (out: Int, in: Int)] = [:]
        for n in low.keys {
            if let l = m.blocks.first(where: { n.hasPrefix($0.prefix) })?.linear(named: n) { shapes[n] = (l.outFeatures, l.inFeatures) }
        }
        let bpw = MixedPrecisionPlan(defaultBits: defaultBits, groupSize: groupSize).bitsPerWeight(modules: shapes)
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
        return LayersReport(model: o.model, source: source, ctx: o.ctx, bitsPerWeight: bpw, calibration: o.calibration, heldout: o.heldout,
                            chunks: o.chunks, sensitivity: rep, plan: plan, planTargetMissed: missed)
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
