import XCTest
import Kernels
import TensorCore
import TestSupport

/// The W4A8 integer kernel (int8 activations per 32-input block, 4-bit codes, vpmaddubsw) against its scalar twin
/// Reference.matmulW4A8, and against the W4A16 product it approximates.
final class W4A8Tests: XCTestCase {
    func randomMatrix(bits: Int, out: Int, inF: Int, group: Int, permuted: Bool, rng: inout SplitMix64) throws -> QuantizedMatrix {
        let ng = (inF + group - 1) / group
        let maxq = (1 << bits) - 1
        let codes = (0..<(out * inF)).map { _ in UInt8(Int.random(in: 0...maxq, using: &rng)) }
        let scales = (0..<(out * ng)).map { _ in Float.random(in: 0.001...0.05, using: &rng) }
        let zeros = (0..<(out * ng)).map { _ in Float(Int.random(in: 0...maxq, using: &rng)) }
        let perm: [Int32]? = permuted ? Array(0..<Int32(inF)).shuffled(using: &rng) : nil
        return try QuantizedMatrix(bits: bits, outFeatures: out, inFeatures: inF, groupSize: group, codes: codes,
                                   scales: scales, zeros: zeros, inputPermutation: perm)
    }

    func testMatchesScalarTwinAndApproximatesW4A16() throws {
        var rng = SplitMix64(seed: 77)
        // (bits, out, in, group): short last octets (n % 8), groups of 32/64/128, per channel, 2-3 bit codes.
        let shapes: [(Int, Int, Int, Int)] = [(4, 8, 32, 32), (4, 13, 64, 32), (4, 40, 256, 64), (4, 70, 512, 128),
                                              (4, 17, 96, 96), (3, 33, 160, 32), (2, 9, 128, 64), (4, 24, 1536, 128)]
        for (bits, out, inF, group) in shapes {
            for permuted in [false, true] {
                let q = try randomMatrix(bits: bits, out: out, inF: inF, group: group, permuted: permuted, rng: &rng)
                let panels = try XCTUnwrap(W4A8Panels(QuantizedPanels(q)), "\(bits) \(out)x\(inF) g\(group)")
                for m in [1, 2, 3, 4, 7, 50, 131] {
                    let x = rng.floats(m * inF).map { $0 * 3 }
                    let bias = rng.floats(out)
                    var fast = [Float](repeating: .nan, count: m * out), ref = fast, w4a16 = fast
                    for threads in [1, 2] {
                        Kernels.matmulW4A8(x: x, m: m, panels: panels, bias: bias, out: &fast, threads: threads)
                        Reference.matmulW4A8(x: x, m: m, weight: q, bias: bias, out: &ref)
                        // Same integer dots and the same float operations in the same order: equal to rounding
                        // of the final bias add (both add it last), i.e. to a few ulps of the sums.
                        let scale = ref.map { abs($0) }.max() ?? 1
                        let label = "\(bits)-bit \(out)x\(inF) g\(group) perm \(permuted) m \(m) threads \(threads)"
                        XCTAssertLessThanOrEqual(maxAbsDiff(fast, ref), 1e-6 * max(1, scale), label)
                    }
                    // Against W4A16 (float activations): int8 activations per 32-block cost ~0.4% RMS.
                    Reference.matmulQuantized(x: x, m: m, weight: q, bias: nil, out: &w4a16)
                    Reference.matmulW4A8(x: x, m: m, weight: q, bias: nil, out: &ref)
                    let err = zip(ref, w4a16).map { Double($0 - $1) * Double($0 - $1) }.reduce(0, +)
                    let size = w4a16.map { Double($0) * Double($0) }.reduce(0, +)
                    XCTAssertLessThan((err / size).squareRoot(), 0.02, "W4A8 vs W4A16 \(bits) \(out)x\(inF) m \(m)")
                    XCTAssertGreaterThan(err, 0, "int8 activations must differ from float ones somewhere")
                }
            }
        }
    }

    /// Activation codes: the vector quantizer (vcvtps2dq, packs, permute) gives exactly the scalar twin's codes,
    /// ties included (x / d landing on .5 rounds to even), and zero blocks stay zero.
    func testActivationCodesMatchScalarRounding() throws {
        var rng = SplitMix64(seed: 5)
        let m = 6, k = 96
        var x = rng.floats(m * k)
        // Row 1: exact ties. With max |x| = 127 the scale is 1, so x = 2.5 and -3.5 must round to 2 and -4.
        for j in 0..<k { x[k + j] = Float(j % 8) - 3.5 }
        x[k] = 127
        // Row 2: a zero block (d = 0) next to a normal one.
        for j in 0..<32 { x[2 * k + j] = 0 }
        let q = try randomMatrix(bits: 4, out: 8, inF: k, group: 32, permuted: false, rng: &rng)
        var ref = [Float](repeating: 0, count: m * 8)
        var refCodes = [Int8](repeating: 0, count: m * k)
        Reference.matmulW4A8(x: x, m: m, weight: q, bias: nil, out: &ref, codesOut: &refCodes)
        let rows = try XCTUnwrap(Int8Rows(m: m, k: k))
        XCTAssertNil(Int8Rows(m: m, k: 40), "k not a multiple of 32")
        x.withUnsafeBufferPointer { rows.quantize($0.baseAddress!, threads: 2) }
        let fastCodes = Array(UnsafeBufferPointer(start: rows.codes, count: m * k))
        XCTAssertEqual(fastCodes, refCodes)
        XCTAssertEqual(Array(fastCodes[k..<(k + 8)]), [127, -2, -2, 0, 0, 2, 2, 4])
        XCTAssertEqual(rows.blockScales[12], 0)
        XCTAssertTrue(fastCodes[(2 * k)..<(2 * k + 32)].allSatisfy { $0 == 0 })
    }

    func testUnsupportedLayouts() throws {
        var rng = SplitMix64(seed: 9)
        // 8-bit codes, a group of 48 and an input size of 172 (stories260K's down_proj) stay on W4A16.
        let cases: [(Int, Int, Int)] = [(8, 64, 32), (4, 96, 48), (4, 172, 32)]
        for (bits, inF, group) in cases {
            let q = try randomMatrix(bits: bits, out: 8, inF: inF, group: group, permuted: false, rng: &rng)
            XCTAssertNil(W4A8Panels(QuantizedPanels(q)), "\(bits)-bit k \(inF) g\(group)")
        }
    }
}
