import XCTest
import Foundation
import Kernels
import TensorCore
import TestSupport

/// Norms, softmax, activations, RoPE and attention against their scalar reference twins on odd sizes.
final class ElementwiseTests: XCTestCase {
    let sizes = [1, 7, 8, 33, 172, 513]

    func testRMSNorm() {
        var rng = SplitMix64(seed: 11)
        for dim in sizes {
            let rows = 3
            let x = rng.floats(rows * dim, in: -3...3), w = rng.floats(dim)
            var f = [Float](repeating: .nan, count: rows * dim), r = f
            Kernels.rmsNorm(x: x, weight: w, rows: rows, dim: dim, eps: 1e-5, out: &f)
            Reference.rmsNorm(x: x, weight: w, rows: rows, dim: dim, eps: 1e-5, out: &r)
            // Output magnitudes are O(1-3): 1e-6 is a few float ulps.
            XCTAssertLessThanOrEqual(maxAbsDiff(f, r), 1e-6, "dim \(dim)")
        }
    }

    func testLayerNormWithLargeMean() {
        var rng = SplitMix64(seed: 12)
        for dim in sizes where dim > 1 {
            let rows = 3
            let x = rng.floats(rows * dim, in: -2...2).map { $0 + 50 }  // a large mean exercises the two-pass variance
            let g = rng.floats(dim), b = rng.floats(dim)
            var f = [Float](repeating: .nan, count: rows * dim), r = f
            Kernels.layerNorm(x: x, gamma: g, beta: b, rows: rows, dim: dim, eps: 1e-12, out: &f)
            Reference.layerNorm(x: x, gamma: g, beta: b, rows: rows, dim: dim, eps: 1e-12, out: &r)
            // x - mean loses log2(50/2) bits of x's ulp: ~3e-6 of the normalized value.
            XCTAssertLessThanOrEqual(maxAbsDiff(f, r), 2e-5, "dim \(dim)")
        }
    }

    /// Relative error of every probability below 2e-6 (vectorized exp is ~1e-7 relative; the normalization adds
    /// an ulp or two). Masked (-inf) entries give exactly 0.
    func testSoftmax() {
        var rng = SplitMix64(seed: 13)
        for cols in sizes + [32000] {
            let rows = 2
            var x = rng.floats(rows * cols, in: -40...40)
            if cols > 3 { x[1] = -.infinity; x[cols + 2] = -.infinity }
            var f = x, r = x
            Kernels.softmax(&f, rows: rows, cols: cols)
            Reference.softmax(&r, rows: rows, cols: cols)
            for i in f.indices {
                XCTAssertLessThanOrEqual(abs(f[i] - r[i]), 2e-6 * r[i] + 1e-38, "cols \(cols) index \(i)")
            }
            if cols > 3 { XCTAssertEqual(f[1], 0); XCTAssertEqual(f[cols + 2], 0) }
        }
    }

    /// Small logit differences must survive: a peaked row against numpy-style float64 softmax.
    func testSoftmaxSumsToOne() {
        var rng = SplitMix64(seed: 14)
        var x = rng.floats(1000, in: -5...5)
        Kernels.softmax(&x, rows: 1, cols: 1000)
        XCTAssertEqual(x.reduce(0.0) { $0 + Double($1) }, 1, accuracy: 1e-5)
    }

    /// silu(g)·up over g in [-90, 90] (exp from underflow to overflow); relative error < 2e-6.
    func testSwiGLU() {
        var rng = SplitMix64(seed: 15)
        for count in sizes + [40_000] {
            let g = rng.floats(count, in: -90...90), u = rng.floats(count)
            var f = g, r = g
            Kernels.swiglu(gate: &f, up: u, count: count, threads: 2)
            Reference.swiglu(gate: &r, up: u, count: count)
            for i in f.indices {
                XCTAssertLessThanOrEqual(abs(f[i] - r[i]), 2e-6 * abs(r[i]) + 1e-37, "count \(count) g \(g[i])")
            }
        }
    }

