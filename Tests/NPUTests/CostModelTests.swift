import Foundation
import NPU
import TestSupport
import XCTest

/// Expected figures are worked out by hand in the comments (edge-small: 256 MACs/cycle, 800 MHz, 1 MiB SRAM,
/// 4 GB/s = 5 bytes/cycle).
final class CostModelTests: XCTestCase {
    let small = try! NPUHardware.preset("edge-small")
    let stories = TransformerShape(dim: 64, hiddenDim: 172, layers: 5, heads: 8, kvHeads: 4, vocab: 512)

    func testLinearDecodeIsMemoryBound() {
        // 64 -> 172, one token: 11008 MACs -> 43 cycles; weights 11008 B + 8 B x 172 channels = 12384 B
        // -> ceil(12384 / 5) = 2477 cycles; activations 236 B stay in SRAM.
        let c = CostModel.linear(name: "w1", rows: 1, inFeatures: 64, outFeatures: 172, weightBits: 8, hw: small)
        XCTAssertEqual(c.macs, 11008)
        XCTAssertEqual(c.weightBytes, 12384)
        XCTAssertEqual(c.activationBytes, 0)
        XCTAssertEqual(c.sramPeakBytes, 236 + 12384)
        XCTAssertEqual(c.computeCycles, 43)
        XCTAssertEqual(c.memoryCycles, 2477)
        XCTAssertEqual(c.cycles, 2477)
        XCTAssertEqual(c.bound, .memory)
    }

    func testLinearPrefillIsComputeBound() {
        // 512 tokens: 5,636,096 MACs / 256 = 22016 cycles > 2477 memory cycles.
        let c = CostModel.linear(name: "w1", rows: 512, inFeatures: 64, outFeatures: 172, weightBits: 8, hw: small)
        XCTAssertEqual(c.macs, 5_636_096)
        XCTAssertEqual(c.computeCycles, 22016)
        XCTAssertEqual(c.cycles, 22016)
        XCTAssertEqual(c.bound, .compute)
    }

    func testInt4HalvesWeightPayload() {
        // 11008 weights at 4 bits = 5504 B + 1376 B parameters = 6880 B -> 1376 cycles.
        let c = CostModel.linear(name: "w1", rows: 1, inFeatures: 64, outFeatures: 172, weightBits: 4, hw: small)
        XCTAssertEqual(c.weightBytes, 6880)
        XCTAssertEqual(c.memoryCycles, 1376)
    }

    func testCompressionOnLargePreset() throws {
        // edge-large: 4096 MACs/cycle, 25 bytes/cycle, ratio 0.75: 11008 * 0.75 = 8256 + 1376 = 9632 B
        // -> ceil(385.28) = 386 cycles; compute ceil(11008 / 4096) = 3.
        let large = try NPUHardware.preset("edge-large")
        let c = CostModel.linear(name: "w1", rows: 1, inFeatures: 64, outFeatures: 172, weightBits: 8, hw: large)
        XCTAssertEqual(c.weightBytes, 9632)
        XCTAssertEqual(c.memoryCycles, 386)
        XCTAssertEqual(c.computeCycles, 3)
    }

    func testActivationsSpillWhenSRAMIsSmall() {
        // SRAM 16 KiB: tile = 8192, activations 64 x 236 = 15104 B do not fit beside it -> they go to DRAM:
        // (12384 + 15104) / 5 = 5497.6 -> 5498 cycles; compute 64 x 11008 / 256 = 2752.
        var hw = small
        hw.sramBytes = 16384
        let c = CostModel.linear(name: "w1", rows: 64, inFeatures: 64, outFeatures: 172, weightBits: 8, hw: hw)
        XCTAssertEqual(c.activationBytes, 15104)
        XCTAssertEqual(c.sramPeakBytes, 16384)
        XCTAssertEqual(c.memoryCycles, 5498)
        XCTAssertEqual(c.computeCycles, 2752)
        XCTAssertEqual(c.bound, .memory)
    }

