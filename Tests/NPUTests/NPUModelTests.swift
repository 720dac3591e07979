import Foundation
import Models
import NPU
import TensorCore
import TestSupport
import XCTest

/// The NPU simulator driving the real engine on stories260K.
final class NPUModelTests: XCTestCase {
    static let tokens: [Int32] = {
        struct F: Decodable { let tokens: [Int32] }
        let data = try! Data(contentsOf: URL(fileURLWithPath: Repo.path("Tests/NPUTests/Fixtures/tinystories_tok512.json")))
        return try! JSONDecoder().decode(F.self, from: data).tokens
    }()
    static let modelPath = Repo.path("Models/stories260K/stories260K.bin")
    /// Evaluation tokens: the first 4 windows of 128 (the "gptq" protocol: every position but the first scored).
    static var evalTokens: [Int32] { Array(tokens[0..<512]) }
    /// Calibration tokens: disjoint from the evaluation ones.
    static var calibTokens: [Int32] { Array(tokens[1024...]) }

    func perplexity(_ model: LlamaModel, _ toks: [Int32], ctx: Int = 128) -> Double {
        let cache = model.makeCache(capacity: ctx), state = model.makeState(maxRows: ctx)
        let vocab = model.config.vocabSize
        var nll = 0.0, count = 0
        for c in 0..<(toks.count / ctx) {
            cache.reset()
            let w = Array(toks[(c * ctx)..<((c + 1) * ctx)])
            let logits = model.forward(w, cache: cache, state: state)
            for r in 0..<(ctx - 1) {
                let row = logits + r * vocab
                var mx = row[0]
                for v in 1..<vocab { mx = max(mx, row[v]) }
                var s = 0.0
                for v in 0..<vocab { s += exp(Double(row[v] - mx)) }
                nll += log(s) - Double(row[Int(w[r + 1])] - mx)
                count += 1
            }
        }
        return exp(nll / Double(count))
    }

    func npuPerplexity(_ json: String) throws -> (ppl: Double, sim: NPUSimulator) {
        let model = try LlamaModel.load(path: Self.modelPath)
        let cfg = try NPUConfig.parse(Data(json.utf8), source: "test")
        let sim = try NPUSimulator.calibrate(model: model, config: cfg, calibrationTokens: Self.calibTokens)
        sim.fallbacks.quiet = true
        try sim.apply(to: model)
        return (perplexity(model, Self.evalTokens), sim)
    }

    func testW8A8PerplexityNearFloat() throws {
        let float = perplexity(try LlamaModel.load(path: Self.modelPath), Self.evalTokens)
        // Cross-check of this test's scoring against the numpy reference figure (Tests/EvaluationTests fixture,
        // gptq protocol, ctx 128, 4 chunks).
        XCTAssertEqual(float, 6.0450633347501626, accuracy: 6.05e-3)
        let (w8, sim) = try npuPerplexity(#"{"weight_bits": 8, "nonlinear_mode": "fp16"}"#)
        print("stories260K ppl float \(float) | NPU W8A8 per-channel fp16 \(w8)")
        // Stated bound: W8A8 within 5% of the float figure.
        XCTAssertLessThan(abs(w8 - float) / float, 0.05, "W8A8 \(w8) vs float \(float)")
        XCTAssertNotEqual(w8, float)  // the NPU path really ran
        XCTAssertEqual(sim.fallbacks.count, 0)
        XCTAssertGreaterThan(sim.npu.counter.calls("softmax", unit: "fp16"), 0)
        XCTAssertEqual(sim.npu.counter.calls("rms_norm", unit: "fp16"), 4 * (5 * 2 + 1))  // 4 windows x (2 per block + final)
    }

    func testOtherModesStayReasonable() throws {
        let float = 6.0450633347501626
        for (json, bound) in [(#"{"weight_granularity": "per_tensor"}"#, 0.10),
                              (#"{"nonlinear_mode": "lut"}"#, 0.25),
                              (#"{"weight_bits": 4, "activation_calibration": "mse"}"#, 1.0)] {
            let (ppl, sim) = try npuPerplexity(json)
            print("stories260K ppl NPU \(json): \(ppl)")
            XCTAssertLessThan(abs(ppl - float) / float, bound, json)
            XCTAssertEqual(sim.fallbacks.count, 0)
        }
    }

    func testCalibrationTooSmallAndFallbacks() throws {
        let model = try LlamaModel.load(path: Self.modelPath)
        XCTAssertThrowsError(try NPUSimulator.calibrate(model: model, config: NPUConfig(), calibrationTokens: [1, 2, 3])) { e in
            XCTAssertTrue("\(e)".contains("calibration too small"), "\(e)")
        }
        var cfg = NPUConfig()
        cfg.calibration = .percentile(99.99)
        // 64 tokens x 32 k/v features = 2048 values < 10000 needed for the 99.99th percentile.
        XCTAssertThrowsError(try NPUSimulator.calibrate(model: model, config: cfg, calibrationTokens: Array(Self.calibTokens[0..<64]))) { e in
            XCTAssertTrue("\(e)".contains("needs at least 10000"), "\(e)")
        }
        // A module without calibration falls back to float, with the reason counted.
        let sim = try NPUSimulator.calibrate(model: model, config: NPUConfig(), calibrationTokens: Array(Self.calibTokens[0..<64]))
        sim.fallbacks.quiet = true
        let backend = NPULinearBackend(config: sim.config, ranges: sim.ranges.filter { $0.key != "model.layers.0.mlp.up_proj" },
                                       log: sim.fallbacks)
        let m2 = try LlamaModel.load(path: Self.modelPath, backend: backend)
        XCTAssertEqual(sim.fallbacks.entries.map(\.module), ["model.layers.0.mlp.up_proj"])
        XCTAssertTrue(m2.blocks[0].upProj is DenseLinear)
        XCTAssertTrue(m2.blocks[0].gateProj is NPULinear)
    }
}
