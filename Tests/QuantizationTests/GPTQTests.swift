import Foundation
import TensorCore
import TestSupport
import XCTest
import Quantization

/// Swift GPTQ / RTN against the independent numpy reference (Tools/reference_gptq.py), on fixtures it wrote.
final class GPTQTests: XCTestCase {
    func fixture(_ name: String) throws -> SafetensorsFile {
        let dir = Repo.path("Tests/QuantizationTests/Fixtures")
        let z = "\(dir)/\(name).safetensors.zst", plain = "\(dir)/\(name).safetensors"
        if FileManager.default.fileExists(atPath: plain) { return try SafetensorsFile(path: plain) }
        let tmp = Repo.tempDirectory("gptqfix") + "/\(name).safetensors"
        try readMaybeCompressed(z).write(to: URL(fileURLWithPath: tmp))
        return try SafetensorsFile(path: tmp)
    }

    func testGPTQMatchesNumpyReference() throws {
        let cases = ["a_4b_asym_g32", "a_4b_sym_g32_act", "a_8b_asym_g64_act_static", "b_8b_sym_chan", "b_4b_asym_chan_act",
                     "b_4b_sym_tensor", "c_4b_asym_g128_act_static", "c_4b_sym_g128", "c_8b_asym_g32_act", "c_3b_asym_g100"]
        var layers: [String: (w: [Float], x: [Float], shape: [Int], samples: Int)] = [:]
        for name in cases {
            let f = try fixture("gptq_\(name)")
            let m = f.metadata
            let layer = m["layer"]!
            if layers[layer] == nil {
                let lf = try fixture("layer_\(layer)")
                let w = try lf.tensor("weight")
                layers[layer] = (w.floats(), try lf.tensor("calibration").floats(), w.shape, Int(lf.metadata["samples"]!)!)
            }
            let (w, x, shape, samples) = layers[layer]!
            let rows = shape[0], cols = shape[1]
            let acc = HessianAccumulator(columns: cols)
            // Feed the rows in two uneven chunks: accumulation must not depend on the split.
            let t = x.count / cols, split = t / 3
            try acc.add(Array(x[0..<(split * cols)]), count: split, samples: 0)
            try acc.add(Array(x[(split * cols)...]), count: t - split, samples: samples)
            let scheme = try QuantScheme(bits: Int(m["bits"]!)!, symmetric: m["sym"] == "1", groupSize: Int(m["group"]!)!)
            let cfg = GPTQConfig(scheme: scheme, actOrder: m["actorder"] == "1", staticGroups: m["static_groups"] == "1")
            let r = try GPTQ.quantize(weight: w, outFeatures: rows, inFeatures: cols, hessian: acc.hessian(), config: cfg, name: name)
            let codes = try f.tensor("codes")
            let ref = UnsafeBufferPointer(start: codes.pointer(as: UInt8.self), count: codes.count)
            var same = 0
            for i in 0..<ref.count where ref[i] == r.weight.codes[i] { same += 1 }
            let frac = Double(same) / Double(ref.count)
            XCTAssertGreaterThanOrEqual(frac, 0.999, "\(name): identical codes \(frac)")
            let refLoss = Double(m["loss"]!)!
            XCTAssertEqual(r.loss, refLoss, accuracy: 1e-3 * refLoss, "\(name): loss")
            XCTAssertEqual(r.weight.gIdx, try f.tensor("g_idx").int32s(), "\(name): g_idx")
            let refScales = try f.tensor("scales").floats(), refZeros = try f.tensor("zeros").int32s()
            // Reference tables are [out, ng] too.
            XCTAssertEqual(refScales.count, r.weight.scales.count, name)
            var zeroSame = 0, scaleClose = 0
            for i in refScales.indices {
                if refZeros[i] == r.weight.zeros[i] { zeroSame += 1 }
                if abs(refScales[i] - r.weight.scales[i]) <= 1e-5 * abs(refScales[i]) { scaleClose += 1 }
            }
            XCTAssertGreaterThanOrEqual(Double(zeroSame) / Double(refZeros.count), 0.99, "\(name): zeros")
            XCTAssertGreaterThanOrEqual(Double(scaleClose) / Double(refScales.count), 0.99, "\(name): scales")
            XCTAssertEqual(r.dampEscalations, 0)
            print("\(name): identical codes \(String(format: "%.5f", frac)), loss \(r.loss) vs \(refLoss)")
        }
    }

