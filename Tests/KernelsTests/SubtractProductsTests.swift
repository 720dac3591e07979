import XCTest
import Foundation
import Kernels
import TensorCore
import TestSupport

/// GPTQ's error-feedback update against its scalar twin on odd sizes and strided operands: bit for bit, since both
/// subtract the products one at a time in the same order.
final class SubtractProductsTests: XCTestCase {
    func testMatchesReferenceBitForBit() {
        var rng = SplitMix64(seed: 21)
        for m in [1, 3, 4, 5, 9] {
            for n in [1, 3, 4, 7, 8, 13, 130, 261] {
                for k in [1, 2, 7, 128] {
                    // Leading dimensions wider than the operands, as GPTQ passes sub-blocks of W, Err and Hinv; n 261 spans
                    // two column panels.
                    let lda = k + 3, ldb = n + 5, ldc = n + 2
                    let a = rng.floats(m * lda).map(Double.init), b = rng.floats(k * ldb).map(Double.init)
                    let c = rng.floats(m * ldc, in: -4...4).map(Double.init)
                    var fast = c, ref = c
                    Kernels.subtractProducts(m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, c: &fast, ldc: ldc)
                    Reference.subtractProducts(m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, c: &ref, ldc: ldc)
                    XCTAssertEqual(fast, ref, "m \(m) n \(n) k \(k)")
                    // Entries past n in each row are left alone.
                    for r in 0..<m { XCTAssertEqual(Array(fast[(r * ldc + n)..<(r * ldc + ldc)]), Array(c[(r * ldc + n)..<(r * ldc + ldc)])) }
                }
            }
        }
    }
}
