import TensorCore

// ggml's block formats (ggml-common.h) decoded with the float operations of ggml's dequantize_row_* in the same
// order, so values are bit-identical to llama.cpp's (ggml-base is built without FMA contraction, and Swift does
// not contract either). Byte offsets below are the C struct layouts; every fp16 field is little-endian IEEE half.

/// ggml block decoding and the two reference quantizers llama-quantize uses without an imatrix.
public enum GGMLBlocks {
    /// The non-linear 4-bit grid of IQ4_NL and IQ4_XS (ggml-common.h kvalues_iq4nl).
    static let iq4nlValues: [Int8] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]

    /// Whether decodeRow handles the type.
    public static func canDecode(_ t: GGMLType) -> Bool {
        switch t {
        case .f32, .f16, .bf16, .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q2_K, .q3_K, .q4_K, .q5_K, .q6_K, .q8_K,
             .iq4_nl, .iq4_xs:
            return true
        default:
            return false
        }
    }

    /// Decodes `count` elements (a multiple of t.blockSize) stored at `src` in ggml's layout for `t`.
    /// Callers validate types and shapes first (canDecode, GGUF tensor bounds).
    public static func decodeRow(_ t: GGMLType, _ src: UnsafeRawPointer, count: Int, into dst: UnsafeMutablePointer<Float>) {
        precondition(canDecode(t), "GGMLBlocks.decodeRow: \(t.name) is not decodable")
        precondition(count >= 0 && count % t.blockSize == 0, "GGMLBlocks.decodeRow: \(count) is not a multiple of \(t.blockSize)")
        let blocks = count / t.blockSize
        switch t {
        case .f32:
            for i in 0..<count { dst[i] = src.loadUnaligned(fromByteOffset: 4 * i, as: Float.self) }
        case .f16:
            for i in 0..<count { dst[i] = half(src, 2 * i) }
        case .bf16:
            for i in 0..<count { dst[i] = Float(bitPattern: UInt32(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) << 16) }
        case .q4_0: for b in 0..<blocks { q4_0(src + 18 * b, dst + 32 * b) }
        case .q4_1: for b in 0..<blocks { q4_1(src + 20 * b, dst + 32 * b) }
        case .q5_0: for b in 0..<blocks { q5_0(src + 22 * b, dst + 32 * b) }
        case .q5_1: for b in 0..<blocks { q5_1(src + 24 * b, dst + 32 * b) }
        case .q8_0: for b in 0..<blocks { q8_0(src + 34 * b, dst + 32 * b) }
        case .iq4_nl: for b in 0..<blocks { iq4_nl(src + 18 * b, dst + 32 * b) }
        case .q2_K: for b in 0..<blocks { q2_K(src + 84 * b, dst + 256 * b) }
        case .q3_K: for b in 0..<blocks { q3_K(src + 110 * b, dst + 256 * b) }
        case .q4_K: for b in 0..<blocks { q4_K(src + 144 * b, dst + 256 * b) }
        case .q5_K: for b in 0..<blocks { q5_K(src + 176 * b, dst + 256 * b) }
        case .q6_K: for b in 0..<blocks { q6_K(src + 210 * b, dst + 256 * b) }
        case .q8_K: for b in 0..<blocks { q8_K(src + 292 * b, dst + 256 * b) }
        case .iq4_xs: for b in 0..<blocks { iq4_xs(src + 136 * b, dst + 256 * b) }
        default: break
        }
    }

    /// Decodes `rows` contiguous rows of `rowLength` elements each (row stride t.rowBytes(rowLength)), rows in parallel.
    public static func decode(_ t: GGMLType, _ src: UnsafeRawPointer, rows: Int, rowLength: Int,
                              into dst: UnsafeMutablePointer<Float>, threads: Int) {
        let stride = t.rowBytes(rowLength)
        let s = SendablePointer(src.assumingMemoryBound(to: UInt8.self)), d = SendablePointer(dst)
        Parallel.forRanges(rows, threads: threads, minPerThread: max(1, 16_384 / max(1, rowLength))) { range in
            for r in range {
                decodeRow(t, UnsafeRawPointer(s.base + r * stride), count: rowLength, into: d.base + r * rowLength)
            }
        }
    }

    // MARK: block decoders (one block each; offsets are the ggml-common.h struct layouts)

    @inline(__always) static func half(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
        Float(Float16(bitPattern: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self)))
    }

    @inline(__always) static func byte(_ p: UnsafeRawPointer, _ offset: Int) -> Int {
        Int(p.load(fromByteOffset: offset, as: UInt8.self))
    }

    // d (fp16), qs[16]: x = (nibble - 8) * d; low nibbles are elements 0..15, high nibbles 16..31.
    static func q4_0(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        for j in 0..<16 {
            let q = byte(p, 2 + j)
            y[j] = Float((q & 0xF) - 8) * d
            y[j + 16] = Float((q >> 4) - 8) * d
        }
    }

    // d, m (fp16), qs[16]: x = nibble * d + m.
    static func q4_1(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0), m = half(p, 2)
        for j in 0..<16 {
            let q = byte(p, 4 + j)
            y[j] = Float(q & 0xF) * d + m
            y[j + 16] = Float(q >> 4) * d + m
        }
    }

    // d, qh (u32: bit j is the 5th bit of element j), qs[16]: x = (5-bit code - 16) * d.
    static func q5_0(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        let qh = Int(p.loadUnaligned(fromByteOffset: 2, as: UInt32.self))
        for j in 0..<16 {
            let q = byte(p, 6 + j)
            y[j] = Float(((q & 0xF) | (((qh >> j) << 4) & 0x10)) - 16) * d
            y[j + 16] = Float(((q >> 4) | ((qh >> (j + 12)) & 0x10)) - 16) * d
        }
    }

    // d, m, qh, qs[16]: x = 5-bit code * d + m.
    static func q5_1(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0), m = half(p, 2)
        let qh = Int(p.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
        for j in 0..<16 {
            let q = byte(p, 8 + j)
            y[j] = Float((q & 0xF) | (((qh >> j) << 4) & 0x10)) * d + m
            y[j + 16] = Float((q >> 4) | ((qh >> (j + 12)) & 0x10)) * d + m
        }
    }

    // d, qs[32] (int8).
    static func q8_0(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        for j in 0..<32 { y[j] = Float(p.load(fromByteOffset: 2 + j, as: Int8.self)) * d }
    }

    // d, qs[16]: x = d * grid[nibble].
    static func iq4_nl(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        iq4nlValues.withUnsafeBufferPointer { kv in
            for j in 0..<16 {
                let q = byte(p, 2 + j)
                y[j] = d * Float(kv[q & 0xF])
                y[j + 16] = d * Float(kv[q >> 4])
            }
        }
    }

    // scales[16] (low nibble scale, high nibble min, per 16 elements), qs[64] (2-bit), d, dmin.
    // Elements come in 128-halves; each half reads 32 bytes four times at shifts 0, 2, 4, 6, 16 bytes per scale.
    static func q2_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 80), dmin = half(p, 82)
        var out = 0, scale = 0
        for half128 in 0..<2 {
            let q = 16 + 32 * half128
            for shift in stride(from: 0, to: 8, by: 2) {
                for part in 0..<2 {
                    let sc = byte(p, scale)
                    scale += 1
                    let dl = d * Float(sc & 0xF), ml = dmin * Float(sc >> 4)
                    for l in 0..<16 {
                        y[out] = dl * Float((byte(p, q + 16 * part + l) >> shift) & 3) - ml
                        out += 1
                    }
                }
            }
        }
    }

    // hmask[32] (3rd bit, clear = subtract 4), qs[64] (low 2 bits), scales[12] (sixteen 6-bit scales, offset 32), d.
    static func q3_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 108)
        // Scale i: low 4 bits from byte i (i < 8) or the high nibble of byte i - 8; high 2 bits from byte 8 + i % 4.
        func scale(_ i: Int) -> Int {
            let low = i < 8 ? byte(p, 96 + i) & 0xF : byte(p, 96 + i - 8) >> 4
            let high = (byte(p, 96 + 8 + i % 4) >> (2 * (i / 4))) & 3
            return (low | (high << 4)) - 32
        }
        var out = 0, index = 0, mask = 1
        for half128 in 0..<2 {
            let q = 32 + 32 * half128
            for shift in stride(from: 0, to: 8, by: 2) {
                for part in 0..<2 {
                    let dl = d * Float(scale(index))
                    index += 1
                    for l in 0..<16 {
                        let low = (byte(p, q + 16 * part + l) >> shift) & 3
                        let high = byte(p, 16 * part + l) & mask != 0 ? 0 : 4
                        y[out] = dl * Float(low - high)
                        out += 1
                    }
                }
                mask <<= 1
            }
        }
    }

    // ggml's get_scale_min_k4: eight 6-bit (scale, min) pairs packed in 12 bytes at `at`.
    @inline(__always) static func scaleMinK4(_ j: Int, _ p: UnsafeRawPointer, _ at: Int) -> (Int, Int) {
        if j < 4 { return (byte(p, at + j) & 63, byte(p, at + j + 4) & 63) }
        return ((byte(p, at + j + 4) & 0xF) | ((byte(p, at + j - 4) >> 6) << 4),
                (byte(p, at + j + 4) >> 4) | ((byte(p, at + j) >> 6) << 4))
    }

    // d, dmin, scales[12], qs[128]: per 64 elements, low nibbles of 32 bytes then high nibbles; x = d*sc * q - dmin*m.
    static func q4_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0), dmin = half(p, 2)
        for g in 0..<4 {
            let (sc1, m1) = scaleMinK4(2 * g, p, 4), (sc2, m2) = scaleMinK4(2 * g + 1, p, 4)
            let d1 = d * Float(sc1), mm1 = dmin * Float(m1), d2 = d * Float(sc2), mm2 = dmin * Float(m2)
            let q = 16 + 32 * g, o = 64 * g
            for l in 0..<32 { y[o + l] = d1 * Float(byte(p, q + l) & 0xF) - mm1 }
            for l in 0..<32 { y[o + 32 + l] = d2 * Float(byte(p, q + l) >> 4) - mm2 }
        }
    }

    // d, dmin, scales[12], qh[32] (5th bits, two bits per 64 elements), qs[128].
    static func q5_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0), dmin = half(p, 2)
        for g in 0..<4 {
            let (sc1, m1) = scaleMinK4(2 * g, p, 4), (sc2, m2) = scaleMinK4(2 * g + 1, p, 4)
            let d1 = d * Float(sc1), mm1 = dmin * Float(m1), d2 = d * Float(sc2), mm2 = dmin * Float(m2)
            let q = 48 + 32 * g, o = 64 * g, u1 = 1 << (2 * g), u2 = 2 << (2 * g)
            for l in 0..<32 { y[o + l] = d1 * Float((byte(p, q + l) & 0xF) + (byte(p, 16 + l) & u1 != 0 ? 16 : 0)) - mm1 }
            for l in 0..<32 { y[o + 32 + l] = d2 * Float((byte(p, q + l) >> 4) + (byte(p, 16 + l) & u2 != 0 ? 16 : 0)) - mm2 }
        }
    }

    // ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (int8, per 16 elements), d: x = d * sc * (q - 32).
    static func q6_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 208)
        for n in 0..<2 {
            let ql = 64 * n, qh = 128 + 32 * n, sc = 192 + 8 * n, o = 128 * n
            for l in 0..<32 {
                let s = l / 16
                let a = byte(p, ql + l), b = byte(p, ql + l + 32), h = byte(p, qh + l)
                let q1 = ((a & 0xF) | ((h & 3) << 4)) - 32
                let q2 = ((b & 0xF) | (((h >> 2) & 3) << 4)) - 32
                let q3 = ((a >> 4) | (((h >> 4) & 3) << 4)) - 32
                let q4 = ((b >> 4) | (((h >> 6) & 3) << 4)) - 32
                y[o + l] = d * Float(p.load(fromByteOffset: sc + s, as: Int8.self)) * Float(q1)
                y[o + l + 32] = d * Float(p.load(fromByteOffset: sc + s + 2, as: Int8.self)) * Float(q2)
                y[o + l + 64] = d * Float(p.load(fromByteOffset: sc + s + 4, as: Int8.self)) * Float(q3)
                y[o + l + 96] = d * Float(p.load(fromByteOffset: sc + s + 6, as: Int8.self)) * Float(q4)
            }
        }
    }

    // d (float32), qs[256] (int8), bsums[16] (unused here).
    static func q8_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = p.loadUnaligned(fromByteOffset: 0, as: Float.self)
        for j in 0..<256 { y[j] = d * Float(p.load(fromByteOffset: 4 + j, as: Int8.self)) }
    }

    // d, scales_h (u16, 2 high bits per 32), scales_l[4] (nibbles), qs[128]: x = d*(ls - 32) * grid[nibble].
    static func iq4_xs(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p, 0)
        let scalesH = Int(p.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
        iq4nlValues.withUnsafeBufferPointer { kv in
            for ib in 0..<8 {
                let ls = ((byte(p, 4 + ib / 2) >> (4 * (ib % 2))) & 0xF) | (((scalesH >> (2 * ib)) & 3) << 4)
                let dl = d * Float(ls - 32)
                let q = 8 + 16 * ib, o = 32 * ib
                for j in 0..<16 {
                    let v = byte(p, q + j)
                    y[o + j] = dl * Float(kv[v & 0xF])
                    y[o + j + 16] = dl * Float(kv[v >> 4])
                }
            }
        }
    }
}

