import Foundation
import TensorCore

/// Scalar reference twins of every fast kernel: plain loops, Double accumulation where it matters, no SIMD,
/// no threads. Tests compare the fast kernels against these.
public enum Reference {
    /// out[m, n] = sum_k x[m, k] * w[n, k] + bias[n]
    public static func matmulNT(x: UnsafePointer<Float>, m: Int, k: Int, weight: WeightRef, n: Int,
                                bias: UnsafePointer<Float>?, out: UnsafeMutablePointer<Float>) {
        for i in 0..<m {
            for j in 0..<n {
                var acc: Double = 0
                for kk in 0..<k { acc += Double(x[i * k + kk]) * Double(weight.element(j * k + kk)) }
                out[i * n + j] = Float(acc) + (bias?[j] ?? 0)
            }
        }
    }

    /// y = x / sqrt(mean(x^2) + eps) * weight, per row of `dim`.
    public static func rmsNorm(x: UnsafePointer<Float>, weight: UnsafePointer<Float>, rows: Int, dim: Int, eps: Float,
                               out: UnsafeMutablePointer<Float>) {
        for r in 0..<rows {
            var ss: Double = 0
            for i in 0..<dim { ss += Double(x[r * dim + i]) * Double(x[r * dim + i]) }
            let inv = Float(1.0 / (ss / Double(dim) + Double(eps)).squareRoot())
            for i in 0..<dim { out[r * dim + i] = x[r * dim + i] * inv * weight[i] }
        }
    }

    /// Negative log-likelihood of `target` under softmax(logits): max subtraction, libm exp, Double sum.
    public static func negativeLogLikelihood(_ logits: UnsafePointer<Float>, vocab: Int, target: Int) -> Double {
        var mx = logits[0]
        for i in 1..<vocab where logits[i] > mx { mx = logits[i] }
        var s: Double = 0
        for i in 0..<vocab { s += exp(Double(logits[i] - mx)) }
        return -(Double(logits[target] - mx) - log(s))
    }

    /// log softmax of a Float row in Double (max subtraction, libm exp).
    public static func logSoftmax(_ x: UnsafePointer<Float>, count: Int, into out: UnsafeMutablePointer<Double>) {
        var mx = x[0]
        for i in 1..<count where x[i] > mx { mx = x[i] }
        var s: Double = 0
        for i in 0..<count { s += exp(Double(x[i] - mx)) }
        let lse = Double(mx) + log(s)
        for i in 0..<count { out[i] = Double(x[i]) - lse }
    }

    /// In-place softmax over each row of `cols`.
    public static func softmax(_ x: UnsafeMutablePointer<Float>, rows: Int, cols: Int) {
        for r in 0..<rows {
            let p = x + r * cols
            var mx = -Float.infinity
            for i in 0..<cols { mx = max(mx, p[i]) }
            var s: Double = 0
            for i in 0..<cols { let e = exp(p[i] - mx); p[i] = e; s += Double(e) }
            for i in 0..<cols { p[i] = Float(Double(p[i]) / s) }
        }
    }

    /// gate[i] = silu(gate[i]) * up[i]
    public static func swiglu(gate: UnsafeMutablePointer<Float>, up: UnsafePointer<Float>, count: Int) {
        for i in 0..<count { let g = gate[i]; gate[i] = g / (1 + exp(-g)) * up[i] }
    }

    /// Rotary embedding, Hugging Face "rotate_half" layout: within each head the pairs are (i, i + headDim/2),
    /// frequency theta^(-2i/headDim). `x` is [rows, heads * headDim]; row r sits at position positions[r].
    public static func rope(_ x: UnsafeMutablePointer<Float>, rows: Int, heads: Int, headDim: Int,
                            positions: UnsafePointer<Int32>, theta: Float) {
        let freqs = (0..<(headDim / 2)).map { 1.0 / pow(Double(theta), Double(2 * $0) / Double(headDim)) }
        rope(x, rows: rows, heads: heads, headDim: headDim, positions: positions, frequencies: freqs)
    }

