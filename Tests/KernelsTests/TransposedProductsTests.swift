import XCTest
import Kernels
import TensorCore
import TestSupport

/// matmulNN and matmulTN (the backward pass's products) against their scalar Double-accumulating twins, on odd
/// sizes that cross the 32-wide transpose tiles and the GEMM's panels. Tolerance as MatmulTests: 1e-5·sqrt(k)
/// for inputs in [-1, 1] (the summed dimension is k for NN and m for TN).
final class TransposedProductsTests: XCTestCase {
    func testNNAgainstReference() {
        for (m, k, n, threads) in [(1, 1, 1, 1), (7, 33, 65, 2), (70, 31, 9, 3), (129, 64, 172, 2), (2, 300, 5, 1)] {
            var rng = SplitMix64(seed: UInt64(m * 1000 + k))
            let a = rng.floats(m * k), b = rng.floats(k * n)
            var fast = [Float](repeating: .nan, count: m * n), ref = fast
            Kernels.matmulNN(a: a, m: m, k: k, b: b, n: n, out: &fast, threads: threads)
            Reference.matmulNN(a: a, m: m, k: k, b: b, n: n, out: &ref)
            let worst = zip(fast, ref).map { abs($0 - $1) }.max()!
            XCTAssertLessThanOrEqual(worst, 1e-5 * Float(k).squareRoot(), "NN \(m)x\(k)x\(n)")
        }
    }

    func testTNAgainstReference() {
        for (m, n, k, threads) in [(1, 1, 1, 1), (33, 7, 65, 2), (300, 31, 9, 3), (2048, 17, 40, 2), (5, 64, 172, 1)] {
            var rng = SplitMix64(seed: UInt64(m * 1000 + n))
            let a = rng.floats(m * n), b = rng.floats(m * k)
            var fast = [Float](repeating: .nan, count: n * k), ref = fast
            Kernels.matmulTN(a: a, m: m, n: n, b: b, k: k, out: &fast, threads: threads)
            Reference.matmulTN(a: a, m: m, n: n, b: b, k: k, out: &ref)
            let worst = zip(fast, ref).map { abs($0 - $1) }.max()!
            XCTAssertLessThanOrEqual(worst, 1e-5 * Float(m).squareRoot(), "TN \(m)x\(n)x\(k)")
        }
    }

    /// Whole 8 x 8 register blocks, partial blocks at both edges, tiles of 32 and fewer than 8 rows or columns.
    func testTransposeExact() {
        for (rows, cols) in [(37, 70), (8, 8), (64, 40), (256, 24), (5, 3), (1, 9), (9, 1), (33, 65)] {
            let x = (0..<(rows * cols)).map { Float($0) }
            var t = [Float](repeating: .nan, count: rows * cols)
            Kernels.transpose(x, rows: rows, cols: cols, into: &t, threads: 3)
            var wrong = 0
            for r in 0..<rows { for c in 0..<cols where t[c * rows + r] != x[r * cols + c] { wrong += 1 } }
            XCTAssertEqual(wrong, 0, "\(rows) x \(cols)")
        }
    }
}