    func testDampingEscalation() throws {
        let f = try fixture("gptq_escalation")
        let w = try f.tensor("weight").floats(), h = try f.tensor("hessian").floats().map(Double.init)
        let scheme = try QuantScheme(bits: 4, symmetric: false)
        var logged: [String] = []
        let r = try GPTQ.quantize(weight: w, outFeatures: 8, inFeatures: 16, hessian: h, config: GPTQConfig(scheme: scheme),
                                  log: { logged.append($0) })
        XCTAssertEqual(r.dampEscalations, Int(f.metadata["escalations"]!)!)
        XCTAssertEqual(r.dampPercentUsed, Double(f.metadata["damp"]!)!, accuracy: 1e-12)
        XCTAssertEqual(logged.count, r.dampEscalations)
        XCTAssertEqual(r.weight.codes, Array(UnsafeBufferPointer(start: try f.tensor("codes").pointer(as: UInt8.self), count: 128)))
        let refLoss = Double(f.metadata["loss"]!)!
        XCTAssertEqual(r.loss, refLoss, accuracy: 1e-6 * refLoss)
        // With no escalation allowed it must fail with a clear error.
        var cfg = GPTQConfig(scheme: scheme); cfg.maxDampEscalations = 0
        XCTAssertThrowsError(try GPTQ.quantize(weight: w, outFeatures: 8, inFeatures: 16, hessian: h, config: cfg)) {
            XCTAssertTrue("\($0)".contains("not positive definite"))
        }
    }

    func testRTNMatchesNumpyReference() throws {
        let f = try fixture("rtn")
        let w = try f.tensor("weight").floats()
        let metrics = try JSONSerialization.jsonObject(with: f.metadata["metrics"]!.data(using: .utf8)!) as! [String: [Double]]
        for (tag, bits, sym, group, mse) in [("4_asym_g32", 4, false, 32, false), ("4_sym_chan", 4, true, -1, false),
                                             ("8_asym_tensor", 8, false, 0, false), ("2_asym_g64", 2, false, 64, false),
                                             ("3_sym_g50", 3, true, 50, false), ("4_asym_g32_mse", 4, false, 32, true),
                                             ("4_sym_chan_mse", 4, true, -1, true)] {
            let scheme = try QuantScheme(bits: bits, symmetric: sym, groupSize: group, mseSearch: mse)
            let q = try RTN.quantize(w, outFeatures: 48, inFeatures: 200, scheme: scheme)
            let codes = try f.tensor("\(tag).codes")
            let ref = Array(UnsafeBufferPointer(start: codes.pointer(as: UInt8.self), count: codes.count))
            let same = zip(ref, q.codes).filter { $0 == $1 }.count
            // Without the clipping search the arithmetic is identical (float64, half-to-even): all codes equal.
            XCTAssertGreaterThanOrEqual(Double(same) / Double(ref.count), mse ? 0.999 : 1.0, tag)
            XCTAssertEqual(q.zeros, try f.tensor("\(tag).zeros").int32s(), tag)
            XCTAssertLessThanOrEqual(maxAbsDiff(q.scales, try f.tensor("\(tag).scales").floats()), 1e-7, tag)
            // Error metrics against numpy's on the same pair of tensors.
            let deq = try f.tensor("\(tag).deq").floats()
            let e = ErrorMetrics(reference: w, approximation: deq)
            let m = metrics[tag]!
            XCTAssertEqual(e.mse, m[0], accuracy: 1e-9 * m[0], tag)
            XCTAssertEqual(e.cosine, m[1], accuracy: 1e-12, tag)
            XCTAssertEqual(e.sqnrDB, m[2], accuracy: 1e-9, tag)
            XCTAssertEqual(e.psnrDB, m[3], accuracy: 1e-9, tag)
            // Our own dequantization equals numpy's.
            if !mse { XCTAssertLessThanOrEqual(maxAbsDiff(q.dequantized(), deq), 1e-7, tag) }
        }
    }

