import Foundation

/// A row-major tensor of any stored dtype. Float tensors convert to Float32 on demand; the storage is
/// shared (a mapped file region or owned memory), so copies of a Tensor are cheap.
public struct Tensor: @unchecked Sendable {
    public let dtype: DType
    public let shape: [Int]
    public let storage: TensorStorage

    public var count: Int { shape.reduce(1, *) }
    public var byteCount: Int { count * dtype.byteSize }
    public var raw: UnsafeRawPointer { UnsafeRawPointer(storage.bytes) }
    public var mutableRaw: UnsafeMutableRawPointer { storage.bytes }

    public init(dtype: DType, shape: [Int], storage: TensorStorage) {
        precondition(storage.byteCount >= shape.reduce(1, *) * dtype.byteSize, "storage smaller than tensor")
        self.dtype = dtype
        self.shape = shape
        self.storage = storage
    }

    /// New zero-filled owned tensor.
    public init(zeros dtype: DType, shape: [Int]) {
        self.init(dtype: dtype, shape: shape, storage: TensorStorage(byteCount: shape.reduce(1, *) * dtype.byteSize))
    }

    public init(shape: [Int], floats: [Float]) {
        precondition(shape.reduce(1, *) == floats.count, "shape does not match element count")
        self.init(zeros: .f32, shape: shape)
        floats.withUnsafeBytes { mutableRaw.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }

    public init(shape: [Int], float16: [Float16]) {
        precondition(shape.reduce(1, *) == float16.count, "shape does not match element count")
        self.init(zeros: .f16, shape: shape)
        float16.withUnsafeBytes { mutableRaw.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }

    public init(shape: [Int], int32: [Int32]) {
        precondition(shape.reduce(1, *) == int32.count, "shape does not match element count")
        self.init(zeros: .i32, shape: shape)
        int32.withUnsafeBytes { mutableRaw.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }

    /// Copies raw little-endian bytes of `dtype` into an owned tensor.
    public init(dtype: DType, shape: [Int], bytes: UnsafeRawBufferPointer) {
        self.init(zeros: dtype, shape: shape)
        precondition(bytes.count == byteCount, "byte count does not match shape")
        if bytes.count > 0 { mutableRaw.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count) }
    }

    public func pointer<T>(as: T.Type) -> UnsafePointer<T> { raw.assumingMemoryBound(to: T.self) }

    /// All elements as Float32 (float dtypes converted; integer dtypes cast).
    public func floats() -> [Float] {
        let n = count
        var out = [Float](repeating: 0, count: n)
        out.withUnsafeMutableBufferPointer { dst in
            switch dtype {
            case .f32: for i in 0..<n { dst[i] = raw.load(fromByteOffset: i * 4, as: Float.self) }
            case .f16: let p = pointer(as: Float16.self); for i in 0..<n { dst[i] = Float(p[i]) }
            case .bf16: let p = pointer(as: UInt16.self); for i in 0..<n { dst[i] = bf16ToFloat(p[i]) }
            case .i8: let p = pointer(as: Int8.self); for i in 0..<n { dst[i] = Float(p[i]) }
            case .u8: let p = pointer(as: UInt8.self); for i in 0..<n { dst[i] = Float(p[i]) }
            case .i32: let p = pointer(as: Int32.self); for i in 0..<n { dst[i] = Float(p[i]) }
            case .i64: let p = pointer(as: Int64.self); for i in 0..<n { dst[i] = Float(p[i]) }
            }
        }
        return out
    }

    public func int32s() -> [Int32] {
        precondition(dtype == .i32)
        return Array(UnsafeBufferPointer(start: pointer(as: Int32.self), count: count))
    }

    /// A copy converted to another float dtype (f32 <-> f16 <-> bf16).
    public func converted(to target: DType) -> Tensor {
        if target == dtype { return self }
        let values = floats()
        var out = Tensor(zeros: target, shape: shape)
        switch target {
        case .f32: values.withUnsafeBytes { out.mutableRaw.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        case .f16:
            let p = out.mutableRaw.assumingMemoryBound(to: Float16.self)
            for i in values.indices { p[i] = Float16(values[i]) }
        case .bf16:
            let p = out.mutableRaw.assumingMemoryBound(to: UInt16.self)
            for i in values.indices { p[i] = floatToBF16(values[i]) }
        default:
            let p = out.mutableRaw
            for i in values.indices {
                switch target {
                case .i8: p.storeBytes(of: Int8(values[i]), toByteOffset: i, as: Int8.self)
                case .u8: p.storeBytes(of: UInt8(values[i]), toByteOffset: i, as: UInt8.self)
                case .i32: p.storeBytes(of: Int32(values[i]), toByteOffset: i * 4, as: Int32.self)
                default: p.storeBytes(of: Int64(values[i]), toByteOffset: i * 8, as: Int64.self)
                }
            }
        }
        out = Tensor(dtype: target, shape: shape, storage: out.storage)
        return out
    }
}
