import TensorCore

/// A row-major weight matrix [outFeatures, inFeatures] (the Hugging Face nn.Linear layout) in its stored dtype.
/// Kernels convert elements to Float32 inside their inner loops; the matrix is never widened in memory.
public enum WeightRef: @unchecked Sendable {
    case f32(UnsafePointer<Float>)
    case f16(UnsafePointer<Float16>)
    case bf16(UnsafePointer<UInt16>)

    /// A view of a 2-D float tensor; nil for non-float dtypes.
    public init?(_ t: Tensor) {
        switch t.dtype {
        case .f32: self = .f32(t.pointer(as: Float.self))
        case .f16: self = .f16(t.pointer(as: Float16.self))
        case .bf16: self = .bf16(t.pointer(as: UInt16.self))
        default: return nil
        }
    }

    @inlinable public func element(_ i: Int) -> Float {
        switch self {
        case .f32(let p): return p[i]
        case .f16(let p): return Float(p[i])
        case .bf16(let p): return bf16ToFloat(p[i])
        }
    }
}
