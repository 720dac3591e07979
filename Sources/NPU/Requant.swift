import Foundation
import TensorCore

/// How an int32 accumulator becomes an int8 output: which real kernel the NPU reproduces bit for bit. Each rule
/// fixes both the multiplier's formation from the float32 scales and the rounding; the names are what
/// `--requant` and the NPU config's "requant" take. Tests/NPUTests/TFLiteKernelTests.swift checks every rule
/// against outputs of TFLite 2.21 itself (Tools/tflite_fixtures.py).
public enum RequantRule: String, CaseIterable, Codable, Sendable {
    /// TFLite 2.21's reference kernels (op resolver BUILTIN_REF): M from the double product of the scales (also
    /// per-tensor), then one rounding of acc * M0 / 2^(31 - shift), ties away from zero. The default.
    case tfliteReference = "tflite-reference"
    /// TFLite 2.21's optimized kernels (ruy): per-tensor M from the float32 product s_in * s_w, per-channel M from
    /// the double product; two roundings (high 32 bits of the doubled product, then the right shift), ties upward.
    case tfliteOptimized = "tflite-optimized"
    /// XNNPACK, TFLite's default CPU delegate: a float32 scale (s_in * s_w) / s_out, acc converted to float32 and
    /// multiplied, rounded half to even.
    case xnnpack = "xnnpack"
    /// gemmlowp fixed point (TFLite's double-rounding MultiplyByQuantizedMultiplier): two roundings, ties away from
    /// zero, M from the double product. QuantKit's rule before tflite-reference; no TFLite 2.21 path matches it.
    case gemmlowp = "gemmlowp"

    public static let `default`: RequantRule = .tfliteReference
    public static var names: String { allCases.map(\.rawValue).joined(separator: ", ") }

    /// A rule named by the user; anything else is refused with one line naming `flag`.
    public init(parsing name: String, flag: String) throws {
        guard let r = RequantRule(rawValue: name) else {
            throw QuantKitError(.input, "\(flag) '\(name)' is not one of \(RequantRule.names)")
        }
        self = r
    }
}

/// Requantization of the NPU's int32 accumulators, written from the published definitions of TFLite's
/// QuantizeMultiplier / MultiplyByQuantizedMultiplier (tensorflow/lite/kernels/internal), gemmlowp's fixed point
/// and XNNPACK's fp32 requantization, and checked against TFLite's own outputs. These are the fast forms IntGemm
/// inlines; RequantReference below computes the same values another way.
public enum Requant {
    /// A real multiplier M = m0 * 2^(shift - 31), m0 a Q0.31 integer in [2^30, 2^31) (or 0 when M == 0 or
    /// M < ~2^-31, flushed to zero as TFLite does). `floatScale` is M as the xnnpack rule forms it in float32
    /// (0 for the fixed-point rules).
    public struct Multiplier: Equatable, Sendable, CustomStringConvertible {
        public var m0: Int32
        public var shift: Int
        public var floatScale: Float
        public init(m0: Int32, shift: Int, floatScale: Float = 0) { self.m0 = m0; self.shift = shift; self.floatScale = floatScale }
        public var realValue: Double { Double(m0) * pow(2.0, Double(shift - 31)) }
        public var description: String { "M0=\(m0) shift=\(shift)" + (floatScale != 0 ? " scale=\(floatScale)" : "") }
    }

    /// QuantizeMultiplier: frexp gives q in [0.5, 1) and an exponent; m0 = round(q * 2^31) (half away from zero,
    /// as std::round). Rounding can reach 2^31 (q just below 1): then m0 = 2^30 and the exponent grows by one.
    /// Exponents below -31 flush to zero. Multipliers must be finite and >= 0 (a user-facing check happens
    /// where scales are built).
    public static func quantizeMultiplier(_ multiplier: Double) -> Multiplier {
        if multiplier == 0 { return Multiplier(m0: 0, shift: 0) }
        let (q, e) = frexpPair(multiplier)
        var qFixed = Int64((q * 2147483648.0).rounded(.toNearestOrAwayFromZero))
        var shift = e
        if qFixed == (Int64(1) << 31) { qFixed /= 2; shift += 1 }
        if shift < -31 { shift = 0; qFixed = 0 }
        return Multiplier(m0: Int32(truncatingIfNeeded: qFixed), shift: shift)
    }

