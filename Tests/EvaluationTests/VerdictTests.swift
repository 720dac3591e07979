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
        XCTAssertTrue(s1[0].contains("--rotate") && s1[0].contains("--mse"), "\(s1)")
        XCTAssertTrue(s1[1].contains("GPTQ") && s1[1].contains("act-order"), "\(s1)")
        XCTAssertTrue(s1.contains { $0.contains("--group-size 32") }, "\(s1)")
        let mixed = s1.last!
        XCTAssertTrue(mixed.contains("b, c, d"), mixed)  // lowest SQNR first, three modules
        XCTAssertFalse(mixed.contains("a,"), mixed)
        let gptq = run(.perplexity, ["ppl": 1], quant: ["method": .string("gptq"), "bits": .number(4), "group_size": .number(32), "desc_act": .bool(true),
                                                        "recovery": .object(["rotation": .object(["seed": .number(0)])])])
        let s2 = VerdictLogic.nextSteps(run: gptq, layers: [])
        XCTAssertFalse(s2.contains { $0.contains("GPTQ") || $0.contains("act-order") || $0.contains("group-size") }, "\(s2)")
        XCTAssertTrue(s2.contains { $0.contains("quantkit layers") }, "\(s2)")
    }

    /// A llama.cpp file gets llama.cpp's remedies (a k-quant mix, or QuantKit's GPTQ exported to the same format,
    /// and per-tensor Q8_0 overrides), not QuantKit's quantize flags; an F16 file gets none of them.
    func testNextStepsForGGUFFiles() {
        var q4 = run(.perplexity, ["ppl": 1])
        q4.ggufTensorTypes = ["Q4_0": 31, "F16": 5, "F32": 11]
        let s = VerdictLogic.nextSteps(run: q4, layers: [LayerFigure(name: "blk.0.ffn_down", sqnrDB: 5)])
        XCTAssertTrue(s[0].contains("Q4_K_M") && s[0].contains("quantkit export --type q4_0"), "\(s)")
        XCTAssertTrue(s[1].contains("--tensor-type") && s[1].contains("blk.0.ffn_down"), "\(s)")
        XCTAssertFalse(s.contains { $0.contains("--override") }, "\(s)")
        var f16 = run(.perplexity, ["ppl": 1])
        f16.ggufTensorTypes = ["F16": 36, "F32": 11]
        XCTAssertFalse(VerdictLogic.nextSteps(run: f16, layers: []).contains { $0.contains("Q4_K_M") })
    }

    func testNoteWhenIntervalStraddlesThreshold() {
        let base = run(.perplexity, ["ppl": 10]), q = run(.perplexity, ["ppl": 10.08])
        let ci = ConfidenceInterval(estimate: 0.008, lower: 0.002, upper: 0.015, level: 0.95, resamples: 100)
        let v = VerdictLogic.verdict(base: base, run: q, thresholds: VerdictThresholds(), interval: ci, layers: [])!
        XCTAssertEqual(v.decision, .ship)
        XCTAssertTrue(v.nextSteps.isEmpty)
        XCTAssertTrue(v.note?.contains("ship to improve") ?? false, v.note ?? "nil")
    }

    /// The improve advice follows the quantization method and settings a result records (the ladder of
    /// VerdictLogic.nextSteps: RTN -> GPTQ + act-order; GPTQ -> act-order; groups > 32 or per-channel -> g32;
    /// GPTQ act-order g32 -> mixed precision naming the most sensitive modules).
    func testAdviceFollowsTheQuantizationMethod() throws {
        let layers = [LayerFigure(name: "layers.0.q", sqnrDB: 40), LayerFigure(name: "layers.1.down", sqnrDB: 12),
                      LayerFigure(name: "layers.0.down", sqnrDB: 18), LayerFigure(name: "layers.1.up", sqnrDB: 15)]
        // Rotated runs: the rest of the ladder (the rotation step is testRecoveryAdvice's).
        func steps(_ q: [String: ResultValue], _ l: [LayerFigure] = []) -> [String] {
            var q = q
            if !q.isEmpty { q["recovery"] = .object(["rotation": .object(["seed": .number(0)])]) }
            return VerdictLogic.nextSteps(run: run(.perplexity, ["ppl": 1], quant: q), layers: l)
        }
        let rtn = steps(["method": .string("rtn"), "bits": .number(4), "group_size": .number(32), "act_order": .bool(false)])
        XCTAssertEqual(rtn.count, 2, "\(rtn)")
        XCTAssertEqual(rtn[0], "quantize with GPTQ and act-order (--method gptq --act-order) instead of RTN")
        XCTAssertTrue(rtn[1].hasPrefix("mixed precision"), rtn[1])
        let gptqNoAct = steps(["method": .string("gptq"), "bits": .number(4), "group_size": .number(128), "act_order": .bool(false)])
        XCTAssertEqual(Array(gptqNoAct.prefix(2)), ["enable act-order (--act-order)", "smaller groups (--group-size 32 instead of 128)"])
        let perChannel = steps(["method": .string("gptq"), "bits": .number(4), "group_size": .number(-1), "act_order": .bool(true)])
        XCTAssertEqual(perChannel.first, "smaller groups: grouped scales (--group-size 32) instead of per-channel")
        let best = steps(["method": .string("gptq"), "bits": .number(4), "group_size": .number(32), "act_order": .bool(true)], layers)
        XCTAssertEqual(best, ["mixed precision: keep the most sensitive modules at 8 bits: layers.1.down, layers.1.up, layers.0.down "
                              + "(--override 'layers.1.down=8' --override 'layers.1.up=8' --override 'layers.0.down=8')"])
        // 8-bit GPTQ with act-order: groups do not matter; the sensitive modules stay float.
        let int8 = steps(["method": .string("gptq"), "bits": .number(8), "group_size": .number(-1), "act_order": .bool(true)], layers)
        XCTAssertEqual(int8.count, 1)
        XCTAssertTrue(int8[0].contains("at float (--skip)") && int8[0].contains("--skip 'layers.1.down'"), int8[0])
        // A raw quantize_config.json says quant_method gptq for every checkpoint of that layout; QuantKit's own
        // record of the method wins.
        let raw = steps(["quant_method": .string("gptq"), "bits": .number(4), "group_size": .number(32), "desc_act": .bool(false),
                         "quantkit": .object(["method": .string("rtn")])])
        XCTAssertTrue(raw[0].contains("instead of RTN"), "\(raw)")
        XCTAssertEqual(steps(["quant_method": .string("gptq"), "bits": .number(4), "group_size": .number(32), "desc_act": .bool(false)]).first,
                       "enable act-order (--act-order)")
        // No record at all (a schema_version 1 result): the advice says it cannot tell.
        XCTAssertTrue(steps([:]).contains { $0.contains("does not name its method") }, "\(steps([:]))")

        // Through a result file as the perplexity command writes it (schema_version 2, `quantization` object).
        let body: [String: Any] = ["schema_version": 2, "kind": "perplexity", "protocol": "llamacpp", "ctx": 128, "corpus_sha256": "x",
                                   "tokenizer": "t", "ppl": 3.3, "model": "/tmp/q4",
                                   "quantization": ["method": "rtn", "bits": 4, "group_size": 64, "act_order": false, "sym": true,
                                                    "recovery": ["rotation": ["seed": 0, "residual": "hadamard", "online_hadamard": true]]]]
        let f = try ResultFile(data: JSONSerialization.data(withJSONObject: body), path: "q.json")
        let viaFile = VerdictLogic.nextSteps(run: f.runs[0], layers: [])
        XCTAssertEqual(Array(viaFile.prefix(2)), ["quantize with GPTQ and act-order (--method gptq --act-order) instead of RTN",
                                                  "smaller groups (--group-size 32 instead of 64)"])
    }

    /// Recovery advice: an unrotated CPU result is pointed at rotation + GPTQ + MSE clipping (AWQ as the
    /// alternative), a rotated one is not; an NPU run gets --rotate / --smoothquant until its result records one.
    func testRecoveryAdvice() throws {
        let plain = run(.perplexity, ["ppl": 1], quant: ["method": .string("gptq"), "bits": .number(4), "group_size": .number(32), "act_order": .bool(true)])
        let s = VerdictLogic.nextSteps(run: plain, layers: [])
        XCTAssertTrue(s[0].contains("--method gptq --rotate --mse") && s[0].contains("--awq"), "\(s)")
        var npu = run(.perplexity, ["ppl": 1])
        npu.backend = "npu"
        let n = VerdictLogic.nextSteps(run: npu, layers: [])
        XCTAssertEqual(n.count, 2)
        XCTAssertTrue(n[0].contains("--backend npu --rotate") && n[0].contains("--smoothquant"), "\(n)")
        XCTAssertTrue(n[1].contains("per_channel_outputs") && n[1].contains("int16_outputs") && n[1].contains("finetune --target npu"), "\(n)")
        npu.npuRecovered = true
        XCTAssertFalse(VerdictLogic.nextSteps(run: npu, layers: []).contains { $0.contains("--rotate") })
        npu.npuWideOutputs = ["k_proj", "q_proj"]
        XCTAssertEqual(VerdictLogic.nextSteps(run: npu, layers: []).count, 1)
        // Read from a perplexity result file as the NPU run writes it.
        let body: [String: Any] = ["schema_version": 5, "kind": "perplexity", "protocol": "llamacpp", "ctx": 128, "corpus_sha256": "x",
                                   "tokenizer": "t", "ppl": 3.3, "model": "m.bin", "backend": "npu",
                                   "npu_recovery": ["smoothquant_alpha": 0.5, "smoothquant_alpha_search": [], "rotation": NSNull()],
                                   "npu_config": ["weight_bits": 8, "int16_outputs": ["q_proj"], "per_channel_outputs": ["k_proj"]]]
        let f = try ResultFile(data: JSONSerialization.data(withJSONObject: body), path: "n.json")
        XCTAssertEqual(f.runs[0].backend, "npu")
        XCTAssertTrue(f.runs[0].npuRecovered)
        XCTAssertEqual(f.runs[0].npuWideOutputs, ["q_proj", "k_proj"])
    }
}
