import Evaluation
import Foundation
import Models
import TensorCore
import TestSupport
import XCTest

/// GGUF files that llama-quantize made, evaluated by QuantKit under llama.cpp's activation contract, against the
/// perplexity llama-perplexity printed for the same file and text (Tests/ModelsTests/Fixtures/gguf, made by
/// Tools/peer_llamacpp/make_gguf_fixtures.sh: f32 KV cache, flash attention off, ctx 128, 14 chunks).
final class GGUFAgreementTests: XCTestCase {
    static let dir = Repo.path("Tests/ModelsTests/Fixtures/gguf")

    struct Figures: Decodable {
        struct File: Decodable {
            let file: String; let variant: String?; let ppl_from_mean_nll: Double?; let chunks: Int; let n_ctx: Int
            let tensor_types: [String: Int]?
        }
        let files: [File]
        let text_tokens_llamacpp_with_bos: Int
    }

    static func figures() throws -> Figures {
        try JSONDecoder().decode(Figures.self, from: readFile(dir + "/llamacpp_figures.json"))
    }

    func run(_ file: String, activations: GGUFActivations = .llamacpp) throws -> PerplexityReport {
        var o = PerplexityRunOptions(model: Self.dir + "/" + file, corpus: Self.dir + "/tinystories_eval.txt",
                                     evaluation: PerplexityOptions(protocolKind: .llamacpp, ctx: 128, batchTokens: 128))
        o.ggufActivations = activations
        return try PerplexityRun.run(o)
    }

    /// Every committed file, every stored type (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K ... Q6_K,
    /// IQ4_NL, IQ4_XS, and the mixed Q4_K_M): the bar is 0.05% relative; llama.cpp's figure has 7 digits.
    func testPerplexityAgreesWithLlamaPerplexityOnEveryType() throws {
        let fx = try Self.figures()
        let present = Set(try FileManager.default.contentsOfDirectory(atPath: Self.dir))
        let mains = fx.files.filter { $0.variant == "main" && present.contains($0.file) }
        XCTAssertGreaterThanOrEqual(mains.count, 25)
        var typesSeen = Set<String>()
        var worst = 0.0
        for f in mains {
            let expected = try XCTUnwrap(f.ppl_from_mean_nll, f.file)
            let r = try run(f.file)
            XCTAssertEqual(r.chunks, f.chunks, f.file)
            XCTAssertEqual(r.corpusTokens, fx.text_tokens_llamacpp_with_bos, "\(f.file): QuantKit and llama.cpp tokenize the text alike")
            XCTAssertEqual(r.gguf?.activations, .llamacpp)
            XCTAssertEqual(r.gguf?.tensorTypes, f.tensor_types, f.file)
            let rel = abs(r.ppl / expected - 1)
            worst = max(worst, rel)
            XCTAssertLessThan(rel, 5e-4, "\(f.file): QuantKit \(r.ppl) vs llama.cpp \(expected)")
            typesSeen.formUnion(f.tensor_types?.keys ?? [:].keys)
        }
        XCTAssertEqual(typesSeen, ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K",
                                   "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"])
        print("GGUF agreement: largest relative difference \(worst)")
    }

    /// The contract matters: weight-only runs of the same Q4_0 file move by more than the agreement bar, so the
    /// test above could not pass with activations left in float.
    func testWeightOnlyDiffersFromTheContract() throws {
        let q = try run("random256-Q4_0.gguf"), f = try run("random256-Q4_0.gguf", activations: .float)
        XCTAssertEqual(f.gguf?.activations, .float)
        XCTAssertGreaterThan(abs(q.ppl / f.ppl - 1), 1e-3)
    }

    /// The llama.cpp F32 GGUF of stories260K is the llama2.c checkpoint: same logits bit for bit (names mapped,
    /// Q/K rows permuted back, the tied output found).
    func testStoriesGGUFEqualsTheLlama2cCheckpoint() throws {
        let g = try GGUFLlama.load(path: Self.dir + "/stories260K-F32.gguf")
        let c = try LlamaModel.load(path: Repo.path("Models/stories260K/stories260K.bin"))
        XCTAssertEqual(g.config.hiddenSize, c.config.hiddenSize)
        XCTAssertEqual(g.config.kvHeads, c.config.kvHeads)
        XCTAssertTrue(g.config.tieWordEmbeddings)
        let tokens: [Int32] = [1, 403, 407, 261, 378, 430, 271, 300, 268, 302]
        XCTAssertEqual(try logits(g, tokens), try logits(c, tokens))
    }

    func logits(_ m: LlamaModel, _ tokens: [Int32]) throws -> [Float] {
        let out = m.forward(tokens, cache: m.makeCache(capacity: tokens.count), state: m.makeState(maxRows: tokens.count))
        return Array(UnsafeBufferPointer(start: out, count: tokens.count * m.config.vocabSize))
    }

    /// A file QuantKit cannot run gets one line naming the tensor or key.
    func testRefusals() throws {
        let dir = Repo.tempDirectory("gguf-bad")
        let src = try GGUFFile(path: Self.dir + "/stories260K-Q8_0.gguf")
        func rewrite(_ name: String, _ edit: (inout GGUFWriter) throws -> Void) throws -> String {
            var w = GGUFWriter()
            for k in src.keys { w.set(k, src.metadata[k]!) }
            for t in src.tensors {
                try w.add(.init(name: t.name, type: t.type, shape: t.shape, data: Data(bytes: src.bytes(t), count: t.byteCount)))
            }
            try edit(&w)
            let path = "\(dir)/\(name).gguf"
            try w.write(to: path)
            return path
        }
        func expectError(_ path: String, _ fragment: String, line: UInt = #line) {
            XCTAssertThrowsError(try ModelLoading.loadModel(path), line: line) { e in
                XCTAssertTrue("\(e)".contains(fragment), "\(e)", line: line)
            }
        }
        expectError(try rewrite("arch") { $0.set("general.architecture", .string("gpt2")) }, "general.architecture is 'gpt2'")
        expectError(try rewrite("nolayers") { $0.metadata.removeAll { $0.0 == "llama.block_count" } }, "'llama.block_count' is missing")
        expectError(try rewrite("heads") { $0.set("llama.attention.head_count", .uint32(7)) }, "llama.attention.head_count (7)")
        expectError(try rewrite("extra") {
            try $0.add(.init(name: "blk.0.mystery.weight", type: .f32, shape: [4], data: Data(count: 16)))
        }, "blk.0.mystery.weight")
        expectError(try rewrite("shape") {
            let i = $0.tensors.firstIndex { $0.name == "output_norm.weight" }!
            $0.tensors[i] = .init(name: "output_norm.weight", type: .f32, shape: [32], data: Data(count: 128))
        }, "model.norm.weight")
        expectError(try rewrite("iq2") {
            let i = $0.tensors.firstIndex { $0.name == "blk.0.attn_q.weight" }!
            $0.tensors[i] = .init(name: "blk.0.attn_q.weight", type: .iq2_xxs, shape: [64, 256], data: Data(count: 64 * 66))
        }, "blk.0.attn_q.weight")
    }
}
