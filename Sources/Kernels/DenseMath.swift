import Foundation
import TensorCore

/// Float64 dense kernels GPTQ needs: a register-tiled SIMD "C += alpha * A B^T" (both operands read along
/// contiguous rows), blocked Cholesky and triangular inverse built on it, all multithreaded over row tiles.
/// Row-major throughout. Scalar twins live in `DenseReference` for the tests.
public enum DenseMath {
    public typealias V4 = SIMD4<Double>

    /// Inlinable: GPTQ's column sweep (in Quantization) calls it per 4 doubles.
    @inlinable @inline(__always) public static func load(_ p: UnsafePointer<Double>) -> V4 {
        UnsafeRawPointer(p).loadUnaligned(as: V4.self)
    }

    /// Triangle of C a call must fill (tiles straddling the diagonal are computed whole; entries on the other
    /// side of the diagonal inside such tiles get updated too and must be ignored by the caller).
    public enum Triangle: Sendable { case full, lower, upper }

    /// C[i, j] += alpha * sum_p A[i, p] * B[j, p] for i < m, j < n, p < k. Single-threaded, 2x4 tiles.
    public static func gemmNTTile(m: Int, n: Int, k: Int, a: UnsafePointer<Double>, lda: Int, b: UnsafePointer<Double>, ldb: Int,
                                  c: UnsafeMutablePointer<Double>, ldc: Int, alpha: Double, rowOffset: Int = 0,
                                  triangle: Triangle = .full) {
        let k4 = k & ~3
        var i = 0
        while i < m {
            let mi = min(2, m - i)
            var j = 0
            // Skip tiles entirely outside the requested triangle (global row index = rowOffset + i).
            let gi = rowOffset + i
            var jEnd = n
            if triangle == .lower { jEnd = min(n, gi + mi) }
            if triangle == .upper { j = max(0, gi & ~3) }
            while j < jEnd {
                let nj = min(4, jEnd - j)
                if mi == 2 && nj == 4 {
                    let a0 = a + i * lda, a1 = a0 + lda
                    let b0 = b + j * ldb, b1 = b0 + ldb, b2 = b1 + ldb, b3 = b2 + ldb
                    var s00 = V4(), s01 = V4(), s02 = V4(), s03 = V4()
                    var s10 = V4(), s11 = V4(), s12 = V4(), s13 = V4()
                    var p = 0
                    while p < k4 {
                        let x0 = load(a0 + p), x1 = load(a1 + p)
                        let y0 = load(b0 + p), y1 = load(b1 + p), y2 = load(b2 + p), y3 = load(b3 + p)
                        s00.addProduct(x0, y0); s01.addProduct(x0, y1); s02.addProduct(x0, y2); s03.addProduct(x0, y3)
                        s10.addProduct(x1, y0); s11.addProduct(x1, y1); s12.addProduct(x1, y2); s13.addProduct(x1, y3)
                        p += 4
                    }
                    var t00 = s00.sum(), t01 = s01.sum(), t02 = s02.sum(), t03 = s03.sum()
                    var t10 = s10.sum(), t11 = s11.sum(), t12 = s12.sum(), t13 = s13.sum()
                    while p < k {
                        let x0 = a0[p], x1 = a1[p]
                        t00 += x0 * b0[p]; t01 += x0 * b1[p]; t02 += x0 * b2[p]; t03 += x0 * b3[p]
                        t10 += x1 * b0[p]; t11 += x1 * b1[p]; t12 += x1 * b2[p]; t13 += x1 * b3[p]
                        p += 1
                    }
                    let c0 = c + i * ldc + j, c1 = c0 + ldc
                    c0[0] += alpha * t00; c0[1] += alpha * t01; c0[2] += alpha * t02; c0[3] += alpha * t03
                    c1[0] += alpha * t10; c1[1] += alpha * t11; c1[2] += alpha * t12; c1[3] += alpha * t13
                } else {
                    for ii in i..<(i + mi) {
                        for jj in j..<(j + nj) {
                            let ap = a + ii * lda, bp = b + jj * ldb
                            var s = V4()
                            var p = 0
                            while p < k4 { s.addProduct(load(ap + p), load(bp + p)); p += 4 }
                            var t = s.sum()
                            while p < k { t += ap[p] * bp[p]; p += 1 }
                            c[ii * ldc + jj] += alpha * t
                        }
                    }
                }
                j += nj
            }
            i += mi
        }
    }

