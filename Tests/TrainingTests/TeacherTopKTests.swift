import Foundation
import Models
import TensorCore
import TestSupport
import Testing
@testable import Training

/// The compact teacher (its top k tokens plus the remaining mass): selection against a sort, the loss against the
/// full-logit loss at k = vocab and against its own definition, the gradient against central differences.
@Suite struct TeacherTopKTests {
    /// Rows with ties (values on a coarse grid) and spread logits.
    static func rows(_ rows: Int, _ vocab: Int, seed: UInt64) -> [Float] {
        var rng = SplitMix64(seed: seed)
        return (0..<(rows * vocab)).map { i in
            i % 3 == 0 ? Float(rng.index(8)) / 2 : rng.signedUnitFloat() * 6
        }
    }

    static func select(_ x: [Float], rows: Int, vocab: Int, k: Int) -> (ids: [Int32], lp: [Float], rest: [Float]) {
        var ids = [Int32](repeating: 0, count: rows * k), lp = [Float](repeating: 0, count: rows * k)
        var rest = [Float](repeating: 0, count: rows)
        TeacherTopK.select(logits: x, rows: rows, vocab: vocab, k: k, indices: &ids, logProbs: &lp, restLogProb: &rest, threads: 2)
        return (ids, lp, rest)
    }

    /// The k largest by a stable descending sort of (value, id); log-probabilities from a Double log-softmax; the
    /// rest as log(sum of the other tokens' probabilities).
    @Test func selectionMatchesASortedReference() {
        let (rows, vocab) = (7, 37)
        let x = Self.rows(rows, vocab, seed: 5)
        for k in [1, 4, 36, 37] {
            let got = Self.select(x, rows: rows, vocab: vocab, k: k)
            for r in 0..<rows {
                let row = Array(x[(r * vocab)..<((r + 1) * vocab)])
                let order = row.indices.sorted { row[$0] > row[$1] || (row[$0] == row[$1] && $0 < $1) }
                let top = Array(order.prefix(k))
                #expect(got.ids[(r * k)..<((r + 1) * k)].map(Int.init) == top, "k \(k) row \(r)")
                let m = Double(row.max()!)
                let lse = m + log(row.reduce(0.0) { $0 + exp(Double($1) - m) })
                for (j, v) in top.enumerated() {
                    #expect(abs(Double(got.lp[r * k + j]) - (Double(row[v]) - lse)) < 1e-6, "k \(k) row \(r) entry \(j)")
                }
                let others = order.dropFirst(k).reduce(0.0) { $0 + exp(Double(row[$1]) - lse) }
                if k == vocab {
                    #expect(got.rest[r] == -.infinity)
                } else {
                    #expect(abs(Double(got.rest[r]) - log(others)) < 1e-5, "k \(k) row \(r): rest \(got.rest[r]) vs \(log(others))")
                }
            }
        }
    }

    static func loss(_ s: [Double], teacher: [Double]?, topK: (ids: [Int32], lp: [Float], rest: [Float], k: Int)?, rows: Int, vocab: Int,
                     targets: [Int32]?, weights: LossWeights, gradient: Bool) -> (LossValue, [Double]) {
        var g = [Double](repeating: 0, count: s.count)
        let v: LossValue = s.withUnsafeBufferPointer { sp in
            g.withUnsafeMutableBufferPointer { gp in
                func run(_ t: UnsafePointer<Double>?, _ tk: TeacherTopK?) -> LossValue {
                    let tg = targets
                    return tg.map { tgv in tgv.withUnsafeBufferPointer {
                        DistillationLoss.evaluate(logits: sp.baseAddress!, rows: rows, vocab: vocab, teacher: t, topK: tk, targets: $0.baseAddress,
                                                  weights: weights, dLogits: gradient ? gp.baseAddress : nil, threads: 2)
                    } } ?? DistillationLoss.evaluate(logits: sp.baseAddress!, rows: rows, vocab: vocab, teacher: t, topK: tk, targets: nil,
                                                     weights: weights, dLogits: gradient ? gp.baseAddress : nil, threads: 2)
                }
                if let teacher { return teacher.withUnsafeBufferPointer { run($0.baseAddress, nil) } }
                let c = topK!
                return c.ids.withUnsafeBufferPointer { i in c.lp.withUnsafeBufferPointer { l in c.rest.withUnsafeBufferPointer { r in
                    run(nil, TeacherTopK(k: c.k, indices: i.baseAddress!, logProbs: l.baseAddress!, restLogProb: r.baseAddress!))
                } } }
            }
        }
        return (v, g)
    }

