import Foundation
import Models
import TensorCore

/// Training text the float teacher writes itself (data-free distillation, as LLM-QAT does): each window starts at
/// BOS and continues with tokens sampled from the teacher's own next-token distribution, so training sees the
/// model's own domain rather than whatever calibration text is at hand.
public enum TeacherSamples {
    /// `count` windows of `length` tokens (BOS first). Sequence i draws from SplitMix64(seed, i) alone, so a window
    /// does not depend on the thread count or on the other windows. A sampled BOS or EOS ends a story: BOS is
    /// written and sampling continues after it, as stories are packed in pretraining data.
    public static func generate(teacher: LlamaModel, count: Int, length: Int, temperature: Double, seed: UInt64,
                                bos: Int32, eos: Int32?, progress: ((Int) -> Void)? = nil) throws -> [[Int32]] {
        guard count > 0, length >= 2 else { throw QuantKitError(.input, "teacher samples need at least 1 window of 2 tokens") }
        guard temperature.isFinite, temperature > 0 else { throw QuantKitError(.input, "--temperature must be above 0 (got \(temperature))") }
        guard length <= teacher.config.maxPositionEmbeddings else {
            throw QuantKitError(.input, "teacher samples of \(length) tokens exceed the model's context (\(teacher.config.maxPositionEmbeddings))")
        }
        try teacher.validate(tokens: [bos] + (eos.map { [$0] } ?? []))
        let vocab = teacher.config.vocabSize
        let cache = teacher.makeCache(capacity: length), state = teacher.makeState(maxRows: 1)
        var probabilities = [Double](repeating: 0, count: vocab)
        var out: [[Int32]] = []
        out.reserveCapacity(count)
        for i in 0..<count {
            var rng = SplitMix64(seed: seed &+ UInt64(i) &* 0xD1B5_4A32_D192_ED03)
            cache.reset()
            var window: [Int32] = [bos]
            var logits = teacher.forward([bos], cache: cache, state: state)
            while window.count < length {
                var next = Int32(sample(logits, vocab: vocab, temperature: temperature, scratch: &probabilities, rng: &rng))
                if next == eos { next = bos }
                window.append(next)
                if window.count < length { logits = teacher.forward([next], cache: cache, state: state) }
            }
            out.append(window)
            progress?(i + 1)
        }
        return out
    }

    /// One draw from softmax(logits / temperature), computed in Double: the smallest v whose cumulative probability
    /// exceeds a uniform draw in [0, 1).
    static func sample(_ logits: UnsafePointer<Float>, vocab: Int, temperature: Double, scratch p: inout [Double],
                       rng: inout SplitMix64) -> Int {
        var top = -Double.infinity
        for v in 0..<vocab { top = max(top, Double(logits[v])) }
        var sum = 0.0
        for v in 0..<vocab { p[v] = Foundation.exp((Double(logits[v]) - top) / temperature); sum += p[v] }
        let u = Double(rng.next() >> 11) / Double(1 << 53) * sum
        var acc = 0.0
        for v in 0..<vocab {
            acc += p[v]
            if u < acc { return v }
        }
        return (0..<vocab).last { p[$0] > 0 } ?? 0
    }
}
