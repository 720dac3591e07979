import Foundation
import TensorCore
import TestSupport
import XCTest
import Quantization

/// The AutoGPTQ v1 layout: directories packed by the independent Tools/pack_autogptq.py load to exactly the
/// values it packed, and QuantKit's writer produces the same bytes; write -> read round trips; bad input fails.
final class CheckpointTests: XCTestCase {
    let prefixes = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"]

    func testReadsPythonPackedCheckpointsAndPacksIdentically() throws {
        for name in ["b4_g32_act", "b8_chan", "b3_g32", "b2_g16_act"] {
            let dir = Repo.path("Tests/QuantizationTests/Fixtures/autogptq/\(name)")
            XCTAssertTrue(GPTQCheckpoint.isGPTQ(dir))
            let (cfg, _) = try GPTQCheckpoint.readConfig(dir)
            let ckpt = try SafetensorsCheckpoint(path: dir)
            let truth = try SafetensorsFile(path: "\(dir)/truth.safetensors")
            XCTAssertEqual(Set(GPTQCheckpoint.quantizedPrefixes(ckpt)), Set(prefixes))
            for prefix in prefixes {
                let q = try GPTQPacking.readLayer(ckpt, prefix: prefix, bits: cfg.bits, groupSize: cfg.groupSize, symmetric: cfg.sym)
                let codes = try truth.tensor("\(prefix).codes")
                XCTAssertEqual(q.codes, Array(UnsafeBufferPointer(start: codes.pointer(as: UInt8.self), count: codes.count)), "\(name) \(prefix) codes")
                XCTAssertEqual(q.scales, try truth.tensor("\(prefix).scales").floats(), "\(name) \(prefix) scales")
                XCTAssertEqual(q.zeros, try truth.tensor("\(prefix).zeros").int32s(), "\(name) \(prefix) zeros")
                XCTAssertEqual(q.gIdx, try truth.tensor("\(prefix).g_idx").int32s(), "\(name) \(prefix) g_idx")
                // Our packer writes byte-identical tensors.
                for (tname, t) in try GPTQPacking.tensors(prefix: prefix, q) {
                    let ref = try ckpt.tensor(tname)
                    XCTAssertEqual(t.shape, ref.shape, tname)
                    XCTAssertEqual(t.dtype, ref.dtype, tname)
                    XCTAssertEqual(memcmp(t.raw, ref.raw, t.byteCount), 0, "\(name) \(tname) bytes differ")
                }
            }
        }
    }

    func testWriteReadRoundTrip() throws {
        var rng = SplitMix64(seed: 11)
        let w = rng.floats(40 * 96, in: -0.2...0.2)
        let q = try RTN.quantize(w, outFeatures: 40, inFeatures: 96, scheme: try QuantScheme(bits: 4, symmetric: false, groupSize: 32, minZero: 1))
        let w8 = try RTN.quantize(w, outFeatures: 96, inFeatures: 40, scheme: try QuantScheme(bits: 8, symmetric: true))
        let dir = Repo.tempDirectory("gptqrt") + "/out"
        let cfg = GPTQQuantizeConfig(bits: 4, groupSize: 32, descAct: false, sym: false, overrides: ["b": (8, -1)])
        let norm = Tensor(shape: [4], floats: [1, 2, 3, 4])
        try GPTQCheckpoint.write(to: dir, floatTensors: [("norm.weight", norm)], layers: [("a", q), ("b", w8)], config: cfg,
                                 metadata: ["layers": ["a": ["loss": 1.5]]], files: ["config.json": Data("{}".utf8)])
        let (back, extra) = try GPTQCheckpoint.readConfig(dir)
        XCTAssertEqual(back, cfg)
        XCTAssertNotNil(extra["layers"])
        let ckpt = try SafetensorsCheckpoint(path: dir)
        XCTAssertEqual(try ckpt.tensor("norm.weight").floats(), [1, 2, 3, 4])
        for (prefix, orig) in [("a", q), ("b", w8)] {
            let s = back.settings(for: prefix)
            let r = try GPTQPacking.readLayer(ckpt, prefix: prefix, bits: s.bits, groupSize: s.groupSize)
            XCTAssertEqual(r.codes, orig.codes)
            XCTAssertEqual(r.zeros, orig.zeros)
            XCTAssertEqual(r.gIdx, orig.gIdx)
            // Scales are stored as float16.
            XCTAssertEqual(r.scales, orig.scales.map { Float(Float16($0)) })
        }
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(dir)/config.json"))
    }

