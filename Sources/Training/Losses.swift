import Foundation
import Kernels
import TensorCore

/// The training objective per position: kdWeight · KL(p_teacher ‖ p_student) + ceWeight · CE(next token), averaged
/// over all positions (METHODS.md section 7: Float32 logits, log-softmax in Double, mean over tokens).
public struct LossWeights: Sendable, Equatable, Codable {
    public var kd: Double
    public var ce: Double
    public init(kd: Double, ce: Double) { self.kd = kd; self.ce = ce }
}

/// The loss of one batch, in nats per position.
public struct LossValue: Sendable, Equatable, Codable {
    public var total: Double
    public var kl: Double
    public var ce: Double
    /// Share of positions where the student's top token is the teacher's (0 without a teacher).
    public var sameTop: Double
}

enum DistillationLoss {
    /// Loss of `logits` [rows, vocab] and, when `dLogits` is given, its gradient with respect to them.
    static func evaluate<T: TrainScalar>(logits: UnsafePointer<T>, rows: Int, vocab: Int, teacher: UnsafePointer<T>?,
                                         targets: UnsafePointer<Int32>?, weights: LossWeights,
                                         dLogits: UnsafeMutablePointer<T>?, threads: Int) -> LossValue {
        var kl = [Double](repeating: 0, count: rows), ce = kl, same = kl
        let s = SendablePointer(logits), out = dLogits.map { SendablePointer($0) }
        let tp = teacher.map { SendablePointer($0) }, tg = targets.map { SendablePointer($0) }
        let invRows = 1 / Double(max(1, rows))
        kl.withUnsafeMutableBufferPointer { klb in
            ce.withUnsafeMutableBufferPointer { ceb in
                same.withUnsafeMutableBufferPointer { sb in
                    let klp = SendablePointer(klb.baseAddress!), cep = SendablePointer(ceb.baseAddress!), sp = SendablePointer(sb.baseAddress!)
                    Parallel.forRanges(rows, threads: threads, minPerThread: 8) { range in
                        let scratch = UnsafeMutablePointer<Double>.allocate(capacity: 5 * vocab)
                        defer { scratch.deallocate() }
                        let ls = scratch, lt = scratch + vocab, ps = scratch + 2 * vocab, pt = scratch + 3 * vocab, row = scratch + 4 * vocab
                        for r in range {
                            // log p in ls/lt, p in ps/pt (one exp per entry).
                            let sArgmax = logSoftmax(s.base + r * vocab, vocab, into: ls, probabilities: ps, scratch: row)
                            var tArgmax = -1
                            if let tp { tArgmax = logSoftmax(tp.base + r * vocab, vocab, into: lt, probabilities: pt, scratch: row) }
                            if tp != nil {
                                var k = 0.0
                                for v in 0..<vocab { k += pt[v] * (lt[v] - ls[v]) }
                                klp[r] = k
                                sp[r] = sArgmax == tArgmax ? 1 : 0
                            }
                            if let tg { cep[r] = -ls[Int(tg[r])] }
                            guard let out else { continue }
                            let o = out.base + r * vocab
                            let target = tg.map { Int($0[r]) } ?? -1
                            for v in 0..<vocab {
                                var g = 0.0
                                if tp != nil { g += weights.kd * (ps[v] - pt[v]) }
                                if tg != nil { g += weights.ce * (ps[v] - (v == target ? 1 : 0)) }
                                o[v] = T(g * invRows)
                            }
                        }
                    }
                }
            }
        }
        let klMean = kl.reduce(0, +) * invRows, ceMean = ce.reduce(0, +) * invRows
        return LossValue(total: (teacher != nil ? weights.kd * klMean : 0) + (targets != nil ? weights.ce * ceMean : 0),
                         kl: klMean, ce: ceMean, sameTop: teacher != nil ? same.reduce(0, +) * invRows : 0)
    }

    /// log-softmax and softmax of one row in Double; returns the index of the largest logit (first on ties).
    /// `scratch` holds the row widened to Double.
    private static func logSoftmax<T: TrainScalar>(_ x: UnsafePointer<T>, _ n: Int, into out: UnsafeMutablePointer<Double>,
                                                   probabilities p: UnsafeMutablePointer<Double>,
                                                   scratch: UnsafeMutablePointer<Double>) -> Int {
        for i in 0..<n { scratch[i] = Double(x[i]) }
        return Kernels.softmaxAndLogs(scratch, count: n, logs: out, probabilities: p)
    }
}