    /// One output channel's multiplier, formed from the float32 scales as the rule's kernel forms it. `perTensor`
    /// matters: TFLite's optimized per-tensor path multiplies s_in * s_w in float32, every other TFLite path in
    /// double. Single rounding caps the shift at 30 (m0 = 2^31 - 1), as TFLite does for that arithmetic.
    public static func multiplier(inputScale: Float, weightScale: Float, outputScale: Float, perTensor: Bool,
                                  rule: RequantRule) -> Multiplier {
        switch rule {
        case .tfliteReference:
            var m = quantizeMultiplier(Double(inputScale) * Double(weightScale) / Double(outputScale))
            if m.shift > 30 { m = Multiplier(m0: Int32.max, shift: 30) }
            return m
        case .tfliteOptimized:
            let product = perTensor ? Double(inputScale * weightScale) : Double(inputScale) * Double(weightScale)
            return quantizeMultiplier(product / Double(outputScale))
        case .xnnpack:
            let f = inputScale * weightScale / outputScale
            var m = quantizeMultiplier(Double(f))
            m.floatScale = f
            return m
        case .gemmlowp:
            return quantizeMultiplier(Double(inputScale) * Double(weightScale) / Double(outputScale))
        }
    }

    @inlinable static func frexpPair(_ x: Double) -> (Double, Int) {
        let r = frexp(x)
        return (r.0, r.1)
    }

    /// gemmlowp SaturatingRoundingDoublingHighMul: the high 32 bits of 2*a*b with rounding (nudge toward the
    /// nearest, then a truncating division by 2^31); the single overflow case INT32_MIN * INT32_MIN saturates.
    @inlinable @inline(__always)
    public static func saturatingRoundingDoublingHighMul(_ a: Int32, _ b: Int32) -> Int32 {
        if a == b && a == Int32.min { return Int32.max }
        let ab = Int64(a) * Int64(b)
        let nudge: Int64 = ab >= 0 ? (1 << 30) : (1 - (1 << 30))
        // Swift's `/` truncates toward zero, as C++ integer division does.
        return Int32(truncatingIfNeeded: (ab + nudge) / (Int64(1) << 31))
    }

    /// gemmlowp RoundingDivideByPOT: x / 2^exponent rounded to nearest, ties away from zero. exponent in 0...31.
    @inlinable @inline(__always)
    public static func roundingDivideByPOT(_ x: Int32, _ exponent: Int) -> Int32 {
        let mask = Int32(truncatingIfNeeded: (Int64(1) << exponent) - 1)
        let remainder = x & mask
        let threshold = (mask >> 1) + (x < 0 ? 1 : 0)
        return (x >> Int32(exponent)) + (remainder > threshold ? 1 : 0)
    }

    /// TFLite MultiplyByQuantizedMultiplier (double-rounding variant): left shift for positive shifts, then the
    /// rounding doubling high multiply, then the rounding right shift. The left shift wraps modulo 2^32 as
    /// two's-complement hardware does (C++ leaves the overflow undefined; TFLite relies on it not happening).
    @inlinable @inline(__always)
    public static func multiplyByQuantizedMultiplier(_ x: Int32, _ m0: Int32, _ shift: Int) -> Int32 {
        let leftShift = shift > 0 ? shift : 0
        let rightShift = shift > 0 ? 0 : -shift
        return roundingDivideByPOT(saturatingRoundingDoublingHighMul(x &<< Int32(leftShift), m0), rightShift)
    }

    /// tflite-reference: round(x * m0 / 2^(31 - shift)) once, ties away from zero. The product is exact in 64 bits
    /// (shift in -31...30); subtracting 1 from the half for negative products turns the floor of the arithmetic
    /// shift into ties-away.
    @inlinable @inline(__always)
    public static func singleRounding(_ x: Int32, _ m0: Int32, _ shift: Int) -> Int32 {
        let p = Int64(x) * Int64(m0)
        let total = Int64(31 - shift)
        let half = (Int64(1) << (total - 1)) - (p < 0 ? 1 : 0)
        return Int32(truncatingIfNeeded: (p + half) >> total)
    }

    /// tflite-optimized: left shift (shift > 0), the high 32 bits of 2 * x * m0 rounded half up, then a right shift
    /// rounded half up. Arithmetic shifts floor, so adding the half rounds ties toward +infinity at both steps.
    @inlinable @inline(__always)
    public static func doubleRoundingUp(_ x: Int32, _ m0: Int32, _ shift: Int) -> Int32 {
        let xs = x &<< Int32(shift > 0 ? shift : 0)
        let high = (Int64(xs) * Int64(m0) + (Int64(1) << 30)) >> 31
        let right = shift > 0 ? 0 : -shift
        if right == 0 { return Int32(truncatingIfNeeded: high) }
        return Int32(truncatingIfNeeded: (high + (Int64(1) << (right - 1))) >> Int64(right))
    }

    /// xnnpack: float32(acc) * scale, rounded half to even. Saturated to +-2^15 before the integer conversion; the
    /// int8 clamp after the zero point gives what XNNPACK's float clamp gives.
    @inlinable @inline(__always)
    public static func floatRounding(_ x: Int32, _ scale: Float) -> Int32 {
        let v = (Float(x) * scale).rounded(.toNearestOrEven)
        return Int32(Swift.max(-32768, Swift.min(32767, v)))
    }

