import TensorCore

/// A weight [outFeatures, inFeatures] quantized along the input dimension, for weight-only W8A16 / W4A16 (2..8 bits)
/// kernels: dequantized w = scale · (q − zero) with integer codes q in [0, 2^bits − 1] and one scale and zero per
/// (output row, group).
///
/// Columns are stored in "packed order": packed column j is original input column `inputPermutation[j]` (identity
/// when nil). Groups are contiguous ranges of packed columns, `groupStarts[g]..<groupStarts[g+1]`; with the
/// uniform layout of `init` they are `groupSize` wide and the last one may be shorter.
///
/// Layout: each row is `rowWords` UInt32 words. Bits 5...8 use one byte per code (byte j of the row, little-endian
/// within words); bits 2...4 use a nibble per code (packed column j in word j/8 at bit 4·(j%8)). Rows are padded
/// with zero codes to a multiple of 8 columns.
public struct QuantizedMatrix: @unchecked Sendable {
    public let bits: Int
    public let outFeatures: Int, inFeatures: Int
    /// Nominal group size (inFeatures for per-channel). For matrices built by `fromGroupIndex` with unequal groups
    /// it is the largest group; `groupStarts` is authoritative.
    public let groupSize: Int
    public let nGroups: Int
    /// nGroups + 1 boundaries in packed column order.
    public let groupStarts: [Int32]
    /// [outFeatures, nGroups]
    public let scales: [Float]
    /// [outFeatures, nGroups], integer zero points stored as Float.
    public let zeros: [Float]
    /// Packed column j holds original input column inputPermutation[j]; nil means identity.
    public let inputPermutation: [Int32]?
    /// 8 (byte per code) or 4 (nibble per code).
    public let containerBits: Int
    public let rowWords: Int
    public let packed: [UInt32]
    /// Group of every packed column (inFeatures entries).
    let columnGroup: [Int32]
    /// Whether every group boundary is a multiple of 8 (each 8-column block lies in one group).
    let alignedGroups: Bool

    /// Uniform groups of `groupSize` packed columns (last one may be short; groupSize == inFeatures: per-channel).
    /// - codes: one code per weight, row-major [outFeatures, inFeatures] in packed column order.
    /// - scales, zeros: [outFeatures, nGroups] with nGroups = ceil(inFeatures / groupSize).
    public init(bits: Int, outFeatures: Int, inFeatures: Int, groupSize: Int, codes: [UInt8], scales: [Float],
                zeros: [Float], inputPermutation: [Int32]?) throws {
        guard groupSize > 0, inFeatures > 0 else {
            throw QuantKitError(.shape, "quantized matrix: group size \(groupSize) and input features \(inFeatures) must be positive")
        }
        let g = (inFeatures + groupSize - 1) / groupSize
        let starts = (0...g).map { Int32(min(inFeatures, $0 * groupSize)) }
        try self.init(bits: bits, outFeatures: outFeatures, inFeatures: inFeatures, groupStarts: starts,
                      nominalGroupSize: groupSize, codes: codes, scales: scales, zeros: zeros,
                      inputPermutation: inputPermutation)
    }

