import Foundation
import TensorCore

public struct BeirDocument: Sendable, Equatable {
    public let id: String
    public let title: String
    public let text: String
    /// The text embedded for retrieval: title + " " + text (BEIR convention); the text alone without a title.
    public var embeddingText: String { title.isEmpty ? text : title + " " + text }
    /// The document as running text for language-model calibration: title and text on lines of their own, an
    /// empty one left out (empty when both are). Calibration text joins documents with "\n\n".
    public var runningText: String { [title, text].filter { !$0.isEmpty }.joined(separator: "\n") }
}

public struct BeirQuery: Sendable, Equatable {
    public let id: String
    public let text: String
}

/// query id -> (doc id -> relevance)
public typealias Qrels = [String: [String: Int]]

public struct BeirDataset: Sendable {
    public let corpus: [BeirDocument]
    /// The queries of the split: those named by the qrels, in qrels file order.
    public let queries: [BeirQuery]
    /// Judgements of the split's queries (including documents missing from the corpus, as trec_eval keeps them).
    public let qrels: Qrels
    public let split: String
    public let sources: [SourceFile]
    /// qrels lines naming a query absent from queries.jsonl (dropped) / a document absent from the corpus (kept).
    public let unknownQueryJudgements: Int
    public let unknownDocJudgements: Int
    public let warnings: [String]

    /// sha256 over the corpus file's bytes: the corpus part of the embedding-cache key.
    public var corpusSHA256: String { sources[0].sha256 }

    public init(corpus: [BeirDocument], queries: [BeirQuery], qrels: Qrels, split: String, sources: [SourceFile],
                unknownQueryJudgements: Int = 0, unknownDocJudgements: Int = 0, warnings: [String] = []) {
        self.corpus = corpus
        self.queries = queries
        self.qrels = qrels
        self.split = split
        self.sources = sources
        self.unknownQueryJudgements = unknownQueryJudgements
        self.unknownDocJudgements = unknownDocJudgements
        self.warnings = warnings
    }

    /// A sized-down copy: the first `maxQueries` queries (qrels order) and a corpus of at most `maxDocs`
    /// documents that always contains every judged document of those queries, filled up with the remaining
    /// documents in corpus order. Deterministic, so float and quantized runs see the same subset.
    public func subset(maxDocs: Int?, maxQueries: Int?) -> BeirDataset {
        let qs = maxQueries.map { Array(queries.prefix(max(0, $0))) } ?? queries
        let keepQ = Set(qs.map(\.id))
        let qrelsSub = qrels.filter { keepQ.contains($0.key) }
        var docs = corpus
        if let maxDocs, maxDocs < corpus.count {
            let judged = Set(qrelsSub.values.flatMap { $0.keys })
            var chosen = Set<String>()
            var picked: [BeirDocument] = []
            for d in corpus where judged.contains(d.id) { picked.append(d); chosen.insert(d.id) }
            for d in corpus where picked.count < maxDocs && !chosen.contains(d.id) { picked.append(d); chosen.insert(d.id) }
            let order = Dictionary(uniqueKeysWithValues: corpus.enumerated().map { ($1.id, $0) })
            docs = picked.sorted { order[$0.id]! < order[$1.id]! }
        }
        return BeirDataset(corpus: docs, queries: qs, qrels: qrelsSub, split: split, sources: sources,
                           unknownQueryJudgements: unknownQueryJudgements, unknownDocJudgements: unknownDocJudgements,
                           warnings: warnings)
    }
}

