import Foundation
import Kernels
import TensorCore

/// Weight quantization granularity: one scale per output channel (row), or one for the whole matrix (some NPUs
/// only support per-tensor scales for fully connected layers).
public enum WeightGranularity: String, Codable, Sendable {
    case perChannel = "per_channel"
    case perTensor = "per_tensor"
}

/// Symmetric integer weights [n, k] (zero point 0) as the NPU stores them.
///
/// int8: one byte per weight, range [-127, 127] (TFLite's int8 weight spec excludes -128).
/// int4: range [-7, 7] (symmetric, so the scale maps max|w| to 7 exactly as int8 maps it to 127), two weights
/// per byte in blocks of 32: byte j of a block holds element j in its low nibble and element j + 16 in its high
/// nibble (two's complement nibbles). Each row is padded with zeros to a whole block, so a row takes
/// ceil(k / 32) * 16 bytes; the padding multiplies zeros and never changes a sum. This layout lets the kernel
/// unpack 16 bytes into two contiguous runs of 16 weights with two shifts, no shuffles.
public struct NPUWeights: @unchecked Sendable {
    public let n: Int
    public let k: Int
    public let bits: Int
    public let granularity: WeightGranularity
    /// One scale per output channel (a per-tensor matrix repeats its scale).
    public let scales: [Float]
    /// sum_k w_q[j, k], for the zero-point correction acc = sum x_q w_q - zp_x * rowSum.
    public let rowSums: [Int32]
    /// int8: n*k bytes (Int8 bit patterns). int4: n * bytesPerRow packed bytes.
    public let data: [UInt8]

    public var qmax: Int32 { bits == 8 ? 127 : 7 }
    public var bytesPerRow: Int { bits == 8 ? k : (k + 31) / 32 * 16 }
    /// Bytes the weights occupy when packed densely (what an NPU moves): ceil(n * k * bits / 8).
    public var denseBytes: Int { (n * k * bits + 7) / 8 }

    /// Quantizes a float matrix (row-major [n, k]): scale = max|w| / qmax per channel or per tensor,
    /// q = clamp(round(w / scale)) with ties away from zero.
    public init(weight: WeightRef, n: Int, k: Int, bits: Int, granularity: WeightGranularity) throws {
        guard bits == 8 || bits == 4 else {
            throw QuantKitError(.config, "NPU weight bits must be 8 or 4, got \(bits)")
        }
        guard n > 0, k > 0 else { throw QuantKitError(.shape, "NPU weights need a non-empty matrix, got [\(n), \(k)]") }
        let qmax: Float = bits == 8 ? 127 : 7
        var absMax = [Float](repeating: 0, count: n)
        for j in 0..<n {
            var m: Float = 0
            for i in 0..<k {
                let v = weight.element(j * k + i)
                guard v.isFinite else {
                    throw QuantKitError(.numeric, "weight row \(j) column \(i) is not finite (\(v))")
                }
                m = max(m, abs(v))
            }
            absMax[j] = m
        }
        if granularity == .perTensor {
            let m = absMax.max() ?? 0
            absMax = [Float](repeating: m, count: n)
        }
        let scales = absMax.map { $0 > 0 ? $0 / qmax : 1 }
        var q = [Int8](repeating: 0, count: n * k)
        for j in 0..<n {
            for i in 0..<k {
                let v = roundAway(weight.element(j * k + i) / scales[j])
                q[j * k + i] = Int8(min(max(v, -qmax), qmax))
            }
        }
        try self.init(quantized: q, n: n, k: k, bits: bits, granularity: granularity, scales: scales)
    }

    /// Wraps already-quantized values (row-major [n, k], each within the range of `bits`).
    public init(quantized q: [Int8], n: Int, k: Int, bits: Int, granularity: WeightGranularity, scales: [Float]) throws {
        guard bits == 8 || bits == 4 else { throw QuantKitError(.config, "NPU weight bits must be 8 or 4, got \(bits)") }
        guard q.count == n * k, scales.count == n else {
            throw QuantKitError(.shape, "NPU weights: \(q.count) values and \(scales.count) scales for [\(n), \(k)]")
        }
        let lim: Int8 = bits == 8 ? 127 : 7
        if let bad = q.firstIndex(where: { $0 < -lim || $0 > lim }) {
            throw QuantKitError(.numeric, "NPU int\(bits) weight \(q[bad]) at \(bad) outside [-\(lim), \(lim)]")
        }
        self.n = n
        self.k = k
        self.bits = bits
        self.granularity = granularity
        self.scales = scales
        var sums = [Int32](repeating: 0, count: n)
        for j in 0..<n { var s: Int32 = 0; for i in 0..<k { s &+= Int32(q[j * k + i]) }; sums[j] = s }
        self.rowSums = sums
        if bits == 8 {
            self.data = q.map { UInt8(bitPattern: $0) }
        } else {
            let bpr = (k + 31) / 32 * 16
            var packed = [UInt8](repeating: 0, count: n * bpr)
            for j in 0..<n {
                for i in 0..<k {
                    let block = i / 32, r = i % 32
                    let byte = j * bpr + block * 16 + (r % 16)
                    let nib = UInt8(bitPattern: q[j * k + i]) & 0x0F
                    packed[byte] |= r < 16 ? nib : nib << 4
                }
            }
            self.data = packed
        }
    }

    /// The weights as plain int8 values [n, k] (unpacked), for references and dequantization.
    public func unpacked() -> [Int8] {
        var out = [Int8](repeating: 0, count: n * k)
        for j in 0..<n {
            for i in 0..<k {
                if bits == 8 {
                    out[j * k + i] = Int8(bitPattern: data[j * k + i])
                } else {
                    let block = i / 32, r = i % 32
                    let b = data[j * bytesPerRow + block * 16 + (r % 16)]
                    let nib = r < 16 ? b & 0x0F : b >> 4
                    out[j * k + i] = Int8(bitPattern: nib << 4) >> 4
                }
            }
        }
        return out
    }

    /// Dequantized float weights [n, k] (scale * q).
    public func dequantized() -> [Float] {
        let q = unpacked()
        var out = [Float](repeating: 0, count: n * k)
        for j in 0..<n { for i in 0..<k { out[j * k + i] = scales[j] * Float(q[j * k + i]) } }
        return out
    }
}
