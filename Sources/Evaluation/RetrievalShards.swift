import Datasets
import Foundation
import Models
import TensorCore

/// A retrieval shard's work: every embedder's embeddings of the shard's slice of the corpus (and, in shard 0, of
/// the queries). The merge concatenates the slices and runs the one exact search the unsharded run runs.
public struct RetrievalShardBody: Codable, Sendable {
    public struct Embedded: Codable, Sendable {
        public var name: String
        public var digest: String
        public var dim: Int
        public var corpus: PackedArray<Float>
        /// Shard 0 only; empty elsewhere.
        public var queries: PackedArray<Float>
        public var corpusSeconds: Double
        public var corpusCacheHit: Bool
        public var querySeconds: Double
        public var texts: Int, tokens: Int, truncated: Int, linearMACs: Int, attentionMACs: Int
        public var encoderSeconds: Double
        enum CodingKeys: String, CodingKey {
            case name, digest, dim, corpus, queries, corpusSeconds = "corpus_s", corpusCacheHit = "corpus_cache_hit"
            case querySeconds = "query_s", texts, tokens, truncated, linearMACs = "linear_macs", attentionMACs = "attention_macs"
            case encoderSeconds = "encoder_s"
        }
    }
    /// The options that shape the result (the dataset is re-read by the merge and checked by SHA-256).
    public var dataset: String
    public var split: String
    public var k: Int
    public var maxDocs: Int?
    public var maxQueries: Int?
    public var embedder: String?
    public var embedderQuantized: [String]
    public var embedderDirectory: String
    public var threads: Int
    public var runs: [Embedded]
}

extension RetrievalRun {
    /// The shard `o.shard` of a retrieval run: each embedder embeds the shard's documents (shard 0 also the
    /// queries).
    public static func runShard(_ o: RetrievalRunOptions, progress: any ProgressObserver = NoProgress()) throws -> PartialResult<RetrievalShardBody> {
        try o.validate()
        guard let shard = o.shard else { throw QuantKitError(.input, "--shard is required for a partial run") }
        let th = o.threads ?? Parallel.defaultThreads
        for q in o.embedderQuantized where !FileManager.default.fileExists(atPath: q) { _ = try EmbedderQuantSpec.parseRTN(q) }
        let ds = try dataset(o, progress: progress)
        let range = try shard.range(of: ds.corpus.count, unit: "documents")
        let docs = Array(ds.corpus[range])
        let dir = try RagEmbedders.resolveDirectory(o.embedder, embedderOverride: o.embedderOverride)
        let queriesFile = ds.sources.count > 1 ? ds.sources[1].path : o.dataset
        for d in [dir] + o.embedderQuantized where FileManager.default.fileExists(atPath: d + "/config.json") {
            try ModelLoading.checkCalibrationOverlap(model: d, texts: ds.queries.map(\.text), corpus: queriesFile, allow: o.allowOverlap,
                                                     progress: progress)
        }
        var runs: [RetrievalShardBody.Embedded] = []
        var provenance = ["corpus_sha256": ds.sources[0].sha256, "queries_sha256": ds.sources[1].sha256,
                          "qrels_sha256": ds.sources[2].sha256, "split": o.split, "k": String(o.k),
                          "max_docs": o.maxDocs.map(String.init) ?? "none", "max_queries": o.maxQueries.map(String.init) ?? "none"]
        for (i, spec) in ([nil] + o.embedderQuantized.map(Optional.some)).enumerated() {
            let e = try spec.map { try RagEmbedders.load(directory: dir, quantized: $0, progress: progress) }
                ?? RagEmbedders.load(directory: dir, progress: progress)
            provenance["embedder_\(i)"] = e.digest
            let c = try RetrievalEvaluation.embedCorpus(docs, corpusSHA256: ds.corpusSHA256, embedder: e, cache: o.cache, threads: th,
                                                        progress: progress)
            let t0 = Date()
            let q = shard.index == 0 ? try e.embed(ds.queries.map(\.text), label: "queries", threads: th, progress: progress) : []
            let s = e.stats
            runs.append(.init(name: e.name, digest: e.digest, dim: e.encoder.dimension, corpus: PackedArray(c.embeddings),
                              queries: PackedArray(q), corpusSeconds: c.seconds, corpusCacheHit: c.cacheHit,
                              querySeconds: Date().timeIntervalSince(t0), texts: s.texts, tokens: s.tokens, truncated: s.truncated,
                              linearMACs: s.linearMACs, attentionMACs: s.attentionMACs, encoderSeconds: s.seconds))
        }
        let body = RetrievalShardBody(dataset: o.dataset, split: o.split, k: o.k, maxDocs: o.maxDocs, maxQueries: o.maxQueries,
                                      embedder: o.embedder, embedderQuantized: o.embedderQuantized, embedderDirectory: dir,
                                      threads: th, runs: runs)
        return PartialResult(header: PartialHeader(partialOf: "rag_retrieval", shard: shard, provenance: provenance,
                                                   items: ShardItems(unit: "documents", first: range.lowerBound, count: range.count,
                                                                     total: ds.corpus.count)),
                             body: body)
    }

