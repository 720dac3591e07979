import Evaluation
import Foundation
import TensorCore
import TestSupport
import XCTest

func compareFixture(_ name: String) -> String { Repo.path("Tests/EvaluationTests/Fixtures/compare/\(name)") }

final class CompareTests: XCTestCase {
    let dir = Repo.tempDirectory("compare")

    func object(_ name: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: compareFixture(name)))) as! [String: Any]
    }
    func write(_ obj: [String: Any], _ name: String) throws -> String {
        let p = dir + "/" + name
        try JSONSerialization.data(withJSONObject: obj).write(to: URL(fileURLWithPath: p))
        return p
    }
    func basePPL() throws -> Double {
        let chunks = try object("ppl_f32.json")["chunks"] as! [[String: Double]]
        return exp(chunks.map { $0["nll_sum"]! }.reduce(0, +) / chunks.map { $0["count"]! }.reduce(0, +))
    }

    // MARK: reading

    func testReadsPerplexityResult() throws {
        let f = try ResultFile(path: compareFixture("ppl_gptq_int4.json"))
        XCTAssertEqual(f.kind, .perplexity)
        XCTAssertEqual(f.schemaVersion, 1)
        XCTAssertEqual(f.runs.count, 1)
        let r = f.runs[0]
        XCTAssertEqual(r.label, "stories260K-gptq-int4")
        XCTAssertEqual(r.bitsPerWeight, 4.5)
        XCTAssertEqual(r.chunks?.count, 40)
        XCTAssertEqual(r.metric("kld_mean"), 0.0123)
        XCTAssertEqual(r.metric("same_top"), 96.5)
        XCTAssertEqual(r.quantization["method"]?.string, "gptq")
        // An integer "chunks" (the count) is not per-chunk data.
        XCTAssertNil(try ResultFile(path: compareFixture("ppl_int8.json")).runs[0].chunks)
    }

    func testKindIsInferredWithoutKindField() throws {
        var o = try object("ppl_int8.json"); o.removeValue(forKey: "kind")
        XCTAssertEqual(try ResultFile(path: write(o, "a.json")).kind, .perplexity)
        var r = try object("retrieval.json"); r.removeValue(forKey: "kind")
        XCTAssertEqual(try ResultFile(path: write(r, "b.json")).kind, .retrieval)
        var a = try object("answers.json"); a.removeValue(forKey: "kind")
        XCTAssertEqual(try ResultFile(path: write(a, "c.json")).kind, .answers)
        var l = try object("layers.json"); l.removeValue(forKey: "kind")
        XCTAssertEqual(try ResultFile(path: write(l, "d.json")).kind, .layers)
    }

    func testSingleFileWithKLDBaseYieldsBaseRun() throws {
        var o = try object("ppl_int8.json")
        o["kld"] = ["mean": 0.001, "ppl_ratio": 1.02]
        let f = try ResultFile(path: write(o, "k.json"))
        XCTAssertEqual(f.runs.count, 2)
        XCTAssertTrue(f.runs[0].isBase)
        XCTAssertEqual(f.runs[0].metric("ppl")!, (o["ppl"] as! Double) / 1.02, accuracy: 1e-12)
        let c = try Comparison.build(files: [f], resamples: 50)
        XCTAssertEqual(c.rows[1].verdict!.relativeLoss, 0.02, accuracy: 1e-12)
        XCTAssertEqual(c.rows[1].verdict!.decision, .improve)
    }

    // MARK: perplexity comparison

    func testPerplexityComparisonVerdictsAndInterval() throws {
        let files = try ["ppl_f32.json", "ppl_int8.json", "ppl_gptq_int4.json", "ppl_rtn_int4.json", "layers.json"].map { try ResultFile(path: compareFixture($0)) }
        let ref = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: compareFixture("bootstrap_reference.json")))) as! [String: Any]
        let c = try Comparison.build(files: files, thresholds: VerdictThresholds(), resamples: 500, seed: 12345)
        XCTAssertEqual(c.kind, .perplexity)
        XCTAssertEqual(c.baseline.label, "stories260K")
        XCTAssertEqual(c.rows.count, 4)
        let base = try basePPL()
        XCTAssertEqual(c.rows[0].value!, base, accuracy: 1e-9)
        let (i8, g4, r4) = (c.rows[1], c.rows[2], c.rows[3])
        XCTAssertEqual(i8.verdict!.relativeLoss, 0.004, accuracy: 1e-12)
        XCTAssertEqual(i8.verdict!.decision, .ship)
        XCTAssertEqual(i8.delta!, base * 0.004, accuracy: 1e-9)
        XCTAssertNil(i8.verdict!.interval)
        XCTAssertEqual(r4.verdict!.relativeLoss, 0.05, accuracy: 1e-12)
        XCTAssertEqual(r4.verdict!.decision, .stayFloat)
        // The GPTQ run has per-chunk sums on both sides: its interval is the numpy reference's.
        let want = (ref["qerror"] as! [String: NSNumber]).mapValues(\.doubleValue)
        XCTAssertEqual(g4.verdict!.relativeLoss, want["estimate"]!, accuracy: 1e-9)
        XCTAssertEqual(g4.verdict!.decision, .improve)
        XCTAssertEqual(g4.verdict!.interval!.lower, want["lower"]!, accuracy: 1e-9)
        XCTAssertEqual(g4.verdict!.interval!.upper, want["upper"]!, accuracy: 1e-9)
        // Improve advice: act-order (desc_act false), smaller groups, the three least-SQNR modules.
        let steps = g4.verdict!.nextSteps
        XCTAssertTrue(steps.contains("enable act-order (--act-order)"), "\(steps)")
        XCTAssertTrue(steps.contains("smaller groups (--group-size 32 instead of 128)"), "\(steps)")
        XCTAssertTrue(steps.last!.contains("model.layers.4.mlp.down_proj, model.layers.0.mlp.down_proj, model.layers.2.mlp.up_proj"), steps.last!)
        XCTAssertEqual(c.worstDecision, .stayFloat)
        XCTAssertTrue(c.notes.contains { $0.contains("no CI for stories260K-rtn-int8") && $0.contains("chunks") }, "\(c.notes)")

        let table = c.table()
        for s in ["stories260K (baseline)", "stories260K-rtn-int8", "+0.40%", "+5.00%", "ship", "improve", "stay FP16",
                  "KLD mean", "0.0123", "try: enable act-order", "Most sensitive modules"] {
            XCTAssertTrue(table.contains(s), "table lacks \(s):\n\(table)")
        }
    }

    func testComparisonJSONRoundTrip() throws {
        let files = try ["ppl_f32.json", "ppl_int8.json"].map { try ResultFile(path: compareFixture($0)) }
        let c = try Comparison.build(files: files, resamples: 50)
        let path = dir + "/cmp.json"
        try ResultEnvelope(kind: "compare", command: ["quantkit", "compare", "a b.json"]).write(c, to: path)
        let o = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
        XCTAssertEqual(o["schema_version"] as? Int, ResultSchema.current)
        XCTAssertEqual(o["kind"] as? String, "compare")
        XCTAssertEqual(o["command"] as? String, "quantkit compare 'a b.json'")
        XCTAssertEqual((o["tool"] as? [String: String])?["name"], "quantkit")
        XCTAssertNotNil(ISO8601DateFormatter().date(from: o["created"] as! String))
        XCTAssertEqual(o["decision"] as? String, "ship")
        let runs = o["runs"] as! [[String: Any]]
        XCTAssertEqual(((runs[1]["verdict"] as! [String: Any])["relative_loss"] as! Double), 0.004, accuracy: 1e-12)
    }

    func testEnvelopeMergesAndRejectsNaN() throws {
        let env = ResultEnvelope(kind: "perplexity", command: ["quantkit"], bitsPerWeight: 4.5)
        let m = env.merged(["ppl": 3.0, "kind": "other", "command": "mine"])
        XCTAssertEqual(m["kind"] as? String, "perplexity")
        XCTAssertEqual(m["command"] as? String, "mine")
        XCTAssertEqual(m["bits_per_weight"] as? Double, 4.5)
        XCTAssertThrowsError(try env.data(["ppl": Double.nan]))
        struct Body: Encodable {
            let ppl: Double, ctx: Int, tokenizer: String, proto: String, sha: String
            enum CodingKeys: String, CodingKey { case ppl, ctx, tokenizer, proto = "protocol", sha = "corpus_sha256" }
        }
        let f = try ResultFile(data: env.data(Body(ppl: 2, ctx: 64, tokenizer: "t", proto: "llamacpp", sha: "00")), path: "enc.json")
        XCTAssertEqual(f.kind, .perplexity)
        XCTAssertEqual(f.runs[0].bitsPerWeight, 4.5)
        XCTAssertEqual(f.runs[0].metric("ppl"), 2)
    }

    // MARK: retrieval and answers

    func testRetrievalComparison() throws {
        let f = try ResultFile(path: compareFixture("retrieval.json"))
        XCTAssertEqual(f.runs.map(\.label), ["float", "quantized"])
        XCTAssertEqual(f.runs[0].perQuery["3"]?["ndcg10"], 0.5)
        XCTAssertEqual(f.runs[1].perQuery["3"]?["ndcg10"], 0.4)
        XCTAssertEqual(f.runs[1].bitsPerWeight, 8.1)
        let c = try Comparison.build(files: [f], resamples: 200, seed: 1)
        let v = c.rows[1].verdict!
        XCTAssertEqual(v.relativeLoss, (0.64 - 0.6272) / 0.64, accuracy: 1e-12)
        XCTAssertEqual(v.decision, .improve)
        // CI over the 5 queries: the full-sample estimate is (3.0 - 2.92) / 3.0.
        XCTAssertEqual(v.interval!.estimate, 0.08 / 3.0, accuracy: 1e-12)
        XCTAssertEqual(c.rows[1].metricDeltas.count, 8)
        XCTAssertEqual(c.segments.first?.segment, "11-20 words")
        XCTAssertEqual(f.runs[1].queryTexts["3"], "1,000 genomes project enables mapping of genetic sequence variation")
        // Without file segments, the per-query texts give query-length buckets (Segments.queryLengthBucket): queries
        // 3, 13, 36 have 9, 10, 10 words: "9-16 words" means 1.2/3 -> 1.12/3; queries 1 and 5 (5 and 7 words,
        // 1 -> 1 and 0.8 -> 0.8) are "1-8 words".
        var o = try object("retrieval.json"); o.removeValue(forKey: "segments")
        let c2 = try Comparison.build(files: [ResultFile(path: write(o, "noseg.json"))], resamples: 50)
        let nine = c2.segments.first { $0.segment == "9-16 words" }
        XCTAssertEqual(nine?.count, 3)
        XCTAssertEqual(nine!.base, 0.4, accuracy: 1e-12)
        XCTAssertEqual(nine!.quantized, 1.12 / 3, accuracy: 1e-12)
        XCTAssertEqual(c2.segments.map(\.segment), ["9-16 words", "1-8 words"])
        XCTAssertEqual(c2.segments.last?.base ?? 0, 0.9, accuracy: 1e-12)
        XCTAssertTrue(c.table().contains("Recall@100"))
    }

    func testAnswersComparison() throws {
        let c = try Comparison.build(files: [ResultFile(path: compareFixture("answers.json"))])
        XCTAssertEqual(c.rows[1].verdict!.relativeLoss, 0.15, accuracy: 1e-12)
        XCTAssertEqual(c.rows[1].verdict!.measure, "1 - agreement EM")
        XCTAssertEqual(c.rows[1].verdict!.decision, .stayFloat)
    }

    // MARK: bad input

    func assertError(_ body: @autoclosure () throws -> Any, contains parts: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try body(), file: file, line: line) { e in
            let s = "\(e)"
            XCTAssertFalse(s.contains("\n"), "error is not one line: \(s)", file: file, line: line)
            for p in parts { XCTAssertTrue(s.contains(p), "error lacks \(p): \(s)", file: file, line: line) }
        }
    }

    func testDifferentProtocolOrDataIsRefused() throws {
        let base = try ResultFile(path: compareFixture("ppl_f32.json"))
        for (key, value, shown) in [("protocol", "gptq" as Any, "\"gptq\""), ("ctx", 256 as Any, "\"256\""),
                                    ("corpus_sha256", "ffff" as Any, "\"ffff\""), ("tokenizer", "gpt2" as Any, "\"gpt2\""),
                                    ("stride", 64 as Any, "\"64\"")] {
            var o = try object("ppl_int8.json"); o[key] = value
            let p = try write(o, "bad-\(key).json")
            assertError(try Comparison.build(files: [base, ResultFile(path: p)]),
                        contains: ["\"\(key)\"", shown, p, compareFixture("ppl_f32.json"), "not the same"])
        }
        var r = try object("retrieval.json"); r["split"] = "dev"
        let rp = try write(r, "r.json")
        assertError(try Comparison.build(files: [ResultFile(path: compareFixture("retrieval.json")), ResultFile(path: rp)]),
                    contains: ["\"split\"", "\"test\"", "\"dev\""])
        var a = try object("answers.json"); a["dataset_sha256"] = "other"
        assertError(try Comparison.build(files: [ResultFile(path: compareFixture("answers.json")), ResultFile(path: write(a, "a.json"))]),
                    contains: ["dataset_sha256", "\"cc33\"", "\"other\""])
        assertError(try Comparison.build(files: [base, ResultFile(path: compareFixture("retrieval.json"))]),
                    contains: ["cannot compare a perplexity result", "retrieval"])
    }

    func testStructuredIdentityFieldsBackendsAndDuplicateLabels() throws {
        var a = try object("ppl_f32.json"); a["tokenizer"] = ["id": "tok512.model", "type": "sentencepiece"]
        var b = try object("ppl_int8.json"); b["tokenizer"] = ["type": "sentencepiece", "id": "tok512.model"]
        let pa = try write(a, "ta.json"), pb = try write(b, "tb.json")
        XCTAssertNoThrow(try Comparison.build(files: [ResultFile(path: pa), ResultFile(path: pb)], resamples: 20))
        b["tokenizer"] = ["type": "sentencepiece", "id": "tokenizer.bin"]
        assertError(try Comparison.build(files: [ResultFile(path: pa), ResultFile(path: write(b, "tc.json"))]),
                    contains: ["\"tokenizer\"", "tokenizer.bin"])
        // The same model on the NPU is labelled by its backend; identical labels get the file name.
        var npu = try object("ppl_int8.json"); npu["backend"] = "npu"
        let c = try Comparison.build(files: [ResultFile(path: compareFixture("ppl_f32.json")), ResultFile(path: compareFixture("ppl_int8.json")),
                                             ResultFile(path: write(npu, "npu.json")), ResultFile(path: write(try object("ppl_int8.json"), "again.json"))], resamples: 20)
        XCTAssertEqual(c.rows.map(\.run.label), ["stories260K", "stories260K-rtn-int8 [ppl_int8.json]", "stories260K-rtn-int8 (npu)",
                                                 "stories260K-rtn-int8 [again.json]"])
    }

    func testMissingFieldsNameFileAndField() throws {
        for key in ["corpus_sha256", "ppl", "protocol", "tokenizer", "ctx"] {
            var o = try object("ppl_int8.json"); o.removeValue(forKey: key)
            let p = try write(o, "m-\(key).json")
            assertError(try ResultFile(path: p), contains: [p, "missing field \"\(key)\""])
        }
        var o = try object("ppl_int8.json"); o["ppl"] = "high"
        assertError(try ResultFile(path: write(o, "s.json")), contains: ["\"ppl\" must be a number"])
        var r = try object("retrieval.json")
        var q = r["quantized"] as! [String: Any]; var m = q["metrics"] as! [String: Any]
        m.removeValue(forKey: "nDCG@10"); q["metrics"] = m; r["quantized"] = q
        assertError(try ResultFile(path: write(r, "r.json")), contains: ["missing field \"ndcg@10\"", "quantized"])
        var l = try object("layers.json"); l.removeValue(forKey: "layers")
        assertError(try ResultFile(path: write(l, "l.json")), contains: ["missing field \"layers\""])
        var c = try object("ppl_gptq_int4.json"); c["chunks"] = [["nll_sum": 1.0]]
        assertError(try ResultFile(path: write(c, "c.json")), contains: ["chunks[0]", "count"])
    }

    func testSchemaVersions() throws {
        var o = try object("ppl_int8.json")
        // Version 1 (before segments / quantization), 2 (before the common envelope), 3 (before GGUF), 4 (before the
        // recovery methods), 5 (before fine-tuning) and 6 all read.
        for v in [1, 2, 3, 4, 5, 6] {
            o["schema_version"] = v
            XCTAssertEqual(try ResultFile(path: write(o, "v\(v).json")).schemaVersion, v)
        }
        o["schema_version"] = 7
        let p = try write(o, "future.json")
        assertError(try ResultFile(path: p), contains: [p, "schema_version 7 is newer", "reads (1...6)", "writes schema_version 7"])
        o["schema_version"] = 0
        assertError(try ResultFile(path: write(o, "old.json")), contains: ["schema_version 0 is too old", "re-run"])
        o.removeValue(forKey: "schema_version")
        assertError(try ResultFile(path: write(o, "none.json")), contains: ["missing field \"schema_version\""])
        o["schema_version"] = "one"
        assertError(try ResultFile(path: write(o, "str.json")), contains: ["must be an integer"])
    }

    func testUnknownKindAndUnrecognisedContent() throws {
        var o = try object("ppl_int8.json"); o["kind"] = "speech"
        assertError(try ResultFile(path: write(o, "k.json")), contains: ["unknown result kind \"speech\"", "perplexity, retrieval"])
        assertError(try ResultFile(path: write(["schema_version": 1, "foo": 1], "u.json")), contains: ["cannot tell what kind"])
        let bad = dir + "/bad.json"
        try Data("{ not json".utf8).write(to: URL(fileURLWithPath: bad))
        assertError(try ResultFile(path: bad), contains: [bad, "not valid JSON"])
        assertError(try ResultFile(path: dir + "/absent.json"), contains: ["no such file"])
        assertError(try Comparison.build(files: [ResultFile(path: compareFixture("ppl_int8.json"))]), contains: ["at least two runs"])
        assertError(try Comparison.build(files: [ResultFile(path: compareFixture("layers.json"))]), contains: ["only layer results"])
    }

    /// A quantized file's own base (from its --kld-base file) that agrees with the float baseline to rounding gets
    /// no note; one from other text or another model does.
    func testOwnBaseNoteOnlyWhenTheBasesReallyDiffer() throws {
        func file(_ body: [String: Any], _ name: String) throws -> ResultFile {
            var b = body
            for (k, v) in ["schema_version": 2, "kind": "perplexity", "protocol": "llamacpp", "ctx": 256, "corpus_sha256": "s",
                           "tokenizer": "t"] as [String: Any] { b[k] = v }
            return try ResultFile(data: JSONSerialization.data(withJSONObject: b), path: name)
        }
        let base = try file(["ppl": 167.72190000, "model": "float"], "float.json")
        // 5e-9 relative apart: the order seen between a float run and its own --save-logits file (1.4e-9 on
        // stories260K, WikiText-2, ctx 256), and above the old 1e-9 tolerance.
        let close = try file(["ppl": 206.0, "model": "q", "kld": ["kld_mean": 0.3, "ppl_base": 167.7219008]], "q.json")
        XCTAssertFalse(try Comparison.build(files: [base, close], resamples: 20).notes.contains { $0.contains("differs from the baseline") })
        let far = try file(["ppl": 206.0, "model": "q", "kld": ["kld_mean": 0.3, "ppl_base": 167.9]], "q2.json")
        XCTAssertTrue(try Comparison.build(files: [base, far], resamples: 20).notes.contains { $0.contains("q2.json: its base ppl 167.9000 differs") })
    }
}

