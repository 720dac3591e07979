import Datasets
import Foundation
import Models
import TensorCore

/// One embedder's retrieval run over a BEIR dataset.
public struct RetrievalRunResult: Sendable {
    public let name: String
    public let digest: String
    public let scores: RetrievalScores
    public let run: TRECRun
    public let corpusSeconds: Double
    public let corpusCacheHit: Bool
    public let querySeconds: Double
    public let searchSeconds: Double
    public let encoderStats: BertSentenceEncoder.Stats
}

/// Float-vs-quantized comparison of two runs on the same queries.
public struct RetrievalComparison: Sendable {
    public let base: String
    public let other: String
    public let deltas: [String: Double]
    /// Mean over queries of |top-k(base) ∩ top-k(other)| / k.
    public let meanOverlap: Double
    public let k: Int
    /// Queries where a relevant document in the base top-k is missing from the other top-k.
    public let lostRelevant: [(query: String, docs: [String], baseNDCG10: Double, otherNDCG10: Double)]
    public let gainedRelevant: Int
    public let worse: Int, better: Int, same: Int
}

/// One query-length bucket of a retrieval run: the base run's mean metric and, for a compared run, its own
/// (`quantized`); the float run itself carries `value` instead.
public struct RetrievalSegment: Encodable, Sendable {
    public var segment: String
    public var count: Int
    public var metric: String
    public var base: Double
    public var quantized: Double?

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: AnyKey.self)
        try c.encode("query length", forKey: AnyKey("group"))
        try c.encode(segment, forKey: AnyKey("segment"))
        try c.encode(count, forKey: AnyKey("count"))
        try c.encode(metric, forKey: AnyKey("metric"))
        try c.encode(true, forKey: AnyKey("higher_is_better"))
        try c.encode(base, forKey: AnyKey("base"))
        if let quantized { try c.encode(quantized, forKey: AnyKey("quantized")) } else { try c.encode(base, forKey: AnyKey("value")) }
    }
}

public enum RetrievalEvaluation {
    /// Depth of every run: the deepest metric cut-off (nDCG@100 / recall@100) or k if larger.
    public static func depth(k: Int) -> Int { max(k, (RetrievalMetrics.ndcgCuts + RetrievalMetrics.recallCuts).max()!) }

    public static func run(_ ds: BeirDataset, embedder: RagEmbedder, k: Int, cache: EmbeddingCache?,
                           threads: Int = Parallel.defaultThreads,
                           progress: any ProgressObserver = NoProgress()) throws -> RetrievalRunResult {
        let corpus = try embedCorpus(ds.corpus, corpusSHA256: ds.corpusSHA256, embedder: embedder, cache: cache, threads: threads,
                                     progress: progress)
        let t0 = Date()
        let qEmb = try embedder.embed(ds.queries.map(\.text), label: "queries", threads: threads, progress: progress)
        return search(ds, name: embedder.name, digest: embedder.digest, dim: embedder.encoder.dimension, corpus: corpus.embeddings,
                      queries: qEmb, k: k, threads: threads, corpusSeconds: corpus.seconds, corpusCacheHit: corpus.cacheHit,
                      querySeconds: Date().timeIntervalSince(t0), encoderStats: embedder.stats)
    }

    /// Embeddings of `docs` (a dataset's corpus, or a shard's slice of it), from the cache when it holds them.
    public static func embedCorpus(_ docs: [BeirDocument], corpusSHA256: String, embedder: RagEmbedder, cache: EmbeddingCache?,
                                   threads: Int, progress: any ProgressObserver) throws -> (embeddings: [Float], seconds: Double, cacheHit: Bool) {
        let dim = embedder.encoder.dimension
        let ids = docs.map(\.id)
        var corpusEmb: [Float]? = nil
        var key = ""
        if let cache {
            key = cache.key(embedderDigest: embedder.digest, corpusSHA256: corpusSHA256, docIDs: ids)
            corpusEmb = cache.load(key: key, count: ids.count, dim: dim)
        }
        let hit = corpusEmb != nil
        let t0 = Date()
        if corpusEmb == nil {
            corpusEmb = try embedder.embed(docs.map(\.embeddingText), label: "corpus", threads: threads, progress: progress)
            if let cache {
                try cache.store(key: key, embeddings: corpusEmb!, meta: [
                    "schema_version": 1, "embedder": embedder.name, "embedder_digest": embedder.digest,
                    "corpus_sha256": corpusSHA256, "documents": ids.count, "dim": dim,
                    "doc_ids_sha256": Digest.sha256(ids.joined(separator: "\n").data(using: .utf8)!),
                ])
            }
        }
        return (corpusEmb!, Date().timeIntervalSince(t0), hit)
    }

