import Foundation
import Kernels
import Models
import TensorCore
import TestSupport
import XCTest

/// Synthetic HF checkpoints from Tools/make_synthetic_checkpoints.py with numpy float64 reference logits.
final class SyntheticCheckpointTests: XCTestCase {
    static let variants = ["llama_gqa_f32_untied", "llama_mqa_f16_tied", "qwen2_bias_bf16_tied",
                           "mistral_mha_f32_theta500k", "llama_headdim16_bf16_untied"] + swaVariants
    /// Sliding-window attention: Mistral window 5 on every layer; Qwen2 window 4 on layer 1 only (max_window_layers 1).
    static let swaVariants = ["mistral_swa5_gqa_f32", "qwen2_swa4_maxwin1_f32"]
    static func dir(_ v: String) -> String { Repo.path("Tests/ModelsTests/Fixtures/synthetic/\(v)") }

    func testLogitsMatchNumpyReference() throws {
        for v in Self.variants {
            let model = try LlamaModel.load(path: Self.dir(v))
            let fx = try LogitFixture.load("Tests/ModelsTests/Fixtures/synthetic/\(v)/logits.json.zst")
            for w in fx.windows {
                let d = maxAbsDiff(try model.logits(w.tokens), w.logits)
                XCTAssertLessThan(d, 1e-4, "\(v), \(w.tokens.count) tokens")
            }
        }
    }

    func testStoredDtypesAreKept() throws {
        let f16 = try LlamaModel.load(path: Self.dir("llama_mqa_f16_tied"))
        XCTAssertEqual(f16.embedding.dtype, .f16)
        XCTAssertTrue(f16.embedding.storage.isMapped)
        XCTAssertEqual((f16.blocks[0].qProj as? DenseLinear)?.weight.dtype, .f16)
        let bf = try LlamaModel.load(path: Self.dir("qwen2_bias_bf16_tied"))
        XCTAssertEqual((bf.blocks[1].kProj as? DenseLinear)?.weight.dtype, .bf16)
        XCTAssertNotNil((bf.blocks[1].kProj as? DenseLinear)?.bias)
    }

    /// A tied model's first prefill packs the head and lets the mapped table go; later windows embed from the
    /// head's panels: the logits are the same bits as the first window's (which embedded from the table).
    func testTiedEmbeddingFromPanelsKeepsLogits() throws {
        for v in ["llama_mqa_f16_tied", "qwen2_bias_bf16_tied"] {
            let model = try LlamaModel.load(path: Self.dir(v))
            let tokens: [Int32] = [1, 5, 9, 2, 77, 3, 60, 61, 12]
            let first = try model.logits(tokens)
            XCTAssertNotNil((model.lmHead as? DenseLinear)?.packedPanels, v)
            let again = try model.logits(tokens)
            XCTAssertEqual(first.map(\.bitPattern), again.map(\.bitPattern), v)
        }
    }

    /// A checkpoint missing one tensor, with a wrongly shaped one and an extra one, is rejected with all three named.
    func testLoadListsMissingUnexpectedAndMisshaped() throws {
        let src = try SafetensorsCheckpoint(path: Self.dir("llama_gqa_f32_untied"))
        var t: [String: Tensor] = [:]
        for n in src.names { t[n] = try src.tensor(n) }
        t["model.layers.1.mlp.up_proj.weight"] = nil
        t["model.layers.0.self_attn.k_proj.weight"] = Tensor(zeros: .f32, shape: [8, 32])
        t["model.layers.0.extra.weight"] = Tensor(zeros: .f32, shape: [3])
        let cfg = try LlamaConfig.load(path: Self.dir("llama_gqa_f32_untied") + "/config.json")
        XCTAssertThrowsError(try LlamaModel(config: cfg, source: TensorDictionary(t), name: "broken")) { e in
            let s = "\(e)"
            XCTAssertTrue(s.contains("missing 1: model.layers.1.mlp.up_proj.weight"), s)
            XCTAssertTrue(s.contains("model.layers.0.self_attn.k_proj.weight (expected [16, 32]"), s)
            XCTAssertTrue(s.contains("unexpected 1: model.layers.0.extra.weight"), s)
        }
    }