extension Datasets {
    /// Loads `dir/corpus.jsonl`, `dir/queries.jsonl`, `dir/qrels/SPLIT.tsv` (each possibly `.zst`).
    public static func loadBEIR(_ dir: String, split: String = "test") throws -> BeirDataset {
        let corpusPath = try resolve(dir, "corpus.jsonl")
        let queriesPath = try resolve(dir, "queries.jsonl")
        let qrelsPath = try resolve((dir as NSString).appendingPathComponent("qrels"), "\(split).tsv")

        let (corpusObjs, corpusSrc) = try readJSONL(corpusPath)
        var corpus: [BeirDocument] = []
        corpus.reserveCapacity(corpusObjs.count)
        var seen = Set<String>()
        for (i, o) in corpusObjs.enumerated() {
            guard let id = jsonID(o["_id"]) else {
                throw QuantKitError(.format, "\(corpusPath): record \(i + 1): missing \"_id\"")
            }
            guard seen.insert(id).inserted else {
                throw QuantKitError(.format, "\(corpusPath): record \(i + 1): duplicate document id \"\(id)\"")
            }
            let title = o["title"] as? String ?? ""
            guard let text = o["text"] as? String else {
                throw QuantKitError(.format, "\(corpusPath): record \(i + 1) (\"\(id)\"): missing \"text\"")
            }
            corpus.append(BeirDocument(id: id, title: title, text: text))
        }
        if corpus.isEmpty { throw QuantKitError(.input, "\(corpusPath): empty corpus (no documents)") }

        let (queryObjs, queriesSrc) = try readJSONL(queriesPath)
        var queryText: [String: String] = [:]
        for (i, o) in queryObjs.enumerated() {
            guard let id = jsonID(o["_id"]), let text = o["text"] as? String else {
                throw QuantKitError(.format, "\(queriesPath): record \(i + 1): needs \"_id\" and \"text\"")
            }
            guard queryText[id] == nil else {
                throw QuantKitError(.format, "\(queriesPath): record \(i + 1): duplicate query id \"\(id)\"")
            }
            queryText[id] = text
        }

        let (lines, qrelsSrc) = try readLines(qrelsPath)
        var qrels: Qrels = [:]
        var order: [String] = []
        var unknownQ = 0, unknownD = 0
        var warnings: [String] = []
        let docIDs = seen
        for (i, line) in lines.enumerated() {
            if line.trimmingCharacters(in: .whitespaces).isEmpty { continue }
            let f = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            if i == 0 && f.first == "query-id" { continue }
            guard f.count == 3 || f.count == 4 else {
                throw QuantKitError(.format, "\(qrelsPath): line \(i + 1): expected query-id<TAB>corpus-id<TAB>score")
            }
            // TREC-style qrels have an iteration column: qid 0 docid rel.
            let (q, d, s) = f.count == 3 ? (f[0], f[1], f[2]) : (f[0], f[2], f[3])
            guard let rel = Int(s.trimmingCharacters(in: .whitespaces)) else {
                throw QuantKitError(.format, "\(qrelsPath): line \(i + 1): score \"\(s)\" is not an integer")
            }
            guard queryText[q] != nil else { unknownQ += 1; continue }
            if !docIDs.contains(d) { unknownD += 1 }
            if qrels[q] == nil { order.append(q) }
            qrels[q, default: [:]][d] = rel
        }
        if unknownQ > 0 { warnings.append("\(qrelsPath): \(unknownQ) judgement(s) name queries absent from queries.jsonl (ignored)") }
        if unknownD > 0 { warnings.append("\(qrelsPath): \(unknownD) judgement(s) name documents absent from the corpus (kept: they count in IDCG and recall)") }
        if order.isEmpty { throw QuantKitError(.input, "\(qrelsPath): no judgements for known queries") }
        let queries = order.map { BeirQuery(id: $0, text: queryText[$0]!) }
        return BeirDataset(corpus: corpus, queries: queries, qrels: qrels, split: split,
                           sources: [corpusSrc, queriesSrc, qrelsSrc], unknownQueryJudgements: unknownQ,
                           unknownDocJudgements: unknownD, warnings: warnings)
    }

    /// BEIR ids are strings, but some corpora write them as JSON numbers.
    static func jsonID(_ v: Any?) -> String? {
        if let s = v as? String { return s }
        if let n = v as? NSNumber { return n.stringValue }
        return nil
    }
}


extension Datasets {
    /// The documents of a corpus JSONL for calibration, read leniently: a missing or non-string "title"/"text" is
    /// empty and ids are neither needed nor checked (calibration only reads the prose). A line that is not a JSON
    /// object is an error naming the file and line.
    static func calibrationDocuments(_ text: String, path: String) throws -> [BeirDocument] {
        var docs: [BeirDocument] = []
        try jsonLines(Data(text.utf8)) { lineNo, value in
            guard let o = value as? [String: Any] else { throw QuantKitError(.format, "\(path): line \(lineNo): not a JSON object") }
            docs.append(BeirDocument(id: jsonID(o["_id"]) ?? "", title: o["title"] as? String ?? "", text: o["text"] as? String ?? ""))
        }
        return docs
    }
}
