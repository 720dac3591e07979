import Foundation
import TensorCore

extension DenseMath {
    /// Panel width of the blocked QR.
    static let qrBlock = 32

    /// Q of A = QR for a square A (row-major n×n, destroyed), each column j multiplied by sign(R[j][j]) so R has a
    /// positive diagonal (the unique factor of a nonsingular A). Blocked Householder in the compact WY form of
    /// LAPACK's dgeqrf/dorgqr (a panel of reflectors is I - V·T·Vᵀ) so the updates are `gemmNT` products; the
    /// work is done on Aᵀ, where a column of A is a contiguous row.
    public static func orthogonalFactor(_ a: inout [Double], n: Int, threads: Int = Parallel.defaultThreads) -> [Double] {
        guard n > 0 else { return [] }
        transposeInPlace(&a, n: n)
        let nb = qrBlock
        // Reflector j: v = (v0[j], row j of b past the diagonal), unit norm, tau[j] = 2 (0: identity).
        var v0 = [Double](repeating: 0, count: n), tau = v0, sign = [Double](repeating: 1, count: n)
        var vt = [Double](repeating: 0, count: nb * n), v = vt, w = vt, u = vt
        var ts: [[Double]] = []
        var y = [Double](repeating: 0, count: n * n)
        a.withUnsafeMutableBufferPointer { bb in
            let b = bb.baseAddress!
            var j0 = 0
            while j0 < n {
                let jb = min(nb, n - j0)
                for j in j0..<(j0 + jb) {
                    let col = b + j * n
                    var norm2 = 0.0
                    for r in j..<n { norm2 += col[r] * col[r] }
                    let x0 = col[j], norm = norm2.squareRoot()
                    if j == n - 1 || norm == 0 {
                        sign[j] = x0 < 0 ? -1 : 1
                        continue
                    }
                    // alpha = -sign(x0)·|x| avoids cancellation; |x - alpha·e1|² = 2(|x|² + |x0|·|x|).
                    let alpha = x0 < 0 ? norm : -norm
                    let scale = 1 / (2 * (norm2 + abs(x0) * norm)).squareRoot()
                    v0[j] = (x0 - alpha) * scale
                    for r in (j + 1)..<n { col[r] *= scale }
                    col[j] = alpha
                    tau[j] = 2
                    sign[j] = alpha < 0 ? -1 : 1
                    for c in (j + 1)..<(j0 + jb) {
                        let other = b + c * n
                        var s = v0[j] * other[j]
                        for r in (j + 1)..<n { s += col[r] * other[r] }
                        s *= 2
                        other[j] -= s * v0[j]
                        for r in (j + 1)..<n { other[r] -= s * col[r] }
                    }
                }
                loadPanel(b, n: n, j0: j0, jb: jb, v0: v0, tau: tau, vt: &vt, v: &v)
                let t = triangularFactor(vt, n: n, j0: j0, jb: jb, tau: tau)
                ts.append(t)
                let c0 = j0 + jb
                if c0 < n {
                    // Trailing columns: A ← (I - V·Tᵀ·Vᵀ)·A, i.e. rows of Aᵀ: B ← B - (B·V)·T·Vᵀ.
                    applyBlock(b + c0 * n + j0, rows: n - c0, width: n - j0, ld: n, jb: jb, t: t, transposeT: false,
                               vt: vt, v: v, w: &w, u: &u, j0: j0, threads: threads)
                }
                j0 += jb
            }
            // Q = H_0·H_1···H_(n-1)·I, panels applied right to left, on Qᵀ: Y ← Y - (Y·V)·Tᵀ·Vᵀ. Rows and columns
            // before j0 are still the identity's, so only the trailing square changes.
            y.withUnsafeMutableBufferPointer { yb in
                let yp = yb.baseAddress!
                for d in 0..<n { yp[d * n + d] = 1 }
                for (index, start) in stride(from: 0, to: n, by: nb).enumerated().reversed() {
                    let jb = min(nb, n - start)
                    loadPanel(b, n: n, j0: start, jb: jb, v0: v0, tau: tau, vt: &vt, v: &v)
                    applyBlock(yp + start * n + start, rows: n - start, width: n - start, ld: n, jb: jb, t: ts[index],
                               transposeT: true, vt: vt, v: v, w: &w, u: &u, j0: start, threads: threads)
                }
                for r in 0..<n where sign[r] < 0 { for c in 0..<n { yp[r * n + c] = -yp[r * n + c] } }
            }
        }
        transposeInPlace(&y, n: n)
        return y
    }

