import TensorCore

// TEMPORARY stub (float types only) until the block decoders land; same API.
public enum GGMLBlocks {
    public static func canDecode(_ t: GGMLType) -> Bool { [.f32, .f16, .bf16].contains(t) }
    public static func decodeRow(_ t: GGMLType, _ src: UnsafeRawPointer, count: Int, into dst: UnsafeMutablePointer<Float>) {
        switch t {
        case .f32: dst.update(from: src.assumingMemoryBound(to: Float.self), count: count)
        case .f16: let p = src.assumingMemoryBound(to: Float16.self); for i in 0..<count { dst[i] = Float(p[i]) }
        case .bf16: let p = src.assumingMemoryBound(to: UInt16.self); for i in 0..<count { dst[i] = bf16ToFloat(p[i]) }
        default: fatalError("stub")
        }
    }
    public static func decode(_ t: GGMLType, _ src: UnsafeRawPointer, rows: Int, rowLength: Int, into dst: UnsafeMutablePointer<Float>, threads: Int) {
        for r in 0..<rows { decodeRow(t, src + r * t.rowBytes(rowLength), count: rowLength, into: dst + r * rowLength) }
    }
}
