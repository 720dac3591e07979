import Foundation
import Synchronization
import Kernels
import TensorCore

/// One linear module y = x W^T (+ b). x is [rows, inFeatures], out is [rows, outFeatures], both Float32
/// row-major. Implementations: DenseLinear (float weights) here; quantized CPU and simulated NPU layers come
/// from other targets through a LinearBackend.
public protocol LinearLayer: AnyObject, Sendable {
    var inFeatures: Int { get }
    var outFeatures: Int { get }
    func forward(_ x: UnsafePointer<Float>, rows: Int, out: UnsafeMutablePointer<Float>, threads: Int)
    /// True when each output row depends only on its own input row, bit for bit, whatever the batch: rows can
    /// then be batched freely (several sequences in one forward). False unless a layer says so.
    var rowIndependent: Bool { get }
}

extension LinearLayer {
    public var rowIndependent: Bool { false }
}

/// Where weights come from: a checkpoint (safetensors), or tensors held in memory (llama2.c, tests).
public protocol WeightSource {
    func tensor(_ name: String) throws -> Tensor
    func contains(_ name: String) -> Bool
}

extension SafetensorsCheckpoint: WeightSource {}

/// In-memory weights by HF name.
public final class TensorDictionary: WeightSource, @unchecked Sendable {
    public private(set) var tensors: [String: Tensor]
    public let label: String
    public init(_ tensors: [String: Tensor], label: String = "weights") { self.tensors = tensors; self.label = label }
    public func tensor(_ name: String) throws -> Tensor {
        guard let t = tensors[name] else { throw QuantKitError(.format, "\(label): no tensor named '\(name)'") }
        return t
    }
    public func contains(_ name: String) -> Bool { tensors[name] != nil }
    public var names: [String] { tensors.keys.sorted() }
    public func set(_ name: String, _ t: Tensor) { tensors[name] = t }
}

/// Makes the linear layer stored under a module name (e.g. "model.layers.0.self_attn.q_proj"), reading
/// whatever tensors it needs below that name ("<name>.weight", "<name>.bias", or "<name>.qweight", ...).
public protocol LinearBackend: Sendable {
    func makeLinear(name: String, source: WeightSource) throws -> LinearLayer
}

/// Float weights in their stored dtype (F32/F16/BF16, zero-copy when the source is mmapped), Kernels.matmulNT.
/// The first prefill-sized call packs the weight into GEMM panels (same dtype, one extra copy of the weight bytes)
/// and later prefill calls run on them; decode streams the row-major weight. `prepackEnabled = false` turns packing off.
public final class DenseLinear: LinearLayer, @unchecked Sendable {
    public let weight: Tensor
    public let bias: [Float]?
    public let inFeatures: Int
    public let outFeatures: Int
    // GEMM and GEMV compute each output row from its own input row, with k blocks independent of m.
    public var rowIndependent: Bool { true }
    private let ref: WeightRef
    private let packLock = NSLock()
    private var packed: PackedWeight?
    /// Whether prefill packs weights into panels (on by default; the CLI maps QUANTKIT_PREPACK=0 onto it).
    public static var prepackEnabled: Bool {
        get { prepackSetting.load(ordering: .relaxed) }
        set { prepackSetting.store(newValue, ordering: .relaxed) }
    }
    private static let prepackSetting = Atomic<Bool>(true)

    /// The packed panels, made on first use.
    private func packedWeight(threads: Int) -> PackedWeight {
        packLock.lock()
        defer { packLock.unlock() }
        if let p = packed { return p }
        let p = PackedWeight(ref, n: outFeatures, k: inFeatures, threads: threads)
        packed = p
        // Prefill no longer reads the row-major bytes; decode and embedding lookups fault back what they touch.
        weight.storage.releaseResidentPages()
        return p
    }

