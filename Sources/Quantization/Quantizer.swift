import Foundation
import TensorCore

/// How a weight matrix [out, in] is quantized: bit width, symmetric or asymmetric zero point, and the span one
/// (scale, zero) pair covers. Definitions: SPECS.md "GPTQ" (the quantizer bullet).
public struct QuantScheme: Sendable, Equatable, Codable {
    /// Group size along the input dimension; `perChannel` (-1) = one pair per output row, `perTensor` (0) = one
    /// pair for the whole matrix. The last group of a row may be short.
    public static let perChannel = -1
    public static let perTensor = 0

    public let bits: Int
    public let symmetric: Bool
    public let groupSize: Int
    /// Clipping search: shrink the range and keep the scale with the smallest sum |x - deq(q(x))|^2.4.
    public let mseSearch: Bool
    /// Smallest zero point allowed in asymmetric mode. The AutoGPTQ v1 layout stores zero - 1 and cannot hold
    /// zero 0 (a group with no negative value); writers of that layout ask for 1 (see GPTQCheckpoint).
    public let minZero: Int

    /// The code widths QuantKit quantizes to.
    public static let supportedBits = [2, 3, 4, 8]

    public init(bits: Int, symmetric: Bool = true, groupSize: Int = QuantScheme.perChannel, mseSearch: Bool = false,
                minZero: Int = 0) throws {
        guard Self.supportedBits.contains(bits) else {
            throw QuantKitError(.config, "bits \(bits) is not supported (use 2, 3, 4 or 8)")
        }
        guard groupSize >= -1, groupSize <= UserLimits.contextTokens else {
            throw QuantKitError(.config, "group size \(groupSize) is invalid (use a positive size up to \(UserLimits.contextTokens), -1 per channel, 0 per tensor)")
        }
        guard minZero >= 0, minZero <= 1 else { throw QuantKitError(.config, "minZero must be 0 or 1") }
        self.bits = bits
        self.symmetric = symmetric
        self.groupSize = groupSize
        self.mseSearch = mseSearch
        self.minZero = minZero
    }

    public var maxq: Int { (1 << bits) - 1 }

    /// Number of (scale, zero) columns per output row for a layer with `inFeatures` inputs.
    public func groupCount(inFeatures: Int) -> Int {
        groupSize > 0 ? (inFeatures + groupSize - 1) / groupSize : 1
    }

    /// Group width actually used for a layer (the whole row for per-channel / per-tensor).
    public func effectiveGroupSize(inFeatures: Int) -> Int { groupSize > 0 ? groupSize : inFeatures }

    /// Throws when the scheme cannot apply to a layer [out, in].
    public func validate(outFeatures: Int, inFeatures: Int, name: String) throws {
        guard outFeatures > 0, inFeatures > 0 else {
            throw QuantKitError(.shape, "\(name): cannot quantize an empty matrix [\(outFeatures), \(inFeatures)]")
        }
        // A group size above the input dimension is one (short) group, as in AutoGPTQ (ceil(in/g) = 1).
    }

    public var label: String {
        let g = groupSize > 0 ? "g\(groupSize)" : (groupSize == 0 ? "per-tensor" : "per-channel")
        return "int\(bits) \(symmetric ? "sym" : "asym") \(g)\(mseSearch ? " mse" : "")"
    }
}

/// One (scale, zero) pair. `zero` is an integer in [0, maxq] (held as Double for the arithmetic).
public struct ScaleZero: Sendable, Equatable {
    public var scale: Double
    public var zero: Double
    public init(scale: Double, zero: Double) { self.scale = scale; self.zero = zero }
}

/// The scalar quantizer of the GPTQ reference (IST-DASLab/gptq quant.py behaviour, rewritten): the range always
/// includes 0, an all-zero range becomes [-1, 1], rounding is half-to-even (torch.round / numpy.round).
public enum Quantizer {
    /// Clipping-search grid of the reference's `mse` option: shrink factors 1 - i/grid for i < maxShrink*grid,
    /// error norm 2.4.
    public static let mseGrid = 100
    public static let mseMaxShrink = 0.8
    public static let mseNorm = 2.4

    @inline(__always)
    public static func code(_ x: Double, _ p: ScaleZero, maxq: Double) -> Double {
        min(max((x / p.scale).rounded(.toNearestOrEven) + p.zero, 0), maxq)
    }

