import Datasets
import Foundation
import Models
import NPU
import Quantization
import TensorCore

/// Everything `quantkit rag retrieval` decides: the dataset and its sized-down subset, the float embedder, the
/// quantized ones, an optional NPU run, the cache.
public struct RetrievalRunOptions: Sendable {
    /// Embedder directory; nil or "minilm": the pinned all-MiniLM-L6-v2.
    public var embedder: String?
    /// Quantized checkpoint directories or RTN schemes (rtn-int8, rtn-int4-g32).
    public var embedderQuantized: [String] = []
    /// BEIR dataset directory.
    public var dataset: String
    public var split = "test"
    /// Cut-off for overlap and lost-document reports.
    public var k = 10
    public var maxDocs: Int?
    public var maxQueries: Int?
    /// Corpus embedding cache; nil: none.
    public var cache: EmbeddingCache?
    public var threads: Int?
    public var npu: NPUBackendSettings?
    public var allowOverlap = false
    /// Where "minilm" is looked for first (the CLI's QUANTKIT_EMBEDDER).
    public var embedderOverride: String?
    /// Embed only this shard's slice of the corpus and write a partial result (`runShard`); nil: the whole run.
    public var shard: Shard?

    public init(dataset: String) { self.dataset = dataset }

    public func validate() throws {
        try UserLimits.check(k, "--k", 1...UserLimits.items)
        if let m = maxDocs, m < 1 { throw QuantKitError(.input, "--max-docs must be at least 1") }
        if let m = maxQueries, m < 1 { throw QuantKitError(.input, "--max-queries must be at least 1") }
        if shard != nil && npu != nil { throw QuantKitError(.input, "--shard with --backend npu: the simulated NPU's runs are not sharded yet; run it unsharded") }
    }
}

/// A retrieval run's results: every embedder's scores and run, the comparisons with the float one.
public struct RetrievalReport: Sendable {
    public var options: RetrievalRunOptions
    public var dataset: BeirDataset
    public var fullDocuments: Int
    public var fullQueries: Int
    public var embedderDirectory: String
    public var threads: Int
    public var runs: [RetrievalRunResult]
    public var comparisons: [RetrievalComparison]
    public var npu: NPURunSummary?
}

extension RetrievalReport: Encodable {
    /// The `kind: rag_retrieval` body (docs/RESULTS.md).
    public func encode(to encoder: Encoder) throws {
        let o = options, ds = dataset
        var c = encoder.container(keyedBy: AnyKey.self)
        var d = c.nestedContainer(keyedBy: AnyKey.self, forKey: AnyKey("dataset"))
        try d.encode(o.dataset, forKey: AnyKey("path"))
        try d.encode((o.dataset as NSString).lastPathComponent, forKey: AnyKey("dataset_name"))
        try d.encode(ds.split, forKey: AnyKey("split"))
        try d.encode(ds.sources[0].sha256, forKey: AnyKey("corpus_sha256"))
        try d.encode(ds.sources[1].sha256, forKey: AnyKey("queries_sha256"))
        try d.encode(ds.sources[2].sha256, forKey: AnyKey("qrels_sha256"))
        try d.encode(ds.corpus.count, forKey: AnyKey("documents"))
        try d.encode(ds.queries.count, forKey: AnyKey("queries"))
        try d.encode(ds.qrels.values.map(\.count).reduce(0, +), forKey: AnyKey("judgements"))
        try d.encode(ds.sources.map(SourceRecord.init), forKey: AnyKey("files"))
        try d.encode(ds.unknownQueryJudgements, forKey: AnyKey("unknown_query_judgements"))
        try d.encode(ds.unknownDocJudgements, forKey: AnyKey("unknown_doc_judgements"))
        try d.encode(ds.warnings, forKey: AnyKey("warnings"))
        try c.encode(o.k, forKey: AnyKey("k"))
        try c.encode(RetrievalEvaluation.metricDefinitions, forKey: AnyKey("metric_definitions"))
        var rs = c.nestedUnkeyedContainer(forKey: AnyKey("runs"))
        let texts = Dictionary(uniqueKeysWithValues: ds.queries.map { ($0.id, $0.text) })
        for (i, r) in runs.enumerated() {
            let spec = i >= 1 && i <= o.embedderQuantized.count ? o.embedderQuantized[i - 1] : nil
            try rs.encode(RunRecord(run: r, isBase: i == 0, dataset: ds, base: runs[0], texts: texts,
                                    backend: npu != nil && i == runs.count - 1 ? "npu" : "cpu",
                                    quantization: try RagQuantization.summary(spec)))
        }
        try c.encode(comparisons.map(ComparisonRecord.init), forKey: AnyKey("comparisons"))
        try c.encode(embedderDirectory, forKey: AnyKey("embedder_dir"))
        var sub = c.nestedContainer(keyedBy: AnyKey.self, forKey: AnyKey("subset"))
        try sub.encode(o.maxDocs, forKey: AnyKey("max_docs"))  // null: the whole corpus
        try sub.encode(o.maxQueries, forKey: AnyKey("max_queries"))
        try sub.encode(fullDocuments, forKey: AnyKey("full_documents"))
        try sub.encode(fullQueries, forKey: AnyKey("full_queries"))
        try c.encode(threads, forKey: AnyKey("threads"))
        try c.encode(o.npu == nil ? "cpu" : "npu", forKey: AnyKey("backend"))
        try npu?.encode(to: encoder)
    }

