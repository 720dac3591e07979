import XCTest
import Kernels
import TensorCore
import TestSupport

/// The AVX512-VNNI integer tiles (KernelsVNNI) against the AVX2 tiles: the same exact integer block sums and the
/// same float epilogue, so the outputs must be equal bit for bit, and the run-time check must agree with the
/// processor flags the kernel reports.
final class VNNITests: XCTestCase {
    func testDetectionAgreesWithTheKernelsFlags() throws {
        let info = try String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)
        let line = try XCTUnwrap(info.split(separator: "\n").first { $0.hasPrefix("flags") })
        let flags = Set(line.split(separator: " ").map(String.init))
        let expected = ["avx512f", "avx512bw", "avx512vl", "avx512_vnni"].allSatisfy(flags.contains)
        XCTAssertEqual(CPUFeatures.hardwareAVX512VNNI, expected, "cpuid/xgetbv against /proc/cpuinfo's flags")
    }

    private func requireVNNI() throws {
        try XCTSkipUnless(CPUFeatures.hardwareAVX512VNNI, "this processor has no AVX512-VNNI: only the AVX2 tiles can run")
    }

    private func assertBitEqual(_ a: [Float], _ b: [Float], _ label: String) {
        XCTAssertEqual(a.count, b.count, label)
        let diff = zip(a, b).enumerated().first { $0.element.0.bitPattern != $0.element.1.bitPattern }
        XCTAssertNil(diff, "\(label): first difference at \(diff.map { "\($0.offset): \($0.element.0) vs \($0.element.1)" } ?? "")")
    }

    func testW8A8TileEqualsAVX2BitForBit() throws {
        try requireVNNI()
        var rng = SplitMix64(seed: 81)
        for (n, k) in [(8, 32), (13, 64), (40, 256), (70, 512), (9, 1536)] {
            // Codes over the whole int8 range, -128 included (a GGUF file may hold it; the sign trick's |c| = 128).
            let codes = (0..<(n * k)).map { _ in Int8(truncatingIfNeeded: Int.random(in: -128...127, using: &rng)) }
            let scales = (0..<(n * k / 32)).map { _ in Float.random(in: 0.001...0.05, using: &rng) }
            let panels = try XCTUnwrap(W8A8Panels(n: n, k: k, codes: codes, scales: scales))
            for m in [1, 2, 3, 4, 7, 50] {
                let x = rng.floats(m * k).map { $0 * 3 }, bias = rng.floats(n)
                for threads in [1, 2] {
                    var avx2 = [Float](repeating: .nan, count: m * n), vnni = avx2
                    Kernels.matmulW8A8(x: x, m: m, panels: panels, bias: bias, out: &avx2, threads: threads, vnni: false)
                    Kernels.matmulW8A8(x: x, m: m, panels: panels, bias: bias, out: &vnni, threads: threads, vnni: true)
                    XCTAssertFalse(avx2.contains { $0.isNaN }, "every output written")
                    assertBitEqual(vnni, avx2, "W8A8 \(n)x\(k) m \(m) threads \(threads)")
                }
            }
        }
    }

    func testW4A8TileEqualsAVX2BitForBit() throws {
        try requireVNNI()
        var rng = SplitMix64(seed: 82)
        for (bits, n, k, group, permuted) in [(4, 8, 32, 32, false), (4, 13, 64, 32, true), (4, 40, 256, 64, false),
                                             (3, 33, 160, 32, false), (4, 24, 1536, 128, true)] {
            let ng = (k + group - 1) / group, maxq = (1 << bits) - 1
            let q = try QuantizedMatrix(
                bits: bits, outFeatures: n, inFeatures: k, groupSize: group,
                codes: (0..<(n * k)).map { _ in UInt8(Int.random(in: 0...maxq, using: &rng)) },
                scales: (0..<(n * ng)).map { _ in Float.random(in: 0.001...0.05, using: &rng) },
                zeros: (0..<(n * ng)).map { _ in Float(Int.random(in: 0...maxq, using: &rng)) },
                inputPermutation: permuted ? Array(0..<Int32(k)).shuffled(using: &rng) : nil)
            let panels = try XCTUnwrap(W4A8Panels(QuantizedPanels(q)))
            for m in [1, 2, 3, 4, 7, 50] {
                let x = rng.floats(m * k).map { $0 * 3 }, bias = rng.floats(n)
                for ggml in [false, true] {
                    var avx2 = [Float](repeating: .nan, count: m * n), vnni = avx2
                    Kernels.matmulW4A8(x: x, m: m, panels: panels, bias: bias, out: &avx2, threads: 2, ggmlActivations: ggml, vnni: false)
                    Kernels.matmulW4A8(x: x, m: m, panels: panels, bias: bias, out: &vnni, threads: 2, ggmlActivations: ggml, vnni: true)
                    XCTAssertFalse(avx2.contains { $0.isNaN }, "every output written")
                    assertBitEqual(vnni, avx2, "W4A8 \(bits)-bit \(n)x\(k) g\(group) m \(m) ggml \(ggml)")
                }
            }
        }
    }
}
