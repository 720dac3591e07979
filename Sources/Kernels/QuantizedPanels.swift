import TensorCore

/// A QuantizedMatrix re-laid out once into the GEMM's k-major panels of 16 output rows, codes kept at their
/// container width: [panel][packed column][16] bytes (5-8 bits) or [panel][packed column] UInt64 words holding 16
/// nibbles, row j of the panel at bit 4j (2-4 bits); scales and zeros as [panel][group][16]. Prefill GEMMs widen a
/// 16 x kcur block with two vector loads per column instead of the row-major path's 8x8 transposes and per-element
/// group lookups; decode-sized products (m <= 3) run a GEMV over the same panels, so a layer needs no other copy.
public final class QuantizedPanels: @unchecked Sendable {
    public let n: Int
    public let k: Int
    /// Packed column j is original input column inputPermutation[j] (act-order); nil means identity.
    public let inputPermutation: [Int32]?
    let panels: Int
    let nGroups: Int
    /// 8 (a byte per code) or 4 (a nibble per code).
    let container: Int
    let codes: UnsafeMutableRawPointer
    let scales: UnsafeMutablePointer<Float>
    let zeros: UnsafeMutablePointer<Float>
    /// Group boundaries in packed column order (nGroups + 1).
    let groupStarts: UnsafeMutablePointer<Int>
    var columnBytes: Int { container == 8 ? 16 : 8 }
    public var byteCount: Int { panels * k * columnBytes + 2 * panels * nGroups * 16 * 4 }

