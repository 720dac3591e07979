import Datasets
import Foundation
import Models
import NPU
import Quantization
import TensorCore
import Tokenization

/// A causal model from the engine, generating greedily through its KV cache.
public final class EngineAnswerGenerator: AnswerGenerator {
    public let name: String
    let model: LlamaModel
    let tokenizer: any Tokenizer
    let stop: Set<Int32>
    public private(set) var truncatedPrompts = 0
    public private(set) var generatedTokens = 0

    public init(name: String, model: LlamaModel, tokenizer: any Tokenizer) {
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        // Stop at EOS and at any token whose text holds a newline (the answer is one line).
        var s = Set<Int32>()
        if let e = tokenizer.eosId { s.insert(Int32(e)) }
        for id in 0..<min(tokenizer.vocabSize, model.config.vocabSize) where tokenizer.decode([id], skipSpecialTokens: false).contains("\n") {
            s.insert(Int32(id))
        }
        stop = s
    }

    public func generate(prompt: String, maxTokens: Int) throws -> String {
        var ids = tokenizer.encode(prompt, addSpecialTokens: true).map { Int32($0) }
        let budget = model.config.maxPositionEmbeddings - maxTokens
        guard budget > 16 else {
            throw QuantKitError(.input, "--max-tokens \(maxTokens) leaves no room for a prompt in \(model.config.maxPositionEmbeddings) positions")
        }
        if ids.count > budget {
            // Keep the start (instruction, BOS) and the end (question, "Answer:"); drop the middle of the context.
            truncatedPrompts += 1
            let head = min(32, budget / 4)
            ids = Array(ids.prefix(head)) + Array(ids.suffix(budget - head))
        }
        let out = try model.generateGreedy(prompt: ids, maxTokens: maxTokens, stopTokens: stop)
        generatedTokens += out.count
        return tokenizer.decode(out.map(Int.init), skipSpecialTokens: true)
    }
}

/// Everything `quantkit rag answers` decides: the generator (float, quantized, NPU), the questions and how their
/// passages are found.
public struct AnswersRunOptions: Sendable {
    /// A llama2.c .bin or an HF Llama directory.
    public var generator: String
    /// Default: the generator's own (ModelLoading.tokenizerPath), else the shipped Tokenizers/tok512/tok512.bin.
    public var tokenizer: String?
    /// A GPTQ checkpoint directory or an RTN scheme (rtn-int8, rtn-int4-g32...).
    public var generatorQuantized: String?
    /// SQuAD JSON (v1.1 or v2.0).
    public var dataset: String
    /// Retriever embedder directory; nil: the pinned all-MiniLM-L6-v2.
    public var retriever: String?
    public var topK = 1
    /// Each question's own paragraph instead of retrieval.
    public var oracleContext = false
    public var maxQuestions: Int?
    public var maxTokens = 16
    public var threads: Int?
    public var allowOverlap = false
    public var npu: NPUBackendSettings?
    public var embedderOverride: String?
    /// Answer only this shard's questions and write a partial result (`AnswersRun.runShard`); nil: the whole run.
    public var shard: Shard?

    public init(generator: String, dataset: String) {
        self.generator = generator
        self.dataset = dataset
    }

    public func validate() throws {
        try UserLimits.check(topK, "--top-k", 1...UserLimits.items)
        try UserLimits.check(maxTokens, "--max-tokens", 1...UserLimits.contextTokens)
        guard maxTokens >= 1 else { throw QuantKitError(.input, "--max-tokens must be at least 1") }
        if let m = maxQuestions, m < 1 { throw QuantKitError(.input, "--max-questions must be at least 1") }
        if shard != nil && npu != nil {
            throw QuantKitError(.input, "--shard with --backend npu: the simulated NPU's runs are not sharded yet; run it unsharded")
        }
    }

