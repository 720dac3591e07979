import Foundation
import TensorCore
import TestSupport
import XCTest
import Quantization

/// HQQ against the independent numpy reference (Tools/reference_hqq.py, fixture Fixtures/hqq.json), the guarantee
/// that the stored groups are never worse than RTN, and the refusals.
final class HQQTests: XCTestCase {
    struct Fixture: Decodable {
        struct Case: Decodable {
            let name: String
            let bits: Int, group: Int, min_zero: Int
            let round_init: Bool?
            let codes: [Int], zeros: [Int32], scales: [Double], fractional_zeros: [Double]
            let sse_rtn: [Double], sse_fractional: [Double], sse_integer: [Double]
            let used_rtn: [Bool], updates: [Int]
            let mse: [String: Double]
        }
        let rows: Int, cols: Int, iterations: Int
        let p: Double, beta0: Double, kappa: Double
        let weight: [Double]
        let cases: [Case]
    }

    func loadFixture() throws -> Fixture {
        let data = try Data(contentsOf: URL(fileURLWithPath: Repo.path("Tests/QuantizationTests/Fixtures/hqq.json")))
        return try JSONDecoder().decode(Fixture.self, from: data)
    }

    private func close(_ a: Double, _ b: Double, _ rel: Double) -> Bool { abs(a - b) <= rel * abs(b) + 1e-300 }

    /// Same arithmetic (float64, half-to-even, left-to-right sums): codes, integer zeros and the fallback choice
    /// identical; scales, fractional zeros and squared errors within 1e-9 relative.
    func testMatchesNumpyReference() throws {
        let f = try loadFixture()
        let w = f.weight.map(Float.init)
        for c in f.cases {
            let scheme = try QuantScheme(bits: c.bits, symmetric: false, groupSize: c.group, minZero: c.min_zero)
            let config = HQQ.Config(iterations: f.iterations, p: f.p, beta0: f.beta0, kappa: f.kappa, roundInitialZero: c.round_init)
            let (q, report) = try HQQ.quantize(w, outFeatures: f.rows, inFeatures: f.cols, scheme: scheme, config: config,
                                               name: c.name, threads: 3)
            XCTAssertEqual(q.codes.map(Int.init), c.codes, c.name)
            XCTAssertEqual(q.zeros, c.zeros, c.name)
            XCTAssertEqual(report.usedRTN, c.used_rtn, c.name)
            XCTAssertEqual(report.updates, c.updates, c.name)
            XCTAssertEqual(q.scales.count, c.scales.count, c.name)
            for i in c.scales.indices {
                XCTAssertTrue(close(Double(q.scales[i]), c.scales[i], 1e-9), "\(c.name) scale \(i)")
                XCTAssertTrue(close(report.fractionalZeros[i], c.fractional_zeros[i], 1e-9), "\(c.name) z \(i)")
                XCTAssertTrue(close(report.sseRTN[i], c.sse_rtn[i], 1e-9), "\(c.name) sse rtn \(i)")
                XCTAssertTrue(close(report.sseFractional[i], c.sse_fractional[i], 1e-9), "\(c.name) sse frac \(i)")
                XCTAssertTrue(close(report.sseInteger[i], c.sse_integer[i], 1e-9), "\(c.name) sse int \(i)")
            }
            XCTAssertEqual(report.mseRTN, c.mse["rtn"]!, accuracy: 1e-9 * c.mse["rtn"]!, c.name)
            XCTAssertEqual(report.mseFractional, c.mse["frac"]!, accuracy: 1e-9 * c.mse["frac"]!, c.name)
            XCTAssertEqual(report.mseInteger, c.mse["int"]!, accuracy: 1e-9 * c.mse["int"]!, c.name)
            XCTAssertEqual(report.mseStored, c.mse["stored"]!, accuracy: 1e-9 * c.mse["stored"]!, c.name)
            XCTAssertEqual(report.fellBack, c.used_rtn.filter { $0 }.count, c.name)
            // The thread split changes nothing.
            let (q1, r1) = try HQQ.quantize(w, outFeatures: f.rows, inFeatures: f.cols, scheme: scheme, config: config, threads: 1)
            XCTAssertEqual(q1.codes, q.codes)
            XCTAssertEqual(r1.fractionalZeros, report.fractionalZeros)
            print(String(format: "%@: MSE RTN %.4e, HQQ fractional z %.4e, integer z %.4e, stored %.4e; %d/%d groups improved, %d fell back",
                         c.name, report.mseRTN, report.mseFractional, report.mseInteger, report.mseStored,
                         report.improved, report.groups, report.fellBack))
        }
    }

