import Evaluation
import Foundation
import Models
import Quantization
import TensorCore
import TestSupport
import XCTest

/// `quantkit export --format gguf` against llama.cpp's own files and against QuantKit's own models, and llama.cpp's
/// KL-divergence base read by QuantKit.
final class GGUFExportTests: XCTestCase {
    static let fixtures = Repo.path("Tests/ModelsTests/Fixtures/gguf")
    static let stories = Repo.path("Models/stories260K/stories260K.bin")
    static let tok512 = Repo.path("Tokenizers/tok512/tok512.model")

    func export(_ model: String, _ type: GGMLType, dir: String) throws -> (GGUFExportReport, String) {
        let out = "\(dir)/\(URL(fileURLWithPath: model).lastPathComponent)-\(type.name).gguf"
        let r = try ExportRun.run(GGUFExportOptions(model: model, output: out, type: type), tokenizer: Self.tok512)
        return (r, out)
    }

    /// Q8_0 and Q4_0 exports of the float model hold the same tensor bytes as llama-quantize --pure wrote for the
    /// same weights (both use ggml's reference quantizer; stories260K's 172-wide down_proj falls back to F16 in
    /// both). The tensor order and names are llama.cpp's too.
    func testFloatExportEqualsLlamaQuantize() throws {
        let dir = Repo.tempDirectory("gguf-export")
        for type in [GGMLType.q8_0, .q4_0, .f16, .f32] {
            let (r, path) = try export(Self.stories, type, dir: dir)
            let mine = try GGUFFile(path: path)
            let theirs = try GGUFFile(path: "\(Self.fixtures)/stories260K-\(type.name).gguf")
            XCTAssertEqual(Set(mine.tensors.map(\.name)), Set(theirs.tensors.map(\.name)), type.name)
            for t in theirs.tensors {
                let m = try XCTUnwrap(mine.info(t.name), t.name)
                XCTAssertEqual(m.type, t.type, "\(type.name) \(t.name)")
                XCTAssertEqual(m.dims, t.dims, "\(type.name) \(t.name)")
                let same = m.byteCount == t.byteCount && memcmp(mine.bytes(m), theirs.bytes(t), t.byteCount) == 0
                XCTAssertTrue(same, "\(type.name) \(t.name): bytes differ from llama-quantize's")
            }
            XCTAssertEqual(r.fallbacks.count, type == .q8_0 || type == .q4_0 ? 5 : 0, type.name)
            XCTAssertEqual(mine.metadata["tokenizer.ggml.tokens"], theirs.metadata["tokenizer.ggml.tokens"])
            XCTAssertEqual(mine.metadata["tokenizer.ggml.scores"], theirs.metadata["tokenizer.ggml.scores"])
            XCTAssertEqual(mine.metadata["tokenizer.ggml.token_type"]?.ints, theirs.metadata["tokenizer.ggml.token_type"]?.ints)
            XCTAssertEqual(mine.metadata["llama.attention.head_count_kv"]?.int, 4)
        }
    }

    /// A GPTQ-layout RTN result (symmetric, groups of 32) exported to Q4_0 and read back weight-only computes what
    /// QuantKit's own W4A16 kernels compute from the checkpoint (same weights s * (q - 8); float summation order
    /// differs), and the scales are already fp16.
    func testQuantizedExportKeepsTheWeights() throws {
        let dir = Repo.tempDirectory("gguf-export-q")
        var o = QuantizeRunOptions(model: Self.stories, output: dir + "/rtn-g32")
        o.method = .rtn
        o.bits = 4
        o.groupSize = 32
        o.tokenizer = Self.tok512
        _ = try QuantizeRun.run(o)
        let (r, path) = try export(dir + "/rtn-g32", .q4_0, dir: dir)
        XCTAssertEqual(r.source, "rtn")
        XCTAssertEqual(r.scaleRoundingMaxAbs, 0)
        XCTAssertEqual(r.tensorTypes["Q4_0"], 30)
        XCTAssertEqual(r.fallbacks.map(\.stored), Array(repeating: "F32", count: 5))
        let gguf = try GGUFLlama.load(path: path, activations: .float)
        let native = try ModelLoading.loadModel(dir + "/rtn-g32")
        let tokens: [Int32] = [1, 403, 407, 261, 378, 430, 271, 300, 268, 302, 415, 261]
        let a = try logits(gguf, tokens), b = try logits(native, tokens)
        let scale = b.map { abs($0) }.max()!
        let diff = zip(a, b).map { abs($0 - $1) }.max()!
        XCTAssertLessThan(diff / scale, 1e-5, "exported Q4_0 vs the checkpoint's own kernels")
        // An 8-bit result maps onto Q8_0 the same way.
        o.bits = 8
        o.output = dir + "/rtn-w8"
        _ = try QuantizeRun.run(o)
        let (r8, path8) = try export(dir + "/rtn-w8", .q8_0, dir: dir)
        XCTAssertEqual(r8.tensorTypes["Q8_0"], 30)
        let a8 = try logits(try GGUFLlama.load(path: path8, activations: .float), tokens)
        let b8 = try logits(try ModelLoading.loadModel(dir + "/rtn-w8"), tokens)
        XCTAssertLessThan(zip(a8, b8).map { abs($0 - $1) }.max()! / b8.map { abs($0) }.max()!, 1e-5)
    }

