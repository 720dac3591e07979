/// Element types of stored tensors. Names follow safetensors' dtype strings.
public enum DType: String, Sendable, CaseIterable, Codable {
    case f32 = "F32", f16 = "F16", bf16 = "BF16", i8 = "I8", u8 = "U8", i32 = "I32", i64 = "I64"

    public var byteSize: Int {
        switch self {
        case .f32, .i32: return 4
        case .f16, .bf16: return 2
        case .i8, .u8: return 1
        case .i64: return 8
        }
    }

    public var isFloat: Bool { self == .f32 || self == .f16 || self == .bf16 }
}

@inlinable public func bf16ToFloat(_ bits: UInt16) -> Float { Float(bitPattern: UInt32(bits) << 16) }

/// Round-to-nearest-even Float -> bfloat16 (NaN kept quiet).
@inlinable public func floatToBF16(_ x: Float) -> UInt16 {
    let b = x.bitPattern
    if x.isNaN { return UInt16(b >> 16) | 0x40 }
    let rounding = UInt32(0x7FFF) + ((b >> 16) & 1)
    return UInt16((b &+ rounding) >> 16)
}
