import _Builtin_intrinsics.intel
import TensorCore

// The two other orientations of a float product, which a backward pass needs beside matmulNT:
//   matmulNN: out[m, n] = sum_k a[m, k] * b[k, n]   (input gradient: dX = dY · W)
//   matmulTN: out[n, k] = sum_m a[m, n] * b[m, k]   (weight gradient: dW = dYᵀ · X)
// Both transpose their operands into row-major [n, k] form and run the packed GEMM of matmulNT: a transpose moves
// (m + n)·k floats, the product does 2·m·n·k flops, so the copy is a small share for any shape worth threading.
extension Kernels {
    public static func matmulNN(a: UnsafePointer<Float>, m: Int, k: Int, b: UnsafePointer<Float>, n: Int,
                                out: UnsafeMutablePointer<Float>, threads: Int = Parallel.defaultThreads) {
        guard m > 0, n > 0 else { return }
        let bt = UnsafeMutablePointer<Float>.allocate(capacity: max(1, n * k))
        defer { bt.deallocate() }
        transpose(b, rows: k, cols: n, into: bt, threads: threads)
        matmulNT(x: a, m: m, k: k, weight: .f32(UnsafePointer(bt)), n: n, out: out, threads: threads)
    }

    public static func matmulTN(a: UnsafePointer<Float>, m: Int, n: Int, b: UnsafePointer<Float>, k: Int,
                                out: UnsafeMutablePointer<Float>, threads: Int = Parallel.defaultThreads) {
        guard n > 0, k > 0 else { return }
        guard m > 0 else { out.update(repeating: 0, count: n * k); return }
        let at = UnsafeMutablePointer<Float>.allocate(capacity: n * m), bt = UnsafeMutablePointer<Float>.allocate(capacity: k * m)
        defer { at.deallocate(); bt.deallocate() }
        transpose(a, rows: m, cols: n, into: at, threads: threads)
        transpose(b, rows: m, cols: k, into: bt, threads: threads)
        matmulNT(x: at, m: n, k: m, weight: .f32(UnsafePointer(bt)), n: k, out: out, threads: threads)
    }

    /// out[c, r] = x[r, c] for x [rows, cols], in 32 x 32 tiles (both sides stay in cache) of 8 x 8 register
    /// blocks (AVX shuffles), split over column tiles; edges that are not whole blocks go element by element.
    public static func transpose(_ x: UnsafePointer<Float>, rows: Int, cols: Int, into out: UnsafeMutablePointer<Float>,
                                 threads: Int = Parallel.defaultThreads) {
        let tile = 32, src = SendablePointer(x), dst = SendablePointer(out)
        let colTiles = (cols + tile - 1) / tile
        Parallel.forRanges(colTiles, threads: threads, minPerThread: max(1, 4096 / max(1, rows))) { range in
            for ct in range {
                let c0 = ct * tile, c1 = min(cols, c0 + tile)
                var r0 = 0
                while r0 < rows {
                    let r1 = min(rows, r0 + tile)
                    var c = c0
                    while c + 8 <= c1 {
                        var r = r0
                        while r + 8 <= r1 { transpose8x8(src.base + r * cols + c, cols, dst.base + c * rows + r, rows); r += 8 }
                        for cc in c..<(c + 8) { for rr in r..<r1 { dst.base[cc * rows + rr] = src.base[rr * cols + cc] } }
                        c += 8
                    }
                    for cc in c..<c1 {
                        let o = dst.base + cc * rows
                        for rr in r0..<r1 { o[rr] = src.base[rr * cols + cc] }
                    }
                    r0 = r1
                }
            }
        }
    }

