import Foundation
import Models
import TensorCore
import TestSupport
import Testing
@testable import Training

/// Windows the teacher samples itself: near-zero temperature is the engine's greedy generation, draws follow the
/// softmax, and each window depends only on the seed and its index.
@Suite struct TeacherSamplesTests {
    static let model = Repo.path("Models/stories260K/stories260K.bin")

    /// At temperature 1e-4 every draw is the arg max, so a window is BOS followed by `generateGreedy`'s tokens (the
    /// engine's own greedy decoding, a separate code path), as long as greedy decoding writes no BOS or EOS.
    @Test func nearZeroTemperatureIsGreedyGeneration() throws {
        let m = try LlamaModel.load(path: Self.model)
        let w = try TeacherSamples.generate(teacher: m, count: 1, length: 40, temperature: 1e-4, seed: 3, bos: 1, eos: 2)
        let greedy = try m.generateGreedy(prompt: [1], maxTokens: 39)
        try #require(!greedy.contains(1) && !greedy.contains(2), "greedy output holds BOS/EOS; pick another length")
        #expect(w[0] == [1] + greedy)
    }

    @Test func windowsDependOnlyOnSeedAndIndex() throws {
        let m = try LlamaModel.load(path: Self.model)
        let three = try TeacherSamples.generate(teacher: m, count: 3, length: 24, temperature: 1, seed: 9, bos: 1, eos: 2)
        m.threads = 1
        let five = try TeacherSamples.generate(teacher: m, count: 5, length: 24, temperature: 1, seed: 9, bos: 1, eos: 2)
        #expect(Array(five.prefix(3)) == three)
        #expect(three.allSatisfy { $0.count == 24 && $0[0] == 1 && !$0.contains(2) })
        #expect(three[0] != three[1])
        let other = try TeacherSamples.generate(teacher: m, count: 1, length: 24, temperature: 1, seed: 10, bos: 1, eos: 2)
        #expect(other[0] != three[0])
        #expect(throws: QuantKitError.self) { try TeacherSamples.generate(teacher: m, count: 1, length: 24, temperature: 0, seed: 1, bos: 1, eos: 2) }
        #expect(throws: QuantKitError.self) { try TeacherSamples.generate(teacher: m, count: 1, length: 5000, temperature: 1, seed: 1, bos: 1, eos: 2) }
    }

    /// 40,000 draws from softmax(logits / 0.7) over 6 outcomes: each frequency within 5 standard errors of the
    /// probability computed here.
    @Test func drawsFollowTheSoftmax() {
        let logits: [Float] = [1.0, -0.5, 2.0, 0.0, -3.0, 1.5]
        let t = 0.7
        let e = logits.map { Foundation.exp(Double($0) / t) }
        let p = e.map { $0 / e.reduce(0, +) }
        var rng = SplitMix64(seed: 77)
        var scratch = [Double](repeating: 0, count: 6)
        var counts = [Int](repeating: 0, count: 6)
        let n = 40_000
        logits.withUnsafeBufferPointer { l in
            for _ in 0..<n { counts[TeacherSamples.sample(l.baseAddress!, vocab: 6, temperature: t, scratch: &scratch, rng: &rng)] += 1 }
        }
        for v in 0..<6 {
            let f = Double(counts[v]) / Double(n), se = (p[v] * (1 - p[v]) / Double(n)).squareRoot()
            #expect(abs(f - p[v]) <= 5 * se + 1e-12, "outcome \(v): frequency \(f), probability \(p[v])")
        }
    }
}
