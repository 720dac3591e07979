import Evaluation
import Foundation
import TestSupport
import XCTest

/// The perplexity command's segment assignment (documents, token location by line, window-position buckets,
/// frequency classes, per-segment perplexities) against Tools/reference_segment_assignment.py (independent
/// Python/numpy), plus hand-computed cases.
final class SegmentAssignmentTests: XCTestCase {
    /// The reference's toy tokenizer: "\n" is a token, runs of non-whitespace are tokens, other whitespace
    /// (spaces, "\r") separates. Unknown words get ids past the vocabulary (they never occur in the fixture).
    func wordTokens(_ s: String, vocab: [String: Int]) -> [Int] {
        var out: [Int] = []
        var word = ""
        func flush() { if !word.isEmpty { out.append(vocab[word] ?? 100_000); word = "" } }
        for u in s.unicodeScalars {
            if u == "\n" { flush(); out.append(vocab["\n"]!) }
            else if u.properties.isWhitespace { flush() }
            else { word.unicodeScalars.append(u) }
        }
        flush()
        return out
    }

    func testAssignmentMatchesPythonReference() throws {
        let d = try Data(contentsOf: URL(fileURLWithPath: Repo.path("Tests/EvaluationTests/Fixtures/compare/segment_assignment_reference.json")))
        let ref = try JSONSerialization.jsonObject(with: d) as! [String: Any]
        let text = ref["text"] as! String
        let vocab = (ref["vocab"] as! [String: NSNumber]).mapValues(\.intValue)
        let tokens = (ref["tokens"] as! [NSNumber]).map(\.int32Value)
        // The toy tokenizer reproduces the reference's whole-text tokens (BOS = 1 first).
        XCTAssertEqual([1] + wordTokens(text, vocab: vocab).map(Int32.init), tokens)

        // Documents: auto picks the WikiText rule (three articles + preamble).
        let (docs, rule) = Segments.documents(text, rule: .auto)
        XCTAssertEqual(rule, .wikitext)
        let wantDocs = (ref["documents"] as! [[String: Any]]).map {
            DocumentSpan(name: $0["name"] as! String, bytes: ($0["start"] as! Int)..<($0["end"] as! Int))
        }
        XCTAssertEqual(docs, wantDocs)

        // Every token is placed at the start of its line; each line tokenizes on its own as in the whole text.
        var calls = 0
        let located = Segments.locateLines(text: text, tokens: tokens, leading: 1) { pieces in
            calls += 1
            return pieces.map { self.wordTokens($0, vocab: vocab) }
        }
        let wantOffsets = (ref["line_offsets"] as! [NSNumber]).map(\.intValue)
        XCTAssertEqual(Array(located.offsets.dropFirst()), Array(wantOffsets.dropFirst()))
        XCTAssertEqual(located.approximateLines, 0)
        XCTAssertEqual(located.exactLines, text.utf8.filter { $0 == 0x0A }.count)  // every line ends with "\n"
        XCTAssertEqual(calls, 1, "one batch of lines")

        // Per-token records as the perplexity command builds them.
        let scored = (ref["scored"] as! [[String: Int]])
        let nb = (ref["nll_base"] as! [NSNumber]).map(\.doubleValue)
        let nq = (ref["nll_quantized"] as! [NSNumber]).map(\.doubleValue)
        let kl = (ref["kld"] as! [NSNumber]).map(\.doubleValue)
        let base = scored.enumerated().map { i, s in
            SegmentToken(tokenIndex: s["token_index"]!, windowPosition: s["window_position"]!, tokenId: tokens[s["token_index"]!],
                         byteOffset: located.offsets[s["token_index"]!], nll: nb[i])
        }
        let quant = base.enumerated().map { i, t in var u = t; u.nll = nq[i]; u.kld = kl[i]; return u }
        let positions = base.map(\.windowPosition)
        let width = Segments.positionBucketWidth(minPosition: positions.min()!, maxPosition: positions.max()!)
        XCTAssertEqual(width, ref["position_bucket_width"] as? Int)
        let segs = try Segments.perplexityBreakdown(base: base, quantized: quant, documents: docs, positionBucketWidth: width)
        XCTAssertEqual(segs.map(\.group).reduce(into: [String]()) { if $0.last != $1 { $0.append($1) } },
                       ["document", "window position", "token frequency"], "groups in order, each contiguous")
        for (group, key) in [("document", "by_document"), ("window position", "by_position"), ("token frequency", "by_frequency")] {
            let want = (ref[key] as! [String: [String: NSNumber]]).mapValues { $0.mapValues(\.doubleValue) }
            let got = segs.filter { $0.group == group }
            XCTAssertEqual(Set(got.map(\.segment)), Set(want.keys), group)
            XCTAssertEqual(got.reduce(0) { $0 + $1.count }, scored.count, "\(group): every scored token in one segment")
            for g in got {
                guard let w = want[g.segment] else { continue }
                XCTAssertEqual(g.count, Int(w["count"]!), "\(group) \(g.segment)")
                XCTAssertEqual(g.base, w["base"]!, accuracy: 1e-9 * w["base"]!, "\(group) \(g.segment)")
                XCTAssertEqual(g.quantized, w["quantized"]!, accuracy: 1e-9 * w["quantized"]!, "\(group) \(g.segment)")
                XCTAssertEqual(g.kldMean!, w["kld_mean"]!, accuracy: 1e-12, "\(group) \(g.segment)")
            }
            for i in got.indices.dropFirst() { XCTAssertGreaterThanOrEqual(got[i - 1].relativeLoss, got[i].relativeLoss, "\(group) worst first") }
        }
    }

