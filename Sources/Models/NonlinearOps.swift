import Foundation
import Kernels
import TensorCore

/// The non-linear operations of a Llama block. The default runs the float Kernels; the NPU target substitutes
/// fp16 / LUT versions (and can count calls) without touching model code.
public protocol NonlinearOps: Sendable {
    func rmsNorm(_ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, rows: Int, dim: Int, eps: Float,
                 out: UnsafeMutablePointer<Float>)
    /// Rotary embedding (rotate_half layout) in place on [rows, heads * headDim]; frequencies: the headDim/2
    /// inverse frequencies (LlamaConfig.ropeFrequencies, RoPE scaling included).
    func rope(_ x: UnsafeMutablePointer<Float>, rows: Int, heads: Int, headDim: Int, positions: UnsafePointer<Int32>,
              frequencies: [Double])
    /// Causal GQA attention including its softmax (see Kernels.attention for the layout). window: sliding-window
    /// attention (nil: none), the query at position p sees keys p - window < j <= p.
    func attention(q: UnsafePointer<Float>, keys: UnsafePointer<Float>, values: UnsafePointer<Float>, tokens: Int,
                   start: Int, nHeads: Int, nKVHeads: Int, headDim: Int, window: Int?, out: UnsafeMutablePointer<Float>,
                   threads: Int)
    /// gate = silu(gate) * up
    func swiglu(gate: UnsafeMutablePointer<Float>, up: UnsafePointer<Float>, count: Int)
    /// x += delta
    func residualAdd(_ x: UnsafeMutablePointer<Float>, _ delta: UnsafePointer<Float>, count: Int)
    /// Each row of x [rows, n] becomes x·H_n/√n in place: a rotated checkpoint's online transform before down_proj
    /// (n has a Hadamard factorization: the config check guarantees it).
    func hadamard(_ x: UnsafeMutablePointer<Float>, rows: Int, n: Int, threads: Int)
    /// True when every operation treats rows independently (see LinearLayer.rowIndependent).
    var rowIndependent: Bool { get }
}

extension NonlinearOps {
    public var rowIndependent: Bool { false }
    public func hadamard(_ x: UnsafeMutablePointer<Float>, rows: Int, n: Int, threads: Int) {
        try! Hadamard.transform(x, rows: rows, n: n, threads: threads)
    }
}

public struct FloatOps: NonlinearOps {
    /// Precomputed cos/sin (used when headDim and frequencies match; positions past it are computed on the fly).
    public var ropeTable: RopeTable?
    public init(ropeTable: RopeTable? = nil) { self.ropeTable = ropeTable }
    public var rowIndependent: Bool { true }
    public func rmsNorm(_ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, rows: Int, dim: Int, eps: Float,
                        out: UnsafeMutablePointer<Float>) {
        Kernels.rmsNorm(x: x, weight: weight, rows: rows, dim: dim, eps: eps, out: out)
    }
    public func rope(_ x: UnsafeMutablePointer<Float>, rows: Int, heads: Int, headDim: Int,
                     positions: UnsafePointer<Int32>, frequencies: [Double]) {
        if let t = ropeTable, t.headDim == headDim, t.frequencies == frequencies {
            Kernels.rope(x, rows: rows, heads: heads, headDim: headDim, positions: positions, table: t)
        } else {
            Kernels.rope(x, rows: rows, heads: heads, headDim: headDim, positions: positions, frequencies: frequencies)
        }
    }
    public func attention(q: UnsafePointer<Float>, keys: UnsafePointer<Float>, values: UnsafePointer<Float>,
                          tokens: Int, start: Int, nHeads: Int, nKVHeads: Int, headDim: Int, window: Int?,
                          out: UnsafeMutablePointer<Float>, threads: Int) {
        Kernels.attention(q: q, keys: keys, values: values, tokens: tokens, start: start, nHeads: nHeads,
                          nKVHeads: nKVHeads, headDim: headDim, window: window, out: out, threads: threads)
    }
    public func swiglu(gate: UnsafeMutablePointer<Float>, up: UnsafePointer<Float>, count: Int) {
        Kernels.swiglu(gate: gate, up: up, count: count)
    }
    public func residualAdd(_ x: UnsafeMutablePointer<Float>, _ delta: UnsafePointer<Float>, count: Int) {
        Kernels.addInPlace(x, delta, count: count)
    }
}