    /// The float generator, or the quantized one: a checkpoint (quantized directory or GGUF file, loaded as every
    /// command loads models: `ModelLoading.loadModel`) or an RTN scheme applied at load time.
    func loadGenerator(quantized q: String?) throws -> LlamaModel {
        guard let q else { return try ModelLoading.loadModel(generator) }
        if FileManager.default.fileExists(atPath: q) { return try ModelLoading.loadModel(q) }
        let scheme = try EmbedderQuantSpec.parseRTN(q)
        try ModelLoading.requireFloatModel(generator, advice: "--generator-quantized \(q) (an RTN scheme) quantizes a float --generator")
        return try LlamaModel.load(path: generator, backend: RTNEmbedderBackend(scheme: scheme))
    }

    /// The tokenizer file: `tokenizer`, else the generator's own (`ModelLoading.tokenizerPath`, as every command
    /// finds it), with the shipped tok512.bin for a llama2.c file that has none beside it.
    func tokenizerPath() throws -> String {
        try ModelLoading.tokenizerPath(model: generator, explicit: tokenizer, shipped: "tok512.bin")
    }

    func loadTokenizer() throws -> any Tokenizer {
        try ModelLoading.loadTokenizer(try tokenizerPath())
    }
}

/// One generator's answers and how they were produced.
public struct AnswersRunRecord: Sendable {
    public var summary: AnswerRunSummary
    /// Against the float run's answers, over all questions (1 for the float run itself).
    public var agreementEM: Double
    public var agreementF1: Double
    public var truncatedPrompts: Int
    public var generatedTokens: Int
    public var backend: String
}

/// A `rag answers` run's results (the `kind: rag_answers` result).
public struct AnswersReport: Sendable {
    public var options: AnswersRunOptions
    public var questions: Int
    public var answerable: Int
    public var datasetSHA256: String
    /// Share of questions whose gold paragraph was among the retrieved ones; nil with oracle context.
    public var retrievalHit: Double?
    public var runs: [AnswersRunRecord]
    public var npu: NPURunSummary?
}

extension AnswersReport: Encodable {
    enum Keys: String, CodingKey {
        case dataset, datasetSHA256 = "dataset_sha256", generator, generatorQuantized = "generator_quantized", context
        case topK = "top_k", retrievalHit = "retrieval_gold_paragraph_rate", promptTemplate = "prompt_template"
        case maxTokens = "max_tokens", metricDefinitions = "metric_definitions", runs, backend, npuConfig = "npu_config"
    }

    /// The `kind: rag_answers` body (docs/RESULTS.md).
    public func encode(to encoder: Encoder) throws {
        let o = options
        var c = encoder.container(keyedBy: Keys.self)
        var d = c.nestedContainer(keyedBy: AnyKey.self, forKey: .dataset)
        try d.encode(o.dataset, forKey: AnyKey("path"))
        try d.encode(questions, forKey: AnyKey("questions"))
        try d.encode(answerable, forKey: AnyKey("answerable"))
        try c.encode(datasetSHA256, forKey: .datasetSHA256)
        try c.encode(o.generator, forKey: .generator)
        try c.encode(o.generatorQuantized, forKey: .generatorQuantized)  // null: no quantized generator
        try c.encode(o.oracleContext ? "oracle" : "retrieved", forKey: .context)
        try c.encode(o.topK, forKey: .topK)
        try c.encode(retrievalHit, forKey: .retrievalHit)  // null with oracle context
        try c.encode(AnswerPrompt.template, forKey: .promptTemplate)
        try c.encode(o.maxTokens, forKey: .maxTokens)
        try c.encode("SQuAD v1.1 official normalisation, EM and F1 (SPECS.md); answerable questions only; unanswerable: share declined",
                     forKey: .metricDefinitions)
        var runsContainer = c.nestedUnkeyedContainer(forKey: .runs)
        for (i, r) in runs.enumerated() {
            try runsContainer.encode(RunRecord(record: r, isBase: i == 0,
                                               quantization: try RagQuantization.summary(i == 1 ? o.generatorQuantized : nil),
                                               npu: r.backend == "npu" ? npu : nil))
        }
        try c.encode(o.npu == nil ? "cpu" : "npu", forKey: .backend)
        try c.encodeIfPresent(npu?.config, forKey: .npuConfig)
    }

