import Evaluation
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import TensorCore
import TestSupport
import XCTest

/// A synthetic study: FP32 10.00, FP16 10.05, RTN INT8 10.14 (8.25 b/w), GPTQ INT4 10.20 (4.5), RTN INT4 10.60 (4.5),
/// NPU W8A8 10.11 (no bits per weight). Expected values below are worked out by hand from these numbers.
enum StudyFixture {
    static func ppl(_ label: String, _ ppl: Double, bits: Double?, quant: [String: Any]?, backend: String? = nil,
                    kldBase: Double? = nil, segments: [[String: Any]]? = nil) -> [String: Any] {
        var o: [String: Any] = ["schema_version": 2, "kind": "perplexity", "protocol": "llamacpp", "ctx": 256,
                                "corpus_sha256": "abc", "tokenizer": "sentencepiece@0123", "model": "/study/\(label)", "ppl": ppl,
                                "quantization": quant ?? NSNull()]
        if let b = bits { o["bits_per_weight"] = b }
        if let b = backend { o["backend"] = b }
        if let k = kldBase { o["kld"] = ["kld_mean": 0.001, "ppl_base": k] }
        if let s = segments { o["segments"] = s }
        return o
    }

    static var fp32: [String: Any] { ppl("fp32", 10.00, bits: 32, quant: nil) }
    static var fp16: [String: Any] { ppl("fp16", 10.05, bits: 16, quant: nil, kldBase: 10.00) }
    static var rtn8: [String: Any] { ppl("rtn-int8", 10.14, bits: 8.25, quant: ["method": "rtn", "bits": 8, "group_size": -1], kldBase: 10.00) }
    static var gptq4: [String: Any] { ppl("gptq-int4", 10.20, bits: 4.5, quant: ["method": "gptq", "bits": 4, "group_size": 32, "act_order": true], kldBase: 10.00) }
    static var rtn4: [String: Any] { ppl("rtn-int4", 10.60, bits: 4.5, quant: ["method": "rtn", "bits": 4, "group_size": 32], kldBase: 10.00) }
    static var npu: [String: Any] { ppl("fp32", 10.11, bits: nil, quant: nil, backend: "npu", kldBase: 10.00) }
    static var layers: [String: Any] { ["schema_version": 2, "kind": "layers",
                                        "layers": [["name": "a", "sqnr_db": 30.0], ["name": "b", "sqnr_db": 10.0],
                                                   ["name": "c", "sqnr_db": 20.0], ["name": "d", "sqnr_db": 25.0]]] }

    /// Answers: the GPTQ INT4 generator agrees with the float one on 98 % of answers (1 - 0.98 = 2 % loss).
    static var answers: [String: Any] { ["schema_version": 1, "kind": "rag_answers", "dataset_sha256": "squad",
                                         "runs": [["label": "float", "is_base": true, "metrics": ["em": 0.5, "f1": 0.6]],
                                                  ["label": "/study/gptq-int4", "is_base": false,
                                                   "metrics": ["em": 0.49, "f1": 0.6, "agreement_em": 0.98]]]] }

    static func file(_ o: [String: Any], _ name: String, in dir: String) throws -> ResultFile {
        let p = dir + "/" + name
        try JSONSerialization.data(withJSONObject: o).write(to: URL(fileURLWithPath: p))
        return try ResultFile(path: p)
    }
}

final class StudyTests: XCTestCase {
    let dir = Repo.tempDirectory("study")

    func files(_ objs: [(String, [String: Any])]) throws -> [ResultFile] {
        try objs.map { try StudyFixture.file($0.1, $0.0, in: dir) }
    }

    func fullStudy(extra: [(String, [String: Any])] = [], baseline: String? = nil) throws -> Study {
        let fs = try files([("ppl-fp32.json", StudyFixture.fp32), ("ppl-fp16.json", StudyFixture.fp16), ("ppl-rtn8.json", StudyFixture.rtn8),
                            ("ppl-gptq4.json", StudyFixture.gptq4), ("ppl-rtn4.json", StudyFixture.rtn4), ("ppl-npu.json", StudyFixture.npu),
                            ("layers.json", StudyFixture.layers)] + extra)
        return try Study.build(files: fs, baseline: baseline.map { dir + "/" + $0 }, resamples: 20)
    }

    // MARK: baseline