    func testConfigErrors() throws {
        let base = try String(contentsOfFile: Self.dir("llama_gqa_f32_untied") + "/config.json", encoding: .utf8)
        func check(_ edit: (inout [String: Any]) -> Void, _ expect: String) throws {
            var obj = try JSONSerialization.jsonObject(with: Data(base.utf8)) as! [String: Any]
            edit(&obj)
            let dir = Repo.tempDirectory("cfg")
            try JSONSerialization.data(withJSONObject: obj).write(to: URL(fileURLWithPath: dir + "/config.json"))
            XCTAssertThrowsError(try LlamaConfig.load(path: dir + "/config.json")) { e in
                XCTAssertTrue("\(e)".contains(expect), "\(e) should mention \(expect)")
            }
        }
        try check({ $0["model_type"] = "gpt2" }, "unknown model_type 'gpt2'")
        try check({ $0["architectures"] = ["GPT2LMHeadModel"] }, "unknown architecture 'GPT2LMHeadModel'")
        try check({ $0["num_attention_heads"] = 5 }, "does not divide hidden_size")
        try check({ $0["num_key_value_heads"] = 3 }, "num_key_value_heads (3) does not divide")
        try check({ $0["hidden_size"] = nil }, "missing field 'hidden_size'")
    }

    /// Sizes that are zero, negative or huge are refused by name before any is combined (heads 0 used to divide
    /// by zero; head_dim or layers near 2^62 overflowed), and so are token ids outside the vocabulary.
    func testConfigSizesAreCheckedBeforeAnyArithmetic() throws {
        let base = try String(contentsOfFile: Self.dir("llama_gqa_f32_untied") + "/config.json", encoding: .utf8)
        func refused(_ key: String, _ value: Any, mentioning needle: String, line: UInt = #line) throws {
            var obj = try JSONSerialization.jsonObject(with: Data(base.utf8)) as! [String: Any]
            obj[key] = value
            let cfg = try JSONDecoder().decode(LlamaConfig.self, from: JSONSerialization.data(withJSONObject: obj))
            XCTAssertThrowsError(try cfg.validate(source: "c.json"), line: line) { e in
                XCTAssertTrue("\(e)".contains(needle), "\(e) lacks \(needle)", line: line)
                XCTAssertTrue("\(e)".hasPrefix("c.json: "), "\(e)", line: line)
            }
        }
        try refused("num_attention_heads", 0, mentioning: "num_attention_heads must be positive (got 0)")
        try refused("num_attention_heads", -4, mentioning: "num_attention_heads must be positive")
        try refused("head_dim", 1 << 62, mentioning: "head_dim 4611686018427387904 is above QuantKit's limit of 1048576")
        try refused("head_dim", 1 << 19, mentioning: "num_attention_heads x head_dim")
        try refused("num_hidden_layers", 1 << 62, mentioning: "num_hidden_layers")
        try refused("num_key_value_heads", 0, mentioning: "num_key_value_heads must be positive")
        try refused("vocab_size", Int.max, mentioning: "vocab_size")
        try refused("max_position_embeddings", -1, mentioning: "max_position_embeddings")
        try refused("sliding_window", -5, mentioning: "sliding_window must be 1...")
        try refused("max_window_layers", -1, mentioning: "max_window_layers")
        try refused("bos_token_id", 1 << 40, mentioning: "bos_token_id 1099511627776 is outside the vocabulary")
        try refused("eos_token_id", -1, mentioning: "eos_token_id -1")
    }