    func testAttentionDecode() {
        // token 100 (99 cached): 2 x 8 heads x 8 x 100 = 12800 MACs -> 50 cycles; writes K,V of one token
        // (2 x 32 B) -> 13 cycles; softmax 5 x 8 x 100 = 4000 ops / 16 = 250 cycles: vector bound.
        let c = CostModel.attention(name: "a", rows: 1, past: 99, shape: stories, hw: small)
        XCTAssertEqual(c.macs, 12800)
        XCTAssertEqual(c.activationBytes, 64)
        XCTAssertEqual(c.computeCycles, 50)
        XCTAssertEqual(c.memoryCycles, 13)
        XCTAssertEqual(c.cycles, 250)
        XCTAssertEqual(c.bound, .vector)
    }

    /// int16 outputs cost 2 bytes an element: a 64 -> 64 layer over 64 tokens with SRAM 8 KiB (tile 4096 B) spills
    /// 64 x (64 + 2 x 64) = 12288 B instead of 64 x 128 = 8192 B; int16 keys make a cached token 32 x (2 + 1) = 96 B
    /// instead of 64 B.
    func testInt16OutputsCostTwoBytes() {
        var hw = small
        hw.sramBytes = 8192
        let q8 = CostModel.linear(name: "q", rows: 64, inFeatures: 64, outFeatures: 64, weightBits: 8, hw: hw)
        let q16 = CostModel.linear(name: "q", rows: 64, inFeatures: 64, outFeatures: 64, weightBits: 8, outputBytes: 2, hw: hw)
        XCTAssertEqual(q8.activationBytes, 8192)
        XCTAssertEqual(q16.activationBytes, 12288)
        let a = CostModel.attention(name: "a", rows: 1, past: 99, shape: stories, kvBytes: 3, hw: small)
        XCTAssertEqual(a.activationBytes, 96)
        // The whole model: per layer q_proj and k_proj are the int16 ones; each token's key cache grows by 32 B.
        let base = CostModel.phase(shape: stories, hw: small, weightBits: 8, rows: 1, past: 99)
        let wide = CostModel.phase(shape: stories, hw: small, weightBits: 8, rows: 1, past: 99, int16Outputs: ["q_proj", "k_proj"])
        XCTAssertEqual(wide.layers.first { $0.name == "model.layers.0.self_attn.attention" }?.activationBytes, 96)
        XCTAssertEqual(wide.layers.first { $0.name == "model.layers.0.self_attn.q_proj" }?.sramPeakBytes,
                       base.layers.first { $0.name == "model.layers.0.self_attn.q_proj" }!.sramPeakBytes + 64)
        XCTAssertEqual(wide.layers.first { $0.name == "model.layers.0.self_attn.v_proj" },
                       base.layers.first { $0.name == "model.layers.0.self_attn.v_proj" })
    }

    /// A sliding window caps the keys each token sees: MACs against a per-token count written out here, for
    /// prefill crossing the window, prefill wholly past it, and decode; a window wider than the context changes nothing.
    func testSlidingWindowAttention() {
        func keys(rows: Int, past: Int, window: Int) -> Int { (0..<rows).reduce(0) { $0 + min(past + $1 + 1, window) } }
        for (rows, past, window) in [(64, 0, 16), (10, 40, 16), (1, 99, 16), (7, 5, 9), (12, 0, 12), (3, 2, 100)] {
            let c = CostModel.attention(name: "a", rows: rows, past: past, shape: stories, window: window, hw: small)
            XCTAssertEqual(c.macs, 2 * 8 * 8 * keys(rows: rows, past: past, window: window), "\(rows) \(past) \(window)")
        }
        let full = CostModel.attention(name: "a", rows: 5, past: 20, shape: stories, hw: small)
        XCTAssertEqual(CostModel.attention(name: "a", rows: 5, past: 20, shape: stories, window: 25, hw: small), full)
        // Decode far past the window costs what decode at the window does.
        let far = CostModel.attention(name: "a", rows: 1, past: 5000, shape: stories, window: 16, hw: small)
        XCTAssertEqual(far.macs, CostModel.attention(name: "a", rows: 1, past: 15, shape: stories, hw: small).macs)
    }