    /// The FP16 run is the baseline whatever the order; FP32 is a reference with no verdict; losses are against FP16.
    func testFP16IsTheBaselineAndFP32AReference() throws {
        let s = try fullStudy()
        let c = s.comparisons[0]
        XCTAssertEqual(c.baseline.label, "fp16")
        XCTAssertEqual(c.rows.map(\.role), [.baseline, .reference, .candidate, .candidate, .candidate, .candidate])
        XCTAssertEqual(c.rows[1].run.label, "fp32")
        XCTAssertNil(c.rows[1].verdict)
        // 10.14 / 10.05 - 1 = 0.0089552... (ship); against FP32 it would be 1.4 % (improve).
        let rtn8 = c.rows.first { $0.run.label == "rtn-int8" }!.verdict!
        XCTAssertEqual(rtn8.relativeLoss, 0.008955223880597, accuracy: 1e-12)
        XCTAssertEqual(rtn8.decision, .ship)
        // 10.20 / 10.05 - 1 = 0.014925... (improve); 10.60 / 10.05 - 1 = 0.054726... (stay); 10.11 / 10.05 - 1 = 0.00597 (ship).
        XCTAssertEqual(c.rows.first { $0.run.label == "gptq-int4" }!.verdict!.relativeLoss, 0.014925373134328, accuracy: 1e-12)
        XCTAssertEqual(c.rows.first { $0.run.label == "rtn-int4" }!.verdict!.decision, .stayFloat)
        XCTAssertEqual(c.rows.first { $0.run.label == "fp32 (npu)" }!.verdict!.relativeLoss, 0.005970149253731, accuracy: 1e-12)
        // FP32 -> FP16: 10.00 -> 10.05, +0.05, +0.50 %.
        XCTAssertEqual(c.referenceLine, "FP32 -> FP16 (ppl): fp32 10.0000 -> fp16 10.0500 (+0.0500, +0.50%)")
        // The quantized files' own KLD bases equal the FP32 run: one note saying so, no "differs" note.
        XCTAssertFalse(c.notes.contains { $0.contains("differs from the baseline") }, "\(c.notes)")
        XCTAssertTrue(c.notes.contains("KLD and segment figures are against fp32 (the --kld-base run); relative losses and verdicts against the baseline fp16"), "\(c.notes)")
        XCTAssertTrue(c.table().contains("fp32 (reference)"), c.table())
        XCTAssertEqual(s.ladderLine, "ppl FP32 10.00 / FP16 10.05 / INT8 10.14 (rtn-int8) / INT4 10.20 (gptq-int4)")
    }

    /// The same runs given FP16 first or last pick the same baseline; --baseline FILE overrides it.
    func testBaselineOptionOverridesTheFP16Rule() throws {
        let fs = try files([("a.json", StudyFixture.rtn8), ("b.json", StudyFixture.fp32), ("c.json", StudyFixture.fp16)])
        XCTAssertEqual(try Comparison.build(files: fs, resamples: 20).baseline.label, "fp16")
        let c = try Comparison.build(files: fs, resamples: 20, baseline: dir + "/b.json")
        XCTAssertEqual(c.baseline.label, "fp32")
        XCTAssertEqual(c.rows.map(\.role), [.baseline, .candidate, .candidate])
        // Against FP32: FP16 loses 0.5 % (ship), RTN INT8 1.4 % (improve).
        XCTAssertEqual(c.rows.first { $0.run.label == "fp16" }!.verdict!.relativeLoss, 0.005, accuracy: 1e-12)
        XCTAssertEqual(c.rows.first { $0.run.label == "rtn-int8" }!.verdict!.decision, .improve)
        XCTAssertNil(c.referenceLine)
        // Without an FP16 run the first float run stays the baseline (as before).
        XCTAssertEqual(try Comparison.build(files: [fs[1], fs[0]], resamples: 20).baseline.label, "fp32")
        XCTAssertThrowsError(try Comparison.build(files: fs, resamples: 20, baseline: dir + "/nope.json")) { e in
            XCTAssertTrue("\(e)".contains("--baseline \(self.dir)/nope.json"), "\(e)")
        }
    }

    // MARK: recommendation

    /// Shipping under FP16: RTN INT8 (8.25) and the NPU run (no bits). GPTQ INT4 (4.5) is smaller but only improves.
    func testSmallestShippingVariantIsRecommended() throws {
        let s = try fullStudy()
        XCTAssertEqual(s.recommendations.count, 1)
        let r = s.recommendations[0]
        XCTAssertTrue(r.ships)
        XCTAssertEqual(r.variant?.name, "rtn-int8")
        XCTAssertEqual(r.variant?.bitsPerWeight, 8.25)
        XCTAssertEqual(r.nextSteps, [])
        XCTAssertTrue(r.headline.hasPrefix("Language model: ship rtn-int8 (8.25 bits/weight)"), r.headline)
        XCTAssertTrue(r.headline.contains("perplexity +0.90%"), r.headline)
    }

