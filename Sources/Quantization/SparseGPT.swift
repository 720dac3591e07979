import Foundation
import Kernels
import TensorCore

/// Which weights SparseGPT removes from a layer [out, in].
public enum SparsityPattern: Sendable, Equatable {
    /// Fraction p in (0, 1): in each block of columns, the floor(p * rows * blockColumns) weights with the lowest
    /// saliency over the whole block, so per-row sparsity varies.
    case unstructured(Double)
    /// n of every m consecutive input columns in each row (0 < n < m; 2:4 is what sparse tensor cores run).
    case semiStructured(n: Int, m: Int)

    public var label: String {
        switch self {
        case .unstructured(let p): return String(format: "%g%% unstructured", p * 100)
        case .semiStructured(let n, let m): return "\(n):\(m)"
        }
    }
}

/// SparseGPT settings (the reference's fasterprune arguments, plus the joint quantizer).
public struct SparseGPTConfig: Sendable, Equatable {
    public var pattern: SparsityPattern
    /// Joint pruning and quantization with this scheme; nil prunes only.
    public var quantize: QuantScheme?
    public var dampPercent: Double
    public var blockSize: Int
    /// Damping escalations (x10 each) tried after a failed Cholesky before giving up.
    public var maxDampEscalations: Int

    public init(pattern: SparsityPattern, quantize: QuantScheme? = nil, dampPercent: Double = 0.01, blockSize: Int = 128,
                maxDampEscalations: Int = 6) {
        self.pattern = pattern
        self.quantize = quantize
        self.dampPercent = dampPercent
        self.blockSize = blockSize
        self.maxDampEscalations = maxDampEscalations
    }

    /// Throws a one-line error for settings SparseGPT cannot run with.
    public func validate(name: String = "layer") throws {
        guard blockSize > 0 else { throw QuantKitError(.config, "\(name): block size \(blockSize) must be positive") }
        switch pattern {
        case .unstructured(let p):
            guard p > 0, p < 1 else { throw QuantKitError(.config, "\(name): sparsity \(p) is outside (0, 1)") }
        case .semiStructured(let n, let m):
            guard m >= 1 else { throw QuantKitError(.config, "\(name): n:m sparsity \(n):\(m) needs m >= 1") }
            guard n > 0, n < m else { throw QuantKitError(.config, "\(name): n:m sparsity \(n):\(m) needs 0 < n < m") }
            // Groups must not straddle blocks: a group's scores are read from the block's updated columns.
            guard blockSize % m == 0 else {
                throw QuantKitError(.config, "\(name): block size \(blockSize) is not a multiple of m = \(m)")
            }
        }
        guard dampPercent.isFinite, dampPercent >= 0 else {
            throw QuantKitError(.config, "\(name): damping \(dampPercent) must be a finite number >= 0")
        }
    }
}

public struct SparseGPTLayerResult: Sendable {
    /// Final weights [out, in] in Float64: exactly 0 where pruned; the dequantized values when quantizing jointly.
    public let weights: [Double]
    /// [out, in]: true where SparseGPT pruned the weight.
    public let mask: [Bool]
    /// Nonzero fraction of `weights` over the layer, and its least and greatest value over rows. Joint quantization
    /// can zero kept weights too (those that round to the zero point), so density may fall below 1 - sparsity.
    public let density: Double
    public let minRowDensity: Double
    public let maxRowDensity: Double
    /// Sum over weights of (w - q)^2 / U_jj^2 / 2, as the reference prints it ("error").
    public let loss: Double
    /// Damping fraction finally used (dampPercent, or raised x10 per failed Cholesky) and the escalations.
    public let dampPercentUsed: Double
    public let dampEscalations: Int
    public let deadColumns: Int
    /// Codes in original column order with their scales and zero points (joint quantization only); pruned weights
    /// hold their row's zero point, so they dequantize to exactly 0.
    public let quantized: QuantizedWeight?
    public let seconds: Double

    /// `weights` rounded to Float (zeros stay zeros).
    public var floatWeights: [Float] { weights.map(Float.init) }
}

