import Foundation
import TensorCore

/// The fast kernels (SIMD + multithreaded). Until a kernel has its fast version it forwards to its reference
/// twin; the signatures are the contract the model code is written against.
public enum Kernels {
    /// out[m, n] = sum_k x[m, k] * w[n, k] + bias[n]; x row-major [m, k], weight [n, k] in its stored dtype.
    public static func matmulNT(x: UnsafePointer<Float>, m: Int, k: Int, weight: WeightRef, n: Int,
                                bias: UnsafePointer<Float>? = nil, out: UnsafeMutablePointer<Float>,
                                threads: Int = Parallel.defaultThreads) {
        Reference.matmulNT(x: x, m: m, k: k, weight: weight, n: n, bias: bias, out: out)
    }

    public static func rmsNorm(x: UnsafePointer<Float>, weight: UnsafePointer<Float>, rows: Int, dim: Int, eps: Float,
                               out: UnsafeMutablePointer<Float>) {
        Reference.rmsNorm(x: x, weight: weight, rows: rows, dim: dim, eps: eps, out: out)
    }

    public static func softmax(_ x: UnsafeMutablePointer<Float>, rows: Int, cols: Int) {
        Reference.softmax(x, rows: rows, cols: cols)
    }

    public static func swiglu(gate: UnsafeMutablePointer<Float>, up: UnsafePointer<Float>, count: Int) {
        Reference.swiglu(gate: gate, up: up, count: count)
    }

    public static func rope(_ x: UnsafeMutablePointer<Float>, rows: Int, heads: Int, headDim: Int,
                            positions: UnsafePointer<Int32>, theta: Float) {
        Reference.rope(x, rows: rows, heads: heads, headDim: headDim, positions: positions, theta: theta)
    }

    public static func attention(q: UnsafePointer<Float>, keys: UnsafePointer<Float>, values: UnsafePointer<Float>,
                                 tokens: Int, start: Int, nHeads: Int, nKVHeads: Int, headDim: Int,
                                 out: UnsafeMutablePointer<Float>, threads: Int = Parallel.defaultThreads) {
        Reference.attention(q: q, keys: keys, values: values, tokens: tokens, start: start, nHeads: nHeads,
                            nKVHeads: nKVHeads, headDim: headDim, out: out)
    }

    public static func layerNorm(x: UnsafePointer<Float>, gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>,
                                 rows: Int, dim: Int, eps: Float, out: UnsafeMutablePointer<Float>) {
        Reference.layerNorm(x: x, gamma: gamma, beta: beta, rows: rows, dim: dim, eps: eps, out: out)
    }

    public static func gelu(_ x: UnsafeMutablePointer<Float>, count: Int) {
        Reference.gelu(x, count: count)
    }
}
