import Evaluation
import Foundation
import Models
import TensorCore
import TestSupport
import XCTest

/// KLD statistics vs Tools/reference_llama.py `kld`: stories260K (f32 weights) as base, its f16-weight copy as
/// "quantized", llamacpp protocol ctx 128, 4 chunks of the TinyStories sample.
final class KLDTests: XCTestCase {
    struct Stats: Decodable {
        let tokens: Int; let kld_mean: Double; let kld_stderr: Double; let kld_max: Double
        let kld_percentiles: [String: Double]; let rms_dp: Double; let same_top_percent: Double
        let ppl_base: Double; let ppl_quant: Double; let ln_ppl_diff: Double; let ppl_ratio: Double; let q_error: Double
    }
    struct Fixture: Decodable { let ctx: Int; let chunks: Int; let tokens: [Int32]; let total_tokens: Int; let exact: Stats; let f16_stored_base: Stats }

    static let opts = PerplexityOptions(ctx: 128, maxChunks: 4)

    func loadFixture() throws -> (Fixture, [Int32]) {
        let fx = try JSONDecoder().decode(Fixture.self, from: readMaybeCompressed(Repo.path("Tests/EvaluationTests/Fixtures/kld_stories260K_f16.json.zst")))
        return (fx, fx.tokens + [Int32](repeating: 0, count: fx.total_tokens - fx.tokens.count))
    }

    func saveBase(_ model: LlamaModel, _ tokens: [Int32], sha: String = "abc", tokenizer: String = "tok512") throws -> String {
        let w = LogitsWriter(vocab: model.config.vocabSize)
        _ = try Perplexity.evaluate(model: model, tokens: tokens, addsBOS: true, bosId: 1, options: Self.opts, onRow: { try w.add($0) })
        let path = Repo.tempDirectory("kld") + "/base.qklogits.zst"
        try w.write(to: path, corpusSHA256: sha, tokenizer: tokenizer, protocolName: "llamacpp", ctx: 128, stride: nil, model: "base")
        return path
    }

    func compare(_ model: LlamaModel, _ tokens: [Int32], base: String) throws -> KLDResult {
        let acc = KLDAccumulator(base: try LogitsFile(path: base))
        _ = try Perplexity.evaluate(model: model, tokens: tokens, addsBOS: true, bosId: 1, options: Self.opts, onRow: { try acc.add($0) })
        return try acc.result()
    }

