import ArgumentParser
import Evaluation
import Foundation
import Models
import Quantization
import TensorCore

/// `quantkit layers`: per-module sensitivity of a quantized model (or a quantization scheme) and mixed-precision
/// plans built from it.
struct LayersCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "layers",
        abstract: "Per-module sensitivity (output cosine/MSE/SQNR, enable-one/disable-one QError) and mixed-precision plans.",
        discussion: """
        Token inputs: --calibration/--heldout take text (tokenized with the model's tokenizer, BOS prepended when \
        it adds one) or token ids as JSON (a list, or an object with "tokens").
        Plans: --plan auto with --target-bits B (promote the most sensitive modules to 8 bits within B bits per \
        weight) or --target-qerror P (percent; promote until the measured held-out QError is at most P) writes \
        --plan-out (JSON a user can edit: scheme, modules {name: {bits: 8} | {float: true}}).
        """)

    @Option(help: "Base (float) model: HF directory or llama2.c .bin.") var model: String
    @Option(help: "A quantized GPTQ-layout directory of the same model.") var quantized: String?
    @Option(help: "Or quantize here with RTN: BITS[:GROUP][:asym], e.g. 4:32 (GROUP -1 = per channel).") var scheme: String?
    @Option(help: "Calibration text or JSON token ids (not the evaluation text).") var calibration: String
    @Option(help: "Held-out text or JSON token ids for enable-one/disable-one effects and plans; omit to skip effects.") var heldout: String?
    @Option(help: "Tokenizer for text inputs (default: the model's).") var tokenizer: String?
    @Option(help: "Window length.") var ctx: Int = 128
    @Option(help: "Calibration windows.") var windows: Int = 8
    @Option(help: "Held-out chunks (protocol gptq).") var chunks: Int = 4
    @Option(help: "Mixed-precision plan: 'auto'.") var plan: String?
    @Option(help: "Plan target: bits per weight.") var targetBits: Double?
    @Option(help: "Plan target: held-out QError in percent.") var targetQerror: Double?
    @Option(help: "Where to write the plan JSON.") var planOut: String = "plan.json"
    @Option(help: "Write the sensitivity result JSON here.") var json: String?
    @Option(help: "Worker threads.") var threads: Int?

    func validate() throws {
        if (quantized == nil) == (scheme == nil) { throw ValidationError("give exactly one of --quantized DIR or --scheme BITS[:GROUP]") }
        if let p = plan {
            guard p == "auto" else { throw ValidationError("--plan: only 'auto' builds a plan here (pass a plan FILE to quantize)") }
            if (targetBits == nil) == (targetQerror == nil) { throw ValidationError("--plan auto needs exactly one of --target-bits or --target-qerror") }
            if targetQerror != nil && heldout == nil { throw ValidationError("--target-qerror needs --heldout tokens to measure QError") }
        }
        guard ctx >= 2, windows >= 1, chunks >= 1 else { throw ValidationError("--ctx >= 2, --windows >= 1, --chunks >= 1") }
    }

    /// JSON token ids, or text tokenized with the model's tokenizer.
    static func readTokens(_ path: String, model: String, tokenizer: String?, m: LlamaModel) throws -> [Int32] {
        let data = try readMaybeCompressed(path)
        let any: Any
        do { any = try JSONSerialization.jsonObject(with: data) } catch {
            guard String(data: data, encoding: .utf8) != nil else { throw QuantKitError(.format, "\(path): neither JSON token ids nor UTF-8 text") }
            // Plain text, BEIR .jsonl (title + text) or SQuAD .json contexts.
            let text = try CalibrationText.load(path)
            let tokPath = try ModelLoading.tokenizerPath(model: model, explicit: tokenizer)
            let tok = try ModelLoading.loadTokenizer(tokPath)
            try ModelLoading.checkVocab(tok, model: m, tokenizerPath: tokPath)
            var ids = tok.encode(text, addSpecialTokens: false).map { Int32($0) }
            if tok.addsBOS { ids.insert(Int32(tok.bosId ?? m.config.bosTokenId ?? 1), at: 0) }
            return ids
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

    static func parseScheme(_ s: String) throws -> QuantScheme {
        let p = s.split(separator: ":").map(String.init)
        guard let bits = p.first.flatMap(Int.init) else { throw QuantKitError(.input, "--scheme: expected BITS[:GROUP][:asym], got \"\(s)\"") }
        let group = p.count > 1 ? Int(p[1]) : QuantScheme.perChannel
        guard let g = group else { throw QuantKitError(.input, "--scheme: group \"\(p[1])\" is not an integer") }
        return try QuantScheme(bits: bits, symmetric: !(p.count > 2 && p[2] == "asym"), groupSize: g)
    }

    /// Dequantized weights of every block linear module.
    static func rtnWeights(_ model: LlamaModel, scheme: QuantScheme) throws -> [String: [Float]] {
        var out: [String: [Float]] = [:]
        for b in model.blocks {
            for n in b.linearGroups.flatMap({ $0 }) {
                let w = try model.source.tensor(n + ".weight")
                out[n] = try RTN.quantize(w.floats(), outFeatures: w.shape[0], inFeatures: w.shape[1], scheme: scheme, name: n).dequantized()
            }
        }
        return out
    }

    func run() throws {
        try runReportingErrors {
            let m = try LlamaModel.load(path: model)
            if let t = threads { m.threads = max(1, t) }
            let cal = try LayersCommand.readTokens(calibration, model: model, tokenizer: tokenizer, m: m)
            let held = try heldout.map { try LayersCommand.readTokens($0, model: model, tokenizer: tokenizer, m: m) }
            var low: [String: [Float]]
            var defaultBits: Int, groupSize: Int, source: String
            if let q = quantized {
                let (cfg, _) = try GPTQCheckpoint.readConfig(q)
                let ckpt = try SafetensorsCheckpoint(path: q)
                low = [:]
                for prefix in GPTQCheckpoint.quantizedPrefixes(ckpt) {
                    guard let l = m.blocks.first(where: { prefix.hasPrefix($0.prefix) })?.linear(named: prefix) else {
                        throw QuantKitError(.input, "\(q): quantized module \(prefix) is not a linear module of \(model)")
                    }
                    let s = cfg.settings(for: prefix)
                    low[prefix] = try GPTQPacking.readLayer(ckpt, prefix: prefix, bits: s.bits, groupSize: s.groupSize,
                                                            inFeatures: l.inFeatures, outFeatures: l.outFeatures, symmetric: cfg.sym).dequantized()
                }
                defaultBits = cfg.bits; groupSize = cfg.groupSize; source = q
            } else {
                let s = try LayersCommand.parseScheme(scheme!)
                low = try LayersCommand.rtnWeights(m, scheme: s)
                defaultBits = s.bits; groupSize = s.groupSize; source = "rtn " + s.label
            }
            var reporters: [String: ProgressReporter] = [:]
            let rep = try LayerSensitivity.analyze(model: m, quantized: low, calibration: cal, ctx: ctx, calibrationWindows: windows,
                                                   heldout: held, heldoutChunks: chunks) { stage, done, total in
                let r = reporters[stage] ?? ProgressReporter("layers \(stage)", total: total, unit: stage == "effects" ? "ppl runs" : "windows")
                reporters[stage] = r
                r.update(done: done)
            }
            var shapes: [String: (out: Int, in: Int)] = [:]
            for n in low.keys { if let l = m.blocks.first(where: { n.hasPrefix($0.prefix) })?.linear(named: n) { shapes[n] = (l.outFeatures, l.inFeatures) } }
            let bpw = MixedPrecisionPlan(defaultBits: defaultBits, groupSize: groupSize).bitsPerWeight(modules: shapes)

            print("Per-module sensitivity of \(source) vs \(model) (most sensitive first; calibration \(rep.calibrationTokens) tokens)")
            var rows = [["rank", "module", "cosine", "MSE", "SQNR dB", "enable-one QError", "disable-one QError"]]
            for (i, x) in rep.ranked.enumerated() {
                rows.append([String(i + 1), x.name, String(format: "%.6f", x.error.cosine), String(format: "%.3e", x.error.mse),
                             String(format: "%.2f", x.error.sqnrDB),
                             x.enableOneQError.map { String(format: "%+.3f%%", $0 * 100) } ?? "-",
                             x.disableOneQError.map { String(format: "%+.3f%%", $0 * 100) } ?? "-"])
            }
            print(LayersCommand.align(rows))
            if let f = rep.floatPPL, let q = rep.quantizedPPL {
                print(String(format: "held-out ppl: float %.4f, all quantized %.4f (QError %+.3f%%, %d tokens, protocol gptq ctx %d); %.3f bits/weight",
                             f, q, (q / f - 1) * 100, rep.heldoutTokensScored, ctx, bpw))
            }
            let sqnr = ErrorMetrics.definitions()["sqnr_db"]!
            print("SQNR = \(sqnr) of the module output on float inputs; QError = ppl_q / ppl_float - 1")

            var planInfo: [String: Any]? = nil
            if plan == "auto" {
                let ranking = rep.ranked.map(\.name)
                var p: MixedPrecisionPlan, measured: Double? = nil
                let eight = try LayersCommand.eightBit(m, names: Array(low.keys))
                if let tb = targetBits {
                    p = try MixedPrecisionPlan.forTargetBits(ranking: ranking, modules: shapes, defaultBits: defaultBits, groupSize: groupSize, targetBits: tb)
                    if let h = held {
                        measured = try LayerSensitivity.planForTargetQError(model: m, low: p.weights(low: low, eight: eight), eight: eight, ranking: [],
                                                                           heldout: h, ctx: ctx, chunks: chunks, target: .infinity,
                                                                           defaultBits: defaultBits, groupSize: groupSize).qerror
                    }
                } else {
                    (p, measured) = try LayerSensitivity.planForTargetQError(model: m, low: low, eight: eight, ranking: ranking, heldout: held!, ctx: ctx,
                                                                             chunks: chunks, target: targetQerror! / 100, defaultBits: defaultBits, groupSize: groupSize)
                    if measured! > targetQerror! / 100 { print("note: even with every module at 8 bits or float the QError target is not met") }
                }
                var extra: [String: Any] = ["schema_version": ResultSchema.current, "kind": "plan", "model": model, "source": source,
                                            "target": targetBits.map { ["bits_per_weight": $0] } ?? ["qerror": targetQerror! / 100]]
                if let q = measured { extra["measured_qerror"] = q }
                let body = p.json(modules: shapes, extra: extra)
                try AtomicFile.write(JSONSerialization.data(withJSONObject: body, options: [.prettyPrinted, .sortedKeys]), to: planOut)
                let size = p.bitsPerWeight(modules: shapes) * Double(shapes.values.reduce(0) { $0 + $1.out * $1.in }) / 8
                print(String(format: "plan: %d modules kept at higher precision, %.3f bits/weight (%.0f bytes of linear weights)%@ -> %@",
                             p.overrides.count, p.bitsPerWeight(modules: shapes), size,
                             measured.map { String(format: ", measured QError %+.3f%%", $0 * 100) } ?? "", planOut))
                planInfo = body
            }
            if let path = json {
                var body: [String: Any] = [
                    "model": model, "quantized": source, "ctx": ctx, "bits_per_weight": bpw,
                    "calibration": ["path": calibration, "tokens": rep.calibrationTokens],
                    "layers": rep.ranked.enumerated().map { i, x -> [String: Any] in
                        var o: [String: Any] = ["rank": i + 1, "name": x.name, "parameters": x.parameters, "cosine": x.error.cosine,
                                                "mse": x.error.mse, "sqnr_db": x.error.sqnrDB.isFinite ? x.error.sqnrDB : 999]
                        if let e = x.enableOneQError { o["enable_one_qerror"] = e }
                        if let d = x.disableOneQError { o["disable_one_qerror"] = d }
                        return o
                    },
                    "definitions": ["sqnr_db": "\(sqnr), module output on float inputs",
                                    "qerror": "ppl_q / ppl_float - 1 on the held-out sample (protocol gptq)"],
                ]
                if let h = heldout { body["heldout"] = ["path": h, "tokens_scored": rep.heldoutTokensScored, "chunks": chunks] }
                if let f = rep.floatPPL { body["ppl_float"] = f }
                if let q = rep.quantizedPPL { body["ppl_quantized"] = q }
                if let q = rep.qerrorAll { body["qerror_all"] = q }
                if let p = planInfo { body["plan"] = p }
                try ResultEnvelope(kind: "layers", bitsPerWeight: bpw).write(body, to: path)
                print("JSON: \(path)")
            }
        }
    }

    static func eightBit(_ m: LlamaModel, names: [String]) throws -> [String: [Float]] {
        let s = try QuantScheme(bits: 8, symmetric: true, groupSize: QuantScheme.perChannel)
        var out: [String: [Float]] = [:]
        for n in names {
            let w = try m.source.tensor(n + ".weight")
            out[n] = try RTN.quantize(w.floats(), outFeatures: w.shape[0], inFeatures: w.shape[1], scheme: s, name: n).dequantized()
        }
        return out
    }

    static func align(_ rows: [[String]]) -> String {
        var w = [Int](repeating: 0, count: rows.map(\.count).max() ?? 0)
        for r in rows { for (i, c) in r.enumerated() { w[i] = max(w[i], c.count) } }
        return rows.map { $0.enumerated().map { i, c in c.padding(toLength: w[i], withPad: " ", startingAt: 0) }.joined(separator: "  ").trimmingCharacters(in: .whitespaces) }
            .joined(separator: "\n")
    }
}
