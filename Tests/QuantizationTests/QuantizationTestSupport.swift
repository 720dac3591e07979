import Foundation
import Models
import TensorCore

/// Shared by the model-level quantization tests: a tiny random Llama (dim 64, hidden 172 as in stories260K) and
/// skewed calibration windows for it.
enum TinyLlama {
    static func model(seed: UInt64 = 5) throws -> LlamaModel {
        let cfg = LlamaConfig(hiddenSize: 64, intermediateSize: 172, numHiddenLayers: 2, numAttentionHeads: 8, numKeyValueHeads: 4,
                              rmsNormEps: 1e-5, vocabSize: 96, maxPositionEmbeddings: 256)
        var rng = SplitMix64(seed: seed)
        var t: [String: Tensor] = [:]
        func mat(_ o: Int, _ i: Int, _ s: Float) -> Tensor { Tensor(shape: [o, i], floats: rng.floats(o * i, in: -s...s)) }
        t["model.embed_tokens.weight"] = mat(96, 64, 1)
        t["lm_head.weight"] = mat(96, 64, 0.2)
        t["model.norm.weight"] = Tensor(shape: [64], floats: [Float](repeating: 1, count: 64))
        for l in 0..<2 {
            let p = "model.layers.\(l)."
            t[p + "input_layernorm.weight"] = Tensor(shape: [64], floats: rng.floats(64, in: 0.5...1.5))
            t[p + "post_attention_layernorm.weight"] = Tensor(shape: [64], floats: rng.floats(64, in: 0.5...1.5))
            for (n, o, i) in [("self_attn.q_proj", 64, 64), ("self_attn.k_proj", 32, 64), ("self_attn.v_proj", 32, 64),
                              ("self_attn.o_proj", 64, 64), ("mlp.gate_proj", 172, 64), ("mlp.up_proj", 172, 64), ("mlp.down_proj", 64, 172)] {
                t[p + n + ".weight"] = mat(o, i, 0.15)
            }
        }
        return try LlamaModel(config: cfg, source: TensorDictionary(t), name: "tiny")
    }

    /// Skewed token distribution so activations have structure (and some rare tokens).
    static func windows(_ n: Int, _ len: Int, seed: UInt64) -> [[Int32]] {
        var rng = SplitMix64(seed: seed)
        return (0..<n).map { _ in (0..<len).map { _ in Int32(min(95, Int(pow(Double.random(in: 0..<1, using: &rng), 2) * 96))) } }
    }
}

extension Tensor {
    /// float64 values stored as little-endian bytes in a U8 tensor [..., 8] (the safetensors reader has no F64).
    var float64FromBytes: [Double] { (0..<(count / 8)).map { raw.loadUnaligned(fromByteOffset: $0 * 8, as: Double.self) } }
    var byteValues: [UInt8] { Array(UnsafeBufferPointer(start: pointer(as: UInt8.self), count: count)) }
}
