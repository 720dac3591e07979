import Foundation
import Kernels
import Models
import TensorCore
import TestSupport
import XCTest
@testable import Quantization

/// GPTAQ (GPTQ with the asymmetric-calibration term) against the independent numpy reference
/// (Tools/reference_gptaq.py) on the fixture it wrote: a seeded [32, 128] layer, 256 correlated float-model input rows x
/// and perturbed quantized-model rows x~ (float16, input 100 dead in x~ only), 8 samples. Then: D = 0 or alpha = 0 is
/// GPTQ bit for bit; the driver's D on a tiny random Llama equals a direct computation from captured inputs; GPTAQ
/// runs end to end.
final class GPTAQTests: XCTestCase {
    struct Fixture {
        let file: SafetensorsFile
        let weight: [Float]
        let x: [Float], xq: [Float]
        let tokens: Int, samples: Int
        let rows = 32, cols = 128

        func doubles(_ name: String) throws -> [Double] { try file.tensor(name).float64FromBytes }
        func bytes(_ name: String) throws -> [UInt8] { try file.tensor(name).byteValues }
    }

    static let fixture: Result<Fixture, Error> = Result {
        let tmp = Repo.tempDirectory("gptaqfix") + "/gptaq.safetensors"
        try readMaybeCompressed(Repo.path("Tests/QuantizationTests/Fixtures/gptaq.safetensors.zst")).write(to: URL(fileURLWithPath: tmp))
        let f = try SafetensorsFile(path: tmp)
        let x = try f.tensor("x")
        return Fixture(file: f, weight: try f.tensor("weight").floats(), x: x.floats(), xq: try f.tensor("xq").floats(),
                       tokens: x.shape[0], samples: Int(f.metadata["samples"]!)!)
    }

    /// H and D accumulated from the fixture rows in two uneven chunks (accumulation must not depend on the split).
    func matrices(_ fx: Fixture) throws -> (h: [Double], d: [Double]) {
        let n = fx.cols, split = fx.tokens / 3
        let h = HessianAccumulator(columns: n), d = AsymmetryAccumulator(columns: n)
        try h.add(Array(fx.xq[0..<(split * n)]), count: split, samples: 0)
        try h.add(Array(fx.xq[(split * n)...]), count: fx.tokens - split, samples: fx.samples)
        try d.add(float: Array(fx.x[0..<(split * n)]), quantized: Array(fx.xq[0..<(split * n)]), count: split, samples: 0)
        try d.add(float: Array(fx.x[(split * n)...]), quantized: Array(fx.xq[(split * n)...]), count: fx.tokens - split, samples: fx.samples)
        XCTAssertEqual(d.rows, fx.tokens)
        XCTAssertEqual(d.samples, fx.samples)
        return (h.hessian(), d.asymmetry())
    }

    func relDiff(_ a: [Double], _ b: [Double]) -> Double {
        precondition(a.count == b.count)
        let scale = b.map(abs).max() ?? 0
        return zip(a, b).map { abs($0 - $1) }.max()! / max(scale, .leastNormalMagnitude)
    }

    func testAsymmetryAccumulatorMatchesNumpy() throws {
        let fx = try Self.fixture.get()
        let (_, d) = try matrices(fx)
        let ref = try fx.doubles("asymmetry")
        XCTAssertLessThanOrEqual(relDiff(d, ref), 1e-12)
        // Not symmetric, and input 100 (dead in x~ only) has a zero column but a nonzero row.
        let n = fx.cols
        XCTAssertGreaterThan(abs(d[1 * n + 2] - d[2 * n + 1]), 1e-6)
        XCTAssertTrue((0..<n).allSatisfy { d[$0 * n + 100] == 0 })
        XCTAssertTrue((0..<n).contains { d[100 * n + $0] != 0 })
    }

