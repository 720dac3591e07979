import Foundation
import Models
import TensorCore
import TestSupport
import XCTest

final class NonFiniteWeightTests: XCTestCase {
    static let stories = Repo.path("Models/stories260K/stories260K.bin")

    func message(_ body: () throws -> Any) -> String {
        do { _ = try body(); return "no error" } catch { return "\(error)" }
    }

    func testNaNOrInfWeightIsRefusedNamingTensorAndFile() throws {
        for bad in [Float.nan, Float.infinity, -Float.infinity] {
            let (cfg, weights) = try Llama2C.load(path: Self.stories)
            let name = "model.layers.2.mlp.down_proj.weight"
            let t = try weights.tensor(name)
            var f = t.floats()
            f[f.count - 1] = bad
            weights.set(name, Tensor(shape: t.shape, floats: f))
            let m = message { try LlamaModel(config: cfg, source: weights, name: "m") }
            XCTAssertTrue(m.contains(Self.stories) && m.contains(name) && m.contains("non-finite"), m)
        }
    }

    func testInfInF16SafetensorsIsRefusedNamingTheShardFile() throws {
        let (cfg, weights) = try Llama2C.load(path: Self.stories)
        let name = "model.layers.0.self_attn.v_proj.weight"
        let t = try weights.tensor(name)
        var f = t.floats()
        f[5] = 1e6  // overflows Float16: +Inf once stored as F16
        weights.set(name, Tensor(shape: t.shape, floats: f))
        let dir = Repo.tempDirectory("infst") + "/hf"
        try HFExport.write(config: cfg, source: weights, dtype: .f16, to: dir, copyFiles: [])
        let m = message { try LlamaModel.load(path: dir) }
        XCTAssertTrue(m.contains(dir + "/model.safetensors") && m.contains(name) && m.contains("+Inf at element 5"), m)
    }

    func testNaNInLlama2CFileIsRefusedOnLoad() throws {
        var d = try Data(contentsOf: URL(fileURLWithPath: Self.stories))
        var nan = Float.nan.bitPattern.littleEndian
        d.replaceSubrange((28 + 4 * 100)..<(28 + 4 * 101), with: Data(bytes: &nan, count: 4))
        let path = Repo.tempDirectory("nanbin") + "/nan.bin"
        try d.write(to: URL(fileURLWithPath: path))
        let m = message { try LlamaModel.load(path: path) }
        XCTAssertTrue(m.contains(path) && m.contains("model.embed_tokens.weight") && m.contains("element 100"), m)
    }

    func testNegativeDimensionIsAnInvalidModelHeaderNotATokenizer() throws {
        var d = try Data(contentsOf: URL(fileURLWithPath: Self.stories))
        var neg = Int32(-64).littleEndian
        d.replaceSubrange(0..<4, with: Data(bytes: &neg, count: 4))
        let path = Repo.tempDirectory("negdim") + "/neg.bin"
        try d.write(to: URL(fileURLWithPath: path))
        XCTAssertFalse(Llama2C.isTokenizerLayout(try MappedFile(path: path)))
        let m = message { try LlamaModel.load(path: path) }
        XCTAssertTrue(m.contains("invalid llama2.c model header") && m.contains("field dim = -64"), m)
        XCTAssertFalse(Llama2C.isTokenizerLayout(try MappedFile(path: Self.stories)))
        XCTAssertTrue(Llama2C.isTokenizerLayout(try MappedFile(path: Repo.path("Tokenizers/tok512/tok512.bin"))))
    }

    func testFiniteCheckFindsEveryTypeAndPosition() {
        for n in [1, 4095, 4096, 4097, 10_000] {
            var f = [Float](repeating: 1, count: n)
            XCTAssertNil(FiniteCheck.firstNonFinite(Tensor(shape: [n], floats: f)))
            f[n - 1] = .nan
            XCTAssertEqual(FiniteCheck.firstNonFinite(Tensor(shape: [n], floats: f)), n - 1)
            XCTAssertEqual(FiniteCheck.firstNonFinite(Tensor(shape: [n], floats: f).converted(to: .f16)), n - 1)
            XCTAssertEqual(FiniteCheck.firstNonFinite(Tensor(shape: [n], floats: f).converted(to: .bf16)), n - 1)
        }
        // The largest finite values are not flagged.
        let big = Tensor(shape: [3], floats: [Float.greatestFiniteMagnitude, -Float.greatestFiniteMagnitude, 0])
        XCTAssertNil(FiniteCheck.firstNonFinite(big))
        XCTAssertNil(FiniteCheck.firstNonFinite(Tensor(shape: [2], float16: [Float16.greatestFiniteMagnitude, -65504])))
        XCTAssertEqual(FiniteCheck.firstNonFinite(Tensor(shape: [2], float16: [1, -Float16.infinity])), 1)
    }
}
