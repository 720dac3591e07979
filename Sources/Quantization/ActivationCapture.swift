import Foundation
import Models
import TensorCore

/// What a calibration pass records about the inputs and outputs of chosen linear modules: per input channel the
/// mean and maximum of |x| (AWQ's and SmoothQuant's statistics), and optionally the rows themselves.
final class ActivationCapture: LinearObserver {
    struct Module {
        var absSum: [Double]
        var absMax: [Double]
        var rows = 0
        var inputs: [Float] = []
        var outputs: [Float] = []
    }

    /// Module name -> what to keep beside the statistics.
    let wanted: [String: (inputs: Bool, outputs: Bool)]
    private(set) var modules: [String: Module] = [:]

    init(_ wanted: [String: (inputs: Bool, outputs: Bool)]) { self.wanted = wanted }

    func observe(module: String, input: UnsafePointer<Float>, inFeatures: Int, output: UnsafePointer<Float>, outFeatures: Int,
                 rows: Int) {
        guard let keep = wanted[module] else { return }
        var m = modules[module] ?? Module(absSum: [Double](repeating: 0, count: inFeatures),
                                          absMax: [Double](repeating: 0, count: inFeatures))
        modules[module] = nil
        for r in 0..<rows {
            let x = input + r * inFeatures
            for j in 0..<inFeatures {
                let a = Double(abs(x[j]))
                m.absSum[j] += a
                if a > m.absMax[j] || a.isNaN { m.absMax[j] = a }
            }
        }
        m.rows += rows
        if keep.inputs { m.inputs.append(contentsOf: UnsafeBufferPointer(start: input, count: rows * inFeatures)) }
        if keep.outputs { m.outputs.append(contentsOf: UnsafeBufferPointer(start: output, count: rows * outFeatures)) }
        modules[module] = m
    }

    /// Mean over the observed rows of |x_j|.
    func absMean(_ module: String) -> [Double] {
        guard let m = modules[module], m.rows > 0 else { return [] }
        return m.absSum.map { $0 / Double(m.rows) }
    }
}

/// Squared differences between what a module produces now and a recorded output, summed over the batches it
/// sees (the search objectives of AWQ).
final class OutputErrorObserver: LinearObserver {
    let module: String
    let reference: [Float]
    private(set) var offset = 0
    private(set) var sum = 0.0

    /// offset: where in `reference` the first observed output belongs.
    init(module: String, reference: [Float], offset: Int = 0) {
        self.module = module; self.reference = reference; self.offset = offset
    }

    func observe(module: String, input: UnsafePointer<Float>, inFeatures: Int, output: UnsafePointer<Float>, outFeatures: Int,
                 rows: Int) {
        guard module == self.module else { return }
        let n = rows * outFeatures
        var s = 0.0
        for i in 0..<n { let d = Double(output[i]) - Double(reference[offset + i]); s += d * d }
        sum += s
        offset += n
    }
}

/// Keeps what chosen modules saw, to show another observer later: batches run side by side each record their own,
/// and replaying the recorders in batch order shows an order-dependent observer what a serial pass would.
final class LinearRecorder: LinearObserver {
    private struct Call {
        var module: String
        var input: [Float], inFeatures: Int
        var output: [Float], outFeatures: Int
        var rows: Int
    }

    let modules: Set<String>
    private var calls: [Call] = []

    init(modules: Set<String>) { self.modules = modules }

    func observe(module: String, input: UnsafePointer<Float>, inFeatures: Int, output: UnsafePointer<Float>, outFeatures: Int,
                 rows: Int) {
        guard modules.contains(module) else { return }
        calls.append(Call(module: module, input: Array(UnsafeBufferPointer(start: input, count: rows * inFeatures)),
                          inFeatures: inFeatures, output: Array(UnsafeBufferPointer(start: output, count: rows * outFeatures)),
                          outFeatures: outFeatures, rows: rows))
    }

    /// Shows `observer` the recorded calls in the order they came (and forgets them).
    func replay(to observer: any LinearObserver) {
        for c in calls {
            c.input.withUnsafeBufferPointer { x in c.output.withUnsafeBufferPointer { y in
                observer.observe(module: c.module, input: x.baseAddress!, inFeatures: c.inFeatures, output: y.baseAddress!,
                                 outFeatures: c.outFeatures, rows: c.rows)
            } }
        }
        calls = []
    }
}