    /// With --baseline FP32, FP16 itself is the smallest variant that ships (0.5 %); every quantized one loses >= 1 %.
    func testBaselineChoiceChangesTheRecommendation() throws {
        let s = try fullStudy(baseline: "ppl-fp32.json")
        XCTAssertEqual(s.comparisons[0].baseline.label, "fp32")
        XCTAssertEqual(s.recommendations[0].variant?.name, "fp16")
        XCTAssertTrue(s.recommendations[0].ships)
    }

    /// A variant must ship on every kind it was measured on: GPTQ INT4's answers agreement (2 % loss) and its
    /// perplexity (1.49 %) both say improve; drop RTN INT8 and the NPU run and nothing ships. The closest is GPTQ
    /// INT4 (worst loss 2 % < RTN INT4's 5.47 %), and the advice is its answers verdict's next steps.
    func testNoneShipsGivesTheClosestAndWhatToTryNext() throws {
        let fs = try files([("f16.json", StudyFixture.fp16), ("f32.json", StudyFixture.fp32), ("g4.json", StudyFixture.gptq4),
                            ("r4.json", StudyFixture.rtn4), ("layers.json", StudyFixture.layers), ("answers.json", StudyFixture.answers)])
        let s = try Study.build(files: fs, resamples: 20)
        XCTAssertEqual(s.comparisons.map(\.kind), [.perplexity, .answers])
        let g = s.variants.first { $0.name == "gptq-int4" }!
        XCTAssertEqual(g.verdicts.map(\.kind), [.perplexity, .answers])
        XCTAssertEqual(g.worstLoss, 0.02, accuracy: 1e-12)
        XCTAssertEqual(g.decision, .improve)
        let r = s.recommendations[0]
        XCTAssertFalse(r.ships)
        XCTAssertEqual(r.variant?.name, "gptq-int4")
        // GPTQ, act-order, g32 already: rotation, then mixed precision; layers b, c, d have the lowest SQNR.
        XCTAssertEqual(r.nextSteps.count, 2)
        XCTAssertTrue(r.nextSteps[0].contains("--rotate"), r.nextSteps[0])
        XCTAssertEqual(r.nextSteps[1], "mixed precision: keep the most sensitive modules at 8 bits: b, c, d (--override 'b=8' --override 'c=8' --override 'd=8')")
        XCTAssertTrue(r.headline.contains("no variant ships; improve gptq-int4 before shipping"), r.headline)
        XCTAssertTrue(s.summary().contains("mixed precision"), s.summary())
    }

    func testRecommendPrefersKnownSizeAndHandlesUnknownBits() {
        func v(_ name: String, _ bits: Double?, _ losses: [Double]) -> StudyVariant {
            let t = VerdictThresholds()
            return StudyVariant(name: name, role: .languageModel, bitsPerWeight: bits, verdicts: losses.map {
                (ResultKind.perplexity, name, Verdict(decision: VerdictLogic.decide($0, t), relativeLoss: $0, measure: "m", interval: nil, nextSteps: ["step \(name)"], note: nil))
            })
        }
        // Both ship: 4.5 bits beats unknown bits.
        XCTAssertEqual(Study.recommend([v("npu", nil, [0.001]), v("q4", 4.5, [0.009])]).variant?.name, "q4")
        // Only the unknown-size run ships: it is recommended rather than dropped.
        let only = Study.recommend([v("npu", nil, [0.002]), v("q4", 4.5, [0.02])])
        XCTAssertEqual(only.variant?.name, "npu"); XCTAssertTrue(only.ships)
        // Equal bits: the smaller worst loss wins.
        XCTAssertEqual(Study.recommend([v("a", 4.5, [0.008]), v("b", 4.5, [0.004])]).variant?.name, "b")
        // None ships: improve (2.5 %) beats stay (3.5 %) even at more bits.
        let none = Study.recommend([v("small", 4.25, [0.035]), v("big", 8.25, [0.025])])
        XCTAssertEqual(none.variant?.name, "big"); XCTAssertFalse(none.ships)
        XCTAssertNil(Study.recommend([]).variant)
    }

