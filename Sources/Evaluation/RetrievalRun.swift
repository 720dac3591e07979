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

    public init(dataset: String) { self.dataset = dataset }

    public func validate() throws {
        guard k >= 1 else { throw QuantKitError(.input, "--k must be at least 1") }
        if let m = maxDocs, m < 1 { throw QuantKitError(.input, "--max-docs must be at least 1") }
        if let m = maxQueries, m < 1 { throw QuantKitError(.input, "--max-queries must be at least 1") }
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

    /// The `kind: rag_retrieval` body (docs/RESULTS.md).
    public func jsonBody() throws -> [String: Any] {
        let o = options
        var obj = RetrievalEvaluation.json(dataset: dataset, datasetPath: o.dataset, k: o.k, runs: runs, comparisons: comparisons, extra: [
            "embedder_dir": embedderDirectory,
            "subset": ["max_docs": o.maxDocs as Any, "max_queries": o.maxQueries as Any, "full_documents": fullDocuments, "full_queries": fullQueries],
            "threads": threads, "backend": o.npu == nil ? "cpu" : "npu",
        ])
        if var rs = obj["runs"] as? [[String: Any]] {
            for i in rs.indices {
                rs[i]["backend"] = npu != nil && i == rs.count - 1 ? "npu" : "cpu"
                let spec = i >= 1 && i <= o.embedderQuantized.count ? o.embedderQuantized[i - 1] : nil
                rs[i]["quantization"] = try RagQuantization.summary(spec)
            }
            obj["runs"] = rs
        }
        if let npu { obj.merge(try JSONBridge.dictionary(npu)) { $1 } }
        return obj
    }
}

/// Exact cosine top-k retrieval on a BEIR dataset: the float embedder, each quantized one, and the NPU run.
public enum RetrievalRun {
    public static func run(_ o: RetrievalRunOptions, progress: any ProgressObserver = NoProgress()) throws -> RetrievalReport {
        try o.validate()
        let th = o.threads ?? Parallel.defaultThreads
        // Reject a bad scheme before the float corpus is embedded.
        for q in o.embedderQuantized where !FileManager.default.fileExists(atPath: q) { _ = try EmbedderQuantSpec.parseRTN(q) }
        let npuConfig = try o.npu?.loadConfig()
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