    /// The dataset as the run evaluates it (sized down when asked).
    static func dataset(_ o: RetrievalRunOptions, progress: any ProgressObserver) throws -> BeirDataset {
        let full = try Datasets.loadBEIR(o.dataset, split: o.split)
        for w in full.warnings { progress.note("warning: \(w)") }
        return (o.maxDocs != nil || o.maxQueries != nil) ? full.subset(maxDocs: o.maxDocs, maxQueries: o.maxQueries) : full
    }

    /// The whole run's report from its shards: the corpus embeddings concatenated in shard order, one search.
    static func merge(_ files: [(path: String, header: PartialHeader)]) throws -> RetrievalReport {
        let parts = try files.map { f -> RetrievalShardBody in
            let b = try PartialResult<RetrievalShardBody>.read(f.path).body
            for r in b.runs where r.dim <= 0 || r.corpus.values.count != f.header.items.count * r.dim {
                throw QuantKitError(.format, "\(f.path): \(r.name) holds \(r.corpus.values.count) corpus values, not \(f.header.items.count) documents x \(r.dim)")
            }
            return b
        }
        let first = parts[0]
        var o = RetrievalRunOptions(dataset: first.dataset)
        o.split = first.split; o.k = first.k; o.maxDocs = first.maxDocs; o.maxQueries = first.maxQueries
        o.embedder = first.embedder; o.embedderQuantized = first.embedderQuantized; o.threads = first.threads
        let full = try Datasets.loadBEIR(o.dataset, split: o.split)
        let h = files[0].header.provenance
        for (i, key) in ["corpus_sha256", "queries_sha256", "qrels_sha256"].enumerated() where full.sources[i].sha256 != h[key] {
            throw QuantKitError(.input, "\(full.sources[i].path): changed since the shards ran (\(key) \(full.sources[i].sha256.prefix(12))... vs \((h[key] ?? "").prefix(12))...)")
        }
        let ds = (o.maxDocs != nil || o.maxQueries != nil) ? full.subset(maxDocs: o.maxDocs, maxQueries: o.maxQueries) : full
        guard ds.corpus.count == files[0].header.items.total else {
            throw QuantKitError(.input, "\(o.dataset): \(ds.corpus.count) documents now, \(files[0].header.items.total) when the shards ran")
        }
        var runs: [RetrievalRunResult] = []
        for (i, r0) in first.runs.enumerated() {
            var corpus: [Float] = []
            var stats = BertSentenceEncoder.Stats()
            var corpusSeconds = 0.0, querySeconds = 0.0, hit = true
            for (p, f) in zip(parts, files) {
                guard i < p.runs.count, p.runs[i].digest == r0.digest else {
                    throw QuantKitError(.input, "\(f.path): its embedders differ from \(files[0].path)'s")
                }
                let r = p.runs[i]
                corpus += r.corpus.values
                stats.texts += r.texts; stats.tokens += r.tokens; stats.truncated += r.truncated; stats.seconds += r.encoderSeconds
                stats.linearMACs += r.linearMACs; stats.attentionMACs += r.attentionMACs
                corpusSeconds += r.corpusSeconds; querySeconds += r.querySeconds; hit = hit && r.corpusCacheHit
            }
            guard r0.queries.values.count == ds.queries.count * r0.dim else {
                throw QuantKitError(.format, "\(files[0].path): holds \(r0.queries.values.count / max(r0.dim, 1)) query embeddings for \(ds.queries.count) queries")
            }
            runs.append(RetrievalEvaluation.search(ds, name: r0.name, digest: r0.digest, dim: r0.dim, corpus: corpus,
                                                   queries: r0.queries.values, k: o.k, threads: Parallel.defaultThreads,
                                                   corpusSeconds: corpusSeconds, corpusCacheHit: hit, querySeconds: querySeconds,
                                                   encoderStats: stats))
        }
        let comps = runs.dropFirst().map { RetrievalEvaluation.compare(runs[0], $0, qrels: ds.qrels, k: o.k) }
        return RetrievalReport(options: o, dataset: ds, fullDocuments: full.corpus.count, fullQueries: full.queries.count,
                               embedderDirectory: first.embedderDirectory, threads: first.threads, runs: runs, comparisons: comps, npu: nil)
    }
}
