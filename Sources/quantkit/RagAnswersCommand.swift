import ArgumentParser
import Evaluation
import Foundation
import Models
import NPU
import Quantization
import TensorCore
import Tokenization

/// A causal model from the engine, generating greedily through its KV cache.
final class EngineAnswerGenerator: AnswerGenerator {
    let name: String
    let model: LlamaModel
    let tokenizer: any Tokenizer
    let stop: Set<Int32>
    private(set) var truncatedPrompts = 0
    private(set) var generatedTokens = 0

    init(name: String, model: LlamaModel, tokenizer: any Tokenizer) {
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

    func generate(prompt: String, maxTokens: Int) throws -> String {
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

struct RagAnswersCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "answers",
        abstract: "Answer SQuAD questions from retrieved (or gold) passages; EM/F1 vs gold and quantized-vs-float agreement.",
        discussion: """
        Prompt template (plain text; no chat template is applied):
        \(AnswerPrompt.template)
        Generation is greedy through the KV cache and stops at a newline, EOS or --max-tokens. Prompts longer than
        the model's positions keep their first 32 tokens and their end (question + "Answer:"), dropping context in
        the middle; the count is reported. EM/F1 follow the official SQuAD v1.1 script (SPECS.md) over answerable
        questions; unanswerable questions are reported separately as the share the model declined ("unanswerable"
        or empty). Agreement EM/F1 score the quantized model's answer against the float model's, over all questions.
        With the shipped tiny model (stories260K) gold EM is near zero; agreement is the signal.
        --backend npu adds a run of the generator (the quantized one when --generator-quantized is given, as loaded
        for the CPU run: its packed layers then stay on the CPU, reported as fallbacks) through the simulated
        integer NPU, calibrated and converted exactly as `perplexity --backend npu` does; its agreement is scored
        against the float CPU answers. The retriever stays on the CPU in float.
        """
    )

    @Option(help: "Generator: a llama2.c .bin or an HF Llama directory.") var generator: String = "Models/stories260K/stories260K.bin"
    @Option(help: "Tokenizer of the generator (default: Tokenizers/tok512/tok512.bin for a .bin, DIR/tokenizer.json for a directory).") var tokenizer: String?
    @Option(help: "Quantized generator: a GPTQ checkpoint directory or an RTN scheme (rtn-int8, rtn-int4-g32...).") var generatorQuantized: String?
    @Option(help: "SQuAD JSON (v1.1 or v2.0; .zst accepted).") var dataset: String = "Corpora/squad/squad-v2-dev-first5.json.zst"
    @Option(help: "Retriever embedder directory (default: the pinned all-MiniLM-L6-v2).") var retriever: String?
    @Option(help: "Passages retrieved per question.") var topK: Int = 1
    @Flag(help: "Use each question's own paragraph instead of retrieval.") var oracleContext = false
    @Option(help: "Evaluate the first N questions.") var maxQuestions: Int?
    @Option(help: "Most tokens generated per answer.") var maxTokens: Int = 16
    @Option(help: "Write the JSON result here.") var json: String?
    @Option(help: "Worker threads.") var threads: Int?
    @Flag(name: .customLong("allow-overlap"),
          help: "Only warn when the questions or passages overlap a quantized model's calibration text.")
    var allowOverlap = false
    @OptionGroup var npu: NpuBackendOptions

    func validate() throws {
        guard topK >= 1 else { throw ValidationError("--top-k must be at least 1") }
        guard maxTokens >= 1 else { throw ValidationError("--max-tokens must be at least 1") }
        if let m = maxQuestions, m < 1 { throw ValidationError("--max-questions must be at least 1") }
    }

    /// The float generator, or the quantized one: a GPTQ directory or an RTN scheme applied at load time.
    func loadGenerator(quantized q: String?) throws -> LlamaModel {
        guard let q else { return try LlamaModel.load(path: generator) }
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: q, isDirectory: &isDir), isDir.boolValue {
            return try LlamaModel.load(path: q, backend: try QuantizedLinearBackend(directory: q))
        }
        return try LlamaModel.load(path: generator, backend: RTNEmbedderBackend(scheme: try EmbedderQuantSpec.parseRTN(q)))
    }

    func loadTokenizer() throws -> any Tokenizer {
        var path = tokenizer
        if path == nil {
            var isDir: ObjCBool = false
            FileManager.default.fileExists(atPath: generator, isDirectory: &isDir)
            path = isDir.boolValue ? try Datasets.resolve(generator, "tokenizer.json") : "Tokenizers/tok512/tok512.bin"
        }
        return try TokenizerLoader.load(data: try readMaybeCompressed(path!), fileName: (path! as NSString).lastPathComponent)
    }