    struct SourceRecord: Encodable {
        let path: String, sha256: String, bytes: Int
        init(_ s: SourceFile) { path = s.path; sha256 = s.sha256; bytes = s.bytes }
    }

    /// One embedder's entry in `runs`.
    struct RunRecord: Encodable {
        let run: RetrievalRunResult
        let isBase: Bool
        let dataset: BeirDataset
        let base: RetrievalRunResult
        let texts: [String: String]
        let backend: String
        let quantization: QuantizationSummary?

        func encode(to encoder: Encoder) throws {
            let r = run, s = r.encoderStats
            var c = encoder.container(keyedBy: AnyKey.self)
            try c.encode(r.name, forKey: AnyKey("label"))
            try c.encode(isBase, forKey: AnyKey("is_base"))
            try c.encode(r.digest, forKey: AnyKey("embedder_digest"))
            try c.encode(r.scores.mean, forKey: AnyKey("metrics"))
            try c.encode(r.scores.queriesWithoutRelevant, forKey: AnyKey("queries_without_relevant"))
            try c.encode(["corpus_embedding": r.corpusSeconds, "query_embedding": r.querySeconds, "search": r.searchSeconds],
                         forKey: AnyKey("timing_seconds"))
            try c.encode(r.corpusCacheHit, forKey: AnyKey("corpus_cache_hit"))
            var e = c.nestedContainer(keyedBy: AnyKey.self, forKey: AnyKey("encoder"))
            try e.encode(s.texts, forKey: AnyKey("texts"))
            try e.encode(s.tokens, forKey: AnyKey("tokens"))
            try e.encode(s.truncated, forKey: AnyKey("truncated_texts"))
            try e.encode(s.seconds, forKey: AnyKey("seconds"))
            try e.encode(s.seconds > 0 ? Double(s.tokens) / s.seconds : 0, forKey: AnyKey("tokens_per_second"))
            try e.encode(s.seconds > 0 ? 2 * Double(s.linearMACs + s.attentionMACs) / s.seconds / 1e9 : 0, forKey: AnyKey("gflops"))
            try c.encode(RetrievalEvaluation.segments(dataset, base: base, other: isBase ? nil : r), forKey: AnyKey("segments"))
            var pq = c.nestedUnkeyedContainer(forKey: AnyKey("per_query"))
            for q in dataset.queries {
                var o = pq.nestedContainer(keyedBy: AnyKey.self)
                try o.encode(q.id, forKey: AnyKey("query_id"))
                try o.encode(texts[q.id] ?? "", forKey: AnyKey("text"))
                for (k, v) in r.scores.perQuery[q.id]?.values ?? [:] { try o.encode(v, forKey: AnyKey(k)) }
            }
            try c.encode(backend, forKey: AnyKey("backend"))
            try c.encode(quantization, forKey: AnyKey("quantization"))  // null for the float embedder
        }
    }

    /// One comparison with the float embedder.
    struct ComparisonRecord: Encodable {
        let c: RetrievalComparison
        init(_ c: RetrievalComparison) { self.c = c }

        struct Lost: Encodable {
            let queryID: String, lostDocs: [String], baseNDCG10: Double, otherNDCG10: Double
            enum CodingKeys: String, CodingKey {
                case queryID = "query_id", lostDocs = "lost_docs", baseNDCG10 = "base_ndcg@10", otherNDCG10 = "other_ndcg@10"
            }
        }