    /// The base file is streamed through a spool, whatever the buffer: it equals the one-shot compression of the
    /// file's content (what the in-memory writer wrote), and small buffers (many spool writes) change no byte.
    func testStreamedBaseEqualsInMemoryEncoding() throws {
        let (_, tokens) = try loadFixture()
        let model = try LlamaModel.load(path: Repo.path("Models/stories260K/stories260K.bin"))
        var files: [Data] = []
        let (spool, out) = (Repo.tempDirectory("kld-spool"), Repo.tempDirectory("kld-stream"))
        for buffer in [1 << 20, 4096, 1] {
            let w = LogitsWriter(vocab: model.config.vocabSize, spoolDirectory: spool, bufferBytes: buffer)
            _ = try Perplexity.evaluate(model: model, tokens: tokens, addsBOS: true, bosId: 1, options: Self.opts, onRow: { try w.add($0) })
            let path = out + "/base-\(buffer).zst"
            try w.write(to: path, corpusSHA256: "abc", tokenizer: "tok512", protocolName: "llamacpp", ctx: 128, stride: nil, model: "base")
            files.append(try Data(contentsOf: URL(fileURLWithPath: path)))
        }
        let content = try Zstd.decompress(files[0])
        XCTAssertEqual(files[0], try Zstd.compress(content, level: 3))
        XCTAssertEqual(files[1], files[0])
        XCTAssertEqual(files[2], files[0])
        // The reader checks the rows' bytes against the header's count.
        XCTAssertEqual(try LogitsFile(path: out + "/base-1.zst").header.tokens_scored, 4 * 63)
        // No spool file is left behind (it is unlinked when made).
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: spool), [])
    }

    func testModelAgainstItselfIsZero() throws {
        let (_, tokens) = try loadFixture()
        let model = try LlamaModel.load(path: Repo.path("Models/stories260K/stories260K.bin"))
        let base = try saveBase(model, tokens)
        let r = try compare(model, tokens, base: base)
        XCTAssertEqual(r.tokens, 4 * 63)
        XCTAssertLessThan(r.kld_mean, 2e-7)  // only the f16 storage of the base log-probs
        XCTAssertEqual(r.same_top_percent, 100)
        XCTAssertEqual(r.rms_dp, 0, accuracy: 1e-7)
        XCTAssertEqual(r.ppl_ratio, 1, accuracy: 1e-9)
        XCTAssertEqual(r.q_error, 0, accuracy: 1e-9)
    }

    func testF16CopyMatchesNumpyStatistics() throws {
        let (fx, tokens) = try loadFixture()
        let path = Repo.path("Models/stories260K/stories260K.bin")
        let model = try LlamaModel.load(path: path)
        let (cfg, weights) = try Llama2C.load(path: path)
        let dir = Repo.tempDirectory("kld") + "/f16"
        try HFExport.write(config: cfg, source: weights, dtype: .f16, to: dir)
        let half = try LlamaModel.load(path: dir)
        let r = try compare(half, tokens, base: try saveBase(model, tokens))
        let s = fx.f16_stored_base, e = fx.exact
        XCTAssertEqual(r.tokens, s.tokens)
        XCTAssertGreaterThan(r.kld_mean, 0)
        // Same information as numpy's f16-stored computation: tight.
        XCTAssertEqual(r.kld_mean, s.kld_mean, accuracy: s.kld_mean * 0.03)
        XCTAssertEqual(r.kld_max, s.kld_max, accuracy: s.kld_max * 0.05)
        for (k, v) in s.kld_percentiles where v > 1e-8 { XCTAssertEqual(r.kld_percentiles[k]!, v, accuracy: v * 0.1 + 1e-8, k) }
        // Against the exact float64 statistics: within the documented f16 storage error (~1e-7 absolute).
        XCTAssertEqual(r.kld_mean, e.kld_mean, accuracy: 2e-7)
        XCTAssertEqual(r.rms_dp, e.rms_dp, accuracy: e.rms_dp * 0.05)
        XCTAssertEqual(r.same_top_percent, e.same_top_percent, accuracy: 100.0 / Double(e.tokens) + 1e-9)
        XCTAssertEqual(r.ppl_base, e.ppl_base, accuracy: e.ppl_base * 1e-5)
        XCTAssertEqual(r.ppl_quant, e.ppl_quant, accuracy: e.ppl_quant * 1e-5)
        XCTAssertEqual(r.ln_ppl_diff, e.ln_ppl_diff, accuracy: 2e-6)
        XCTAssertEqual(r.q_error, e.q_error, accuracy: 2e-6)
    }

    func testMismatchedBaseIsRefused() throws {
        let (_, tokens) = try loadFixture()
        let model = try LlamaModel.load(path: Repo.path("Models/stories260K/stories260K.bin"))
        let file = try LogitsFile(path: try saveBase(model, tokens, sha: "aaa", tokenizer: "tok512"))
        XCTAssertNoThrow(try file.checkCompatible(corpusSHA256: "aaa", tokenizer: "tok512", protocolName: "llamacpp", ctx: 128, stride: nil, vocab: 512))
        XCTAssertThrowsError(try file.checkCompatible(corpusSHA256: "bbb", tokenizer: "tok512", protocolName: "llamacpp", ctx: 128, stride: nil, vocab: 512))
        XCTAssertThrowsError(try file.checkCompatible(corpusSHA256: "aaa", tokenizer: "gpt2", protocolName: "llamacpp", ctx: 128, stride: nil, vocab: 512))
        XCTAssertThrowsError(try file.checkCompatible(corpusSHA256: "aaa", tokenizer: "tok512", protocolName: "gptq", ctx: 128, stride: nil, vocab: 512))
        XCTAssertThrowsError(try file.checkCompatible(corpusSHA256: "aaa", tokenizer: "tok512", protocolName: "llamacpp", ctx: 256, stride: nil, vocab: 512))
    }

    /// The top-k encoding (large vocabularies) gives a lower bound close to the full KLD when the top-k hold the mass.
    func testTopKEncodingIsCloseLowerBound() throws {
        let (fx, tokens) = try loadFixture()
        let path = Repo.path("Models/stories260K/stories260K.bin")
        let model = try LlamaModel.load(path: path)
        let (cfg, weights) = try Llama2C.load(path: path)
        let dir = Repo.tempDirectory("kld") + "/bf16"
        try HFExport.write(config: cfg, source: weights, dtype: .bf16, to: dir)
        let q = try LlamaModel.load(path: dir)
        let w = LogitsWriter(vocab: 512, topK: 64, maxFullVocab: 0)
        XCTAssertEqual(w.encoding, .topK)
        _ = try Perplexity.evaluate(model: model, tokens: tokens, addsBOS: true, bosId: 1, options: Self.opts, onRow: { try w.add($0) })
        let p = Repo.tempDirectory("kld") + "/topk.zst"
        try w.write(to: p, corpusSHA256: "x", tokenizer: "t", protocolName: "llamacpp", ctx: 128, stride: nil, model: "m")
        let topk = try compare(q, tokens, base: p)
        let full = try compare(q, tokens, base: try saveBase(model, tokens))
        XCTAssertLessThanOrEqual(topk.kld_mean, full.kld_mean * 1.01)
        XCTAssertGreaterThan(topk.kld_mean, full.kld_mean * 0.8)
        XCTAssertEqual(topk.ppl_ratio, full.ppl_ratio, accuracy: 1e-6)
        _ = fx
    }
}
