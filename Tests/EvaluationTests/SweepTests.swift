import Foundation
import Quantization
import TensorCore
import TestSupport
import XCTest
@testable import Evaluation

/// `quantkit sweep`: the grid, the leakage guard, and a small sweep on stories260K whose rows agree with their
/// own result files and with a plain float perplexity run.
final class SweepTests: XCTestCase {
    func testGridAndMethodSpecs() throws {
        var o = SweepRunOptions(model: "m", corpus: "c", evaluation: PerplexityOptions(ctx: 64), output: "o")
        o.methods = ["rtn", "gptq+rotate+mse", "gptq+awq"]
        o.bits = [8, 4]
        o.groupSizes = [32, 128]
        let v = try o.variants()
        // 8 bits: per channel only (3 points); 4 bits: both group sizes (6 points).
        XCTAssertEqual(v.count, 9)
        XCTAssertEqual(v.map(\.label).prefix(3), ["rtn-int8-pc", "gptq+rotate+mse-int8-pc", "gptq+awq-int8-pc"])
        XCTAssertEqual(v.last?.label, "gptq+awq-int4-g128")
        let r = try SweepVariant.parse("gptq+rotate+mse", bits: 4, groupSize: 32)
        XCTAssertTrue(r.rotate && r.mse && !r.awq && r.method == .gptq)
        XCTAssertTrue(try SweepVariant.parse("gptq+gptaq", bits: 4, groupSize: 32).gptaq)
        for bad in ["nope", "hqq+awq", "rtn+actorder", "rtn+gptaq", "gptq+foo", "sparsegpt"] {
            XCTAssertThrowsError(try SweepVariant.parse(bad, bits: 4, groupSize: 32), bad) { e in
                XCTAssertTrue("\(e)".contains("--methods"), "\(e)")
            }
        }
        o.bits = [5]
        XCTAssertThrowsError(try o.variants())
    }

    static let stories = Repo.path("Models/stories260K/stories260K.bin")
    static let tinyStories = Repo.path("Corpora/tinystories/tinystories_sample.txt.zst")

    /// A small sweep of stories260K on the TinyStories sample, calibrated on 4 x 64 SciFact tokens.
    static func storiesSweep(_ dir: String, maxChunks: Int) -> SweepRunOptions {
        var o = SweepRunOptions(model: stories, corpus: tinyStories, evaluation: PerplexityOptions(ctx: 64, maxChunks: maxChunks), output: dir)
        o.calibration = Repo.path("Corpora/scifact/corpus.jsonl.zst")
        o.samples = 4
        o.seqlen = 64
        return o
    }

    func testSweepOnStories260K() throws {
        let dir = Repo.tempDirectory("sweep")
        let (corpus, model) = (Self.tinyStories, Self.stories)
        var o = Self.storiesSweep(dir, maxChunks: 6)
        o.methods = ["rtn", "rtn+rotate"]
        o.bits = [8, 4]
        let r = try SweepRun.run(o)
        XCTAssertEqual(r.rows.map(\.variant), ["rtn-int8-pc", "rtn+rotate-int8-pc", "rtn-int4-g32", "rtn+rotate-int4-g32"])
        // The float base equals a plain perplexity run of the same protocol.
        let plain = try PerplexityRun.run(PerplexityRunOptions(model: model, corpus: corpus, evaluation: PerplexityOptions(ctx: 64, maxChunks: 6)))
        XCTAssertEqual(r.basePPL, plain.ppl)
        for row in r.rows {
            let f = try ResultFile(path: row.result)
            let ppl = f.runs.first { !$0.isBase }!.metric("ppl")!
            XCTAssertEqual(row.ppl, ppl)
            XCTAssertEqual(row.qerror, ppl / plain.ppl - 1, accuracy: 1e-15)
            XCTAssertEqual(row.verdict, VerdictLogic.decide(row.qerror, VerdictThresholds()))
            XCTAssertEqual(row.settings.rotate, row.variant.contains("rotate"))
        }
        let shipping = r.rows.filter { $0.verdict == .ship }
        if let best = shipping.min(by: { ($0.bitsPerWeight ?? 32, $0.qerror) < ($1.bitsPerWeight ?? 32, $1.qerror) }) {
            XCTAssertEqual(r.smallestShipping, best.variant)
        } else {
            XCTAssertNil(r.smallestShipping)
        }
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/report.html"))
        XCTAssertTrue(r.table.contains("rtn+rotate-int4-g32"))
    }

    /// A +finetune point and a distilled student beside the post-training point they compare with: the fine-tuned
    /// point starts from the plain point's checkpoint (quantized once), the student is an f16 float model of its
    /// own shape sized per teacher weight, and the study report shows both fine-tunings.
    func testFineTunedPointsAndStudentsSitBesideTheirMethods() throws {
        let dir = Repo.tempDirectory("sweep-ft")
        var o = Self.storiesSweep(dir, maxChunks: 4)
        o.methods = ["rtn", "rtn+finetune"]
        o.bits = [4]
        o.students = ["2x86"]
        o.fineTuneSteps = 2
        // The fine-tuned point runs a stage after the plain one it starts from (array tasks never share a directory
        // mid-write); sharded, its quantize task does too.
        XCTAssertEqual(try SweepRun.plan(o, evalShards: 1).stages, [["base"], ["point:0", "point:2"], ["point:1"], ["report"]])
        XCTAssertEqual(try SweepRun.plan(o, evalShards: 2).stages.prefix(3), [["base"], ["quantize:0", "quantize:2"], ["quantize:1"]])
        let r = try SweepRun.run(o)
        XCTAssertEqual(r.rows.map(\.variant), ["rtn-int4-g32", "rtn+finetune-int4-g32", "distill-2x86-f16"])
        let ft = try ResultFile(path: dir + "/rtn+finetune-int4-g32.finetune.json")
        XCTAssertEqual(ft.fineTune?.initCheckpoint, dir + "/rtn-int4-g32")
        XCTAssertEqual(ft.fineTune?.steps, 2)
        let student = r.rows[2]
        let want = 16.0 * Double(2 * (64 * 192 + 3 * 64 * 86)) / Double(5 * (64 * 192 + 3 * 64 * 172))
        XCTAssertEqual(try XCTUnwrap(student.bitsPerWeight), want, accuracy: 1e-9)
        XCTAssertNil(student.settings.method)
        let md = try String(contentsOfFile: dir + "/report.md", encoding: .utf8)
        XCTAssertTrue(md.contains("### Fine-tuning"), md)
        XCTAssertTrue(md.contains("| rtn+finetune-int4-g32 | int4 sym g32 |"), md)
        XCTAssertTrue(md.contains("| distill-2x86-f16 | float student 2x86 |"), md)
        XCTAssertThrowsError(try SweepVariant.student("2by86"))
        XCTAssertThrowsError(try SweepVariant.parse("hqq+finetune", bits: 4, groupSize: 32))
    }

    func testLeakageGuardRefusesOverlappingTexts() throws {
        let dir = Repo.tempDirectory("sweep-leak")
        let scifact = Repo.path("Corpora/scifact/corpus.jsonl.zst")
        var o = SweepRunOptions(model: Repo.path("Models/stories260K/stories260K.bin"), corpus: scifact,
                                evaluation: PerplexityOptions(ctx: 64, maxChunks: 2), output: dir)
        o.calibration = scifact
        XCTAssertThrowsError(try SweepRun.run(o)) { e in XCTAssertTrue("\(e)".contains("overlaps the calibration text"), "\(e)") }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/float.json"), "refused before any run")
    }
}