// MARK: - Encoders for export

extension GGMLBlocks {
    /// Q8_0 blocks from one fp16 scale and 32 int8 codes per block (x = code * scale).
    public static func encodeQ8_0(scales: [Float16], codes: [Int8]) throws -> [UInt8] {
        guard codes.count == scales.count * 32 else {
            throw QuantKitError(.shape, "Q8_0: \(codes.count) codes for \(scales.count) blocks of 32")
        }
        var out = [UInt8](repeating: 0, count: scales.count * 34)
        for b in scales.indices {
            let bits = scales[b].bitPattern
            out[34 * b] = UInt8(bits & 0xFF)
            out[34 * b + 1] = UInt8(bits >> 8)
            for j in 0..<32 { out[34 * b + 2 + j] = UInt8(bitPattern: codes[32 * b + j]) }
        }
        return out
    }

    /// Q4_0 blocks from one fp16 scale and 32 codes 0...15 per block (x = (code - 8) * scale).
    public static func encodeQ4_0(scales: [Float16], codes: [UInt8]) throws -> [UInt8] {
        guard codes.count == scales.count * 32 else {
            throw QuantKitError(.shape, "Q4_0: \(codes.count) codes for \(scales.count) blocks of 32")
        }
        if let bad = codes.first(where: { $0 > 15 }) { throw QuantKitError(.input, "Q4_0: code \(bad) is outside 0...15") }
        var out = [UInt8](repeating: 0, count: scales.count * 18)
        for b in scales.indices {
            let bits = scales[b].bitPattern
            out[18 * b] = UInt8(bits & 0xFF)
            out[18 * b + 1] = UInt8(bits >> 8)
            for j in 0..<16 { out[18 * b + 2 + j] = codes[32 * b + j] | (codes[32 * b + j + 16] << 4) }
        }
        return out
    }

