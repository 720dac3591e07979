import Foundation
import TensorCore
import TestSupport
import XCTest
@testable import Quantization

/// Swift SparseGPT against the independent numpy reference (Tools/reference_sparsegpt.py) on the fixture it wrote:
/// a seeded [32, 256] layer, 384 correlated input rows (float16) with input 77 dead.
final class SparseGPTTests: XCTestCase {
    struct Case {
        let name: String
        let config: SparseGPTConfig
        let loss: Double
    }

    struct Fixture {
        let file: SafetensorsFile
        let weight: [Float]
        /// Inputs [tokens, 256] as Float (exact: stored as float16).
        let inputs: [Float]
        let tokens: Int
        let hessian: [Double]
        let cases: [Case]
        let rows = 32, cols = 256

        func doubles(_ name: String) throws -> [Double] { try file.tensor(name).float64FromBytes }
        func bytes(_ name: String) throws -> [UInt8] { try file.tensor(name).byteValues }
    }

    static let fixture: Result<Fixture, Error> = Result { try loadFixture() }

    static func loadFixture() throws -> Fixture {
        let z = Repo.path("Tests/QuantizationTests/Fixtures/sparsegpt.safetensors.zst")
        let tmp = Repo.tempDirectory("sparsegptfix") + "/sparsegpt.safetensors"
        try readMaybeCompressed(z).write(to: URL(fileURLWithPath: tmp))
        let f = try SafetensorsFile(path: tmp)
        let x = try f.tensor("inputs")
        let tokens = x.shape[0], cols = x.shape[1]
        let inputs = x.floats()
        let acc = HessianAccumulator(columns: cols)
        try acc.add(inputs, count: tokens, samples: Int(f.metadata["samples"]!)!)
        let names = try JSONSerialization.jsonObject(with: Data(f.metadata["cases"]!.utf8)) as! [String]
        let cases = try names.map { name -> Case in
            let m = try JSONSerialization.jsonObject(with: Data(f.metadata[name]!.utf8)) as! [String: Any]
            let n = m["n"] as! Int, bits = m["bits"] as! Int
            let pattern: SparsityPattern = n > 0 ? .semiStructured(n: n, m: m["m"] as! Int) : .unstructured(m["sparsity"] as! Double)
            let scheme = bits > 0 ? try QuantScheme(bits: bits, symmetric: m["sym"] as! Int == 1, groupSize: m["group"] as! Int) : nil
            let loss = try XCTUnwrap(Double(m["loss"] as! String), "\(name): loss \(m["loss"]!)")
            return Case(name: name, config: SparseGPTConfig(pattern: pattern, quantize: scheme), loss: loss)
        }
        return Fixture(file: f, weight: try f.tensor("weight").floats(), inputs: inputs, tokens: tokens, hessian: acc.hessian(),
                       cases: cases)
    }

    func run(_ fx: Fixture, _ config: SparseGPTConfig, threads: Int = Parallel.defaultThreads) throws -> SparseGPTLayerResult {
        try SparseGPT.prune(weight: fx.weight, outFeatures: fx.rows, inFeatures: fx.cols, hessian: fx.hessian, config: config,
                            threads: threads)
    }

    /// || X (W - W')^T ||_F: the layer's output error on the fixture inputs.
    func outputError(_ fx: Fixture, _ pruned: [Double]) -> Double {
        var s = 0.0
        for t in 0..<fx.tokens {
            for r in 0..<fx.rows {
                var y = 0.0
                for c in 0..<fx.cols { y += Double(fx.inputs[t * fx.cols + c]) * (Double(fx.weight[r * fx.cols + c]) - pruned[r * fx.cols + c]) }
                s += y * y
            }
        }
        return s.squareRoot()
    }

