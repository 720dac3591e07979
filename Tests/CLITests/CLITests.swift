import Foundation
import TestSupport
import XCTest

/// Runs the built `quantkit` binary: bad input must give one clear line and a non-zero exit, never a crash or
/// a partial output file; a small float-vs-quantized pipeline must produce consistent JSON results.
final class CLITests: XCTestCase {
    /// The executable sits beside the test bundle in the build products directory.
    private var binary: String {
        var dir = Bundle(for: CLITests.self).bundleURL.deletingLastPathComponent()
        if !FileManager.default.fileExists(atPath: dir.appendingPathComponent("quantkit").path) {
            dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        }
        return dir.appendingPathComponent("quantkit").path
    }

    @discardableResult
    private func run(_ args: [String], expectSuccess: Bool = true, file: StaticString = #filePath, line: UInt = #line) throws -> (Int32, String, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = args
        p.currentDirectoryURL = Repo.root
        var env = ProcessInfo.processInfo.environment
        env["QUANTKIT_QUIET"] = "1"
        p.environment = env
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let result = (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
        XCTAssertEqual(p.terminationReason, .exit, "quantkit \(args) crashed: \(result.2)", file: file, line: line)
        if expectSuccess { XCTAssertEqual(result.0, 0, "quantkit \(args) failed: \(result.2)", file: file, line: line) }
        return result
    }

    private func expectError(_ args: [String], mentioning needle: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let (code, _, err) = try run(args, expectSuccess: false, file: file, line: line)
        XCTAssertNotEqual(code, 0, "expected failure for \(args)", file: file, line: line)
        XCTAssertTrue(err.contains(needle), "error for \(args) should mention '\(needle)': \(err)", file: file, line: line)
        XCTAssertFalse(err.contains("Fatal error") || err.contains("Stack dump"), "crash output: \(err)", file: file, line: line)
    }

    func testBadInputsGiveOneClearLine() throws {
        let dir = Repo.tempDirectory("cli")
        let broken = dir + "/broken.safetensors"
        var header = Data()
        var n = UInt64(1 << 40).littleEndian
        header.append(Data(bytes: &n, count: 8))
        FileManager.default.createFile(atPath: broken, contents: header + Data("{}".utf8))
        try expectError(["inspect", broken], mentioning: broken)
        try expectError(["inspect", dir + "/missing.safetensors"], mentioning: "missing.safetensors")
        let badTok = dir + "/tokenizer.json"
        try "{\"model\": {\"type\": \"Nope\"}}".write(toFile: badTok, atomically: true, encoding: .utf8)
        try expectError(["tokenize", "--tokenizer", badTok, "--text", "hi"], mentioning: "tokenizer.json")
        let corrupt = dir + "/c.txt.zst"
        FileManager.default.createFile(atPath: corrupt, contents: Data([0x28, 0xB5, 0x2F, 0xFD, 1, 2, 3]))
        try expectError(["perplexity", "--model", "Models/stories260K/stories260K.bin", "--corpus", corrupt, "--ctx", "64"],
                        mentioning: "c.txt.zst")
        // The TinyStories sample is ~1k tokens: too short for two windows of 1024.
        try expectError(["perplexity", "--model", "Models/stories260K/stories260K.bin", "--corpus",
                         "Corpora/tinystories/tinystories_sample.txt.zst", "--ctx", "1024", "--json", dir + "/out.json"],
                        mentioning: "tokens")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out.json"), "no output file after a failed run")
        try expectError(["quantize", "--model", "Models/stories260K/stories260K.bin", "--method", "rtn", "--bits", "5",
                         "--output", dir + "/q"], mentioning: "5")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/q"))
    }

    func testQuantizeEvaluateCompareEndToEnd() throws {
        let dir = Repo.tempDirectory("cli-e2e")
        let corpus = "Corpora/wikitext-2-raw/wiki.test.raw.zst"
        try run(["quantize", "--model", "Models/stories260K/stories260K.bin", "--method", "rtn", "--bits", "8",
                 "--group-size", "-1", "--output", dir + "/int8"])
        try run(["perplexity", "--model", "Models/stories260K/stories260K.bin", "--corpus", corpus, "--ctx", "128",
                 "--max-chunks", "8", "--save-logits", dir + "/base.zst", "--json", dir + "/float.json"])
        try run(["perplexity", "--model", dir + "/int8", "--corpus", corpus, "--ctx", "128", "--max-chunks", "8",
                 "--kld-base", dir + "/base.zst", "--json", dir + "/int8.json"])
        let f = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/float.json"))) as! [String: Any]
        let q = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/int8.json"))) as! [String: Any]
        for key in ["protocol", "ctx", "stride", "chunks", "tokens_scored", "corpus_sha256", "tokenizer", "model", "ppl", "ppl_error", "schema_version", "timings"] {
            XCTAssertNotNil(f[key], "perplexity JSON lacks \(key)")
        }
        XCTAssertEqual(f["chunks"] as? Int, 8)
        XCTAssertEqual(f["tokens_scored"] as? Int, 8 * (128 - 1 - 64))
        XCTAssertEqual(f["tokenizer"] as? String, q["tokenizer"] as? String, "the quantized directory carries the same tokenizer")
        // The KLD block's base perplexity is the float run's, and the ratio is consistent with both runs.
        let kld = q["kld"] as! [String: Any]
        let pf = f["ppl"] as! Double, pq = q["ppl"] as! Double
        XCTAssertEqual(kld["ppl_base"] as! Double, pf, accuracy: 1e-3 * pf)
        XCTAssertEqual(kld["ppl_ratio"] as! Double, pq / pf, accuracy: 1e-3)
        XCTAssertLessThan(abs(pq / pf - 1), 0.02, "INT8 per-channel RTN should cost under 2% perplexity")
        XCTAssertGreaterThan(kld["kld_mean"] as! Double, 0)
        let (_, out, _) = try run(["compare", dir + "/float.json", dir + "/int8.json", "--html", dir + "/report.html"])
        XCTAssertTrue(out.lowercased().contains("ship") || out.lowercased().contains("improve") || out.lowercased().contains("stay"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/report.html"))
        // Evaluating on the quantized model's own calibration text is refused.
        try run(["quantize", "--model", "Models/stories260K/stories260K.bin", "--method", "gptq", "--bits", "4", "--group-size", "32",
                 "--calibration", "Corpora/tinystories/tinystories_sample.txt.zst", "--samples", "4", "--seqlen", "128",
                 "--output", dir + "/gptq"])
        try expectError(["perplexity", "--model", dir + "/gptq", "--corpus", "Corpora/tinystories/tinystories_sample.txt.zst",
                         "--ctx", "128"], mentioning: "overlap")
    }

    func testQuantizeFollowsAnEditedPlan() throws {
        let dir = Repo.tempDirectory("cli-plan")
        let plan = """
        {"scheme": {"bits": 4, "group_size": 32},
         "modules": {"model.layers.0.mlp.down_proj": {"bits": 8}, "model.layers.1.mlp.up_proj": {"float": true}}}
        """
        try plan.write(toFile: dir + "/plan.json", atomically: true, encoding: .utf8)
        try run(["quantize", "--model", "Models/stories260K/stories260K.bin", "--method", "rtn", "--bits", "8",
                 "--plan", dir + "/plan.json", "--output", dir + "/q"])
        // Read the written safetensors header directly: the float module keeps .weight, the others are packed.
        let data = try Data(contentsOf: URL(fileURLWithPath: dir + "/q/model.safetensors"))
        let n = Int(data.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
        let header = try JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + n))) as! [String: Any]
        XCTAssertNotNil(header["model.layers.1.mlp.up_proj.weight"], "a float module of the plan stays float")
        XCTAssertNil(header["model.layers.1.mlp.up_proj.qweight"])
        // 8-bit module: qweight rows = in * 8 / 32 = 172 / 4 = 43; 4-bit default g32: ceil(64 * 4 / 32) = 8.
        let down = header["model.layers.0.mlp.down_proj.qweight"] as! [String: Any]
        XCTAssertEqual(down["shape"] as? [Int], [43, 64])
        let gate = header["model.layers.0.mlp.gate_proj.qweight"] as! [String: Any]
        XCTAssertEqual(gate["shape"] as? [Int], [8, 172])
        let scales = header["model.layers.0.mlp.gate_proj.scales"] as! [String: Any]
        XCTAssertEqual(scales["shape"] as? [Int], [2, 172], "group size 32 over 64 inputs: 2 groups (the plan's, not --group-size)")
    }

    /// A BERT embedder quantized by `quantkit quantize` is a complete embedder directory: `rag retrieval` loads it
    /// as --embedder and as --embedder-quantized; queries overlapping its calibration text are refused.
    func testQuantizeBertEmbedderForRetrieval() throws {
        let dir = Repo.tempDirectory("cli-bert")
        try run(["quantize", "--model", "minilm", "--method", "gptq", "--bits", "8", "--group-size", "-1",
                 "--calibration", "Corpora/scifact/corpus.jsonl.zst", "--samples", "8", "--seqlen", "64",
                 "--output", dir + "/q8", "--json", dir + "/q8.json"])
        let q = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/q8.json"))) as! [String: Any]
        XCTAssertEqual(q["architecture"] as? String, "bert")
        XCTAssertEqual((q["layers"] as? [[String: Any]])?.count, 36)
        XCTAssertEqual((q["calibration"] as? [String: Any])?["samples"] as? Int, 8)
        for f in ["1_Pooling/config.json", "modules.json", "sentence_bert_config.json", "tokenizer.json", "calibration_fingerprint.json"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/q8/" + f), f)
        }
        let small = ["--max-queries", "10", "--max-docs", "40", "--no-cache"]
        try run(["rag", "retrieval", "--embedder", dir + "/q8", "--json", dir + "/r1.json"] + small)
        try run(["rag", "retrieval", "--embedder-quantized", dir + "/q8", "--json", dir + "/r2.json"] + small)
        let r1 = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/r1.json"))) as! [String: Any]
        let r2 = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/r2.json"))) as! [String: Any]
        func ndcg10(_ r: [String: Any], _ i: Int) -> Double {
            (((r["runs"] as! [[String: Any]])[i]["metrics"] as! [String: Any])["ndcg@10"] as! Double)
        }
        XCTAssertEqual(ndcg10(r1, 0), ndcg10(r2, 1), accuracy: 1e-12, "the same directory as base or as quantized embedder")
        // Calibrated on the evaluation queries: refused unless --allow-overlap.
        try run(["quantize", "--model", "minilm", "--method", "gptq", "--bits", "8", "--group-size", "-1",
                 "--calibration", "Corpora/scifact/queries.jsonl.zst", "--samples", "8", "--seqlen", "32", "--output", dir + "/qq"])
        try expectError(["rag", "retrieval", "--embedder-quantized", dir + "/qq"] + small, mentioning: "overlap")
        try expectError(["rag", "retrieval", "--embedder", dir + "/q8", "--embedder-quantized", "rtn-int8"] + small,
                        mentioning: "already quantized")
        // Bad input: one clear line naming the file, flag or line.
        try "one passage\ntwo passages\n".write(toFile: dir + "/short.txt", atomically: true, encoding: .utf8)
        try expectError(["quantize", "--model", "minilm", "--calibration", dir + "/short.txt", "--samples", "8", "--output", dir + "/x"],
                        mentioning: "short.txt: 2 passages, too few for --samples 8")
        try "{\"_id\": \"1\", \"text\": \"a\"}\n{\"_id\": 2, \"text\": \n".write(toFile: dir + "/bad.jsonl", atomically: true, encoding: .utf8)
        try expectError(["quantize", "--model", "minilm", "--calibration", dir + "/bad.jsonl", "--samples", "1", "--output", dir + "/x"],
                        mentioning: "bad.jsonl: line 2")
        try expectError(["quantize", "--model", "minilm", "--method", "rtn", "--bits", "5", "--output", dir + "/x"], mentioning: "bits 5")
        try expectError(["quantize", "--model", "minilm", "--method", "rtn", "--group-size", "0", "--output", dir + "/x"],
                        mentioning: "--group-size")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/x"), "no output directory after a failed run")
    }
}
