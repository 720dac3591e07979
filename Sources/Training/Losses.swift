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
    /// Loss of `logits` [rows, vocab] and, when `dLogits` is given, its gradient with respect to them. The teacher
    /// is given as full logits or as its top k (TeacherTopK), not both.
    static func evaluate<T: TrainScalar>(logits: UnsafePointer<T>, rows: Int, vocab: Int, teacher: UnsafePointer<T>?,
                                         topK: TeacherTopK? = nil, targets: UnsafePointer<Int32>?, weights: LossWeights,
                                         dLogits: UnsafeMutablePointer<T>?, threads: Int) -> LossValue {
        precondition(teacher == nil || topK == nil, "one teacher form")
        let distils = teacher != nil || topK != nil
        var kl = [Double](repeating: 0, count: rows), ce = kl, same = kl
        let s = SendablePointer(logits), out = dLogits.map { SendablePointer($0) }
        let tp = teacher.map { SendablePointer($0) }, tg = targets.map { SendablePointer($0) }
        let invRows = 1 / Double(max(1, rows))
        kl.withUnsafeMutableBufferPointer { klb in
            ce.withUnsafeMutableBufferPointer { ceb in
                same.withUnsafeMutableBufferPointer { sb in
                    let klp = SendablePointer(klb.baseAddress!), cep = SendablePointer(ceb.baseAddress!), sp = SendablePointer(sb.baseAddress!)
                    Parallel.forRanges(rows, threads: threads, minPerThread: 8) { range in
                        ScratchPool.shared.withBuffer(of: Double.self, count: 5 * vocab) { scratch in
                            let ls = scratch, lt = scratch + vocab, ps = scratch + 2 * vocab, pt = scratch + 3 * vocab, row = scratch + 4 * vocab
                            // Without a teacher the gradient loop still reads pt (vectorized, then blended away): garbage
                            // there can be denormal and stall every subtraction.
                            if !distils { pt.initialize(repeating: 0, count: vocab) }
                            for r in range {
                                // log p in ls/lt, p in ps/pt (one exp per entry).
                                let sArgmax = logSoftmax(s.base + r * vocab, vocab, into: ls, probabilities: ps, scratch: row)
                                if let tp {
                                    let tArgmax = logSoftmax(tp.base + r * vocab, vocab, into: lt, probabilities: pt, scratch: row)
                                    var k = 0.0
                                    for v in 0..<vocab { k += pt[v] * (lt[v] - ls[v]) }
                                    klp[r] = k
                                    sp[r] = sArgmax == tArgmax ? 1 : 0
                                } else if let topK {
                                    // pt <- the target p~ (see TeacherTopK); the KL over the k tokens and "any other".
                                    let (k, top) = binnedTarget(topK, row: r, vocab: vocab, studentProbabilities: ps, into: pt)
                                    var sum = 0.0
                                    for j in 0..<topK.k {
                                        let v = Int(topK.indices[r * topK.k + j])
                                        sum += pt[v] * (Double(topK.logProbs[r * topK.k + j]) - ls[v])
                                    }
                                    klp[r] = sum + k
                                    sp[r] = sArgmax == top ? 1 : 0
                                }
                                if let tg { cep[r] = -ls[Int(tg[r])] }
                                guard let out else { continue }
                                let o = out.base + r * vocab
                                let target = tg.map { Int($0[r]) } ?? -1
                                for v in 0..<vocab {
                                    var g = 0.0
                                    if distils { g += weights.kd * (ps[v] - pt[v]) }
                                    if tg != nil { g += weights.ce * (ps[v] - (v == target ? 1 : 0)) }
                                    o[v] = T(g * invRows)
                                }
                            }
                        }
                    }
                }
            }
        }
        let klMean = kl.reduce(0, +) * invRows, ceMean = ce.reduce(0, +) * invRows
        return LossValue(total: (distils ? weights.kd * klMean : 0) + (targets != nil ? weights.ce * ceMean : 0),
                         kl: klMean, ce: ceMean, sameTop: distils ? same.reduce(0, +) * invRows : 0)
    }

    /// One row's gradient target against a top-k teacher: p~_v = p_v on the k tokens, r q_v / q_rest elsewhere (r the
    /// teacher's remaining mass, q_rest the student's on the same tokens). Returns the "any other" term of the KL,
    /// r (log r - log q_rest), and the teacher's top token.
    private static func binnedTarget(_ t: TeacherTopK, row r: Int, vocab: Int, studentProbabilities ps: UnsafePointer<Double>,
                                     into target: UnsafeMutablePointer<Double>) -> (restTerm: Double, top: Int) {
        for v in 0..<vocab { target[v] = -1 }
        for j in 0..<t.k { let v = Int(t.indices[r * t.k + j]); target[v] = Foundation.exp(Double(t.logProbs[r * t.k + j])) }
        var qRest = 0.0
        for v in 0..<vocab where target[v] < 0 { qRest += ps[v] }
        let restLog = Double(t.restLogProb[r]), rest = restLog == -.infinity ? 0 : Foundation.exp(restLog)
        // The student's own mass there cannot be 0 (a softmax), but may underflow.
        let q = max(qRest, Double.leastNormalMagnitude)
        for v in 0..<vocab where target[v] < 0 { target[v] = rest * ps[v] / q }
        return (rest > 0 ? rest * (restLog - Foundation.log(q)) : 0, Int(t.indices[r * t.k]))
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