    /// General contiguous groups given by their boundaries in packed column order.
    public init(bits: Int, outFeatures: Int, inFeatures: Int, groupStarts: [Int32], nominalGroupSize: Int? = nil,
                codes: [UInt8], scales: [Float], zeros: [Float], inputPermutation: [Int32]?) throws {
        guard (2...8).contains(bits) else { throw QuantKitError(.unsupported, "quantized matrix: \(bits) bits (2...8 supported)") }
        guard outFeatures > 0, inFeatures > 0 else {
            throw QuantKitError(.shape, "quantized matrix: shape [\(outFeatures), \(inFeatures)] must be positive")
        }
        let ng = groupStarts.count - 1
        guard ng >= 1, groupStarts.first == 0, groupStarts.last == Int32(inFeatures),
              zip(groupStarts, groupStarts.dropFirst()).allSatisfy({ $0 <= $1 }) else {
            throw QuantKitError(.shape, "quantized matrix: group boundaries must rise from 0 to \(inFeatures)")
        }
        guard codes.count == outFeatures * inFeatures else {
            throw QuantKitError(.shape, "quantized matrix: \(codes.count) codes for [\(outFeatures), \(inFeatures)]")
        }
        guard scales.count == outFeatures * ng, zeros.count == outFeatures * ng else {
            throw QuantKitError(.shape, "quantized matrix: scales/zeros have \(scales.count)/\(zeros.count) entries, expected \(outFeatures) x \(ng)")
        }
        let maxCode = UInt8((1 << bits) - 1)
        if let bad = codes.firstIndex(where: { $0 > maxCode }) {
            throw QuantKitError(.numeric, "quantized matrix: code \(codes[bad]) at \(bad) exceeds \(bits)-bit range")
        }
        if let i = scales.firstIndex(where: { !$0.isFinite }) ?? zeros.firstIndex(where: { !$0.isFinite }) {
            throw QuantKitError(.numeric, "quantized matrix: non-finite scale or zero at \(i)")
        }
        if let perm = inputPermutation {
            guard perm.count == inFeatures else {
                throw QuantKitError(.shape, "quantized matrix: permutation has \(perm.count) entries, expected \(inFeatures)")
            }
            var seen = [Bool](repeating: false, count: inFeatures)
            for p in perm {
                guard p >= 0, Int(p) < inFeatures, !seen[Int(p)] else {
                    throw QuantKitError(.input, "quantized matrix: input permutation is not a permutation of 0..<\(inFeatures)")
                }
                seen[Int(p)] = true
            }
        }
        self.bits = bits
        self.outFeatures = outFeatures
        self.inFeatures = inFeatures
        self.nGroups = ng
        self.groupStarts = groupStarts
        var widest = 0
        for g in 0..<ng { widest = max(widest, Int(groupStarts[g + 1] - groupStarts[g])) }
        self.groupSize = nominalGroupSize ?? widest
        self.scales = scales
        self.zeros = zeros
        self.inputPermutation = inputPermutation
        let container = bits > 4 ? 8 : 4
        containerBits = container
        let padded = (inFeatures + 7) & ~7
        let words = padded * container / 32
        rowWords = words
        var packed = [UInt32](repeating: 0, count: outFeatures * words)
        for r in 0..<outFeatures {
            for j in 0..<inFeatures {
                let q = UInt32(codes[r * inFeatures + j])
                let perWord = 32 / container
                packed[r * words + j / perWord] |= q << UInt32((j % perWord) * container)
            }
        }
        self.packed = packed
        var cg = [Int32](repeating: 0, count: inFeatures)
        for g in 0..<ng { for j in Int(groupStarts[g])..<Int(groupStarts[g + 1]) { cg[j] = Int32(g) } }
        columnGroup = cg
        alignedGroups = groupStarts.dropLast().allSatisfy { $0 % 8 == 0 }
    }

    /// Builds a matrix from GPTQ-style group indices (act-order: g_idx arbitrary). Columns are sorted stably by
    /// group, which makes every group contiguous and defines `inputPermutation` (nil when already in order).
    /// - codesOriginalOrder: one code per weight, row-major [outFeatures, inFeatures], ORIGINAL column order
    ///   (GPTQ's qweight unpacked and transposed to [out, in]).
    /// - scales, zeros: [outFeatures, nGroups], indexed by the group id of gIdx (GPTQ's scales / unpacked qzeros
    ///   are [nGroups, out]: transpose them; with AutoGPTQ v1 checkpoints add the +1 to the stored zeros first).
    ///   nGroups = scales.count / outFeatures.
    /// - gIdx: inFeatures entries, the group of each original input column, in 0..<nGroups.
    public static func fromGroupIndex(bits: Int, outFeatures: Int, inFeatures: Int, codesOriginalOrder: [UInt8],
                                      scales: [Float], zeros: [Float], gIdx: [Int32]) throws -> QuantizedMatrix {
        guard outFeatures > 0, inFeatures > 0, scales.count % outFeatures == 0, scales.count > 0 else {
            throw QuantKitError(.shape, "quantized matrix: \(scales.count) scales do not divide into \(outFeatures) rows")
        }
        let ng = scales.count / outFeatures
        guard gIdx.count == inFeatures else {
            throw QuantKitError(.shape, "quantized matrix: g_idx has \(gIdx.count) entries, expected \(inFeatures)")
        }
        guard codesOriginalOrder.count == outFeatures * inFeatures else {
            throw QuantKitError(.shape, "quantized matrix: \(codesOriginalOrder.count) codes for [\(outFeatures), \(inFeatures)]")
        }
        var counts = [Int](repeating: 0, count: ng)
        for g in gIdx {
            guard g >= 0, Int(g) < ng else {
                throw QuantKitError(.input, "quantized matrix: g_idx value \(g) outside 0..<\(ng)")
            }
            counts[Int(g)] += 1
        }
        var starts = [Int32](repeating: 0, count: ng + 1)
        for g in 0..<ng { starts[g + 1] = starts[g] + Int32(counts[g]) }
        // Counting sort = stable sort by group.
        var next = starts.dropLast().map { Int($0) }
        var perm = [Int32](repeating: 0, count: inFeatures)
        for (i, g) in gIdx.enumerated() { perm[next[Int(g)]] = Int32(i); next[Int(g)] += 1 }
        let identity = perm.enumerated().allSatisfy { Int($1) == $0 }
        var codes = codesOriginalOrder
        if !identity {
            for r in 0..<outFeatures {
                for j in 0..<inFeatures { codes[r * inFeatures + j] = codesOriginalOrder[r * inFeatures + Int(perm[j])] }
            }
        }
        // The nominal group size is the uniform width when groups are uniform (last may be short).
        let first = counts.first ?? inFeatures
        let uniform = counts.dropLast().allSatisfy { $0 == first } && (counts.last ?? 0) <= first
        return try QuantizedMatrix(bits: bits, outFeatures: outFeatures, inFeatures: inFeatures, groupStarts: starts,
                                   nominalGroupSize: uniform ? first : nil, codes: codes, scales: scales, zeros: zeros,
                                   inputPermutation: identity ? nil : perm)
    }