    /// One 8 x 8 block: rows of x (stride ldx) become rows of out (stride ldo). Unpack pairs of rows, interleave
    /// pairs of pairs, then swap 128-bit halves: 24 shuffles for 64 floats.
    @inline(__always)
    static func transpose8x8(_ x: UnsafePointer<Float>, _ ldx: Int, _ out: UnsafeMutablePointer<Float>, _ ldo: Int) {
        let r0 = loadU(x), r1 = loadU(x + ldx), r2 = loadU(x + 2 * ldx), r3 = loadU(x + 3 * ldx)
        let r4 = loadU(x + 4 * ldx), r5 = loadU(x + 5 * ldx), r6 = loadU(x + 6 * ldx), r7 = loadU(x + 7 * ldx)
        // a0 = r0[0] r1[0] r0[1] r1[1] | r0[4] r1[4] r0[5] r1[5], ...
        let a0 = _mm256_unpacklo_ps(r0, r1), a1 = _mm256_unpackhi_ps(r0, r1)
        let a2 = _mm256_unpacklo_ps(r2, r3), a3 = _mm256_unpackhi_ps(r2, r3)
        let a4 = _mm256_unpacklo_ps(r4, r5), a5 = _mm256_unpackhi_ps(r4, r5)
        let a6 = _mm256_unpacklo_ps(r6, r7), a7 = _mm256_unpackhi_ps(r6, r7)
        // b0 = r0[0] r1[0] r2[0] r3[0] | r0[4] r1[4] r2[4] r3[4], ...
        let b0 = unpackLow64(a0, a2), b1 = unpackHigh64(a0, a2), b2 = unpackLow64(a1, a3), b3 = unpackHigh64(a1, a3)
        let b4 = unpackLow64(a4, a6), b5 = unpackHigh64(a4, a6), b6 = unpackLow64(a5, a7), b7 = unpackHigh64(a5, a7)
        storeU(SIMD8(lowHalf: b0.lowHalf, highHalf: b4.lowHalf), out)
        storeU(SIMD8(lowHalf: b1.lowHalf, highHalf: b5.lowHalf), out + ldo)
        storeU(SIMD8(lowHalf: b2.lowHalf, highHalf: b6.lowHalf), out + 2 * ldo)
        storeU(SIMD8(lowHalf: b3.lowHalf, highHalf: b7.lowHalf), out + 3 * ldo)
        storeU(SIMD8(lowHalf: b0.highHalf, highHalf: b4.highHalf), out + 4 * ldo)
        storeU(SIMD8(lowHalf: b1.highHalf, highHalf: b5.highHalf), out + 5 * ldo)
        storeU(SIMD8(lowHalf: b2.highHalf, highHalf: b6.highHalf), out + 6 * ldo)
        storeU(SIMD8(lowHalf: b3.highHalf, highHalf: b7.highHalf), out + 7 * ldo)
    }

    @inline(__always) static func unpackLow64(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> {
        unsafeBitCast(_mm256_unpacklo_pd(unsafeBitCast(a, to: SIMD4<Double>.self), unsafeBitCast(b, to: SIMD4<Double>.self)), to: SIMD8<Float>.self)
    }
    @inline(__always) static func unpackHigh64(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> {
        unsafeBitCast(_mm256_unpackhi_pd(unsafeBitCast(a, to: SIMD4<Double>.self), unsafeBitCast(b, to: SIMD4<Double>.self)), to: SIMD8<Float>.self)
    }
}

extension Reference {
    /// Scalar twin of Kernels.matmulNN (Double accumulation).
    public static func matmulNN(a: UnsafePointer<Float>, m: Int, k: Int, b: UnsafePointer<Float>, n: Int,
                                out: UnsafeMutablePointer<Float>) {
        for i in 0..<m {
            for j in 0..<n {
                var acc = 0.0
                for kk in 0..<k { acc += Double(a[i * k + kk]) * Double(b[kk * n + j]) }
                out[i * n + j] = Float(acc)
            }
        }
    }

    /// Scalar twin of Kernels.matmulTN (Double accumulation).
    public static func matmulTN(a: UnsafePointer<Float>, m: Int, n: Int, b: UnsafePointer<Float>, k: Int,
                                out: UnsafeMutablePointer<Float>) {
        for j in 0..<n {
            for kk in 0..<k {
                var acc = 0.0
                for i in 0..<m { acc += Double(a[i * n + j]) * Double(b[i * k + kk]) }
                out[j * k + kk] = Float(acc)
            }
        }
    }
}
