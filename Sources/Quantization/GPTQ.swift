import Foundation
import Kernels
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
        precondition(x.count == count * columns)
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

/// GPTQ settings (the reference's fasterquant arguments).
public struct GPTQConfig: Sendable, Equatable {
    public var scheme: QuantScheme
    public var actOrder: Bool
    public var staticGroups: Bool
    public var dampPercent: Double
    public var blockSize: Int
    /// Damping escalations (x10 each) tried after a failed Cholesky before giving up.
    public var maxDampEscalations: Int

    public init(scheme: QuantScheme, actOrder: Bool = false, staticGroups: Bool = false, dampPercent: Double = 0.01,
                blockSize: Int = 128, maxDampEscalations: Int = 6) {
        self.scheme = scheme
        self.actOrder = actOrder
        self.staticGroups = staticGroups
        self.dampPercent = dampPercent
        self.blockSize = blockSize
        self.maxDampEscalations = maxDampEscalations
    }
}

public struct GPTQLayerResult: Sendable {
    public let weight: QuantizedWeight
    /// sum over weights of (w - q)^2 / Hinv_ii^2 / 2, as the reference prints it ("error").
    public let loss: Double
    /// Damping fraction finally used (dampPercent, or raised x10 per failed Cholesky) and the escalations.
    public let dampPercentUsed: Double
    public let dampEscalations: Int
    public let deadColumns: Int
    public let seconds: Double
    /// Dequantized weights [out, in] in Float64, original column order (what the reference's Q holds).
    public let dequantized: [Double]
}

