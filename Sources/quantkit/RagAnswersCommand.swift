import ArgumentParser
import Evaluation
import Foundation
import TensorCore

struct RagAnswersCommand: RunCommand {
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

    @Option(help: "Generator: a llama2.c .bin, an HF Llama directory, a quantized directory or a llama GGUF file.") var generator: String = "Models/stories260K/stories260K.bin"
    @Option(help: "Tokenizer of the generator (default: the one beside the model or in its directory, else the shipped Tokenizers/tok512/tok512.bin).") var tokenizer: String?
    @Option(help: "Quantized generator: a quantized directory (quantkit quantize), a GGUF file or an RTN scheme (rtn-int8, rtn-int4-g32...).") var generatorQuantized: String?
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
    @Option(help: "Answer only shard INDEX/COUNT of the questions (0-based, e.g. $SLURM_ARRAY_TASK_ID/4) with every generator and write a partial result to --json; `quantkit merge` joins the shards. Retrieval is not split: each shard embeds every paragraph and question.")
    var shard: String?

    func options() throws -> AnswersRunOptions {
        var o = AnswersRunOptions(generator: ShippedData.path(generator), dataset: ShippedData.path(dataset))
        o.tokenizer = tokenizer
        o.generatorQuantized = generatorQuantized
        o.retriever = retriever
        o.topK = topK
        o.oracleContext = oracleContext
        o.maxQuestions = maxQuestions
        o.maxTokens = maxTokens
        o.threads = threads
        o.allowOverlap = allowOverlap
        o.npu = npu.settings
        o.embedderOverride = Console.embedderOverride
        o.shard = try shard.map { try Shard(parsing: $0) }
        return o
    }


    func run() throws {
        try runReportingErrors {
            let o = try options()
            if let shard = o.shard {
                try writeShard(json: json, shard, detail: { "answered by \($0.measurement.generators.count) generator(s)" }) {
                    try AnswersRun.runShard(o, progress: Console.progress)
                }
                return
            }
            let r = try AnswersRun.run(o, progress: Console.progress)
            print(Self.summary(r))
            if let json { try ResultEnvelope(kind: "rag_answers").write(r, to: json) }
        }
    }

    /// The readable summary, rendered from the report.
    static func summary(_ r: AnswersReport) -> String {
        let o = r.options
        var lines = ["dataset \(o.dataset): \(r.questions) questions (\(r.answerable) answerable); context: "
                     + (o.oracleContext ? "gold paragraph" : "top-\(o.topK) retrieved (gold paragraph retrieved for \(String(format: "%.1f%%", 100 * (r.retrievalHit ?? 0))))")]
        lines.append("model".padding(toLength: 22, withPad: " ", startingAt: 0) + "EM      F1      declined-unanswerable  agreement-EM  agreement-F1")
        for run in r.runs {
            let s = run.summary
            lines.append(s.name.padding(toLength: 22, withPad: " ", startingAt: 0)
                         + String(format: "%-8.4f%-8.4f%-23.4f%-14.4f%.4f", s.em, s.f1, s.unanswerableAbstention, run.agreementEM, run.agreementF1))
        }
        if let n = r.npu { lines.append(n.summary) }
        return lines.joined(separator: "\n")
    }
}