    func testGPTAQMatchesNumpyReference() throws {
        let fx = try Self.fixture.get()
        let (h, d) = try matrices(fx)
        let names = try JSONSerialization.jsonObject(with: Data(fx.file.metadata["cases"]!.utf8)) as! [String]
        XCTAssertEqual(names.count, 5)
        for name in names {
            let m = try JSONSerialization.jsonObject(with: Data(fx.file.metadata[name]!.utf8)) as! [String: Any]
            let scheme = try QuantScheme(bits: m["bits"] as! Int, symmetric: m["sym"] as! Int == 1, groupSize: m["group"] as! Int)
            let cfg = GPTQConfig(scheme: scheme, actOrder: m["actorder"] as! Int == 1, staticGroups: m["static_groups"] as! Int == 1,
                                 blockSize: m["blocksize"] as! Int,
                                 gptaq: GPTAQConfig(alpha: m["alpha"] as! Double, upstreamLazyUpdate: m["lazy"] as! String == "upstream"))
            let r = try GPTQ.quantize(weight: fx.weight, outFeatures: fx.rows, inFeatures: fx.cols, hessian: h, asymmetry: d,
                                      config: cfg, name: name)
            XCTAssertEqual(r.weight.codes, try fx.bytes("\(name).codes"), "\(name): codes")
            XCTAssertEqual(r.weight.zeros, try fx.file.tensor("\(name).zeros").int32s(), "\(name): zeros")
            XCTAssertEqual(r.weight.gIdx, try fx.file.tensor("\(name).g_idx").int32s(), "\(name): g_idx")
            let scales = try fx.doubles("\(name).scales")
            XCTAssertLessThanOrEqual(relDiff(r.weight.scales.map(Double.init), scales), 1e-7, "\(name): scales (stored as Float)")
            // Dequantized weights: numpy's scale * (code - zero) from its float64 tables.
            let ng = r.weight.groupCount
            var ref = [Double](repeating: 0, count: fx.rows * fx.cols)
            let codes = try fx.bytes("\(name).codes"), zeros = try fx.file.tensor("\(name).zeros").int32s()
            for i in 0..<fx.rows {
                for c in 0..<fx.cols {
                    let g = i * ng + Int(r.weight.gIdx[c])
                    ref[i * fx.cols + c] = scales[g] * (Double(codes[i * fx.cols + c]) - Double(zeros[g]))
                }
            }
            XCTAssertLessThanOrEqual(relDiff(r.dequantized, ref), 1e-9, "\(name): dequantized")
            let loss = Double(m["loss"] as! String)!
            XCTAssertEqual(r.loss, loss, accuracy: 1e-9 * loss, "\(name): loss")
        }
    }

    /// D = 0, or alpha = 0 with the fixture's D: every output of GPTQ bit for bit, in several configurations.
    func testZeroAsymmetryIsGPTQ() throws {
        let fx = try Self.fixture.get()
        let (h, d) = try matrices(fx)
        let configs: [(QuantScheme, Bool, Bool, Int)] = [
            (try QuantScheme(bits: 4, symmetric: true, groupSize: 32), false, false, 128),
            (try QuantScheme(bits: 4, symmetric: true, groupSize: 32), true, false, 32),
            (try QuantScheme(bits: 3, symmetric: false, groupSize: 32), true, true, 64),
            (try QuantScheme(bits: 4, symmetric: false, groupSize: -1), false, false, 16),
        ]
        for (scheme, act, stat, bs) in configs {
            let plain = GPTQConfig(scheme: scheme, actOrder: act, staticGroups: stat, blockSize: bs)
            let g = try GPTQ.quantize(weight: fx.weight, outFeatures: fx.rows, inFeatures: fx.cols, hessian: h, config: plain)
            for (alpha, asym) in [(0.25, [Double](repeating: 0, count: d.count)), (0, d)] {
                for upstream in [false, true] {
                    var cfg = plain
                    cfg.gptaq = GPTAQConfig(alpha: alpha, upstreamLazyUpdate: upstream)
                    let a = try GPTQ.quantize(weight: fx.weight, outFeatures: fx.rows, inFeatures: fx.cols, hessian: h, asymmetry: asym,
                                              config: cfg)
                    let label = "\(scheme) act \(act) static \(stat) block \(bs) alpha \(alpha) upstream \(upstream)"
                    XCTAssertEqual(a.weight.codes, g.weight.codes, label)
                    XCTAssertEqual(a.weight.scales, g.weight.scales, label)
                    XCTAssertEqual(a.weight.zeros, g.weight.zeros, label)
                    XCTAssertEqual(a.weight.gIdx, g.weight.gIdx, label)
                    XCTAssertEqual(a.dequantized, g.dequantized, label)
                    XCTAssertEqual(a.loss, g.loss, label)
                }
            }
        }
    }