/// GPTQ for one linear layer (Frantar et al. 2022; behaviour of IST-DASLab/gptq `fasterquant`, see SPECS.md).
/// Output rows are independent once Hinv is known, so threads take contiguous row ranges for the whole sweep.
public enum GPTQ {
    public static func quantize(weight: [Float], outFeatures: Int, inFeatures: Int, hessian: [Double], config: GPTQConfig,
                                name: String = "layer", log: ((String) -> Void)? = nil,
                                threads: Int = Parallel.defaultThreads) throws -> GPTQLayerResult {
        let start = Date()
        let rows = outFeatures, cols = inFeatures
        let scheme = config.scheme
        try scheme.validate(outFeatures: rows, inFeatures: cols, name: name)
        guard weight.count == rows * cols else {
            throw QuantKitError(.shape, "\(name): \(weight.count) weights do not fill [\(rows), \(cols)]")
        }
        guard hessian.count == cols * cols else {
            throw QuantKitError(.shape, "\(name): Hessian has \(hessian.count) entries, expected \(cols)x\(cols)")
        }
        if let bad = weight.firstIndex(where: { !$0.isFinite }) {
            throw QuantKitError(.numeric, "\(name): non-finite weight \(weight[bad]) at [\(bad / cols), \(bad % cols)]")
        }
        if hessian.contains(where: { !$0.isFinite }) { throw QuantKitError(.numeric, "\(name): non-finite Hessian entry") }
        if config.staticGroups && scheme.groupSize <= 0 {
            throw QuantKitError(.config, "\(name): static groups need a group size > 0")
        }
        guard config.blockSize > 0 else { throw QuantKitError(.config, "block size must be positive") }
        let maxq = Double(scheme.maxq)
        var w = weight.map(Double.init)
        var h = hessian

        // Per-channel / per-tensor parameters come from the weights before dead-column zeroing (reference order).
        var fixedParams: [QuantParams] = []
        if scheme.groupSize <= 0 {
            w.withUnsafeBufferPointer { wb in
                if scheme.groupSize == QuantScheme.perTensor {
                    fixedParams = [QuantParams](repeating: Quantizer.params(wb.baseAddress!, count: rows * cols, scheme: scheme), count: rows)
                } else {
                    fixedParams = (0..<rows).map { Quantizer.params(wb.baseAddress! + $0 * cols, count: cols, scheme: scheme) }
                }
            }
        }
        var dead = 0
        for i in 0..<cols where h[i * cols + i] == 0 {
            h[i * cols + i] = 1
            for r in 0..<rows { w[r * cols + i] = 0 }
            dead += 1
        }
        let gs = scheme.effectiveGroupSize(inFeatures: cols)
        let ng = scheme.groupCount(inFeatures: cols)
        // Static groups: parameters from the (dead-zeroed) original weights in original column order.
        var staticParams: [QuantParams] = []  // [rows, ng]
        if config.staticGroups {
            staticParams = [QuantParams](repeating: QuantParams(scale: 1, zero: 0), count: rows * ng)
            w.withUnsafeBufferPointer { wb in
                for r in 0..<rows {
                    for g in 0..<ng {
                        let c0 = g * gs, c1 = min(cols, c0 + gs)
                        staticParams[r * ng + g] = Quantizer.params(wb.baseAddress! + r * cols + c0, count: c1 - c0, scheme: scheme)
                    }
                }
            }
        }
        // act-order: descending diag(H), ties by index (stable).
        var perm = Array(0..<cols)
        if config.actOrder {
            perm.sort { (h[$0 * cols + $0], $1) > (h[$1 * cols + $1], $0) }
            var pw = [Double](repeating: 0, count: rows * cols)
            for r in 0..<rows { for c in 0..<cols { pw[r * cols + c] = w[r * cols + perm[c]] } }
            w = pw
            var ph = [Double](repeating: 0, count: cols * cols)
            for i in 0..<cols { for j in 0..<cols { ph[i * cols + j] = h[perm[i] * cols + perm[j]] } }
            h = ph
        }
        var meanDiag = 0.0
        for i in 0..<cols { meanDiag += h[i * cols + i] }
        meanDiag /= Double(cols)
        var percent = config.dampPercent
        var escalations = 0
        var hinv: [Double]
        while true {
            var hd = h
            let damp = percent * meanDiag
            for i in 0..<cols { hd[i * cols + i] += damp }
            if let u = DenseMath.upperCholeskyOfInverse(hd, n: cols, threads: threads) { hinv = u; break }
            guard escalations < config.maxDampEscalations else {
                throw QuantKitError(.numeric, "\(name): Hessian not positive definite even with damping \(percent) x mean(diag H)")
            }
            escalations += 1
            let next = percent * 10
            log?("\(name): Cholesky failed with damp \(percent); retrying with \(next)")
            percent = next
        }

        // The sweep. Codes and group parameters are recorded in permuted column order.
        var codesP = [UInt8](repeating: 0, count: rows * cols)
        var deqP = [Double](repeating: 0, count: rows * cols)
        var dynParams = [QuantParams](repeating: QuantParams(scale: 1, zero: 0), count: rows * ng)
        var rowLoss = [Double](repeating: 0, count: rows)
        let bs = config.blockSize
        let permC = perm
        let useStatic = config.staticGroups, grouped = scheme.groupSize > 0
        w.withUnsafeMutableBufferPointer { wb in
        hinv.withUnsafeBufferPointer { hb in
        codesP.withUnsafeMutableBufferPointer { cb in
        deqP.withUnsafeMutableBufferPointer { db in
        dynParams.withUnsafeMutableBufferPointer { dpb in
        rowLoss.withUnsafeMutableBufferPointer { lb in
        staticParams.withUnsafeBufferPointer { spb in
        fixedParams.withUnsafeBufferPointer { fpb in
            let W = SendablePointer(wb.baseAddress!), U = SendablePointer(hb.baseAddress!)
            let C = SendablePointer(cb.baseAddress!), D = SendablePointer(db.baseAddress!)
            let DP = SendablePointer(dpb.baseAddress!), L = SendablePointer(lb.baseAddress!)
            let SP = spb.isEmpty ? nil : SendablePointer(spb.baseAddress!)
            let FP = fpb.isEmpty ? nil : SendablePointer(fpb.baseAddress!)
            Parallel.forRanges(rows, threads: threads, minPerThread: 4) { range in
                let tileRows = 4
                let w1 = UnsafeMutablePointer<Double>.allocate(capacity: tileRows * bs)
                let e1 = UnsafeMutablePointer<Double>.allocate(capacity: tileRows * bs)
                defer { w1.deallocate(); e1.deallocate() }
                var cur = [QuantParams](repeating: QuantParams(scale: 1, zero: 0), count: tileRows)
                var r0 = range.lowerBound
                while r0 < range.upperBound {
                    let nr = min(tileRows, range.upperBound - r0)
                    if let FP { for t in 0..<nr { cur[t] = FP[r0 + t] } }
                    var i1 = 0
                    while i1 < cols {
                        let i2 = min(cols, i1 + bs), count = i2 - i1
                        for t in 0..<nr { (w1 + t * bs).update(from: W.base + (r0 + t) * cols + i1, count: count) }
                        for i in 0..<count {
                            let col = i1 + i
                            if grouped {
                                if useStatic {
                                    let g = permC[col] / gs
                                    for t in 0..<nr { cur[t] = SP![(r0 + t) * ng + g] }
                                } else if col % gs == 0 {
                                    // Reference: parameters from W as of the last lazy update (not the in-block W1).
                                    let g = col / gs, c1 = min(cols, col + gs)
                                    for t in 0..<nr {
                                        let p = Quantizer.params(W.base + (r0 + t) * cols + col, count: c1 - col, scheme: scheme)
                                        cur[t] = p
                                        DP[(r0 + t) * ng + g] = p
                                    }
                                }
                            }
                            let d = U[col * cols + col]
                            for t in 0..<nr {
                                let x = w1[t * bs + i]
                                let q = Quantizer.code(x, cur[t], maxq: maxq)
                                let deq = cur[t].scale * (q - cur[t].zero)
                                C[(r0 + t) * cols + col] = UInt8(q)
                                D[(r0 + t) * cols + col] = deq
                                let err = (x - deq) / d
                                L[r0 + t] += err * err
                                e1[t * bs + i] = err
                            }
                            // W1[:, i+1:] -= err * Hinv[col, i+1:]
                            let hrow = U.base + col * cols + i1
                            for t in 0..<nr {
                                let e = e1[t * bs + i]
                                let wr = w1 + t * bs
                                var j = i + 1
                                while j + 4 <= count {
                                    let v = DenseMath.load(wr + j) - e * DenseMath.load(hrow + j)
                                    UnsafeMutableRawPointer(wr + j).storeBytes(of: v, as: SIMD4<Double>.self)
                                    j += 4
                                }
                                while j < count { wr[j] -= e * hrow[j]; j += 1 }
                            }
                        }
                        // Lazy batch update: W[:, i2:] -= Err1 Hinv[i1:i2, i2:]
                        if i2 < cols {
                            for t in 0..<nr {
                                let wr = W.base + (r0 + t) * cols
                                for i in 0..<count {
                                    let e = e1[t * bs + i]
                                    let hrow = U.base + (i1 + i) * cols
                                    var j = i2
                                    while j + 4 <= cols {
                                        let v = DenseMath.load(wr + j) - e * DenseMath.load(hrow + j)
                                        UnsafeMutableRawPointer(wr + j).storeBytes(of: v, as: SIMD4<Double>.self)
                                        j += 4
                                    }
                                    while j < cols { wr[j] -= e * hrow[j]; j += 1 }
                                }
                            }
                        }
                        i1 = i2
                    }
                    r0 += nr
                }
            }
        }}}}}}}}

        // Back to original column order; scales table and g_idx as AutoGPTQ lays them out.
        var codes = [UInt8](repeating: 0, count: rows * cols)
        var deq = [Double](repeating: 0, count: rows * cols)
        var gIdx = [Int32](repeating: 0, count: cols)
        for c in 0..<cols {
            let orig = perm[c]
            gIdx[orig] = Int32(useStatic ? orig / gs : c / gs)
            for r in 0..<rows {
                codes[r * cols + orig] = codesP[r * cols + c]
                deq[r * cols + orig] = deqP[r * cols + c]
            }
        }
        var scales = [Float](repeating: 0, count: rows * ng)
        var zeros = [Int32](repeating: 0, count: rows * ng)
        for r in 0..<rows {
            for g in 0..<ng {
                let p = grouped ? (useStatic ? staticParams[r * ng + g] : dynParams[r * ng + g]) : fixedParams[r]
                scales[r * ng + g] = Float(p.scale)
                zeros[r * ng + g] = Int32(p.zero)
            }
        }
        let qw = QuantizedWeight(outFeatures: rows, inFeatures: cols, bits: scheme.bits, symmetric: scheme.symmetric,
                                 groupSize: scheme.groupSize, codes: codes, scales: scales, zeros: zeros, gIdx: gIdx)
        return GPTQLayerResult(weight: qw, loss: rowLoss.reduce(0, +) / 2, dampPercentUsed: percent, dampEscalations: escalations,
                               deadColumns: dead, seconds: Date().timeIntervalSince(start), dequantized: deq)
    }
}