/// SparseGPT for one linear layer (Frantar & Alistarh 2023; METHODS.md section 5, behaviour of IST-DASLab/sparsegpt
/// `fasterprune`): GPTQ's column sweep where each column's "quantization" sets the pruned entries to 0 (and, joint,
/// quantizes the rest), the error fed forward through U = upper Cholesky factor of H^-1. Shares GPTQ's checks,
/// dead-column handling and damped inversion (`GPTQ.prepare`, `GPTQ.invert`).
///
/// Selection rules, where the reference is silent or unstable:
/// - Unstructured: exactly floor(p * rows * blockColumns) weights per block; ties in score go to the lower
///   row-major index within the block. (sparsegpt.py prunes every score <= the floor(pN)-th order statistic,
///   0-based, which is one weight more per block and all ties at the threshold; its torch.sort is not stable.)
///   Dead columns (weights zeroed, score 0) are pruned first and count toward the quota, as in the reference.
/// - n:m: groups are columns j..j+m-1 with j = 0 mod m (layer column index); ties go to the lower column. Columns
///   after the last full group (in % m != 0) stay dense: sparsegpt.py would prune n of the short tail, or fail when
///   it holds fewer than n columns.
/// - Joint quantization: per-channel / per-tensor parameters come from the dense weights before dead columns are
///   zeroed (the reference's find_params on the full W). Groups get theirs at the group's first column from W as of
///   the last lazy update, as GPTQ's dynamic groups do, over every entry of the group: entries about to be pruned
///   are not excluded. No act-order or static groups (the reference has neither).
public enum SparseGPT {
    public static func prune(weight: [Float], outFeatures: Int, inFeatures: Int, hessian: [Double], config: SparseGPTConfig,
                             name: String = "layer", log: ((String) -> Void)? = nil,
                             threads: Int = Parallel.defaultThreads) throws -> SparseGPTLayerResult {
        let start = Date()
        try config.validate(name: name)
        // Prune only: a grouped scheme makes prepare fix no quantizer parameters (none are used).
        let scheme = try config.quantize ?? QuantScheme(bits: 8, groupSize: 1)
        let gptq = GPTQConfig(scheme: scheme, dampPercent: config.dampPercent, blockSize: config.blockSize,
                              maxDampEscalations: config.maxDampEscalations)
        let p = try GPTQ.prepare(weight: weight, outFeatures: outFeatures, inFeatures: inFeatures, hessian: hessian,
                                 config: gptq, name: name)
        let inv = try GPTQ.invert(p.h, n: inFeatures, config: gptq, name: name, log: log, threads: threads)
        let sweep = SparseGPTSweep(p, hinv: inv.hinv, config: config)
        sweep.run(threads: threads)
        return sweep.result(dampPercent: inv.dampPercent, escalations: inv.escalations, deadColumns: p.deadColumns,
                            seconds: Date().timeIntervalSince(start))
    }

    /// The k-th smallest (0-based) of `v`, which it reorders: Hoare's selection with a median-of-three pivot.
    static func kthSmallest(_ v: UnsafeMutableBufferPointer<Double>, _ k: Int) -> Double {
        var lo = 0, hi = v.count - 1
        while lo < hi {
            let a = v[lo], b = v[lo + (hi - lo) / 2], c = v[hi]
            let pivot = max(min(a, b), min(max(a, b), c))
            var i = lo, j = hi
            while i <= j {
                while v[i] < pivot { i += 1 }
                while v[j] > pivot { j -= 1 }
                if i <= j { v.swapAt(i, j); i += 1; j -= 1 }
            }
            // Now v[lo...j] <= pivot <= v[i...hi] and everything strictly between equals the pivot.
            if k <= j { hi = j } else if k >= i { lo = i } else { return v[k] }
        }
        return v[k]
    }
}

