import Foundation
import Kernels
import Models
import TensorCore
import TestSupport
import XCTest

/// Checkpoints written by Hugging Face transformers 5.23 (save_pretrained) with the logits its PyTorch modelling
/// code computes (Tools/reference_transformers.py): an implementation QuantKit's authors did not write. They cover
/// transformers 5's config layout (rope_parameters instead of rope_theta), llama3 and linear RoPE scaling, Mistral
/// and Qwen2 sliding windows, Qwen2 biases, tied embeddings, MQA and f16 / bf16 storage.
final class TransformersReferenceTests: XCTestCase {
    static let variants = ["llama_llama3rope_gqa_f32", "llama_linearrope_mqa_bf16_tied", "mistral_swa6_gqa_f16",
                           "qwen2_swa5_bias_f32_tied"]
    static func dir(_ v: String) -> String { Repo.path("Tests/ModelsTests/Fixtures/transformers/\(v)") }

    /// The tolerance, max abs difference 1e-4 (measured: 2e-6 to 4e-5, with logits up to 34).
    static func tolerance(_ ref: [Float]) -> Float { 1e-4 }

    func testConfigsAreReadAsTransformersWritesThem() throws {
        let llama3 = try LlamaConfig.load(path: Self.dir("llama_llama3rope_gqa_f32") + "/config.json")
        XCTAssertEqual(llama3.ropeTheta, 10000)
        XCTAssertEqual(llama3.ropeScaling, RopeScaling(ropeType: "llama3", factor: 8, lowFreqFactor: 1, highFreqFactor: 4,
                                                       originalMaxPositionEmbeddings: 64).with(theta: 10000))
        let linear = try LlamaConfig.load(path: Self.dir("llama_linearrope_mqa_bf16_tied") + "/config.json")
        XCTAssertEqual(linear.ropeTheta, 500000)  // only inside rope_parameters
        XCTAssertEqual(linear.ropeScaling?.ropeType, "linear")
        let qwen = try LlamaConfig.load(path: Self.dir("qwen2_swa5_bias_f32_tied") + "/config.json")
        XCTAssertEqual(qwen.ropeTheta, 1_000_000)
        XCTAssertNil(qwen.ropeScaling)  // rope_type "default"
        XCTAssertEqual((0..<2).map { qwen.attentionWindow(layer: $0) }, [nil, 5])
        let mistral = try LlamaConfig.load(path: Self.dir("mistral_swa6_gqa_f16") + "/config.json")
        XCTAssertEqual((0..<2).map { mistral.attentionWindow(layer: $0) }, [6, 6])
        // An exported config (convert) keeps the scaling and reads back equal.
        for c in [llama3, linear] {
            var back = try JSONDecoder().decode(LlamaConfig.self, from: try c.jsonData())
            back.ropeScaling?.ropeTheta = c.ropeScaling?.ropeTheta
            XCTAssertEqual(back, c)
        }
    }

    /// llama3 frequencies against values worked out by hand from the formula in transformers'
    /// _compute_llama3_parameters: head_dim 8, theta 10000 gives 1, 0.1, 0.01, 0.001 (wavelengths 6.3, 63, 628,
    /// 6283); with original 64, low 1, high 4 the first stays, the second is blended, the last two are divided by 8.
    func testLlama3FrequenciesByHand() throws {
        let c = try LlamaConfig.load(path: Self.dir("llama_llama3rope_gqa_f32") + "/config.json")
        let f = c.ropeFrequencies
        XCTAssertEqual(f.count, 4)
        XCTAssertEqual(f[0], 1, accuracy: 1e-12)
        let smooth = (64 / (2 * Double.pi / 0.1) - 1) / (4 - 1)  // 0.0061...
        XCTAssertEqual(f[1], (1 - smooth) * 0.1 / 8 + smooth * 0.1, accuracy: 1e-12)
        XCTAssertEqual(f[2], 0.01 / 8, accuracy: 1e-12)
        XCTAssertEqual(f[3], 0.001 / 8, accuracy: 1e-12)
    }

    func testLogitsMatchTransformers() throws {
        for v in Self.variants {
            let model = try LlamaModel.load(path: Self.dir(v))
            let fx = try LogitFixture.load("Tests/ModelsTests/Fixtures/transformers/\(v)/logits.json.zst")
            XCTAssertEqual(fx.windows.count, 3)
            for w in fx.windows {
                let d = maxAbsDiff(try model.logits(w.tokens), w.logits)
                XCTAssertLessThan(d, Self.tolerance(w.logits), "\(v), \(w.tokens.count) tokens")
            }
            // The same through a rolling KV cache: a prefill of 8, then one token at a time.
            let w = fx.windows.last!, vocab = fx.vocab
            let cache = model.makeCache(capacity: w.tokens.count, maxChunk: 8), state = model.makeState(maxRows: 8)
            var got = Array(UnsafeBufferPointer(start: model.forward(Array(w.tokens[0..<8]), cache: cache, state: state),
                                                count: 8 * vocab))
            for t in w.tokens[8...] {
                got += Array(UnsafeBufferPointer(start: model.forward([t], cache: cache, state: state), count: vocab))
            }
            XCTAssertLessThan(maxAbsDiff(got, w.logits), Self.tolerance(w.logits), "\(v) decode")
        }
    }

    /// Config features QuantKit does not run are refused, naming the file, not run as something else.
    func testUnsupportedConfigFeaturesAreRefused() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("qk-rope-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let base = try String(contentsOfFile: Self.dir("llama_llama3rope_gqa_f32") + "/config.json", encoding: .utf8)
        let cases: [(String, String, String)] = [
            ("\"rope_type\": \"llama3\"", "\"rope_type\": \"yarn\"", "rope_scaling type 'yarn' is not supported"),
            ("\"rope_type\": \"llama3\"", "\"rope_type\": \"dynamic\"", "rope_scaling type 'dynamic' is not supported"),
            ("\"factor\": 8.0", "\"factor\": 0.0", "needs a positive factor"),
            ("\"low_freq_factor\": 1.0", "\"low_freq_factor\": 5.0", "low_freq_factor < high_freq_factor"),
            ("\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\"", "hidden_act 'gelu' is not supported"),
            ("\"mlp_bias\": false", "\"mlp_bias\": true", "mlp_bias true is not supported"),
        ]
        for (from, to, message) in cases {
            XCTAssertTrue(base.contains(from), from)
            let path = dir.appendingPathComponent("config.json").path
            try base.replacingOccurrences(of: from, with: to).write(toFile: path, atomically: true, encoding: .utf8)
            XCTAssertThrowsError(try LlamaConfig.load(path: path)) { e in
                XCTAssertTrue("\(e)".contains(message), "\(e)")
                XCTAssertTrue("\(e)".contains(path), "\(e)")
            }
        }
    }
}

extension RopeScaling {
    func with(theta: Double) -> RopeScaling { var s = self; s.ropeTheta = theta; return s }
}