    /// A run without bits per weight is kept: in the variant table ("unknown"), in the notes, and in the ppl chart's
    /// unknown lane (6 runs, 6 points).
    func testRunWithoutBitsPerWeightIsShown() throws {
        let s = try fullStudy()
        let npu = s.variants.first { $0.name == "fp32 (npu)" }
        XCTAssertNotNil(npu)
        XCTAssertNil(npu?.bitsPerWeight)
        XCTAssertTrue(s.summary().contains("unknown"), s.summary())
        XCTAssertTrue(s.notes.contains { $0.contains("bits per weight unknown") && $0.contains("fp32 (npu)") }, "\(s.notes)")
        let html = HTMLReport.render(s)
        let doc = try XMLDocument(data: Data(html.utf8), options: [])
        let chart = "//*[local-name()='svg'][*[local-name()='title']='Perplexity vs bits per weight']"
        XCTAssertEqual(try doc.nodes(forXPath: chart + "//*[local-name()='g']/*[local-name()='circle']").count, 6)
        let texts = try doc.nodes(forXPath: chart + "//*[local-name()='text']").compactMap(\.stringValue)
        XCTAssertTrue(texts.contains("unknown"), "\(texts)")
        XCTAssertTrue(texts.contains("fp32 (npu)"), "\(texts)")
    }

    /// Retrieval measures the embedder: its "rtn-int8" is not the language model's "rtn-int8".
    func testEmbedderGetsItsOwnRecommendation() throws {
        let r: [String: Any] = ["schema_version": 1, "kind": "rag_retrieval", "dataset": ["dataset_name": "scifact", "split": "test"],
                                "runs": [["label": "float", "is_base": true, "metrics": ["ndcg@10": 0.5]],
                                         ["label": "rtn-int8", "is_base": false, "metrics": ["ndcg@10": 0.49]]]]
        let s = try fullStudy(extra: [("retrieval.json", r)])
        XCTAssertEqual(s.recommendations.map(\.role), [.languageModel, .embedder])
        XCTAssertEqual(s.variants.filter { $0.name == "rtn-int8" }.map(\.role), [.languageModel, .embedder])
        let e = s.recommendations[1]
        // (0.5 - 0.49) / 0.5 = 2 % nDCG@10 drop: improve, so the embedder has no shipping variant.
        XCTAssertEqual(e.variant?.worstLoss ?? 0, 0.02, accuracy: 1e-12)
        XCTAssertEqual(e.variant?.verdicts.map(\.kind), [.retrieval])
        XCTAssertFalse(e.ships)
        // The language model's rtn-int8 still ships on perplexity alone.
        XCTAssertTrue(s.recommendations[0].ships)
        XCTAssertEqual(s.recommendations[0].variant?.verdicts.map(\.kind), [.perplexity])
    }

    func testBadInputNamesTheFlagOrFile() throws {
        let fs = try files([("x.json", StudyFixture.fp32), ("y.json", StudyFixture.rtn8), ("l.json", StudyFixture.layers)])
        XCTAssertThrowsError(try Study.build(files: fs, baseline: dir + "/l.json")) { e in
            XCTAssertTrue("\(e)".hasPrefix("--baseline \(self.dir)/l.json: not one of"), "\(e)")
        }
        XCTAssertThrowsError(try Study.build(files: [fs[2]])) { e in XCTAssertTrue("\(e)".contains("only layer results"), "\(e)") }
        XCTAssertThrowsError(try Study.build(files: [])) { e in XCTAssertTrue("\(e)".contains("no result files"), "\(e)") }
    }

    func testStudyJSONAndMarkdown() throws {
        let s = try fullStudy()
        let data = try ResultEnvelope(kind: "report").data(s)
        let body = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        let recs = body["recommendations"] as! [[String: Any]]
        XCTAssertEqual(recs[0]["variant"] as? String, "rtn-int8")
        XCTAssertEqual(recs[0]["ships"] as? Bool, true)
        XCTAssertEqual((body["ladder"] as! [[String: Any]]).map { $0["precision"] as! String }, ["FP32", "FP16", "INT8", "INT4"])
        let md = MarkdownReport.render(s)
        XCTAssertTrue(md.contains("**Language model: ship rtn-int8 (8.25 bits/weight)"), md)
        XCTAssertTrue(md.contains("| fp32 (reference) | 32.00 | 10.0000 | -0.0500 | -0.50% |  | reference |"), md)
        XCTAssertTrue(md.contains("| fp32 (npu) | language model | unknown | +0.60% ship | ship |"), md)
    }

