import Foundation
import Kernels
import TensorCore

/// GPTQ settings (the reference's fasterquant arguments).
public struct GPTQConfig: Sendable, Equatable {
    public var scheme: QuantScheme
    public var actOrder: Bool
    public var staticGroups: Bool
    public var dampPercent: Double
    public var blockSize: Int
    /// Damping escalations (x10 each) tried after a failed Cholesky before giving up.
    public var maxDampEscalations: Int
    /// GPTAQ's asymmetric-calibration term (nil: plain GPTQ). `GPTQ.quantize` then needs the asymmetry matrix D.
    public var gptaq: GPTAQConfig?

    public init(scheme: QuantScheme, actOrder: Bool = false, staticGroups: Bool = false, dampPercent: Double = 0.01,
                blockSize: Int = 128, maxDampEscalations: Int = 6, gptaq: GPTAQConfig? = nil) {
        self.scheme = scheme
        self.actOrder = actOrder
        self.staticGroups = staticGroups
        self.dampPercent = dampPercent
        self.blockSize = blockSize
        self.maxDampEscalations = maxDampEscalations
        self.gptaq = gptaq
    }
}

/// GPTAQ / GPTQv2 (Li et al. 2025, "GPTAQ: Efficient Finetuning-Free Quantization for Asymmetric Calibration";
/// METHODS.md section 6), as an option of GPTQ. Checked against Intelligent-Computing-Lab-Yale/GPTAQ
/// fake_quant/gptaq_utils.py and ModelCloud/GPTQModel gptqmodel/quantization/gptaq.py (formerly gptqv2.py):
///
/// - Target: min ||X~ W'^T - X W^T||^2, X~ = the layer's inputs in the partly quantized model, X = the float model's
///   inputs on the same tokens. H = (2/n) X~^T X~ as GPTQ; D = (2/n) (X - X~)^T X~ [in, in], D[a, b] =
///   (2/n) sum_t (x - x~)[t, a] x~[t, b] (upstream "dXXT", same n as H), not symmetric.
/// - Dead inputs (H_jj = 0) zero D's columns j only, as upstream; act-order permutes D's rows and columns as H's.
/// - U = upper Cholesky factor of the damped H^-1 exactly as GPTQ (D is not damped; escalated damping reaches P too).
/// - P = alpha * triu(D U^T, 1) * U, strictly upper, alpha outside (upstream default 0.25). Row j on the remaining
///   columns F = j+1... is alpha * D[j, F] (H_FF)^-1: the least-squares shift of F that absorbs column j's input
///   drift (x - x~)_j w_j, next to GPTQ's U[j, F] term that absorbs its rounding error (alpha = 1 absorbs it all;
///   upstream scales it down to 0.25).
/// - Column j: err = (w_j - q_j) / U_jj; W[:, F] -= err (x) U[j, F]; W[:, F] += w_j (x) P[j, F], w_j the column as it
///   stands when quantized (updated by the earlier columns, before rounding). Lazy blocks as GPTQ, the P term from
///   the block's pre-rounding columns, so batching changes only rounding.
/// - Upstream deviates in the lazy step: it multiplies P by its in-block working copy, whose finished column j holds
///   w_j - err_j U_jj (= q_j up to rounding), so the in-block and cross-block terms use different weights.
///   `upstreamLazyUpdate` reproduces that; it differs from the default only across blocks.
public struct GPTAQConfig: Sendable, Equatable {
    public static let defaultAlpha = 0.25
    public var alpha: Double
    public var upstreamLazyUpdate: Bool