    /// The Cholesky form of P: row j on the columns F after it equals alpha * D[j, F] (H_FF)^-1 (H damped).
    func testCorrectionIsLeastSquaresShift() throws {
        let fx = try Self.fixture.get()
        let (h0, d) = try matrices(fx)
        let n = fx.cols
        var h = h0
        for i in 0..<n where h[i * n + i] == 0 { h[i * n + i] = 1 }
        let mean = (0..<n).reduce(0.0) { $0 + h[$1 * n + $1] } / Double(n)
        for i in 0..<n { h[i * n + i] += 0.01 * mean }
        let u = try XCTUnwrap(DenseMath.upperCholeskyOfInverse(h, n: n))
        let p = GPTQ.gptaqCorrection(d, u: u, alpha: 0.5, n: n, threads: 2)
        let scale = p.map(abs).max()!
        for j in stride(from: 0, to: n - 1, by: 9) {
            // Solve H_FF y = D[j, F]^T by Cholesky of the trailing block (textbook loops).
            let f = n - j - 1
            var a = [Double](repeating: 0, count: f * f)
            for r in 0..<f { for c in 0..<f { a[r * f + c] = h[(j + 1 + r) * n + j + 1 + c] } }
            let l = try XCTUnwrap(DenseReference.choleskyLower(a, n: f))
            var y = (0..<f).map { d[j * n + j + 1 + $0] }
            for r in 0..<f { for c in 0..<r { y[r] -= l[r * f + c] * y[c] }; y[r] /= l[r * f + r] }
            for r in stride(from: f - 1, through: 0, by: -1) { for c in (r + 1)..<f { y[r] -= l[c * f + r] * y[c] }; y[r] /= l[r * f + r] }
            for c in 0..<f { XCTAssertEqual(p[j * n + j + 1 + c], 0.5 * y[c], accuracy: 1e-10 * scale, "row \(j)") }
            for c in 0...j { XCTAssertEqual(p[j * n + c], 0, "row \(j) strictly upper") }
        }
    }

    func testBadInput() throws {
        let fx = try Self.fixture.get()
        let (h, d) = try matrices(fx)
        let scheme = try QuantScheme(bits: 4, groupSize: 32)
        func q(_ asym: [Double]?, _ gptaq: GPTAQConfig?) throws -> GPTQLayerResult {
            try GPTQ.quantize(weight: fx.weight, outFeatures: fx.rows, inFeatures: fx.cols, hessian: h, asymmetry: asym,
                              config: GPTQConfig(scheme: scheme, gptaq: gptaq), name: "l")
        }
        XCTAssertThrowsError(try q(nil, GPTAQConfig())) { XCTAssertTrue("\($0)".contains("needs the asymmetry matrix"), "\($0)") }
        XCTAssertThrowsError(try q(Array(d.dropLast()), GPTAQConfig())) { XCTAssertTrue("\($0)".contains("expected 128x128"), "\($0)") }
        var bad = d; bad[5] = .nan
        XCTAssertThrowsError(try q(bad, GPTAQConfig())) { XCTAssertTrue("\($0)".contains("non-finite"), "\($0)") }
        XCTAssertThrowsError(try q(d, GPTAQConfig(alpha: -1))) { XCTAssertTrue("\($0)".contains("alpha"), "\($0)") }
        XCTAssertThrowsError(try q(d, nil)) { XCTAssertTrue("\($0)".contains("GPTAQ is off"), "\($0)") }
        let acc = AsymmetryAccumulator(columns: 2)
        XCTAssertThrowsError(try acc.add(float: [1, 2], quantized: [1, .infinity], count: 1, samples: 1)) {
            XCTAssertTrue("\($0)".contains("non-finite quantized-model activation"), "\($0)")
        }
        XCTAssertThrowsError(try acc.add(float: [1, 2, 3], quantized: [1, 2], count: 1, samples: 1))
        // Options: GPTAQ is an option of GPTQ only, alpha >= 0.
        var o = ModelQuantizationOptions(method: .rtn, scheme: scheme)
        o.gptaqAlpha = 0.25
        XCTAssertThrowsError(try o.validate()) { XCTAssertTrue("\($0)".contains("--gptaq applies to --method gptq only"), "\($0)") }
        o.method = .gptq
        XCTAssertNoThrow(try o.validate())
        o.gptaqAlpha = .infinity
        XCTAssertThrowsError(try o.validate())
        // The driver refuses to run GPTAQ without a float twin, or with the model as its own twin.
        o.gptaqAlpha = 0.25
        let model = try tinyLlama()
        let walker = LlamaLayerwise(model: model, maxRows: 16)
        let calib = windows(2, 16, seed: 4)
        XCTAssertThrowsError(try LayerwiseDriver.run(walker, calibration: calib, algorithm: LayerQuantizer(options: o))) {
            XCTAssertTrue("\($0)".contains("no float twin"), "\($0)")
        }
        XCTAssertThrowsError(try LayerwiseDriver.run(walker, floatTwin: walker, calibration: calib, algorithm: LayerQuantizer(options: o)))
    }

