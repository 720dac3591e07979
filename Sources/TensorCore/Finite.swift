import Foundation

/// Finite-value checks on stored floats, by exponent bits (an all-ones exponent is Inf or NaN). Branch-free over
/// blocks so the compiler vectorises them; only a block that holds a bad value is searched element by element.
public enum FiniteCheck {
    /// Index of the first non-finite element of a float tensor (F32, F16, BF16); nil when all are finite or the
    /// tensor is not a float tensor.
    public static func firstNonFinite(_ t: Tensor) -> Int? {
        switch t.dtype {
        case .f32: return firstNonFinite32(t.raw.assumingMemoryBound(to: UInt32.self), count: t.count)
        case .f16: return firstNonFinite16(t.raw.assumingMemoryBound(to: UInt16.self), count: t.count, exponent: 0x7C00)
        case .bf16: return firstNonFinite16(t.raw.assumingMemoryBound(to: UInt16.self), count: t.count, exponent: 0x7F80)
        default: return nil
        }
    }

    public static func firstNonFinite(_ p: UnsafePointer<Float>, count: Int) -> Int? {
        UnsafeRawPointer(p).withMemoryRebound(to: UInt32.self, capacity: count) { firstNonFinite32($0, count: count) }
    }

    static let block = 4096

    static func firstNonFinite32(_ p: UnsafePointer<UInt32>, count: Int) -> Int? {
        var start = 0
        while start < count {
            let end = min(start + block, count)
            // (bits & exp) + lowest exponent bit reaches the sign bit only for an all-ones exponent.
            var acc: UInt32 = 0
            for i in start..<end { acc |= (p[i] & 0x7F80_0000) &+ 0x0080_0000 }
            if acc & 0x8000_0000 != 0 {
                for i in start..<end where p[i] & 0x7F80_0000 == 0x7F80_0000 { return i }
            }
            start = end
        }
        return nil
    }

    static func firstNonFinite16(_ p: UnsafePointer<UInt16>, count: Int, exponent: UInt16) -> Int? {
        let low = exponent & (~exponent &+ 1)  // lowest set bit of the exponent field
        var start = 0
        while start < count {
            let end = min(start + block, count)
            var acc: UInt16 = 0
            for i in start..<end { acc |= (p[i] & exponent) &+ low }
            if acc & 0x8000 != 0 {
                for i in start..<end where p[i] & exponent == exponent { return i }
            }
            start = end
        }
        return nil
    }

    /// The value at `index` of a float tensor, for messages.
    public static func describe(_ t: Tensor, at index: Int) -> String {
        let v: Float
        switch t.dtype {
        case .f32: v = t.pointer(as: Float.self)[index]
        case .f16: v = Float(t.pointer(as: Float16.self)[index])
        case .bf16: v = bf16ToFloat(t.pointer(as: UInt16.self)[index])
        default: return "?"
        }
        return v.isNaN ? "NaN" : (v > 0 ? "+Inf" : "-Inf")
    }
}