    /// Code of packed column j in row r.
    @inline(__always) public func code(row r: Int, column j: Int) -> UInt8 {
        let perWord = 32 / containerBits
        let w = packed[r * rowWords + j / perWord]
        return UInt8(truncatingIfNeeded: (w >> UInt32((j % perWord) * containerBits)) & UInt32((1 << containerBits) - 1))
    }

    /// The float weight [outFeatures, inFeatures] in ORIGINAL column order (for references and tests).
    public func dequantized() -> [Float] {
        var w = [Float](repeating: 0, count: outFeatures * inFeatures)
        for r in 0..<outFeatures {
            for j in 0..<inFeatures {
                let g = Int(columnGroup[j])
                let col = inputPermutation.map { Int($0[j]) } ?? j
                w[r * inFeatures + col] = scales[r * nGroups + g] * (Float(code(row: r, column: j)) - zeros[r * nGroups + g])
            }
        }
        return w
    }

    /// Bytes of packed codes plus scales and zeros (what the kernels read).
    public var storageBytes: Int { packed.count * 4 + (scales.count + zeros.count) * 4 + (inputPermutation?.count ?? 0) * 4 }
}

/// Row source for the GEMM packer: dequantizes 8 codes at a time.
struct QuantRows: RowSource, @unchecked Sendable {
    let words: UnsafePointer<UInt32>, rowWords: Int, container: Int
    let scales: UnsafePointer<Float>, zeros: UnsafePointer<Float>, nGroups: Int
    let columnGroup: UnsafePointer<Int32>, aligned: Bool

    @inline(__always) func codes8(_ row: Int, _ col: Int) -> SIMD8<Float> {
        container == 8 ? u8x8(UnsafeRawPointer(words + row * rowWords) + col) : nibbles8(words[row * rowWords + col / 8])
    }

    @inline(__always) func codeScalar(_ row: Int, _ col: Int) -> Float {
        let per = 32 / container
        let w = words[row * rowWords + col / per]
        return Float((w >> UInt32((col % per) * container)) & UInt32((1 << container) - 1))
    }

    @inline(__always) func load8(_ row: Int, _ col: Int) -> SIMD8<Float> {
        if aligned || columnGroup[col] == columnGroup[col + 7] {
            let g = Int(columnGroup[col])
            return (codes8(row, col) - zeros[row * nGroups + g]) * scales[row * nGroups + g]
        }
        var v = SIMD8<Float>()
        for i in 0..<8 { v[i] = scalar(row, col + i) }
        return v
    }

    @inline(__always) func scalar(_ row: Int, _ col: Int) -> Float {
        let g = Int(columnGroup[col])
        return scales[row * nGroups + g] * (codeScalar(row, col) - zeros[row * nGroups + g])
    }
}

/// Loads 8 codes of one row (starting at a multiple of 8) as Float32.
protocol CodeBlock { static func load(_ row: UnsafeRawPointer, _ col: Int) -> SIMD8<Float> }
enum NibbleCodes: CodeBlock {
    @inline(__always) static func load(_ row: UnsafeRawPointer, _ col: Int) -> SIMD8<Float> {
        nibbles8(row.load(fromByteOffset: col &>> 1, as: UInt32.self))
    }
}
enum ByteCodes: CodeBlock {
    @inline(__always) static func load(_ row: UnsafeRawPointer, _ col: Int) -> SIMD8<Float> { u8x8(row + col) }
}

