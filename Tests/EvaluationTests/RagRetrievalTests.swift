import Foundation
import TensorCore
import TestSupport
import XCTest
@testable import Evaluation

final class RagRetrievalTests: XCTestCase {
    /// Integer-valued vectors make every dot product exact in Float, so the kernel's scores equal the Double
    /// reference exactly and the tie rule (score desc, id desc byte-wise) decides among many equal scores.
    func testTopKMatchesBruteForceWithTies() {
        var rng = SplitMix64(seed: 11)
        let dim = 24, nd = 700, nq = 37, k = 100
        let corpus = (0..<(nd * dim)).map { _ in Float(Int.random(in: -2...2, using: &rng)) }
        let queries = (0..<(nq * dim)).map { _ in Float(Int.random(in: -1...1, using: &rng)) }
        let ids = (0..<nd).map { i in i % 3 == 0 ? "d\(i)" : (i % 3 == 1 ? "\(i * 7919 % 1000)x" : "Z\(i)") }
        let top = DenseSearch.topK(queries: queries, corpus: corpus, dim: dim, docIDs: ids, k: k, threads: 2)
        XCTAssertEqual(top.count, nq)
        for q in 0..<nq {
            var all: [ScoredDoc] = []
            for d in 0..<nd {
                var s = 0.0
                for c in 0..<dim { s += Double(queries[q * dim + c]) * Double(corpus[d * dim + c]) }
                all.append(ScoredDoc(id: ids[d], score: s))
            }
            let ref = Array(RetrievalMetrics.rank(all).prefix(k))
            XCTAssertEqual(top[q].map(\.id), ref.map(\.id), "query \(q)")
            XCTAssertEqual(top[q].map(\.score), ref.map(\.score), "query \(q)")
        }
    }

    func testEmbeddingCacheRoundTripAndKey() throws {
        let cache = EmbeddingCache(directory: Repo.tempDirectory("cache"))
        let k1 = cache.key(embedderDigest: "a", corpusSHA256: "c", docIDs: ["1", "2"])
        XCTAssertNotEqual(k1, cache.key(embedderDigest: "b", corpusSHA256: "c", docIDs: ["1", "2"]))
        XCTAssertNotEqual(k1, cache.key(embedderDigest: "a", corpusSHA256: "d", docIDs: ["1", "2"]))
        XCTAssertNotEqual(k1, cache.key(embedderDigest: "a", corpusSHA256: "c", docIDs: ["1"]))
        XCTAssertNil(cache.load(key: k1, count: 2, dim: 3))
        try cache.store(key: k1, embeddings: [1, 2, 3, 4, 5, 6], meta: ["x": 1])
        XCTAssertEqual(cache.load(key: k1, count: 2, dim: 3), [1, 2, 3, 4, 5, 6])
        XCTAssertNil(cache.load(key: k1, count: 3, dim: 3), "a size mismatch is a miss")
    }

    func testQuantSpecParsing() throws {
        let s = try EmbedderQuantSpec.parseRTN("rtn-int4-asym-g32")
        XCTAssertEqual(s.bits, 4); XCTAssertFalse(s.symmetric); XCTAssertEqual(s.groupSize, 32)
        XCTAssertEqual(try EmbedderQuantSpec.parseRTN("rtn-int8").groupSize, -1)
        XCTAssertThrowsError(try EmbedderQuantSpec.parseRTN("gptq-int4"))
        XCTAssertThrowsError(try EmbedderQuantSpec.parseRTN("rtn-int5"))
        XCTAssertThrowsError(try EmbedderQuantSpec.parseRTN("rtn-int4-q7"))
    }
}
