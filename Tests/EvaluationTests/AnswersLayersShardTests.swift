import Evaluation
import Foundation
import TensorCore
import TestSupport
import XCTest

/// `rag answers --shard` and `layers --shard`: three shards merged through MergeRun give the unsharded run's report,
/// every figure bit for bit (the encoded JSON compared as text, timings blanked).
final class AnswersLayersShardTests: XCTestCase {
    static let model = Repo.path("Models/stories260K/stories260K.bin")

    /// The report's JSON with sorted keys and every `seconds` value blanked (the only timing key of both kinds).
    func canonical<T: Encodable>(_ report: T) throws -> String {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        let text = String(decoding: try e.encode(report), as: UTF8.self)
        return text.replacingOccurrences(of: #""seconds":[-+0-9.eE]+"#, with: #""seconds":0"#, options: .regularExpression)
    }

    /// Runs `shard(i)` for i in 0..<3, writes the partials and merges them.
    func mergeThree<Body: Codable & Sendable>(_ dir: String, _ shard: (Shard) throws -> PartialResult<Body>) throws -> MergedResult {
        var paths: [String] = []
        for i in [2, 0, 1] {  // any order
            let p = try shard(try Shard(index: i, count: 3))
            XCTAssertEqual(p.header.shard.index, i)
            let path = dir + "/part\(i).json"
            try p.write(to: path)
            paths.append(path)
        }
        return try MergeRun.run(paths)
    }

    func answersOptions() -> AnswersRunOptions {
        var o = AnswersRunOptions(generator: Self.model, dataset: Repo.path("Corpora/squad/squad-v2-dev-first5.json.zst"))
        o.tokenizer = Repo.path("Tokenizers/tok512/tok512.bin")
        o.generatorQuantized = "rtn-int4-g32"
        o.oracleContext = true
        o.maxQuestions = 10  // 6 answerable, 4 unanswerable; shards of 3, 3, 4 questions
        o.maxTokens = 6
        return o
    }

    func testAnswersShardsMergeToTheUnshardedReport() throws {
        let dir = Repo.tempDirectory("answers-shards")
        let o = answersOptions()
        let whole = try AnswersRun.run(o)
        XCTAssertEqual(whole.questions, 10)
        XCTAssertEqual(whole.runs.map(\.summary.name), ["float", "rtn-int4-g32"])
        let merged = try mergeThree(dir) { s in
            var so = o
            so.shard = s
            let p = try AnswersRun.runShard(so)
            XCTAssertEqual(p.header.partialOf, "rag_answers")
            XCTAssertEqual(p.header.items.unit, "questions")
            XCTAssertEqual(p.body.measurement.generators.map(\.records.count), [p.header.items.count, p.header.items.count])
            return p
        }
        guard case .answers(let r) = merged else { return XCTFail("merged \(merged), not answers") }
        XCTAssertEqual(r.questions, whole.questions)
        XCTAssertEqual(r.answerable, whole.answerable)
        XCTAssertEqual(r.runs.count, 2)
        for (a, b) in zip(r.runs, whole.runs) {
            XCTAssertEqual(a.summary.records.map(\.answer), b.summary.records.map(\.answer))
            XCTAssertEqual(a.summary.em.bitPattern, b.summary.em.bitPattern)
            XCTAssertEqual(a.summary.f1.bitPattern, b.summary.f1.bitPattern)
            XCTAssertEqual(a.agreementEM.bitPattern, b.agreementEM.bitPattern)
            XCTAssertEqual(a.agreementF1.bitPattern, b.agreementF1.bitPattern)
            XCTAssertEqual(a.generatedTokens, b.generatedTokens)
            XCTAssertEqual(a.truncatedPrompts, b.truncatedPrompts)
        }
        XCTAssertGreaterThan(whole.runs[1].generatedTokens, 0)
        XCTAssertEqual(try canonical(r), try canonical(whole))

        // The comparison sees one record's F1 slightly off (the test can fail).
        var m = try PartialResult<AnswersShardBody>.read(dir + "/part1.json")
        let rec = m.body.measurement.generators[1].records[0]
        m.body.measurement.generators[1].records[0] = try JSONDecoder().decode(AnswerRecord.self, from: JSONEncoder().encode(rec))
        XCTAssertEqual(m.body.measurement.generators[1].records[0].f1.bitPattern, rec.f1.bitPattern, "records round-trip bit for bit")
        var changed = try JSONSerialization.jsonObject(with: JSONEncoder().encode(rec)) as! [String: Any]
        changed["f1"] = String((rec.f1 + 1e-6).bitPattern, radix: 16)
        m.body.measurement.generators[1].records[0] = try JSONDecoder().decode(AnswerRecord.self,
                                                                              from: JSONSerialization.data(withJSONObject: changed))
        try m.write(to: dir + "/part1.json")
        guard case .answers(let off) = try MergeRun.run([0, 1, 2].map { dir + "/part\($0).json" }) else { return XCTFail() }
        XCTAssertNotEqual(try canonical(off), try canonical(whole))
    }

    func testAnswersShardRefusesTheNPUBackend() throws {
        var o = answersOptions()
        o.shard = try Shard(index: 0, count: 2)
        o.npu = NPUBackendSettings()
        XCTAssertThrowsError(try AnswersRun.runShard(o)) { e in
            XCTAssertTrue("\(e)".contains("--backend npu") && "\(e)".contains("--shard"), "\(e)")
        }
        o.npu = nil
        o.maxQuestions = 1
        XCTAssertThrowsError(try AnswersRun.runShard(o)) { XCTAssertTrue("\($0)".contains("only 1 questions"), "\($0)") }
        XCTAssertThrowsError(try AnswersRun.run(o)) { XCTAssertTrue("\($0)".contains("runShard"), "\($0)") }
    }

    /// Calibration and held-out token ids from the perplexity fixture (Python sentencepiece), as JSON files.
    func layersOptions(_ dir: String) throws -> LayersRunOptions {
        struct Case: Decodable { let tokens: [Int32] }
        struct Fixture: Decodable { let cases: [Case] }
        let fx = try JSONDecoder().decode(Fixture.self, from: readMaybeCompressed(Repo.path("Tests/EvaluationTests/Fixtures/perplexity_stories260K.json.zst")))
        let toks = fx.cases.max { $0.tokens.count < $1.tokens.count }!.tokens
        XCTAssertGreaterThanOrEqual(toks.count, 256)
        try JSONEncoder().encode(Array(toks.prefix(128))).write(to: URL(fileURLWithPath: dir + "/cal.json"))
        try JSONEncoder().encode(Array(toks.suffix(128))).write(to: URL(fileURLWithPath: dir + "/held.json"))
        var o = LayersRunOptions(model: Self.model, calibration: dir + "/cal.json")
        o.scheme = "4:32"
        o.heldout = dir + "/held.json"
        o.ctx = 32
        o.windows = 4
        o.chunks = 2
        return o
    }

    func testLayersShardsMergeToTheUnshardedReport() throws {
        let dir = Repo.tempDirectory("layers-shards")
        let o = try layersOptions(dir)
        let whole = try LayersRun.run(o)
        XCTAssertEqual(whole.sensitivity.modules.count, 35)
        XCTAssertNotNil(whole.sensitivity.quantizedPPL)
        XCTAssertNotNil(whole.sensitivity.modules[0].disableOneQError)
        let merged = try mergeThree(dir) { s in
            var so = o
            so.shard = s
            let p = try LayersRun.runShard(so)
            XCTAssertEqual(p.header.partialOf, "layers")
            XCTAssertEqual(p.body.modules.count, p.header.items.count)
            XCTAssertEqual(p.body.quantizedPPL == nil, s.index != 0, "the all-quantized ppl comes from shard 0 only")
            return p
        }
        guard case .layers(let r) = merged else { return XCTFail("merged \(merged), not layers") }
        XCTAssertEqual(r.sensitivity.modules.map(\.name), whole.sensitivity.modules.map(\.name))
        XCTAssertEqual(r.sensitivity.ranked.map(\.name), whole.sensitivity.ranked.map(\.name))
        for (a, b) in zip(r.sensitivity.modules, whole.sensitivity.modules) {
            XCTAssertEqual(a.error, b.error, a.name)
            XCTAssertEqual(a.enableOneQError?.bitPattern, b.enableOneQError?.bitPattern, a.name)
            XCTAssertEqual(a.disableOneQError?.bitPattern, b.disableOneQError?.bitPattern, a.name)
        }
        XCTAssertEqual(r.sensitivity.quantizedPPL?.bitPattern, whole.sensitivity.quantizedPPL?.bitPattern)
        XCTAssertEqual(r.bitsPerWeight.bitPattern, whole.bitsPerWeight.bitPattern)
        XCTAssertEqual(try canonical(r), try canonical(whole))
    }

    func testLayersShardRefusesPlanTargets() throws {
        let dir = Repo.tempDirectory("layers-shard-plan")
        var o = try layersOptions(dir)
        o.shard = try Shard(index: 1, count: 3)
        for (target, flag) in [(LayersRunOptions.PlanTarget.bitsPerWeight(4.5), "--target-bits"), (.qerror(0.01), "--target-qerror")] {
            o.planTarget = target
            XCTAssertThrowsError(try LayersRun.runShard(o), flag) { e in
                XCTAssertTrue("\(e)".contains(flag) && "\(e)".contains("--shard") && "\(e)".contains("merge first"), "\(e)")
            }
        }
    }
}