    /// Rotary embedding with explicit inverse frequencies (headDim/2 of them, radians per position).
    public static func rope(_ x: UnsafeMutablePointer<Float>, rows: Int, heads: Int, headDim: Int,
                            positions: UnsafePointer<Int32>, frequencies: [Double]) {
        let half = headDim / 2
        for r in 0..<rows {
            let pos = Double(positions[r])
            for h in 0..<heads {
                let p = x + r * heads * headDim + h * headDim
                for i in 0..<half {
                    let angle = pos * frequencies[i]
                    let c = Float(cos(angle)), s = Float(sin(angle))
                    let a = p[i], b = p[i + half]
                    p[i] = a * c - b * s
                    p[i + half] = a * s + b * c
                }
            }
        }
    }

    /// Causal grouped-query attention for one sequence.
    /// q: [tokens, nHeads*headDim] at positions start..<start+tokens; keys/values: [start+tokens, nKV*headDim]
    /// (the cache, including these tokens). out: [tokens, nHeads*headDim]. Scale 1/sqrt(headDim).
    /// window: sliding-window attention, the query at absolute position i sees keys j with i - window < j <= i, so
    /// at most `window` keys counting itself. That is transformers' sdpa/eager mask (masking_utils.py:
    /// sliding_window_overlay, kv_idx > q_idx - sliding_window, AND-ed with the causal kv_idx <= q_idx; the same as
    /// the older _prepare_4d_causal_attention_mask_with_cache_position in modeling_mistral / modeling_qwen2).
    public static func attention(q: UnsafePointer<Float>, keys: UnsafePointer<Float>, values: UnsafePointer<Float>,
                                 tokens: Int, start: Int, nHeads: Int, nKVHeads: Int, headDim: Int, window: Int? = nil,
                                 out: UnsafeMutablePointer<Float>) {
        let group = nHeads / nKVHeads
        let scale = 1 / Float(headDim).squareRoot()
        let kvStride = nKVHeads * headDim
        for t in 0..<tokens {
            let i = start + t
            var visible: [Int] = []
            for j in 0...i where window == nil || j > i - window! { visible.append(j) }
            for h in 0..<nHeads {
                let kvh = h / group
                var scores = [Float](repeating: 0, count: visible.count)
                for (n, j) in visible.enumerated() {
                    var d: Double = 0
                    for c in 0..<headDim { d += Double(q[t * nHeads * headDim + h * headDim + c]) * Double(keys[j * kvStride + kvh * headDim + c]) }
                    scores[n] = Float(d) * scale
                }
                scores.withUnsafeMutableBufferPointer { softmax($0.baseAddress!, rows: 1, cols: visible.count) }
                for c in 0..<headDim {
                    var acc: Double = 0
                    for (n, j) in visible.enumerated() { acc += Double(scores[n]) * Double(values[j * kvStride + kvh * headDim + c]) }
                    out[t * nHeads * headDim + h * headDim + c] = Float(acc)
                }
            }
        }
    }

    /// Bidirectional attention inside packed sequences (twin of Kernels.attentionBidirectional), Double sums.
    public static func attentionBidirectional(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                              out: UnsafeMutablePointer<Float>, offsets: [Int], heads: Int, headDim: Int) {
        let stride = heads * headDim
        let scale = 1 / Double(headDim).squareRoot()
        for s in 0..<(offsets.count - 1) {
            let start = offsets[s], len = offsets[s + 1] - start
            for h in 0..<heads {
                for i in 0..<len {
                    let qi = q + (start + i) * stride + h * headDim
                    var scores = [Double](repeating: 0, count: len)
                    for j in 0..<len {
                        let kj = k + (start + j) * stride + h * headDim
                        var d = 0.0
                        for c in 0..<headDim { d += Double(qi[c]) * Double(kj[c]) }
                        scores[j] = d * scale
                    }
                    let mx = scores.max() ?? 0
                    let e = scores.map { Foundation.exp($0 - mx) }
                    let sum = e.reduce(0, +)
                    for c in 0..<headDim {
                        var acc = 0.0
                        for j in 0..<len { acc += e[j] / sum * Double(v[(start + j) * stride + h * headDim + c]) }
                        out[(start + i) * stride + h * headDim + c] = Float(acc)
                    }
                }
            }
        }
    }

