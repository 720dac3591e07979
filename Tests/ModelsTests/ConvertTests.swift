import Foundation
import Models
import TensorCore
import TestSupport
import XCTest

final class ConvertTests: XCTestCase {
    /// llama2.c -> HF directory -> load gives bit-identical logits; f16 export gives close ones.
    func testHFExportLoadsBackToIdenticalLogits() throws {
        let path = Repo.path("Models/stories260K/stories260K.bin")
        let (cfg, weights) = try Llama2C.load(path: path)
        let original = try LlamaModel(config: cfg, source: weights)
        let dir = Repo.tempDirectory("convert") + "/hf"
        try HFExport.write(config: cfg, source: weights, to: dir,
                           copyFiles: [(Repo.path("Tokenizers/tok512/tok512.model"), "tokenizer.model")])
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/tokenizer.model"))
        let back = try LlamaModel.load(path: dir)
        XCTAssertEqual(back.config, original.config)
        let toks: [Int32] = [1, 403, 407, 261, 378, 383, 286, 261, 376, 268]
        XCTAssertEqual(try back.logits(toks), try original.logits(toks))

        let dir16 = Repo.tempDirectory("convert") + "/hf16"
        try HFExport.write(config: cfg, source: weights, dtype: .f16, to: dir16)
        let half = try LlamaModel.load(path: dir16)
        XCTAssertEqual(half.embedding.dtype, .f16)
        let d = maxAbsDiff(try half.logits(toks), try original.logits(toks))
        XCTAssertGreaterThan(d, 0)
        XCTAssertLessThan(d, 0.05)
    }

    /// Writing llama2.c format from HF weights and reading it back returns the same tensors (permutation inverse).
    func testLlama2CWriteRoundTrip() throws {
        let (cfg, weights) = try Llama2C.load(path: Repo.path("Models/stories260K/stories260K.bin"))
        let out = Repo.tempDirectory("l2c") + "/m.bin"
        try Llama2C.write(config: cfg, weights: weights, to: out)
        let (cfg2, w2) = try Llama2C.load(path: out)
        XCTAssertEqual(cfg, cfg2)
        for n in HFExport.tensorNames(cfg) { XCTAssertEqual(try weights.tensor(n).floats(), try w2.tensor(n).floats(), n) }
        let size = try FileManager.default.attributesOfItem(atPath: out)[.size] as! Int
        XCTAssertEqual(size, 1056540)  // same size as the shipped file
    }

    func testTruncatedLlama2CFileIsRejected() throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: Repo.path("Models/stories260K/stories260K.bin")))
        let out = Repo.tempDirectory("l2c") + "/short.bin"
        try data.prefix(5000).write(to: URL(fileURLWithPath: out))
        XCTAssertThrowsError(try LlamaModel.load(path: out)) { XCTAssertTrue("\($0)".contains("the header implies"), "\($0)") }
    }
}
