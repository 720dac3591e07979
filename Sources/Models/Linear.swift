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

/// A layer whose weights can be had as floats (dequantized where stored otherwise), for backends that quantize
/// float weights their own way (the simulated NPU).
public protocol FloatWeightsProviding: LinearLayer {
    /// The layer as a DenseLinear over float weights; made on first use where the layer stores another form.
    var floatEquivalent: DenseLinear { get throws }
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
    private var packed: FloatPanels?
    /// Whether prefill packs weights into panels (on by default; the CLI maps QUANTKIT_PREPACK=0 onto it).
    public static var prepackEnabled: Bool {
        get { prepackSetting.load(ordering: .relaxed) }
        set { prepackSetting.store(newValue, ordering: .relaxed) }
    }
    private static let prepackSetting = Atomic<Bool>(true)

    /// The packed panels, made on first use.
    private func packedWeight(threads: Int) -> FloatPanels {
        packLock.lock()
        defer { packLock.unlock() }
        if let p = packed { return p }
        // Prefill no longer reads the row-major bytes: each chunk of rows is let go once packed, so the packing
        // never holds both whole copies. Decode faults back what it touches; a tied embedding reads the panels.
        let (storage, rowBytes) = (weight.storage, inFeatures * weight.dtype.byteSize)
        let p = FloatPanels(ref, n: outFeatures, k: inFeatures, threads: threads) { rows in
            storage.releaseResidentPages(bytes: (rows.lowerBound * rowBytes)..<(rows.upperBound * rowBytes))
        }
        packed = p
        return p
    }

    /// The packed panels once a prefill made them (nil before, or with packing off).
    public var packedPanels: FloatPanels? {
        packLock.lock()
        defer { packLock.unlock() }
        return packed
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

extension DenseLinear: FloatWeightsProviding {
    public var floatEquivalent: DenseLinear { self }
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
