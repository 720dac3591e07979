import Evaluation
import Foundation
import TestSupport
import XCTest

/// Per-segment analysis against Tools/reference_segments.py (numpy; 1e-9 relative) and hand-computed cases.
final class SegmentsTests: XCTestCase {
    struct Ref {
        let root: [String: Any]
        let base: [SegmentToken], quant: [SegmentToken]
        init() throws {
            let d = try Data(contentsOf: URL(fileURLWithPath: Repo.path("Tests/EvaluationTests/Fixtures/compare/segments_reference.json")))
            root = try JSONSerialization.jsonObject(with: d) as! [String: Any]
            let toks = root["tokens"] as! [[String: NSNumber]]
            func make(_ t: [String: NSNumber], _ key: String, kld: Bool) -> SegmentToken {
                SegmentToken(tokenIndex: t["token_index"]!.intValue, windowPosition: t["window_position"]!.intValue,
                             tokenId: t["token_id"]!.int32Value, byteOffset: t["byte_offset"]!.intValue,
                             nll: t[key]!.doubleValue, kld: kld ? t["kld"]!.doubleValue : nil)
            }
            base = toks.map { make($0, "nll_base", kld: false) }
            quant = toks.map { make($0, "nll_quantized", kld: true) }
        }
        func expected(_ key: String) -> [String: [String: Double]] {
            (root[key] as! [String: [String: NSNumber]]).mapValues { $0.mapValues(\.doubleValue) }
        }
    }

    func check(_ got: [SegmentDelta], _ want: [String: [String: Double]], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(Set(got.map(\.segment)), Set(want.keys), file: file, line: line)
        for g in got {
            guard let w = want[g.segment] else { continue }
            XCTAssertEqual(g.count, Int(w["count"]!), g.segment, file: file, line: line)
            XCTAssertEqual(g.base, w["base"]!, accuracy: 1e-9 * w["base"]!, g.segment, file: file, line: line)
            XCTAssertEqual(g.quantized, w["quantized"]!, accuracy: 1e-9 * w["quantized"]!, g.segment, file: file, line: line)
            XCTAssertEqual(g.kldMean!, w["kld_mean"]!, accuracy: 1e-12, g.segment, file: file, line: line)
        }
        // Worst first.
        for i in got.indices.dropFirst() { XCTAssertGreaterThanOrEqual(got[i - 1].relativeLoss, got[i].relativeLoss, file: file, line: line) }
    }

    func testDocumentsMatchNumpy() throws {
        let ref = try Ref()
        let docs = Segments.wikiTextDocuments(ref.root["text"] as! String)
        let want = (ref.root["documents"] as! [[String: Any]]).map {
            DocumentSpan(name: $0["name"] as! String, bytes: ($0["start"] as! Int)..<($0["end"] as! Int))
        }
        XCTAssertEqual(docs, want)
        XCTAssertEqual(docs.map(\.name), ["(preamble)", "Alpha", "Beta Gamma", "Delta"])  // "= = Section = =" is not an article
        check(try Segments.byDocument(base: ref.base, quantized: ref.quant, documents: docs), ref.expected("by_document"))
    }

    func testWindowPositionAndFrequencyMatchNumpy() throws {
        let ref = try Ref()
        check(try Segments.byWindowPosition(base: ref.base, quantized: ref.quant, bucketWidth: ref.root["window_bucket"] as! Int),
              ref.expected("by_position"))
        let freq = try Segments.byTokenFrequency(base: ref.base, quantized: ref.quant)
        check(freq, ref.expected("by_frequency"))
        // The fixture penalises ids > 20 (rare ones), so the rare class must come first.
        XCTAssertEqual(freq.first?.segment, "rare (bottom 50% of ids)")
    }