    /// One generator's entry in `runs`.
    struct RunRecord: Encodable {
        let record: AnswersRunRecord
        let isBase: Bool
        let quantization: QuantizationSummary?
        let npu: NPURunSummary?

        func encode(to encoder: Encoder) throws {
            let s = record.summary
            var c = encoder.container(keyedBy: AnyKey.self)
            try c.encode(s.name, forKey: AnyKey("name"))
            try c.encode(s.name, forKey: AnyKey("label"))
            try c.encode(s.seconds, forKey: AnyKey("seconds"))
            try c.encode(["questions": Double(s.answerable.count), "em": s.em, "f1": s.f1, "abstention": s.answerableAbstention],
                         forKey: AnyKey("answerable"))
            try c.encode(["questions": Double(s.unanswerable.count), "abstention": s.unanswerableAbstention], forKey: AnyKey("unanswerable"))
            try c.encode(AnswerEvaluation.segments(s), forKey: AnyKey("segments"))
            try c.encode(Dictionary(uniqueKeysWithValues: s.records.map { ($0.id, $0.answer) }), forKey: AnyKey("answers"))
            try c.encode(isBase, forKey: AnyKey("is_base"))
            try c.encode(["em": s.em, "f1": s.f1, "agreement_em": record.agreementEM, "agreement_f1": record.agreementF1,
                          "unanswerable_declined": s.unanswerableAbstention], forKey: AnyKey("metrics"))
            try c.encode(record.truncatedPrompts, forKey: AnyKey("truncated_prompts"))
            try c.encode(record.generatedTokens, forKey: AnyKey("generated_tokens"))
            try c.encode(record.backend, forKey: AnyKey("backend"))
            try c.encode(quantization, forKey: AnyKey("quantization"))  // null for the float model
            try npu?.encode(to: encoder)
        }
    }
}

/// What the generators answered for a run's questions (all of them, or one shard's), in question order: the
/// per-question figures an AnswersReport is built from. The unsharded run and the merge of a sharded one both go
/// through `report`, so every mean is summed over the same numbers in the same (question) order.
public struct AnswersMeasurement: Codable, Sendable {
    /// One generator's answers.
    public struct Generated: Codable, Sendable {
        public var name: String
        public var backend: String
        public var records: [AnswerRecord]
        public var seconds: Double
        public var truncatedPrompts: Int
        public var generatedTokens: Int
        enum CodingKeys: String, CodingKey {
            case name, backend, records, seconds, truncatedPrompts = "truncated_prompts", generatedTokens = "generated_tokens"
        }
    }
    /// Questions covered.
    public var questions: Int
    /// Of them, not marked impossible.
    public var answerable: Int
    /// Per question: whether its gold paragraph was among the retrieved ones; nil with oracle context.
    public var retrievalHits: [Bool]?
    /// Float first, then the quantized generator (and the NPU run, unsharded only).
    public var generators: [Generated]

    enum CodingKeys: String, CodingKey { case questions, answerable, retrievalHits = "retrieval_hits", generators }

    /// Appends a later shard's questions; timings and counters add up.
    mutating func append(_ o: AnswersMeasurement, path: String) throws {
        guard o.generators.map(\.name) == generators.map(\.name), o.generators.map(\.backend) == generators.map(\.backend) else {
            throw QuantKitError(.input, "\(path): its generators (\(o.generators.map(\.name).joined(separator: ", "))) differ from the first shard's (\(generators.map(\.name).joined(separator: ", ")))")
        }
        guard (o.retrievalHits == nil) == (retrievalHits == nil) else {
            throw QuantKitError(.input, "\(path): retrieved context in one shard, oracle context in another")
        }
        questions += o.questions
        answerable += o.answerable
        if let h = o.retrievalHits { retrievalHits! += h }
        for i in generators.indices {
            let g = o.generators[i]
            generators[i].records += g.records
            generators[i].seconds += g.seconds
            generators[i].truncatedPrompts += g.truncatedPrompts
            generators[i].generatedTokens += g.generatedTokens
        }
    }