    func testLocateLinesResynchronisesWhenATokenSpansLines() {
        // A tokenizer that merges "\n\n" into one token (id 9): whole text "a\n\nb\n" -> a, NN, b, N; the lines
        // "a\n", "\n", "b\n" tokenize on their own as [a, N], [N], [b, N]. Hand-computed placement: a and NN on
        // line 1 (byte 0), nothing of its own on line 2, b and N on line 3 (byte 3).
        let a = 5, b = 6, nl = 7, nn = 9
        let whole: [Int32] = [1, Int32(a), Int32(nn), Int32(b), Int32(nl)]
        let r = Segments.locateLines(text: "a\n\nb\n", tokens: whole, leading: 1) { pieces in
            pieces.map { p in p.unicodeScalars.map { $0 == "a" ? a : ($0 == "b" ? b : nl) } }
        }
        XCTAssertEqual(r.offsets, [0, 0, 0, 3, 3])
        XCTAssertEqual(r.exactLines, 1)
        XCTAssertEqual(r.approximateLines, 2)
        // `limit` stops the work once the needed tokens are placed.
        let partial = Segments.locateLines(text: "x\ny\nz\n", tokens: [1, 5, 7, 6, 7, 8, 7], leading: 1, limit: 4) { pieces in
            pieces.map { p in p.unicodeScalars.map { $0 == "x" ? 5 : ($0 == "y" ? 6 : ($0 == "z" ? 8 : 7)) } }
        }
        XCTAssertEqual(partial.offsets, [0, 0, 0, 2, 2, 0, 0], "line 3 (byte 4) is past the limit and not placed")
        XCTAssertEqual(partial.exactLines, 2)
    }

    func testDocumentRulesAndBucketWidths() throws {
        // Paragraphs: blank (whitespace-only) lines separate; they stay with the paragraph before them.
        let text = "one\ntwo\n \nthree\n\n\nfour\n"
        let p = Segments.paragraphDocuments(text)
        XCTAssertEqual(p, [DocumentSpan(name: "paragraph 1 (lines 1-2)", bytes: 0..<10),
                           DocumentSpan(name: "paragraph 2 (lines 4-4)", bytes: 10..<18),
                           DocumentSpan(name: "paragraph 3 (lines 7-7)", bytes: 18..<23)])
        XCTAssertEqual(Segments.documents(text, rule: .auto).rule, .paragraphs)
        XCTAssertEqual(Segments.documents("a\nb\nc", rule: .auto).rule, .lines(100))
        XCTAssertEqual(Segments.documents("a\nb\nc", rule: .lines(2)).spans.map(\.name), ["lines 1-2", "lines 3-3"])
        XCTAssertEqual(try DocumentRule(parsing: "lines:50"), .lines(50))
        for bad in ["lines:0", "lines:x", "chapters"] {
            XCTAssertThrowsError(try DocumentRule(parsing: bad)) { XCTAssertTrue("\($0)".contains("--documents"), "\($0)") }
        }
        // llamacpp at ctx 256 scores positions 128...254: width 16 (8 buckets); gptq at ctx 128: 0...126 -> 16;
        // llamacpp at ctx 128: 64...126 -> 8; a single position -> 1.
        XCTAssertEqual(Segments.positionBucketWidth(minPosition: 128, maxPosition: 254), 16)
        XCTAssertEqual(Segments.positionBucketWidth(minPosition: 0, maxPosition: 126), 16)
        XCTAssertEqual(Segments.positionBucketWidth(minPosition: 64, maxPosition: 126), 8)
        XCTAssertEqual(Segments.positionBucketWidth(minPosition: 5, maxPosition: 5), 1)
        // Unaligned span: 3...12 needs width 2 (buckets 2-3 ... 12-13: 6) not 1 (10 buckets).
        XCTAssertEqual(Segments.positionBucketWidth(minPosition: 3, maxPosition: 12), 2)
    }
}