    /// "" when equal, else how many entries differ and the first (arrays here are too long to print whole).
    func mismatches<T: Equatable>(_ a: [T], _ b: [T]) -> String {
        guard a.count == b.count else { return "\(a.count) vs \(b.count) entries" }
        let bad = a.indices.filter { a[$0] != b[$0] }
        guard let first = bad.first else { return "" }
        return "\(bad.count) differ, first at \(first): \(a[first]) vs \(b[first])"
    }

    /// Identical masks and codes, weights and loss to 1e-9 relative, exact zeros, the dead column, densities.
    func testSparseGPTMatchesNumpyReference() throws {
        let fx = try Self.fixture.get()
        for c in fx.cases {
            let r = try run(fx, c.config)
            let refMask = try fx.bytes("\(c.name).mask").map { $0 != 0 }
            XCTAssertEqual(mismatches(r.mask, refMask), "", "\(c.name): mask")
            let ref = try fx.doubles("\(c.name).weights")
            let scale = ref.map(abs).max()!
            let worst = zip(r.weights, ref).map { abs($0 - $1) }.max()!
            XCTAssertLessThanOrEqual(worst, 1e-9 * scale, "\(c.name): weights")
            XCTAssertEqual(r.loss, c.loss, accuracy: 1e-9 * c.loss, "\(c.name): loss")
            for i in r.mask.indices where r.mask[i] { XCTAssertEqual(r.weights[i], 0, "\(c.name): pruned weight \(i) not 0") }
            XCTAssertEqual(r.deadColumns, 1)
            for row in 0..<fx.rows { XCTAssertEqual(r.weights[row * fx.cols + 77], 0, "\(c.name): dead column") }
            XCTAssertEqual(r.dampPercentUsed, 0.01)
            let refDensity = Double(ref.filter { $0 != 0 }.count) / Double(ref.count)
            XCTAssertEqual(r.density, refDensity, "\(c.name): density")
            XCTAssertEqual(r.mask.filter { $0 }.count, fx.rows * fx.cols / 2, "\(c.name): half the weights pruned")
            if c.config.quantize == nil {
                // Pruned exactly half; kept weights are never 0 here, so density is exactly 0.5.
                XCTAssertEqual(r.density, 0.5, "\(c.name)")
            }
            if case .unstructured = c.config.pattern {
                // floor(0.5 * 32 * 128) per block; rows differ.
                for b in 0..<2 {
                    var k = 0
                    for row in 0..<fx.rows { for j in 0..<128 where r.mask[row * fx.cols + b * 128 + j] { k += 1 } }
                    XCTAssertEqual(k, 2048, "\(c.name): block \(b)")
                }
                XCTAssertLessThan(r.minRowDensity, r.maxRowDensity, "\(c.name): per-row density varies")
            }
            if let q = r.quantized {
                XCTAssertEqual(mismatches(q.codes, try fx.bytes("\(c.name).codes")), "", "\(c.name): codes")
                XCTAssertEqual(q.zeros, try fx.file.tensor("\(c.name).zeros").int32s(), "\(c.name): zeros")
                let refScales = try fx.doubles("\(c.name).scales")
                XCTAssertEqual(q.scales.count, refScales.count)
                for (a, b) in zip(q.scales, refScales) { XCTAssertEqual(Double(a), b, accuracy: 1e-7 * b, "\(c.name): scale") }
            }
            print("\(c.name): loss \(r.loss) vs \(c.loss), max |dw| \(worst), density \(r.density) (rows \(r.minRowDensity)...\(r.maxRowDensity))")
        }
    }