    /// Windows come from config.json as the engine reads them: Qwen2 windows only layers >= max_window_layers.
    func testWindowsFromHuggingFaceConfig() throws {
        let dir = Repo.tempDirectory("costwin")
        let path = dir + "/config.json"
        try Data("""
            {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64, "intermediate_size": 172,
             "num_hidden_layers": 3, "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 512,
             "rms_norm_eps": 1e-5, "use_sliding_window": true, "sliding_window": 16, "max_window_layers": 1}
            """.utf8).write(to: URL(fileURLWithPath: path))
        let shape = try TransformerShape.load(model: dir)
        XCTAssertEqual(shape.attentionWindows ?? [], [nil, 16, 16])
        let r = CostModel.phase(shape: shape, hw: small, weightBits: 8, rows: 1, past: 99)
        let att = r.layers.filter { $0.name.hasSuffix("attention") }.map(\.macs)
        XCTAssertEqual(att, [2 * 8 * 8 * 100, 2 * 8 * 8 * 16, 2 * 8 * 8 * 16])
    }

    /// An explicit head_dim (16, not hidden 64 / 8 heads = 8) sizes q/k/v/o and attention, as Models reads it.
    func testExplicitHeadDimFromConfig() throws {
        let dir = Repo.tempDirectory("costheaddim")
        try Data("""
            {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 172,
             "num_hidden_layers": 1, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 16, "vocab_size": 512}
            """.utf8).write(to: URL(fileURLWithPath: dir + "/config.json"))
        let shape = try TransformerShape.load(model: dir)
        XCTAssertEqual(shape.headDim, 16)
        let r = CostModel.phase(shape: shape, hw: small, weightBits: 8, rows: 1, past: 99)
        // One token: q 64 x (8 x 16) = 8192 MACs, k and v 64 x (4 x 16) = 4096, o (8 x 16) x 64 = 8192; attention
        // over 100 keys 2 x 8 heads x 16 x 100 = 25600; vector ops 2 x 4 x 64 + 3 x (128 + 64) + 5 x 172 + 2 x 64
        // = 512 + 576 + 860 + 128 = 2076.
        let macs = Dictionary(uniqueKeysWithValues: r.layers.map { ($0.name, $0.macs) })
        XCTAssertEqual(macs["model.layers.0.self_attn.q_proj"], 8192)
        XCTAssertEqual(macs["model.layers.0.self_attn.k_proj"], 4096)
        XCTAssertEqual(macs["model.layers.0.self_attn.v_proj"], 4096)
        XCTAssertEqual(macs["model.layers.0.self_attn.o_proj"], 8192)
        XCTAssertEqual(macs["model.layers.0.self_attn.attention"], 25600)
        XCTAssertEqual(r.layers.first { $0.name == "model.layers.0.vector_ops" }?.vectorOps, 2076)
    }

    /// A rotated checkpoint's online Hadamard (n = 344 = 172 x 2: one butterfly stage, then the 172 x 172 base
    /// product) adds 344 x (1 + 172) = 59,512 vector ops per token to each block: 2 x 4 x 64 + 3 x (64 + 32) +
    /// 5 x 344 + 2 x 64 = 2,648 without it.
    func testOnlineHadamardCostsVectorOps() throws {
        let dir = Repo.tempDirectory("costhadamard")
        func ops(rotated: Bool) throws -> Int? {
            try Data("""
                {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 344,
                 "num_hidden_layers": 1, "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 512,
                 "tie_word_embeddings": false, "quantkit_down_proj_hadamard": \(rotated)}
                """.utf8).write(to: URL(fileURLWithPath: dir + "/config.json"))
            let shape = try TransformerShape.load(model: dir)
            XCTAssertEqual(shape.onlineHadamard, rotated ? true : nil)
            return CostModel.phase(shape: shape, hw: small, weightBits: 8, rows: 3, past: 0).layers
                .first { $0.name == "model.layers.0.vector_ops" }?.vectorOps
        }
        XCTAssertEqual(try ops(rotated: false), 3 * 2648)
        XCTAssertEqual(try ops(rotated: true), 3 * (2648 + 59512))
    }

