import XCTest
import Kernels
import TensorCore
import TestSupport

/// Weight-only quantized GEMM/GEMV against dequantize-then-matmul (Reference.matmulQuantized, Double sums), and
/// the GPTQ g_idx conversion against a direct dequantization written here.
final class QuantizedTests: XCTestCase {
    struct Case { let bits, out, inF, group: Int; let permuted: Bool }

    func randomMatrix(_ c: Case, rng: inout SplitMix64) throws -> QuantizedMatrix {
        let ng = (c.inF + c.group - 1) / c.group
        let maxq = (1 << c.bits) - 1
        let codes = (0..<(c.out * c.inF)).map { _ in UInt8(Int.random(in: 0...maxq, using: &rng)) }
        let scales = (0..<(c.out * ng)).map { _ in Float.random(in: 0.001...0.05, using: &rng) }
        let zeros = (0..<(c.out * ng)).map { _ in Float(Int.random(in: 0...maxq, using: &rng)) }
        var perm: [Int32]? = nil
        if c.permuted { perm = Array(0..<Int32(c.inF)).shuffled(using: &rng) }
        return try QuantizedMatrix(bits: c.bits, outFeatures: c.out, inFeatures: c.inF, groupSize: c.group,
                                   codes: codes, scales: scales, zeros: zeros, inputPermutation: perm)
    }

    func check(_ q: QuantizedMatrix, m: Int, threads: Int, rng: inout SplitMix64, label: String,
               file: StaticString = #filePath, line: UInt = #line) {
        let k = q.inFeatures, n = q.outFeatures
        let x = rng.floats(m * k)
        let bias = rng.floats(n)
        var fast = [Float](repeating: .nan, count: m * n), ref = fast
        var packed = fast
        Kernels.matmulQuantized(x: x, m: m, weight: q, bias: bias, out: &fast, threads: threads)
        Kernels.matmulQuantized(x: x, m: m, panels: QuantizedPanels(q, threads: threads), bias: bias, out: &packed,
                                threads: threads)
        Reference.matmulQuantized(x: x, m: m, weight: q, bias: bias, out: &ref)
        // |w| <= 0.05 * 255 here; float summation error ~ sqrt(k)·1e-7·|x||w|.
        let wmax = q.dequantized().map { abs($0) }.max() ?? 1
        let tol = 2e-6 * Float(k).squareRoot() * max(1, wmax) * 4
        XCTAssertLessThanOrEqual(maxAbsDiff(fast, ref), tol, "\(label) m=\(m) threads=\(threads)", file: file, line: line)
        XCTAssertLessThanOrEqual(maxAbsDiff(packed, ref), tol, "pre-packed \(label) m=\(m) threads=\(threads)",
                                 file: file, line: line)
    }

    func testBitsGroupsPermutations() throws {
        var rng = SplitMix64(seed: 31)
        var cases: [Case] = []
        for bits in [4, 8] {
            for (out, inF, group) in [(33, 256, 32), (17, 256, 64), (40, 384, 128), (9, 200, 200), (33, 172, 32),
                                      (16, 100, 20), (5, 13, 13)] {
                for permuted in [false, true] { cases.append(Case(bits: bits, out: out, inF: inF, group: group, permuted: permuted)) }
            }
        }
        cases += [Case(bits: 2, out: 19, inF: 96, group: 32, permuted: true),
                  Case(bits: 3, out: 19, inF: 130, group: 64, permuted: false),
                  Case(bits: 6, out: 7, inF: 70, group: 16, permuted: true)]
        for c in cases {
            let q = try randomMatrix(c, rng: &rng)
            for m in [1, 2, 3, 5, 64] {
                for threads in [1, 2] {
                    check(q, m: m, threads: threads, rng: &rng, label: "\(c)")
                }
            }
        }
    }

    /// Large enough to run threaded and cross the GEMM's k/column blocks.
    func testLargeThreaded() throws {
        var rng = SplitMix64(seed: 32)
        for bits in [4, 8] {
            let q = try randomMatrix(Case(bits: bits, out: 300, inF: 640, group: 128, permuted: true), rng: &rng)
            for m in [1, 3, 17, 80] { check(q, m: m, threads: 2, rng: &rng, label: "large \(bits)") }
        }
    }