    /// Results that Q4_0 cannot hold are refused with the reason and the quantizer flags that would work.
    func testUnrepresentableResultsAreRefused() throws {
        let dir = Repo.tempDirectory("gguf-export-refuse")
        func quantize(_ name: String, _ edit: (inout QuantizeRunOptions) -> Void) throws -> String {
            var o = QuantizeRunOptions(model: Self.stories, output: "\(dir)/\(name)")
            o.method = .rtn
            o.groupSize = 32
            o.tokenizer = Self.tok512
            o.calibration = Self.fixtures + "/tinystories_eval.txt"
            o.samples = 4
            o.seqlen = 64
            edit(&o)
            _ = try QuantizeRun.run(o)
            return o.output
        }
        let cases: [(String, (inout QuantizeRunOptions) -> Void, String)] = [
            ("asym", { $0.symmetric = false }, "--sym"),
            ("g64", { $0.groupSize = 64 }, "--group-size 32"),
            ("actorder", { $0.method = .gptq; $0.actOrder = true }, "--static-groups"),
        ]
        for (name, edit, hint) in cases {
            let model = try quantize(name, edit)
            XCTAssertThrowsError(try export(model, .q4_0, dir: dir), name) { e in
                XCTAssertTrue("\(e)".contains(hint) && "\(e)".contains("model.layers.0."), "\(name): \(e)")
            }
        }
        // With static groups the act-order result is representable.
        let staticGroups = try quantize("static") { $0.method = .gptq; $0.actOrder = true; $0.staticGroups = true }
        XCTAssertNoThrow(try export(staticGroups, .q4_0, dir: dir))
        XCTAssertThrowsError(try export(Self.stories, .q4_K, dir: dir)) { e in XCTAssertTrue("\(e)".contains("--type q4_k"), "\(e)") }
        XCTAssertThrowsError(try export(staticGroups, .f16, dir: dir)) { e in XCTAssertTrue("\(e)".contains("q4_0 or q8_0"), "\(e)") }
    }

    /// llama-perplexity's --kl-divergence-base file as the base: the base perplexity is llama.cpp's own, and the
    /// statistics of the F32 GGUF (QuantKit's F32 equals llama.cpp's) are zero up to the file's 16-bit encoding;
    /// the Q8_0 file's mean KLD and same-top are llama.cpp's figures up to the chaos of the 8-bit activation
    /// rounding (GGUFAgreementTests).
    func testLlamaCppKLDBase() throws {
        func run(_ file: String) throws -> KLDResult {
            var o = PerplexityRunOptions(model: "\(Self.fixtures)/\(file)", corpus: "\(Self.fixtures)/tinystories_eval.txt",
                                         evaluation: PerplexityOptions(protocolKind: .llamacpp, ctx: 128, batchTokens: 128))
            o.kldBase = "\(Self.fixtures)/stories260K-F32.kld"
            return try XCTUnwrap(PerplexityRun.run(o).kld)
        }
        let f32 = try run("stories260K-F32.gguf")
        XCTAssertEqual(f32.base_source, "llama.cpp")
        XCTAssertEqual(f32.encoding, "llamacpp-u16")
        XCTAssertEqual(f32.ppl_base, 3.898869, accuracy: 1e-6, "llama.cpp: Mean PPL(base) 3.898869 (printed to 6 decimals)")
        XCTAssertLessThan(abs(f32.kld_mean), 1e-5)
        XCTAssertEqual(f32.same_top_percent, 100)
        let q8 = try run("stories260K-Q8_0.gguf")
        XCTAssertEqual(q8.kld_mean, 0.000660, accuracy: 0.000660 * 0.15, "llama.cpp: Mean KLD 0.000660")
        XCTAssertEqual(q8.same_top_percent, 98.753, accuracy: 1.0, "llama.cpp: Same top p 98.753%")
        XCTAssertEqual(q8.ppl_base, f32.ppl_base)
    }

    func logits(_ m: LlamaModel, _ tokens: [Int32]) throws -> [Float] {
        let state = m.makeState(maxRows: tokens.count)
        let out = m.forward(tokens, cache: m.makeCache(capacity: tokens.count), state: state)
        return withExtendedLifetime(state) { Array(UnsafeBufferPointer(start: out, count: tokens.count * m.config.vocabSize)) }
    }
}