/// Algorithm 1 of the SparseGPT paper over one prepared layer. Blocks run in order; inside a block, threads take
/// contiguous row ranges and run the column loop on tiles of `tileRows` rows (rows are independent once U is known).
/// Unstructured selection is global to a block, so each block's scores are gathered over all rows (by the threads,
/// after their rows' lazy update) and the block's mask is chosen before its column loop starts.
final class SparseGPTSweep: @unchecked Sendable {
    static let tileRows = 4
    let rows: Int, cols: Int, blockSize: Int
    /// Unstructured fraction (nil for n:m) and the n:m counts (0 when unstructured).
    let fraction: Double?, pruneN: Int, groupM: Int
    let scheme: QuantScheme?, maxq: Double
    let groupSize: Int, groups: Int, grouped: Bool
    let fixedParams: [ScaleZero]
    /// W [rows, cols]: columns from the current block on hold the weights as of the last lazy batch update.
    let w: UnsafeMutablePointer<Double>
    /// U [cols, cols], upper triangular.
    let hinv: UnsafeMutablePointer<Double>
    /// Final (pruned, dequantized) weights, the mask and the codes, [rows, cols].
    let out: UnsafeMutablePointer<Double>
    let pruned: UnsafeMutablePointer<Bool>
    let codes: UnsafeMutablePointer<UInt8>
    /// [rows, groups], grouped joint quantization.
    let groupParams: UnsafeMutablePointer<ScaleZero>
    /// Per row: sum of err^2 (err = (w - q) / U_jj).
    let rowLoss: UnsafeMutablePointer<Double>
    /// Unstructured: the saliency w^2 / U_jj^2 of the next block's weights, [rows, blockSize].
    let scores: UnsafeMutablePointer<Double>

    init(_ p: GPTQ.Prepared, hinv u: [Double], config: SparseGPTConfig) {
        rows = p.rows; cols = p.cols; blockSize = config.blockSize
        switch config.pattern {
        case .unstructured(let f): fraction = f; pruneN = 0; groupM = 0
        case .semiStructured(let n, let m): fraction = nil; pruneN = n; groupM = m
        }
        scheme = config.quantize; maxq = Double(config.quantize?.maxq ?? 0)
        groupSize = scheme?.effectiveGroupSize(inFeatures: cols) ?? cols
        groups = scheme?.groupCount(inFeatures: cols) ?? 1
        grouped = (scheme?.groupSize ?? 0) > 0
        fixedParams = p.fixedParams
        w = .allocate(capacity: rows * cols); w.initialize(from: p.w, count: rows * cols)
        hinv = .allocate(capacity: cols * cols); hinv.initialize(from: u, count: cols * cols)
        out = .allocate(capacity: rows * cols); out.initialize(repeating: 0, count: rows * cols)
        pruned = .allocate(capacity: rows * cols); pruned.initialize(repeating: false, count: rows * cols)
        codes = .allocate(capacity: rows * cols); codes.initialize(repeating: 0, count: rows * cols)
        groupParams = .allocate(capacity: rows * groups)
        groupParams.initialize(repeating: ScaleZero(scale: 1, zero: 0), count: rows * groups)
        rowLoss = .allocate(capacity: rows); rowLoss.initialize(repeating: 0, count: rows)
        let scoreCount = fraction == nil ? 0 : rows * blockSize
        scores = .allocate(capacity: scoreCount); scores.initialize(repeating: 0, count: scoreCount)
    }

    deinit {
        w.deallocate(); hinv.deallocate(); out.deallocate(); pruned.deallocate(); codes.deallocate()
        groupParams.deallocate(); rowLoss.deallocate(); scores.deallocate()
    }