    /// Exact GELU: the erfc formula has fractional error < 1.2e-7, so negative x keep relative accuracy and
    /// positive x are off by at most ~1e-7·x. exp(-x²/2) of a Float x carries a further relative error of about
    /// x²·6e-8 (the rounding of x²/2 near -40 is 4e-6 absolute in the exponent), hence the x² term.
    func testGELU() {
        var rng = SplitMix64(seed: 16)
        for count in sizes + [30_000] {
            let x = rng.floats(count, in: -12...12)
            var f = x, r = x
            Kernels.gelu(&f, count: count, threads: 2)
            Reference.gelu(&r, count: count)
            for i in f.indices {
                let tol = (1e-6 + 1.2e-7 * x[i] * x[i]) * abs(r[i]) + (x[i] > 0 ? 1e-7 * x[i] : 1e-38)
                XCTAssertLessThanOrEqual(abs(f[i] - r[i]), tol, "x \(x[i])")
            }
        }
        var special: [Float] = [0, -0.0, 1e-30, -1e-30, 3, -3, 100, -100]
        var ref = special
        Kernels.gelu(&special, count: special.count)
        Reference.gelu(&ref, count: ref.count)
        for i in special.indices { XCTAssertEqual(special[i], ref[i], accuracy: 1e-6 * max(1, abs(ref[i]))) }
    }

    /// The vectorised full-vocabulary NLL and log-softmax (Double exp by Cody-Waite reduction and a Taylor polynomial) against
    /// the scalar libm reference: relative difference below 1e-13 on odd sizes, Llama-2-sized vocabularies, wide
    /// and narrow logit ranges, masked (-inf) entries and a target far below the maximum.
    func testNegativeLogLikelihood() {
        var rng = SplitMix64(seed: 23)
        for vocab in [1, 7, 8, 33, 513, 32000] {
            for spread: Float in [0.01, 5, 60] {
                var x = rng.floats(vocab, in: -spread...spread)
                if vocab > 8 { x[3] = -.infinity; x[vocab - 2] = 1e4 }
                for target in Set([0, vocab / 2, vocab - 1]) where x[target].isFinite {
                    let fast = Kernels.negativeLogLikelihood(x, vocab: vocab, target: target)
                    let ref = Reference.negativeLogLikelihood(x, vocab: vocab, target: target)
                    XCTAssertEqual(fast, ref, accuracy: 1e-13 * max(1, abs(ref)), "vocab \(vocab) spread \(spread) target \(target)")
                    XCTAssertTrue(fast.isFinite && fast >= 0, "vocab \(vocab)")
                }
                var a = [Double](repeating: 0, count: vocab), b = a
                Kernels.logSoftmax(x, count: vocab, into: &a)
                Reference.logSoftmax(x, count: vocab, into: &b)
                for i in 0..<vocab where b[i].isFinite {
                    XCTAssertEqual(a[i], b[i], accuracy: 1e-13 * max(1, abs(b[i])), "logSoftmax vocab \(vocab) [\(i)]")
                }
                XCTAssertEqual(a[3 % vocab].isInfinite, b[3 % vocab].isInfinite)
            }
        }
        // exp itself over its whole range, against libm: within 4 ulp (2 ulp for the polynomial and rounding,
        // the reduction's last bit).
        for i in 0...20_000 {
            let v = -708 * Double(i) / 20_000
            let e = Kernels.expForTesting(v)
            XCTAssertEqual(e, Foundation.exp(v), accuracy: 4 * Foundation.exp(v).ulp, "exp(\(v))")
        }
        XCTAssertEqual(Kernels.expForTesting(-1000), Foundation.exp(-708), accuracy: 4 * Foundation.exp(-708).ulp, "clamped below -708")
        XCTAssertEqual(Kernels.expForTesting(0), 1)
    }

    /// The distillation loss's row softmax: against libm's exp and log in a plain loop, on rows whose lengths
    /// leave every tail size, with a masked (-inf) entry, ties for the largest value and a 60-nat spread.
    func testSoftmaxAndLogsMatchLibm() {
        var rng = SplitMix64(seed: 23)
        for n in [1, 3, 8, 13, 512, 517] {
            var x = rng.floats(n, in: -30...30).map(Double.init)
            if n > 4 { x[2] = -.infinity; x[3] = x.max()!; x[n - 1] = x[3] }
            var logs = [Double](repeating: .nan, count: n), p = logs
            let arg = Kernels.softmaxAndLogs(x, count: n, logs: &logs, probabilities: &p)
            let mx = x.max()!
            XCTAssertEqual(arg, x.firstIndex(of: mx), "first largest, n \(n)")
            let sum = x.reduce(0.0) { $0 + Foundation.exp($1 - mx) }
            for i in 0..<n {
                let refP = Foundation.exp(x[i] - mx) / sum, refLog = x[i] - mx - Foundation.log(sum)
                XCTAssertEqual(p[i], refP, accuracy: 1e-15 * max(refP, 1e-300) + 1e-300, "p[\(i)] n \(n)")
                if refLog.isFinite {
                    XCTAssertEqual(logs[i], refLog, accuracy: 1e-14 * max(1, abs(refLog)), "log p[\(i)] n \(n)")
                } else {
                    XCTAssertEqual(logs[i], -.infinity, "masked entry, n \(n)")
                }
            }
        }
    }