    // MARK: fine-tuning

    /// A `finetune` result that started from gptq-int4 (10.20) and wrote gptq-int4-ft (10.10): the study pairs the
    /// two perplexity runs, so before -> after is 10.20 -> 10.10 and the share of GPTQ's loss against the FP16
    /// baseline (10.05) recovered is (10.20 - 10.10) / (10.20 - 10.05) = 2/3; the validation KL 0.2 -> 0.05 is 75%.
    func testFineTuneRunsAreShownBeforeAndAfterWithTheirCurve() throws {
        var tuned = StudyFixture.ppl("gptq-int4-ft", 10.10, bits: 4.5, quant: ["method": "gptq", "bits": 4, "group_size": 32], kldBase: 10.00)
        tuned["kld"] = ["kld_mean": 0.0004, "ppl_base": 10.00]
        var curve: [[String: Any]] = []
        for step in 1...30 {
            let loss: Double = 0.3 - 0.005 * Double(step)
            curve.append(["step": step, "loss": loss, "kl": loss, "ce": 0.0, "sameTop": 0.8, "gradientNorm": 1.0,
                          "learningRate": 1e-4, "seconds": 0.1])
        }
        let ft: [String: Any] = ["schema_version": 6, "kind": "finetune", "model": "/study/fp32", "output": "/study/gptq-int4-ft",
                                 "init_checkpoint": "/study/gptq-int4",
                                 "recipe": ["steps": 30, "weights": "int4 sym g32", "initialization": "/study/gptq-int4"],
                                 "curve": curve, "training_tokens": 30 * 2048,
                                 "validation": ["file": "held.txt", "windows": 16, "tokens": 4096,
                                                "before": ["total": 0.2, "kl": 0.2, "ce": 3.0, "sameTop": 0.70],
                                                "after": ["total": 0.05, "kl": 0.05, "ce": 2.9, "sameTop": 0.80], "klRecovered": 0.75]]
        let s = try fullStudy(extra: [("ppl-ft.json", tuned), ("ft.json", ft)])
        XCTAssertEqual(s.fineTunes.count, 1)
        let f = try XCTUnwrap(s.fineTunes.first)
        XCTAssertEqual(f.name, "gptq-int4-ft")
        XCTAssertEqual(f.change("ppl")?.before, 10.20)
        XCTAssertEqual(f.change("ppl")?.after, 10.10)
        XCTAssertEqual(try XCTUnwrap(f.recovered(basePPL: s.basePPL)), 2.0 / 3.0, accuracy: 1e-12)
        XCTAssertEqual(try XCTUnwrap(f.result.klRecovered), 0.75, accuracy: 1e-12)
        XCTAssertEqual(f.result.curve.count, 30)
        // The fine-tuned checkpoint is a variant like any other (its verdict against FP16: +0.50%, ship).
        XCTAssertTrue(s.variants.contains { $0.name == "gptq-int4-ft" && $0.ships })
        let md = MarkdownReport.render(s)
        XCTAssertTrue(md.contains("| gptq-int4-ft | int4 sym g32 | /study/gptq-int4 | 30 | 10.2000 -> 10.1000 | 66.67% |"), md)
        XCTAssertTrue(md.contains("0.2000 -> 0.0500 (75.00%)"), md)
        let html = HTMLReport.render(s)
        XCTAssertTrue(html.contains("<section id=\"finetune\">") && html.contains("Training loss per step"), "no fine-tuning section")
        // One polyline, no per-point dots for the curve.
        let section = html.components(separatedBy: "<section id=\"finetune\">")[1].components(separatedBy: "</section>")[0]
        XCTAssertEqual(section.components(separatedBy: "<polyline").count - 1, 1)
        XCTAssertFalse(section.contains("<circle cx=\"7"), "a dot per step")
        let body = try JSONSerialization.jsonObject(with: try ResultEnvelope(kind: "report").data(s)) as! [String: Any]
        let fts = body["fine_tunes"] as! [[String: Any]]
        XCTAssertEqual((fts[0]["ppl"] as? [String: Double])?["after"], 10.10)
        XCTAssertEqual((fts[0]["curve"] as? [[Double]])?.count, 30)
        // A finetune result missing its curve is refused by name.
        var broken = ft
        broken["curve"] = nil
        XCTAssertThrowsError(try StudyFixture.file(broken, "broken.json", in: dir)) { e in XCTAssertTrue("\(e)".contains("\"curve\""), "\(e)") }
    }
}