    /// The run's report: per generator EM/F1 over its records and agreement with the first (float) generator's
    /// answers, in question order; the retrieval hit rate over the questions.
    public func report(options: AnswersRunOptions, datasetSHA256: String, npu: NPURunSummary?) -> AnswersReport {
        var runs: [AnswersRunRecord] = []
        for g in generators {
            let r = AnswerRunSummary(name: g.name, records: g.records, seconds: g.seconds)
            let ag = runs.isEmpty ? (em: 1.0, f1: 1.0) : AnswerEvaluation.agreement(runs[0].summary, r)
            runs.append(AnswersRunRecord(summary: r, agreementEM: ag.em, agreementF1: ag.f1, truncatedPrompts: g.truncatedPrompts,
                                         generatedTokens: g.generatedTokens, backend: g.backend))
        }
        let hit = retrievalHits.map { h in h.map { $0 ? 1.0 : 0.0 }.reduce(0, +) / Double(max(1, questions)) }
        return AnswersReport(options: options, questions: questions, answerable: answerable, datasetSHA256: datasetSHA256,
                             retrievalHit: hit, runs: runs, npu: npu)
    }
}

/// A `rag answers` shard's partial result: its questions' measurement and the options the merge rebuilds the
/// report with (the provenance in the header pins the data and models by SHA-256).
public struct AnswersShardBody: Codable, Sendable {
    public var dataset: String
    public var datasetSHA256: String
    public var generator: String
    public var generatorQuantized: String?
    public var tokenizer: String?
    public var retriever: String?
    public var topK: Int
    public var oracleContext: Bool
    public var maxQuestions: Int?
    public var maxTokens: Int
    public var measurement: AnswersMeasurement

    enum CodingKeys: String, CodingKey {
        case dataset, datasetSHA256 = "dataset_sha256", generator, generatorQuantized = "generator_quantized", tokenizer, retriever
        case topK = "top_k", oracleContext = "oracle_context", maxQuestions = "max_questions", maxTokens = "max_tokens", measurement
    }

    /// The options of the run the shards belong to (those the report shows).
    public var options: AnswersRunOptions {
        var o = AnswersRunOptions(generator: generator, dataset: dataset)
        o.generatorQuantized = generatorQuantized; o.tokenizer = tokenizer; o.retriever = retriever; o.topK = topK
        o.oracleContext = oracleContext; o.maxQuestions = maxQuestions; o.maxTokens = maxTokens
        return o
    }
}

/// SQuAD questions answered from retrieved (or gold) passages by the float generator, the quantized one and the
/// NPU run; EM/F1 against gold and agreement with the float answers.
public enum AnswersRun {
    public static func run(_ o: AnswersRunOptions, progress: any ProgressObserver = NoProgress()) throws -> AnswersReport {
        guard o.shard == nil else { throw QuantKitError(.input, "--shard: a shard writes a partial result (AnswersRun.runShard)") }
        let m = try measure(o, progress: progress)
        return m.measurement.report(options: o, datasetSHA256: m.datasetSHA256, npu: m.npu)
    }