    /// x86's float -> int32 conversion (cvttss2si): truncation, and INT32_MIN for NaN or out of range, where a
    /// Swift conversion would trap. ggml's C casts compile to it.
    @inline(__always) static func truncateLikeC(_ v: Float) -> Int32 {
        v > -2_147_483_904 && v < 2_147_483_648 ? Int32(v) : Int32.min
    }

    /// ggml's quantize_row_q8_0_ref (llama-quantize Q8_0): d = amax / 127 stored as fp16, codes = roundf(x / d)
    /// with id = 1/d from the fp32 d, rounding halves away from zero. `count` is a multiple of 32; writes count/32*34 bytes.
    public static func quantizeRowQ8_0(_ x: UnsafePointer<Float>, count: Int, into dst: UnsafeMutableRawPointer) {
        precondition(count >= 0 && count % 32 == 0, "quantizeRowQ8_0: \(count) is not a multiple of 32")
        for b in 0..<count / 32 {
            let v = x + 32 * b, o = dst + 34 * b
            var amax: Float = 0
            for j in 0..<32 { amax = amax > abs(v[j]) ? amax : abs(v[j]) }  // C's MAX: a NaN is taken
            let d = amax / 127
            let id: Float = d != 0 ? 1 / d : 0
            o.storeBytes(of: Float16(d).bitPattern, toByteOffset: 0, as: UInt16.self)
            for j in 0..<32 {
                let q = truncateLikeC((v[j] * id).rounded(.toNearestOrAwayFromZero))
                o.storeBytes(of: UInt8(truncatingIfNeeded: q), toByteOffset: 2 + j, as: UInt8.self)
            }
        }
    }