    /// Loads panel j0..<j0+jb: vt [jb, n] (reflector i in row i, zero before its diagonal) and v = vtᵀ [n, jb].
    private static func loadPanel(_ b: UnsafeMutablePointer<Double>, n: Int, j0: Int, jb: Int, v0: [Double], tau: [Double],
                                  vt: inout [Double], v: inout [Double]) {
        for i in 0..<jb {
            let j = j0 + i
            for r in 0..<n { vt[i * n + r] = 0 }
            guard tau[j] != 0 else { continue }
            vt[i * n + j] = v0[j]
            for r in (j + 1)..<n { vt[i * n + r] = b[j * n + r] }
        }
        for r in 0..<n { for i in 0..<jb { v[r * jb + i] = vt[i * n + r] } }
    }

    /// T [jb, jb] upper triangular with H_j0···H_(j0+jb-1) = I - V·T·Vᵀ (LAPACK dlarft, forward, columnwise).
    private static func triangularFactor(_ vt: [Double], n: Int, j0: Int, jb: Int, tau: [Double]) -> [Double] {
        var t = [Double](repeating: 0, count: jb * jb)
        var z = [Double](repeating: 0, count: jb)
        for i in 0..<jb {
            let ti = tau[j0 + i]
            t[i * jb + i] = ti
            guard ti != 0 else { continue }
            for l in 0..<i {
                var s = 0.0
                for r in (j0 + i)..<n { s += vt[l * n + r] * vt[i * n + r] }
                z[l] = s
            }
            for l in 0..<i {
                var s = 0.0
                for p in l..<i { s += t[l * jb + p] * z[p] }
                t[l * jb + i] = -ti * s
            }
        }
        return t
    }

    /// c[rows, width] (leading dimension ld, columns j0..<n of the full matrix) -= ((c·V)·op(T))·Vᵀ, op(T) = T
    /// or Tᵀ: the rows of c times the panel's reflectors.
    private static func applyBlock(_ c: UnsafeMutablePointer<Double>, rows: Int, width: Int, ld: Int, jb: Int, t: [Double],
                                   transposeT: Bool, vt: [Double], v: [Double], w: inout [Double], u: inout [Double],
                                   j0: Int, threads: Int) {
        let n = ld
        vt.withUnsafeBufferPointer { vtb in
            v.withUnsafeBufferPointer { vb in
                w.withUnsafeMutableBufferPointer { wb in
                    u.withUnsafeMutableBufferPointer { ub in
                        let wp = wb.baseAddress!, up = ub.baseAddress!
                        wp.update(repeating: 0, count: rows * jb)
                        // w[rows, jb] = c·V (V's rows j0..<n are vt's columns j0..<n).
                        gemmNT(m: rows, n: jb, k: width, a: c, lda: ld, b: vtb.baseAddress! + j0, ldb: n, c: wp, ldc: jb,
                               alpha: 1, threads: threads)
                        for r in 0..<rows {
                            for i in 0..<jb {
                                var s = 0.0
                                if transposeT {
                                    for l in i..<jb { s += wp[r * jb + l] * t[i * jb + l] }
                                } else {
                                    for l in 0...i { s += wp[r * jb + l] * t[l * jb + i] }
                                }
                                up[r * jb + i] = s
                            }
                        }
                        gemmNT(m: rows, n: width, k: jb, a: up, lda: jb, b: vb.baseAddress! + j0 * jb, ldb: jb, c: c, ldc: ld,
                               alpha: -1, threads: threads)
                    }
                }
            }
        }
    }

    private static func transposeInPlace(_ a: inout [Double], n: Int) {
        for i in 0..<n { for j in (i + 1)..<n { a.swapAt(i * n + j, j * n + i) } }
    }
}
