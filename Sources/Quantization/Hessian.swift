import Foundation
import Kernels
import Models
import TensorCore

/// Running Hessian of a linear layer's input, H = 2/n * sum x x^T, accumulated in Float64.
/// `n` counts calibration samples as the GPTQ reference does (it adds the batch size, i.e. sequences, per
/// call): pass `samples:` accordingly. The scale of H does not change the quantized weights, only the loss.
public final class HessianAccumulator: @unchecked Sendable {
    public let columns: Int
    /// Upper triangle of sum x x^T (lower is filled on `hessian()`).
    private var sum: [Double]
    public private(set) var samples: Int = 0
    public private(set) var rows: Int = 0
    private let syrk: UpperSyrk

    public init(columns: Int) {
        self.columns = columns
        sum = [Double](repeating: 0, count: columns * columns)
        syrk = UpperSyrk(columns: columns)
    }

    /// Adds `count` input rows `x` [count, columns] (Float32, row-major) worth `samples` calibration samples.
    public func add(_ x: UnsafePointer<Float>, count: Int, samples: Int, name: String = "layer input",
                    threads: Int = Parallel.defaultThreads) throws {
        let n = columns
        for i in 0..<(count * n) where !x[i].isFinite {
            throw QuantKitError(.numeric, "\(name): non-finite activation \(x[i]) at row \(i / n), column \(i % n)")
        }
        if n > 0 { sum.withUnsafeMutableBufferPointer { sb in
            syrk.accumulate(x, count: count, ldx: n, into: sb.baseAddress!, ldc: n, threads: threads)
        } }
        self.samples += samples
        self.rows += count
    }

    public func add(_ x: [Float], count: Int, samples: Int, name: String = "layer input") throws {
        guard x.count == count * columns else {
            throw QuantKitError(.shape, "\(name): \(x.count) values are not \(count) rows of \(columns) columns")
        }
        try x.withUnsafeBufferPointer { try add($0.baseAddress!, count: count, samples: samples, name: name) }
    }

    /// H = 2/samples * sum x x^T, full symmetric [columns, columns].
    public func hessian() -> [Double] {
        let n = columns
        let f = samples > 0 ? 2 / Double(samples) : 0
        var h = [Double](repeating: 0, count: n * n)
        for i in 0..<n { for j in i..<n { let v = sum[i * n + j] * f; h[i * n + j] = v; h[j * n + i] = v } }
        return h
    }
}

/// Running GPTAQ asymmetry matrix of a linear layer's input, D = 2/n * sum (x - x~)^T x~ (`GPTAQConfig`), accumulated in
/// Float64: x = the float model's input rows, x~ = the partly quantized model's rows for the same tokens. D[a, b] pairs
/// the drift of input a with quantized input b; it is not symmetric. `n` counts samples as `HessianAccumulator` does.
public final class AsymmetryAccumulator: @unchecked Sendable {
    public let columns: Int
    /// sum (x - x~)^T x~, [columns, columns].
    private var sum: [Double]
    public private(set) var samples: Int = 0
    public private(set) var rows: Int = 0
    /// Rows packed per GEMM: two [columns, chunk] Float64 panels.
    static let chunk = 256

    public init(columns: Int) {
        self.columns = columns
        sum = [Double](repeating: 0, count: columns * columns)
    }

    /// Adds `count` rows of float-model inputs `x` and quantized-model inputs `xq` (both [count, columns], Float32,
    /// row-major, row t of each the same token), worth `samples` calibration samples.
    public func add(float x: UnsafePointer<Float>, quantized xq: UnsafePointer<Float>, count: Int, samples: Int,
                    name: String = "layer input", threads: Int = Parallel.defaultThreads) throws {
        let n = columns
        for (label, p) in [("float-model", x), ("quantized-model", xq)] {
            for i in 0..<(count * n) where !p[i].isFinite {
                throw QuantKitError(.numeric, "\(name): non-finite \(label) activation \(p[i]) at row \(i / n), column \(i % n)")
            }
        }
        if n > 0 && count > 0 {
            // DenseMath.gemmNT takes both operands along rows: pack (x - x~)^T and x~^T, tokens contiguous.
            let chunk = min(Self.chunk, count)
            var drift = [Double](repeating: 0, count: n * chunk), quant = [Double](repeating: 0, count: n * chunk)
            var t0 = 0
            while t0 < count {
                let tc = min(chunk, count - t0)
                for t in 0..<tc {
                    let xr = x + (t0 + t) * n, qr = xq + (t0 + t) * n
                    for c in 0..<n {
                        let q = Double(qr[c])
                        drift[c * tc + t] = Double(xr[c]) - q
                        quant[c * tc + t] = q
                    }
                }
                drift.withUnsafeBufferPointer { a in
                    quant.withUnsafeBufferPointer { b in
                        sum.withUnsafeMutableBufferPointer {
                            DenseMath.gemmNT(m: n, n: n, k: tc, a: a.baseAddress!, lda: tc, b: b.baseAddress!, ldb: tc,
                                             c: $0.baseAddress!, ldc: n, alpha: 1, threads: threads)
                        }
                    }
                }
                t0 += tc
            }
        }
        self.samples += samples
        self.rows += count
    }

