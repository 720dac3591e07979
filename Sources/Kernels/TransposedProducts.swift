import TensorCore

// The two other orientations of a float product, which a backward pass needs beside matmulNT:
//   matmulNN: out[m, n] = sum_k a[m, k] * b[k, n]   (input gradient: dX = dY · W)
//   matmulTN: out[n, k] = sum_m a[m, n] * b[m, k]   (weight gradient: dW = dYᵀ · X)
// Both run the packed GEMM of matmulNT with their second operand read k-major (KMajorPanels: packing is a plain
// copy); matmulTN first transposes its first operand so the reduction runs along rows.
extension Kernels {
    public static func matmulNN(a: UnsafePointer<Float>, m: Int, k: Int, b: UnsafePointer<Float>, n: Int,
                                out: UnsafeMutablePointer<Float>, threads: Int = Parallel.defaultThreads) {
        guard m > 0, n > 0 else { return }
        guard k > 0 else { out.update(repeating: 0, count: m * n); return }
        Gemm.run(panels: KMajorPanels(p: b, n: n), x: a, m: m, k: k, n: n, bias: nil, out: out, threads: threads)
    }

    public static func matmulTN(a: UnsafePointer<Float>, m: Int, n: Int, b: UnsafePointer<Float>, k: Int,
                                out: UnsafeMutablePointer<Float>, threads: Int = Parallel.defaultThreads) {
        guard n > 0, k > 0 else { return }
        guard m > 0 else { out.update(repeating: 0, count: n * k); return }
        ScratchPool.shared.withBuffer(of: Float.self, count: n * m) { at in
            transpose(a, rows: m, cols: n, into: at, threads: threads)
            Gemm.run(panels: KMajorPanels(p: b, n: k), x: at, m: n, k: m, n: k, bias: nil, out: out, threads: threads)
        }
    }

    /// out[c, r] = x[r, c] for x [rows, cols], in 32 x 32 tiles (both sides stay in cache) of 8 x 8 register
    /// blocks (Gemm's transpose8x8), split over column tiles; edges that are not whole blocks go element by element.
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
                        while r + 8 <= r1 {
                            let x = src.base + r * cols + c
                            transpose8x8(loadU(x), loadU(x + cols), loadU(x + 2 * cols), loadU(x + 3 * cols), loadU(x + 4 * cols),
                                         loadU(x + 5 * cols), loadU(x + 6 * cols), loadU(x + 7 * cols), dst.base + c * rows + r, rows)
                            r += 8
                        }
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