    func run(threads: Int) {
        if fraction != nil { Parallel.forRanges(rows, threads: threads) { self.score(rows: $0, block: 0) } }
        for i1 in stride(from: 0, to: cols, by: blockSize) {
            let i2 = min(cols, i1 + blockSize)
            if let f = fraction { selectLowest(Int(f * Double(rows * (i2 - i1))), block: i1, count: i2 - i1) }
            Parallel.forRanges(rows, threads: threads, minPerThread: Self.tileRows) { range in
                let n = Self.tileRows * self.blockSize
                // W1 (the block being pruned) and Err1 (its scaled errors): [tileRows, blockSize].
                let w1 = UnsafeMutablePointer<Double>.allocate(capacity: n), err = UnsafeMutablePointer<Double>.allocate(capacity: n)
                defer { w1.deallocate(); err.deallocate() }
                var r0 = range.lowerBound
                while r0 < range.upperBound {
                    let nr = min(Self.tileRows, range.upperBound - r0)
                    self.sweep(block: i1, end: i2, rows: r0, count: nr, w1: w1, err: err)
                    r0 += nr
                }
                if self.fraction != nil && i2 < self.cols { self.score(rows: range, block: i2) }
            }
        }
    }

    /// One block of Algorithm 1 on rows r0..<r0+nr, then their lazy batch update of the columns after the block.
    func sweep(block i1: Int, end i2: Int, rows r0: Int, count nr: Int, w1: UnsafeMutablePointer<Double>,
               err: UnsafeMutablePointer<Double>) {
        let (bs, cols, count) = (blockSize, cols, i2 - i1)
        for t in 0..<nr { (w1 + t * bs).update(from: w + (r0 + t) * cols + i1, count: count) }
        for jb in 0..<count {
            let col = i1 + jb
            if groupM > 0 && col % groupM == 0 && col + groupM <= cols { selectGroup(at: col, inBlock: jb, rows: r0, count: nr, w1: w1) }
            if grouped && col % groupSize == 0 { startGroup(at: col, rows: r0, count: nr) }
            pruneColumn(col, inBlock: jb, rows: r0, count: nr, w1: w1, err: err)
            // W[:, j+1..<i+B] -= E[:, j-i] * U[j, j+1..<i+B]
            Kernels.subtractProducts(m: nr, n: count - jb - 1, k: 1, a: err + jb, lda: bs, b: hinv + col * cols + col + 1,
                                     ldb: cols, c: w1 + jb + 1, ldc: bs)
        }
        // Lazy batch update: W[:, i+B...] -= E * U[i..<i+B, i+B...]
        Kernels.subtractProducts(m: nr, n: cols - i2, k: count, a: err, lda: bs, b: hinv + i1 * cols + i2, ldb: cols,
                                 c: w + r0 * cols + i2, ldc: cols)
    }

    /// Saliency of the block starting at column i1 for `range` rows, from W after their last lazy update.
    func score(rows range: Range<Int>, block i1: Int) {
        let count = min(cols, i1 + blockSize) - i1
        for r in range {
            for jb in 0..<count {
                let c = i1 + jb, x = w[r * cols + c], d = hinv[c * cols + c]
                scores[r * blockSize + jb] = x * x / (d * d)
            }
        }
    }

    /// Marks the k lowest scores of the block [rows, count] as pruned; ties go to the lower row-major index.
    func selectLowest(_ k0: Int, block i1: Int, count: Int) {
        let k = min(k0, rows * count)
        guard k > 0 else { return }
        var v = [Double](repeating: 0, count: rows * count)
        for r in 0..<rows { for jb in 0..<count { v[r * count + jb] = scores[r * blockSize + jb] } }
        let t = v.withUnsafeMutableBufferPointer { SparseGPT.kthSmallest($0, k - 1) }
        var below = 0
        for r in 0..<rows { for jb in 0..<count where scores[r * blockSize + jb] < t { below += 1 } }
        var ties = k - below
        for r in 0..<rows {
            for jb in 0..<count {
                let s = scores[r * blockSize + jb]
                if s < t || (s == t && ties > 0) {
                    if s == t { ties -= 1 }
                    pruned[r * cols + i1 + jb] = true
                }
            }
        }
    }

