import Evaluation
import Foundation
import TestSupport
import XCTest

final class VerdictTests: XCTestCase {
    func testDecisionBoundariesDefault() {
        let t = VerdictThresholds()
        XCTAssertEqual(VerdictLogic.decide(-0.05, t), .ship)
        XCTAssertEqual(VerdictLogic.decide(0, t), .ship)
        XCTAssertEqual(VerdictLogic.decide(0.0099999, t), .ship)
        XCTAssertEqual(VerdictLogic.decide(0.01, t), .improve)   // the lower bound belongs to "improve"
        XCTAssertEqual(VerdictLogic.decide(0.02, t), .improve)
        XCTAssertEqual(VerdictLogic.decide(0.03, t), .improve)   // the upper bound too
        XCTAssertEqual(VerdictLogic.decide(0.0300001, t), .stayFloat)
        XCTAssertEqual(VerdictLogic.decide(0.5, t), .stayFloat)
    }

    func testThresholdParsing() throws {
        let t = try VerdictThresholds(parsing: "0.5, 2%")
        XCTAssertEqual(t.ship, 0.005, accuracy: 1e-15)
        XCTAssertEqual(t.stay, 0.02, accuracy: 1e-15)
        XCTAssertEqual(VerdictLogic.decide(0.006, t), .improve)
        XCTAssertEqual(VerdictLogic.decide(0.021, t), .stayFloat)
        XCTAssertEqual(VerdictLogic.decide(0.004, t), .ship)
        for bad in ["3,1", "1", "a,b", "1,2,3", "-1,2"] {
            XCTAssertThrowsError(try VerdictThresholds(parsing: bad), bad) { e in
                XCTAssertTrue("\(e)".contains("--thresholds"), "\(e)")
            }
        }
    }

    func run(_ kind: ResultKind, _ m: [String: Double], quant: [String: ResultValue] = [:]) -> ResultRun {
        ResultRun(label: "r", file: "f.json", kind: kind, metrics: m, quantization: quant)
    }

    func testRelativeLossPerKind() {
        let p = VerdictLogic.relativeLoss(base: run(.perplexity, ["ppl": 10]), run: run(.perplexity, ["ppl": 10.25]))!
        XCTAssertEqual(p.loss, 0.025, accuracy: 1e-12)
        XCTAssertTrue(p.measure.contains("QError"))
        let r = VerdictLogic.relativeLoss(base: run(.retrieval, ["ndcg10": 0.5]), run: run(.retrieval, ["ndcg10": 0.49]))!
        XCTAssertEqual(r.loss, 0.02, accuracy: 1e-12)
        // Answers: agreement wins (percent or fraction); else the larger relative EM/F1 drop.
        XCTAssertEqual(VerdictLogic.relativeLoss(base: run(.answers, ["em": 0.5]), run: run(.answers, ["em": 0.5, "agreementem": 97]))!.loss, 0.03, accuracy: 1e-12)
        let a = VerdictLogic.relativeLoss(base: run(.answers, ["em": 0.5, "f1": 0.8]), run: run(.answers, ["em": 0.49, "f1": 0.76]))!
        XCTAssertEqual(a.loss, 0.05, accuracy: 1e-12)
        XCTAssertTrue(a.measure.contains("F1"))
        XCTAssertNil(VerdictLogic.relativeLoss(base: run(.answers, ["em": 0]), run: run(.answers, ["em": 0])))
    }

    func testNextStepsFromSettingsAndRanking() {
        let layers = [LayerFigure(name: "a", sqnrDB: 30), LayerFigure(name: "b", sqnrDB: 10), LayerFigure(name: "c", sqnrDB: 20),
                      LayerFigure(name: "d", sqnrDB: 25)]
        let rtn = run(.perplexity, ["ppl": 1], quant: ["method": .string("rtn"), "bits": .number(4), "group_size": .number(128)])
        let s1 = VerdictLogic.nextSteps(run: rtn, layers: layers)
        XCTAssertTrue(s1[0].contains("GPTQ") && s1[0].contains("act-order"), "\(s1)")
        XCTAssertTrue(s1.contains { $0.contains("--group-size 64") }, "\(s1)")
        let mixed = s1.last!
        XCTAssertTrue(mixed.contains("b, c, d"), mixed)  // lowest SQNR first, three modules
        XCTAssertFalse(mixed.contains("a,"), mixed)
        let gptq = run(.perplexity, ["ppl": 1], quant: ["method": .string("gptq"), "bits": .number(4), "group_size": .number(32), "desc_act": .bool(true)])
        let s2 = VerdictLogic.nextSteps(run: gptq, layers: [])
        XCTAssertFalse(s2.contains { $0.contains("GPTQ") || $0.contains("act-order") || $0.contains("group-size") }, "\(s2)")
        XCTAssertTrue(s2.contains { $0.contains("quantkit layers") }, "\(s2)")
    }

    func testNoteWhenIntervalStraddlesThreshold() {
        let base = run(.perplexity, ["ppl": 10]), q = run(.perplexity, ["ppl": 10.08])
        let ci = ConfidenceInterval(estimate: 0.008, lower: 0.002, upper: 0.015, level: 0.95, resamples: 100)
        let v = VerdictLogic.verdict(base: base, run: q, thresholds: VerdictThresholds(), interval: ci, layers: [])!
        XCTAssertEqual(v.decision, .ship)
        XCTAssertTrue(v.nextSteps.isEmpty)
        XCTAssertTrue(v.note?.contains("ship to improve") ?? false, v.note ?? "nil")
    }
}