    /// With every token kept the compact loss is the full one (to the Float rounding of the stored log-probabilities).
    @Test func keepingEveryTokenGivesTheFullLoss() {
        let (rows, vocab) = (5, 23)
        let t = Self.rows(rows, vocab, seed: 8), s = Self.rows(rows, vocab, seed: 9).map(Double.init)
        let sel = Self.select(t, rows: rows, vocab: vocab, k: vocab)
        let w = LossWeights(kd: 1, ce: 0.25), targets: [Int32] = [1, 4, 0, 22, 7]
        let (full, gFull) = Self.loss(s, teacher: t.map(Double.init), topK: nil, rows: rows, vocab: vocab, targets: targets, weights: w, gradient: true)
        let (compact, gCompact) = Self.loss(s, teacher: nil, topK: (sel.ids, sel.lp, sel.rest, vocab), rows: rows, vocab: vocab,
                                            targets: targets, weights: w, gradient: true)
        #expect(abs(full.kl - compact.kl) < 1e-6 && abs(full.total - compact.total) < 1e-6, "\(full) vs \(compact)")
        #expect(full.sameTop == compact.sameTop)
        #expect(zip(gFull, gCompact).allSatisfy { abs($0 - $1) < 1e-7 })
    }

    /// k < vocab: the value is the KL over the k tokens and "any other", computed here from its definition; it is
    /// below the full KL (grouping outcomes cannot raise a KL); the gradient equals central differences of it.
    @Test func compactLossIsTheBinnedKLAndItsGradient() {
        let (rows, vocab, k) = (4, 19, 3)
        let t = Self.rows(rows, vocab, seed: 21), s = Self.rows(rows, vocab, seed: 22).map { Double($0) / 2 }
        let sel = Self.select(t, rows: rows, vocab: vocab, k: k)
        let w = LossWeights(kd: 1, ce: 0)
        let (v, g) = Self.loss(s, teacher: nil, topK: (sel.ids, sel.lp, sel.rest, k), rows: rows, vocab: vocab, targets: nil, weights: w, gradient: true)
        var want = 0.0
        for r in 0..<rows {
            let row = Array(s[(r * vocab)..<((r + 1) * vocab)]), m = row.max()!
            let z = row.reduce(0.0) { $0 + exp($1 - m) }
            let q = row.map { exp($0 - m) / z }
            let ids = sel.ids[(r * k)..<((r + 1) * k)].map(Int.init)
            let p = sel.lp[(r * k)..<((r + 1) * k)].map { exp(Double($0)) }
            let rest = exp(Double(sel.rest[r])), qRest = q.indices.filter { !ids.contains($0) }.reduce(0.0) { $0 + q[$1] }
            for (j, id) in ids.enumerated() { want += p[j] * log(p[j] / q[id]) }
            want += rest * log(rest / qRest)
        }
        want /= Double(rows)
        #expect(abs(v.kl - want) < 1e-9 * max(1, want), "\(v.kl) vs \(want)")
        let (full, _) = Self.loss(s, teacher: t.map(Double.init), topK: nil, rows: rows, vocab: vocab, targets: nil, weights: w, gradient: false)
        #expect(v.kl < full.kl)
        let h = 1e-5
        var worst = 0.0
        for i in stride(from: 0, to: s.count, by: 3) {
            var plus = s, minus = s
            plus[i] += h; minus[i] -= h
            let fp = Self.loss(plus, teacher: nil, topK: (sel.ids, sel.lp, sel.rest, k), rows: rows, vocab: vocab, targets: nil, weights: w, gradient: false).0.total
            let fm = Self.loss(minus, teacher: nil, topK: (sel.ids, sel.lp, sel.rest, k), rows: rows, vocab: vocab, targets: nil, weights: w, gradient: false).0.total
            worst = max(worst, abs((fp - fm) / (2 * h) - g[i]))
        }
        #expect(worst < 1e-8, "gradient vs central differences: \(worst)")
    }

    /// A run distilled from every token's kept top-k targets follows the run on the full logits (stories260K, 8 steps
    /// over 6 windows, so kept targets are reused), to the Float rounding of the stored log-probabilities.
    @Test func fineTunerWithEveryTokenKeptFollowsTheFullLogits() throws {
        let full = try FineTunerTests.tuner(steps: 8)
        let compact = try FineTunerTests.tuner(steps: 8, teacherTopK: 512)
        for _ in 0..<8 { try full.runStep(); try compact.runStep() }
        for (a, b) in zip(full.history, compact.history) {
            #expect(abs(a.loss - b.loss) < 1e-5 * a.loss && abs(a.kl - b.kl) < 1e-5 * a.kl, "step \(a.step): \(a.loss) vs \(b.loss)")
        }
        let small = try FineTunerTests.tuner(steps: 8, teacherTopK: 8)
        for _ in 0..<8 { try small.runStep() }
        #expect(small.history.allSatisfy { $0.kl.isFinite && $0.kl > 0 })
        // Step 1 scores the same parameters on the same batch: the binned KL is below the full one.
        #expect(small.history[0].kl < full.history[0].kl)
        #expect(throws: QuantKitError.self) { try FineTunerTests.tuner(teacherTopK: 513) }
        #expect(throws: QuantKitError.self) { try FineTunerTests.tuner(cacheTeacher: true, teacherTopK: 8) }
    }
}