    func run() throws {
        try runReportingErrors {
            let th = threads ?? Parallel.defaultThreads
            if npu.isNPU { _ = try npu.loadConfig() }  // a bad --npu-config fails before any run
            let squad = try Datasets.loadSQuAD(dataset)
            let qs = maxQuestions.map { Array(squad.questions.prefix($0)) } ?? squad.questions
            // A quantized model calibrated on the evaluated text would be flattered: refuse (or warn). The retriever
            // is judged on the questions (passages are its corpus, a fair calibration source); the generator on
            // everything its prompts contain.
            if !oracleContext, let r = retriever, FileManager.default.fileExists(atPath: r + "/config.json") {
                try ModelLoading.checkCalibrationOverlap(model: r, texts: qs.map(\.question), corpus: dataset + " questions",
                                                         allow: allowOverlap, progress: Console.progress)
            }
            if let q = generatorQuantized, FileManager.default.fileExists(atPath: q + "/config.json") {
                let prompts = (squad.contexts + qs.map(\.question)).joined(separator: "\n")
                try ModelLoading.checkCalibrationOverlap(model: q, text: prompts, corpus: dataset, allow: allowOverlap, progress: Console.progress)
            }
            // Passages per question.
            var contexts: [[String]]
            var retrievalHit: Double? = nil
            if oracleContext {
                contexts = qs.map { [$0.context] }
            } else {
                let dir = try RagEmbedders.resolveDirectory(retriever)
                let emb = try RagEmbedders.load(directory: dir)
                let paragraphs = squad.contexts
                let pe = try emb.embed(paragraphs, label: "paragraphs", threads: th)
                let qe = try emb.embed(qs.map(\.question), label: "questions", threads: th)
                let ids = paragraphs.indices.map { String(format: "%06d", $0) }
                let top = DenseSearch.topK(queries: qe, corpus: pe, dim: emb.encoder.dimension, docIDs: ids, k: topK, threads: th)
                contexts = top.map { $0.map { paragraphs[Int($0.id)!] } }
                retrievalHit = zip(qs, contexts).map { q, c in c.contains(q.context) ? 1.0 : 0.0 }.reduce(0, +) / Double(max(1, qs.count))
            }
            let tok = try loadTokenizer()
            let floatModel = try LlamaModel.load(path: generator)
            floatModel.threads = th
            let floatGen = EngineAnswerGenerator(name: "float", model: floatModel, tokenizer: tok)
            let base = try AnswerEvaluation.run(floatGen, questions: qs, contexts: contexts, maxTokens: maxTokens,
                                                progress: Console.progress.task("answers float", total: qs.count, unit: "q"))
            var runs: [(AnswerRunSummary, EngineAnswerGenerator)] = [(base, floatGen)]
            if let q = generatorQuantized {
                let qm = try loadGenerator(quantized: q)
                qm.threads = th
                let g = EngineAnswerGenerator(name: q, model: qm, tokenizer: tok)
                runs.append((try AnswerEvaluation.run(g, questions: qs, contexts: contexts, maxTokens: maxTokens,
                                                      progress: Console.progress.task("answers \(q)", total: qs.count, unit: "q")), g))
            }
            var sim: NPUSimulator?
            if npu.isNPU {
                let nm = try loadGenerator(quantized: generatorQuantized)
                nm.threads = th
                let s = try NPUModelSetup.apply(to: nm, tokenizer: tok, settings: npu.settings!, window: 256, progress: Console.progress)
                sim = s
                let label = "npu-w\(s.config.weightBits)a8" + (generatorQuantized.map { "(\($0))" } ?? "")
                let g = EngineAnswerGenerator(name: label, model: nm, tokenizer: tok)
                runs.append((try AnswerEvaluation.run(g, questions: qs, contexts: contexts, maxTokens: maxTokens,
                                                      progress: Console.progress.task("answers \(label)", total: qs.count, unit: "q")), g))
            }
            print("dataset \(dataset): \(qs.count) questions (\(qs.filter { !$0.isImpossible }.count) answerable); context: "
                  + (oracleContext ? "gold paragraph" : "top-\(topK) retrieved (gold paragraph retrieved for \(String(format: "%.1f%%", 100 * (retrievalHit ?? 0))))"))
            print("model".padding(toLength: 22, withPad: " ", startingAt: 0) + "EM      F1      declined-unanswerable  agreement-EM  agreement-F1")
            var out: [[String: Any]] = []
            for (i, (r, g)) in runs.enumerated() {
                let ag = i == 0 ? (em: 1.0, f1: 1.0) : AnswerEvaluation.agreement(base, r)
                print(r.name.padding(toLength: 22, withPad: " ", startingAt: 0)
                      + String(format: "%-8.4f%-8.4f%-23.4f%-14.4f%.4f", r.em, r.f1, r.unanswerableAbstention, ag.em, ag.f1))
                var o = AnswerEvaluation.json(r, includeAnswers: true)
                o["label"] = r.name
                o["is_base"] = i == 0
                o["metrics"] = ["em": r.em, "f1": r.f1, "agreement_em": ag.em, "agreement_f1": ag.f1,
                                "unanswerable_declined": r.unanswerableAbstention]
                o["truncated_prompts"] = g.truncatedPrompts
                o["generated_tokens"] = g.generatedTokens
                o["backend"] = sim != nil && i == runs.count - 1 ? "npu" : "cpu"
                o["quantization"] = try RagQuantization.summary(i == 1 ? generatorQuantized : nil)
                if let sim, i == runs.count - 1 {
                    o.merge(try JSONBridge.dictionary(NPURunSummary(sim, calibration: npu.npuCalibration ?? NPUBackendSettings.defaultCalibration))) { $1 }
                }
                out.append(o)
                if g.truncatedPrompts > 0 { logInfo("note: \(r.name): \(g.truncatedPrompts) prompts longer than the model's positions were shortened in the middle") }
            }
            if let sim { print(sim.summary) }
            if let json {
                var obj: [String: Any] = [
                    
                    "dataset": ["path": dataset, "questions": qs.count, "answerable": qs.filter { !$0.isImpossible }.count],
                    "dataset_sha256": squad.source.sha256,
                    "generator": generator, "generator_quantized": generatorQuantized as Any,
                    "context": oracleContext ? "oracle" : "retrieved", "top_k": topK,
                    "retrieval_gold_paragraph_rate": retrievalHit as Any,
                    "prompt_template": AnswerPrompt.template, "max_tokens": maxTokens,
                    "metric_definitions": "SQuAD v1.1 official normalisation, EM and F1 (SPECS.md); answerable questions only; unanswerable: share declined",
                    "runs": out, "backend": npu.backend,
                ]
                if let sim { obj["npu_config"] = sim.config.json }
                try ResultEnvelope(kind: "rag_answers").write(obj, to: json)
            }
        }
    }
}