    /// Multithreaded `gemmNTTile`: rows of C in tiles of 16, dynamically scheduled (triangles are uneven).
    public static func gemmNT(m: Int, n: Int, k: Int, a: UnsafePointer<Double>, lda: Int, b: UnsafePointer<Double>, ldb: Int,
                              c: UnsafeMutablePointer<Double>, ldc: Int, alpha: Double, triangle: Triangle = .full,
                              threads: Int = Parallel.defaultThreads) {
        guard m > 0, n > 0, k > 0 else { return }
        let tile = 16
        let tiles = (m + tile - 1) / tile
        let ap = SendablePointer(a), bp = SendablePointer(b), cp = SendablePointer(c)
        let work = m * n * k
        if threads <= 1 || tiles == 1 || work < 1 << 16 {
            gemmNTTile(m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, c: c, ldc: ldc, alpha: alpha, triangle: triangle)
            return
        }
        Parallel.forEach(tiles, threads: threads) { t in
            let r0 = t * tile, r1 = min(m, r0 + tile)
            gemmNTTile(m: r1 - r0, n: n, k: k, a: ap.base + r0 * lda, lda: lda, b: bp.base, ldb: ldb,
                       c: cp.base + r0 * ldc, ldc: ldc, alpha: alpha, rowOffset: r0, triangle: triangle)
        }
    }

    /// In-place lower Cholesky of the symmetric positive-definite `a` [n, n] (lower triangle read and written;
    /// the upper triangle is scratch). Returns false when a pivot is not positive (matrix not PD).
    public static func choleskyLower(_ a: UnsafeMutablePointer<Double>, n: Int, threads: Int = Parallel.defaultThreads) -> Bool {
        let nb = 64
        var k0 = 0
        while k0 < n {
            let kb = min(nb, n - k0)
            // Diagonal block (earlier blocks' updates already applied).
            for j in k0..<(k0 + kb) {
                var s = a[j * n + j]
                for p in k0..<j { s -= a[j * n + p] * a[j * n + p] }
                guard s > 0, s.isFinite else { return false }
                let d = s.squareRoot()
                a[j * n + j] = d
                for i in (j + 1)..<(k0 + kb) {
                    var t = a[i * n + j]
                    for p in k0..<j { t -= a[i * n + p] * a[j * n + p] }
                    a[i * n + j] = t / d
                }
            }
            let rest = n - k0 - kb
            if rest > 0 {
                // Panel: rows below solve x L_kk^T = a.
                let ap = SendablePointer(a), k0 = k0
                Parallel.forRanges(rest, threads: threads, minPerThread: 32) { rows in
                    for i in rows {
                        let row = ap.base + (k0 + kb + i) * n
                        for j in k0..<(k0 + kb) {
                            var t = row[j]
                            let lj = ap.base + j * n
                            for p in k0..<j { t -= row[p] * lj[p] }
                            row[j] = t / lj[j]
                        }
                    }
                }
                // Trailing update A22 -= L21 L21^T (lower).
                let base = a + (k0 + kb) * n
                gemmNT(m: rest, n: rest, k: kb, a: base + k0, lda: n, b: base + k0, ldb: n, c: base + k0 + kb, ldc: n,
                       alpha: -1, triangle: .lower, threads: threads)
            }
            k0 += kb
        }
        return true
    }