    /// y = (x - mean) / sqrt(var + eps) * gamma + beta, per row (biased variance, as torch.nn.LayerNorm).
    public static func layerNorm(x: UnsafePointer<Float>, gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>,
                                 rows: Int, dim: Int, eps: Float, out: UnsafeMutablePointer<Float>) {
        for r in 0..<rows {
            var mean: Double = 0
            for i in 0..<dim { mean += Double(x[r * dim + i]) }
            mean /= Double(dim)
            var v: Double = 0
            for i in 0..<dim { let d = Double(x[r * dim + i]) - mean; v += d * d }
            let inv = 1 / (v / Double(dim) + Double(eps)).squareRoot()
            for i in 0..<dim { out[r * dim + i] = Float((Double(x[r * dim + i]) - mean) * inv) * gamma[i] + beta[i] }
        }
    }

    /// Exact GELU: x * 0.5 * (1 + erf(x / sqrt 2)), in place, written as x * 0.5 * erfc(-x / sqrt 2) (the same
    /// function) so that 1 + erf does not cancel for negative x.
    public static func gelu(_ x: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count { let v = Double(x[i]); x[i] = Float(v * 0.5 * erfc(-v / 2.0.squareRoot())) }
    }
}

extension Reference {
    /// W4A8 (see W4A8.swift), plain loops: activations quantized per row and 32-input block, exact integer block
    /// dots, then the float block formula in the fast kernel's order of operations (so the two agree to rounding).
    /// `codesOut` (optional, [m, k] in packed input order) receives the activation codes.
    public static func matmulW4A8(x: UnsafePointer<Float>, m: Int, weight w: QuantizedMatrix, bias: UnsafePointer<Float>?,
                                  out: UnsafeMutablePointer<Float>, codesOut: UnsafeMutablePointer<Int8>? = nil) {
        let k = w.inFeatures, n = w.outFeatures, blocks = k / 32
        var groupOf = [Int](repeating: 0, count: blocks)
        for g in 0..<w.nGroups { for b in Int(w.groupStarts[g]) / 32..<Int(w.groupStarts[g + 1]) / 32 { groupOf[b] = g } }
        var q = [Int](repeating: 0, count: k), d = [Float](repeating: 0, count: blocks), e = d
        for i in 0..<m {
            for b in 0..<blocks {
                var xs = [Float](repeating: 0, count: 32), amax: Float = 0
                for j in 0..<32 {
                    let col = b * 32 + j
                    xs[j] = x[i * k + (w.inputPermutation.map { Int($0[col]) } ?? col)]
                    amax = max(amax, abs(xs[j]))
                }
                d[b] = amax / 127
                let id: Float = d[b] != 0 ? 1 / d[b] : 0
                var sum = 0
                for j in 0..<32 {
                    q[b * 32 + j] = Int((xs[j] * id).rounded(.toNearestOrEven))
                    sum += q[b * 32 + j]
                    codesOut?[i * k + b * 32 + j] = Int8(q[b * 32 + j])
                }
                e[b] = d[b] * Float(sum)
            }
            for r in 0..<n {
                var y: Float = 0
                for b in 0..<blocks {
                    var dot = 0
                    for j in b * 32..<(b + 1) * 32 { dot += Int(w.code(row: r, column: j)) * q[j] }
                    let g = groupOf[b]
                    var t = Float(dot) * d[b]
                    t = t.addingProduct(-w.zeros[r * w.nGroups + g], e[b])
                    y = y.addingProduct(t, w.scales[r * w.nGroups + g])
                }
                out[i * n + r] = y + (bias?[r] ?? 0)
            }
        }
    }
}