    /// Per group, what is stored is never worse than min-max RTN: in the report's Double arithmetic, and in the
    /// dequantized Float matrices against RTN.quantize's (up to the Float rounding of the scales).
    func testNeverWorseThanRTN() throws {
        let f = try loadFixture()
        var rng = SplitMix64(seed: 41)
        var other = rng.floats(32 * 200, in: -0.05...0.05)
        for i in stride(from: 7, to: other.count, by: 97) { other[i] *= 20 }
        for (w, rows, cols) in [(f.weight.map(Float.init), f.rows, f.cols), (other, 32, 200)] {
            for (bits, group, minZero, mse) in [(4, 32, 0, false), (3, 16, 0, false), (2, 64, 1, false), (8, -1, 0, false),
                                                (4, 50, 0, true), (4, -1, 1, false)] {
                let scheme = try QuantScheme(bits: bits, symmetric: false, groupSize: group, mseSearch: mse, minZero: minZero)
                let label = "\(rows)x\(cols) \(scheme.label) minZero \(minZero)"
                let (q, report) = try HQQ.quantize(w, outFeatures: rows, inFeatures: cols, scheme: scheme)
                let rtn = try RTN.quantize(w, outFeatures: rows, inFeatures: cols, scheme: scheme)
                let ng = scheme.groupCount(inFeatures: cols), gs = scheme.effectiveGroupSize(inFeatures: cols)
                let dh = q.dequantized(), dr = rtn.dequantized()
                for r in 0..<rows {
                    for g in 0..<ng {
                        let i = r * ng + g
                        XCTAssertLessThanOrEqual(min(report.sseInteger[i], report.sseRTN[i]), report.sseRTN[i], label)
                        XCTAssertEqual(report.usedRTN[i], report.sseInteger[i] > report.sseRTN[i], label)
                        var eh = 0.0, er = 0.0
                        for c in (g * gs)..<min(cols, (g + 1) * gs) {
                            let x = Double(w[r * cols + c])
                            eh += (x - Double(dh[r * cols + c])) * (x - Double(dh[r * cols + c]))
                            er += (x - Double(dr[r * cols + c])) * (x - Double(dr[r * cols + c]))
                        }
                        XCTAssertLessThanOrEqual(eh, er * (1 + 1e-5) + 1e-18, "\(label) row \(r) group \(g)")
                        XCTAssertGreaterThanOrEqual(q.zeros[i], Int32(minZero), label)
                        XCTAssertLessThanOrEqual(q.zeros[i], Int32(scheme.maxq), label)
                    }
                }
                XCTAssertLessThanOrEqual(report.mseStored, report.mseRTN, label)
                XCTAssertTrue(q.codes.allSatisfy { Int($0) <= scheme.maxq }, label)
            }
        }
    }

    /// A constant group: its fractional z reconstructs it exactly; the stored group is exact to Float rounding.
    func testConstantGroup() throws {
        let w: [Float] = [0.3, 0.3, 0.3, 0.3, -0.2, 0.1, 0.05, 0.0]
        let scheme = try QuantScheme(bits: 4, symmetric: false, groupSize: 4)
        let (q, report) = try HQQ.quantize(w, outFeatures: 1, inFeatures: 8, scheme: scheme)
        XCTAssertEqual(report.sseFractional[0], 0)
        let d = q.dequantized()
        for i in 0..<4 { XCTAssertEqual(d[i], 0.3, accuracy: 1e-6) }
    }

    func testRefusals() throws {
        let w: [Float] = [0.1, -0.2, 0.3, 0.4]
        XCTAssertThrowsError(try HQQ.quantize(w, outFeatures: 2, inFeatures: 2, scheme: try QuantScheme(bits: 4, symmetric: true))) {
            XCTAssertTrue("\($0)".contains("--asym"), "\($0)")
        }
        XCTAssertThrowsError(try HQQ.quantize(w, outFeatures: 2, inFeatures: 2,
                                              scheme: try QuantScheme(bits: 4, symmetric: false, groupSize: 0))) {
            XCTAssertTrue("\($0)".contains("per tensor"), "\($0)")
        }
        let asym = try QuantScheme(bits: 4, symmetric: false)
        XCTAssertThrowsError(try HQQ.quantize([0.1, .nan, 0.3, 0.4], outFeatures: 2, inFeatures: 2, scheme: asym)) {
            XCTAssertTrue("\($0)".contains("non-finite weight nan at [0, 1]"), "\($0)")
        }
        XCTAssertThrowsError(try HQQ.quantize(w, outFeatures: 3, inFeatures: 2, scheme: asym))
        XCTAssertThrowsError(try HQQ.quantize([], outFeatures: 0, inFeatures: 2, scheme: asym))
        for bad in [HQQ.Config(p: 0), HQQ.Config(p: 1.5), HQQ.Config(beta0: 0), HQQ.Config(kappa: 0.5), HQQ.Config(iterations: -1)] {
            XCTAssertThrowsError(try HQQ.quantize(w, outFeatures: 2, inFeatures: 2, scheme: asym, config: bad)) {
                XCTAssertEqual(($0 as? QuantKitError)?.kind, .config)
            }
        }
    }
}