    public init(_ m: QuantizedMatrix, threads: Int = Parallel.defaultThreads) {
        n = m.outFeatures
        k = m.inFeatures
        panels = (n + 15) / 16
        nGroups = m.nGroups
        container = m.containerBits
        inputPermutation = m.inputPermutation
        let columnBytes = container == 8 ? 16 : 8
        codes = UnsafeMutableRawPointer.allocate(byteCount: max(1, panels * k * columnBytes), alignment: 64)
        scales = .allocate(capacity: max(1, panels * nGroups * 16))
        zeros = .allocate(capacity: max(1, panels * nGroups * 16))
        groupStarts = .allocate(capacity: nGroups + 1)
        for g in 0...nGroups { groupStarts[g] = Int(m.groupStarts[g]) }
        let (n, k, ng, container) = (n, k, nGroups, container)
        let dst = SendablePointer(codes.assumingMemoryBound(to: UInt8.self))
        let sd = SendablePointer(scales), zd = SendablePointer(zeros)
        let rowWords = m.rowWords
        m.scales.withUnsafeBufferPointer { sp in
            m.zeros.withUnsafeBufferPointer { zp in
                m.packed.withUnsafeBufferPointer { wp in
                    let ss = SendablePointer(sp.baseAddress!), zs = SendablePointer(zp.baseAddress!)
                    let words = SendablePointer(wp.baseAddress!)
                    Parallel.forRanges(panels, threads: threads) { r in
                        for p in r {
                            let base = UnsafeMutableRawPointer(dst.base) + p * k * columnBytes
                            base.initializeMemory(as: UInt8.self, repeating: 0, count: k * columnBytes)
                            for j in 0..<16 {
                                let row = p * 16 + j
                                for g in 0..<ng {
                                    let o = (p * ng + g) * 16 + j
                                    sd.base[o] = row < n ? ss.base[row * ng + g] : 0
                                    zd.base[o] = row < n ? zs.base[row * ng + g] : 0
                                }
                                guard row < n else { continue }
                                // Row-major codes: byte c of the row (8-bit container), or nibble c (low first).
                                let src = UnsafeRawPointer(words.base + row * rowWords)
                                if container == 8 {
                                    for c in 0..<k { base.storeBytes(of: src.load(fromByteOffset: c, as: UInt8.self),
                                                                     toByteOffset: c * 16 + j, as: UInt8.self) }
                                } else {
                                    let out = base.assumingMemoryBound(to: UInt64.self)
                                    for c in 0..<k {
                                        let nibble = (src.load(fromByteOffset: c >> 1, as: UInt8.self) >> UInt8((c & 1) * 4)) & 15
                                        out[c] |= UInt64(nibble) << UInt64(4 * j)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    deinit {
        codes.deallocate()
        scales.deallocate()
        zeros.deallocate()
        groupStarts.deallocate()
    }
}

/// Panels dequantized from QuantizedPanels: scale · (q − zero), the same expression and rounding as
/// `QuantizedMatrix.dequantized()`.
struct QuantizedPanelSource: PanelSource, @unchecked Sendable {
    let w: QuantizedPanels

    func sourceBytes(n0: Int, k0: Int, kcur: Int) -> UnsafeRawBufferPointer? {
        let cb = w.columnBytes
        return UnsafeRawBufferPointer(start: w.codes + ((n0 >> 4) * w.k + k0) * cb, count: kcur * cb)
    }

    @inline(__always)
    func panel(n0: Int, nv: Int, k0: Int, kcur: Int, scratch: UnsafeMutablePointer<Float>) -> UnsafeRawPointer {
        let p = n0 >> 4
        let cb = w.columnBytes
        let base = UnsafeRawPointer(w.codes) + p * w.k * cb
        var g = 0
        while w.groupStarts[g + 1] <= k0 { g += 1 }
        var c = k0
        let end = k0 + kcur
        while c < end {
            let stop = min(end, w.groupStarts[g + 1])
            let sp = w.scales + (p * w.nGroups + g) * 16, zp = w.zeros + (p * w.nGroups + g) * 16
            let s0 = loadU(sp), s1 = loadU(sp + 8), z0 = loadU(zp), z1 = loadU(zp + 8)
            var o = scratch + (c - k0) * 16
            if w.container == 8 {
                while c < stop {
                    let q = base + c * 16
                    storeU((u8x8(q) - z0) * s0, o)
                    storeU((u8x8(q + 8) - z1) * s1, o + 8)
                    o += 16
                    c += 1
                }
            } else {
                while c < stop {
                    storeU((nibbles8(base.load(fromByteOffset: c * 8, as: UInt32.self)) - z0) * s0, o)
                    storeU((nibbles8(base.load(fromByteOffset: c * 8 + 4, as: UInt32.self)) - z1) * s1, o + 8)
                    o += 16
                    c += 1
                }
            }
            g += 1
        }
        return UnsafeRawPointer(scratch)
    }
}

/// Decode-sized products over QuantizedPanels: per panel and group, Σ x·q over the group's columns for 16 outputs
/// at once (each column's 16 codes decoded once and shared by the x rows), then
/// y += scale·Σx·q − scale·zero·Σx with Σx per group precomputed.
enum QuantizedPanelGemv {
    @inline(__always)
    static func codes(_ w: QuantizedPanels, _ base: UnsafeRawPointer, _ c: Int) -> (SIMD8<Float>, SIMD8<Float>) {
        if w.container == 8 {
            let q = base + c * 16
            return (u8x8(q), u8x8(q + 8))
        }
        // Two 32-bit loads, each broadcast straight from memory (vpbroadcastd m32), not one 64-bit load split in GPRs.
        return (nibbles8(base.load(fromByteOffset: c * 8, as: UInt32.self)),
                nibbles8(base.load(fromByteOffset: c * 8 + 4, as: UInt32.self)))
    }

    /// Output panels `range` for `rows` (1...3) x rows; sumX is [rows, nGroups].
    @inline(__always)
    static func panels(_ w: QuantizedPanels, rows: Int, x: UnsafePointer<Float>, sumX: UnsafePointer<Float>,
                       bias: UnsafePointer<Float>?, out: UnsafeMutablePointer<Float>, range: Range<Int>) {
        let k = w.k, ng = w.nGroups
        let x1 = x + (rows > 1 ? k : 0), x2 = x + (rows > 2 ? 2 * k : 0)
        for p in range {
            let base = UnsafeRawPointer(w.codes) + p * k * w.columnBytes
            var y00 = SIMD8<Float>(), y01 = SIMD8<Float>(), y10 = SIMD8<Float>(), y11 = SIMD8<Float>()
            var y20 = SIMD8<Float>(), y21 = SIMD8<Float>()
            for g in 0..<ng {
                // Independent partial sums for even and odd columns (four for a single row): one FMA chain per
                // accumulator would leave the loop waiting on FMA latency.
                var a00 = SIMD8<Float>(), a01 = SIMD8<Float>(), a10 = SIMD8<Float>(), a11 = SIMD8<Float>()
                var a20 = SIMD8<Float>(), a21 = SIMD8<Float>()
                var b00 = SIMD8<Float>(), b01 = SIMD8<Float>(), b10 = SIMD8<Float>(), b11 = SIMD8<Float>()
                var b20 = SIMD8<Float>(), b21 = SIMD8<Float>()
                var c = w.groupStarts[g]
                let end = w.groupStarts[g + 1]
                if rows == 1 {
                    var e00 = SIMD8<Float>(), e01 = SIMD8<Float>(), f00 = SIMD8<Float>(), f01 = SIMD8<Float>()
                    while c + 4 <= end {
                        let (q0, q1) = codes(w, base, c), (r0, r1) = codes(w, base, c + 1)
                        let (s0, s1) = codes(w, base, c + 2), (t0, t1) = codes(w, base, c + 3)
                        var v = SIMD8<Float>(repeating: x[c]); a00.addProduct(v, q0); a01.addProduct(v, q1)
                        v = SIMD8<Float>(repeating: x[c + 1]); b00.addProduct(v, r0); b01.addProduct(v, r1)
                        v = SIMD8<Float>(repeating: x[c + 2]); e00.addProduct(v, s0); e01.addProduct(v, s1)
                        v = SIMD8<Float>(repeating: x[c + 3]); f00.addProduct(v, t0); f01.addProduct(v, t1)
                        c += 4
                    }
                    a00 += e00; a01 += e01; b00 += f00; b01 += f01
                }
                while c + 2 <= end {
                    let (q0, q1) = codes(w, base, c), (r0, r1) = codes(w, base, c + 1)
                    var v = SIMD8<Float>(repeating: x[c]); a00.addProduct(v, q0); a01.addProduct(v, q1)
                    v = SIMD8<Float>(repeating: x[c + 1]); b00.addProduct(v, r0); b01.addProduct(v, r1)
                    if rows > 1 {
                        v = SIMD8<Float>(repeating: x1[c]); a10.addProduct(v, q0); a11.addProduct(v, q1)
                        v = SIMD8<Float>(repeating: x1[c + 1]); b10.addProduct(v, r0); b11.addProduct(v, r1)
                    }
                    if rows > 2 {
                        v = SIMD8<Float>(repeating: x2[c]); a20.addProduct(v, q0); a21.addProduct(v, q1)
                        v = SIMD8<Float>(repeating: x2[c + 1]); b20.addProduct(v, r0); b21.addProduct(v, r1)
                    }
                    c += 2
                }
                if c < end {
                    let (q0, q1) = codes(w, base, c)
                    var v = SIMD8<Float>(repeating: x[c]); a00.addProduct(v, q0); a01.addProduct(v, q1)
                    if rows > 1 { v = SIMD8<Float>(repeating: x1[c]); a10.addProduct(v, q0); a11.addProduct(v, q1) }
                    if rows > 2 { v = SIMD8<Float>(repeating: x2[c]); a20.addProduct(v, q0); a21.addProduct(v, q1) }
                }
                a00 += b00; a01 += b01; a10 += b10; a11 += b11; a20 += b20; a21 += b21
                let sp = w.scales + (p * ng + g) * 16, zp = w.zeros + (p * ng + g) * 16
                let s0 = loadU(sp), s1 = loadU(sp + 8)
                let sz0 = s0 * loadU(zp), sz1 = s1 * loadU(zp + 8)
                y00 += s0 * a00 - sz0 * sumX[g]; y01 += s1 * a01 - sz1 * sumX[g]
                if rows > 1 { y10 += s0 * a10 - sz0 * sumX[ng + g]; y11 += s1 * a11 - sz1 * sumX[ng + g] }
                if rows > 2 { y20 += s0 * a20 - sz0 * sumX[2 * ng + g]; y21 += s1 * a21 - sz1 * sumX[2 * ng + g] }
            }
            @inline(__always) func put(_ i: Int, _ lo: SIMD8<Float>, _ hi: SIMD8<Float>) {
                for j in 0..<min(16, w.n - p * 16) {
                    let o = p * 16 + j
                    out[i * w.n + o] = (j < 8 ? lo[j] : hi[j - 8]) + (bias?[o] ?? 0)
                }
            }
            put(0, y00, y01)
            if rows > 1 { put(1, y10, y11) }
            if rows > 2 { put(2, y20, y21) }
        }
    }
}

extension Kernels {
    /// out[m, n] = x[m, k] · dequant(weight)ᵀ + bias on pre-packed panels (x in ORIGINAL input column order; an
    /// act-order permutation is applied here): the GEMM for m > 3, the panel GEMV below that.
    public static func matmulQuantized(x: UnsafePointer<Float>, m: Int, panels w: QuantizedPanels,
                                       bias: UnsafePointer<Float>? = nil, out: UnsafeMutablePointer<Float>,
                                       threads: Int = Parallel.defaultThreads) {
        let k = w.k, n = w.n
        guard m > 0 else { return }
        withPackedOrder(x, m: m, k: k, permutation: w.inputPermutation) { xp in
            if m > quantGemvMaxRows {
                Gemm.run(panels: QuantizedPanelSource(w: w), x: xp, m: m, k: k, n: n, bias: bias, out: out, threads: threads)
                return
            }
            let ng = w.nGroups
            let sumX = UnsafeMutablePointer<Float>.allocate(capacity: m * ng)
            defer { sumX.deallocate() }
            for i in 0..<m {
                for g in 0..<ng {
                    var s: Float = 0
                    for j in w.groupStarts[g]..<w.groupStarts[g + 1] { s += xp[i * k + j] }
                    sumX[i * ng + g] = s
                }
            }
            let xs = SendablePointer(xp), ss = SendablePointer(sumX), os = SendablePointer(out)
            let bs = bias.map { SendablePointer($0) }
            // ~32K multiply-adds per thread pay for a dispatch.
            let minPanels = max(1, (1 << 15) / (16 * k))
            Parallel.forRanges(w.panels, threads: threads, minPerThread: minPanels) { r in
                switch m {
                case 1: QuantizedPanelGemv.panels(w, rows: 1, x: xs.base, sumX: ss.base, bias: bs?.base, out: os.base, range: r)
                case 2: QuantizedPanelGemv.panels(w, rows: 2, x: xs.base, sumX: ss.base, bias: bs?.base, out: os.base, range: r)
                default: QuantizedPanelGemv.panels(w, rows: 3, x: xs.base, sumX: ss.base, bias: bs?.base, out: os.base, range: r)
                }
            }
        }
    }
}