    /// n:m: every row holds exactly 2 pruned weights in every group of 4 (and at most 2 nonzero when quantized).
    func testTwoOfFourPattern() throws {
        let fx = try Self.fixture.get()
        for c in fx.cases {
            guard case .semiStructured = c.config.pattern else { continue }
            let r = try run(fx, c.config)
            for row in 0..<fx.rows {
                for g in stride(from: 0, to: fx.cols, by: 4) {
                    let idx = (g..<(g + 4)).map { row * fx.cols + $0 }
                    XCTAssertEqual(idx.filter { r.mask[$0] }.count, 2, "\(c.name): row \(row) group \(g)")
                    let nonzero = idx.filter { r.weights[$0] != 0 }.count
                    if c.config.quantize == nil { XCTAssertEqual(nonzero, 2) } else { XCTAssertLessThanOrEqual(nonzero, 2) }
                }
            }
            if c.config.quantize == nil {
                XCTAssertEqual(r.minRowDensity, 0.5)
                XCTAssertEqual(r.maxRowDensity, 0.5)
            }
        }
    }

    /// Joint: a pruned weight's code is its group's zero point, so both the result and QuantizedWeight.dequantized()
    /// give exactly 0 there; elsewhere the two agree to Float rounding.
    func testJointPrunedEntriesDequantizeToZero() throws {
        let fx = try Self.fixture.get()
        for c in fx.cases where c.config.quantize != nil {
            let r = try run(fx, c.config)
            let q = try XCTUnwrap(r.quantized)
            let deq = q.dequantized(), ng = q.groupCount
            for row in 0..<fx.rows {
                for col in 0..<fx.cols {
                    let i = row * fx.cols + col
                    if r.mask[i] {
                        XCTAssertEqual(Int32(q.codes[i]), q.zeros[row * ng + Int(q.gIdx[col])], "\(c.name): code at \(row), \(col)")
                        XCTAssertEqual(deq[i], 0)
                        XCTAssertEqual(r.weights[i], 0)
                    }
                    XCTAssertEqual(deq[i], Float(r.weights[i]), accuracy: 1e-6 * max(1, abs(deq[i])), "\(c.name)")
                }
            }
            XCTAssertEqual(q.gIdx, (0..<fx.cols).map { Int32($0 / (c.config.quantize!.groupSize > 0 ? 64 : fx.cols)) })
        }
    }

    /// The point of SparseGPT: its output error on the calibration inputs is well below magnitude pruning's at the
    /// same sparsity (layer-wise lowest |w| for 50%; lowest two |w| of every four for 2:4).
    func testReconstructionBeatsMagnitudePruning() throws {
        let fx = try Self.fixture.get()
        let w = fx.weight.map(Double.init)
        let order = w.indices.sorted { (abs(w[$0]), $0) < (abs(w[$1]), $1) }
        var magnitude50 = w
        for i in order.prefix(w.count / 2) { magnitude50[i] = 0 }
        var magnitude24 = w
        for row in 0..<fx.rows {
            for g in stride(from: 0, to: fx.cols, by: 4) {
                let idx = (g..<(g + 4)).map { row * fx.cols + $0 }.sorted { (abs(w[$0]), $0) < (abs(w[$1]), $1) }
                for i in idx.prefix(2) { magnitude24[i] = 0 }
            }
        }
        let sparse50 = try run(fx, SparseGPTConfig(pattern: .unstructured(0.5))).weights
        let sparse24 = try run(fx, SparseGPTConfig(pattern: .semiStructured(n: 2, m: 4))).weights
        let dense = outputError(fx, [Double](repeating: 0, count: w.count))
        let (e50, m50) = (outputError(fx, sparse50), outputError(fx, magnitude50))
        let (e24, m24) = (outputError(fx, sparse24), outputError(fx, magnitude24))
        print(String(format: "|X(W-W')^T|: 50%% SparseGPT %.4f, magnitude %.4f (ratio %.3f); 2:4 SparseGPT %.4f, magnitude %.4f (ratio %.3f); |XW^T| %.4f",
                     e50, m50, e50 / m50, e24, m24, e24 / m24, dense))
        XCTAssertLessThan(e50 / m50, 0.4)
        XCTAssertLessThan(e24 / m24, 0.4)
        XCTAssertLessThan(e50, e24, "unstructured 50% is easier than 2:4")
    }

