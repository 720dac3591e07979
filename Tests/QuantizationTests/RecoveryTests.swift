import Foundation
import Kernels
import Models
import TensorCore
import TestSupport
import XCTest
@testable import Quantization

/// AWQ, SmoothQuant and rotation against the float64 numpy references of Tools/reference_recovery.py (fixtures in
/// Fixtures/recovery: two tiny HF Llamas, one with grouped-query heads and an untied head, one with plain heads and
/// a tied head), plus the rotation's invariance on the shipped stories260K.
final class RecoveryTests: XCTestCase {
    let dir = Repo.path("Tests/QuantizationTests/Fixtures/recovery")

    func json(_ name: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/" + name))) as! [String: Any]
    }

    func model(_ name: String) throws -> LlamaModel {
        let m = try LlamaModel.load(path: dir + "/" + name)
        m.threads = 2
        return m
    }

    func calibration() throws -> [[Int32]] {
        (try json("calibration.json")["windows"] as! [[Int]]).map { $0.map(Int32.init) }
    }

    /// Float64 values stored as I64 bit patterns.
    func doubles(_ t: Tensor) -> [Double] {
        let p = t.pointer(as: Int64.self)
        return (0..<t.count).map { Double(bitPattern: UInt64(bitPattern: p[$0])) }
    }

