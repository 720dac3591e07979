import Evaluation
import Foundation
import Models
import TensorCore
import TestSupport
import XCTest

/// Inputs that used to give a figure with exit 0 although nothing meaningful was measured.
final class SilentWrongAnswerTests: XCTestCase {
    static let stories = Repo.path("Models/stories260K/stories260K.bin")

    func message(_ body: () throws -> Any) -> String {
        do { _ = try body(); return "no error" } catch { return "\(error)" }
    }

    func tokens(_ n: Int, vocab: Int = 512) -> [Int32] {
        var rng = SplitMix64(seed: 7)
        return (0..<n).map { _ in Int32(rng.index(vocab)) }
    }

    /// Finite weights that overflow: the run stops at the first position instead of reporting "ppl nan".
    func testNonFiniteLogitsStopThePerplexityRun() throws {
        let (cfg, weights) = try Llama2C.load(path: Self.stories)
        weights.set("model.norm.weight", Tensor(shape: [cfg.hiddenSize], floats: [Float](repeating: 3e38, count: cfg.hiddenSize)))
        let model = try LlamaModel(config: cfg, source: weights, name: "overflow")
        let m = message { try Perplexity.evaluate(model: model, tokens: self.tokens(256), addsBOS: true, bosId: 1,
                                                  options: PerplexityOptions(ctx: 64, maxChunks: 2)) }
        XCTAssertTrue(m.contains("non-finite logits") && m.contains("window 0") && m.contains("token index 33"), m)
    }

    func testContextThatScoresNothingIsRefused() throws {
        let m = message { try Perplexity.windowCount(n: 100, options: PerplexityOptions(protocolKind: .llamacpp, ctx: 2)) }
        XCTAssertTrue(m.contains("--ctx 2") && m.contains("no token would be scored"), m)
        XCTAssertEqual(try Perplexity.windowCount(n: 100, options: PerplexityOptions(protocolKind: .llamacpp, ctx: 3)), 33)
        XCTAssertEqual(try Perplexity.windowCount(n: 100, options: PerplexityOptions(protocolKind: .gptq, ctx: 2)), 50)
    }

    func testNonFiniteKLDBaseIsRefusedNamingFileAndRow() throws {
        let model = try LlamaModel.load(path: Self.stories)
        let w = LogitsWriter(vocab: model.config.vocabSize)
        _ = try Perplexity.evaluate(model: model, tokens: tokens(512), addsBOS: true, bosId: 1,
                                    options: PerplexityOptions(ctx: 64, maxChunks: 2), onRow: { try w.add($0) })
        let path = Repo.tempDirectory("nankld") + "/base.qklogits.zst"
        try w.write(to: path, corpusSHA256: "x", tokenizer: "t", protocolName: "llamacpp", ctx: 64, stride: nil, model: "m")
        XCTAssertNoThrow(try LogitsFile(path: path))
        var d = try Zstd.decompress(try readFile(path))
        let n = Int(d.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: 8, as: UInt32.self)) })
        let rowBytes = 12 + 2 * model.config.vocabSize
        let at = 12 + n + 3 * rowBytes + 12 + 2 * 17  // row 3, token 17: a Float16 NaN
        d[at] = 0x00; d[at + 1] = 0x7E
        let bad = Repo.tempDirectory("nankld") + "/nan.qklogits.zst"
        try AtomicFile.write(try Zstd.compress(d, level: 3), to: bad)
        let m = message { try LogitsFile(path: bad) }
        XCTAssertTrue(m.contains(bad) && m.contains("row 3") && m.contains("non-finite"), m)
    }

    func fixture(_ name: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: compareFixture(name)))) as! [String: Any]
    }

    func write(_ o: [String: Any], _ name: String, dir: String) throws -> ResultFile {
        let path = dir + "/" + name
        try JSONSerialization.data(withJSONObject: o).write(to: URL(fileURLWithPath: path))
        return try ResultFile(path: path)
    }

    /// Two perplexities over different numbers of tokens or chunks get no verdict.
    func testCompareRefusesDifferentScoring() throws {
        let dir = Repo.tempDirectory("cmpscore")
        let base = try write(fixture("ppl_f32.json"), "f32.json", dir: dir)
        var q = try fixture("ppl_rtn_int4.json")
        q["tokens_scored"] = 1260; q["chunks"] = 20
        let m = message { try Comparison.build(files: [base, try self.write(q, "q.json", dir: dir)], resamples: 50) }
        XCTAssertTrue(m.contains("not comparable") && m.contains("2520 tokens") && m.contains("1260 tokens") && m.contains("--max-chunks"), m)
        var chunksOnly = try fixture("ppl_rtn_int4.json")
        chunksOnly["chunks"] = 39
        let m2 = message { try Comparison.build(files: [base, try self.write(chunksOnly, "c.json", dir: dir)], resamples: 50) }
        XCTAssertTrue(m2.contains("40 chunks") && m2.contains("39 chunks"), m2)
        // The same scoring still compares.
        XCTAssertNoThrow(try Comparison.build(files: [base, try write(try fixture("ppl_rtn_int4.json"), "ok.json", dir: dir)], resamples: 50))
    }

    func testNaNInDictionaryResultNamesTheKey() throws {
        let m = message { try ResultEnvelope(kind: "bench", command: []).data(["rows": [["name": "a", "ppl": 1.0], ["name": "b", "ppl": Double.nan]]]) }
        XCTAssertTrue(m.contains("rows[1].ppl") && m.contains("nan"), m)
        var e = ResultEnvelope(kind: "npu", command: [])
        e.nonFiniteAsStrings = true
        let d = try e.data(["db": Double.infinity])
        XCTAssertTrue(String(decoding: d, as: UTF8.self).contains("\"inf\""))
    }

    func testQuantizeOptionsRefuseWhatWouldBeRecordedFalsely() throws {
        let dir = Repo.tempDirectory("qopts")
        var o = QuantizeRunOptions(model: Self.stories, output: dir + "/out")
        o.method = .rtn
        o.actOrder = true
        XCTAssertTrue(message { try o.resolved() }.contains("--act-order"))
        o.actOrder = false
        o.bits = 5
        XCTAssertTrue(message { try o.resolved() }.hasPrefix("--bits 5:"), message { try o.resolved() })
        o.bits = 4
        let file = dir + "/existing.bin"
        try Data("keep".utf8).write(to: URL(fileURLWithPath: file))
        o.output = file
        let m = message { try o.resolved() }
        XCTAssertTrue(m.hasPrefix("--output \(file)") && m.contains("is a file"), m)
        XCTAssertEqual(try String(contentsOfFile: file, encoding: .utf8), "keep")
        o.output = ""
        XCTAssertEqual(message { try o.resolved() }, "--output: empty path")
    }
}
