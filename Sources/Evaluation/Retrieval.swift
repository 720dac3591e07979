import Foundation
import Kernels
import Models
import TensorCore

/// A text embedder as retrieval sees it: a sentence encoder plus the tokenizer that feeds it, identified by a
/// digest (weights + pooling + quantization) that keys the corpus embedding cache.
public final class RagEmbedder: @unchecked Sendable {
    public let name: String
    public let encoder: BertSentenceEncoder
    /// text -> ids with [CLS]/[SEP] (untruncated; the encoder truncates and counts).
    public let tokenize: @Sendable (String) throws -> [Int32]
    public let digest: String
    public private(set) var stats = BertSentenceEncoder.Stats()

    public init(name: String, encoder: BertSentenceEncoder, digest: String, tokenize: @escaping @Sendable (String) throws -> [Int32]) {
        self.name = name
        self.encoder = encoder
        self.digest = digest
        self.tokenize = tokenize
    }

    /// sha256 over the weights file bytes, config.json and the pooling settings, plus `extra` (a quantization
    /// scheme): equal digests embed identically.
    public static func digest(directory: String, pooling: SentencePoolingConfig, extra: String = "") throws -> String {
        var parts: [String] = []
        let fm = FileManager.default
        for f in ["model.safetensors", "model.safetensors.index.json", "config.json"] {
            let p = (directory as NSString).appendingPathComponent(f)
            if fm.fileExists(atPath: p) { parts.append(f + ":" + Digest.sha256(try readFile(p))) }
        }
        parts.append("pool:\(pooling.mode.rawValue):\(pooling.normalize):\(pooling.maxSeqLength)")
        parts.append(extra)
        return Digest.sha256(parts.joined(separator: "\n").data(using: .utf8)!)
    }

    /// Embeds texts (sentence-transformers strips them first). Returns [n, dim] row-major.
    public func embed(_ texts: [String], label: String, threads: Int = Parallel.defaultThreads,
                      progress: any ProgressObserver = NoProgress()) throws -> [Float] {
        let ids = try texts.enumerated().map { (i, t) -> [Int32] in
            do { return try tokenize(BertSentenceEncoder.stripPythonWhitespace(t)) } catch {
                throw QuantKitError(.input, "\(label) text \(i): tokenizer failed: \(error)")
            }
        }
        return try encoder.encode(ids: ids, threads: threads, progress: progress.task("embed \(label) (\(name))", total: texts.count, unit: "tok"),
                                  stats: &stats)
    }
}

/// Corpus embeddings on disk, keyed by embedder digest + corpus sha256 + the exact document id list, so the
/// float side is computed once. Files: KEY.f32 (raw little-endian floats [n, dim]) + KEY.json (ids, dims).
public struct EmbeddingCache: Sendable {
    public let directory: String

    public init(directory: String) { self.directory = directory }

    /// The conventional place under a user cache root ($XDG_CACHE_HOME, else ~/.cache; the CLI resolves it).
    public init(cacheRoot: String) { self.directory = cacheRoot + "/quantkit/embeddings" }

    public func key(embedderDigest: String, corpusSHA256: String, docIDs: [String]) -> String {
        let idsDigest = Digest.sha256(docIDs.joined(separator: "\n").data(using: .utf8)!)
        return Digest.sha256("v1\n\(embedderDigest)\n\(corpusSHA256)\n\(idsDigest)".data(using: .utf8)!)
    }

    public func load(key: String, count: Int, dim: Int) -> [Float]? {
        let path = directory + "/\(key).f32"
        guard let data = try? readFile(path), data.count == count * dim * 4 else { return nil }
        return data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }

    public func store(key: String, embeddings: [Float], meta: [String: Any]) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try AtomicFile.write(embeddings.withUnsafeBytes { Data($0) }, to: directory + "/\(key).f32")
        let json = try JSONSerialization.data(withJSONObject: meta, options: [.sortedKeys, .prettyPrinted])
        try AtomicFile.write(json, to: directory + "/\(key).json")
    }
}

/// Exact dense retrieval: scores = queries x corpus^T (dot products of normalised vectors = cosine) through
/// the threaded matmul kernel, then top-k per query with the trec_eval order (score desc, doc id desc).
public enum DenseSearch {
    public static func topK(queries: [Float], corpus: [Float], dim: Int, docIDs: [String], k: Int,
                            threads: Int = Parallel.defaultThreads) -> [[ScoredDoc]] {
        let nq = queries.count / dim, nd = docIDs.count
        precondition(corpus.count == nd * dim && queries.count == nq * dim, "DenseSearch: inconsistent sizes")
        let kk = min(k, nd)
        var result = [[ScoredDoc]](repeating: [], count: nq)
        // Query blocks bound the score matrix to blockQ x nd floats.
        let blockQ = max(1, min(nq, (1 << 22) / max(1, nd)))
        var scores = [Float](repeating: 0, count: blockQ * nd)
        // Rank of each doc id in descending byte order, so ties compare as integers.
        let idRank = rankDescending(docIDs)
        corpus.withUnsafeBufferPointer { cb in
            var q0 = 0
            while q0 < nq {
                let m = min(blockQ, nq - q0)
                queries.withUnsafeBufferPointer { qb in
                    Kernels.matmulNT(x: qb.baseAddress! + q0 * dim, m: m, k: dim, weight: .f32(cb.baseAddress!), n: nd,
                                     out: &scores, threads: threads)
                }
                let block = scores.withUnsafeBufferPointer { sb -> [[Int]] in
                    let sp = SendablePointer(sb.baseAddress!)
                    let box = ResultBox(count: m)
                    Parallel.forRanges(m, threads: threads) { range in
                        for qi in range { box.set(qi, selectTop(sp.base + qi * nd, count: nd, k: kk, idRank: idRank)) }
                    }
                    return box.values
                }
                for qi in 0..<m {
                    result[q0 + qi] = block[qi].map { ScoredDoc(id: docIDs[$0], score: Double(scores[qi * nd + $0])) }
                }
                q0 += m
            }
        }
        return result
    }

    /// idRank[i] = position of docIDs[i] in byte-wise descending order (0 = largest id).
    static func rankDescending(_ ids: [String]) -> [Int32] {
        let order = ids.indices.sorted { RetrievalMetrics.idGreater(ids[$0], ids[$1]) }
        var r = [Int32](repeating: 0, count: ids.count)
        for (pos, i) in order.enumerated() { r[i] = Int32(pos) }
        return r
    }

    /// Indices of the k best scores in trec_eval order: a sorted buffer of k, insertion when a score beats
    /// the current k-th (score desc, then smaller idRank = larger id first).
    static func selectTop(_ s: UnsafePointer<Float>, count: Int, k: Int, idRank: [Int32]) -> [Int] {
        var top: [Int] = []
        top.reserveCapacity(k + 1)
        @inline(__always) func better(_ a: Int, _ b: Int) -> Bool {
            s[a] != s[b] ? s[a] > s[b] : idRank[a] < idRank[b]
        }
        for i in 0..<count {
            if top.count == k { if !better(i, top[k - 1]) { continue } }
            var lo = 0, hi = top.count
            while lo < hi { let mid = (lo + hi) / 2; if better(top[mid], i) { lo = mid + 1 } else { hi = mid } }
            top.insert(i, at: lo)
            if top.count > k { top.removeLast() }
        }
        return top
    }

    final class ResultBox: @unchecked Sendable {
        var values: [[Int]]
        let lock = NSLock()
        init(count: Int) { values = Array(repeating: [], count: count) }
        func set(_ i: Int, _ v: [Int]) { lock.lock(); values[i] = v; lock.unlock() }
    }
}