    /// Inverse of the lower-triangular `l` [n, n], returned transposed: `xt[c * n + r] = (L^-1)[r, c]` (so xt is
    /// upper triangular). Column blocks are independent and run in parallel.
    public static func lowerInverseTransposed(_ l: UnsafePointer<Double>, n: Int, xt: UnsafeMutablePointer<Double>,
                                              threads: Int = Parallel.defaultThreads) {
        xt.update(repeating: 0, count: n * n)
        let nb = 32
        let blocks = (n + nb - 1) / nb
        let lp = SendablePointer(l), xp = SendablePointer(xt)
        Parallel.forEach(blocks, threads: threads) { jbIndex in
            let l = lp.base, xt = xp.base
            let j0 = jbIndex * nb, j1 = min(n, j0 + nb)
            // Diagonal block: forward substitution on unit vectors.
            for c in j0..<j1 {
                let x = xt + c * n
                x[c] = 1 / l[c * n + c]
                for r in (c + 1)..<j1 {
                    var s = 0.0
                    for p in c..<r { s += l[r * n + p] * x[p] }
                    x[r] = -s / l[r * n + r]
                }
            }
            var s = [Double](repeating: 0, count: nb * nb)
            s.withUnsafeMutableBufferPointer { sb in
                let sp = sb.baseAddress!
                var i0 = j1
                while i0 < n {
                    let i1 = min(n, i0 + nb)
                    let mi = i1 - i0, nj = j1 - j0
                    sp.update(repeating: 0, count: nb * nb)
                    // S[r, c] = sum_{p in [j0, i0)} L[r, p] X[p, c]
                    gemmNTTile(m: mi, n: nj, k: i0 - j0, a: l + i0 * n + j0, lda: n, b: xt + j0 * n + j0, ldb: n,
                               c: sp, ldc: nb, alpha: 1)
                    // X[i-block, c] = -L_ii^-1 S[:, c]
                    for c in 0..<nj {
                        let x = xt + (j0 + c) * n
                        for r in 0..<mi {
                            var t = -sp[r * nb + c]
                            let lr = l + (i0 + r) * n
                            for p in 0..<r { t -= lr[i0 + p] * x[i0 + p] }
                            x[i0 + r] = t / lr[i0 + r]
                        }
                    }
                    i0 = i1
                }
            }
        }
    }

    /// U = the upper Cholesky factor of H^-1 (U^T U = H^-1), what GPTQ calls Hinv. With P the reversal
    /// permutation and P H P = L L^T, H = (P L P)(P L P)^T with P L P upper, so H^-1 = U^T U with
    /// U = P L^-1 P upper: by uniqueness of the Cholesky factor this is the factor the reference computes by
    /// cholesky -> cholesky_inverse -> cholesky(upper) (3 factorizations), here in one Cholesky and one
    /// triangular inverse. Returns nil when H is not positive definite.
    public static func upperCholeskyOfInverse(_ h: [Double], n: Int, threads: Int = Parallel.defaultThreads) -> [Double]? {
        var a = [Double](repeating: 0, count: n * n)
        for i in 0..<n { for j in 0...i { a[i * n + j] = h[(n - 1 - i) * n + (n - 1 - j)] } }
        let ok = a.withUnsafeMutableBufferPointer { choleskyLower($0.baseAddress!, n: n, threads: threads) }
        guard ok else { return nil }
        for i in 0..<n { for j in (i + 1)..<max(i + 1, n) { a[i * n + j] = 0 } }
        var xt = [Double](repeating: 0, count: n * n)
        a.withUnsafeBufferPointer { lb in
            xt.withUnsafeMutableBufferPointer { lowerInverseTransposed(lb.baseAddress!, n: n, xt: $0.baseAddress!, threads: threads) }
        }
        // U[i, j] = (L^-1)[n-1-i, n-1-j] = xt[(n-1-j) * n + (n-1-i)]
        var u = [Double](repeating: 0, count: n * n)
        for i in 0..<n { for j in i..<n { u[i * n + j] = xt[(n - 1 - j) * n + (n - 1 - i)] } }
        guard u.allSatisfy({ $0.isFinite }) else { return nil }
        return u
    }
}

/// Scalar twins of the DenseMath kernels (plain loops), for tests.
public enum DenseReference {
    public static func gemmNT(m: Int, n: Int, k: Int, a: [Double], b: [Double]) -> [Double] {
        var c = [Double](repeating: 0, count: m * n)
        for i in 0..<m { for j in 0..<n { var s = 0.0; for p in 0..<k { s += a[i * k + p] * b[j * k + p] }; c[i * n + j] = s } }
        return c
    }

    /// Textbook Cholesky (lower), nil if not PD.
    public static func choleskyLower(_ h: [Double], n: Int) -> [Double]? {
        var l = [Double](repeating: 0, count: n * n)
        for j in 0..<n {
            var s = h[j * n + j]
            for p in 0..<j { s -= l[j * n + p] * l[j * n + p] }
            guard s > 0 else { return nil }
            l[j * n + j] = s.squareRoot()
            for i in (j + 1)..<max(j + 1, n) {
                var t = h[i * n + j]
                for p in 0..<j { t -= l[i * n + p] * l[j * n + p] }
                l[i * n + j] = t / l[j * n + j]
            }
        }
        return l
    }
}