    func testWholeModelTotals() throws {
        let r = try CostModel.report(shape: stories, hw: small, weightBits: 8, promptTokens: 64, decodeContext: 0)
        // Per block linears: 4096 + 2048 + 2048 + 4096 + 3 x 11008 = 45312 MACs; attention of one token 128;
        // five blocks plus lm_head 64 x 512 = 32768: 5 x 45440 + 32768 = 259968.
        XCTAssertEqual(r.decode.totalMacs, 259_968)
        XCTAssertEqual(r.decode.layers.count, 5 * 9 + 1)
        XCTAssertEqual(r.decode.totalCycles, r.decode.layers.reduce(0) { $0 + $1.cycles })
        XCTAssertEqual(r.decode.seconds, Double(r.decode.totalCycles) / 800e6, accuracy: 1e-15)
        XCTAssertEqual(r.decode.tokensPerSecond, 1 / r.decode.seconds, accuracy: 1e-6)
        XCTAssertEqual(r.prefill.secondsPerToken, r.prefill.seconds / 64, accuracy: 1e-15)
        XCTAssertLessThan(r.prefill.secondsPerToken, r.decode.secondsPerToken)  // weights amortised over 64 rows
        XCTAssertThrowsError(try CostModel.report(shape: stories, hw: small, weightBits: 3, promptTokens: 1, decodeContext: 0))
    }

    func testLlama2cHeader() throws {
        let s = try TransformerShape.load(model: Repo.path("Models/stories260K/stories260K.bin"))
        XCTAssertEqual(s, stories)
    }

    func testConfigParsingAndErrors() throws {
        let ok = try NPUConfig.parse(Data("""
            {"weight_bits": 4, "weight_granularity": "per_tensor", "activation_calibration": "percentile",
             "percentile": 99.9, "nonlinear_mode": "lut", "preset": "edge-large",
             "hardware": {"dram_bytes_per_second": 5e10}, "min_calibration_tokens": 8, "int16_outputs": ["q_proj", "k_proj"]}
            """.utf8), source: "cfg.json")
        XCTAssertEqual(ok.int16Outputs, ["k_proj", "q_proj"])
        XCTAssertTrue(ok.hasInt16Output("model.layers.3.self_attn.k_proj"))
        XCTAssertFalse(ok.hasInt16Output("model.layers.3.self_attn.v_proj"))
        XCTAssertFalse(NPUConfig().hasInt16Output("lm_head"))
        let pc = try NPUConfig.parse(Data(#"{"per_channel_outputs": ["q_proj"]}"#.utf8), source: "cfg.json")
        XCTAssertTrue(pc.hasPerChannelOutput("model.layers.0.self_attn.q_proj") && !pc.hasInt16Output("model.layers.0.self_attn.q_proj"))
        XCTAssertEqual(ok.weightBits, 4)
        XCTAssertEqual(ok.weightGranularity, .perTensor)
        XCTAssertEqual(ok.calibration, .percentile(99.9))
        XCTAssertEqual(ok.nonlinearMode, .lut)
        XCTAssertEqual(ok.hardware.macsPerCycle, 4096)
        XCTAssertEqual(ok.hardware.dramBytesPerSecond, 5e10)
        XCTAssertEqual(ok.minCalibrationTokens, 8)
        let bad: [(String, String)] = [
            (#"{"weight_bits": 3}"#, "weight_bits"),
            (#"{"weight_bitz": 8}"#, "unknown key 'weight_bitz'"),
            (#"{"hardware": {"clock_hz": -1}}"#, "clock_hz"),
            (#"{"hardware": {"macs_per_cycle": 0}}"#, "macs_per_cycle"),
            (#"{"hardware": {"sram_bytes": 10}}"#, "sram_bytes"),
            (#"{"hardware": {"compression_ratio": 1.5}}"#, "compression_ratio"),
            (#"{"activation_calibration": "percentile", "percentile": 120}"#, "percentile"),
            (#"{"nonlinear_mode": "fp8"}"#, "nonlinear_mode"),
            (#"{"preset": "huge"}"#, "unknown NPU preset"),
            (#"[1, 2]"#, "not a JSON object"),
            (#"{"int16_outputs": ["q_prj"]}"#, "int16_outputs: 'q_prj' is not one of"),
            (#"{"int16_outputs": "q_proj"}"#, "int16_outputs must be a list"),
            (#"{"per_channel_outputs": ["lm_haed"]}"#, "per_channel_outputs: 'lm_haed' is not one of"),
            (#"{"per_channel_outputs": ["k_proj"], "int16_outputs": ["k_proj"]}"#, "'k_proj' is in both"),
        ]
        for (text, needle) in bad {
            XCTAssertThrowsError(try NPUConfig.parse(Data(text.utf8), source: "cfg.json"), text) { e in
                XCTAssertTrue("\(e)".contains(needle) && "\(e)".contains("cfg.json"), "\(text): \(e)")
            }
        }
    }
}