    /// n:m: per row, prune the n lowest current scores of columns col..<col+m (stable rank: ties to the lower column).
    @inline(__always)
    func selectGroup(at col: Int, inBlock jb: Int, rows r0: Int, count nr: Int, w1: UnsafeMutablePointer<Double>) {
        let m = groupM
        @inline(__always) func score(_ t: Int, _ l: Int) -> Double {
            let x = w1[t * blockSize + jb + l], d = hinv[(col + l) * cols + col + l]
            return x * x / (d * d)
        }
        for t in 0..<nr {
            for l in 0..<m {
                let s = score(t, l)
                var rank = 0
                for o in 0..<m { let so = score(t, o); if so < s || (so == s && o < l) { rank += 1 } }
                if rank < pruneN { pruned[(r0 + t) * cols + col + l] = true }
            }
        }
    }

    /// Group parameters at a group's first column, from W as of the last lazy update (the in-block W1 is not read,
    /// as in GPTQ), over the whole group: entries that will be pruned count too.
    @inline(__always)
    func startGroup(at col: Int, rows r0: Int, count nr: Int) {
        guard let scheme else { return }
        let g = col / groupSize, end = min(cols, col + groupSize)
        for t in 0..<nr {
            groupParams[(r0 + t) * groups + g] = Quantizer.params(w + (r0 + t) * cols + col, count: end - col, scheme: scheme)
        }
    }

    /// q = W[:, j] with pruned entries 0 (then quantized when joint); E[:, j-i] = (W[:, j] - q) / U[j, j].
    @inline(__always)
    func pruneColumn(_ col: Int, inBlock jb: Int, rows r0: Int, count nr: Int, w1: UnsafeMutablePointer<Double>,
                     err: UnsafeMutablePointer<Double>) {
        let d = hinv[col * cols + col]
        for t in 0..<nr {
            let r = r0 + t, idx = r * cols + col
            let x = w1[t * blockSize + jb]
            var q = pruned[idx] ? 0 : x
            if scheme != nil {
                // A pruned 0 codes to the zero point and dequantizes to scale * 0 = 0 exactly.
                let p = grouped ? groupParams[r * groups + col / groupSize] : fixedParams[r]
                let c = Quantizer.code(q, p, maxq: maxq)
                codes[idx] = UInt8(c)
                q = p.scale * (c - p.zero)
            }
            out[idx] = q
            let e = (x - q) / d
            rowLoss[r] += e * e
            err[t * blockSize + jb] = e
        }
    }

    func result(dampPercent: Double, escalations: Int, deadColumns: Int, seconds: Double) -> SparseGPTLayerResult {
        let n = rows * cols
        let weights = Array(UnsafeBufferPointer(start: out, count: n))
        var nonzero = 0, lo = Int.max, hi = 0
        for r in 0..<rows {
            var k = 0
            for c in 0..<cols where out[r * cols + c] != 0 { k += 1 }
            nonzero += k; lo = min(lo, k); hi = max(hi, k)
        }
        var quantized: QuantizedWeight?
        if let scheme {
            var scales = [Float](repeating: 0, count: rows * groups), zeros = [Int32](repeating: 0, count: rows * groups)
            for r in 0..<rows {
                for g in 0..<groups {
                    let p = grouped ? groupParams[r * groups + g] : fixedParams[r]
                    scales[r * groups + g] = Float(p.scale)
                    zeros[r * groups + g] = Int32(p.zero)
                }
            }
            quantized = QuantizedWeight(outFeatures: rows, inFeatures: cols, bits: scheme.bits, symmetric: scheme.symmetric,
                                        groupSize: scheme.groupSize, codes: Array(UnsafeBufferPointer(start: codes, count: n)),
                                        scales: scales, zeros: zeros, gIdx: (0..<cols).map { Int32($0 / groupSize) })
        }
        return SparseGPTLayerResult(
            weights: weights, mask: Array(UnsafeBufferPointer(start: pruned, count: n)),
            density: Double(nonzero) / Double(n), minRowDensity: Double(lo) / Double(cols), maxRowDensity: Double(hi) / Double(cols),
            loss: UnsafeBufferPointer(start: rowLoss, count: rows).reduce(0, +) / 2, dampPercentUsed: dampPercent,
            dampEscalations: escalations, deadColumns: deadColumns, quantized: quantized, seconds: seconds)
    }
}
