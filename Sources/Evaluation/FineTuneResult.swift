import Foundation
import TensorCore

/// A `finetune` result as `report` reads it: what trained from where, its loss curve and the held-out validation.
public struct FineTuneResult: Sendable {
    public struct CurvePoint: Sendable, Equatable {
        public var step: Int
        public var loss: Double
        public var kl: Double
    }
    public struct Losses: Sendable, Equatable {
        public var kl: Double
        public var ce: Double
        public var sameTop: Double
    }
    /// The checkpoint it wrote and the float teacher.
    public var output: String
    public var model: String
    /// The quantizer trained against ("int4 sym g32", "npu int8 per-channel", "float student 2x100") and the start.
    public var weights: String
    public var initialization: String
    /// The quantized checkpoint it started from (`--init`), when it started from one.
    public var initCheckpoint: String?
    public var steps: Int
    public var trainingTokens: Int?
    public var curve: [CurvePoint]
    public var validationFile: String?
    public var before: Losses?
    public var after: Losses?
    /// A distilled student's block weights per teacher block weight.
    public var studentSizeRatio: Double?

    init(_ root: ResultValue, path: String) throws {
        func need(_ v: ResultValue?, _ key: String) throws -> ResultValue {
            guard let v, v != .null else { throw QuantKitError(.format, "\(path): missing field \"\(key)\" in a finetune result") }
            return v
        }
        let recipe = try need(root["recipe"], "recipe")
        output = try need(root["output"], "output").string ?? ""
        model = root["model"]?.string ?? ""
        weights = recipe["weights"]?.string ?? "?"
        initialization = recipe["initialization"]?.string ?? "?"
        initCheckpoint = root["init_checkpoint"]?.string
        guard let steps = recipe["steps"]?.int else { throw QuantKitError(.format, "\(path): recipe.steps must be an integer") }
        self.steps = steps
        trainingTokens = root["training_tokens"]?.int
        guard let points = try need(root["curve"], "curve").array else { throw QuantKitError(.format, "\(path): \"curve\" must be an array") }
        curve = try points.enumerated().map { i, p in
            guard let s = p["step"]?.int, let l = p["loss"]?.double, let k = p["kl"]?.double else {
                throw QuantKitError(.format, "\(path): curve[\(i)] needs integer \"step\" and numeric \"loss\" and \"kl\"")
            }
            return CurvePoint(step: s, loss: l, kl: k)
        }
        func losses(_ v: ResultValue?) -> Losses? {
            guard let v, let kl = v["kl"]?.double, let ce = v["ce"]?.double, let top = v["sameTop"]?.double else { return nil }
            return Losses(kl: kl, ce: ce, sameTop: top)
        }
        let validation = root["validation"]
        validationFile = validation?["file"]?.string
        before = losses(validation?["before"])
        after = losses(validation?["after"])
        if let st = root["student"], let own = st["block_weights"]?.double, let teacher = st["teacher_block_weights"]?.double, teacher > 0 {
            studentSizeRatio = own / teacher
        }
    }

    /// Share of the starting validation KL removed by training.
    public var klRecovered: Double? {
        guard let b = before, let a = after, b.kl > 0 else { return nil }
        return (b.kl - a.kl) / b.kl
    }
}

/// One fine-tuning run in a study: the result, and the perplexity runs of its checkpoint and of its starting point
/// when the study holds them (matched by the last path component, as variants are).
public struct StudyFineTune: Sendable {
    public var name: String
    public var result: FineTuneResult
    public var start: ResultRun?
    public var trained: ResultRun?

    /// A metric before and after, when both runs carry it.
    public func change(_ metric: String) -> (before: Double, after: Double)? {
        guard let b = start?.metrics[metric], let a = trained?.metrics[metric] else { return nil }
        return (b, a)
    }

    /// Share of the starting point's perplexity loss (against the comparison's baseline) that training removed.
    public func recovered(basePPL: Double?) -> Double? {
        guard let base = basePPL, base > 0, let c = change("ppl"), c.before > base else { return nil }
        return (c.before - c.after) / (c.before - base)
    }

    static func build(_ files: [ResultFile], perplexity: Comparison?) -> [StudyFineTune] {
        let runs = perplexity?.rows.map(\.run) ?? []
        func run(named path: String) -> ResultRun? {
            let key = Study.variantName(path)
            return runs.first { Study.variantName($0.label) == key || Study.variantName($0.file) == key }
        }
        return files.compactMap { f in
            guard let r = f.fineTune else { return nil }
            // A start made here by --method or from the float weights has no checkpoint of its own to match.
            return StudyFineTune(name: Study.variantName(r.output), result: r,
                                 start: r.initCheckpoint.flatMap(run(named:)), trained: run(named: r.output))
        }
    }

    /// Rows of the study's fine-tuning table (header first).
    static func table(_ items: [StudyFineTune], basePPL: Double?) -> [[String]] {
        var t = [["run", "trained against", "from", "steps", "ppl before -> after", "loss recovered", "KLD before -> after",
                  "same-top before -> after", "validation KL (recovered)"]]
        func pair(_ c: (before: Double, after: Double)?, _ digits: Int = 4) -> String {
            c.map { "\(reportFormat($0.before, digits)) -> \(reportFormat($0.after, digits))" } ?? "-"
        }
        for f in items {
            let r = f.result
            let validation = r.before.flatMap { b in r.after.map { a in
                "\(reportFormat(b.kl, 4)) -> \(reportFormat(a.kl, 4))" + (r.klRecovered.map { " (\(reportPercent($0)))" } ?? "")
            } } ?? "-"
            let trained = f.trained?.metrics["ppl"].map { reportFormat($0, 4) }
            t.append([f.name, r.weights, r.initialization, "\(r.steps)",
                      f.start == nil ? trained.map { "-> \($0)" } ?? "-" : pair(f.change("ppl")),
                      f.recovered(basePPL: basePPL).map { reportPercent($0) } ?? "-",
                      pair(f.change("kldmean")), pair(f.change("sametop"), 2), validation])
        }
        return t
    }
}
