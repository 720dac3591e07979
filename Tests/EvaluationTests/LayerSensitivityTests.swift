import Evaluation
import Foundation
import Models
import Quantization
import TensorCore
import TestSupport
import XCTest

/// Per-module sensitivity on stories260K (tokens from the perplexity fixture, made by Python sentencepiece):
/// output errors against a scalar float64 recomputation + TensorCore's ErrorMetrics, effects against direct
/// perplexity runs of a model with the module swapped in by hand.
final class LayerSensitivityTests: XCTestCase {
    static let modelPath = Repo.path("Models/stories260K/stories260K.bin")

    func tokens() throws -> [Int32] {
        struct Case: Decodable { let tokens: [Int32] }
        struct Fixture: Decodable { let cases: [Case] }
        let fx = try JSONDecoder().decode(Fixture.self, from: readMaybeCompressed(Repo.path("Tests/EvaluationTests/Fixtures/perplexity_stories260K.json.zst")))
        return fx.cases.max { $0.tokens.count < $1.tokens.count }!.tokens
    }

    func dequantized(_ model: LlamaModel, _ name: String, bits: Int, group: Int) throws -> [Float] {
        let w = try model.source.tensor(name + ".weight")
        let q = try RTN.quantize(w.floats(), outFeatures: w.shape[0], inFeatures: w.shape[1],
                                 scheme: QuantScheme(bits: bits, symmetric: true, groupSize: group), name: name)
        return q.dequantized()
    }

    /// Records the float inputs of one module.
    final class Capture: LinearObserver {
        let module: String
        var inputs: [[Float]] = [], outputs: [[Float]] = []
        init(_ m: String) { module = m }
        func observe(module: String, input: UnsafePointer<Float>, inFeatures: Int, output: UnsafePointer<Float>, outFeatures: Int, rows: Int) {
            guard module == self.module else { return }
            inputs.append(Array(UnsafeBufferPointer(start: input, count: rows * inFeatures)))
            outputs.append(Array(UnsafeBufferPointer(start: output, count: rows * outFeatures)))
        }
    }

    func testOutputErrorMatchesScalarRecomputation() throws {
        let model = try LlamaModel.load(path: LayerSensitivityTests.modelPath)
        let toks = try tokens()
        let names = ["model.layers.2.mlp.down_proj", "model.layers.0.self_attn.q_proj"]
        var q: [String: [Float]] = [:]
        for n in names { q[n] = try dequantized(model, n, bits: 4, group: 32) }
        let rep = try LayerSensitivity.analyze(model: model, quantized: q, calibration: toks, ctx: 64, calibrationWindows: 2)
        XCTAssertEqual(rep.calibrationTokens, 128)
        XCTAssertNil(rep.modules[0].enableOneQError)
        for n in names {
            // Independent: capture the float inputs, multiply by the dequantized weights in float64 by hand.
            let cap = Capture(n)
            model.observer = cap
            let cache = model.makeCache(capacity: 64), state = model.makeState(maxRows: 64)
            for w in 0..<2 { cache.reset(); _ = model.forward(Array(toks[w * 64..<(w + 1) * 64]), cache: cache, state: state, logitsFrom: 63) }
            model.observer = nil
            let layer = model.blocks.first { n.hasPrefix($0.prefix) }!.linear(named: n)!
            let (din, dout) = (layer.inFeatures, layer.outFeatures)
            var ref: [Float] = [], got: [Float] = []
            for (x, y) in zip(cap.inputs, cap.outputs) {
                let rows = x.count / din
                for r in 0..<rows {
                    for o in 0..<dout {
                        var s = 0.0
                        for i in 0..<din { s += Double(x[r * din + i]) * Double(q[n]![o * din + i]) }
                        got.append(Float(s)); ref.append(y[r * dout + o])
                    }
                }
            }
            let e = ErrorMetrics(reference: ref, approximation: got)
            let m = rep.modules.first { $0.name == n }!
            XCTAssertEqual(m.error.cosine, e.cosine, accuracy: 1e-6, n)
            XCTAssertEqual(m.error.mse, e.mse, accuracy: e.mse * 1e-3, n)
            XCTAssertEqual(m.error.sqnrDB, e.sqnrDB, accuracy: 0.01, n)
            XCTAssertEqual(m.parameters, din * dout)
            XCTAssertLessThan(m.error.cosine, 1)
            XCTAssertGreaterThan(m.error.cosine, 0.9)
        }
        // Model order: layer 0 before layer 2.
        XCTAssertEqual(rep.modules.map(\.name), ["model.layers.0.self_attn.q_proj", "model.layers.2.mlp.down_proj"])
    }

