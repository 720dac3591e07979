import XCTest
import Foundation
import Kernels
import TensorCore
import TestSupport

/// Hadamard matrices (exact integer orthogonality), the fast transform against its dense Double twin, and the
/// seeded rotation Q.
final class HadamardTests: XCTestCase {
    func testFactorization() {
        let cases: [(Int, (Int, Int)?)] = [
            (1, (1, 0)), (2, (1, 1)), (4096, (1, 12)), (12, (12, 0)), (24, (12, 1)), (11008, (172, 6)),
            (14336, (28, 9)), (160, (40, 2)), (120, (60, 1)), (312, (156, 1)), (5632, nil), (44, nil), (3, nil),
            (0, nil), (-8, nil),
        ]
        for (n, expected) in cases {
            let f = Hadamard.factorization(of: n)
            XCTAssertEqual(f?.k, expected?.0, "n \(n)")
            XCTAssertEqual(f?.m, expected?.1, "n \(n)")
        }
        XCTAssertNil(Hadamard.signMatrix(order: 5632 / 64))
    }

    /// H Hᵀ = nI in integers for every base order and for Kronecker products with Sylvester blocks.
    func testSignMatricesAreHadamard() throws {
        let orders = [1] + Hadamard.baseOrders + [2, 64, 24, 56, 80, 96, 144, 208, 216, 280, 312, 344]
        for n in orders {
            let h = try XCTUnwrap(Hadamard.signMatrix(order: n), "order \(n)")
            XCTAssertEqual(h.count, n * n)
            XCTAssertTrue(h.allSatisfy { $0 == 1 || $0 == -1 }, "order \(n): entries not ±1")
            var ok = true
            h.withUnsafeBufferPointer { p in
                for i in 0..<n where ok {
                    for j in 0..<n {
                        var s = 0
                        for t in 0..<n { s += Int(p[i * n + t]) * Int(p[j * n + t]) }
                        if s != (i == j ? n : 0) { ok = false; break }
                    }
                }
            }
            XCTAssertTrue(ok, "order \(n): H Hᵀ != nI")
        }
    }

    /// Fast (Float, threaded) against the dense Double product: max error 1e-5 of the row's largest output.
    func testFastTransformMatchesReference() throws {
        var rng = SplitMix64(seed: 21)
        for n in [1, 2, 64, 12, 96, 172, 344, 112, 384, 1280] {
            for rows in [1, 3, 7] {
                let x = rng.floats(rows * n, in: -2...2)
                var fast = x, ref = x
                try Hadamard.transform(&fast, rows: rows, n: n, threads: 2)
                try Hadamard.transformReference(&ref, rows: rows, n: n)
                for r in 0..<rows {
                    let f = Array(fast[(r * n)..<((r + 1) * n)]), e = Array(ref[(r * n)..<((r + 1) * n)])
                    let scale = e.map(abs).max()!
                    XCTAssertLessThanOrEqual(maxAbsDiff(f, e), 1e-5 * scale, "n \(n) rows \(rows) row \(r)")
                }
                // Orthogonal: the row norms are kept.
                let n0 = x.reduce(0) { $0 + Double($1) * Double($1) }, n1 = ref.reduce(0) { $0 + Double($1) * Double($1) }
                XCTAssertEqual(n1, n0, accuracy: 1e-5 * n0, "n \(n)")
            }
        }
        // The single-threaded path gives the same bits as the threaded one.
        let x = rng.floats(5 * 344)
        var a = x, b = x
        try Hadamard.transform(&a, rows: 5, n: 344, threads: 1)
        try Hadamard.transform(&b, rows: 5, n: 344, threads: 3)
        XCTAssertEqual(a, b)
    }

    func testTransformRefusesUnsupportedSizes() {
        var x = [Float](repeating: 1, count: 44)
        for n in [44, 0, -4] {
            XCTAssertThrowsError(try Hadamard.transform(&x, rows: 1, n: n)) {
                XCTAssertTrue("\($0)".contains("no Hadamard matrix of order \(n)"), "\($0)")
            }
            XCTAssertThrowsError(try Hadamard.transformReference(&x, rows: 1, n: n))
        }
        XCTAssertNoThrow(try Hadamard.transform(&x, rows: 0, n: 4))
        XCTAssertThrowsError(try Hadamard.transform(&x, rows: -1, n: 4))
        // Sizes whose square overflows give nothing rather than trapping.
        XCTAssertNil(Hadamard.signMatrix(order: 1 << 40))
        XCTAssertTrue(Hadamard.orthogonal(n: 1 << 40, seed: 1).isEmpty)
    }

    private func assertOrthogonal(_ q: [Double], n: Int, _ label: String) {
        XCTAssertEqual(q.count, n * n, label)
        var worst = 0.0
        for i in 0..<n {
            for j in 0..<n {
                var s = 0.0
                for t in 0..<n { s += q[i * n + t] * q[j * n + t] }
                worst = max(worst, abs(s - (i == j ? 1 : 0)))
            }
        }
        XCTAssertLessThanOrEqual(worst, 1e-12, "\(label): |Q Qᵀ - I|")
    }

    func testOrthogonalRotation() throws {
        for n in [1, 64, 12, 96, 172, 44, 5] {
            let q = Hadamard.orthogonal(n: n, seed: 7)
            assertOrthogonal(q, n: n, "n \(n)")
            XCTAssertEqual(Hadamard.orthogonal(n: n, seed: 7), q, "n \(n): not deterministic")
            if n > 1 { XCTAssertNotEqual(Hadamard.orthogonal(n: n, seed: 8), q, "n \(n): seed ignored") }
            if let h = Hadamard.signMatrix(order: n) {
                // D·H/√n: every row is ±(row of H)/√n.
                for i in 0..<n {
                    let d = q[i * n] * Double(h[i * n]) > 0 ? 1.0 : -1.0
                    for j in 0..<n {
                        XCTAssertEqual(q[i * n + j], d * Double(h[i * n + j]) / Double(n).squareRoot(), accuracy: 1e-15)
                    }
                }
            }
        }
        // The Gaussian path, as documented: A from Box-Muller on SplitMix64(seed), A = QR, R = QᵀA upper
        // triangular with a positive diagonal (the sign fix).
        for n in [44, 5, 130] {
            var rng = SplitMix64(seed: 7)
            var a = [Double](repeating: 0, count: n * n)
            var i = 0
            while i < n * n {
                let u1 = Double((rng.next() >> 11) + 1) * 0x1p-53, u2 = Double(rng.next() >> 11) * 0x1p-53
                a[i] = (-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2)
                if i + 1 < n * n { a[i + 1] = (-2 * log(u1)).squareRoot() * sin(2 * Double.pi * u2) }
                i += 2
            }
            let q = Hadamard.orthogonal(n: n, seed: 7)
            for r in 0..<n {
                for c in 0..<n {
                    var s = 0.0
                    for t in 0..<n { s += q[t * n + r] * a[t * n + c] }
                    if r > c { XCTAssertEqual(s, 0, accuracy: 1e-12, "n \(n): R[\(r)][\(c)]") }
                    if r == c { XCTAssertGreaterThan(s, 0, "n \(n): R[\(r)][\(r)]") }
                }
            }
        }
        XCTAssertTrue(Hadamard.orthogonal(n: 0, seed: 1).isEmpty)
    }
}
