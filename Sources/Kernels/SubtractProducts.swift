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
        // Four rows share each load of B; C is taken in panels that stay in L1 while B's rows stream through.
        while r + 4 <= m {
            subtractProductsTile4(n: n, k: k, a: a + r * lda, lda: lda, b: b, ldb: ldb, c: c + r * ldc, ldc: ldc)
            r += 4
        }
        while r < m {
            subtractProductsRow(n: n, k: k, a: a + r * lda, b: b, ldb: ldb, c: c + r * ldc)
            r += 1
        }
    }

    /// Columns of C per panel: 4 rows x 256 doubles = 8 KiB.
    private static let subtractPanel = 256

    private typealias D4 = SIMD4<Double>

    @inline(__always) private static func load(_ p: UnsafePointer<Double>) -> D4 {
        UnsafeRawPointer(p).loadUnaligned(as: D4.self)
    }

    @inline(__always) private static func store(_ v: D4, _ p: UnsafeMutablePointer<Double>) {
        UnsafeMutableRawPointer(p).storeBytes(of: v, as: D4.self)
    }

    private static func subtractProductsTile4(n: Int, k: Int, a: UnsafePointer<Double>, lda: Int, b: UnsafePointer<Double>,
                                              ldb: Int, c: UnsafeMutablePointer<Double>, ldc: Int) {
        var j0 = 0
        while j0 < n {
            let width = min(subtractPanel, n - j0), w4 = width & ~3
            let c0 = c + j0, c1 = c0 + ldc, c2 = c1 + ldc, c3 = c2 + ldc
            for p in 0..<k {
                let s0 = a[p], s1 = a[lda + p], s2 = a[2 * lda + p], s3 = a[3 * lda + p]
                let e0 = D4(repeating: s0), e1 = D4(repeating: s1), e2 = D4(repeating: s2), e3 = D4(repeating: s3)
                let bp = b + p * ldb + j0
                var j = 0
                while j < w4 {
                    let u = load(bp + j)
                    store(load(c0 + j) - e0 * u, c0 + j)
                    store(load(c1 + j) - e1 * u, c1 + j)
                    store(load(c2 + j) - e2 * u, c2 + j)
                    store(load(c3 + j) - e3 * u, c3 + j)
                    j += 4
                }
                while j < width {
                    let u = bp[j]
                    c0[j] = c0[j] - s0 * u; c1[j] = c1[j] - s1 * u; c2[j] = c2[j] - s2 * u; c3[j] = c3[j] - s3 * u
                    j += 1
                }
            }
            j0 += width
        }
    }

    /// One row of C, streamed once per product.
    private static func subtractProductsRow(n: Int, k: Int, a: UnsafePointer<Double>, b: UnsafePointer<Double>, ldb: Int,
                                            c: UnsafeMutablePointer<Double>) {
        let n4 = n & ~3
        for p in 0..<k {
            let s = a[p], e = D4(repeating: s), bp = b + p * ldb
            var j = 0
            while j < n4 { store(load(c + j) - e * load(bp + j), c + j); j += 4 }
            while j < n { c[j] = c[j] - s * bp[j]; j += 1 }
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