    func testRoPE() {
        var rng = SplitMix64(seed: 17)
        for headDim in [2, 6, 16, 64, 128] {
            for theta: Float in [10_000, 500_000] {
                let rows = 5, heads = 3
                let x = rng.floats(rows * heads * headDim, in: -2...2)
                let pos: [Int32] = [0, 1, 77, 4095, 9000]
                var r = x
                Reference.rope(&r, rows: rows, heads: heads, headDim: headDim, positions: pos, theta: theta)
                var f = x
                Kernels.rope(&f, rows: rows, heads: heads, headDim: headDim, positions: pos, theta: theta)
                // Same Double angles, same unfused Float arithmetic: equal up to an ulp.
                XCTAssertLessThanOrEqual(maxAbsDiff(f, r), 1e-6, "theta-path headDim \(headDim)")
                let table = RopeTable(headDim: headDim, theta: theta, maxPositions: 5000)  // 9000 falls outside
                var t = x
                Kernels.rope(&t, rows: rows, heads: heads, headDim: headDim, positions: pos, table: table)
                XCTAssertLessThanOrEqual(maxAbsDiff(t, r), 1e-6, "table-path headDim \(headDim)")
            }
        }
    }

    func testAttention() {
        var rng = SplitMix64(seed: 18)
        for (nHeads, nKV) in [(4, 4), (4, 2), (4, 1), (3, 1)] {
            for headDim in [6, 8, 16, 20, 64] {
                for (tokens, start) in [(1, 0), (1, 40), (7, 0), (33, 5), (20, 100)] {
                    for threads in [1, 2] {
                        let total = start + tokens
                        let q = rng.floats(tokens * nHeads * headDim, in: -2...2)
                        let k = rng.floats(total * nKV * headDim, in: -2...2)
                        let v = rng.floats(total * nKV * headDim)
                        var f = [Float](repeating: .nan, count: tokens * nHeads * headDim), r = f
                        Kernels.attention(q: q, keys: k, values: v, tokens: tokens, start: start, nHeads: nHeads,
                                          nKVHeads: nKV, headDim: headDim, out: &f, threads: threads)
                        Reference.attention(q: q, keys: k, values: v, tokens: tokens, start: start, nHeads: nHeads,
                                            nKVHeads: nKV, headDim: headDim, out: &r)
                        // Outputs are convex combinations of values in [-1, 1].
                        XCTAssertLessThanOrEqual(maxAbsDiff(f, r), 2e-6,
                                                 "heads \(nHeads)/\(nKV) hd \(headDim) t \(tokens) s \(start) th \(threads)")
                    }
                }
            }
        }
    }