    func testBadInput() throws {
        let dir = Repo.path("Tests/QuantizationTests/Fixtures/autogptq/b4_g32_act")
        let ckpt = try SafetensorsCheckpoint(path: dir)
        let p = "model.layers.0.mlp.down_proj"
        // Wrong bits for the stored shapes.
        XCTAssertThrowsError(try GPTQPacking.readLayer(ckpt, prefix: p, bits: 8, groupSize: 32)) { XCTAssertTrue("\($0)".contains("qweight"), "\($0)") }
        // Wrong group size -> scales shape mismatch.
        XCTAssertThrowsError(try GPTQPacking.readLayer(ckpt, prefix: p, bits: 4, groupSize: 64)) { XCTAssertTrue("\($0)".contains("scales"), "\($0)") }
        // Model expects another shape.
        XCTAssertThrowsError(try GPTQPacking.readLayer(ckpt, prefix: p, bits: 4, groupSize: 32, inFeatures: 160)) { XCTAssertTrue("\($0)".contains(p)) }
        XCTAssertThrowsError(try GPTQPacking.readLayer(ckpt, prefix: "nope", bits: 4, groupSize: 32)) { XCTAssertTrue("\($0)".contains("missing")) }
        XCTAssertThrowsError(try GPTQPacking.readLayer(ckpt, prefix: p, bits: 5, groupSize: 32)) { XCTAssertTrue("\($0)".contains("not supported")) }
        // Zero point 0 cannot be stored in v1.
        let q = QuantizedWeight(outFeatures: 1, inFeatures: 8, bits: 4, symmetric: false, groupSize: -1, codes: [UInt8](repeating: 1, count: 8),
                                scales: [0.1], zeros: [0], gIdx: [Int32](repeating: 0, count: 8))
        XCTAssertThrowsError(try GPTQPacking.packZeros(q, name: "x")) { XCTAssertTrue("\($0)".contains("zero point 0")) }
        // Bad quantize_config.json.
        let tmp = Repo.tempDirectory("gptqbad")
        try Data(#"{"bits": 5, "group_size": 128}"#.utf8).write(to: URL(fileURLWithPath: "\(tmp)/quantize_config.json"))
        XCTAssertThrowsError(try GPTQCheckpoint.readConfig(tmp)) { XCTAssertTrue("\($0)".contains("bits 5")) }
        try Data(#"{"bits": 4, "group_size": 128, "checkpoint_format": "gptq_v2"}"#.utf8).write(to: URL(fileURLWithPath: "\(tmp)/quantize_config.json"))
        XCTAssertThrowsError(try GPTQCheckpoint.readConfig(tmp)) { XCTAssertTrue("\($0)".contains("gptq_v2")) }
        // Non-finite scale.
        var t = [(String, Tensor)]()
        let good = try GPTQPacking.tensors(prefix: "m", QuantizedWeight(outFeatures: 8, inFeatures: 8, bits: 8, symmetric: true, groupSize: -1,
                                                                         codes: [UInt8](repeating: 3, count: 64), scales: [Float](repeating: 1, count: 8),
                                                                         zeros: [Int32](repeating: 128, count: 8), gIdx: [Int32](repeating: 0, count: 8)))
        for (n, x) in good { t.append(n.hasSuffix("scales") ? (n, Tensor(shape: [1, 8], float16: [1, 1, .nan, 1, 1, 1, 1, 1])) : (n, x)) }
        try SafetensorsWriter.write(t, to: "\(tmp)/model.safetensors")
        XCTAssertThrowsError(try GPTQPacking.readLayer(try SafetensorsCheckpoint(path: tmp), prefix: "m", bits: 8, groupSize: -1)) {
            XCTAssertTrue("\($0)".contains("non-finite"))
        }
    }
}
