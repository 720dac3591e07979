import Foundation
import Models
import NPU
import Quantization
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

    /// A rotated model on the NPU runs its online Hadamard on the fp16 unit (once per block per window), and stays
    /// within the W8A8 bound of the float model.
    func testRotatedModelRunsItsOnlineHadamardOnTheNPU() throws {
        let w = try LlamaFloatWeights(model: try LlamaModel.load(path: Self.modelPath))
        _ = try Rotation.apply(to: w, seed: 0)
        let float = perplexity(try w.makeModel(), Self.evalTokens)
        let model = try w.makeModel()
        let sim = try NPUSimulator.calibrate(model: model, config: try NPUConfig.parse(Data(#"{"weight_bits": 8}"#.utf8), source: "test"),
                                            calibrationTokens: Self.calibTokens)
        try sim.apply(to: model)
        sim.npu.counter.reset()
        let npu = perplexity(model, Self.evalTokens)
        XCTAssertEqual(sim.npu.counter.calls("hadamard", unit: "fp16"), 4 * 5)  // 4 windows x 5 blocks
        XCTAssertLessThan(abs(npu - float) / float, 0.05, "rotated W8A8 \(npu) vs float \(float)")
    }

    /// W8A16 on the CPU: RTN int8 symmetric per-channel weights (the Quantization target's quantizer) run on the
    /// CPU quantized kernels with float activations; lm_head quantized too, as the NPU path quantizes it.
    struct RTNBackend: LinearBackend {
        let scheme: QuantScheme
        func makeLinear(name: String, source: WeightSource) throws -> LinearLayer {
            let w = try source.tensor(name + ".weight")
            let q = try RTN.quantize(w.floats(), outFeatures: w.shape[0], inFeatures: w.shape[1], scheme: scheme, name: name)
            return try QuantizedLinear(q, bias: source.contains(name + ".bias") ? try source.tensor(name + ".bias") : nil, name: name)
        }
    }

    func testW8A8PerplexityNearW8A16() throws {
        let scheme = try QuantScheme(bits: 8, symmetric: true, groupSize: QuantScheme.perChannel)
        let cpu = try LlamaModel.load(path: Self.modelPath, backend: RTNBackend(scheme: scheme))
        let head = try XCTUnwrap(cpu.lmHead as? DenseLinear)
        cpu.lmHead = try RTNBackend(scheme: scheme).makeLinear(name: "lm_head", source: TensorDictionary(["lm_head.weight": head.weight]))
        XCTAssertTrue(cpu.blocks[0].qProj is QuantizedLinear && cpu.lmHead is QuantizedLinear)
        let w8a16 = perplexity(cpu, Self.evalTokens)
        let (w8a8, sim) = try npuPerplexity(#"{"weight_bits": 8, "weight_granularity": "per_channel", "nonlinear_mode": "fp16"}"#)
        let float = 6.0450633347501626
        print("stories260K ppl float \(float) | CPU W8A16 (RTN int8 per-channel) \(w8a16) | NPU W8A8 fp16 \(w8a8)")
        XCTAssertEqual(sim.fallbacks.count, 0)
        // Stated bound: W8A8 within 3% of W8A16. Both carry int8 per-channel weights (steps max|w|/127 vs
        // max|w|/127.5), so the gap is what the NPU adds: int8 per-tensor min/max activations at every linear
        // input and output (~-45 dB noise each, dim 64 model with 35 + 1 linears in series) and fp16 nonlinear
        // ops (~2^-11 relative). Int8 weights alone cost under 1% here (W8A16 vs float) and the same activation
        // noise on the float model costs ~1-2% (testW8A8PerplexityNearFloat); 3% leaves room for both without
        // letting a broken requantization (tens of % or worse) through.
        XCTAssertLessThan(abs(w8a8 - w8a16) / w8a16, 0.03, "NPU W8A8 \(w8a8) vs CPU W8A16 \(w8a16)")
        XCTAssertLessThan(abs(w8a16 - float) / float, 0.01, "W8A16 \(w8a16) vs float")
    }

    func testOtherModesStayReasonable() throws {
        let float = 6.0450633347501626
        for (json, bound) in [(#"{"weight_granularity": "per_tensor"}"#, 0.10),
                              (#"{"nonlinear_mode": "lut"}"#, 0.25)] {
            let (ppl, sim) = try npuPerplexity(json)
            print("stories260K ppl NPU \(json): \(ppl)")
            XCTAssertLessThan(abs(ppl - float) / float, bound, json)
            XCTAssertEqual(sim.fallbacks.count, 0)
        }
    }

    /// W4A8 on the NPU against 4-bit per-channel weights on the CPU with float activations (W4A16, RTN). 4-bit
    /// per-channel weights alone cost ~23% on this dim-64 model (7.45 vs 6.05), so a bound against float (it was
    /// +-100%) could not catch a broken activation path. Against W4A16 the gap is what the NPU adds: int8
    /// activations at every linear (more harmful on top of coarse weights than at 8 bits, where W8A8 stays within
    /// 3% of W8A16) and its own int4 weight grid: measured 8.8% (8.11 vs 7.45). 12% leaves room for that and
    /// still fails a broken requantization (tens of % or worse).
    func testW4A8NearW4A16() throws {
        let scheme = try QuantScheme(bits: 4, symmetric: true, groupSize: QuantScheme.perChannel)
        let cpu = try LlamaModel.load(path: Self.modelPath, backend: RTNBackend(scheme: scheme))
        let head = try XCTUnwrap(cpu.lmHead as? DenseLinear)
        cpu.lmHead = try RTNBackend(scheme: scheme).makeLinear(name: "lm_head", source: TensorDictionary(["lm_head.weight": head.weight]))
        let w4a16 = perplexity(cpu, Self.evalTokens)
        let (w4a8, sim) = try npuPerplexity(#"{"weight_bits": 4, "activation_calibration": "mse"}"#)
        print("stories260K ppl CPU W4A16 (RTN int4 per-channel) \(w4a16) | NPU W4A8 \(w4a8)")
        XCTAssertEqual(sim.fallbacks.count, 0)
        XCTAssertLessThan(abs(w4a8 - w4a16) / w4a16, 0.12, "NPU W4A8 \(w4a8) vs CPU W4A16 \(w4a16)")
        XCTAssertGreaterThan(w4a16 / 6.0450633347501626 - 1, 0.1)  // the weights really are 4-bit
    }

    /// Mean KL(float || model) per scored position over the evaluation windows (ctx 128, all but the last row).
    func meanKL(float: LlamaModel, _ model: LlamaModel, ctx: Int = 128) -> Double {
        let vocab = model.config.vocabSize
        func logProbs(_ m: LlamaModel, _ w: [Int32]) -> [Double] {
            let cache = m.makeCache(capacity: ctx), state = m.makeState(maxRows: ctx)
            let logits = m.forward(w, cache: cache, state: state)
            var out = [Double](repeating: 0, count: (ctx - 1) * vocab)
            for r in 0..<(ctx - 1) {
                let row = logits + r * vocab
                var mx = Double(row[0])
                for v in 1..<vocab { mx = max(mx, Double(row[v])) }
                var s = 0.0
                for v in 0..<vocab { s += exp(Double(row[v]) - mx) }
                for v in 0..<vocab { out[r * vocab + v] = Double(row[v]) - mx - log(s) }
            }
            return out
        }
        var kl = 0.0, count = 0
        for c in 0..<(Self.evalTokens.count / ctx) {
            let w = Array(Self.evalTokens[(c * ctx)..<((c + 1) * ctx)])
            let p = logProbs(float, w), q = logProbs(model, w)
            for r in 0..<(ctx - 1) {
                for v in 0..<vocab { kl += exp(p[r * vocab + v]) * (p[r * vocab + v] - q[r * vocab + v]) }
                count += 1
            }
        }
        return kl / Double(count)
    }

    /// Records max |output| of each module, overall and per channel (the test's own observer, not the simulator's).
    final class OutputMagnitudes: LinearObserver {
        var amax: [String: Float] = [:]
        var channels: [String: [Float]] = [:]
        func observe(module: String, input: UnsafePointer<Float>, inFeatures: Int, output: UnsafePointer<Float>, outFeatures: Int, rows: Int) {
            var c = channels[module] ?? [Float](repeating: 0, count: outFeatures)
            for r in 0..<rows { for j in 0..<outFeatures { c[j] = max(c[j], abs(output[r * outFeatures + j])) } }
            channels[module] = c
            amax[module] = c.max()!
        }
    }

    /// int16_outputs / per_channel_outputs ["q_proj", "k_proj"]: those 10 layers get symmetric int16 outputs at
    /// scale max|output| / 32767, or int8 at max|output of channel j| / 127 per channel, over the calibration
    /// windows (observed here independently); the other 26 stay per-tensor int8; and the NPU moves closer to the
    /// float model: q/k requantization is the largest share of the W8A8 error on this model (BENCHMARKS.md, "Where
    /// the NPU's W8A8 error comes from"; 45-48% of the KLD on longer texts).
    func testWiderQueryKeyOutputs() throws {
        let float = try LlamaModel.load(path: Self.modelPath)
        let observed = OutputMagnitudes()
        float.observer = observed
        let cache = float.makeCache(capacity: 256), state = float.makeState(maxRows: 256)
        for start in stride(from: 0, to: Self.calibTokens.count, by: 256) {
            cache.reset()
            float.forward(Array(Self.calibTokens[start..<min(start + 256, Self.calibTokens.count)]), cache: cache, state: state)
        }
        float.observer = nil
        var kl: [Double] = []
        for json in [#"{"weight_bits": 8}"#, #"{"int16_outputs": ["q_proj", "k_proj"]}"#, #"{"per_channel_outputs": ["q_proj", "k_proj"]}"#] {
            let model = try LlamaModel.load(path: Self.modelPath)
            let sim = try NPUSimulator.calibrate(model: model, config: try NPUConfig.parse(Data(json.utf8), source: "test"),
                                                calibrationTokens: Self.calibTokens)
            try sim.apply(to: model)
            XCTAssertEqual(sim.fallbacks.count, 0)
            let layers = model.blocks.flatMap { b in LlamaBlock.linearNames.map { (b.prefix + $0, b.linear(named: $0) as? NPULinear) } }
                + [("lm_head", model.lmHead as? NPULinear)]
            XCTAssertEqual(layers.filter { $0.1 != nil }.count, 36)
            let wide = layers.filter { $0.1?.outputFormat != nil }
            if json.contains("weight_bits") {
                XCTAssertTrue(wide.isEmpty)
            } else {
                XCTAssertEqual(wide.map(\.0).sorted(), model.blocks.flatMap { [$0.prefix + "self_attn.k_proj", $0.prefix + "self_attn.q_proj"] }.sorted())
                for (name, layer) in wide {
                    let want: NPUOutputFormat = json.contains("int16") ? .int16(scale: observed.amax[name]! / 32767)
                        : .int8PerChannel(scales: observed.channels[name]!.map { $0 / 127 })
                    XCTAssertEqual(layer!.outputFormat, want, name)
                }
            }
            kl.append(meanKL(float: float, model))
        }
        print("stories260K KL(float || NPU): int8 outputs \(kl[0]), int16 q/k outputs \(kl[1]), per-channel int8 q/k outputs \(kl[2])")
        XCTAssertGreaterThan(kl[1], 0)
        XCTAssertLessThan(kl[1], 0.75 * kl[0])
        XCTAssertLessThan(kl[2], 0.9 * kl[0])
        XCTAssertGreaterThan(kl[2], kl[1])
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
        let backend = NPULinearBackend(config: sim.config, ranges: sim.ranges.filter { $0.key != "model.layers.0.mlp.up_proj" },
                                       log: sim.fallbacks)
        let m2 = try LlamaModel.load(path: Self.modelPath, backend: backend)
        XCTAssertEqual(sim.fallbacks.entries.map(\.module), ["model.layers.0.mlp.up_proj"])
        XCTAssertTrue(m2.blocks[0].upProj is DenseLinear)
        XCTAssertTrue(m2.blocks[0].gateProj is NPULinear)
    }
}