enum QuantGemv {
    /// y[r] for rows in `range`, one x row: per group, Σ x·q with SIMD on the aligned interior and
    /// y += scale·(Σx·q) − scale·zero·Σx with Σx per group precomputed; group edges not on an 8-column boundary
    /// are done scalar.
    static func rows<C: CodeBlock>(_ s: QuantRows, _ codes: C.Type, starts: UnsafePointer<Int32>, x: UnsafePointer<Float>,
                                   sumX: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                                   out: UnsafeMutablePointer<Float>, range: Range<Int>) {
        let ng = s.nGroups, rowBytes = s.rowWords &* 4
        let base = UnsafeRawPointer(s.words)
        var r = range.lowerBound
        while r < range.upperBound {
            // Four output rows at once: four independent FMA chains share each x load.
            let nr = min(4, range.upperBound - r)
            let r0 = r, r1 = nr > 1 ? r + 1 : r, r2 = nr > 2 ? r + 2 : r, r3 = nr > 3 ? r + 3 : r
            let b0 = base + r0 &* rowBytes, b1 = base + r1 &* rowBytes
            let b2 = base + r2 &* rowBytes, b3 = base + r3 &* rowBytes
            var y0 = SIMD8<Float>(), y1 = SIMD8<Float>(), y2 = SIMD8<Float>(), y3 = SIMD8<Float>()
            var t = SIMD4<Float>()
            let sp0 = s.scales + r0 &* ng, sp1 = s.scales + r1 &* ng, sp2 = s.scales + r2 &* ng, sp3 = s.scales + r3 &* ng
            let zp0 = s.zeros + r0 &* ng, zp1 = s.zeros + r1 &* ng, zp2 = s.zeros + r2 &* ng, zp3 = s.zeros + r3 &* ng
            for g in 0..<ng {
                let lo = Int(starts[g]), hi = Int(starts[g + 1])
                let a = (lo + 7) & ~7, b = max(a, hi & ~7)
                var c0 = SIMD8<Float>(), c1 = SIMD8<Float>(), c2 = SIMD8<Float>(), c3 = SIMD8<Float>()
                var col = a
                while col < b {
                    let xv = loadU(x + col)
                    c0.addProduct(xv, C.load(b0, col)); c1.addProduct(xv, C.load(b1, col))
                    c2.addProduct(xv, C.load(b2, col)); c3.addProduct(xv, C.load(b3, col))
                    col &+= 8
                }
                let sc = SIMD4<Float>(sp0[g], sp1[g], sp2[g], sp3[g])
                let zr = SIMD4<Float>(zp0[g], zp1[g], zp2[g], zp3[g])
                y0.addProduct(c0, SIMD8(repeating: sc[0])); y1.addProduct(c1, SIMD8(repeating: sc[1]))
                y2.addProduct(c2, SIMD8(repeating: sc[2])); y3.addProduct(c3, SIMD8(repeating: sc[3]))
                t -= sc * zr * sumX[g]
                // Scalar edges of a group that does not sit on 8-column boundaries (Σx above covers them too).
                if lo < a || b < hi {
                    var e = SIMD4<Float>()
                    for j in lo..<min(a, hi) {
                        e += x[j] * SIMD4(s.codeScalar(r0, j), s.codeScalar(r1, j), s.codeScalar(r2, j), s.codeScalar(r3, j))
                    }
                    var j = max(b, min(a, hi))
                    while j < hi {
                        e += x[j] * SIMD4(s.codeScalar(r0, j), s.codeScalar(r1, j), s.codeScalar(r2, j), s.codeScalar(r3, j))
                        j += 1
                    }
                    t += sc * e
                }
            }
            let res = SIMD4<Float>(y0.sum(), y1.sum(), y2.sum(), y3.sum()) + t
            for q in 0..<nr { out[r + q] = res[q] + (bias?[r + q] ?? 0) }
            r += nr
        }
    }
}

/// Largest m for which quantized matmul uses the fused GEMV (codes unpacked per x row) instead of dequantizing
/// 16-row panels for the f32 GEMM.
let quantGemvMaxRows = 3

