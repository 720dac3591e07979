import Foundation
import TensorCore

/// How a linear layer's weights are fake-quantized while training (METHODS.md section 7).
public enum WeightFakeQuant: Sendable, Equatable {
    /// Grouped integer codes as QuantKit exports them: w_hat = s (clamp(round(w / s) + z, 0, maxq) - z), round half
    /// to even, one (s, z) per output row and group of input columns (`groups[c]` names each column's group, so
    /// act-order checkpoints keep their order). `learnScales`: s is trained (LSQ), else fixed.
    case grouped(bits: Int, symmetric: Bool, learnScales: Bool)
    /// The simulated NPU's weights: per output row s = max|w| / qmax, recomputed every step and held constant in
    /// the backward pass, w_hat = s clamp(round-half-away(w / s), -qmax, qmax) (qmax 127 at 8 bits, 7 at 4).
    case npu(bits: Int)
}

/// One per-tensor affine int8 quantizer (TFLite's: real = scale (q - zeroPoint), q in -128...127).
public struct AffineInt8: Sendable, Equatable, Codable {
    public var scale: Float
    public var zeroPoint: Int32
    /// The code range: [-128, 127], or [-32768, 32767] for an NPU's int16 output (`int16Symmetric`).
    public var qmin: Int32 = -128
    public var qmax: Int32 = 127
    /// One symmetric scale per channel (the last dimension) instead of `scale`, zero point 0 (`int8PerChannel`).
    public var channelScales: [Float]?
    public init(scale: Float, zeroPoint: Int32) { self.scale = scale; self.zeroPoint = zeroPoint }

    /// A symmetric int8 tensor with a scale per channel, as an NPU's per-channel output writes it.
    public static func int8PerChannel(scales: [Float]) -> AffineInt8 {
        var p = AffineInt8(scale: 0, zeroPoint: 0)
        p.channelScales = scales
        return p
    }

    /// A symmetric int16 tensor (zero point 0), as an NPU with int16 outputs writes it.
    public static func int16Symmetric(scale: Float) -> AffineInt8 {
        var p = AffineInt8(scale: scale, zeroPoint: 0)
        p.qmin = -32768; p.qmax = 32767
        return p
    }

    /// TFLite's parameters for an observed range (the range widened to include 0).
    public static func fromRange(min lo: Float, max hi: Float) -> AffineInt8 {
        let lo = Swift.min(lo, 0), hi = Swift.max(hi, 0)
        let scale = hi - lo > 1e-30 ? (hi - lo) / 255 : 1e-8
        let zp = (-128 - lo / scale).rounded(.toNearestOrAwayFromZero)
        return AffineInt8(scale: scale, zeroPoint: Int32(Swift.min(127, Swift.max(-128, zp))))
    }
}

/// How the inputs of the linear layers are fake-quantized while training.
public enum ActivationFakeQuant: Sendable, Equatable {
    case none
    /// W4A8's activations: per row, blocks of 32 inputs, d = max|x| / 127, x_hat = d clamp(round(x / d), ±127);
    /// the gradient passes unchanged (d is held constant).
    case w4a8
    /// The simulated NPU's static per-tensor int8 activations, one quantizer per linear input (keyed by the first
    /// module reading it: q_proj, o_proj, gate_proj, down_proj, and lm_head when present); the gradient passes
    /// inside the range, 0 outside. `outputs`: the NPU also requantizes every linear's output to int8 (keyed by
    /// module: q_proj ... down_proj, lm_head); those pass the gradient unchanged (straight through, no clip mask:
    /// their ranges are the observed min/max).
    case int8Tensor([String: AffineInt8], outputs: [String: AffineInt8] = [:])
}

/// The fake-quantized weight of one linear layer: the quantizer's parameters, the effective weight the forward
/// pass multiplies by, and the straight-through / LSQ backward.
final class FakeQuantWeight<T: TrainScalar> {
    let name: String
    let outFeatures: Int, inFeatures: Int
    let mode: WeightFakeQuant?
    /// Effective weight [out, in]: the latent weight itself when not quantized.
    let effective: UnsafeMutablePointer<T>
    private let ownsEffective: Bool
    let weightName: String
    /// Grouped mode: scale tensor name in the parameter set, integer zero points [out, groups], column groups.
    let scalesName: String?
    let zeros: [T]
    let groups: [Int32]
    let groupCount: Int
    /// LSQ gradient scale per (row, group): 1 / sqrt(N_group (maxq - z)).
    let lsqScale: [T]