    // MARK: - model level

    func tinyLlama(seed: UInt64 = 5) throws -> LlamaModel { try TinyLlama.model(seed: seed) }
    func windows(_ n: Int, _ len: Int, seed: UInt64) -> [[Int32]] { TinyLlama.windows(n, len, seed: seed) }

    /// Wraps `LayerQuantizer`, keeping each module's H and D as the driver handed them over.
    final class Recording: LayerwiseAlgorithm {
        let inner: LayerQuantizer
        var hessians: [String: [Double]] = [:], asymmetries: [String: [Double]] = [:]
        init(_ inner: LayerQuantizer) { self.inner = inner }
        var needsHessian: Bool { inner.needsHessian }
        var needsFloatInputs: Bool { inner.needsFloatInputs }
        func selects(_ name: String, layer: any LinearLayer) throws -> Bool { try inner.selects(name, layer: layer) }
        func process(_ module: LayerwiseLayer) throws -> (replacement: any LinearLayer, output: LayerQuantizer.Output) {
            hessians[module.name] = module.hessian?.hessian()
            asymmetries[module.name] = module.asymmetry?.asymmetry()
            return try inner.process(module)
        }
    }

    /// Every module's inputs over full block passes.
    final class AllInputs: LinearObserver {
        var inputs: [String: [Float]] = [:]
        func observe(module: String, input: UnsafePointer<Float>, inFeatures: Int, output: UnsafePointer<Float>, outFeatures: Int, rows: Int) {
            inputs[module] = Array(UnsafeBufferPointer(start: input, count: rows * inFeatures))
        }
    }

    /// The driver's D (and H) of every module equals (2/n) sum (x - x~)^T x~ computed with plain loops from inputs
    /// captured afterwards: x from the float model, x~ from the finished quantized model (a module's inputs depend only
    /// on earlier groups and blocks, all final when it was quantized), both walked block by block on the same windows.
    func testDriverAsymmetryMatchesDirectComputation() throws {
        let model = try tinyLlama(), calib = windows(6, 24, seed: 1)
        var opts = ModelQuantizationOptions(method: .gptq, scheme: try QuantScheme(bits: 3, symmetric: true, groupSize: 32), actOrder: true)
        opts.gptaqAlpha = 0.25
        let twinModel = try tinyLlama()
        let rec = Recording(LayerQuantizer(options: opts))
        let out = try LayerwiseDriver.run(LlamaLayerwise(model: model, maxRows: 24), floatTwin: LlamaLayerwise(model: twinModel, maxRows: 24),
                                          calibration: calib, algorithm: rec)
        XCTAssertEqual(out.count, 14)
        XCTAssertEqual(rec.asymmetries.count, 14)

        let q = LlamaLayerwise(model: model, maxRows: 24), f = LlamaLayerwise(model: try tinyLlama(), maxRows: 24)
        var qb = try q.embed(calibration: calib), fb = try f.embed(calibration: calib)
        var sumD: [String: [Double]] = [:], sumH: [String: [Double]] = [:]
        for i in 0..<model.blocks.count {
            for b in calib.indices {
                let oq = AllInputs(), of = AllInputs()
                q.runBlock(i, on: &qb[b], observer: oq, stopAfter: nil)
                f.runBlock(i, on: &fb[b], observer: of, stopAfter: nil)
                for (name, xq) in oq.inputs {
                    let x = of.inputs[name]!, n = xq.count / 24
                    var dd = sumD[name] ?? [Double](repeating: 0, count: n * n), hh = sumH[name] ?? [Double](repeating: 0, count: n * n)
                    for t in 0..<24 {
                        for a in 0..<n {
                            let drift = Double(x[t * n + a]) - Double(xq[t * n + a]), qa = Double(xq[t * n + a])
                            for c in 0..<n {
                                dd[a * n + c] += drift * Double(xq[t * n + c])
                                hh[a * n + c] += qa * Double(xq[t * n + c])
                            }
                        }
                    }
                    sumD[name] = dd; sumH[name] = hh
                }
            }
        }
        let scale = 2 / Double(calib.count)
        for (name, d) in rec.asymmetries {
            let direct = sumD[name]!.map { $0 * scale }
            XCTAssertLessThanOrEqual(relDiff(d, direct), 1e-9, name)
            XCTAssertLessThanOrEqual(relDiff(rec.hessians[name]!, sumH[name]!.map { $0 * scale }), 1e-9, name)
            // Nothing is quantized before the first group: its inputs are the float model's exactly.
            if name.hasPrefix("model.layers.0.self_attn.") && !name.hasSuffix("o_proj") {
                XCTAssertTrue(d.allSatisfy { $0 == 0 }, name)
            } else {
                XCTAssertGreaterThan(d.map(abs).max()!, 1e-6, name)
            }
        }
    }

