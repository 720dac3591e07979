import Foundation
import Models
import TensorCore
import TestSupport
import XCTest
import Datasets
import Quantization

/// Model-level GPTQ/RTN on a tiny random Llama (dim 64, hidden 172 as in stories260K): write -> read gives the
/// same logits, GPTQ reconstructs the float model's outputs better than RTN, overrides/skips apply.
final class ModelQuantizationTests: XCTestCase {
    func tinyModel(seed: UInt64 = 5) throws -> LlamaModel { try TinyLlama.model(seed: seed) }
    func windows(_ n: Int, _ len: Int, seed: UInt64) -> [[Int32]] { TinyLlama.windows(n, len, seed: seed) }

    func mse(_ a: [Float], _ b: [Float]) -> Double { zip(a, b).map { Double($0 - $1) * Double($0 - $1) }.reduce(0, +) / Double(a.count) }

    func testGPTQRoundTripAndBeatsRTN() throws {
        let float = try tinyModel()
        let calib = windows(16, 48, seed: 1), heldOut = windows(4, 48, seed: 2)
        let ref = try heldOut.map { try float.logits($0) }
        var errs: [QuantMethod: Double] = [:]
        for method in [QuantMethod.gptq, .rtn] {
            let model = try tinyModel()
            let opts = ModelQuantizationOptions(method: method, scheme: try QuantScheme(bits: 4, symmetric: false, groupSize: 32, minZero: 1),
                                                actOrder: method == .gptq)
            let r = try ModelQuantizer.quantize(model: model, windows: calib, options: opts)
            XCTAssertEqual(r.layers.count, 14)
            if method == .gptq { XCTAssertTrue(r.reports.allSatisfy { ($0.gptqLoss ?? -1) >= 0 }) }
            let inMemory = try heldOut.map { try model.logits($0) }
            errs[method] = zip(inMemory, ref).map { mse($0, $1) }.reduce(0, +)
            // Write, read back through the quantized backend: identical logits.
            let dir = Repo.tempDirectory("mq") + "/q"
            try ModelQuantizer.write(model: model, result: r, options: opts, to: dir, metadata: ["method": method.rawValue],
                                     fingerprint: CalibrationFingerprint(text: "some calibration text"))
            XCTAssertTrue(GPTQCheckpoint.isGPTQ(dir))
            let loaded = try LlamaModel.load(path: dir, backend: try QuantizedLinearBackend(directory: dir))
            for (w, l) in zip(heldOut, inMemory) { XCTAssertEqual(try loaded.logits(w), l, "\(method) round trip") }
            XCTAssertNotNil(try CalibrationFingerprint.read(checkpoint: dir))
        }
        print("held-out logits MSE vs float: gptq \(errs[.gptq]!) rtn \(errs[.rtn]!)")
        XCTAssertLessThan(errs[.gptq]!, errs[.rtn]!)
    }

    func testOverridesAndSkips() throws {
        let model = try tinyModel()
        var opts = ModelQuantizationOptions(method: .gptq, scheme: try QuantScheme(bits: 4, symmetric: true, groupSize: 32))
        opts.overrides = [("down_proj", 8)]
        opts.skip = ["layers.0."]
        let r = try ModelQuantizer.quantize(model: model, windows: windows(4, 32, seed: 3), options: opts)
        XCTAssertEqual(r.layers.map(\.0).filter { $0.contains("layers.0.") }, [])
        XCTAssertEqual(r.layers.count, 7)
        for (name, q) in r.layers { XCTAssertEqual(q.bits, name.hasSuffix("down_proj") ? 8 : 4, name) }
        let dir = Repo.tempDirectory("mq2") + "/q"
        try ModelQuantizer.write(model: model, result: r, options: opts, to: dir, metadata: [:], fingerprint: nil)
        let loaded = try LlamaModel.load(path: dir, backend: try QuantizedLinearBackend(directory: dir))
        let toks: [Int32] = [1, 5, 9, 30, 2, 7]
        XCTAssertEqual(try loaded.logits(toks), try model.logits(toks))
        XCTAssertTrue(loaded.blocks[0].qProj is DenseLinear)
        XCTAssertTrue(loaded.blocks[1].downProj is QuantizedLinear)
    }

    func testCalibrationWindowsAndFingerprint() throws {
        let toks = (0..<100).map { Int32($0) }
        let a = try CalibrationWindows.sample(tokens: toks, samples: 5, seqlen: 10, seed: 42)
        XCTAssertEqual(a, try CalibrationWindows.sample(tokens: toks, samples: 5, seqlen: 10, seed: 42))
        XCTAssertNotEqual(a, try CalibrationWindows.sample(tokens: toks, samples: 5, seqlen: 10, seed: 43))
        for w in a { XCTAssertEqual(w.count, 10); XCTAssertEqual(w.last! - w.first!, 9) }
        XCTAssertThrowsError(try CalibrationWindows.sample(tokens: Array(toks[0..<10]), samples: 1, seqlen: 10, seed: 1)) {
            XCTAssertTrue("\($0)".contains("too short"))
        }
        // Overlap: the fingerprint's own text ~1, disjoint text ~0, half-overlapping ~0.5.
        let wiki = try readText(Repo.path("Corpora/wikitext-2-raw/wiki.test.raw.zst"))
        let words = wiki.split(separator: " ")
        let first = words[0..<60000].joined(separator: " "), second = words[60000..<120000].joined(separator: " ")
        let fp = CalibrationFingerprint(text: first)
        XCTAssertGreaterThan(fp.overlap(with: first), 0.99)
        XCTAssertLessThan(fp.overlap(with: second), 0.03)
        let half = fp.overlap(with: words[30000..<90000].joined(separator: " "))
        XCTAssertEqual(half, 0.5, accuracy: 0.08)
        XCTAssertEqual(fp.sha256, Digest.sha256(Data(first.utf8)))
        XCTAssertEqual(fp.overlap(with: "too short"), 0)
    }
}