    /// The rule's requantization of one accumulator (before the output zero point).
    @inlinable @inline(__always)
    public static func apply(_ acc: Int32, _ m: Multiplier, rule: RequantRule) -> Int32 {
        switch rule {
        case .tfliteReference: return singleRounding(acc, m.m0, m.shift)
        case .tfliteOptimized: return doubleRoundingUp(acc, m.m0, m.shift)
        case .xnnpack: return floatRounding(acc, m.floatScale)
        case .gemmlowp: return multiplyByQuantizedMultiplier(acc, m.m0, m.shift)
        }
    }

    /// Full output stage: requantize an int32 accumulator, add the output zero point, saturate to int8.
    @inlinable @inline(__always)
    public static func requantizeToInt8(_ acc: Int32, _ m: Multiplier, zeroPoint: Int32, rule: RequantRule) -> Int8 {
        Int8(clamping: apply(acc, m, rule: rule) &+ zeroPoint)
    }
}

/// Independent scalar formulations of every rule, used by the tests as a reference. gemmlowp: the doubling high
/// multiply equals floor((a*b + 2^30) / 2^31) (an arithmetic shift; the nudge-and-truncate form reduces to it for
/// both signs), and the rounding shift equals sign(x) * floor((|x| + 2^(e-1)) / 2^e). The others are spelled with
/// magnitudes, floor divisions and an explicit tie test instead of the fast forms' shifts.
public enum RequantReference {
    public static func doublingHighMul(_ a: Int32, _ b: Int32) -> Int32 {
        let v = (Int64(a) * Int64(b) + (Int64(1) << 30)) >> 31
        return v > Int64(Int32.max) ? Int32.max : Int32(v)
    }

    public static func roundShift(_ x: Int32, _ e: Int) -> Int32 {
        if e == 0 { return x }
        let mag = (abs(Int64(x)) + (Int64(1) << (e - 1))) >> Int64(e)
        return Int32(x < 0 ? -mag : mag)
    }

    public static func multiply(_ x: Int32, _ m0: Int32, _ shift: Int) -> Int32 {
        let shifted = Int32(truncatingIfNeeded: Int64(x) << Int64(max(shift, 0)))
        return roundShift(doublingHighMul(shifted, m0), max(-shift, 0))
    }

    /// tflite-reference: sign(p) * floor((|p| + 2^(t-1)) / 2^t), p = x * m0, t = 31 - shift.
    public static func single(_ x: Int32, _ m0: Int32, _ shift: Int) -> Int32 {
        let p = Int64(x) * Int64(m0), t = 31 - shift
        let mag = (p.magnitude + (UInt64(1) << (t - 1))) / (UInt64(1) << t)
        return Int32(truncatingIfNeeded: p < 0 ? -Int64(mag) : Int64(mag))
    }

    /// Floor division by a positive divisor (Swift's `/` truncates toward zero).
    static func floorDiv(_ a: Int64, _ b: Int64) -> Int64 {
        let q = a / b
        return (a % b != 0 && a < 0) ? q - 1 : q
    }

    /// tflite-optimized: floor(x * m0 / 2^31 + 1/2), then floor(h / 2^e + 1/2).
    public static func doubleUp(_ x: Int32, _ m0: Int32, _ shift: Int) -> Int32 {
        let xs = Int64(Int32(truncatingIfNeeded: Int64(x) << Int64(max(shift, 0))))
        let h = floorDiv(xs * Int64(m0) + (Int64(1) << 30), Int64(1) << 31)
        let e = max(-shift, 0)
        return Int32(truncatingIfNeeded: e == 0 ? h : floorDiv(h + (Int64(1) << (e - 1)), Int64(1) << e))
    }

    /// xnnpack: the float32 product (the definition), rounded by comparing its fraction with one half.
    public static func float(_ x: Int32, _ scale: Float) -> Int32 {
        let v = Double(Float(x) * scale)
        guard abs(v) < 32768 else { return v < 0 ? -32768 : 32767 }
        let f = v.rounded(.down), frac = v - f
        let up = frac > 0.5 || (frac == 0.5 && Int64(f) % 2 != 0)
        return Int32(f) + (up ? 1 : 0)
    }

    public static func apply(_ acc: Int32, _ m: Requant.Multiplier, rule: RequantRule) -> Int32 {
        switch rule {
        case .tfliteReference: return single(acc, m.m0, m.shift)
        case .tfliteOptimized: return doubleUp(acc, m.m0, m.shift)
        case .xnnpack: return float(acc, m.floatScale)
        case .gemmlowp: return multiply(acc, m.m0, m.shift)
        }
    }
}