    /// sliding_window: Mistral applies it on every layer, Qwen2 only with use_sliding_window and then on layers
    /// >= max_window_layers (default 28) or as layer_types says.
    func testSlidingWindowConfig() throws {
        let base = try String(contentsOfFile: Self.dir("llama_gqa_f32_untied") + "/config.json", encoding: .utf8)
        func config(_ edit: (inout [String: Any]) -> Void) throws -> LlamaConfig {
            var obj = try JSONSerialization.jsonObject(with: Data(base.utf8)) as! [String: Any]
            edit(&obj)
            return try JSONDecoder().decode(LlamaConfig.self, from: JSONSerialization.data(withJSONObject: obj))
        }
        let mistral = try config { $0["model_type"] = "mistral"; $0["sliding_window"] = 64 }
        XCTAssertEqual(mistral.attentionWindow, 64)
        XCTAssertEqual(mistral.attentionWindow(layer: 0), 64)
        XCTAssertEqual(mistral.attentionWindow(layer: 1), 64)
        let qwenOff = try config { $0["model_type"] = "qwen2"; $0["sliding_window"] = 64; $0["use_sliding_window"] = false }
        XCTAssertNil(qwenOff.attentionWindow)
        XCTAssertNil(qwenOff.attentionWindow(layer: 40))
        let qwenOn = try config { $0["model_type"] = "qwen2"; $0["sliding_window"] = 64; $0["use_sliding_window"] = true }
        XCTAssertEqual(qwenOn.attentionWindow, 64)
        XCTAssertNil(qwenOn.attentionWindow(layer: 27))  // max_window_layers defaults to 28
        XCTAssertEqual(qwenOn.attentionWindow(layer: 28), 64)
        let qwenMax = try config {
            $0["model_type"] = "qwen2"; $0["sliding_window"] = 8; $0["use_sliding_window"] = true; $0["max_window_layers"] = 1
        }
        XCTAssertNil(qwenMax.attentionWindow(layer: 0))
        XCTAssertEqual(qwenMax.attentionWindow(layer: 1), 8)
        let qwenTypes = try config {
            $0["model_type"] = "qwen2"; $0["sliding_window"] = 8; $0["use_sliding_window"] = true; $0["max_window_layers"] = 1
            $0["layer_types"] = ["sliding_attention", "full_attention"]
        }
        XCTAssertEqual(qwenTypes.attentionWindow(layer: 0), 8)
        XCTAssertNil(qwenTypes.attentionWindow(layer: 1))
        // Converted / exported checkpoints keep the window keys.
        let written = try JSONSerialization.jsonObject(with: qwenTypes.jsonData()) as! [String: Any]
        XCTAssertEqual(written["max_window_layers"] as? Int, 1)
        XCTAssertEqual(written["layer_types"] as? [String], ["sliding_attention", "full_attention"])
        XCTAssertEqual(try JSONDecoder().decode(LlamaConfig.self, from: qwenTypes.jsonData()), qwenTypes)
        let llama = try config { $0["sliding_window"] = 4 }
        XCTAssertNil(llama.attentionWindow(layer: 0))
        let mistralNull = try config { $0["model_type"] = "mistral"; $0["sliding_window"] = NSNull() }
        XCTAssertNil(mistralNull.attentionWindow)
        XCTAssertThrowsError(try (try config { $0["layer_types"] = ["full_attention"] }).validate()) { e in
            XCTAssertTrue("\(e)".contains("layer_types has 1 entries"), "\(e)")
        }
        XCTAssertThrowsError(try (try config { $0["layer_types"] = ["full_attention", "chunked_attention"] }).validate()) { e in
            XCTAssertTrue("\(e)".contains("'chunked_attention'"), "\(e)")
        }
        // The synthetic checkpoints decode as intended.
        let m = try LlamaModel.load(path: Self.dir("mistral_swa5_gqa_f32"))
        XCTAssertEqual(m.blocks.map(\.attentionWindow), [5, 5])
        let q = try LlamaModel.load(path: Self.dir("qwen2_swa4_maxwin1_f32"))
        XCTAssertEqual(q.blocks.map(\.attentionWindow), [nil, 4])
    }

    /// Sliding-window checkpoints through the KV cache: a prefill, a second prefill chunk after it (start > 0) and
    /// one-token decode steps give the numpy reference's full-sequence logits.
    func testSlidingWindowPrefillAndDecode() throws {
        for v in Self.swaVariants {
            let model = try LlamaModel.load(path: Self.dir(v))
            let fx = try LogitFixture.load("Tests/ModelsTests/Fixtures/synthetic/\(v)/logits.json.zst")
            let w = fx.windows.last!
            let n = w.tokens.count, vocab = fx.vocab
            XCTAssertGreaterThan(n, 3 * 5)
            for (prefill, chunk) in [(1, 0), (3, 9), (7, 0), (12, 20)] {
                let maxChunk = max(prefill, chunk, 1)
                // A cache with room for every token, and one whose sliding layers roll (window - 1 + maxChunk rows).
                var results: [[Float]] = []
                let caches = [model.makeCache(capacity: n), model.makeCache(capacity: n, maxChunk: maxChunk)]
                for cache in caches {
                    let state = model.makeState(maxRows: maxChunk)
                    var got = Array(UnsafeBufferPointer(start: model.forward(Array(w.tokens[0..<prefill]), cache: cache, state: state),
                                                        count: prefill * vocab))
                    if chunk > 0 {
                        let p = model.forward(Array(w.tokens[prefill..<(prefill + chunk)]), cache: cache, state: state)
                        got += Array(UnsafeBufferPointer(start: p, count: chunk * vocab))
                    }
                    for t in w.tokens[(prefill + chunk)...] {
                        got += Array(UnsafeBufferPointer(start: model.forward([t], cache: cache, state: state), count: vocab))
                    }
                    XCTAssertEqual(cache.length, n)
                    XCTAssertLessThan(maxAbsDiff(got, w.logits), 1e-4, "\(v) prefill \(prefill) chunk \(chunk) then decode")
                    results.append(got)
                }
                // The rolling buffers really rolled, and dropping keys no query can see changed nothing.
                let rolling = caches[1]
                for (l, b) in model.blocks.enumerated() {
                    XCTAssertEqual(rolling.layerCapacity[l], b.attentionWindow.map { $0 - 1 + maxChunk } ?? n, v)
                    XCTAssertEqual(rolling.origins[l] > 0, b.attentionWindow != nil, "\(v) layer \(l)")
                }
                XCTAssertLessThan(rolling.bytes, caches[0].bytes, v)
                XCTAssertTrue(results[0] == results[1], "\(v) prefill \(prefill) chunk \(chunk): the rolling cache differs by "
                              + "\(maxAbsDiff(results[0], results[1]))")
            }
            // Long greedy generation through the rolling cache of generateGreedy (the window is a few tokens) equals
            // the same loop over a cache that keeps everything.
            let start = Array(w.tokens[0..<3])
            let generated = try model.generateGreedy(prompt: start, maxTokens: 30)
            let full = model.makeCache(capacity: 33), st = model.makeState(maxRows: 3)
            var logits = model.forward(start, cache: full, state: st, logitsFrom: 2)
            var expected: [Int32] = []
            while expected.count < 30 {
                var best = 0
                for j in 1..<vocab where logits[j] > logits[best] { best = j }
                expected.append(Int32(best))
                logits = model.forward([Int32(best)], cache: full, state: st)
            }
            XCTAssertEqual(generated, expected, v)
            // Generation runs through the same cache path; its first token is the reference's argmax.
            let prompt = Array(w.tokens[0..<20])
            let row = Array(w.logits[(19 * vocab)..<(20 * vocab)])
            let best = row.indices.max { row[$0] < row[$1] }!
            XCTAssertEqual(try model.generateGreedy(prompt: prompt, maxTokens: 1), [Int32(best)], v)
        }
    }