    /// Sliding-window attention: fast vs scalar reference on odd sizes, prefill from 0, chunked prefill and decode
    /// (start > 0), windows from 1 to past the sequence.
    func testAttentionWindow() {
        var rng = SplitMix64(seed: 21)
        let cases: [(tokens: Int, start: Int)] = [(1, 0), (2, 0), (3, 0), (5, 0), (15, 0), (16, 0), (17, 0), (33, 0),
                                                  (64, 0), (97, 0), (130, 0), (1, 1), (1, 4), (1, 17), (1, 40),
                                                  (1, 129), (7, 9), (20, 100), (33, 5)]
        for (nHeads, nKV, headDim) in [(4, 2, 8), (3, 1, 20), (2, 2, 64)] {
            for (tokens, start) in cases {
                let total = start + tokens
                let q = rng.floats(tokens * nHeads * headDim, in: -2...2)
                let k = rng.floats(total * nKV * headDim, in: -2...2)
                let v = rng.floats(total * nKV * headDim)
                var full = [Float](repeating: .nan, count: tokens * nHeads * headDim)
                Reference.attention(q: q, keys: k, values: v, tokens: tokens, start: start, nHeads: nHeads,
                                    nKVHeads: nKV, headDim: headDim, out: &full)
                for window in [1, 3, 16, 17, total, total + 5] {
                    var r = [Float](repeating: .nan, count: tokens * nHeads * headDim)
                    Reference.attention(q: q, keys: k, values: v, tokens: tokens, start: start, nHeads: nHeads,
                                        nKVHeads: nKV, headDim: headDim, window: window, out: &r)
                    for threads in [1, 2] {
                        var f = [Float](repeating: .nan, count: tokens * nHeads * headDim)
                        Kernels.attention(q: q, keys: k, values: v, tokens: tokens, start: start, nHeads: nHeads,
                                          nKVHeads: nKV, headDim: headDim, window: window, out: &f, threads: threads)
                        XCTAssertLessThanOrEqual(maxAbsDiff(f, r), 2e-6,
                                                 "heads \(nHeads)/\(nKV) hd \(headDim) t \(tokens) s \(start) w \(window) th \(threads)")
                    }
                    // The reference itself: a window covering everything is plain causal attention; a smaller one
                    // changes the rows that lose keys; window 1 returns each token's own value.
                    if window >= total {
                        XCTAssertEqual(r, full)
                    } else if total - 1 >= window && total > 1 {
                        XCTAssertGreaterThan(maxAbsDiff(r, full), 1e-4, "window \(window) t \(tokens) s \(start)")
                    }
                    if window == 1 {
                        for t in 0..<tokens {
                            for h in 0..<nHeads {
                                let kvh = h / (nHeads / nKV)
                                for c in 0..<headDim {
                                    XCTAssertEqual(r[(t * nHeads + h) * headDim + c], v[((start + t) * nKV + kvh) * headDim + c],
                                                   accuracy: 1e-6)
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// BERT-style packed sequences: each row attends to its own sequence only; odd lengths and head sizes.
    func testAttentionBidirectional() {
        var rng = SplitMix64(seed: 20)
        for (heads, headDim) in [(1, 8), (3, 6), (12, 32), (2, 64), (2, 20)] {
            for lengths in [[1], [5], [17, 0, 3], [33, 64, 2, 7], [130]] {
                for threads in [1, 2] {
                    var offsets = [0]
                    for l in lengths { offsets.append(offsets.last! + l) }
                    let n = offsets.last! * heads * headDim
                    let q = rng.floats(n, in: -2...2), k = rng.floats(n, in: -2...2), v = rng.floats(n)
                    var f = [Float](repeating: .nan, count: n), r = f
                    Kernels.attentionBidirectional(q: q, k: k, v: v, out: &f, offsets: offsets, heads: heads,
                                                   headDim: headDim, threads: threads)
                    Reference.attentionBidirectional(q: q, k: k, v: v, out: &r, offsets: offsets, heads: heads, headDim: headDim)
                    XCTAssertLessThanOrEqual(maxAbsDiff(f, r), 2e-6, "heads \(heads) hd \(headDim) lengths \(lengths) th \(threads)")
                }
            }
        }
    }

    /// A long prefill (ctx 512, 8 heads of 64) exercises the threaded cost-balanced split.
    func testAttentionLong() {
        var rng = SplitMix64(seed: 19)
        let tokens = 300, nHeads = 8, nKV = 2, hd = 64
        let q = rng.floats(tokens * nHeads * hd, in: -2...2)
        let k = rng.floats(tokens * nKV * hd, in: -2...2), v = rng.floats(tokens * nKV * hd)
        var f = [Float](repeating: .nan, count: tokens * nHeads * hd), r = f
        Kernels.attention(q: q, keys: k, values: v, tokens: tokens, start: 0, nHeads: nHeads, nKVHeads: nKV,
                          headDim: hd, out: &f, threads: 2)
        Reference.attention(q: q, keys: k, values: v, tokens: tokens, start: 0, nHeads: nHeads, nKVHeads: nKV,
                            headDim: hd, out: &r)
        XCTAssertLessThanOrEqual(maxAbsDiff(f, r), 2e-6)
    }
}