    init(name: String, outFeatures: Int, inFeatures: Int, mode: WeightFakeQuant?, params: ParameterSet<T>,
         zeros: [T] = [], groups: [Int32] = []) {
        self.name = name
        self.outFeatures = outFeatures; self.inFeatures = inFeatures
        self.mode = mode
        weightName = name + ".weight"
        if mode == nil {
            effective = params.value(weightName); ownsEffective = false
        } else {
            effective = .allocate(capacity: outFeatures * inFeatures); ownsEffective = true
        }
        if case .grouped(let bits, _, _) = mode {
            scalesName = name + ".scales"
            self.zeros = zeros
            self.groups = groups
            let ng = zeros.count / outFeatures
            groupCount = ng
            var perGroup = [Int](repeating: 0, count: ng)
            for g in groups { perGroup[Int(g)] += 1 }
            let maxq = (1 << bits) - 1
            lsqScale = (0..<(outFeatures * ng)).map { i in
                let qp = max(1, maxq - Int(zeros[i])), n = max(1, perGroup[i % ng])
                return T(1 / (Double(n) * Double(qp)).squareRoot())
            }
        } else {
            scalesName = nil; self.zeros = []; self.groups = []; groupCount = 0; lsqScale = []
        }
    }

    deinit { if ownsEffective { effective.deallocate() } }

    /// Recomputes the effective weight from the current latent weight (and scales).
    func refresh(_ params: ParameterSet<T>, threads: Int) {
        guard let mode else { return }
        let w = SendablePointer(params.value(weightName)), out = SendablePointer(effective)
        let cols = inFeatures
        switch mode {
        case .grouped(let bits, _, _):
            let s = SendablePointer(params.value(scalesName!)), maxq = T(Double((1 << bits) - 1))
            let (zeros, groups, ng) = (self.zeros, self.groups, groupCount)
            Parallel.forRanges(outFeatures, threads: threads, minPerThread: 8) { rows in
                for r in rows {
                    for c in 0..<cols {
                        let g = r * ng + Int(groups[c]), sc = s[g], z = zeros[g]
                        // The ratio in Double, as the exporter (Quantizer.code) computes codes: a group's extreme
                        // weight sits at ±(maxq + 1) / 2 in exact arithmetic, where Float division rounds to the tie.
                        let rounded = T((Double(w[r * cols + c]) / Double(sc)).rounded(.toNearestOrEven))
                        let code = min(max(rounded + z, 0), maxq)
                        out[r * cols + c] = sc * (code - z)
                    }
                }
            }
        case .npu(let bits):
            let qmax = T(bits == 8 ? 127 : 7)
            Parallel.forRanges(outFeatures, threads: threads, minPerThread: 8) { rows in
                for r in rows {
                    var amax = T(0)
                    for c in 0..<cols { amax = max(amax, abs(w[r * cols + c])) }
                    let sc = amax / qmax
                    for c in 0..<cols {
                        out[r * cols + c] = sc == 0 ? 0 : sc * min(max((w[r * cols + c] / sc).rounded(.toNearestOrAwayFromZero), -qmax), qmax)
                    }
                }
            }
        }
    }

    /// Turns the gradient of the effective weight (in `dEffective`, [out, in]) into the latent weight's gradient
    /// (straight-through inside the clipping range) and, with learned scales, the scales' (LSQ).
    func backward(_ dEffective: UnsafePointer<T>, _ params: ParameterSet<T>, threads: Int) {
        let dw = SendablePointer(params.grad(weightName)), de = SendablePointer(dEffective)
        let cols = inFeatures, n = outFeatures * inFeatures
        guard case .grouped(let bits, _, let learn)? = mode else {
            // Unquantized, or the NPU's max-scaled codes (never clipped): the gradient passes unchanged.
            Parallel.forRanges(n, threads: threads, minPerThread: 1 << 14) { r in
                for i in r { dw[i] += de[i] }
            }
            return
        }
        let w = SendablePointer(params.value(weightName)), s = SendablePointer(params.value(scalesName!))
        let ds = SendablePointer(params.grad(scalesName!)), maxq = T(Double((1 << bits) - 1))
        let (zeros, groups, ng, lsq) = (self.zeros, self.groups, groupCount, lsqScale)
        Parallel.forRanges(outFeatures, threads: threads, minPerThread: 8) { rows in
            for r in rows {
                for c in 0..<cols {
                    let g = r * ng + Int(groups[c]), sc = s[g], z = zeros[g]
                    let v = Double(w[r * cols + c]) / Double(sc), d = de[r * cols + c]
                    let zd = Double(z), qd = Double(maxq)
                    let inside = v >= -zd && v <= qd - zd
                    if inside { dw[r * cols + c] += d }
                    if learn {
                        let rounded = v.rounded(.toNearestOrEven)
                        let slope = inside ? rounded - v : min(max(rounded + zd, 0), qd) - zd
                        ds[g] += d * T(slope) * lsq[g]
                    }
                }
            }
        }
    }
}