        func encode(to encoder: Encoder) throws {
            var o = encoder.container(keyedBy: AnyKey.self)
            try o.encode(c.base, forKey: AnyKey("base"))
            try o.encode(c.other, forKey: AnyKey("other"))
            try o.encode(c.deltas, forKey: AnyKey("deltas"))
            try o.encode(c.meanOverlap, forKey: AnyKey("mean_topk_overlap"))
            try o.encode(c.k, forKey: AnyKey("k"))
            try o.encode(c.worse, forKey: AnyKey("queries_worse_ndcg10"))
            try o.encode(c.better, forKey: AnyKey("queries_better_ndcg10"))
            try o.encode(c.same, forKey: AnyKey("queries_same_ndcg10"))
            try o.encode(c.gainedRelevant, forKey: AnyKey("queries_gained_relevant"))
            try o.encode(c.lostRelevant.map { Lost(queryID: $0.query, lostDocs: $0.docs, baseNDCG10: $0.baseNDCG10, otherNDCG10: $0.otherNDCG10) },
                         forKey: AnyKey("queries_lost_relevant"))
        }
    }
}

/// Exact cosine top-k retrieval on a BEIR dataset: the float embedder, each quantized one, and the NPU run.
public enum RetrievalRun {
    public static func run(_ o: RetrievalRunOptions, progress: any ProgressObserver = NoProgress()) throws -> RetrievalReport {
        try o.validate()
        guard o.shard == nil else { throw QuantKitError(.input, "--shard: a shard writes a partial result (RetrievalRun.runShard)") }
        let th = o.threads ?? Parallel.defaultThreads
        // Reject a bad scheme before the float corpus is embedded.
        for q in o.embedderQuantized where !FileManager.default.fileExists(atPath: q) { _ = try EmbedderQuantSpec.parseRTN(q) }
        let npuConfig = try o.npu?.loadConfig()
        try o.npu?.refuseFloatTransforms("rag retrieval")
        let full = try Datasets.loadBEIR(o.dataset, split: o.split)
        for w in full.warnings { progress.note("warning: \(w)") }
        let ds = (o.maxDocs != nil || o.maxQueries != nil) ? full.subset(maxDocs: o.maxDocs, maxQueries: o.maxQueries) : full
        let dir = try RagEmbedders.resolveDirectory(o.embedder, embedderOverride: o.embedderOverride)
        // A quantized embedder calibrated on the evaluation queries would be flattered: refuse (or warn).
        let queriesFile = ds.sources.count > 1 ? ds.sources[1].path : o.dataset
        for d in [dir] + o.embedderQuantized where FileManager.default.fileExists(atPath: d + "/config.json") {
            try ModelLoading.checkCalibrationOverlap(model: d, texts: ds.queries.map(\.text), corpus: queriesFile, allow: o.allowOverlap,
                                                     progress: progress)
        }
        var runs: [RetrievalRunResult] = []
        let base = try RagEmbedders.load(directory: dir, progress: progress)
        runs.append(try RetrievalEvaluation.run(ds, embedder: base, k: o.k, cache: o.cache, threads: th, progress: progress))
        for q in o.embedderQuantized {
            let e = try RagEmbedders.load(directory: dir, quantized: q, progress: progress)
            runs.append(try RetrievalEvaluation.run(ds, embedder: e, k: o.k, cache: o.cache, threads: th, progress: progress))
        }
        var summary: NPURunSummary?
        if let npuConfig, let settings = o.npu {
            let source = settings.calibration ?? "\(o.dataset) corpus"
            let passages = try settings.calibration.map { try NPUModelSetup.passages($0, tokens: settings.calibrationTokens) }
                ?? full.corpus.map(\.embeddingText)
            let (e, sim) = try RagEmbedders.loadNPU(directory: dir, float: base, config: npuConfig, passages: passages, source: source,
                                                    tokens: settings.calibrationTokens, queries: full.queries.map(\.text), threads: th,
                                                    progress: progress)
            runs.append(try RetrievalEvaluation.run(ds, embedder: e, k: o.k, cache: o.cache, threads: th, progress: progress))
            // After the run: the op counts are the run's.
            summary = NPURunSummary(sim, calibration: settings.calibration ?? "\(o.dataset) corpus passages")
        }
        let comps = runs.dropFirst().map { RetrievalEvaluation.compare(runs[0], $0, qrels: ds.qrels, k: o.k) }
        return RetrievalReport(options: o, dataset: ds, fullDocuments: full.corpus.count, fullQueries: full.queries.count,
                               embedderDirectory: dir, threads: th, runs: runs, comparisons: comps, npu: summary)
    }

    /// One TREC run file per embedder, `run_NAME.trec` in `directory`.
    public static func writeRunFiles(_ report: RetrievalReport, to directory: String) throws {
        for r in report.runs {
            let safe = r.name.map { $0.isLetter || $0.isNumber || $0 == "-" ? $0 : "_" }
            try AtomicFile.write(Data(RetrievalMetrics.trecRunText(r.run, tag: "quantkit-\(r.name)").utf8),
                                 to: (directory as NSString).appendingPathComponent("run_\(String(safe)).trec"))
        }
    }
}