    /// Equal scores and H = I (no error feedback): ties go to the lower row-major index of the block, so the block's
    /// first half of rows is pruned; the second block is chosen on its own.
    func testUnstructuredTiesGoToLowerIndex() throws {
        let rows = 6, cols = 12
        var h = [Double](repeating: 0, count: cols * cols)
        for i in 0..<cols { h[i * cols + i] = 2 }
        let w = (0..<(rows * cols)).map { Float($0 % 2 == 0 ? 0.5 : -0.5) }
        let r = try SparseGPT.prune(weight: w, outFeatures: rows, inFeatures: cols, hessian: h,
                                    config: SparseGPTConfig(pattern: .unstructured(0.5), blockSize: 8))
        for row in 0..<rows {
            for col in 0..<cols {
                // Block 0 (columns 0..<8): 24 of 48 weights; block 1 (8..<12): 12 of 24; in both, rows 0-2.
                let expected = row < 3
                XCTAssertEqual(r.mask[row * cols + col], expected, "\(row), \(col)")
                XCTAssertEqual(r.weights[row * cols + col], expected ? 0 : Double(w[row * cols + col]))
            }
        }
        XCTAssertEqual(r.minRowDensity, 0)
        XCTAssertEqual(r.maxRowDensity, 1)
        XCTAssertEqual(r.density, 0.5)
        XCTAssertEqual(SparsityPattern.unstructured(0.5).label, "50% unstructured")
        XCTAssertEqual(SparsityPattern.semiStructured(n: 2, m: 4).label, "2:4")
    }

    /// Odd shapes: a short last block keeps floor(p * rows * count) for itself; n:m leaves the columns after the last
    /// full group dense; results do not depend on the thread count (rows not a multiple of the tile).
    func testShortBlocksTailsAndThreads() throws {
        var rng = SplitMix64(seed: 11)
        let rows = 13, cols = 150, tokens = 200
        let x = rng.floats(tokens * cols), w = rng.floats(rows * cols)
        let acc = HessianAccumulator(columns: cols)
        try acc.add(x, count: tokens, samples: 4)
        let h = acc.hessian()
        let r1 = try SparseGPT.prune(weight: w, outFeatures: rows, inFeatures: cols, hessian: h,
                                     config: SparseGPTConfig(pattern: .unstructured(0.3), blockSize: 64), threads: 1)
        let r2 = try SparseGPT.prune(weight: w, outFeatures: rows, inFeatures: cols, hessian: h,
                                     config: SparseGPTConfig(pattern: .unstructured(0.3), blockSize: 64), threads: 3)
        XCTAssertEqual(mismatches(r1.weights, r2.weights), "")
        XCTAssertEqual(r1.loss, r2.loss)
        for (b0, b1) in [(0, 64), (64, 128), (128, 150)] {
            var k = 0
            for row in 0..<rows { for c in b0..<b1 where r1.mask[row * cols + c] { k += 1 } }
            XCTAssertEqual(k, Int(0.3 * Double(rows * (b1 - b0))), "block \(b0)")
        }
        // 150 = 37 groups of 4 + 2 columns: those stay dense (and are still updated by the error feedback).
        let nm = try SparseGPT.prune(weight: w, outFeatures: rows, inFeatures: cols, hessian: h,
                                     config: SparseGPTConfig(pattern: .semiStructured(n: 3, m: 4), blockSize: 32),
                                     threads: 2)
        for row in 0..<rows {
            for g in stride(from: 0, to: 148, by: 4) {
                XCTAssertEqual((g..<(g + 4)).filter { nm.mask[row * cols + $0] }.count, 3)
            }
            XCTAssertFalse(nm.mask[row * cols + 148] || nm.mask[row * cols + 149])
            XCTAssertNotEqual(nm.weights[row * cols + 149], Double(w[row * cols + 149]))
        }
    }