    func testHandComputedSmallCase() throws {
        // Two documents; base NLL 1 everywhere; quantized adds ln(1.1) in doc B only -> B: ppl e*1.1, +10%.
        let text = " = A = \nx\n = B = \ny\n"
        let docs = Segments.wikiTextDocuments(text)
        XCTAssertEqual(docs, [DocumentSpan(name: "A", bytes: 0..<10), DocumentSpan(name: "B", bytes: 10..<20)])
        let offs = [1, 8, 12, 18]
        let b = offs.enumerated().map { SegmentToken(tokenIndex: $0, windowPosition: $0, tokenId: 5, byteOffset: $1, nll: 1) }
        let q = b.map { t in var u = t; u.nll += t.byteOffset >= 10 ? log(1.1) : 0; return u }
        let s = try Segments.byDocument(base: b, quantized: q, documents: docs)
        XCTAssertEqual(s.map(\.segment), ["B", "A"])
        XCTAssertEqual(s[0].relativeLoss, 0.1, accuracy: 1e-12)
        XCTAssertEqual(s[0].base, M_E, accuracy: 1e-12)
        XCTAssertEqual(s[1].relativeLoss, 0, accuracy: 1e-15)
        XCTAssertEqual(s[0].count, 2)
        // JSON form round-trips through a result file's `segments` array.
        let body: [String: Any] = ["schema_version": 1, "kind": "perplexity", "protocol": "gptq", "ctx": 4, "corpus_sha256": "x",
                                   "tokenizer": "t", "ppl": 3.0, "segments": s.map(\.json)]
        let f = try ResultFile(data: JSONSerialization.data(withJSONObject: body), path: "seg.json")
        XCTAssertEqual(f.runs[0].segments.map(\.segment), ["B", "A"])
        XCTAssertEqual(f.runs[0].segments[0].relativeLoss, 0.1, accuracy: 1e-12)
        XCTAssertEqual(f.runs[0].segments[0].group, "document")
        var bad = q; bad[1].tokenId = 6
        XCTAssertThrowsError(try Segments.byDocument(base: b, quantized: bad, documents: docs)) { XCTAssertTrue("\($0)".contains("record 1"), "\($0)") }
        XCTAssertThrowsError(try Segments.byWindowPosition(base: b, quantized: q, bucketWidth: 0))
    }

    func testCRLFLineEnds() {
        // "\r\n" is one Swift Character; boundaries must still be found, at byte offsets.
        let docs = Segments.wikiTextDocuments(" = A = \r\nx\r\n = B = \r\ny\r\n")
        XCTAssertEqual(docs, [DocumentSpan(name: "A", bytes: 0..<12), DocumentSpan(name: "B", bytes: 12..<24)])
        XCTAssertEqual(Segments.lineRangeDocuments("a\r\nb\r\nc", linesPerDocument: 2),
                       [DocumentSpan(name: "lines 1-2", bytes: 0..<6), DocumentSpan(name: "lines 3-3", bytes: 6..<7)])
    }

    func testLineRangeDocuments() {
        let docs = Segments.lineRangeDocuments("a\nbb\nccc\nd", linesPerDocument: 2)
        XCTAssertEqual(docs, [DocumentSpan(name: "lines 1-2", bytes: 0..<5), DocumentSpan(name: "lines 3-4", bytes: 5..<10)])
    }

    func testFrequencyClassesByHand() {
        // ids by count: 1 (x5), 2 (x3), 3 (x2), 4, 5, 6, 7, 8, 9, 10 (x1): 10 distinct ids -> top 1 frequent,
        // last 5 (ids 6...10) rare, the rest mid.
        let ids: [Int32] = [1, 1, 1, 1, 1, 2, 2, 2, 3, 3, 4, 5, 6, 7, 8, 9, 10]
        let c = Segments.frequencyClasses(ids)
        XCTAssertEqual(c[1], "frequent (top 10% of ids)")
        for i: Int32 in [2, 3, 4, 5] { XCTAssertEqual(c[i], "mid", "\(i)") }
        for i: Int32 in 6...10 { XCTAssertEqual(c[i], "rare (bottom 50% of ids)", "\(i)") }
    }

    func testQueryLengthBuckets() {
        func words(_ n: Int) -> String { Array(repeating: "w", count: n).joined(separator: " ") }
        for (n, bucket) in [(0, "1-8 words"), (1, "1-8 words"), (8, "1-8 words"), (9, "9-16 words"), (16, "9-16 words"),
                            (17, "17+ words"), (40, "17+ words")] {
            XCTAssertEqual(Segments.queryLengthBucket(words(n)), bucket, "\(n) words")
        }
        XCTAssertEqual(Segments.queryLengthBucket(" a\tb\n\nc "), "1-8 words")
        // Two queries of 9 and 10 words (0.5 -> 0.25, 0.5 -> 0.5): "9-16 words" means 0.5 -> 0.375, a 25% loss,
        // before the two short ones (no loss).
        let s = Segments.byQueryLength([("short query", 1.0, 1.0), (words(9), 0.5, 0.25), ("x y", 0.5, 0.5), (words(10), 0.5, 0.5)])
        XCTAssertEqual(s.map(\.segment), ["9-16 words", "1-8 words"])
        XCTAssertEqual(s[0].base, 0.5); XCTAssertEqual(s[0].quantized, 0.375)
        XCTAssertEqual(s[0].relativeLoss, 0.25, accuracy: 1e-15)
        XCTAssertEqual(s[0].count, 2)
    }
}
