import Foundation
import TensorCore

/// The fast kernels (SIMD + multithreaded); each has a scalar twin in `Reference`. The signatures are the contract
/// the model code is written against.
public enum Kernels {
    /// out[m, n] = sum_k x[m, k] * w[n, k] + bias[n]; x row-major [m, k], weight [n, k] in its stored dtype.
    public static func matmulNT(x: UnsafePointer<Float>, m: Int, k: Int, weight: WeightRef, n: Int,
                                bias: UnsafePointer<Float>? = nil, out: UnsafeMutablePointer<Float>,
                                threads: Int = Parallel.defaultThreads) {
        switch weight {
        case .f32(let p): dispatchMatmul(F32Rows(p: p, k: k), x: x, m: m, k: k, n: n, bias: bias, out: out, threads: threads)
        case .f16(let p): dispatchMatmul(F16Rows(p: p, k: k), x: x, m: m, k: k, n: n, bias: bias, out: out, threads: threads)
        case .bf16(let p): dispatchMatmul(BF16Rows(p: p, k: k), x: x, m: m, k: k, n: n, bias: bias, out: out, threads: threads)
        }
    }

    /// The same product with the weight also available pre-packed: prefill-sized batches (m > 3) run on the
    /// packed panels, decode-sized ones stream the row-major weight.
    public static func matmulNT(x: UnsafePointer<Float>, m: Int, k: Int, weight: WeightRef, packed: FloatPanels,
                                n: Int, bias: UnsafePointer<Float>? = nil, out: UnsafeMutablePointer<Float>,
                                threads: Int = Parallel.defaultThreads) {
        precondition(packed.n == n && packed.k == k, "packed weight shape differs from the matmul")
        if m <= gemvMaxRows || k == 0 || n == 0 {
            matmulNT(x: x, m: m, k: k, weight: weight, n: n, bias: bias, out: out, threads: threads)
        } else if packed.isHalf {
            Gemm.run(panels: PrepackedHalfPanels(w: packed), x: x, m: m, k: k, n: n, bias: bias, out: out, threads: threads)
        } else {
            Gemm.run(panels: PrepackedPanels(w: packed), x: x, m: m, k: k, n: n, bias: bias, out: out, threads: threads)
        }
    }

    /// x += delta (residual connections).
    public static func addInPlace(_ x: UnsafeMutablePointer<Float>, _ delta: UnsafePointer<Float>, count: Int) {
        var i = 0
        while i + 8 <= count {
            let a = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)
            let b = UnsafeRawPointer(delta + i).loadUnaligned(as: SIMD8<Float>.self)
            UnsafeMutableRawPointer(x + i).storeBytes(of: a + b, as: SIMD8<Float>.self)
            i += 8
        }
        while i < count { x[i] += delta[i]; i += 1 }
    }

    public static func rmsNorm(x: UnsafePointer<Float>, weight: UnsafePointer<Float>, rows: Int, dim: Int, eps: Float,
                               out: UnsafeMutablePointer<Float>) {
        Elementwise.rmsNorm(x: x, weight: weight, rows: rows, dim: dim, eps: eps, out: out)
    }

    public static func softmax(_ x: UnsafeMutablePointer<Float>, rows: Int, cols: Int) {
        for r in 0..<rows { Elementwise.softmaxRow(x + r * cols, cols) }
    }

    public static func swiglu(gate: UnsafeMutablePointer<Float>, up: UnsafePointer<Float>, count: Int,
                              threads: Int = Parallel.defaultThreads) {
        let g = SendablePointer(gate), u = SendablePointer(up)
        Parallel.forRanges((count + 7) / 8, threads: threads, minPerThread: 4096) { r in
            let lo = r.lowerBound * 8, hi = min(count, r.upperBound * 8)
            Elementwise.swiglu(gate: g.base + lo, up: u.base + lo, count: hi - lo)
        }
    }

    public static func rope(_ x: UnsafeMutablePointer<Float>, rows: Int, heads: Int, headDim: Int,
                            positions: UnsafePointer<Int32>, theta: Float) {
        Rope.apply(x, rows: rows, heads: heads, headDim: headDim, positions: positions, table: nil,
                   frequencies: RopeTable.frequencies(headDim: headDim, theta: theta))
    }

    /// RoPE with the given headDim/2 inverse frequencies (scaled RoPE: linear, llama3).
    public static func rope(_ x: UnsafeMutablePointer<Float>, rows: Int, heads: Int, headDim: Int,
                            positions: UnsafePointer<Int32>, frequencies: [Double]) {
        precondition(frequencies.count == headDim / 2, "RoPE needs headDim/2 frequencies")
        Rope.apply(x, rows: rows, heads: heads, headDim: headDim, positions: positions, table: nil, frequencies: frequencies)
    }

    /// RoPE with precomputed cos/sin (positions beyond the table are computed on the fly).
    public static func rope(_ x: UnsafeMutablePointer<Float>, rows: Int, heads: Int, headDim: Int,
                            positions: UnsafePointer<Int32>, table: RopeTable) {
        Rope.apply(x, rows: rows, heads: heads, headDim: headDim, positions: positions, table: table,
                   frequencies: table.frequencies)
    }

    /// Causal GQA attention (layout as Reference.attention). `window` (>= 1, nil for none): sliding-window attention,
    /// the query at absolute position p sees only keys p - window < j <= p (Hugging Face's convention, see
    /// Reference.attention).
    public static func attention(q: UnsafePointer<Float>, keys: UnsafePointer<Float>, values: UnsafePointer<Float>,
                                 tokens: Int, start: Int, nHeads: Int, nKVHeads: Int, headDim: Int, window: Int? = nil,
                                 out: UnsafeMutablePointer<Float>, threads: Int = Parallel.defaultThreads) {
        precondition(window.map { $0 >= 1 } ?? true, "attention window must be at least 1")
        Attention.run(q: q, keys: keys, values: values, tokens: tokens, start: start, nHeads: nHeads,
                      nKVHeads: nKVHeads, headDim: headDim, window: window, out: out, threads: threads)
    }

    /// Bidirectional multi-head attention inside packed sequences (BERT's padding mask without padding rows):
    /// sequence s occupies rows offsets[s]..<offsets[s+1] of q, k, v and out, each [total, heads * headDim].
    public static func attentionBidirectional(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                              out: UnsafeMutablePointer<Float>, offsets: [Int], heads: Int, headDim: Int,
                                              threads: Int = Parallel.defaultThreads) {
        Attention.bidirectional(q: q, k: k, v: v, out: out, offsets: offsets, heads: heads, headDim: headDim, threads: threads)
    }

    public static func layerNorm(x: UnsafePointer<Float>, gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>,
                                 rows: Int, dim: Int, eps: Float, out: UnsafeMutablePointer<Float>) {
        Elementwise.layerNorm(x: x, gamma: gamma, beta: beta, rows: rows, dim: dim, eps: eps, out: out)
    }

    public static func gelu(_ x: UnsafeMutablePointer<Float>, count: Int, threads: Int = Parallel.defaultThreads) {
        let p = SendablePointer(x)
        Parallel.forRanges((count + 7) / 8, threads: threads, minPerThread: 2048) { r in
            let lo = r.lowerBound * 8, hi = min(count, r.upperBound * 8)
            Elementwise.gelu(p.base + lo, count: hi - lo)
        }
    }
}