    /// The shard `o.shard` of a run: its questions answered by every generator, and the provenance a merge checks.
    /// Retrieval is not split: each shard embeds every paragraph and every question and searches for all of them,
    /// then keeps its questions' passages, so the passages are exactly the unsharded run's (the encoder batches
    /// texts by length, and a question's embedding may differ in its last bits in another batch).
    public static func runShard(_ o: AnswersRunOptions, progress: any ProgressObserver = NoProgress()) throws -> PartialResult<AnswersShardBody> {
        guard let shard = o.shard else { throw QuantKitError(.input, "--shard is required for a partial run") }
        let m = try measure(o, progress: progress)
        var quantized = "none"
        if let q = o.generatorQuantized {
            quantized = FileManager.default.fileExists(atPath: q) ? "sha256 " + (try Digest.sha256(modelPath: q)) : "scheme " + q
        }
        let provenance = [
            "dataset_sha256": m.datasetSHA256, "generator_sha256": try Digest.sha256(modelPath: o.generator),
            "generator_quantized": quantized, "tokenizer_sha256": try Digest.sha256(file: try o.tokenizerPath()),
            "retriever": m.retrieverDigest ?? "none (oracle context)", "top_k": String(o.topK), "oracle": String(o.oracleContext),
            "max_questions": o.maxQuestions.map(String.init) ?? "none", "max_tokens": String(o.maxTokens),
        ]
        let body = AnswersShardBody(dataset: o.dataset, datasetSHA256: m.datasetSHA256, generator: o.generator,
                                    generatorQuantized: o.generatorQuantized, tokenizer: o.tokenizer, retriever: o.retriever, topK: o.topK,
                                    oracleContext: o.oracleContext, maxQuestions: o.maxQuestions, maxTokens: o.maxTokens,
                                    measurement: m.measurement)
        return PartialResult(header: PartialHeader(partialOf: "rag_answers", shard: shard, provenance: provenance,
                                                   items: ShardItems(unit: "questions", first: m.questions.lowerBound,
                                                                     count: m.questions.count, total: m.totalQuestions)),
                             body: body)
    }

    /// The whole run's report from its shards (ShardMerge.order checked and ordered them): the questions' records
    /// concatenated in shard order, then the one `AnswersMeasurement.report`.
    static func merge(_ files: [(path: String, header: PartialHeader)]) throws -> AnswersReport {
        var merged: AnswersShardBody?
        for f in files {
            let b = try PartialResult<AnswersShardBody>.read(f.path).body
            let n = f.header.items.count
            let m = b.measurement
            guard m.questions == n, m.generators.allSatisfy({ $0.records.count == n }), m.retrievalHits.map({ $0.count == n }) ?? true,
                  !m.generators.isEmpty else {
                throw QuantKitError(.format, "\(f.path): holds answers for other than the \(n) questions it says it covers")
            }
            guard var all = merged else { merged = b; continue }
            try all.measurement.append(m, path: f.path)
            merged = all
        }
        let b = merged!
        return b.measurement.report(options: b.options, datasetSHA256: b.datasetSHA256, npu: nil)
    }