    func assertClose(_ a: [Double], _ b: [Double], rel: Double, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, what, file: file, line: line)
        let scale = max(b.map(abs).max() ?? 0, 1e-30)
        let worst = zip(a, b).map { abs($0 - $1) }.max() ?? 0
        XCTAssertLessThanOrEqual(worst / scale, rel, "\(what): max |diff| \(worst) vs max |ref| \(scale)", file: file, line: line)
    }

    func logits(_ m: LlamaModel, _ tokens: [Int32]) -> [Float] {
        let cache = m.makeCache(capacity: tokens.count), state = m.makeState(maxRows: tokens.count)
        let p = m.forward(tokens, cache: cache, state: state)
        return Array(UnsafeBufferPointer(start: p, count: tokens.count * m.config.vocabSize))
    }

    // MARK: - Rotation

    /// Fold + Q + T with the reference's matrices gives its rotated weights (1e-5 of each tensor's largest entry),
    /// for an untied and a tied head.
    func testRotationMatchesNumpyReference() throws {
        for name in ["gqa", "mha"] {
            let m = try model(name)
            let ref = try SafetensorsCheckpoint(path: dir + "/rotation_\(name).safetensors")
            let w = try LlamaFloatWeights(model: m)
            try Rotation.apply(to: w, q: doubles(try ref.tensor("rotation.Q.f64bits")), t: doubles(try ref.tensor("rotation.T.f64bits")))
            XCTAssertFalse(w.config.tieWordEmbeddings, "\(name): the head is untied")
            XCTAssertEqual(w.config.downProjInputHadamard, true)
            for n in HFExport.tensorNames(w.config) {
                assertClose(w.values(n), try ref.tensor(n).floats().map(Double.init), rel: 1e-5, "\(name) \(n)")
            }
        }
    }

    /// The rotated float model (randomized Hadamard Q, online Hadamard before down_proj) computes the original's
    /// logits to 1e-4, on the fixtures and on stories260K; the rotation is not the identity.
    func testRotatedFloatModelKeepsLogits() throws {
        let stories = try LlamaModel.load(path: Repo.path("Models/stories260K/stories260K.bin"))
        for (label, m) in [("gqa", try model("gqa")), ("mha", try model("mha")), ("stories260K", stories)] {
            let w = try LlamaFloatWeights(model: m)
            let settings = try Rotation.apply(to: w, seed: 3)
            XCTAssertTrue(settings.onlineHadamard, label)
            let r = try w.makeModel()
            var rng = SplitMix64(seed: 9)
            let tokens = (0..<40).map { _ in Int32(rng.index(m.config.vocabSize)) }
            let a = logits(m, tokens), b = logits(r, tokens)
            let worst = zip(a, b).map { abs($0 - $1) }.max()!
            XCTAssertLessThan(worst, 1e-4, "\(label): rotated logits differ by \(worst)")
            let e0 = try m.source.tensor("model.embed_tokens.weight").floats(), e1 = w.values("model.embed_tokens.weight")
            XCTAssertGreaterThan(zip(e0, e1).map { abs(Double($0) - $1) }.max()!, 1e-3, "\(label): embedding rotated")
        }
    }

    // MARK: - SmoothQuant

    /// max |x| statistics and the folded weights for alpha 0.5 and 0.85 equal the reference's.
    func testSmoothQuantMatchesNumpyReference() throws {
        for name in ["gqa", "mha"] {
            let m = try model(name)
            let ref = try json("smoothquant_\(name).json")
            let stats = try SmoothQuant.statistics(model: m, windows: try calibration())
            for alpha in ["0.5", "0.85"] {
                let r = (ref["results"] as! [String: Any])[alpha] as! [String: Any]
                let layers = r["layers"] as! [[String: Any]]
                for (l, layer) in layers.enumerated() {
                    let a = (layer["input_layernorm"] as! [String: Any])["a"] as! [Double]
                    let b = (layer["post_attention_layernorm"] as! [String: Any])["a"] as! [Double]
                    assertClose(stats.attention[l], a, rel: 1e-5, "\(name) layer \(l) attention a")
                    assertClose(stats.mlp[l], b, rel: 1e-5, "\(name) layer \(l) mlp a")
                }
                let w = try LlamaFloatWeights(model: m)
                let scales = try SmoothQuant.apply(to: w, statistics: stats, alpha: Double(alpha)!)
                for (l, layer) in layers.enumerated() {
                    assertClose(scales[l].attention, (layer["input_layernorm"] as! [String: Any])["s"] as! [Double], rel: 1e-4,
                                "\(name) layer \(l) attention s")
                }
                let weights = try SafetensorsCheckpoint(path: dir + "/" + (r["file"] as! String))
                for n in weights.names {
                    assertClose(w.values(n), try weights.tensor(n).floats().map(Double.init), rel: 1e-4, "\(name) a\(alpha) \(n)")
                }
            }
        }
    }

    // MARK: - AWQ

    /// Fed the reference's exact scale grids (the symmetric quantizer puts a group's extreme on a rounding tie, so
    /// Float32 statistics would move codes), the search reproduces the reference's losses (1e-4 relative) and
    /// choices, and the scaled + clipped weights equal the reference's.
    func testAWQMatchesNumpyReference() throws {
        for name in ["gqa", "mha"] {
            let m = try model(name)
            let ref = try json("awq_\(name).json")
            let tensors = try SafetensorsCheckpoint(path: dir + "/awq_\(name).safetensors")
            let sch = ref["scheme"] as! [String: Any]
            let scheme = try QuantScheme(bits: sch["bits"] as! Int, symmetric: sch["sym"] as! Bool, groupSize: sch["group"] as! Int,
                                         minZero: sch["min_zero"] as? Int ?? 0)
            var grids: [String: [[Double]]] = [:]
            for n in tensors.names where n.hasSuffix(".s_grid") {
                let parts = n.split(separator: ".")  // awq.layers.<l>.<group>.s_grid
                let t = try tensors.tensor(n), flat = doubles(t)
                grids["\(parts[2]).\(parts[3])"] = (0..<t.shape[0]).map { Array(flat[($0 * t.shape[1])..<(($0 + 1) * t.shape[1])]) }
            }
            let w = try LlamaFloatWeights(model: m)
            let report = try AWQ.apply(to: w, model: m, calibration: try calibration(), config: AWQConfig(scheme: scheme),
                                       scaleGrids: grids)
            let layers = ref["layers"] as! [[String: Any]]
            for g in report.groups {
                let r = (layers[g.block]["groups"] as! [String: Any])[g.group] as! [String: Any]
                assertClose(g.losses, r["losses"] as! [Double], rel: 1e-4, "\(name) \(g.block).\(g.group) losses")
                XCTAssertEqual(Int((g.alpha * 20).rounded()), r["best"] as! Int, "\(name) \(g.block).\(g.group) best alpha")
            }
            XCTAssertEqual(report.groups.filter { $0.group == "vo" }.count, name == "mha" ? 2 : 0, "v->o only without GQA")
            for c in report.clips {
                let parts = c.module.split(separator: ".")  // model.layers.<l>.<block>.<proj>
                let r = (layers[Int(parts[2])!]["clip"] as! [String: Any])[String(parts[4])] as! [String: Any]
                assertClose(c.bounds, (r["max_val"] as! [[Double]]).flatMap { $0 }, rel: 1e-5, "\(name) \(c.module) clip bounds")
            }
            for n in tensors.names where !n.hasPrefix("awq.") {
                assertClose(w.values(n), try tensors.tensor(n).floats().map(Double.init), rel: 1e-5, "\(name) \(n)")
            }
        }
    }

    /// On the plain-head model the search from QuantKit's own Float32 statistics picks the reference's exponents,
    /// and the transformed float model keeps its logits (scales folded exactly, only clipping changes weights).
    func testAWQFromOwnStatistics() throws {
        let m = try model("mha")
        let ref = try json("awq_mha.json")
        let layers = ref["layers"] as! [[String: Any]]
        let scheme = try QuantScheme(bits: 4, symmetric: false, groupSize: 16, minZero: 1)
        var config = AWQConfig(scheme: scheme)
        config.clip = false
        let w = try LlamaFloatWeights(model: m)
        let report = try AWQ.apply(to: w, model: m, calibration: try calibration(), config: config)
        for g in report.groups {
            let r = (layers[g.block]["groups"] as! [String: Any])[g.group] as! [String: Any]
            XCTAssertEqual(Int((g.alpha * 20).rounded()), r["best"] as! Int, "\(g.block).\(g.group)")
        }
        let tokens: [Int32] = [3, 17, 40, 2, 9, 33, 61, 5]
        let a = logits(m, tokens), b = logits(try w.makeModel(), tokens)
        XCTAssertLessThan(zip(a, b).map { abs($0 - $1) }.max()!, 1e-4)
    }
}
