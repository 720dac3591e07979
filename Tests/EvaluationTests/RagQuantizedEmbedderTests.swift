import Foundation
import Models
import TensorCore
import TestSupport
import XCTest
@testable import Evaluation

/// Quantized embedders stay close to the float one: per-text cosine bounds on fixture texts (token ids from the
/// Python tokenizers library, Tests/ModelsTests/Fixtures/bert_minilm.json.zst).
final class RagQuantizedEmbedderTests: XCTestCase {
    func testRTNEmbeddersCloseToFloat() throws {
        guard let dir = EmbedderLocator.findMiniLM() else { return XCTFail("all-MiniLM-L6-v2 not found: run Tools/setup.sh") }
        let meta = try JSONSerialization.jsonObject(with: readMaybeCompressed(Repo.path("Tests/ModelsTests/Fixtures/bert_minilm.json.zst"))) as! [String: Any]
        let ids = (meta["ids"] as! [[Int]]).suffix(104).prefix(12).map { $0.map(Int32.init) }  // queries: short texts
        let pooling = try SentencePoolingConfig.load(directory: dir, config: BertConfig.load(dir + "/config.json"))
        func embed(_ backend: any LinearBackend) throws -> [Float] {
            var st = BertSentenceEncoder.Stats()
            return try BertSentenceEncoder(model: BertModel(directory: dir, backend: backend), pooling: pooling).encode(ids: Array(ids), stats: &st)
        }
        let f = try embed(DenseBackend())
        let i8 = try embed(RTNEmbedderBackend(scheme: EmbedderQuantSpec.parseRTN("rtn-int8")))
        let i4 = try embed(RTNEmbedderBackend(scheme: EmbedderQuantSpec.parseRTN("rtn-int4-g32")))
        let d = 384
        func cos(_ a: [Float], _ i: Int) -> Double {
            (0..<d).reduce(0.0) { $0 + Double(a[i * d + $1]) * Double(f[i * d + $1]) }  // unit vectors
        }
        var sum8 = 0.0, sum4 = 0.0
        for i in 0..<ids.count {
            XCTAssertGreaterThan(cos(i8, i), 0.995, "int8 text \(i)")
            XCTAssertGreaterThan(cos(i4, i), 0.85, "int4 text \(i)")
            XCTAssertLessThan(cos(i4, i), 0.999999, "int4 must change the embedding")
            sum8 += cos(i8, i); sum4 += cos(i4, i)
        }
        XCTAssertGreaterThan(sum8, sum4, "int8 closer to float than int4 on average")
    }
}
