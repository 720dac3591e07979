import Foundation
import Models
import TensorCore
import Testing
@testable import Training

/// The backward pass against central finite differences of the loss, in Double, on tiny seeded models: every
/// tensor of the model is probed at several entries.
@Suite struct FiniteDifferenceTests {
    static func config(tied: Bool, kvHeads: Int = 2, rotatedDown: Bool = false) throws -> LlamaConfig {
        let json = """
        {"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":16,"intermediate_size":24,\(rotatedDown ? "\"quantkit_down_proj_hadamard\":true," : "")
         "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":\(kvHeads),"vocab_size":20,
         "rms_norm_eps":1e-5,"rope_theta":10000.0,"tie_word_embeddings":\(tied),"max_position_embeddings":64}
        """
        return try JSONDecoder().decode(LlamaConfig.self, from: Data(json.utf8))
    }

    static func randomTensors(_ c: LlamaConfig, seed: UInt64) -> [String: [Double]] {
        var rng = SplitMix64(seed: seed)
        var out: [String: [Double]] = [:]
        for name in HFExport.tensorNames(c) {
            let n = TrainableLlama<Double>.shape(of: name, c).reduce(1, *)
            if name.hasSuffix("norm.weight") {
                out[name] = (0..<n).map { _ in 1 + 0.2 * Double(rng.signedUnitFloat()) }
            } else {
                out[name] = (0..<n).map { _ in 0.5 * Double(rng.signedUnitFloat()) }
            }
        }
        return out
    }

    /// Analytic gradients against (L(p + h) - L(p - h)) / 2h at `probes` entries of every tensor.
    func check(_ c: LlamaConfig, weights: LossWeights, seed: UInt64) throws {
        let (batch, len) = (2, 5)
        let m = try TrainableLlama<Double>(config: c, tensors: Self.randomTensors(c, seed: seed), batch: batch,
                                           sequenceLength: len, threads: 2)
        var rng = SplitMix64(seed: seed + 1)
        let tokens = (0..<(batch * len)).map { _ in Int32(rng.index(c.vocabSize)) }
        let targets = (0..<(batch * len)).map { _ in Int32(rng.index(c.vocabSize)) }
        let teacher = (0..<(batch * len * c.vocabSize)).map { _ in 2 * Double(rng.signedUnitFloat()) }
        func loss(gradients: Bool) throws -> Double {
            try teacher.withUnsafeBufferPointer {
                try m.loss(tokens: tokens, targets: weights.ce != 0 ? targets : nil, teacher: weights.kd != 0 ? $0.baseAddress : nil,
                       weights: weights, gradients: gradients).total
            }
        }
        _ = try loss(gradients: true)
        let analytic = Array(UnsafeBufferPointer(start: m.parameters.grads, count: m.parameters.count))
        let h = 1e-5
        var worst = 0.0, probed = 0
        for e in m.parameters.entries {
            for probe in 0..<4 {
                let i = e.offset + (probe * 7919 + 13) % e.count
                let p = m.parameters.values + i, saved = p.pointee
                p.pointee = saved + h; let up = try loss(gradients: false)
                p.pointee = saved - h; let down = try loss(gradients: false)
                p.pointee = saved
                let fd = (up - down) / (2 * h)
                let err = abs(fd - analytic[i]) / max(1e-3, abs(fd))
                worst = max(worst, err); probed += 1
                #expect(err < 1e-5, "\(e.name)[\(i - e.offset)]: analytic \(analytic[i]), finite difference \(fd)")
            }
        }
        #expect(probed >= 4 * m.parameters.entries.count)
        #expect(worst < 1e-5)
    }

    @Test func separateHeadKDAndCrossEntropy() throws {
        try check(Self.config(tied: false), weights: LossWeights(kd: 1, ce: 0.5), seed: 11)
    }

    @Test func tiedHeadCrossEntropyOnly() throws {
        try check(Self.config(tied: true), weights: LossWeights(kd: 0, ce: 1), seed: 12)
    }

    /// A rotated checkpoint's online Hadamard before down_proj (order 24 = 12 x 2: H_12, which is not symmetric,
    /// so the backward must use the transpose).
    @Test func onlineHadamardBeforeDownProj() throws {
        try check(Self.config(tied: false, rotatedDown: true), weights: LossWeights(kd: 1, ce: 0.5), seed: 14)
    }

    @Test func multiHeadAttentionKDOnly() throws {
        try check(Self.config(tied: false, kvHeads: 4), weights: LossWeights(kd: 1, ce: 0), seed: 13)
    }
}

/// A batch of the wrong size or with ids outside the vocabulary is refused with a typed error, never read.
@Suite struct BatchValidationTests {
    @Test func refusesBadBatches() throws {
        let c = try FiniteDifferenceTests.config(tied: true)
        let m = try TrainableLlama<Double>(config: c, tensors: FiniteDifferenceTests.randomTensors(c, seed: 1), batch: 2,
                                           sequenceLength: 3, threads: 1)
        let w = LossWeights(kd: 0, ce: 1)
        #expect(throws: QuantKitError.self) { try m.loss(tokens: [1, 2, 3], targets: nil, teacher: nil, weights: w, gradients: true) }
        #expect(throws: QuantKitError.self) {
            try m.loss(tokens: [1, 2, 3, 4, 5, Int32(c.vocabSize)], targets: nil, teacher: nil, weights: w, gradients: true)
        }
        #expect(throws: QuantKitError.self) {
            try m.loss(tokens: [1, 2, 3, 4, 5, 6], targets: [1, 2, 3, 4, 5, -1], teacher: nil, weights: w, gradients: true)
        }
        let ok = try m.loss(tokens: [1, 2, 3, 4, 5, 6], targets: [2, 3, 4, 5, 6, 7], teacher: nil, weights: w, gradients: true)
        #expect(ok.ce.isFinite && ok.ce > 0)
    }
}
