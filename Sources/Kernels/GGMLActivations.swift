import TensorCore

// TEMPORARY stub until the activation formats land; same API.
public enum GGMLActivationFormat: String, Sendable {
    case f32, f16, bf16, q8_0, q8_1, q8_K
    public static func companion(of t: GGMLType) -> GGMLActivationFormat { .f32 }
    public var blockSize: Int { 1 }
    public func roundTripRows(_ x: UnsafePointer<Float>, rows: Int, k: Int, into out: UnsafeMutablePointer<Float>,
                              sums: UnsafeMutablePointer<Float>?, threads: Int) {
        out.update(from: x, count: rows * k)
    }
}