    func testEightBitsIsFarLessSensitiveThanFour() throws {
        let model = try LlamaModel.load(path: LayerSensitivityTests.modelPath)
        let n = "model.layers.1.mlp.up_proj"
        let r4 = try LayerSensitivity.analyze(model: model, quantized: [n: dequantized(model, n, bits: 4, group: -1)], calibration: tokens(), ctx: 64, calibrationWindows: 2)
        let r8 = try LayerSensitivity.analyze(model: model, quantized: [n: dequantized(model, n, bits: 8, group: -1)], calibration: tokens(), ctx: 64, calibrationWindows: 2)
        // About 6 dB per bit: 4 more bits should add well over 15 dB.
        XCTAssertGreaterThan(r8.modules[0].error.sqnrDB - r4.modules[0].error.sqnrDB, 15)
    }

    func testEffectsMatchDirectPerplexityRuns() throws {
        let model = try LlamaModel.load(path: LayerSensitivityTests.modelPath)
        let toks = try tokens()
        let names = ["model.layers.0.mlp.down_proj", "model.layers.3.self_attn.v_proj", "model.layers.4.mlp.gate_proj"]
        var q: [String: [Float]] = [:]
        for n in names { q[n] = try dequantized(model, n, bits: 3, group: 16) }
        let held = Array(toks.suffix(256))
        let floatBefore = try LayerSensitivity.perplexity(model, tokens: held, ctx: 64, maxChunks: 2).ppl
        let rep = try LayerSensitivity.analyze(model: model, quantized: q, calibration: toks, ctx: 64, calibrationWindows: 1,
                                               heldout: held, heldoutChunks: 2)
        XCTAssertEqual(rep.floatPPL!, floatBefore, accuracy: 1e-12 * floatBefore)
        XCTAssertEqual(rep.heldoutTokensScored, 2 * 63)
        // The model is restored afterwards.
        XCTAssertEqual(try LayerSensitivity.perplexity(model, tokens: held, ctx: 64, maxChunks: 2).ppl, floatBefore, accuracy: 1e-12 * floatBefore)

        func direct(_ quantizedNames: [String]) throws -> Double {
            let m = try LlamaModel.load(path: LayerSensitivityTests.modelPath)
            for n in quantizedNames {
                let b = m.blocks.first { n.hasPrefix($0.prefix) }!
                let l = b.linear(named: n)!
                try b.setLinear(DenseLinear(weight: Tensor(shape: [l.outFeatures, l.inFeatures], floats: q[n]!)), named: n)
            }
            let r = try Perplexity.evaluate(model: m, tokens: held, addsBOS: false, bosId: 0,
                                            options: PerplexityOptions(protocolKind: .gptq, ctx: 64, maxChunks: 2))
            return r.ppl / floatBefore - 1
        }
        XCTAssertEqual(rep.qerrorAll!, try direct(names), accuracy: 1e-12)
        for m in rep.modules {
            XCTAssertEqual(m.enableOneQError!, try direct([m.name]), accuracy: 1e-12, m.name)
            XCTAssertEqual(m.disableOneQError!, try direct(names.filter { $0 != m.name }), accuracy: 1e-12, m.name)
        }
        // 3-bit quantization costs perplexity.
        XCTAssertGreaterThan(rep.qerrorAll!, 0)
        // Ranking by the enable-one effect, most sensitive first.
        let ranked = rep.ranked.map { $0.enableOneQError! }
        XCTAssertEqual(ranked, ranked.sorted(by: >))
    }