/// Fake quantization of one activation tensor [rows, cols] (out may equal x for none).
enum ActivationQuantizer {
    static func forward<T: TrainScalar>(_ mode: ActivationFakeQuant, key: String, x: UnsafePointer<T>, rows: Int,
                                        cols: Int, out: UnsafeMutablePointer<T>, threads: Int) {
        let src = SendablePointer(x), dst = SendablePointer(out)
        switch mode {
        case .none:
            if UnsafePointer(out) != x { out.update(from: x, count: rows * cols) }
        case .w4a8:
            Parallel.forRanges(rows, threads: threads, minPerThread: 16) { range in
                for r in range {
                    var b0 = 0
                    while b0 < cols {
                        let b1 = min(cols, b0 + 32)
                        var amax = T(0)
                        for c in b0..<b1 { amax = max(amax, abs(src[r * cols + c])) }
                        let d = amax / 127, id = d != 0 ? 1 / d : 0
                        for c in b0..<b1 {
                            dst[r * cols + c] = d * min(max((src[r * cols + c] * id).rounded(.toNearestOrEven), -127), 127)
                        }
                        b0 = b1
                    }
                }
            }
        case .int8Tensor(let table, _):
            guard let p = table[key] else { if UnsafePointer(out) != x { out.update(from: x, count: rows * cols) }; return }
            roundTrip(p, x, out, count: rows * cols, threads: threads)
        }
    }

    /// A linear's output [rows, cols] as the NPU requantizes it (in place; nothing without an output quantizer for
    /// `key`).
    static func output<T: TrainScalar>(_ mode: ActivationFakeQuant, key: String, _ x: UnsafeMutablePointer<T>, rows: Int, cols: Int,
                                       threads: Int) {
        guard case .int8Tensor(_, let outputs) = mode, let p = outputs[key] else { return }
        guard let channels = p.channelScales else { return roundTrip(p, x, x, count: rows * cols, threads: threads) }
        // FineTuneRun checks the count against the module; a mismatch cannot reach here.
        guard channels.count == cols else { return }
        let scales = channels.map { T(Double($0)) }, dst = SendablePointer(x)
        Parallel.forRanges(rows, threads: threads, minPerThread: 64) { range in
            for r in range {
                for c in 0..<cols {
                    let code = min(max((dst[r * cols + c] / scales[c]).rounded(.toNearestOrAwayFromZero), -128), 127)
                    dst[r * cols + c] = scales[c] * code
                }
            }
        }
    }

    /// out = scale (clamp(round-half-away(x / scale) + zp, qmin, qmax) - zp), as the NPU quantizes and dequantizes.
    private static func roundTrip<T: TrainScalar>(_ p: AffineInt8, _ x: UnsafePointer<T>, _ out: UnsafeMutablePointer<T>,
                                                  count: Int, threads: Int) {
        let scale = T(p.scale), zp = T(Double(p.zeroPoint)), lo = T(Double(p.qmin)), hi = T(Double(p.qmax))
        let src = SendablePointer(x), dst = SendablePointer(out)
        Parallel.forRanges(count, threads: threads, minPerThread: 1 << 14) { range in
            for i in range {
                let code = min(max((src[i] / scale).rounded(.toNearestOrAwayFromZero) + zp, lo), hi)
                dst[i] = scale * (code - zp)
            }
        }
    }

    /// Whether the mode quantizes `key`'s input (the head's input only when the table names it).
    static func quantizesInput(_ mode: ActivationFakeQuant, key: String) -> Bool {
        if case .int8Tensor(let table, _) = mode { return table[key] != nil }
        return false
    }

    /// The straight-through gradient: unchanged, except outside an int8 tensor's range (zeroed there), in place.
    static func backward<T: TrainScalar>(_ mode: ActivationFakeQuant, key: String, x: UnsafePointer<T>,
                                         grad: UnsafeMutablePointer<T>, count: Int, threads: Int) {
        guard case .int8Tensor(let table, _) = mode, let p = table[key] else { return }
        let scale = T(p.scale), zp = T(Double(p.zeroPoint)), lo = T(Double(p.qmin)), hi = T(Double(p.qmax))
        let src = SendablePointer(x), g = SendablePointer(grad)
        Parallel.forRanges(count, threads: threads, minPerThread: 1 << 14) { range in
            for i in range {
                let v = src[i] / scale + zp
                if v < lo || v > hi { g[i] = 0 }
            }
        }
    }

    static func isIdentity(_ mode: ActivationFakeQuant) -> Bool { mode == .none }
}