    /// dequantized() against w[r, i] = scale[r, g(i)]·(q[r, i] − zero[r, g(i)]) computed directly in original order.
    func testFromGroupIndexActOrder() throws {
        var rng = SplitMix64(seed: 33)
        for (bits, out, inF, group, uniform) in [(4, 12, 172, 32, true), (8, 9, 256, 64, true), (4, 6, 100, 25, false)] {
            let ng = (inF + group - 1) / group
            var gIdx = [Int32](repeating: 0, count: inF)
            if uniform {
                // GPTQ act-order: columns visited in a random order, group = visit rank / group size.
                let order = Array(0..<inF).shuffled(using: &rng)
                for (rank, col) in order.enumerated() { gIdx[col] = Int32(rank / group) }
            } else {
                for i in 0..<inF { gIdx[i] = Int32(Int.random(in: 0..<ng, using: &rng)) }
            }
            let maxq = (1 << bits) - 1
            let codes = (0..<(out * inF)).map { _ in UInt8(Int.random(in: 0...maxq, using: &rng)) }
            let scales = (0..<(out * ng)).map { _ in Float.random(in: 0.001...0.05, using: &rng) }
            let zeros = (0..<(out * ng)).map { _ in Float(Int.random(in: 0...maxq, using: &rng)) }
            let q = try QuantizedMatrix.fromGroupIndex(bits: bits, outFeatures: out, inFeatures: inF,
                                                       codesOriginalOrder: codes, scales: scales, zeros: zeros,
                                                       gIdx: gIdx)
            XCTAssertNotNil(q.inputPermutation)
            if uniform { XCTAssertEqual(q.groupSize, group) }
            var direct = [Float](repeating: 0, count: out * inF)
            for r in 0..<out {
                for i in 0..<inF {
                    let g = Int(gIdx[i])
                    direct[r * inF + i] = scales[r * ng + g] * (Float(codes[r * inF + i]) - zeros[r * ng + g])
                }
            }
            XCTAssertEqual(q.dequantized(), direct)
            for m in [1, 5, 64] { check(q, m: m, threads: 2, rng: &rng, label: "gidx \(bits) \(group)") }
        }
        // Sequential g_idx (no act-order) needs no permutation.
        let q = try QuantizedMatrix.fromGroupIndex(bits: 4, outFeatures: 2, inFeatures: 64,
                                                   codesOriginalOrder: [UInt8](repeating: 3, count: 128),
                                                   scales: [1, 1, 1, 1], zeros: [0, 0, 0, 0],
                                                   gIdx: (0..<64).map { Int32($0 / 32) })
        XCTAssertNil(q.inputPermutation)
        XCTAssertEqual(q.groupSize, 32)
    }

    func testBadInputThrows() {
        XCTAssertThrowsError(try QuantizedMatrix(bits: 4, outFeatures: 1, inFeatures: 4, groupSize: 4, codes: [0, 1, 2, 16],
                                                 scales: [1], zeros: [0], inputPermutation: nil))
        XCTAssertThrowsError(try QuantizedMatrix(bits: 4, outFeatures: 1, inFeatures: 4, groupSize: 4, codes: [0, 1, 2, 3],
                                                 scales: [1, 2], zeros: [0], inputPermutation: nil))
        XCTAssertThrowsError(try QuantizedMatrix(bits: 4, outFeatures: 1, inFeatures: 4, groupSize: 4, codes: [0, 1, 2, 3],
                                                 scales: [1], zeros: [0], inputPermutation: [0, 1, 1, 3]))
        XCTAssertThrowsError(try QuantizedMatrix(bits: 9, outFeatures: 1, inFeatures: 4, groupSize: 4, codes: [0, 1, 2, 3],
                                                 scales: [1], zeros: [0], inputPermutation: nil))
        XCTAssertThrowsError(try QuantizedMatrix(bits: 4, outFeatures: 1, inFeatures: 4, groupSize: 4, codes: [0, 1, 2, 3],
                                                 scales: [.nan], zeros: [0], inputPermutation: nil))
        XCTAssertThrowsError(try QuantizedMatrix.fromGroupIndex(bits: 4, outFeatures: 1, inFeatures: 2,
                                                                codesOriginalOrder: [0, 1], scales: [1], zeros: [0],
                                                                gIdx: [0, 1]))
    }
}