    func testUnknownModuleAndWrongShapeAreClearErrors() throws {
        let model = try LlamaModel.load(path: LayerSensitivityTests.modelPath)
        XCTAssertThrowsError(try LayerSensitivity.analyze(model: model, quantized: ["model.layers.9.mlp.up_proj": [0]], calibration: tokens(), ctx: 64)) {
            XCTAssertTrue("\($0)".contains("model.layers.9.mlp.up_proj"), "\($0)")
        }
        XCTAssertThrowsError(try LayerSensitivity.analyze(model: model, quantized: ["model.layers.0.mlp.up_proj": [0, 1]], calibration: tokens(), ctx: 64)) {
            XCTAssertTrue("\($0)".contains("2 quantized values"), "\($0)")
        }
    }

    // MARK: plans

    func testBitsPerWeightByHand() {
        // 4 bits, groups of 32 over 64 inputs: 4 + 2 groups * (16 + 4) / 64 = 4.625.
        XCTAssertEqual(MixedPrecisionPlan.bitsPerWeight(bits: 4, groupSize: 32, inFeatures: 64), 4.625, accuracy: 1e-12)
        // 8 bits per channel over 172 inputs: 8 + 24/172.
        XCTAssertEqual(MixedPrecisionPlan.bitsPerWeight(bits: 8, groupSize: -1, inFeatures: 172), 8 + 24.0 / 172, accuracy: 1e-12)
        // Short last group: 172 inputs in groups of 32 -> 6 groups.
        XCTAssertEqual(MixedPrecisionPlan.bitsPerWeight(bits: 4, groupSize: 32, inFeatures: 172), 4 + 6 * 20.0 / 172, accuracy: 1e-12)
        XCTAssertEqual(MixedPrecisionPlan.bitsPerWeight(bits: 16, groupSize: 32, inFeatures: 64), 16)
    }

    func testTargetBitsPlanByHand() throws {
        // Three modules of 64x64 (4096 weights): 4-bit g32 = 4.625 bpw each; one at 8 bits per channel = 8.375.
        let mods: [String: (out: Int, in: Int)] = ["a": (64, 64), "b": (64, 64), "c": (64, 64)]
        // Target 6: one promotion gives (2*4.625 + 8.375)/3 = 5.875 <= 6; two give 7.125 > 6.
        let p = try MixedPrecisionPlan.forTargetBits(ranking: ["b", "a", "c"], modules: mods, defaultBits: 4, groupSize: 32, targetBits: 6)
        XCTAssertEqual(p.overrides, ["b": 8])
        XCTAssertEqual(p.bitsPerWeight(modules: mods), 5.875, accuracy: 1e-12)
        let all = try MixedPrecisionPlan.forTargetBits(ranking: ["b", "a", "c"], modules: mods, defaultBits: 4, groupSize: 32, targetBits: 9)
        XCTAssertEqual(all.overrides.count, 3)
        XCTAssertThrowsError(try MixedPrecisionPlan.forTargetBits(ranking: ["a"], modules: mods, defaultBits: 4, groupSize: 32, targetBits: 4)) {
            XCTAssertTrue("\($0)".contains("--target-bits"), "\($0)")
        }
        // JSON round trip through a file a user could edit.
        let path = Repo.tempDirectory("plan") + "/plan.json"
        var withFloat = p; withFloat.overrides["c"] = 16
        try AtomicFile.write(JSONSerialization.data(withJSONObject: withFloat.json(modules: mods, extra: ["schema_version": 1, "kind": "plan"])), to: path)
        XCTAssertEqual(try MixedPrecisionPlan.read(path), withFloat)
    }
}
