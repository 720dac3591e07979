import Foundation
import Kernels
import TensorCore

/// The non-linear operations of a BERT encoder (post-LN blocks): LayerNorm, exact-erf GELU, the bidirectional
/// attention with its softmax, and the residual adds. The default runs the float Kernels; the NPU target
/// substitutes fp16 / LUT versions (and counts calls) without touching model code, as NonlinearOps does for Llama.
/// The embedding gather + position/type add, pooling and L2 normalisation stay on the host (not hooked).
public protocol BertNonlinearOps: Sendable {
    /// out = LayerNorm(x) * gamma + beta per row of [rows, dim].
    func layerNorm(_ x: UnsafePointer<Float>, gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>, rows: Int, dim: Int,
                   eps: Float, out: UnsafeMutablePointer<Float>, threads: Int)
    /// x = gelu(x) (exact erf form) in place; `producer` names the linear module whose output x is
    /// (an integer unit can index a table with that module's int8 output codes).
    func gelu(_ x: UnsafeMutablePointer<Float>, count: Int, producer: String, threads: Int)
    /// Bidirectional multi-head attention inside each packed sequence (rows offsets[s]..<offsets[s+1]);
    /// q/k/v/out are [total, heads * headDim]; scale 1/sqrt(headDim).
    func attention(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
                   offsets: [Int], heads: Int, headDim: Int, threads: Int)
    /// x += delta
    func residualAdd(_ x: UnsafeMutablePointer<Float>, _ delta: UnsafePointer<Float>, count: Int)
}

/// The float BERT operations (what BertModel always ran).
public struct BertFloatOps: BertNonlinearOps {
    public init() {}
    public func layerNorm(_ x: UnsafePointer<Float>, gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>, rows: Int, dim: Int,
                          eps: Float, out: UnsafeMutablePointer<Float>, threads: Int) {
        Kernels.layerNorm(x: x, gamma: gamma, beta: beta, rows: rows, dim: dim, eps: eps, out: out)
    }
    public func gelu(_ x: UnsafeMutablePointer<Float>, count: Int, producer: String, threads: Int) {
        Kernels.gelu(x, count: count, threads: threads)
    }
    public func attention(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
                          offsets: [Int], heads: Int, headDim: Int, threads: Int) {
        Kernels.attentionBidirectional(q: q, k: k, v: v, out: out, offsets: offsets, heads: heads, headDim: headDim, threads: threads)
    }
    public func residualAdd(_ x: UnsafeMutablePointer<Float>, _ delta: UnsafePointer<Float>, count: Int) {
        Kernels.addInPlace(x, delta, count: count)
    }
}
