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

/// Collects Hessians for the modules of one group. Modules fed the very same buffer in consecutive calls
/// (q/k/v, gate/up) share one accumulator.
final class HessianObserver: LinearObserver {
    let wanted: Set<String>
    var acc: [String: HessianAccumulator] = [:]
    var alias: [String: String] = [:]
    var last: (module: String, ptr: UnsafePointer<Float>, rows: Int)?
    var error: Error?
    /// Calibration samples one observed call stands for (the reference counts sequences: 1 per causal
    /// window, the batch's sequence count for a packed encoder batch).
    var samplesPerCall = 1
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
        do { try acc[module]!.add(input, count: rows, samples: samplesPerCall, name: module) } catch { self.error = error }
    }
    func hessian(_ module: String) -> HessianAccumulator? { acc[alias[module] ?? module] }
}
