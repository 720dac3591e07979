import Foundation

/// TFLite / gemmlowp fixed-point requantization primitives, written from their published definitions
/// (tensorflow/lite/kernels/internal/common.h and quantization_util.cc; gemmlowp/fixedpoint/fixedpoint.h).
/// This is the "double rounding" rule: a rounding doubling high multiply followed by a rounding right shift. Real
/// TFLite differs by +-1 LSB on a small share of outputs (its reference kernels round once, XNNPACK scales in
/// float32), so the NPU is within 1 LSB of TFLite, not bit-exact to it.
public enum Requant {
    /// A real multiplier M = m0 * 2^(shift - 31), m0 a Q0.31 integer in [2^30, 2^31) (or 0 when M == 0 or
    /// M < ~2^-31, flushed to zero as TFLite does).
    public struct Multiplier: Equatable, Sendable, CustomStringConvertible {
        public var m0: Int32
        public var shift: Int
        public init(m0: Int32, shift: Int) { self.m0 = m0; self.shift = shift }
        public var realValue: Double { Double(m0) * pow(2.0, Double(shift - 31)) }
        public var description: String { "M0=\(m0) shift=\(shift)" }
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

    /// Full output stage: requantize an int32 accumulator, add the output zero point, saturate to int8.
    @inlinable @inline(__always)
    public static func requantizeToInt8(_ acc: Int32, _ m: Multiplier, zeroPoint: Int32) -> Int8 {
        let v = multiplyByQuantizedMultiplier(acc, m.m0, m.shift) &+ zeroPoint
        return Int8(clamping: v)
    }
}

/// An independent scalar formulation of the same arithmetic, used by the tests as a reference: the doubling
/// high multiply equals floor((a*b + 2^30) / 2^31) (an arithmetic shift; the nudge-and-truncate form reduces
/// to it for both signs), and the rounding shift equals sign(x) * floor((|x| + 2^(e-1)) / 2^e).
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
}