    public init(alpha: Double = GPTAQConfig.defaultAlpha, upstreamLazyUpdate: Bool = false) {
        self.alpha = alpha
        self.upstreamLazyUpdate = upstreamLazyUpdate
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

/// GPTQ for one linear layer (Frantar et al. 2023; behaviour of IST-DASLab/gptq `fasterquant`, see SPECS.md), in four
/// stages: `prepare` (checks, dead columns, parameters fixed before the sweep, act-order permutation), `invert`
/// (damped Hinv, damping raised on a failed Cholesky), `GPTQSweep` (Algorithm 1 of the paper) and `pack` (original
/// column order, AutoGPTQ's tables).
public enum GPTQ {
    /// `asymmetry`: GPTAQ's D [in, in] (`AsymmetryAccumulator`), required with `config.gptaq` and only then.
    public static func quantize(weight: [Float], outFeatures: Int, inFeatures: Int, hessian: [Double], asymmetry: [Double]? = nil,
                                config: GPTQConfig, name: String = "layer", log: ((String) -> Void)? = nil,
                                threads: Int = Parallel.defaultThreads) throws -> GPTQLayerResult {
        let start = Date()
        let p = try prepare(weight: weight, outFeatures: outFeatures, inFeatures: inFeatures, hessian: hessian, asymmetry: asymmetry,
                            config: config, name: name)
        let inv = try invert(p.h, n: inFeatures, config: config, name: name, log: log, threads: threads)
        let correction = p.d.map { gptaqCorrection($0, u: inv.hinv, alpha: config.gptaq!.alpha, n: inFeatures, threads: threads) }
        let sweep = GPTQSweep(p, hinv: inv.hinv, correction: correction, config: config)
        sweep.run(threads: threads)
        let (q, deq) = pack(p, sweep, config: config)
        return GPTQLayerResult(weight: q, loss: sweep.loss, dampPercentUsed: inv.dampPercent, dampEscalations: inv.escalations,
                               deadColumns: p.deadColumns, seconds: Date().timeIntervalSince(start), dequantized: deq)
    }

    /// A layer ready for the sweep: weights and Hessian in Float64, in sweep (act-order) column order.
    struct Prepared {
        let rows: Int, cols: Int
        /// [rows, cols], dead columns zeroed.
        let w: [Double]
        /// [cols, cols], dead diagonal entries set to 1.
        let h: [Double]
        /// GPTAQ's D [cols, cols], dead columns zeroed (nil: GPTQ).
        let d: [Double]?
        /// Sweep position -> original column.
        let perm: [Int]
        /// Per row, without groups (per channel; per tensor repeats one pair).
        let fixedParams: [ScaleZero]
        /// [rows, groups], static groups only.
        let staticParams: [ScaleZero]
        let deadColumns: Int
    }

    static func prepare(weight: [Float], outFeatures rows: Int, inFeatures cols: Int, hessian: [Double],
                        asymmetry: [Double]? = nil, config: GPTQConfig, name: String) throws -> Prepared {
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
        var d: [Double]?
        if let g = config.gptaq {
            guard g.alpha.isFinite, g.alpha >= 0 else { throw QuantKitError(.config, "GPTAQ alpha must be finite and >= 0 (got \(g.alpha))") }
            guard let a = asymmetry else { throw QuantKitError(.input, "\(name): GPTAQ needs the asymmetry matrix D of the layer's inputs") }
            guard a.count == cols * cols else {
                throw QuantKitError(.shape, "\(name): asymmetry matrix has \(a.count) entries, expected \(cols)x\(cols)")
            }
            if a.contains(where: { !$0.isFinite }) { throw QuantKitError(.numeric, "\(name): non-finite asymmetry matrix entry") }
            d = a
        } else if asymmetry != nil {
            throw QuantKitError(.config, "\(name): an asymmetry matrix is given but GPTAQ is off")
        }
        var w = weight.map(Double.init)
        var h = hessian

        // Per-channel / per-tensor parameters come from the weights before dead-column zeroing (reference order).
        var fixedParams: [ScaleZero] = []
        if scheme.groupSize <= 0 {
            w.withUnsafeBufferPointer { wb in
                if scheme.groupSize == QuantScheme.perTensor {
                    fixedParams = [ScaleZero](repeating: Quantizer.params(wb.baseAddress!, count: rows * cols, scheme: scheme), count: rows)
                } else {
                    fixedParams = (0..<rows).map { Quantizer.params(wb.baseAddress! + $0 * cols, count: cols, scheme: scheme) }
                }
            }
        }
        var dead = 0
        for i in 0..<cols where h[i * cols + i] == 0 {
            h[i * cols + i] = 1
            for r in 0..<rows { w[r * cols + i] = 0 }
            if d != nil { for r in 0..<cols { d![r * cols + i] = 0 } }
            dead += 1
        }
        let gs = scheme.effectiveGroupSize(inFeatures: cols)
        let ng = scheme.groupCount(inFeatures: cols)
        // Static groups: parameters from the (dead-zeroed) original weights in original column order.
        var staticParams: [ScaleZero] = []
        if config.staticGroups {
            staticParams = [ScaleZero](repeating: ScaleZero(scale: 1, zero: 0), count: rows * ng)
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
            if let a = d {
                var pd = [Double](repeating: 0, count: cols * cols)
                for i in 0..<cols { for j in 0..<cols { pd[i * cols + j] = a[perm[i] * cols + perm[j]] } }
                d = pd
            }
        }
        return Prepared(rows: rows, cols: cols, w: w, h: h, d: d, perm: perm, fixedParams: fixedParams, staticParams: staticParams,
                        deadColumns: dead)
    }

    /// GPTAQ's P = alpha * triu(D U^T, 1) * U [n, n], strictly upper (sweep order; see `GPTAQConfig`).
    static func gptaqCorrection(_ d: [Double], u: [Double], alpha: Double, n: Int, threads: Int) -> [Double] {
        // T = D U^T, strictly upper part kept.
        var t = [Double](repeating: 0, count: n * n)
        d.withUnsafeBufferPointer { db in
            u.withUnsafeBufferPointer { ub in
                t.withUnsafeMutableBufferPointer {
                    DenseMath.gemmNT(m: n, n: n, k: n, a: db.baseAddress!, lda: n, b: ub.baseAddress!, ldb: n, c: $0.baseAddress!,
                                     ldc: n, alpha: 1, triangle: .upper, threads: threads)
                }
            }
        }
        for i in 0..<n { for k in 0...i { t[i * n + k] = 0 } }
        // P = alpha T U, as T times the rows of U^T.
        var ut = [Double](repeating: 0, count: n * n)
        for i in 0..<n { for j in i..<n { ut[j * n + i] = u[i * n + j] } }
        var p = [Double](repeating: 0, count: n * n)
        t.withUnsafeBufferPointer { tb in
            ut.withUnsafeBufferPointer { ub in
                p.withUnsafeMutableBufferPointer {
                    DenseMath.gemmNT(m: n, n: n, k: n, a: tb.baseAddress!, lda: n, b: ub.baseAddress!, ldb: n, c: $0.baseAddress!,
                                     ldc: n, alpha: alpha, triangle: .upper, threads: threads)
                }
            }
        }
        for i in 0..<n { for k in 0...i { p[i * n + k] = 0 } }
        return p
    }

    /// Hinv = upper Cholesky factor of (H + damp * mean(diag H) * I)^-1; a failed Cholesky raises damp x10 (logged).
    static func invert(_ h: [Double], n cols: Int, config: GPTQConfig, name: String, log: ((String) -> Void)?,
                       threads: Int) throws -> (hinv: [Double], dampPercent: Double, escalations: Int) {
        var meanDiag = 0.0
        for i in 0..<cols { meanDiag += h[i * cols + i] }
        meanDiag /= Double(cols)
        var percent = config.dampPercent
        var escalations = 0
        while true {
            var hd = h
            let damp = percent * meanDiag
            for i in 0..<cols { hd[i * cols + i] += damp }
            if let u = DenseMath.upperCholeskyOfInverse(hd, n: cols, threads: threads) { return (u, percent, escalations) }
            guard escalations < config.maxDampEscalations else {
                throw QuantKitError(.numeric, "\(name): Hessian not positive definite even with damping \(percent) x mean(diag H)")
            }
            escalations += 1
            let next = percent * 10
            log?("\(name): Cholesky failed with damp \(percent); retrying with \(next)")
            percent = next
        }
    }

    /// Back to original column order; scales table and g_idx as AutoGPTQ lays them out. Also the dequantized
    /// weights in original order.
    static func pack(_ p: Prepared, _ s: GPTQSweep, config: GPTQConfig) -> (QuantizedWeight, [Double]) {
        let (rows, cols, scheme) = (p.rows, p.cols, config.scheme)
        let gs = scheme.effectiveGroupSize(inFeatures: cols), ng = scheme.groupCount(inFeatures: cols)
        var codes = [UInt8](repeating: 0, count: rows * cols)
        var deq = [Double](repeating: 0, count: rows * cols)
        var gIdx = [Int32](repeating: 0, count: cols)
        for c in 0..<cols {
            let orig = p.perm[c]
            gIdx[orig] = Int32(config.staticGroups ? orig / gs : c / gs)
            for r in 0..<rows {
                codes[r * cols + orig] = s.codes[r * cols + c]
                deq[r * cols + orig] = s.deq[r * cols + c]
            }
        }
        var scales = [Float](repeating: 0, count: rows * ng)
        var zeros = [Int32](repeating: 0, count: rows * ng)
        for r in 0..<rows {
            for g in 0..<ng {
                let q = scheme.groupSize > 0
                    ? (config.staticGroups ? p.staticParams[r * ng + g] : s.groupParams[r * ng + g]) : p.fixedParams[r]
                scales[r * ng + g] = Float(q.scale)
                zeros[r * ng + g] = Int32(q.zero)
            }
        }
        let qw = QuantizedWeight(outFeatures: rows, inFeatures: cols, bits: scheme.bits, symmetric: scheme.symmetric,
                                 groupSize: scheme.groupSize, codes: codes, scales: scales, zeros: zeros, gIdx: gIdx)
        return (qw, deq)
    }
}

/// Algorithm 1 of the GPTQ paper over one prepared layer, in sweep column order. Output rows are independent once
/// Hinv is known: threads take contiguous row ranges and run the whole column loop on tiles of `tileRows` rows.
/// Codes, dequantized values and dynamic group parameters are recorded in sweep order for `GPTQ.pack`. With GPTAQ's
/// P each column also adds w_j (x) P[j, ...] (see `GPTAQConfig`).
final class GPTQSweep: @unchecked Sendable {
    static let tileRows = 4
    let rows: Int, cols: Int, blockSize: Int
    let scheme: QuantScheme, maxq: Double
    let groupSize: Int, groups: Int, grouped: Bool, staticGroups: Bool
    let perm: [Int], fixedParams: [ScaleZero], staticParams: [ScaleZero]
    /// W [rows, cols]: columns from the current block on hold the weights as of the last lazy batch update.
    let w: UnsafeMutablePointer<Double>
    /// Hinv [cols, cols], upper triangular.
    let hinv: UnsafeMutablePointer<Double>
    /// GPTAQ's P [cols, cols], strictly upper (nil: GPTQ), and whether its lazy term uses the working copy.
    let correction: UnsafeMutablePointer<Double>?
    let upstreamLazy: Bool
    let codes: UnsafeMutablePointer<UInt8>
    let deq: UnsafeMutablePointer<Double>
    /// [rows, groups], dynamic groups.
    let groupParams: UnsafeMutablePointer<ScaleZero>
    /// Per row: sum of err^2 (err = (w - q) / Hinv_jj).
    let rowLoss: UnsafeMutablePointer<Double>

    init(_ p: GPTQ.Prepared, hinv u: [Double], correction pc: [Double]? = nil, config: GPTQConfig) {
        rows = p.rows; cols = p.cols; blockSize = config.blockSize
        scheme = config.scheme; maxq = Double(config.scheme.maxq)
        groupSize = scheme.effectiveGroupSize(inFeatures: cols); groups = scheme.groupCount(inFeatures: cols)
        grouped = scheme.groupSize > 0; staticGroups = config.staticGroups
        perm = p.perm; fixedParams = p.fixedParams; staticParams = p.staticParams
        w = .allocate(capacity: rows * cols); w.initialize(from: p.w, count: rows * cols)
        hinv = .allocate(capacity: cols * cols); hinv.initialize(from: u, count: cols * cols)
        if let pc {
            let c = UnsafeMutablePointer<Double>.allocate(capacity: cols * cols)
            c.initialize(from: pc, count: cols * cols)
            correction = c
        } else {
            correction = nil
        }
        upstreamLazy = config.gptaq?.upstreamLazyUpdate ?? false
        codes = .allocate(capacity: rows * cols); codes.initialize(repeating: 0, count: rows * cols)
        deq = .allocate(capacity: rows * cols); deq.initialize(repeating: 0, count: rows * cols)
        groupParams = .allocate(capacity: rows * groups)
        groupParams.initialize(repeating: ScaleZero(scale: 1, zero: 0), count: rows * groups)
        rowLoss = .allocate(capacity: rows); rowLoss.initialize(repeating: 0, count: rows)
    }

    deinit {
        w.deallocate(); hinv.deallocate(); correction?.deallocate(); codes.deallocate(); deq.deallocate(); groupParams.deallocate()
        rowLoss.deallocate()
    }

    /// The reference's "error": sum over weights of err^2 / 2.
    var loss: Double { UnsafeBufferPointer(start: rowLoss, count: rows).reduce(0, +) / 2 }

    func run(threads: Int) {
        Parallel.forRanges(rows, threads: threads, minPerThread: Self.tileRows) { range in
            let n = Self.tileRows * self.blockSize
            // W1 (the block being quantized) and Err1 (its scaled errors): [tileRows, blockSize].
            let w1 = UnsafeMutablePointer<Double>.allocate(capacity: n), err = UnsafeMutablePointer<Double>.allocate(capacity: n)
            // GPTAQ: the block's weights as P multiplies them, negated (subtractProducts then adds).
            let wneg = self.correction == nil ? nil : UnsafeMutablePointer<Double>.allocate(capacity: n)
            defer { w1.deallocate(); err.deallocate(); wneg?.deallocate() }
            var params = [ScaleZero](repeating: ScaleZero(scale: 1, zero: 0), count: Self.tileRows)
            var r0 = range.lowerBound
            while r0 < range.upperBound {
                let nr = min(Self.tileRows, range.upperBound - r0)
                self.sweep(rows: r0, count: nr, w1: w1, err: err, wneg: wneg, params: &params)
                r0 += nr
            }
        }
    }

    /// Algorithm 1 on rows r0..<r0+nr; `params` holds each row's current (scale, zero). The paper's i is `i1` (block
    /// start), its j is `col`, and j - i is `jb`; W1 and E are the block's columns of W and its scaled errors.
    func sweep(rows r0: Int, count nr: Int, w1: UnsafeMutablePointer<Double>, err: UnsafeMutablePointer<Double>,
               wneg: UnsafeMutablePointer<Double>? = nil, params: inout [ScaleZero]) {
        let (bs, cols) = (blockSize, cols)
        if !fixedParams.isEmpty { for t in 0..<nr { params[t] = fixedParams[r0 + t] } }
        var i1 = 0
        while i1 < cols {                                      // for i = 0, B, 2B, ...
            let i2 = min(cols, i1 + bs), count = i2 - i1
            for t in 0..<nr { (w1 + t * bs).update(from: w + (r0 + t) * cols + i1, count: count) }
            for jb in 0..<count {                              //   for j = i, ..., i + B - 1
                let col = i1 + jb
                startGroup(at: col, rows: r0, count: nr, params: &params)
                quantizeColumn(col, inBlock: jb, rows: r0, count: nr, params: params, w1: w1, err: err, wneg: wneg)
                // W[:, j+1..<i+B] -= E[:, j-i] * Hinv[j, j+1..<i+B]
                Kernels.subtractProducts(m: nr, n: count - jb - 1, k: 1, a: err + jb, lda: bs, b: hinv + col * cols + col + 1,
                                         ldb: cols, c: w1 + jb + 1, ldc: bs)
                if let pc = correction, let wneg {
                    // GPTAQ: W[:, j+1..<i+B] += w_j * P[j, j+1..<i+B]
                    Kernels.subtractProducts(m: nr, n: count - jb - 1, k: 1, a: wneg + jb, lda: bs, b: pc + col * cols + col + 1,
                                             ldb: cols, c: w1 + jb + 1, ldc: bs)
                    if upstreamLazy {
                        // The lazy term takes upstream's finished working column, W[:, j] - E[:, j-i] * Hinv[j, j].
                        let d = hinv[col * cols + col]
                        for t in 0..<nr { wneg[t * bs + jb] = -(w1[t * bs + jb] - err[t * bs + jb] * d) }
                    }
                }
            }
            // Lazy batch update: W[:, i+B...] -= E * Hinv[i..<i+B, i+B...]
            Kernels.subtractProducts(m: nr, n: cols - i2, k: count, a: err, lda: bs, b: hinv + i1 * cols + i2, ldb: cols,
                                     c: w + r0 * cols + i2, ldc: cols)
            if let pc = correction, let wneg {
                // GPTAQ: W[:, i+B...] += W_block * P[i..<i+B, i+B...]
                Kernels.subtractProducts(m: nr, n: cols - i2, k: count, a: wneg, lda: bs, b: pc + i1 * cols + i2, ldb: cols,
                                         c: w + r0 * cols + i2, ldc: cols)
            }
            i1 = i2
        }
    }

    /// Group parameters where a group starts: static ones as prepared, dynamic ones from W as of the last lazy
    /// update (the reference reads W, not the in-block W1).
    @inline(__always)
    func startGroup(at col: Int, rows r0: Int, count nr: Int, params: inout [ScaleZero]) {
        guard grouped else { return }
        if staticGroups {
            let g = perm[col] / groupSize
            for t in 0..<nr { params[t] = staticParams[(r0 + t) * groups + g] }
        } else if col % groupSize == 0 {
            let g = col / groupSize, end = min(cols, col + groupSize)
            for t in 0..<nr {
                let p = Quantizer.params(w + (r0 + t) * cols + col, count: end - col, scheme: scheme)
                params[t] = p
                groupParams[(r0 + t) * groups + g] = p
            }
        }
    }

    /// Q[:, j] = quant(W[:, j]); E[:, j-i] = (W[:, j] - Q[:, j]) / Hinv[j, j]; GPTAQ: -W[:, j] for the P term.
    @inline(__always)
    func quantizeColumn(_ col: Int, inBlock jb: Int, rows r0: Int, count nr: Int, params: [ScaleZero],
                        w1: UnsafeMutablePointer<Double>, err: UnsafeMutablePointer<Double>, wneg: UnsafeMutablePointer<Double>?) {
        let d = hinv[col * cols + col]
        for t in 0..<nr {
            let x = w1[t * blockSize + jb], p = params[t]
            let q = Quantizer.code(x, p, maxq: maxq)
            let dq = p.scale * (q - p.zero)
            codes[(r0 + t) * cols + col] = UInt8(q)
            deq[(r0 + t) * cols + col] = dq
            let e = (x - dq) / d
            rowLoss[r0 + t] += e * e
            err[t * blockSize + jb] = e
            wneg?[t * blockSize + jb] = -x
        }
    }
}