    /// BlockContext.stopAfter: a calibration pass sees exactly the inputs of a full pass up to that module, and
    /// nothing after it.
    func testBlockStopsAfterModule() throws {
        let model = try LlamaModel.load(path: Self.dir("llama_gqa_f32_untied"))
        final class Inputs: LinearObserver {
            var seen: [(String, [Float])] = []
            func observe(module: String, input: UnsafePointer<Float>, inFeatures: Int, output: UnsafePointer<Float>, outFeatures: Int, rows: Int) {
                seen.append((module, Array(UnsafeBufferPointer(start: input, count: rows * inFeatures))))
            }
        }
        let tokens: [Int32] = [1, 5, 9, 2, 7, 3]
        func pass(stopAfter: String?) -> [(String, [Float])] {
            let c = model.config, rows = tokens.count
            let state = model.makeState(maxRows: rows), cache = model.makeCache(capacity: rows)
            for r in 0..<rows { state.positions[r] = Int32(r) }
            tokens.withUnsafeBufferPointer { model.embed($0, into: state.x) }
            let obs = Inputs()
            let ctx = BlockContext(ops: model.ops, observer: obs, threads: 1, stopAfter: stopAfter)
            model.blocks[0].forward(state.x, rows: rows, start: 0, keys: cache.keys[0], values: cache.values[0], state: state, context: ctx)
            XCTAssertEqual(c.numHiddenLayers, model.blocks.count)
            return obs.seen
        }
        let full = pass(stopAfter: nil)
        XCTAssertEqual(full.map(\.0), model.blocks[0].linearGroups.flatMap { $0 })
        for (stop, expected) in [("self_attn.v_proj", 3), ("self_attn.o_proj", 4), ("mlp.up_proj", 6), ("mlp.down_proj", 7)] {
            let part = pass(stopAfter: stop)
            XCTAssertEqual(part.count, expected, stop)
            for (a, b) in zip(part, full) {
                XCTAssertEqual(a.0, b.0)
                XCTAssertEqual(a.1, b.1, "\(a.0) input differs when stopping after \(stop)")
            }
        }
    }

    /// Observer sees every linear module in order; swapping a linear changes the output.
    func testObserverAndLinearSwap() throws {
        let model = try LlamaModel.load(path: Self.dir("llama_gqa_f32_untied"))
        final class Names: LinearObserver {
            var names: [String] = []
            func observe(module: String, input: UnsafePointer<Float>, inFeatures: Int, output: UnsafePointer<Float>, outFeatures: Int, rows: Int) {
                names.append(module)
            }
        }
        let obs = Names()
        model.observer = obs
        let before = try model.logits([1, 2, 3])
        XCTAssertEqual(obs.names.count, 2 * 7 + 1)
        XCTAssertEqual(Array(obs.names.prefix(7)), model.blocks[0].linearGroups.flatMap { $0 })
        model.observer = nil
        let old = model.blocks[1].downProj as! DenseLinear
        let zero = try DenseLinear(weight: Tensor(zeros: .f32, shape: old.weight.shape))
        try model.blocks[1].setLinear(zero, named: "mlp.down_proj")
        XCTAssertGreaterThan(maxAbsDiff(before, try model.logits([1, 2, 3])), 1e-3)
        XCTAssertThrowsError(try model.blocks[1].setLinear(zero, named: "self_attn.q_proj"))
    }
}