    /// Loads the questions, finds their passages and answers the run's questions (the shard's, or all) with every
    /// generator.
    static func measure(_ o: AnswersRunOptions, progress: any ProgressObserver) throws
        -> (measurement: AnswersMeasurement, npu: NPURunSummary?, datasetSHA256: String, retrieverDigest: String?,
            questions: Range<Int>, totalQuestions: Int) {
        try o.validate()
        let th = o.threads ?? Parallel.defaultThreads
        _ = try o.npu?.loadConfig()  // a bad NPU config fails before any run
        try o.npu?.refuseFloatTransforms("rag answers")
        let squad = try Datasets.loadSQuAD(o.dataset)
        let qs = o.maxQuestions.map { Array(squad.questions.prefix($0)) } ?? squad.questions
        let range = try o.shard?.range(of: qs.count, unit: "questions") ?? qs.indices
        // A quantized model calibrated on the evaluated text would be flattered: refuse (or warn). The retriever
        // is judged on the questions (passages are its corpus, a fair calibration source); the generator on
        // everything its prompts contain.
        if !o.oracleContext, let r = o.retriever, FileManager.default.fileExists(atPath: r + "/config.json") {
            try ModelLoading.checkCalibrationOverlap(model: r, texts: qs.map(\.question), corpus: o.dataset + " questions",
                                                     allow: o.allowOverlap, progress: progress)
        }
        if let q = o.generatorQuantized, FileManager.default.fileExists(atPath: q + "/config.json") {
            let prompts = (squad.contexts + qs.map(\.question)).joined(separator: "\n")
            try ModelLoading.checkCalibrationOverlap(model: q, text: prompts, corpus: o.dataset, allow: o.allowOverlap, progress: progress)
        }
        // Passages per question (every question's: see runShard), then this run's slice.
        var contexts: [[String]]
        var hits: [Bool]? = nil
        var retrieverDigest: String?
        if o.oracleContext {
            contexts = qs.map { [$0.context] }
        } else {
            let dir = try RagEmbedders.resolveDirectory(o.retriever, embedderOverride: o.embedderOverride)
            let emb = try RagEmbedders.load(directory: dir, progress: progress)
            retrieverDigest = emb.digest
            let paragraphs = squad.contexts
            let pe = try emb.embed(paragraphs, label: "paragraphs", threads: th, progress: progress)
            let qe = try emb.embed(qs.map(\.question), label: "questions", threads: th, progress: progress)
            let ids = paragraphs.indices.map { String(format: "%06d", $0) }
            let top = DenseSearch.topK(queries: qe, corpus: pe, dim: emb.encoder.dimension, docIDs: ids, k: o.topK, threads: th)
            contexts = top.map { $0.map { paragraphs[Int($0.id)!] } }
            hits = Array(zip(qs, contexts).map { q, c in c.contains(q.context) }[range])
        }
        let mine = Array(qs[range])
        contexts = Array(contexts[range])
        let tok = try o.loadTokenizer()
        var generators: [(EngineAnswerGenerator, backend: String)] = []
        let floatModel = try o.loadGenerator(quantized: nil)
        try ModelLoading.checkVocab(tok, model: floatModel, tokenizerPath: try o.tokenizerPath())
        floatModel.threads = th
        generators.append((EngineAnswerGenerator(name: "float", model: floatModel, tokenizer: tok), "cpu"))
        if let q = o.generatorQuantized {
            let qm = try o.loadGenerator(quantized: q)
            qm.threads = th
            generators.append((EngineAnswerGenerator(name: q, model: qm, tokenizer: tok), "cpu"))
        }
        var sim: NPUSimulator?
        if let settings = o.npu {
            let nm = try o.loadGenerator(quantized: o.generatorQuantized)
            nm.threads = th
            let s = try NPUModelSetup.apply(to: nm, tokenizer: tok, settings: settings, window: 256, progress: progress)
            sim = s
            let label = "npu-w\(s.config.weightBits)a8" + (o.generatorQuantized.map { "(\($0))" } ?? "")
            generators.append((EngineAnswerGenerator(name: label, model: nm, tokenizer: tok), "npu"))
        }
        var measured = AnswersMeasurement(questions: mine.count, answerable: mine.filter { !$0.isImpossible }.count,
                                          retrievalHits: hits, generators: [])
        for (g, backend) in generators {
            let r = try AnswerEvaluation.run(g, questions: mine, contexts: contexts, maxTokens: o.maxTokens,
                                             progress: progress.task("answers \(g.name)", total: mine.count, unit: "q"))
            measured.generators.append(.init(name: r.name, backend: backend, records: r.records, seconds: r.seconds,
                                             truncatedPrompts: g.truncatedPrompts, generatedTokens: g.generatedTokens))
            if g.truncatedPrompts > 0 {
                progress.note("note: \(r.name): \(g.truncatedPrompts) prompts longer than the model's positions were shortened in the middle")
            }
        }
        let npu = sim.map { NPURunSummary($0, calibration: o.npu?.calibration ?? NPUBackendSettings.defaultCalibration) }
        return (measured, npu, squad.source.sha256, retrieverDigest, range, qs.count)
    }
}