    func testQuantizerEdgeCases() throws {
        // Range always includes 0; an all-zero group becomes [-1, 1]; half-to-even rounding.
        let s4 = try QuantScheme(bits: 4, symmetric: false)
        var x: [Double] = [0.5, 1.5, 2.5]
        var p = x.withUnsafeBufferPointer { Quantizer.params($0.baseAddress!, count: 3, scheme: s4) }
        XCTAssertEqual(p.scale, 2.5 / 15, accuracy: 1e-15)
        XCTAssertEqual(p.zero, 0)
        x = [0, 0, 0]
        p = x.withUnsafeBufferPointer { Quantizer.params($0.baseAddress!, count: 3, scheme: s4) }
        XCTAssertEqual(p.scale, 2.0 / 15, accuracy: 1e-15)
        XCTAssertEqual(p.zero, 8)  // round(7.5) = 8 (even)
        XCTAssertEqual(Quantizer.code(2.5, ScaleZero(scale: 1, zero: 0), maxq: 15), 2)
        XCTAssertEqual(Quantizer.code(3.5, ScaleZero(scale: 1, zero: 0), maxq: 15), 4)
        XCTAssertEqual(Quantizer.code(-3, ScaleZero(scale: 1, zero: 0), maxq: 15), 0)
        XCTAssertEqual(Quantizer.code(99, ScaleZero(scale: 1, zero: 0), maxq: 15), 15)
        // Bad schemes and input.
        XCTAssertThrowsError(try QuantScheme(bits: 5))
        // A group wider than the row is one short group (AutoGPTQ: ceil(in/g) = 1), same as per-channel.
        let wide = try RTN.quantize([1, 2, 3, 4], outFeatures: 2, inFeatures: 2, scheme: try QuantScheme(bits: 4, groupSize: 3))
        let chan = try RTN.quantize([1, 2, 3, 4], outFeatures: 2, inFeatures: 2, scheme: try QuantScheme(bits: 4, groupSize: -1))
        XCTAssertEqual(wide.codes, chan.codes)
        XCTAssertEqual(wide.gIdx, [0, 0])
        XCTAssertThrowsError(try RTN.quantize([1, 2, 3], outFeatures: 2, inFeatures: 2, scheme: s4))
        XCTAssertThrowsError(try QuantScheme(bits: 4, groupSize: -2))
        XCTAssertThrowsError(try RTN.quantize([1, .nan, 3, 4], outFeatures: 2, inFeatures: 2, scheme: s4)) {
            XCTAssertTrue("\($0)".contains("non-finite"))
        }
        let acc = HessianAccumulator(columns: 2)
        XCTAssertThrowsError(try acc.add([1, .infinity], count: 1, samples: 1))
    }

    /// HessianAccumulator against plain Double sums: 2/samples * sum x x^T, mirrored to the full matrix, over two
    /// add() calls; column counts around the tile sizes, row counts crossing the 256-row blocks.
    func testHessianAccumulatorAgainstScalar() throws {
        var rng = SplitMix64(seed: 3)
        for (cols, rows) in [(37, 300), (1, 5), (4, 1), (12, 7), (13, 257), (130, 64), (200, 513)] {
            let x = rng.floats(rows * cols), x2 = rng.floats(3 * cols)
            let acc = HessianAccumulator(columns: cols)
            try acc.add(x, count: rows, samples: 6)
            try acc.add(x2, count: 3, samples: 1)
            XCTAssertEqual(acc.samples, 7)
            XCTAssertEqual(acc.rows, rows + 3)
            let h = acc.hessian()
            var worst = 0.0
            for i in 0..<cols {
                for j in 0..<cols {
                    var s = 0.0
                    for r in 0..<rows { s += Double(x[r * cols + i]) * Double(x[r * cols + j]) }
                    for r in 0..<3 { s += Double(x2[r * cols + i]) * Double(x2[r * cols + j]) }
                    worst = max(worst, abs(h[i * cols + j] - 2.0 / 7 * s))
                }
            }
            XCTAssertLessThan(worst, 1e-10, "cols \(cols) rows \(rows)")
        }
    }
}
