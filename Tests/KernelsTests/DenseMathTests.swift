import Kernels
import TensorCore
import TestSupport
import XCTest

/// The Float64 dense kernels (DenseMath, UpperSyrk) against scalar twins.
final class DenseMathTests: XCTestCase {
    func testDenseKernelsAgainstScalar() throws {
        var rng = SplitMix64(seed: 7)
        for n in [1, 5, 64, 67, 130] {
            let k = 2 * n + 3
            let x = (0..<(n * k)).map { _ in Double(Float.random(in: -1...1, using: &rng)) }
            var h = DenseReference.gemmNT(m: n, n: n, k: k, a: x, b: x)
            for i in 0..<n { h[i * n + i] += 0.5 }
            // Blocked/parallel gemm equals the scalar one.
            var c = [Double](repeating: 0, count: n * n)
            x.withUnsafeBufferPointer { xb in
                c.withUnsafeMutableBufferPointer {
                    DenseMath.gemmNT(m: n, n: n, k: k, a: xb.baseAddress!, lda: k, b: xb.baseAddress!, ldb: k, c: $0.baseAddress!,
                                     ldc: n, alpha: 1, threads: 2)
                }
            }
            for i in 0..<n { c[i * n + i] += 0.5 }
            XCTAssertLessThan(zip(c, h).map { abs($0 - $1) }.max()!, 1e-11)
            // Blocked Cholesky equals the textbook one.
            var a = h
            XCTAssertTrue(a.withUnsafeMutableBufferPointer { DenseMath.choleskyLower($0.baseAddress!, n: n, threads: 2) })
            let l = DenseReference.choleskyLower(h, n: n)!
            for i in 0..<n { for j in 0...i { XCTAssertEqual(a[i * n + j], l[i * n + j], accuracy: 1e-10) } }
            // U^T U = H^-1, i.e. U^T U H = I, U upper.
            let u = DenseMath.upperCholeskyOfInverse(h, n: n, threads: 2)!
            var maxErr = 0.0
            for i in 0..<n {
                for j in 0..<n {
                    var s = 0.0
                    for p in 0..<n { var utu = 0.0; for q in 0..<n { utu += u[q * n + i] * u[q * n + p] }; s += utu * h[p * n + j] }
                    maxErr = max(maxErr, abs(s - (i == j ? 1 : 0)))
                    if j < i { XCTAssertEqual(u[i * n + j], 0) }
                }
                XCTAssertGreaterThan(u[i * n + i], 0)
            }
            XCTAssertLessThan(maxErr, 1e-8, "n=\(n)")
        }
        // Not positive definite -> nil.
        XCTAssertNil(DenseMath.upperCholeskyOfInverse([1, 2, 2, 1], n: 2))
    }

    /// The packed 6x8-tile SYRK: column counts off the tile sizes, token counts crossing the 256-token block and
    /// the packing pass, several calls accumulating, 1 and 2 threads, against a plain Float64 loop on the upper
    /// triangle (what it fills). Relative to sum |x_i x_j| the two summation orders agree to a few ulps.
    func testUpperSyrkEdgeShapes() {
        var rng = SplitMix64(seed: 11)
        let cases: [(cols: Int, adds: [Int])] = [(1, [1, 300]), (5, [7, 257, 3]), (7, [256, 1]), (8, [513]),
                                                 (13, [1100, 255]), (33, [40, 700]), (172, [300, 2, 512]), (6, [2]),
                                                 (531, [260, 5])]
        for (cols, adds) in cases {
            for threads in [1, 2] {
                let syrk = UpperSyrk(columns: cols)
                var c = [Double](repeating: 0, count: cols * cols), ref = c, mag = c
                for count in adds {
                    let x = rng.floats(count * cols, in: -2...2)
                    x.withUnsafeBufferPointer { xb in
                        c.withUnsafeMutableBufferPointer {
                            syrk.accumulate(xb.baseAddress!, count: count, ldx: cols, into: $0.baseAddress!, ldc: cols, threads: threads)
                        }
                    }
                    for r in 0..<count {
                        for i in 0..<cols {
                            let xi = Double(x[r * cols + i])
                            for j in 0..<cols {
                                let p = xi * Double(x[r * cols + j])
                                ref[i * cols + j] += p; mag[i * cols + j] += abs(p)
                            }
                        }
                    }
                }
                var worst = 0.0
                for i in 0..<cols {
                    for j in i..<cols { let k = i * cols + j; worst = max(worst, abs(c[k] - ref[k]) / max(mag[k], 1e-300)) }
                }
                XCTAssertLessThan(worst, 1e-13, "cols \(cols) adds \(adds) threads \(threads)")
            }
        }
    }
}
