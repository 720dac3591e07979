import TensorCore

/// A weight matrix [n, k] re-laid out once into the GEMM's k-major panels of 16 rows ([panel][k][16], rows past n
/// zero), kept in its stored dtype. Prefill GEMMs on it skip the per-call transpose: each k block of a panel is
/// copied (f32) or widened (f16/bf16) in one sequential pass. Costs one extra copy of the weight bytes.
public final class FloatPanels: @unchecked Sendable {
    public let n: Int
    public let k: Int
    public var byteCount: Int { panels * k * 16 * elementSize }
    let kind: Kind
    let panels: Int
    let storage: UnsafeMutableRawPointer
    enum Kind { case f32, f16, bf16 }
    var elementSize: Int { kind == .f32 ? 4 : 2 }

    /// Panels packed per this many (a chunk): `packed` hears after each chunk, so a caller can let go of the
    /// source rows already copied and the packing never holds two whole copies.
    static let chunkPanels = 64

    /// `packed(rows)`: called after source rows `rows` are in the panels (in order, each row once).
    public init(_ weight: WeightRef, n: Int, k: Int, threads: Int = Parallel.defaultThreads,
                packed: ((Range<Int>) -> Void)? = nil) {
        self.n = n
        self.k = k
        panels = (n + 15) / 16
        switch weight {
        case .f32: kind = .f32
        case .f16: kind = .f16
        case .bf16: kind = .bf16
        }
        let size = kind == .f32 ? 4 : 2
        storage = UnsafeMutableRawPointer.allocate(byteCount: max(1, panels * k * 16 * size), alignment: 64)
        let dst = SendablePointer(storage.assumingMemoryBound(to: UInt8.self))
        let (n, k, panels) = (n, k, panels)
        func fill<T: Sendable>(_ w: UnsafePointer<T>, _ zero: T) {
            let src = SendablePointer(w)
            for c in stride(from: 0, to: panels, by: Self.chunkPanels) {
                let chunk = c..<min(panels, c + Self.chunkPanels)
                Parallel.forRanges(chunk.count, threads: threads) { r in
                    let out = UnsafeMutableRawPointer(dst.base).assumingMemoryBound(to: T.self)
                    for p in (r.lowerBound + chunk.lowerBound)..<(r.upperBound + chunk.lowerBound) {
                        let base = out + p * k * 16
                        for j in 0..<16 {
                            let row = p * 16 + j
                            for kk in 0..<k { base[kk * 16 + j] = row < n ? src.base[row * k + kk] : zero }
                        }
                    }
                }
                packed?(min(n, chunk.lowerBound * 16)..<min(n, chunk.upperBound * 16))
            }
        }
        switch weight {
        case .f32(let w): fill(w, 0)
        case .f16(let w): fill(w, 0)
        case .bf16(let w): fill(w, 0)
        }
    }

    deinit { storage.deallocate() }

    /// Row `row` of the weight as Float32 (f16/bf16 widened exactly): a tied embedding's lookup reads the head's
    /// panels instead of faulting the released row-major copy back in.
    public func copyRow(_ row: Int, into dst: UnsafeMutablePointer<Float>) {
        // Not reachable from input: token ids are checked against the vocabulary before any forward
        // (LlamaModel.validate(tokens:), ModelLoading.checkVocab); this guards the kernel's own invariant.
        precondition(row >= 0 && row < n, "row outside the weight")
        let offset = (row >> 4) * k * 16 + (row & 15)
        switch kind {
        case .f32:
            let p = storage.assumingMemoryBound(to: Float.self) + offset
            for kk in 0..<k { dst[kk] = p[kk * 16] }
        case .f16:
            let p = storage.assumingMemoryBound(to: Float16.self) + offset
            for kk in 0..<k { dst[kk] = Float(p[kk * 16]) }
        case .bf16:
            let p = storage.assumingMemoryBound(to: UInt16.self) + offset
            for kk in 0..<k { dst[kk] = bf16ToFloat(p[kk * 16]) }
        }
    }
}

/// Panels straight from a FloatPanels (the 16 x kcur block at panel n0/16, k offset k0): f32 is read in place by
/// the micro-kernel, f16 and bf16 are widened into the thread's scratch.
struct PrepackedPanels: PanelSource, @unchecked Sendable {
    let w: FloatPanels
    func sourceBytes(n0: Int, k0: Int, kcur: Int) -> UnsafeRawBufferPointer? {
        w.sourceBytes(n0: n0, k0: k0, kcur: kcur)
    }
    @inline(__always)
    func panel(n0: Int, nv: Int, k0: Int, kcur: Int, scratch: UnsafeMutablePointer<Float>) -> UnsafeRawPointer {
        let offset = ((n0 >> 4) * w.k + k0) * 16
        switch w.kind {
        case .f32:
            // Read in place: the GEMM prefetches each block's panels while it computes the block before, so the
            // micro-kernel finds them in cache (a copy here cost ~10% at ctx 128; reading in place without the
            // prefetch stalled on DRAM and was ~40% slower on the 110M shape).
            return UnsafeRawPointer(w.storage.assumingMemoryBound(to: Float.self) + offset)
        case .f16, .bf16:
            // f16 normally runs on PrepackedHalfPanels (widened in the micro-kernel); widening here keeps this
            // source correct for every kind.
            let half = w.kind == .f16
            var src = UnsafeRawPointer(w.storage) + offset * 2, dst = scratch
            for _ in 0..<kcur {
                if half {
                    storeU(f16x8(src), dst); storeU(f16x8(src + 16), dst + 8)
                } else {
                    storeU(bf16x8(src), dst); storeU(bf16x8(src + 16), dst + 8)
                }
                src += 32; dst += 16
            }
            return UnsafeRawPointer(scratch)
        }
    }
}

/// f16 panels of a FloatPanels, read in place and widened inside the micro-kernel (a separate widening pass per
/// block measured ~4% of an F16 perplexity run at ctx 128).
struct PrepackedHalfPanels: PanelSource, @unchecked Sendable {
    typealias Layout = F16Layout
    let w: FloatPanels
    func sourceBytes(n0: Int, k0: Int, kcur: Int) -> UnsafeRawBufferPointer? {
        w.sourceBytes(n0: n0, k0: k0, kcur: kcur)
    }
    @inline(__always)
    func panel(n0: Int, nv: Int, k0: Int, kcur: Int, scratch: UnsafeMutablePointer<Float>) -> UnsafeRawPointer {
        UnsafeRawPointer(w.storage) + ((n0 >> 4) * w.k + k0) * 16 * 2
    }
}

extension FloatPanels {
    var isHalf: Bool { kind == .f16 }
    func sourceBytes(n0: Int, k0: Int, kcur: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: storage + ((n0 >> 4) * k + k0) * 16 * elementSize, count: kcur * 16 * elementSize)
    }
}