    /// ggml's quantize_row_q4_0_ref (llama-quantize Q4_0 without an imatrix): the signed value of largest
    /// magnitude (first one on ties) gives d = max / -8 stored as fp16; code = min(15, trunc(x / d + 8.5)) with
    /// id = 1/d from the fp32 d. So the extreme maps to code 0 and the other side gets only +7.
    public static func quantizeRowQ4_0(_ x: UnsafePointer<Float>, count: Int, into dst: UnsafeMutableRawPointer) {
        precondition(count >= 0 && count % 32 == 0, "quantizeRowQ4_0: \(count) is not a multiple of 32")
        for b in 0..<count / 32 {
            let v = x + 32 * b, o = dst + 18 * b
            var amax: Float = 0, signedMax: Float = 0
            for j in 0..<32 where amax < abs(v[j]) {
                amax = abs(v[j])
                signedMax = v[j]
            }
            let d = signedMax / -8
            let id: Float = d != 0 ? 1 / d : 0
            o.storeBytes(of: Float16(d).bitPattern, toByteOffset: 0, as: UInt16.self)
            // C: (uint8_t)MIN(15, (int8_t)(x*id + 8.5f)), then lo | hi << 4 truncated to a byte.
            func code(_ f: Float) -> Int { Int(UInt8(truncatingIfNeeded: min(15, Int(Int8(truncatingIfNeeded: truncateLikeC(f + 8.5)))))) }
            for j in 0..<16 {
                let lo = code(v[j] * id), hi = code(v[j + 16] * id)
                o.storeBytes(of: UInt8(truncatingIfNeeded: lo | (hi << 4)), toByteOffset: 2 + j, as: UInt8.self)
            }
        }
    }

    /// Array forms: `x.count` must be a multiple of 32.
    public static func quantizeRowQ8_0(_ x: [Float]) throws -> [UInt8] {
        try quantizeArray(x, bytesPerBlock: 34) { quantizeRowQ8_0($0, count: $1, into: $2) }
    }

    public static func quantizeRowQ4_0(_ x: [Float]) throws -> [UInt8] {
        try quantizeArray(x, bytesPerBlock: 18) { quantizeRowQ4_0($0, count: $1, into: $2) }
    }

    static func quantizeArray(_ x: [Float], bytesPerBlock: Int,
                              _ body: (UnsafePointer<Float>, Int, UnsafeMutableRawPointer) -> Void) throws -> [UInt8] {
        guard x.count % 32 == 0 else { throw QuantKitError(.shape, "ggml quantization: \(x.count) values are not whole blocks of 32") }
        var out = [UInt8](repeating: 0, count: x.count / 32 * bytesPerBlock)
        x.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBytes { dst in
                if let s = src.baseAddress, let d = dst.baseAddress { body(s, x.count, d) }
            }
        }
        return out
    }
}