    @inline(__always)
    public static func dequantize(_ x: Double, _ p: ScaleZero, maxq: Double) -> Double {
        p.scale * (code(x, p, maxq: maxq) - p.zero)
    }

    /// Range parameters from min/max, as the reference computes them.
    @inline(__always)
    static func rangeParams(xmin xmin0: Double, xmax xmax0: Double, scheme: QuantScheme) -> ScaleZero {
        let maxq = Double(scheme.maxq)
        var xmin = min(xmin0, 0), xmax = max(xmax0, 0)
        if scheme.symmetric {
            xmax = max(abs(xmin), xmax)
            // The reference mirrors xmin only when it is negative: an all-non-negative group keeps xmin = 0
            // (with zero = (maxq+1)/2 that clips the top of the range; kept for fidelity).
            if xmin < 0 { xmin = -xmax }
        }
        if xmin == 0 && xmax == 0 { xmin = -1; xmax = 1 }
        let scale = (xmax - xmin) / maxq
        let zero = scheme.symmetric ? (maxq + 1) / 2 : max((-xmin / scale).rounded(.toNearestOrEven), Double(scheme.minZero))
        return ScaleZero(scale: scale, zero: zero)
    }

    /// Parameters for the values `x[0..<count]` (stride `stride`).
    public static func params(_ x: UnsafePointer<Double>, count: Int, stride: Int = 1, scheme: QuantScheme) -> ScaleZero {
        var lo = Double.infinity, hi = -Double.infinity
        for i in 0..<count { let v = x[i * stride]; lo = min(lo, v); hi = max(hi, v) }
        var p = rangeParams(xmin: lo, xmax: hi, scheme: scheme)
        guard scheme.mseSearch else { return p }
        // Shrink the min/max range (reference `mse` option): keep the candidate with the least sum |err|^2.4.
        let maxq = Double(scheme.maxq)
        let xmin = min(lo, 0), xmax = max(hi, 0)
        var best = Double.infinity
        let steps = Int(mseMaxShrink * Double(mseGrid))
        for i in 0..<steps {
            let shrink = 1 - Double(i) / Double(mseGrid)
            let cand = rangeParams(xmin: shrink * xmin, xmax: shrink * xmax, scheme: scheme)
            var err = 0.0
            for j in 0..<count {
                let v = x[j * stride]
                err += pow(abs(dequantize(v, cand, maxq: maxq) - v), mseNorm)
            }
            if err < best { best = err; p = cand }
        }
        return p
    }
}

/// A quantized weight matrix in the form every QuantKit consumer takes: integer codes in the original column
/// order, per-row group parameters, and each input column's group (g_idx).
public struct QuantizedWeight: Sendable {
    public let outFeatures: Int
    public let inFeatures: Int
    public let bits: Int
    public let symmetric: Bool
    /// -1 per channel, 0 per tensor, > 0 group size (as configured).
    public let groupSize: Int
    /// [out, in] codes in 0...maxq, original column order.
    public var codes: [UInt8]
    /// [out, nGroups] scales and integer zero points.
    public var scales: [Float]
    public var zeros: [Int32]
    /// [in]: the group (column of `scales`) of each input column.
    public var gIdx: [Int32]

    public var groupCount: Int { scales.count / max(outFeatures, 1) }

    public init(outFeatures: Int, inFeatures: Int, bits: Int, symmetric: Bool, groupSize: Int, codes: [UInt8],
                scales: [Float], zeros: [Int32], gIdx: [Int32]) {
        self.outFeatures = outFeatures
        self.inFeatures = inFeatures
        self.bits = bits
        self.symmetric = symmetric
        self.groupSize = groupSize
        self.codes = codes
        self.scales = scales
        self.zeros = zeros
        self.gIdx = gIdx
    }

    /// scale * (q - zero) for every weight, [out, in].
    public func dequantized() -> [Float] {
        var out = [Float](repeating: 0, count: outFeatures * inFeatures)
        let ng = groupCount
        for r in 0..<outFeatures {
            for c in 0..<inFeatures {
                let g = Int(gIdx[c])
                out[r * inFeatures + c] = scales[r * ng + g] * Float(Int32(codes[r * inFeatures + c]) - zeros[r * ng + g])
            }
        }
        return out
    }
}