    /// The exact top-k search of every query over the whole corpus, and its trec_eval scores.
    public static func search(_ ds: BeirDataset, name: String, digest: String, dim: Int, corpus: [Float], queries: [Float], k: Int,
                              threads: Int, corpusSeconds: Double, corpusCacheHit: Bool, querySeconds: Double,
                              encoderStats: BertSentenceEncoder.Stats) -> RetrievalRunResult {
        let t0 = Date()
        let tops = DenseSearch.topK(queries: queries, corpus: corpus, dim: dim, docIDs: ds.corpus.map(\.id), k: depth(k: k), threads: threads)
        let searchSeconds = Date().timeIntervalSince(t0)
        var run: TRECRun = [:]
        for (i, q) in ds.queries.enumerated() { run[q.id] = tops[i] }
        return RetrievalRunResult(name: name, digest: digest, scores: RetrievalMetrics.evaluate(qrels: ds.qrels, run: run), run: run,
                                  corpusSeconds: corpusSeconds, corpusCacheHit: corpusCacheHit, querySeconds: querySeconds,
                                  searchSeconds: searchSeconds, encoderStats: encoderStats)
    }

    public static func compare(_ a: RetrievalRunResult, _ b: RetrievalRunResult, qrels: Qrels, k: Int) -> RetrievalComparison {
        var deltas: [String: Double] = [:]
        for n in a.scores.names { deltas[n] = (b.scores.mean[n] ?? 0) - (a.scores.mean[n] ?? 0) }
        var overlapSum = 0.0
        var lost: [(String, [String], Double, Double)] = []
        var gained = 0, worse = 0, better = 0, same = 0
        let queries = qrels.keys.sorted()
        for q in queries {
            let ta = RetrievalMetrics.rank(a.run[q] ?? []).prefix(k).map(\.id)
            let tb = RetrievalMetrics.rank(b.run[q] ?? []).prefix(k).map(\.id)
            let sb = Set(tb), sa = Set(ta)
            overlapSum += Double(sa.intersection(sb).count) / Double(max(1, k))
            let rel = qrels[q]!.filter { $0.value > 0 }
            let lostDocs = ta.filter { rel[$0] != nil && !sb.contains($0) }
            let na = a.scores.perQuery[q]?["ndcg@10"] ?? 0, nb = b.scores.perQuery[q]?["ndcg@10"] ?? 0
            if !lostDocs.isEmpty { lost.append((q, lostDocs, na, nb)) }
            gained += tb.filter { rel[$0] != nil && !sa.contains($0) }.isEmpty ? 0 : 1
            if abs(nb - na) < 1e-12 { same += 1 } else if nb < na { worse += 1 } else { better += 1 }
        }
        return RetrievalComparison(base: a.name, other: b.name, deltas: deltas,
                                   meanOverlap: overlapSum / Double(max(1, queries.count)), k: k,
                                   lostRelevant: lost.map { (query: $0.0, docs: $0.1, baseNDCG10: $0.2, otherNDCG10: $0.3) },
                                   gainedRelevant: gained, worse: worse, better: better, same: same)
    }

    /// Per-segment (query length bucket) nDCG@10 of `base` and `other`, in the segments layout the compare
    /// command reads ({group, segment, count, base, quantized}).
    public static func segments(_ ds: BeirDataset, base: RetrievalRunResult, other: RetrievalRunResult?,
                                metric: String = "ndcg@10") -> [RetrievalSegment] {
        var groups: [String: [String]] = [:]
        for q in ds.queries { groups[Segments.queryLengthBucket(q.text), default: []].append(q.id) }
        return Segments.queryLengthBuckets.compactMap { name in
            guard let qs = groups[name] else { return nil }
            func m(_ r: RetrievalRunResult) -> Double { qs.map { r.scores.perQuery[$0]?[metric] ?? 0 }.reduce(0, +) / Double(qs.count) }
            return RetrievalSegment(segment: name, count: qs.count, metric: metric, base: m(base), quantized: other.map(m))
        }
    }

    public static let metricDefinitions = "trec_eval semantics (SPECS.md): linear gain, log2(i+1) discount, IDCG from all judged rel>0, ties by score desc then doc id desc; queries without positives score 0; mean over qrels queries"
}