    /// GPTAQ through ModelQuantizer: every layer quantized, the checkpoint reads back to the same logits; alpha = 0
    /// gives GPTQ's codes exactly (the twin's passes leave the quantized path alone).
    func testGPTAQEndToEnd() throws {
        let calib = windows(16, 48, seed: 1), heldOut = windows(4, 48, seed: 2)
        let float = try tinyLlama()
        let ref = try heldOut.map { try float.logits($0) }
        func mse(_ a: [Float], _ b: [Float]) -> Double { zip(a, b).map { Double($0 - $1) * Double($0 - $1) }.reduce(0, +) / Double(a.count) }
        var results: [String: ModelQuantizer.Result] = [:]
        var errs: [String: Double] = [:]
        for (label, alpha) in [("gptq", nil), ("gptaq", 0.25), ("gptaq0", 0.0)] as [(String, Double?)] {
            let model = try tinyLlama()
            var opts = ModelQuantizationOptions(method: .gptq, scheme: try QuantScheme(bits: 4, symmetric: false, groupSize: 32, minZero: 1),
                                                actOrder: true)
            opts.gptaqAlpha = alpha
            let r = try ModelQuantizer.quantize(model: model, windows: calib, options: opts)
            XCTAssertEqual(r.layers.count, 14, label)
            XCTAssertTrue(r.reports.allSatisfy { ($0.gptqLoss ?? -1) >= 0 }, label)
            results[label] = r
            let logits = try heldOut.map { try model.logits($0) }
            errs[label] = zip(logits, ref).map { mse($0, $1) }.reduce(0, +)
            if label == "gptaq" {
                let dir = Repo.tempDirectory("gptaq") + "/q"
                try ModelQuantizer.write(model: model, result: r, options: opts, to: dir, metadata: ["method": "gptq"], fingerprint: nil)
                let loaded = try LlamaModel.load(path: dir, backend: try QuantizedLinearBackend(directory: dir))
                for (w, l) in zip(heldOut, logits) { XCTAssertEqual(try loaded.logits(w), l, "round trip") }
            }
        }
        for ((n0, a), (n1, b)) in zip(results["gptq"]!.layers, results["gptaq0"]!.layers) {
            XCTAssertEqual(n0, n1)
            XCTAssertEqual(a.codes, b.codes, n0)
            XCTAssertEqual(a.scales, b.scales, n0)
        }
        let differing = zip(results["gptq"]!.layers, results["gptaq"]!.layers).filter { $0.0.1.codes != $0.1.1.codes }.count
        XCTAssertGreaterThan(differing, 0)
        print("held-out logits MSE vs float: gptq \(errs["gptq"]!) gptaq \(errs["gptaq"]!); layers with other codes \(differing)")
    }
}
