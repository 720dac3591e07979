import Foundation

extension Kernels {
    /// C[r, 0..<n] -= sum over p < k of A[r, p] * B[p, 0..<n], rows r < m (Float64, row-major, leading dimensions
    /// lda/ldb/ldc): GPTQ's error feedback (k = 1 inside a block, k = block size for the lazy batch update).
    /// Every entry of C takes its products one at a time, p ascending, as c - a*b (two roundings, no fused
    /// multiply-add): bit-identical to `Reference.subtractProducts` whatever the tiling. Single-threaded: callers
    /// split rows across threads.
    public static func subtractProducts(m: Int, n: Int, k: Int, a: UnsafePointer<Double>, lda: Int,
                                        b: UnsafePointer<Double>, ldb: Int, c: UnsafeMutablePointer<Double>, ldc: Int) {
        guard m > 0, n > 0, k > 0 else { return }
        var r = 0
        // 4 rows x 8 columns of C stay in registers for the whole p loop: C is read and written once.
        while r + 4 <= m {
            subtractProductsTile4(n: n, k: k, a: a + r * lda, lda: lda, b: b, ldb: ldb, c: c + r * ldc, ldc: ldc)
            r += 4
        }
        while r < m {
            subtractProductsRow(n: n, k: k, a: a + r * lda, b: b, ldb: ldb, c: c + r * ldc)
            r += 1
        }
    }

    private typealias D4 = SIMD4<Double>

    @inline(__always) private static func load(_ p: UnsafePointer<Double>) -> D4 {
        UnsafeRawPointer(p).loadUnaligned(as: D4.self)
    }

    @inline(__always) private static func store(_ v: D4, _ p: UnsafeMutablePointer<Double>) {
        UnsafeMutableRawPointer(p).storeBytes(of: v, as: D4.self)
    }

    private static func subtractProductsTile4(n: Int, k: Int, a: UnsafePointer<Double>, lda: Int, b: UnsafePointer<Double>,
                                              ldb: Int, c: UnsafeMutablePointer<Double>, ldc: Int) {
        let c0 = c, c1 = c + ldc, c2 = c1 + ldc, c3 = c2 + ldc
        let a0 = a, a1 = a + lda, a2 = a1 + lda, a3 = a2 + lda
        var j = 0
        while j + 8 <= n {
            var x0 = load(c0 + j), y0 = load(c0 + j + 4), x1 = load(c1 + j), y1 = load(c1 + j + 4)
            var x2 = load(c2 + j), y2 = load(c2 + j + 4), x3 = load(c3 + j), y3 = load(c3 + j + 4)
            for p in 0..<k {
                let bp = b + p * ldb + j
                let u = load(bp), v = load(bp + 4)
                let e0 = D4(repeating: a0[p]), e1 = D4(repeating: a1[p]), e2 = D4(repeating: a2[p]), e3 = D4(repeating: a3[p])
                x0 = x0 - e0 * u; y0 = y0 - e0 * v
                x1 = x1 - e1 * u; y1 = y1 - e1 * v
                x2 = x2 - e2 * u; y2 = y2 - e2 * v
                x3 = x3 - e3 * u; y3 = y3 - e3 * v
            }
            store(x0, c0 + j); store(y0, c0 + j + 4); store(x1, c1 + j); store(y1, c1 + j + 4)
            store(x2, c2 + j); store(y2, c2 + j + 4); store(x3, c3 + j); store(y3, c3 + j + 4)
            j += 8
        }
        if j < n {
            for t in 0..<4 { subtractProductsRow(n: n - j, k: k, a: a + t * lda, b: b + j, ldb: ldb, c: c + t * ldc + j) }
        }
    }

    /// One row of C: 4-column chunks, then single columns.
    private static func subtractProductsRow(n: Int, k: Int, a: UnsafePointer<Double>, b: UnsafePointer<Double>, ldb: Int,
                                            c: UnsafeMutablePointer<Double>) {
        var j = 0
        while j + 4 <= n {
            var x = load(c + j)
            for p in 0..<k { x = x - D4(repeating: a[p]) * load(b + p * ldb + j) }
            store(x, c + j)
            j += 4
        }
        while j < n {
            var x = c[j]
            for p in 0..<k { x = x - a[p] * b[p * ldb + j] }
            c[j] = x
            j += 1
        }
    }
}

extension Reference {
    /// Scalar twin of `Kernels.subtractProducts`: C[r, j] -= A[r, p] * B[p, j], p ascending.
    public static func subtractProducts(m: Int, n: Int, k: Int, a: UnsafePointer<Double>, lda: Int,
                                        b: UnsafePointer<Double>, ldb: Int, c: UnsafeMutablePointer<Double>, ldc: Int) {
        for r in 0..<m {
            for p in 0..<k {
                for j in 0..<n { c[r * ldc + j] -= a[r * lda + p] * b[p * ldb + j] }
            }
        }
    }
}