    public func add(float x: [Float], quantized xq: [Float], count: Int, samples: Int, name: String = "layer input") throws {
        guard x.count == count * columns, xq.count == count * columns else {
            throw QuantKitError(.shape, "\(name): \(x.count) and \(xq.count) values are not \(count) rows of \(columns) columns")
        }
        try x.withUnsafeBufferPointer { a in
            try xq.withUnsafeBufferPointer { try add(float: a.baseAddress!, quantized: $0.baseAddress!, count: count, samples: samples, name: name) }
        }
    }

    /// D = 2/samples * sum (x - x~)^T x~, [columns, columns].
    public func asymmetry() -> [Double] {
        let f = samples > 0 ? 2 / Double(samples) : 0
        return sum.map { $0 * f }
    }
}

/// Collects Hessians for the modules of one group. Modules fed the very same buffer in consecutive calls
/// (q/k/v, gate/up) share one accumulator. With `floatInputs` (GPTAQ) each accumulator gets a twin
/// `AsymmetryAccumulator` fed the float model's inputs of the same module for the same batch.
final class HessianObserver: LinearObserver {
    let wanted: Set<String>
    var acc: [String: HessianAccumulator] = [:]
    var asym: [String: AsymmetryAccumulator] = [:]
    var alias: [String: String] = [:]
    var last: (module: String, ptr: UnsafePointer<Float>, rows: Int)?
    var error: Error?
    /// Calibration samples one observed call stands for (the reference counts sequences: 1 per causal
    /// window, the batch's sequence count for a packed encoder batch).
    var samplesPerCall = 1
    /// The float model's inputs of this group's modules for the batch being observed (GPTAQ), captured just before.
    var floatInputs: InputCapture?
    init(_ wanted: [String]) { self.wanted = Set(wanted) }
    func reset() { last = nil }
    func observe(module: String, input: UnsafePointer<Float>, inFeatures: Int, output: UnsafePointer<Float>, outFeatures: Int, rows: Int) {
        defer { last = (module, input, rows) }
        guard wanted.contains(module), error == nil else { return }
        if let l = last, l.ptr == input, l.rows == rows, let src = alias[l.module] ?? (acc[l.module] != nil ? l.module : nil) {
            alias[module] = src
            return
        }
        if acc[module] == nil { acc[module] = HessianAccumulator(columns: inFeatures) }
        do {
            try acc[module]!.add(input, count: rows, samples: samplesPerCall, name: module)
            if let f = floatInputs {
                guard let x = f.input(module), x.count == rows * inFeatures else {
                    throw QuantKitError(.shape, "\(module): the float model's input does not match the quantized model's (\(rows) x \(inFeatures))")
                }
                if asym[module] == nil { asym[module] = AsymmetryAccumulator(columns: inFeatures) }
                try x.withUnsafeBufferPointer {
                    try asym[module]!.add(float: $0.baseAddress!, quantized: input, count: rows, samples: samplesPerCall, name: module)
                }
            }
        } catch { self.error = error }
    }
    func hessian(_ module: String) -> HessianAccumulator? { acc[alias[module] ?? module] }
    func asymmetry(_ module: String) -> AsymmetryAccumulator? { asym[alias[module] ?? module] }
}

/// Copies the inputs of the wanted modules during one pass (the float twin's, for GPTAQ). Modules fed the very same
/// buffer in consecutive calls share one copy, as in `HessianObserver`.
final class InputCapture: LinearObserver {
    let wanted: Set<String>
    var inputs: [String: [Float]] = [:]
    var alias: [String: String] = [:]
    var last: (module: String, ptr: UnsafePointer<Float>, rows: Int)?
    init(_ wanted: [String]) { self.wanted = Set(wanted) }
    /// Before each pass: forgets the previous batch.
    func reset() { last = nil; inputs = [:]; alias = [:] }
    func observe(module: String, input: UnsafePointer<Float>, inFeatures: Int, output: UnsafePointer<Float>, outFeatures: Int, rows: Int) {
        defer { last = (module, input, rows) }
        guard wanted.contains(module) else { return }
        if let l = last, l.ptr == input, l.rows == rows, let src = alias[l.module] ?? (inputs[l.module] != nil ? l.module : nil) {
            alias[module] = src
            return
        }
        inputs[module] = Array(UnsafeBufferPointer(start: input, count: rows * inFeatures))
    }
    func input(_ module: String) -> [Float]? { inputs[alias[module] ?? module] }
}
