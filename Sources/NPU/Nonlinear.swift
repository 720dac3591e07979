import Foundation
import Kernels
import TensorCore

/// Where the simulator runs nonlinear operations.
public enum NonlinearMode: String, Codable, Sendable, CaseIterable {
    /// A float16 vector unit: every input and every elementwise result is rounded to Float16; products of two
    /// fp16 values are exact in fp32 and reductions (sums of squares, softmax denominators, means) accumulate
    /// in fp32, as fp16 vector units with wide accumulators do. exp, erf, rsqrt and division are treated as
    /// single correctly rounded fp16 operations (computed in fp32, rounded once).
    case fp16
    /// Integer units with 256-entry lookup tables: softmax through an exp LUT over 8-bit scores, SiLU and GELU
    /// through LUTs on int8 inputs, RMSNorm/LayerNorm on int8 inputs with an integer rsqrt. RoPE and residual
    /// adds have no table form and run on the fp16 unit in this mode too.
    case lut
}

/// Which nonlinear operations ran on which unit, and how often (calls and elements).
public final class OpCounter: @unchecked Sendable {
    public struct Entry: Codable, Equatable, Sendable {
        public var op: String
        public var unit: String
        public var calls: Int
        public var elements: Int
    }
    private var table: [String: Entry] = [:]
    private let lock = NSLock()

    public init() {}

    public func record(_ op: String, unit: String, elements: Int) {
        lock.lock(); defer { lock.unlock() }
        let key = op + "@" + unit
        var e = table[key] ?? Entry(op: op, unit: unit, calls: 0, elements: 0)
        e.calls += 1
        e.elements += elements
        table[key] = e
    }

    public var entries: [Entry] {
        lock.lock(); defer { lock.unlock() }
        return table.values.sorted { ($0.op, $0.unit) < ($1.op, $1.unit) }
    }

    public func reset() { lock.lock(); table.removeAll(); lock.unlock() }

    public func calls(_ op: String, unit: String) -> Int {
        lock.lock(); defer { lock.unlock() }
        return table[op + "@" + unit]?.calls ?? 0
    }

    public var summary: String {
        entries.map { "\($0.op) on \($0.unit): \($0.calls) calls, \($0.elements) elements" }.joined(separator: "\n")
    }
}

/// Rounds to the nearest Float16 (ties to even) and back.
@inlinable @inline(__always)
public func fp16(_ x: Float) -> Float { Float(Float16(x)) }

/// The NPU's nonlinear operations, in the configured mode, counting every call. Signatures follow the
/// Kernels entry points so a model hook can forward to them.
public final class NPUNonlinear: @unchecked Sendable {
    public let mode: NonlinearMode
    public let counter: OpCounter

    public init(mode: NonlinearMode, counter: OpCounter = OpCounter()) {
        self.mode = mode
        self.counter = counter
    }

    var unit: String { mode == .fp16 ? "fp16" : "int-lut" }

    // MARK: norms

    public func rmsNorm(x: UnsafePointer<Float>, weight: UnsafePointer<Float>, rows: Int, dim: Int, eps: Float,
                        out: UnsafeMutablePointer<Float>) {
        counter.record("rms_norm", unit: unit, elements: rows * dim)
        for r in 0..<rows {
            let xr = x + r * dim, o = out + r * dim
            switch mode {
            case .fp16:
                var ss: Float = 0
                for i in 0..<dim { let v = fp16(xr[i]); ss += v * v }
                let inv = fp16(1 / (ss / Float(dim) + eps).squareRoot())
                for i in 0..<dim { o[i] = fp16(fp16(fp16(xr[i]) * inv) * fp16(weight[i])) }
            case .lut:
                IntNorm.rmsNormRow(xr, weight: weight, dim: dim, eps: eps, out: o)
            }
        }
    }

    public func layerNorm(x: UnsafePointer<Float>, gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>, rows: Int,
                          dim: Int, eps: Float, out: UnsafeMutablePointer<Float>) {
        counter.record("layer_norm", unit: unit, elements: rows * dim)
        for r in 0..<rows { layerNormRow(x + r * dim, gamma: gamma, beta: beta, dim: dim, eps: eps, out: out + r * dim) }
    }

