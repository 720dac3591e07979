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

    /// out[c, r] = x[r, c] for x [rows, cols], in 32 x 32 tiles (both sides stay in cache), split over column tiles.
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
                    for c in c0..<c1 {
                        let o = dst.base + c * rows
                        for r in r0..<r1 { o[r] = src.base[r * cols + c] }
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
