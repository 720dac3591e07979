import Datasets
import Foundation
import TensorCore

/// One retrieved document and its score.
public struct ScoredDoc: Sendable, Equatable {
    public let id: String
    public let score: Double
    public init(id: String, score: Double) { self.id = id; self.score = score }
}

/// query id -> retrieved documents (any order; metrics rank them with the trec_eval rule).
public typealias TRECRun = [String: [ScoredDoc]]

/// Per-query metric values, keyed by metric name ("ndcg@10", "recall@100", "mrr@10").
public struct QueryMetrics: Sendable, Equatable {
    public var values: [String: Double]
    public subscript(_ name: String) -> Double { values[name] ?? 0 }
}

public struct RetrievalScores: Sendable {
    /// Metric names in report order.
    public let names: [String]
    /// Mean over the qrels queries.
    public let mean: [String: Double]
    public let perQuery: [String: QueryMetrics]
    /// Queries of the qrels whose judgements are all <= 0 (scored 0 and averaged in, as BEIR does).
    public let queriesWithoutRelevant: Int
    /// Queries of the qrels with no retrieved documents (scored 0).
    public let queriesMissingFromRun: Int
}

/// Retrieval metrics with trec_eval semantics (SPECS.md "Retrieval metrics"): linear gain, log2(i+1) discount,
/// IDCG from all judged documents with rel > 0, ties broken by score descending then doc id descending
/// (byte-wise), queries without positives scored 0 and averaged in, mean over the qrels queries.
public enum RetrievalMetrics {
    public static let ndcgCuts = [1, 3, 5, 10, 100]
    public static let recallCuts = [10, 100]
    public static let mrrCut = 10
    public static var metricNames: [String] {
        ndcgCuts.map { "ndcg@\($0)" } + recallCuts.map { "recall@\($0)" } + ["mrr@\(mrrCut)"]
    }

    /// The trec_eval order: score descending, then document id descending compared as UTF-8 bytes.
    @inlinable
    public static func precedes(_ a: ScoredDoc, _ b: ScoredDoc) -> Bool {
        if a.score != b.score { return a.score > b.score }
        return idGreater(a.id, b.id)
    }

    /// Byte-wise (strcmp) a > b.
    public static func idGreater(_ a: String, _ b: String) -> Bool {
        var ia = a.utf8.makeIterator(), ib = b.utf8.makeIterator()
        while true {
            switch (ia.next(), ib.next()) {
            case let (x?, y?): if x != y { return x > y }
            case (_?, nil): return true
            case (nil, _?): return false
            case (nil, nil): return false
            }
        }
    }

    public static func rank(_ docs: [ScoredDoc]) -> [ScoredDoc] {
        // trec_eval keeps one entry per (query, doc); keep the first seen.
        var seen = Set<String>()
        return docs.filter { seen.insert($0.id).inserted }.sorted(by: precedes)
    }

    /// Metrics of one query's ranking against its judgements.
    public static func score(ranking: [ScoredDoc], judgements: [String: Int]) -> QueryMetrics {
        let ranked = rank(ranking)
        let ideal = judgements.values.filter { $0 > 0 }.sorted(by: >)
        let numRel = ideal.count
        var v: [String: Double] = [:]
        for k in ndcgCuts {
            var dcg = 0.0, idcg = 0.0
            for (i, d) in ranked.prefix(k).enumerated() {
                let rel = judgements[d.id] ?? 0
                if rel > 0 { dcg += Double(rel) / log2(Double(i + 2)) }
            }
            for (i, rel) in ideal.prefix(k).enumerated() { idcg += Double(rel) / log2(Double(i + 2)) }
            v["ndcg@\(k)"] = idcg > 0 ? dcg / idcg : 0
        }
        for k in recallCuts {
            let hits = ranked.prefix(k).filter { (judgements[$0.id] ?? 0) > 0 }.count
            v["recall@\(k)"] = numRel > 0 ? Double(hits) / Double(numRel) : 0
        }
        var rr = 0.0
        for (i, d) in ranked.prefix(mrrCut).enumerated() where (judgements[d.id] ?? 0) > 0 { rr = 1 / Double(i + 1); break }
        v["mrr@\(mrrCut)"] = rr
        return QueryMetrics(values: v)
    }

    public static func evaluate(qrels: Qrels, run: TRECRun) -> RetrievalScores {
        var per: [String: QueryMetrics] = [:]
        var sums = [String: Double]()
        var noRel = 0, missing = 0
        // Sum in sorted query order so the mean does not depend on dictionary order.
        for q in qrels.keys.sorted() {
            let j = qrels[q]!
            if !j.values.contains(where: { $0 > 0 }) { noRel += 1 }
            let docs = run[q] ?? []
            if docs.isEmpty { missing += 1 }
            let m = score(ranking: docs, judgements: j)
            per[q] = m
            for (k, x) in m.values { sums[k, default: 0] += x }
        }
        let n = Double(max(1, qrels.count))
        return RetrievalScores(names: metricNames, mean: sums.mapValues { $0 / n }, perQuery: per,
                               queriesWithoutRelevant: noRel, queriesMissingFromRun: missing)
    }

    // MARK: TREC run files

    /// `qid Q0 docid rank score tag`, rank 1-based in trec_eval order.
    public static func trecRunText(_ run: TRECRun, tag: String) -> String {
        var out = ""
        for q in run.keys.sorted() {
            for (i, d) in rank(run[q]!).enumerated() {
                out += "\(q) Q0 \(d.id) \(i + 1) \(String(format: "%.9g", d.score)) \(tag)\n"
            }
        }
        return out
    }

    public static func readTrecRun(_ path: String) throws -> TRECRun {
        let text = try readText(path)
        var run: TRECRun = [:]
        for (i, line) in text.components(separatedBy: "\n").map({ $0.hasSuffix("\r") ? String($0.dropLast()) : $0 }).enumerated() {
            let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" })
            if f.isEmpty { continue }
            guard f.count == 6, let s = Double(f[4]) else {
                throw QuantKitError(.format, "\(path): line \(i + 1): expected `qid Q0 docid rank score tag`")
            }
            run[String(f[0]), default: []].append(ScoredDoc(id: String(f[2]), score: s))
        }
        return run
    }

    public static func readQrels(_ path: String) throws -> Qrels {
        let text = try readText(path)
        var qrels: Qrels = [:]
        for (i, line) in text.components(separatedBy: "\n").map({ $0.hasSuffix("\r") ? String($0.dropLast()) : $0 }).enumerated() {
            let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            if f.isEmpty || (i == 0 && f[0] == "query-id") { continue }
            guard f.count == 3 || f.count == 4, let rel = Int(f[f.count - 1]) else {
                throw QuantKitError(.format, "\(path): line \(i + 1): expected `qid [iter] docid rel`")
            }
            qrels[f[0], default: [:]][f[f.count - 2]] = rel
        }
        return qrels
    }
}