    /// One LayerNorm row in the configured mode (not counted: callers count once per op).
    func layerNormRow(_ xr: UnsafePointer<Float>, gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>, dim: Int,
                      eps: Float, out o: UnsafeMutablePointer<Float>) {
        switch mode {
        case .fp16:
            var s: Float = 0
            for i in 0..<dim { s += fp16(xr[i]) }
            let mean = fp16(s / Float(dim))
            var v: Float = 0
            for i in 0..<dim { let d = fp16(fp16(xr[i]) - mean); v += d * d }
            let inv = fp16(1 / (v / Float(dim) + eps).squareRoot())
            for i in 0..<dim {
                let d = fp16(fp16(xr[i]) - mean)
                o[i] = fp16(fp16(fp16(d * inv) * fp16(gamma[i])) + fp16(beta[i]))
            }
        case .lut:
            IntNorm.layerNormRow(xr, gamma: gamma, beta: beta, dim: dim, eps: eps, out: o)
        }
    }

    // MARK: softmax

    /// In-place softmax over each row.
    public func softmax(_ x: UnsafeMutablePointer<Float>, rows: Int, cols: Int) {
        counter.record("softmax", unit: unit, elements: rows * cols)
        for r in 0..<rows {
            let p = x + r * cols
            switch mode {
            case .fp16:
                Self.softmaxFP16Row(p, cols: cols)
            case .lut:
                SoftmaxLUT.row(p, cols: cols)
            }
        }
    }

    /// One softmax row on the fp16 unit (fp32 sum of fp16 exponentials, fp16 reciprocal).
    public static func softmaxFP16Row(_ p: UnsafeMutablePointer<Float>, cols: Int) {
        var mx = -Float.infinity
        for i in 0..<cols { p[i] = fp16(p[i]); mx = max(mx, p[i]) }
        var s: Float = 0
        for i in 0..<cols { let e = fp16(exp(fp16(p[i] - mx))); p[i] = e; s += e }
        let inv = fp16(1 / s)
        for i in 0..<cols { p[i] = fp16(p[i] * inv) }
    }

    // MARK: activations

    /// gate[i] = silu(gate[i]) * up[i]
    public func swiglu(gate: UnsafeMutablePointer<Float>, up: UnsafePointer<Float>, count: Int) {
        counter.record("swiglu", unit: unit, elements: count)
        switch mode {
        case .fp16:
            for i in 0..<count { gate[i] = fp16(Self.silu16(gate[i]) * fp16(up[i])) }
        case .lut:
            let table = ActivationLUT(function: .silu, input: gate, count: count)
            for i in 0..<count { gate[i] = fp16(table.lookup(gate[i]) * fp16(up[i])) }
        }
    }

    public func silu(_ x: UnsafeMutablePointer<Float>, count: Int) {
        counter.record("silu", unit: unit, elements: count)
        switch mode {
        case .fp16: for i in 0..<count { x[i] = Self.silu16(x[i]) }
        case .lut:
            let table = ActivationLUT(function: .silu, input: x, count: count)
            for i in 0..<count { x[i] = table.lookup(x[i]) }
        }
    }

    public func gelu(_ x: UnsafeMutablePointer<Float>, count: Int) {
        counter.record("gelu", unit: unit, elements: count)
        switch mode {
        case .fp16: for i in 0..<count { x[i] = Self.gelu16(x[i]) }
        case .lut:
            let table = ActivationLUT(function: .gelu, input: x, count: count)
            for i in 0..<count { x[i] = table.lookup(x[i]) }
        }
    }

    /// GELU on the fp16 unit: fp16 input, erf as one correctly rounded op, fp16 result.
    @inline(__always) static func gelu16(_ v: Float) -> Float { fp16(ActivationLUT.Function.gelu.apply(fp16(v))) }

    @inline(__always) static func silu16(_ v: Float) -> Float {
        let x = fp16(v)
        let d = fp16(1 + fp16(exp(-x)))
        return fp16(x / d)
    }

    // MARK: RoPE and residuals (fp16 unit in both modes)

    /// Rotary embedding, "rotate_half" layout as Kernels.rope; cos/sin come from an fp16 table.
    public func rope(_ x: UnsafeMutablePointer<Float>, rows: Int, heads: Int, headDim: Int, positions: UnsafePointer<Int32>,
                     frequencies: [Double]) {
        counter.record("rope", unit: "fp16", elements: rows * heads * headDim)
        let half = headDim / 2
        for r in 0..<rows {
            let pos = Double(positions[r])
            for i in 0..<half {
                let angle = pos * frequencies[i]
                let c = fp16(Float(cos(angle))), s = fp16(Float(sin(angle)))
                for h in 0..<heads {
                    let p = x + r * heads * headDim + h * headDim
                    let a = fp16(p[i]), b = fp16(p[i + half])
                    p[i] = fp16(fp16(a * c) - fp16(b * s))
                    p[i + half] = fp16(fp16(a * s) + fp16(b * c))
                }
            }
        }
    }