extension Kernels {
    /// out[m, outFeatures] = x[m, inFeatures] · dequant(weight)ᵀ + bias. x is in ORIGINAL input column order; an
    /// act-order permutation is applied to x here. The float weight is never materialized: the GEMV works on the
    /// codes with scales factored out of each group, the GEMM dequantizes 16 x 256 panels into a per-thread buffer.
    public static func matmulQuantized(x: UnsafePointer<Float>, m: Int, weight: QuantizedMatrix,
                                       bias: UnsafePointer<Float>? = nil, out: UnsafeMutablePointer<Float>,
                                       threads: Int = Parallel.defaultThreads) {
        let k = weight.inFeatures, n = weight.outFeatures
        guard m > 0 else { return }
        withPackedOrder(x, m: m, k: k, permutation: weight.inputPermutation) { xp in
            matmulQuantizedRows(xp, m: m, weight: weight, bias: bias, out: out, threads: threads, k: k, n: n)
        }
    }

    /// x [m, k] in packed column order: gathered through an act-order permutation, else x itself.
    static func withPackedOrder(_ x: UnsafePointer<Float>, m: Int, k: Int, permutation: [Int32]?,
                                _ body: (UnsafePointer<Float>) -> Void) {
        guard let perm = permutation else { body(x); return }
        let g = UnsafeMutablePointer<Float>.allocate(capacity: m * k)
        defer { g.deallocate() }
        perm.withUnsafeBufferPointer { pp in
            for i in 0..<m { for j in 0..<k { g[i * k + j] = x[i * k + Int(pp[j])] } }
        }
        body(UnsafePointer(g))
    }

    private static func matmulQuantizedRows(_ xp: UnsafePointer<Float>, m: Int, weight: QuantizedMatrix,
                                            bias: UnsafePointer<Float>?, out: UnsafeMutablePointer<Float>, threads: Int,
                                            k: Int, n: Int) {
        weight.packed.withUnsafeBufferPointer { wp in
            weight.scales.withUnsafeBufferPointer { sp in
                weight.zeros.withUnsafeBufferPointer { zp in
                    weight.columnGroup.withUnsafeBufferPointer { cg in
                        weight.groupStarts.withUnsafeBufferPointer { gs in
                            let src = QuantRows(words: wp.baseAddress!, rowWords: weight.rowWords,
                                                container: weight.containerBits, scales: sp.baseAddress!,
                                                zeros: zp.baseAddress!, nGroups: weight.nGroups,
                                                columnGroup: cg.baseAddress!, aligned: weight.alignedGroups)
                            if m > quantGemvMaxRows {
                                Gemm.run(src, x: xp, m: m, k: k, n: n, bias: bias, out: out, threads: threads)
                                return
                            }
                            let ng = weight.nGroups
                            let sumX = UnsafeMutablePointer<Float>.allocate(capacity: ng)
                            defer { sumX.deallocate() }
                            for i in 0..<m {
                                let xi = xp + i * k
                                for g in 0..<ng {
                                    var s: Float = 0
                                    for j in Int(gs[g])..<Int(gs[g + 1]) { s += xi[j] }
                                    sumX[g] = s
                                }
                                let xs = SendablePointer(xi), ss = SendablePointer(sumX)
                                let os = SendablePointer(out + i * n), bs = bias.map { SendablePointer($0) }
                                let st = SendablePointer(gs.baseAddress!)
                                let minRows = max(4, (1 << 15) / k)
                                Parallel.forRanges(n, threads: threads, minPerThread: minRows) { r in
                                    if src.container == 8 {
                                        QuantGemv.rows(src, ByteCodes.self, starts: st.base, x: xs.base, sumX: ss.base,
                                                       bias: bs?.base, out: os.base, range: r)
                                    } else {
                                        QuantGemv.rows(src, NibbleCodes.self, starts: st.base, x: xs.base, sumX: ss.base,
                                                       bias: bs?.base, out: os.base, range: r)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

extension Reference {
    /// Dequantize-then-matmul twin of `Kernels.matmulQuantized` (x in original column order).
    public static func matmulQuantized(x: UnsafePointer<Float>, m: Int, weight: QuantizedMatrix,
                                       bias: UnsafePointer<Float>?, out: UnsafeMutablePointer<Float>) {
        let w = weight.dequantized()
        w.withUnsafeBufferPointer { wp in
            matmulNT(x: x, m: m, k: weight.inFeatures, weight: .f32(wp.baseAddress!), n: weight.outFeatures,
                     bias: bias, out: out)
        }
    }
}