    public init(weight: Tensor, bias: Tensor? = nil, name: String = "linear") throws {
        guard weight.shape.count == 2, let ref = WeightRef(weight) else {
            throw QuantKitError(.shape, "\(name).weight: expected a 2-D float tensor, got \(weight.dtype.rawValue) \(weight.shape)")
        }
        self.weight = weight
        self.ref = ref
        outFeatures = weight.shape[0]
        inFeatures = weight.shape[1]
        if let b = bias {
            guard b.dtype.isFloat, b.shape == [outFeatures] else {
                throw QuantKitError(.shape, "\(name).bias: expected [\(outFeatures)], got \(b.dtype.rawValue) \(b.shape)")
            }
            self.bias = b.floats()
        } else {
            self.bias = nil
        }
    }

    public func forward(_ x: UnsafePointer<Float>, rows: Int, out: UnsafeMutablePointer<Float>, threads: Int) {
        let packed = rows > 3 && Self.prepackEnabled ? packedWeight(threads: threads) : nil
        let (k, n, ref) = (inFeatures, outFeatures, ref)
        func run(_ bias: UnsafePointer<Float>?) {
            if let packed {
                Kernels.matmulNT(x: x, m: rows, k: k, weight: ref, packed: packed, n: n, bias: bias, out: out,
                                 threads: threads)
            } else {
                Kernels.matmulNT(x: x, m: rows, k: k, weight: ref, n: n, bias: bias, out: out, threads: threads)
            }
        }
        if let b = bias { b.withUnsafeBufferPointer { run($0.baseAddress) } } else { run(nil) }
    }
}

/// The default backend: "<name>.weight" (+ "<name>.bias" when present) as a DenseLinear.
public struct DenseBackend: LinearBackend {
    public init() {}
    public func makeLinear(name: String, source: WeightSource) throws -> LinearLayer {
        let w = try source.tensor(name + ".weight")
        let b = source.contains(name + ".bias") ? try source.tensor(name + ".bias") : nil
        return try DenseLinear(weight: w, bias: b, name: name)
    }
}

/// Sees every linear module's input and output as the model runs (calibration capture, per-layer diagnostics).
/// `input` is [rows, inFeatures], `output` [rows, outFeatures]; both pointers are valid only during the call.
public protocol LinearObserver: AnyObject {
    func observe(module: String, input: UnsafePointer<Float>, inFeatures: Int,
                 output: UnsafePointer<Float>, outFeatures: Int, rows: Int)
}

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
    /// True when every operation treats rows independently (see LinearLayer.rowIndependent).
    var rowIndependent: Bool { get }
}

extension NonlinearOps {
    public var rowIndependent: Bool { false }
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

/// Causal GQA attention with a caller-supplied softmax, for NonlinearOps implementations that change only the
/// softmax (fp16 / LUT exp) and keep the float score and value products. Same layout as Kernels.attention.
public enum AttentionMath {
    public static func attention(q: UnsafePointer<Float>, keys: UnsafePointer<Float>, values: UnsafePointer<Float>,
                                 tokens: Int, start: Int, nHeads: Int, nKVHeads: Int, headDim: Int,
                                 window: Int? = nil, out: UnsafeMutablePointer<Float>,
                                 softmax: (UnsafeMutablePointer<Float>, Int) -> Void) {
        let group = nHeads / nKVHeads, kvStride = nKVHeads * headDim, qStride = nHeads * headDim
        let scale = 1 / Float(headDim).squareRoot()
        let scores = UnsafeMutablePointer<Float>.allocate(capacity: start + tokens)
        defer { scores.deallocate() }
        for t in 0..<tokens {
            let pos = start + t
            // Visible keys first..<pos+1 (all of 0...pos without a window).
            let first = window.map { max(0, pos - $0 + 1) } ?? 0
            let len = pos + 1 - first
            for h in 0..<nHeads {
                let qp = q + t * qStride + h * headDim, kvOff = (h / group) * headDim
                for j in 0..<len {
                    var d: Float = 0
                    let kp = keys + (first + j) * kvStride + kvOff
                    for i in 0..<headDim { d += qp[i] * kp[i] }
                    scores[j] = d * scale
                }
                softmax(scores, len)
                let op = out + t * qStride + h * headDim
                for i in 0..<headDim { op[i] = 0 }
                for j in 0..<len {
                    let vp = values + (first + j) * kvStride + kvOff, s = scores[j]
                    for i in 0..<headDim { op[i] += s * vp[i] }
                }
            }
        }
    }
}