    /// x[i] += y[i]
    public func residualAdd(_ x: UnsafeMutablePointer<Float>, _ y: UnsafePointer<Float>, count: Int) {
        counter.record("residual_add", unit: "fp16", elements: count)
        for i in 0..<count { x[i] = fp16(fp16(x[i]) + fp16(y[i])) }
    }

    /// A rotated model's online Hadamard on the fp16 unit (LUT mode has no table form for it either): fp16 inputs,
    /// the signed sums and the 1/√n scale in fp32 as the unit's reductions accumulate, each output rounded once.
    public func hadamard(_ x: UnsafeMutablePointer<Float>, rows: Int, n: Int, threads: Int) {
        counter.record("hadamard", unit: "fp16", elements: rows * n)
        for i in 0..<(rows * n) { x[i] = fp16(x[i]) }
        try! Hadamard.transform(x, rows: rows, n: n, threads: threads)
        for i in 0..<(rows * n) { x[i] = fp16(x[i]) }
    }
}

/// 256-entry exp table softmax (the TFLite int8 softmax scheme): scores are quantized per row to 8 bits as
/// d = round((max - x) / s) in [0, 255] with s = min(max - min, 16 ln 2) / 255 (exp of anything more than
/// 16 ln 2 below the max is under 2^-16 and clamps to the last entry); LUT[d] = round(2^15 exp(-s d));
/// the int32 sum of table values divides each entry, and the probability is written as uint8 with scale 1/256
/// (TFLite's int8 softmax output: scale 1/256, zero point -128), i.e. p = round(256 LUT[d] / sum) / 256, saturated
/// at 255/256. A static-range NPU takes s from calibration; the per-row range is this simulator's simplification.
public enum SoftmaxLUT {
    public static let maxRange: Float = 16 * Float(M_LN2)

    public static func row(_ p: UnsafeMutablePointer<Float>, cols: Int) {
        guard cols > 0 else { return }
        var mx = -Float.infinity, mn = Float.infinity
        for i in 0..<cols { mx = max(mx, p[i]); mn = min(mn, p[i]) }
        let range = min(mx - mn, maxRange)
        let s = range > 0 ? range / 255 : 1
        var table = [Int32](repeating: 0, count: 256)
        for d in 0..<256 { table[d] = Int32((32768 * exp(-Double(s) * Double(d))).rounded()) }
        var sum: Int64 = 0
        var idx = [UInt8](repeating: 0, count: cols)
        for i in 0..<cols {
            let d = min(255, max(0, ((mx - p[i]) / s).rounded(.toNearestOrAwayFromZero)))
            idx[i] = d.isNaN ? 255 : UInt8(d)
            sum += Int64(table[Int(idx[i])])
        }
        for i in 0..<cols {
            let q = (Int64(table[Int(idx[i])]) * 256 + sum / 2) / sum
            p[i] = Float(min(255, q)) / 256
        }
    }
}

/// A 256-entry activation table on int8 inputs: the input is quantized per call (per tensor) with min/max
/// parameters, each table entry holds f(dequantized code) rounded to fp16, and the output is the entry.
public struct ActivationLUT: Sendable {
    public enum Function: Sendable {
        case silu, gelu
        public func apply(_ x: Float) -> Float {
            switch self {
            case .silu: return x / (1 + exp(-x))
            case .gelu: return Float(Double(x) * 0.5 * (1 + erf(Double(x) / 2.0.squareRoot())))
            }
        }
    }
    public let params: Int8AffineParams
    public var table: [Float]

    public init(function: Function, params: Int8AffineParams) {
        self.params = params
        table = (0..<256).map { fp16(function.apply(params.dequantize(Int8(truncatingIfNeeded: $0 - 128)))) }
    }

    public init(function: Function, input: UnsafePointer<Float>, count: Int) {
        var lo: Float = 0, hi: Float = 0
        for i in 0..<count where input[i].isFinite { lo = min(lo, input[i]); hi = max(hi, input[i]) }
        self.init(function: function, params: Int8AffineParams.fromRange(min: lo, max: hi))
    }

    @inline(__always) public func lookup(_ x: Float) -> Float { table[Int(params.quantize(x)) + 128] }
}

/// Norms on an integer unit: each row is quantized to int8 symmetrically (scale max|x| / 127), sums of q and
/// q^2 accumulate exactly in int64, and 1/sqrt of the (integer) mean square comes from IntRsqrt. The normalized
/// value q * rsqrt is formed in fixed point and multiplied by the fp16 weight on the fp16 unit.
public enum IntNorm {
    static func quantizeRow(_ x: UnsafePointer<Float>, dim: Int) -> (q: [Int32], scale: Float) {
        var m: Float = 0
        for i in 0..<dim where x[i].isFinite { m = max(m, abs(x[i])) }
        let s = m > 0 ? m / 127 : 1
        return ((0..<dim).map { Int32(max(-127, min(127, (x[$0] / s).rounded(.toNearestOrAwayFromZero)))) }, s)
    }

