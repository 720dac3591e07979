import ArgumentParser
import Datasets
import Evaluation
import Foundation
import Models
import NPU
import Quantization
import TensorCore

/// `quantkit rag ...`: what quantization does to a retrieval-augmented pipeline.
struct RagCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rag",
        abstract: "RAG evaluation: retrieval quality (nDCG/recall/MRR) and answers (EM/F1), float vs quantized.",
        subcommands: [RagRetrievalCommand.self, RagAnswersCommand.self]
    )
}

struct RagRetrievalCommand: RunCommand {
    static let configuration = CommandConfiguration(
        commandName: "retrieval",
        abstract: "Exact cosine top-k retrieval on a BEIR dataset; float vs quantized embedders.",
        discussion: """
        Metrics follow trec_eval (SPECS.md): nDCG@1/3/5/10/100, Recall@10/100, MRR@10, ties by score then doc id.
        Corpus embeddings are cached (key: embedder digest + corpus sha256 + document ids).
        Sized-down runs: --max-queries N keeps the first N queries of the split; --max-docs M keeps every judged
        document of those queries plus the first other documents of the corpus up to M (deterministic).
        --backend npu adds the float embedder run through the simulated integer NPU (linears W8A8/W4A8 per the NPU
        config, LayerNorm/GELU/softmax/residual adds on its fp16 unit or LUTs), with activation ranges calibrated on
        corpus passages (the full dataset corpus in order, or --npu-calibration), never on the queries.
        """
    )

    @Option(help: "Embedding model directory (HF BERT + sentence-transformers files); default: the pinned all-MiniLM-L6-v2.")
    var embedder: String?
    @Option(parsing: .singleValue, help: "Quantized embedder: a quantized checkpoint dir or a scheme (e.g. rtn-int8, rtn-int4-g32). Repeatable.")
    var embedderQuantized: [String] = []
    @Option(help: "BEIR dataset directory (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv; .zst accepted).")
    var dataset: String = "Corpora/scifact"
    @Option(help: "qrels split.") var split: String = "test"
    @Option(help: "Cut-off for overlap and lost-document reports (metrics always use their own cut-offs).") var k: Int = 10
    @Option(help: "Keep at most N documents (always including the judged documents of the kept queries).") var maxDocs: Int?
    @Option(help: "Keep the first N queries of the split.") var maxQueries: Int?
    @Option(help: "Write the JSON result here.") var json: String?
    @Option(help: "Write TREC run files (one per embedder) into this directory.") var runDir: String?
    @Option(help: "Embedding cache directory (default ~/.cache/quantkit/embeddings).") var cacheDir: String?
    @Flag(help: "Do not read or write the corpus embedding cache.") var noCache = false
    @Option(help: "Worker threads (default: all cores).") var threads: Int?
    @OptionGroup var npu: NpuBackendOptions
    @Flag(name: .customLong("allow-overlap"), help: "Only warn when the queries overlap a quantized embedder's calibration text.")
    var allowOverlap = false
    @Option(help: "Embed only shard INDEX/COUNT of the corpus (0-based, e.g. $SLURM_ARRAY_TASK_ID/4) and write a partial result to --json; `quantkit merge` searches the joined corpus.")
    var shard: String?

    func options() throws -> RetrievalRunOptions {
        var o = RetrievalRunOptions(dataset: ShippedData.path(dataset))
        o.embedder = embedder
        o.embedderQuantized = embedderQuantized
        o.split = split
        o.k = k
        o.maxDocs = maxDocs
        o.maxQueries = maxQueries
        o.cache = noCache ? nil : (cacheDir.map { EmbeddingCache(directory: $0) } ?? EmbeddingCache(cacheRoot: Console.cacheRoot))
        o.threads = threads
        o.npu = npu.settings
        o.allowOverlap = allowOverlap
        o.embedderOverride = Console.embedderOverride
        o.shard = try shard.map { try Shard(parsing: $0) }
        return o
    }


    func run() throws {
        try runReportingErrors {
            let o = try options()
            if let shard = o.shard {
                if runDir != nil { throw QuantKitError(.input, "--run-dir with --shard: the merged run has the rankings; write run files unsharded") }
                try writeShard(json: json, shard, detail: { "embedded by \($0.runs.count) embedder(s)" }) {
                    try RetrievalRun.runShard(o, progress: Console.progress)
                }
                return
            }
            let r = try RetrievalRun.run(o, progress: Console.progress)
            if let runDir { try RetrievalRun.writeRunFiles(r, to: runDir) }
            print(Self.summary(r))
            if let json { try ResultEnvelope(kind: "rag_retrieval").write(r, to: json) }
        }
    }

    /// The readable summary, rendered from the report.
    static func summary(_ r: RetrievalReport) -> String {
        let ds = r.dataset, runs = r.runs
        var lines = ["dataset \(r.options.dataset) split \(ds.split): \(ds.corpus.count) documents, \(ds.queries.count) queries"]
        let names = RetrievalMetrics.metricNames
        lines.append("embedder".padding(toLength: 22, withPad: " ", startingAt: 0) + names.map { $0.padding(toLength: 11, withPad: " ", startingAt: 0) }.joined())
        for r in runs {
            lines.append(r.name.padding(toLength: 22, withPad: " ", startingAt: 0)
                         + names.map { String(format: "%-11.4f", r.scores.mean[$0] ?? 0) }.joined())
        }
        for c in r.comparisons {
            lines.append("delta \(c.other)".padding(toLength: 22, withPad: " ", startingAt: 0)
                         + names.map { String(format: "%-+11.4f", c.deltas[$0] ?? 0) }.joined())
            lines.append("  top-\(c.k) overlap with float: \(String(format: "%.3f", c.meanOverlap)); queries lost a relevant doc: \(c.lostRelevant.count); nDCG@10 worse/same/better: \(c.worse)/\(c.same)/\(c.better)")
        }
        for r in runs {
            let s = r.encoderStats
            let rate = s.seconds > 0 ? Double(s.tokens) / s.seconds : 0
            lines.append("\(r.name): corpus \(String(format: "%.1f", r.corpusSeconds))s\(r.corpusCacheHit ? " (cache)" : ""), "
                         + "queries \(String(format: "%.2f", r.querySeconds))s, search \(String(format: "%.3f", r.searchSeconds))s; "
                         + "encoder \(s.tokens) tokens at \(String(format: "%.0f", rate)) tok/s, \(s.truncated) texts truncated to max_seq_length")
        }
        if runs.first?.scores.queriesWithoutRelevant ?? 0 > 0 {
            lines.append("note: \(runs[0].scores.queriesWithoutRelevant) queries have no relevant judgement (scored 0, averaged in)")
        }
        if let n = r.npu { lines.append(n.summary) }
        return lines.joined(separator: "\n")
    }
}
