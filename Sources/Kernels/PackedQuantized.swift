import TensorCore

/// A QuantizedMatrix re-laid out once into the GEMM's k-major panels of 16 output rows, codes kept at their
/// container width: [panel][packed column][16] bytes (5-8 bits) or [panel][packed column] UInt64 words holding 16
/// nibbles, row j of the panel at bit 4j (2-4 bits); scales and zeros as [panel][group][16]. Prefill GEMMs widen a
/// 16 x kcur block with two vector loads per column instead of the row-major path's 8x8 transposes and per-element
/// group lookups. Costs one extra copy of the code bytes.
public final class QuantizedPanels: @unchecked Sendable {
    public let n: Int
    public let k: Int
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
    func panel(n0: Int, nv: Int, k0: Int, kcur: Int, scratch: UnsafeMutablePointer<Float>) -> UnsafePointer<Float> {
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
                    let word = base.load(fromByteOffset: c * 8, as: UInt64.self)
                    storeU((nibbles8(UInt32(truncatingIfNeeded: word)) - z0) * s0, o)
                    storeU((nibbles8(UInt32(truncatingIfNeeded: word >> 32)) - z1) * s1, o + 8)
                    o += 16
                    c += 1
                }
            }
            g += 1
        }
        return UnsafePointer(scratch)
    }
}
