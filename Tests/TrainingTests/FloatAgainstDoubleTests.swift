import Foundation
import Models
import TensorCore
import Testing
@testable import Training

/// The Float graph (SIMD attention kernel, GEMM kernels) against the same graph in Double (plain loops: the
/// scalar twin), on shapes the kernels must handle at their edges: sequence lengths that are not multiples of the
/// 8-wide lanes, head dimensions below and above 8 and not multiples of it, grouped and plain heads, several
/// sequences. Tolerance: 2e-5 relative on every tensor's gradient norm (Float rounding over a few hundred terms).
@Suite struct FloatAgainstDoubleTests {
    static func config(dim: Int, heads: Int, kvHeads: Int, tied: Bool) throws -> LlamaConfig {
        let json = """
        {"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":\(dim),"intermediate_size":\(dim + 7),
         "num_hidden_layers":2,"num_attention_heads":\(heads),"num_key_value_heads":\(kvHeads),"vocab_size":37,
         "rms_norm_eps":1e-5,"rope_theta":10000.0,"tie_word_embeddings":\(tied),"max_position_embeddings":64}
        """
        return try JSONDecoder().decode(LlamaConfig.self, from: Data(json.utf8))
    }

    func compare(_ c: LlamaConfig, batch: Int, len: Int) throws {
        let doubles = FiniteDifferenceTests.randomTensors(c, seed: UInt64(len * 31 + batch))
        let floats = doubles.mapValues { $0.map(Float.init) }
        let md = try TrainableLlama<Double>(config: c, tensors: floats.mapValues { $0.map(Double.init) }, batch: batch,
                                            sequenceLength: len, threads: 3)
        let mf = try TrainableLlama<Float>(config: c, tensors: floats, batch: batch, sequenceLength: len, threads: 3)
        var rng = SplitMix64(seed: 5)
        let tokens = (0..<(batch * len)).map { _ in Int32(rng.index(c.vocabSize)) }
        let targets = (0..<(batch * len)).map { _ in Int32(rng.index(c.vocabSize)) }
        let teacher = (0..<(batch * len * c.vocabSize)).map { _ in 2 * rng.signedUnitFloat() }
        let w = LossWeights(kd: 1, ce: 0.5)
        let ld = try teacher.map(Double.init).withUnsafeBufferPointer {
            try md.loss(tokens: tokens, targets: targets, teacher: $0.baseAddress, weights: w, gradients: true)
        }
        let lf = try teacher.withUnsafeBufferPointer {
            try mf.loss(tokens: tokens, targets: targets, teacher: $0.baseAddress, weights: w, gradients: true)
        }
        #expect(abs(ld.total - lf.total) <= 1e-5 * abs(ld.total))
        for e in md.parameters.entries {
            var diff = 0.0, norm = 0.0
            for i in e.offset..<(e.offset + e.count) {
                let a = md.parameters.grads[i], b = Double(mf.parameters.grads[i])
                diff += (a - b) * (a - b); norm += a * a
            }
            let rel = (diff / max(norm, 1e-30)).squareRoot()
            #expect(rel <= 2e-5, "\(e.name): Float gradient off the Double one by \(rel) (len \(len), batch \(batch))")
        }
    }

    @Test func groupedHeadsOfFourOddLengths() throws {
        try compare(Self.config(dim: 16, heads: 4, kvHeads: 2, tied: false), batch: 3, len: 13)
    }

    @Test func headDimTwelveTied() throws {
        try compare(Self.config(dim: 24, heads: 2, kvHeads: 1, tied: true), batch: 2, len: 21)
    }

    @Test func headDimSixteenPlainHeads() throws {
        try compare(Self.config(dim: 32, heads: 2, kvHeads: 2, tied: false), batch: 1, len: 9)
    }
}