    func testDampingEscalation() throws {
        let dir = Repo.path("Tests/QuantizationTests/Fixtures")
        let f = try SafetensorsFile(path: "\(dir)/gptq_escalation.safetensors")
        let w = try f.tensor("weight").floats(), h = try f.tensor("hessian").floats().map(Double.init)
        var logged: [String] = []
        let r = try SparseGPT.prune(weight: w, outFeatures: 8, inFeatures: 16, hessian: h,
                                    config: SparseGPTConfig(pattern: .semiStructured(n: 2, m: 4)), log: { logged.append($0) })
        XCTAssertEqual(r.dampEscalations, Int(f.metadata["escalations"]!)!)
        XCTAssertEqual(r.dampPercentUsed, Double(f.metadata["damp"]!)!, accuracy: 1e-12)
        XCTAssertEqual(logged.count, r.dampEscalations)
    }

    func testBadInput() throws {
        let w: [Float] = [1, 2, 3, 4, 5, 6, 7, 8], h: [Double] = [2, 0, 0, 0, 0, 2, 0, 0, 0, 0, 2, 0, 0, 0, 0, 2]
        func expect(_ w: [Float], _ h: [Double], _ config: SparseGPTConfig, _ kind: QuantKitError.Kind, _ text: String,
                    line: UInt = #line) {
            XCTAssertThrowsError(try SparseGPT.prune(weight: w, outFeatures: 2, inFeatures: 4, hessian: h, config: config)) {
                let e = $0 as? QuantKitError
                XCTAssertEqual(e?.kind, kind, "\($0)", line: line)
                XCTAssertTrue("\($0)".contains(text), "\($0)", line: line)
                XCTAssertFalse("\($0)".contains("\n"), line: line)
            }
        }
        for p in [0, 1, 1.5, -0.1, .nan] { expect(w, h, SparseGPTConfig(pattern: .unstructured(p)), .config, "outside (0, 1)") }
        for (n, m) in [(4, 4), (5, 4), (0, 4), (-1, 4)] {
            expect(w, h, SparseGPTConfig(pattern: .semiStructured(n: n, m: m)), .config, "needs 0 < n < m")
        }
        for (n, m) in [(0, 0), (1, -2)] { expect(w, h, SparseGPTConfig(pattern: .semiStructured(n: n, m: m)), .config, "needs m >= 1") }
        expect(w, h, SparseGPTConfig(pattern: .semiStructured(n: 2, m: 4), blockSize: 130), .config, "not a multiple of m")
        expect(w, h, SparseGPTConfig(pattern: .unstructured(0.5), blockSize: 0), .config, "must be positive")
        expect(w, h, SparseGPTConfig(pattern: .unstructured(0.5), dampPercent: -1), .config, "damping")
        expect(Array(w.prefix(7)), h, SparseGPTConfig(pattern: .unstructured(0.5)), .shape, "do not fill [2, 4]")
        expect(w, Array(h.prefix(9)), SparseGPTConfig(pattern: .unstructured(0.5)), .shape, "Hessian has 9 entries")
        var bad = w; bad[5] = .nan
        expect(bad, h, SparseGPTConfig(pattern: .unstructured(0.5)), .numeric, "non-finite weight nan at [1, 1]")
        bad[5] = .infinity
        expect(bad, h, SparseGPTConfig(pattern: .semiStructured(n: 2, m: 4)), .numeric, "non-finite weight")
    }

    /// Hoare selection against sorting, with many ties.
    func testKthSmallest() {
        var rng = SplitMix64(seed: 5)
        for n in [1, 2, 3, 7, 100, 1000] {
            for levels in [2, 5, 1000] {
                let v = (0..<n).map { _ in Double(Int.random(in: 0..<levels, using: &rng)) }
                let sorted = v.sorted()
                for k in Set([0, n / 3, n / 2, n - 1]) {
                    var c = v
                    XCTAssertEqual(c.withUnsafeMutableBufferPointer { SparseGPT.kthSmallest($0, k) }, sorted[k], "n \(n) k \(k)")
                }
            }
        }
    }
}