/// Round-to-nearest quantization of a whole matrix.
public enum RTN {
    /// Quantizes `weight` [out, in] (row-major, Float) with `scheme`. NaN/Inf weights are rejected.
    public static func quantize(_ weight: [Float], outFeatures: Int, inFeatures: Int, scheme: QuantScheme,
                                name: String = "weight", threads: Int = Parallel.defaultThreads) throws -> QuantizedWeight {
        try scheme.validate(outFeatures: outFeatures, inFeatures: inFeatures, name: name)
        guard weight.count == outFeatures * inFeatures else {
            throw QuantKitError(.shape, "\(name): \(weight.count) values do not fill [\(outFeatures), \(inFeatures)]")
        }
        if let bad = weight.firstIndex(where: { !$0.isFinite }) {
            throw QuantKitError(.numeric, "\(name): non-finite weight \(weight[bad]) at [\(bad / inFeatures), \(bad % inFeatures)]")
        }
        let w = weight.map(Double.init)
        let ng = scheme.groupCount(inFeatures: inFeatures)
        let gs = scheme.effectiveGroupSize(inFeatures: inFeatures)
        let maxq = Double(scheme.maxq)
        var codes = [UInt8](repeating: 0, count: w.count)
        var scales = [Float](repeating: 0, count: outFeatures * ng)
        var zeros = [Int32](repeating: 0, count: outFeatures * ng)
        let tensorParams: ScaleZero? = scheme.groupSize == QuantScheme.perTensor
            ? w.withUnsafeBufferPointer { Quantizer.params($0.baseAddress!, count: w.count, scheme: scheme) } : nil
        w.withUnsafeBufferPointer { wb in
            let wp = SendablePointer(wb.baseAddress!)
            codes.withUnsafeMutableBufferPointer { cb in
                scales.withUnsafeMutableBufferPointer { sb in
                    zeros.withUnsafeMutableBufferPointer { zb in
                        let cp = SendablePointer(cb.baseAddress!), sp = SendablePointer(sb.baseAddress!), zp = SendablePointer(zb.baseAddress!)
                        Parallel.forRanges(outFeatures, threads: threads) { rows in
                            for r in rows {
                                for g in 0..<ng {
                                    let c0 = g * gs, c1 = min(c0 + gs, inFeatures)
                                    let row = wp.base + r * inFeatures
                                    let p = tensorParams ?? Quantizer.params(row + c0, count: c1 - c0, scheme: scheme)
                                    sp[r * ng + g] = Float(p.scale)
                                    zp[r * ng + g] = Int32(p.zero)
                                    for c in c0..<c1 { cp[r * inFeatures + c] = UInt8(Quantizer.code(row[c], p, maxq: maxq)) }
                                }
                            }
                        }
                    }
                }
            }
        }
        let gIdx = (0..<inFeatures).map { Int32($0 / gs) }
        return QuantizedWeight(outFeatures: outFeatures, inFeatures: inFeatures, bits: scheme.bits, symmetric: scheme.symmetric,
                               groupSize: scheme.groupSize, codes: codes, scales: scales, zeros: zeros, gIdx: gIdx)
    }
}

extension Quantizer {
    /// Round-to-nearest of a row segment in place, values replaced by their dequantized codes (the "fake"
    /// quantization search objectives compare against): one (scale, zero) pair from the segment itself.
    static func fakeQuantizeSegment(_ x: UnsafeMutablePointer<Double>, count: Int, scheme: QuantScheme) {
        let p = params(x, count: count, scheme: scheme)
        let maxq = Double(scheme.maxq)
        for i in 0..<count { x[i] = dequantize(x[i], p, maxq: maxq) }
    }

    /// Every (row, group) of W [rows, cols] fake-quantized with `scheme` (groups along the input; per channel:
    /// whole rows). Per-tensor schemes are not grouped this way and are refused by the callers.
    static func fakeQuantize(_ w: inout [Double], rows: Int, cols: Int, scheme: QuantScheme, threads: Int) {
        let gs = scheme.effectiveGroupSize(inFeatures: cols)
        w.withUnsafeMutableBufferPointer { b in
            let p = SendablePointer(b.baseAddress!)
            Parallel.forRanges(rows, threads: threads, minPerThread: 4) { range in
                for r in range {
                    var c0 = 0
                    while c0 < cols {
                        let n = min(gs, cols - c0)
                        fakeQuantizeSegment(p.base + r * cols + c0, count: n, scheme: scheme)
                        c0 += n
                    }
                }
            }
        }
    }
}
