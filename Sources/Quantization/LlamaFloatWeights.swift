import Foundation
import Kernels
import Models
import TensorCore

/// The float weights of a Llama-family model held in Float64 for function-preserving transforms (AWQ and
/// SmoothQuant scale folding, rotations): every transform edits these, then `makeModel` rebuilds a model whose
/// float outputs equal the original's up to rounding. Rounded to Float32 once, at the end (METHODS.md: fold in
/// Float64, then round to storage).
public final class LlamaFloatWeights {
    public private(set) var config: LlamaConfig
    /// HF name -> (shape, values).
    private var tensors: [String: (shape: [Int], values: [Double])] = [:]
    public let label: String

    /// Reads every float tensor of `model` (a dense float model: quantized layers cannot be transformed).
    public init(model: LlamaModel) throws {
        config = model.config
        label = model.name
        for name in HFExport.tensorNames(model.config) {
            let t: Tensor
            do { t = try model.source.tensor(name) } catch {
                throw QuantKitError(.input, "\(model.name): \(name) is not a float tensor (transforms need the float model, not a quantized checkpoint)")
            }
            guard t.dtype.isFloat else {
                throw QuantKitError(.input, "\(model.name): \(name) is \(t.dtype.rawValue), not float (transforms need the float model)")
            }
            tensors[name] = (t.shape, t.floats().map(Double.init))
        }
    }

    private init(config: LlamaConfig, tensors: [String: (shape: [Int], values: [Double])], label: String) {
        self.config = config; self.tensors = tensors; self.label = label
    }

    /// An independent copy (transforms tried side by side).
    public func copy() -> LlamaFloatWeights { LlamaFloatWeights(config: config, tensors: tensors, label: label) }

    public func shape(_ name: String) -> [Int] { tensors[name]?.shape ?? [] }
    public func values(_ name: String) -> [Double] { tensors[name]?.values ?? [] }
    public func contains(_ name: String) -> Bool { tensors[name] != nil }

    public func set(_ name: String, shape: [Int], values: [Double]) {
        precondition(shape.reduce(1, *) == values.count, "\(name): \(values.count) values for shape \(shape)")
        tensors[name] = (shape, values)
    }

    /// Applies `f` to the values of one tensor in place.
    public func update(_ name: String, _ f: (_ shape: [Int], _ values: inout [Double]) -> Void) {
        guard var t = tensors[name] else { preconditionFailure("no tensor \(name)") }
        tensors[name] = nil
        f(t.shape, &t.values)
        tensors[name] = t
    }

    /// W[:, j] *= s[j] (the inputs of a linear, HF layout [out, in]).
    public func scaleColumns(_ name: String, by s: [Double]) {
        update(name) { shape, w in
            let cols = shape[1]
            precondition(cols == s.count)
            for r in 0..<shape[0] { for c in 0..<cols { w[r * cols + c] *= s[c] } }
        }
    }

    /// W[i, :] /= s[i] (the outputs of a linear), and its bias entries with them.
    public func divideRows(_ name: String, by s: [Double]) {
        for n in [name + ".weight", name + ".bias"] where contains(n) {
            update(n) { shape, w in
                let cols = shape.count == 2 ? shape[1] : 1
                precondition(shape[0] == s.count)
                for r in 0..<shape[0] { for c in 0..<cols { w[r * cols + c] /= s[r] } }
            }
        }
    }

    /// g[j] /= s[j] for an RMSNorm gain.
    public func divideGain(_ name: String, by s: [Double]) {
        update(name) { _, g in for j in g.indices { g[j] /= s[j] } }
    }

    /// A tied head becomes its own tensor (a copy of the embedding) so the two can be transformed apart.
    public func untieHead() {
        guard config.tieWordEmbeddings else { return }
        let e = tensors["model.embed_tokens.weight"]!
        tensors["lm_head.weight"] = e
        config.tieWordEmbeddings = false
    }

    /// Marks the model as applying the orthonormal Hadamard transform to every down_proj input at run time.
    public func setDownProjHadamard(_ on: Bool) { config.downProjInputHadamard = on ? true : nil }

    /// The transformed model: tensors rounded to Float32, built with the dense backend.
    public func makeModel(name: String? = nil) throws -> LlamaModel {
        try LlamaModel(config: config, source: source(), name: name ?? label)
    }

    /// The tensors as a weight source (Float32).
    public func source() -> TensorDictionary {
        var out: [String: Tensor] = [:]
        for (n, t) in tensors { out[n] = Tensor(shape: t.shape, floats: t.values.map { Float($0) }) }
        return TensorDictionary(out, label: label)
    }
}

extension LlamaFloatWeights {
    /// W <- W · M for W [rows, n] and M [n, n] (row-major), in Float64.
    public func rightMultiply(_ name: String, by m: [Double], threads: Int = Parallel.defaultThreads) {
        update(name) { shape, w in
            let (rows, n) = (shape[0], shape[1])
            precondition(m.count == n * n)
            w = LlamaFloatWeights.product(w, rows: rows, n: n, transposedRight: LlamaFloatWeights.transpose(m, n: n), threads: threads)
        }
    }

    /// W <- Mᵀ · W for W [n, cols] (a linear's output side, HF layout), its bias b <- Mᵀ b too.
    public func leftMultiplyTransposed(_ name: String, by m: [Double], threads: Int = Parallel.defaultThreads) {
        update(name + ".weight") { shape, w in
            let (n, cols) = (shape[0], shape[1])
            precondition(m.count == n * n)
            // (Mᵀ W)ᵀ = Wᵀ M: rows of Wᵀ times M.
            let wt = LlamaFloatWeights.transpose(w, rows: n, cols: cols)
            let r = LlamaFloatWeights.product(wt, rows: cols, n: n, transposedRight: LlamaFloatWeights.transpose(m, n: n), threads: threads)
            w = LlamaFloatWeights.transpose(r, rows: cols, cols: n)
        }
        if contains(name + ".bias") {
            update(name + ".bias") { shape, b in
                let n = shape[0]
                b = (0..<n).map { j in (0..<n).reduce(0.0) { $0 + m[$1 * n + j] * b[$1] } }
            }
        }
    }

    /// A [rows, n] · B where `bt` = Bᵀ [n, n].
    static func product(_ a: [Double], rows: Int, n: Int, transposedRight bt: [Double], threads: Int) -> [Double] {
        var c = [Double](repeating: 0, count: rows * n)
        a.withUnsafeBufferPointer { ap in bt.withUnsafeBufferPointer { bp in c.withUnsafeMutableBufferPointer { cp in
            DenseMath.gemmNT(m: rows, n: n, k: n, a: ap.baseAddress!, lda: n, b: bp.baseAddress!, ldb: n, c: cp.baseAddress!, ldc: n,
                             alpha: 1, threads: threads)
        } } }
        return c
    }

    static func transpose(_ a: [Double], n: Int) -> [Double] { transpose(a, rows: n, cols: n) }

    static func transpose(_ a: [Double], rows: Int, cols: Int) -> [Double] {
        var t = [Double](repeating: 0, count: a.count)
        for r in 0..<rows { for c in 0..<cols { t[c * rows + r] = a[r * cols + c] } }
        return t
    }
}