    public static func rmsNormRow(_ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, dim: Int, eps: Float,
                                  out: UnsafeMutablePointer<Float>) {
        let (q, s) = quantizeRow(x, dim: dim)
        var ss: Int64 = 0
        for v in q { ss += Int64(v) * Int64(v) }
        // mean square in Q8 fixed point (integer codes), eps converted to the same units
        let epsQ = Int64((Double(eps) / Double(s * s) * 256).rounded())
        let v = max(1, (ss * 256) / Int64(dim) + epsQ)
        let r = IntRsqrt.rsqrtQ30(v)  // 2^30 / sqrt(v) with v in Q8 -> rsqrt(mean) = r * 16 / 2^30
        for i in 0..<dim {
            let n = Double(Int64(q[i]) * r) * 16 / Double(1 << 30)
            out[i] = fp16(fp16(Float(n)) * fp16(weight[i]))
        }
    }

    public static func layerNormRow(_ x: UnsafePointer<Float>, gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>,
                                    dim: Int, eps: Float, out: UnsafeMutablePointer<Float>) {
        let (q, s) = quantizeRow(x, dim: dim)
        var sum: Int64 = 0, ss: Int64 = 0
        for v in q { sum += Int64(v); ss += Int64(v) * Int64(v) }
        let d = Int64(dim)
        // variance * dim^2 = dim * sum q^2 - (sum q)^2, exact; to Q8 mean units
        let varQ8 = ((d * ss - sum * sum) * 256) / (d * d)
        let epsQ = Int64((Double(eps) / Double(s * s) * 256).rounded())
        let r = IntRsqrt.rsqrtQ30(max(1, varQ8 + epsQ))
        // mean in Q8 so the centred code keeps fractional bits
        let meanQ8 = (sum * 256) / d
        for i in 0..<dim {
            let c = Int64(q[i]) * 256 - meanQ8
            let n = Double(c * r) / 256 * 16 / Double(1 << 30)
            out[i] = fp16(fp16(fp16(Float(n)) * fp16(gamma[i])) + fp16(beta[i]))
        }
    }
}

/// Integer reciprocal square root: v = m * 4^-k with m normalised to [2^30, 2^32); a 256-entry table indexed
/// by the top 8 bits of m (entries 64...255 are used) gives a seed good to ~0.4%, and two Newton steps
/// y <- y (3 - m y^2) / 2 in 64-bit fixed point (128-bit intermediate products) refine it to ~1e-9 relative.
/// Returns round(2^30 / sqrt(v)) for v >= 1.
public enum IntRsqrt {
    /// seed[i] = 2^47 / sqrt(m) at the centre of bucket i (m in [i * 2^24, (i + 1) * 2^24)).
    static let seeds: [Int64] = (0..<256).map { i in
        let m = (Double(i) + 0.5) * Double(1 << 24)
        return Int64((140737488355328.0 / m.squareRoot()).rounded())
    }

    /// (a * b) >> s with a 128-bit intermediate, for non-negative operands whose result fits in Int64.
    @inline(__always) static func mulShr(_ a: Int64, _ b: Int64, _ s: Int) -> Int64 {
        let (h, l) = a.multipliedFullWidth(by: b)
        return (h << (64 - s)) | Int64(bitPattern: l >> UInt64(s))
    }

    public static func rsqrtQ30(_ v: Int64) -> Int64 {
        var m = max(1, v), k = 0
        while m < (1 << 30) { m <<= 2; k += 1 }
        while m >= (Int64(1) << 32) { m >>= 2; k -= 1 }
        // y ~ 2^47 / sqrt(m), in (2^31, 2^32]
        var y = seeds[Int(m >> 24)]
        for _ in 0..<2 {
            let y2 = mulShr(y, y, 32)       // y^2 / 2^32
            let t = mulShr(m, y2, 30)       // m y^2 / 2^62: 2^32 when y is exact
            y = mulShr(y, (Int64(3) << 32) - t, 33)
        }
        // 2^30 / sqrt(v) = 2^30 * 2^k / sqrt(m) = y * 2^(k - 17)
        let shift = k - 17
        return shift >= 0 ? y << shift : (y + (Int64(1) << (-shift - 1))) >> (-shift)
    }
}
