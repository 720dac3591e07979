import Foundation
import TensorCore
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
    private func run(_ args: [String], expectSuccess: Bool = true, in cwd: URL = Repo.root,
                     file: StaticString = #filePath, line: UInt = #line) throws -> (Int32, String, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = args
        p.currentDirectoryURL = cwd
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

    private func expectError(_ args: [String], mentioning needle: String, in cwd: URL = Repo.root,
                             file: StaticString = #filePath, line: UInt = #line) throws {
        let (code, _, err) = try run(args, expectSuccess: false, in: cwd, file: file, line: line)
        XCTAssertNotEqual(code, 0, "expected failure for \(args)", file: file, line: line)
        XCTAssertTrue(err.contains(needle), "error for \(args) should mention '\(needle)': \(err)", file: file, line: line)
        XCTAssertFalse(err.contains("Fatal error") || err.contains("Stack dump"), "crash output: \(err)", file: file, line: line)
    }

    /// A bad flag, a missing argument or an out-of-range value: exit 64 (EX_USAGE) with exactly one line on stderr
    /// that names the flag and says where the usage is.
    func testArgumentErrorsAreOneLineNamingTheFlag() throws {
        let stories = "Models/stories260K/stories260K.bin", corpus = "Corpora/tinystories/tinystories_sample.txt.zst"
        let cases: [([String], String)] = [
            (["perplexity", "--model", stories, "--corpus", corpus, "--ctx", "0"], "--ctx 0"),
            (["perplexity", "--model", stories, "--ctx", "16"], "--corpus"),
            (["perplexity", "--model", stories, "--corpus", corpus, "--ctx", "16", "--no-such-flag"], "--no-such-flag"),
        ]
        for (args, needle) in cases {
            let (code, _, err) = try run(args, expectSuccess: false)
            XCTAssertEqual(code, 64, "\(args): \(err)")
            let lines = err.split(separator: "\n", omittingEmptySubsequences: true)
            XCTAssertEqual(lines.count, 1, "\(args): \(err)")
            XCTAssertTrue(err.contains(needle) && err.contains("--help"), "\(args): \(err)")
        }
        // A value the library refuses after parsing: exit 1, still one line naming the flag.
        let (presetCode, _, presetErr) = try run(["npu", "cost", "--model", stories, "--preset", "nope"], expectSuccess: false)
        XCTAssertEqual(presetCode, 1)
        XCTAssertEqual(presetErr.split(separator: "\n").count, 1, presetErr)
        XCTAssertTrue(presetErr.contains("--preset 'nope'"), presetErr)
        let (code, out, _) = try run(["perplexity", "--help"])
        XCTAssertEqual(code, 0)
        XCTAssertTrue(out.contains("USAGE: quantkit perplexity"), out)
    }

    /// Inputs that used to give a figure with exit 0 (ppl nan, ppl 1.0), replace a file, or read a model as a
    /// tokenizer: each gets one line naming the culprit and exit 1.
    func testSilentWrongAnswersAreRefused() throws {
        let dir = Repo.tempDirectory("cli-silent")
        let stories = "Models/stories260K/stories260K.bin", corpus = "Corpora/tinystories/tinystories_sample.txt.zst"
        var d = try Data(contentsOf: URL(fileURLWithPath: Repo.path(stories)))
        var nan = Float.nan.bitPattern.littleEndian
        d.replaceSubrange(1000..<1004, with: Data(bytes: &nan, count: 4))
        let nanBin = dir + "/nan.bin"
        try d.write(to: URL(fileURLWithPath: nanBin))
        try expectError(["perplexity", "--model", nanBin, "--corpus", corpus, "--ctx", "64"], mentioning: "model.embed_tokens.weight")
        try expectError(["perplexity", "--model", stories, "--corpus", corpus, "--ctx", "2"], mentioning: "--ctx 2")
        var neg = Int32(-64).littleEndian
        d.replaceSubrange(0..<4, with: Data(bytes: &neg, count: 4))
        let negBin = dir + "/neg.bin"
        try d.write(to: URL(fileURLWithPath: negBin))
        try expectError(["inspect", negBin], mentioning: "invalid llama2.c model header: field dim = -64")
        try expectError(["quantize", "--model", stories, "--bits", "5", "--output", dir + "/q"], mentioning: "--bits 5")
        try expectError(["quantize", "--model", stories, "--method", "rtn", "--act-order", "--output", dir + "/q"], mentioning: "--act-order")
        try expectError(["finetune", "--model", stories, "--init", dir + "/q", "--rotate", "--output", dir + "/ft"], mentioning: "--rotate applies to")
        try expectError(["finetune", "--model", stories, "--target", "float", "--student", "2x100", "--rotate", "--output", dir + "/ft"],
                        mentioning: "--rotate with --student")
        try expectError(["finetune", "--model", stories, "--target", "npu", "--teacher-top-k", "0", "--output", dir + "/ft"],
                        mentioning: "--teacher-top-k must be at least 1")
        try expectError(["finetune", "--model", stories, "--target", "npu", "--teacher-top-k", "513", "--steps", "1", "--warmup", "0", "--samples", "8",
                         "--teacher-samples", "0", "--output", dir + "/ft"], mentioning: "--teacher-top-k must be in 1...512")
        try expectError(["finetune", "--model", stories, "--target", "float", "--student", "2x100", "--activations", "int8",
                         "--output", dir + "/ft"], mentioning: "--student with --activations int8")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/ft"))
        try expectError(["quantize", "--model", stories, "--method", "rtn", "--output", nanBin], mentioning: "--output \(nanBin): exists and is a file")
        XCTAssertTrue(FileManager.default.fileExists(atPath: nanBin))
        try expectError(["convert", "--llama2c", stories, "--output", nanBin], mentioning: "\(nanBin): exists and is a file")
        let fifo = dir + "/pipe"
        XCTAssertEqual(mkfifo(fifo, 0o644), 0)
        try expectError(["perplexity", "--model", stories, "--corpus", corpus, "--ctx", "64", "--max-chunks", "2", "--json", fifo],
                        mentioning: "\(fifo): exists and is a FIFO")
        try expectError(["perplexity", "--model", stories, "--corpus", corpus, "--ctx", "64", "--max-chunks", "2", "--json", ""],
                        mentioning: "empty output path")
        try expectError(["perplexity", "--model", stories, "--corpus", corpus, "--ctx", "64", "--max-chunks", "2", "--save-logits", fifo],
                        mentioning: "--save-logits \(fifo)")
    }

    /// --target npu trains at 1e-4 unless --lr says otherwise (3e-4 for the other targets); the summary prints it.
    func testNPUTargetDefaultsToTheLowerLearningRate() throws {
        let stories = "Models/stories260K/stories260K.bin", dir = Repo.tempDirectory("cli-finetune-npu-lr")
        let small = ["--steps", "1", "--warmup", "0", "--samples", "4", "--teacher-samples", "0", "--batch", "2", "--seqlen", "16"]
        let (_, npu, _) = try run(["finetune", "--model", stories, "--target", "npu", "--output", dir + "/npu"] + small)
        XCTAssertTrue(npu.contains("lr 0.0001,"), npu)
        let (_, float, _) = try run(["finetune", "--model", stories, "--target", "float", "--output", dir + "/float"] + small)
        XCTAssertTrue(float.contains("lr 0.0003,"), float)
        let (_, given, _) = try run(["finetune", "--model", stories, "--target", "npu", "--lr", "2e-4", "--output", dir + "/given"] + small)
        XCTAssertTrue(given.contains("lr 0.0002,"), given)
        // --npu-config belongs to --target npu --activations int8, and its weights must be the ones training targets.
        try expectError(["finetune", "--model", stories, "--target", "float", "--npu-config", dir + "/x.json", "--output", dir + "/x"] + small,
                        mentioning: "--npu-config")
        let w4 = dir + "/w4.json"
        try Data(#"{"weight_bits": 4}"#.utf8).write(to: URL(fileURLWithPath: w4))
        try expectError(["finetune", "--model", stories, "--target", "npu", "--activations", "int8", "--npu-config", w4,
                         "--output", dir + "/w4"] + small, mentioning: "weight_bits 4")
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

    /// One loader for every command: a quantized directory (and a GGUF file) runs wherever a model is taken,
    /// and quantize refuses one by name instead of reporting its "missing weights".
    func testEveryCommandLoadsAQuantizedDirectory() throws {
        let dir = Repo.tempDirectory("cli-loader")
        let model = "Models/stories260K/stories260K.bin", q4 = dir + "/q4"
        try run(["quantize", "--model", model, "--method", "rtn", "--bits", "4", "--output", q4])
        let (_, text, _) = try run(["generate", "--model", q4, "--prompt", "Once", "--max-tokens", "8"])
        XCTAssertTrue(text.hasPrefix("Once"), text)
        try run(["generate", "--model", "Tests/ModelsTests/Fixtures/gguf/stories260K-Q8_0.gguf", "--prompt", "Once", "--max-tokens", "4"])
        try run(["npu", "report", "--model", q4, "--calibration", "Corpora/tinystories/tinystories_sample.txt.zst",
                 "--compare-tokens", "64", "--window", "64", "--json", dir + "/npu.json"])
        try run(["npu", "cost", "--model", "Tests/ModelsTests/Fixtures/gguf/stories260K-Q8_0.gguf"])
        try run(["rag", "answers", "--generator", model, "--generator-quantized", q4, "--oracle-context",
                 "--max-questions", "2", "--max-tokens", "2", "--json", dir + "/a.json"])
        let runs = try readJSON(dir + "/a.json")["runs"] as! [[String: Any]]
        XCTAssertEqual(runs.count, 2)
        try run(["rag", "answers", "--generator", q4, "--oracle-context", "--max-questions", "1", "--max-tokens", "2"])
        try expectError(["quantize", "--model", q4, "--method", "rtn", "--bits", "8", "--output", dir + "/qq"],
                        mentioning: "\(q4) is already quantized (rtn, 4 bits")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/qq"))
        try expectError(["layers", "--model", q4, "--scheme", "4:32", "--calibration", "Corpora/tinystories/tinystories_sample.txt.zst"],
                        mentioning: "\(q4) is already quantized")
    }

    /// rag answers finds the tokenizer.model of a directory that convert wrote, as perplexity and generate do.
    func testRagAnswersFindsAConvertedDirectorysTokenizer() throws {
        let dir = Repo.tempDirectory("cli-convert-answers")
        try run(["convert", "--llama2c", "Models/stories260K/stories260K.bin", "--tokenizer", "Tokenizers/tok512/tok512.model",
                 "--output", dir + "/hf"])
        try run(["rag", "answers", "--generator", dir + "/hf", "--oracle-context", "--max-questions", "2", "--max-tokens", "2"])
        try run(["generate", "--model", dir + "/hf", "--prompt", "Once", "--max-tokens", "2"])
    }

    /// The shipped stories260K finds its tokenizer from any working directory (walking up from the model's path).
    func testShippedModelFindsItsTokenizerFromAnyDirectory() throws {
        let elsewhere = URL(fileURLWithPath: Repo.tempDirectory("cli-cwd"))
        let model = Repo.path("Models/stories260K/stories260K.bin")
        try run(["perplexity", "--model", model, "--corpus", Repo.path("Corpora/tinystories/tinystories_sample.txt.zst"),
                 "--ctx", "64", "--max-chunks", "2"], in: elsewhere)
        try run(["generate", "--model", model, "--prompt", "Once", "--max-tokens", "2"], in: elsewhere)
        try run(["rag", "answers", "--generator", model, "--dataset", Repo.path("Corpora/squad/squad-v2-dev-first5.json.zst"),
                 "--oracle-context", "--max-questions", "1", "--max-tokens", "2"], in: elsewhere)
        // The shipped defaults (generator, SQuAD sample, GPTQ calibration text) resolve against the checkout too.
        try run(["rag", "answers", "--oracle-context", "--max-questions", "1", "--max-tokens", "2"], in: elsewhere)
        let out = elsewhere.appendingPathComponent("gptq").path
        try? FileManager.default.removeItem(atPath: out)
        try run(["quantize", "--model", model, "--method", "gptq", "--bits", "8", "--group-size", "-1", "--samples", "4",
                 "--seqlen", "32", "--output", out], in: elsewhere)
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
        // So is answering SQuAD questions with a generator calibrated on the SQuAD paragraphs.
        let squad = "Corpora/squad/squad-v2-dev-first5.json.zst"
        try run(["quantize", "--model", "Models/stories260K/stories260K.bin", "--method", "gptq", "--bits", "8",
                 "--calibration", squad, "--samples", "4", "--seqlen", "64", "--output", dir + "/gptq-squad"])
        try expectError(["rag", "answers", "--oracle-context", "--max-questions", "1", "--generator-quantized", dir + "/gptq-squad"],
                        mentioning: "overlap")
        try run(["rag", "answers", "--oracle-context", "--max-questions", "1", "--max-tokens", "2",
                 "--generator-quantized", dir + "/gptq-squad", "--allow-overlap"])
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

    private func jsonObject(_ path: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
    }

    /// Perplexity with --kld-base writes per-segment deltas and the quantization settings; both are checked
    /// against the per-token records (--save-tokens) with an assignment computed here, independently of
    /// Segments.swift: WikiText article headings found by scanning the corpus bytes, window positions from the
    /// llamacpp layout, frequency classes from the token counts. Compare then shows the segments and gives
    /// advice that depends on the quantization method.
    func testPerplexitySegmentsAndQuantizationEndToEnd() throws {
        let dir = Repo.tempDirectory("cli-seg")
        let corpus = "Corpora/wikitext-2-raw/wiki.test.raw.zst"
        let model = "Models/stories260K/stories260K.bin"
        try run(["quantize", "--model", model, "--method", "rtn", "--bits", "4", "--group-size", "32", "--output", dir + "/rtn4"])
        try run(["quantize", "--model", model, "--method", "gptq", "--bits", "4", "--group-size", "32", "--act-order",
                 "--calibration", "Corpora/tinystories/tinystories_sample.txt.zst", "--samples", "4", "--seqlen", "128",
                 "--output", dir + "/gptq4"])
        // 40 chunks of 128 from offset 0 cover the end of the first article (Robert Boulter) and the next.
        let common = ["--corpus", corpus, "--ctx", "128", "--max-chunks", "40"]
        try run(["perplexity", "--model", model] + common + ["--save-logits", dir + "/base.zst", "--json", dir + "/float.json"])
        let (_, summary, _) = try run(["perplexity", "--model", dir + "/rtn4"] + common + ["--kld-base", dir + "/base.zst",
                                       "--json", dir + "/rtn4.json", "--save-tokens", dir + "/rtn4.tsv"])
        try run(["perplexity", "--model", dir + "/gptq4"] + common + ["--kld-base", dir + "/base.zst", "--json", dir + "/gptq4.json"])
        let f = try jsonObject(dir + "/float.json"), q = try jsonObject(dir + "/rtn4.json"), g = try jsonObject(dir + "/gptq4.json")
        XCTAssertEqual(q["schema_version"] as? Int, 6)
        XCTAssertTrue(f["quantization"] is NSNull, "a float model's quantization is null")
        XCTAssertNil(f["segments"], "no segments without --kld-base")
        let qq = q["quantization"] as! [String: Any], gq = g["quantization"] as! [String: Any]
        XCTAssertEqual(qq["method"] as? String, "rtn"); XCTAssertEqual(qq["bits"] as? Int, 4)
        XCTAssertEqual(qq["group_size"] as? Int, 32); XCTAssertEqual(qq["act_order"] as? Bool, false)
        XCTAssertEqual(gq["method"] as? String, "gptq"); XCTAssertEqual(gq["act_order"] as? Bool, true)
        XCTAssertEqual(gq["static_groups"] as? Bool, false); XCTAssertNotNil(gq["sym"])
        // The quantized checkpoint records the method where AutoGPTQ loaders do not look (quant_method stays gptq).
        let qc = try jsonObject(dir + "/rtn4/quantize_config.json")
        XCTAssertEqual(qc["quant_method"] as? String, "gptq")
        XCTAssertEqual((qc["quantkit"] as? [String: Any])?["method"] as? String, "rtn")

        let scored = q["tokens_scored"] as! Int
        XCTAssertEqual(scored, 40 * (128 - 1 - 64))
        // Per-token records.
        let tsv = try String(contentsOfFile: dir + "/rtn4.tsv", encoding: .utf8).split(separator: "\n").map { $0.split(separator: "\t", omittingEmptySubsequences: false).map(String.init) }
        XCTAssertEqual(tsv[0], ["token_index", "window_position", "token_id", "byte_offset", "document", "nll_base", "nll_quantized", "kld"])
        let rows = tsv.dropFirst().map { r in (index: Int(r[0])!, pos: Int(r[1])!, id: Int(r[2])!, offset: Int(r[3])!,
                                               nb: Double(r[5])!, nq: Double(r[6])!, kld: Double(r[7])!) }
        XCTAssertEqual(rows.count, scored)
        // llamacpp layout: chunk c holds tokens [128c, 128c + 128); rows 64...126 predict tokens 65...127.
        for r in rows {
            XCTAssertEqual(r.pos, (r.index - 1) % 128); XCTAssertTrue((64...126).contains(r.pos), "\(r.pos)")
        }
        // Run-level figures from other code paths: the quantized run's ppl, and the float run's (another process).
        let meanQ = rows.reduce(0) { $0 + $1.nq } / Double(rows.count), meanB = rows.reduce(0) { $0 + $1.nb } / Double(rows.count)
        // (The run's ppl takes logit - max in Float, the per-token records in Double: a few 1e-9 apart.)
        XCTAssertEqual(exp(meanQ), q["ppl"] as! Double, accuracy: 1e-7 * (q["ppl"] as! Double))
        XCTAssertEqual(exp(meanB), f["ppl"] as! Double, accuracy: 1e-5 * (f["ppl"] as! Double), "base NLL from the file's Float32 log-probs")
        XCTAssertEqual(rows.reduce(0) { $0 + $1.kld } / Double(rows.count), (q["kld"] as! [String: Any])["kld_mean"] as! Double, accuracy: 1e-12)

        // Independent document assignment: article heading lines " = Title = " (not " = = "), scanned in the bytes.
        let text = Array(try readMaybeCompressed(corpus))
        var headings: [(start: Int, title: String)] = []
        var lineStarts = Set<Int>()
        var s = 0
        while s < text.count {
            var e = s
            while e < text.count && text[e] != 0x0A { e += 1 }
            lineStarts.insert(s)
            var line = String(decoding: text[s..<e], as: UTF8.self)
            if line.hasSuffix("\r") { line.removeLast() }
            if line.count > 6, line.hasPrefix(" = "), line.hasSuffix(" = "), !line.hasPrefix(" = = ") {
                headings.append((s, String(line.dropFirst(3).dropLast(3))))
            }
            s = e + 1
        }
        XCTAssertEqual(headings.first?.title, "Robert Boulter")
        func document(_ off: Int) -> String { headings.last { $0.start <= off }?.title ?? "(preamble)" }
        for r in rows { XCTAssertTrue(lineStarts.contains(r.offset), "token \(r.index): byte \(r.offset) is not a line start") }
        // Independent frequency classes: distinct ids by count desc, id asc; ceil(10%) frequent, floor(50%) rare.
        var counts: [Int: Int] = [:]
        for r in rows { counts[r.id, default: 0] += 1 }
        let ranked = counts.keys.sorted { (counts[$0]!, -$0) > (counts[$1]!, -$1) }
        let top = max(1, Int((Double(ranked.count) * 0.1).rounded(.up))), rare = max(top, ranked.count - ranked.count / 2)
        var cls: [Int: String] = [:]
        for (i, id) in ranked.enumerated() { cls[id] = i < top ? "frequent (top 10% of ids)" : (i >= rare ? "rare (bottom 50% of ids)" : "mid") }
        let rules = q["segment_rules"] as! [String: Any]
        XCTAssertEqual(rules["documents"] as? String, "wikitext")
        XCTAssertEqual(rules["position_bucket_width"] as? Int, 8, "positions 64...126 in 8 buckets of 8")
        func expected(_ key: (Int) -> String) -> [String: (n: Int, b: Double, q: Double)] {
            var acc: [String: (n: Int, b: Double, q: Double)] = [:]
            for (i, r) in rows.enumerated() { let k = key(i); let a = acc[k] ?? (0, 0, 0); acc[k] = (a.n + 1, a.b + r.nb, a.q + r.nq) }
            return acc.mapValues { ($0.n, exp($0.b / Double($0.n)), exp($0.q / Double($0.n))) }
        }
        let want: [String: [String: (n: Int, b: Double, q: Double)]] = [
            "document": expected { document(rows[$0].offset) },
            "window position": expected { "\(rows[$0].pos / 8 * 8)-\(rows[$0].pos / 8 * 8 + 7)" },
            "token frequency": expected { cls[rows[$0].id]! },
        ]
        XCTAssertGreaterThanOrEqual(want["document"]!.count, 2, "the run spans an article boundary")
        let segs = q["segments"] as! [[String: Any]]
        for (group, w) in want {
            let got = segs.filter { $0["group"] as? String == group }
            XCTAssertEqual(Set(got.map { $0["segment"] as! String }), Set(w.keys), group)
            XCTAssertEqual(got.reduce(0) { $0 + ($1["count"] as! Int) }, scored, "\(group): token counts sum to tokens_scored")
            for sg in got {
                guard let e = w[sg["segment"] as! String] else { continue }
                XCTAssertEqual(sg["count"] as? Int, e.n, "\(group) \(sg["segment"]!)")
                XCTAssertEqual(sg["base"] as! Double, e.b, accuracy: 1e-9 * e.b)
                XCTAssertEqual(sg["quantized"] as! Double, e.q, accuracy: 1e-9 * e.q)
            }
            let losses = got.map { $0["relative_loss"] as! Double }
            XCTAssertEqual(losses, losses.sorted(by: >), "\(group): worst first")
        }
        // The readable summary lists the worst segments per group.
        XCTAssertTrue(summary.contains("segments     the 5 worst per group"), summary)
        let worstDoc = segs.first { $0["group"] as? String == "document" }!["segment"] as! String
        XCTAssertTrue(summary.contains(worstDoc), summary)

        // Compare: segment table (Markdown), chart (HTML), and advice that follows each run's method.
        let (_, out, _) = try run(["compare", dir + "/float.json", dir + "/rtn4.json", dir + "/gptq4.json", "--thresholds", "0,100",
                                   "--markdown", dir + "/report.md", "--html", dir + "/report.html", "--json", dir + "/compare.json"])
        XCTAssertTrue(out.contains("Largest per-segment degradations"), out)
        let md = try String(contentsOfFile: dir + "/report.md", encoding: .utf8)
        XCTAssertTrue(md.contains("| run | group | segment | count | base | quantized | rel. loss | KLD mean |"), md)
        XCTAssertTrue(md.contains("| rtn4 | document | \(worstDoc) |"), md)
        let html = try String(contentsOfFile: dir + "/report.html", encoding: .utf8)
        XCTAssertTrue(html.contains("Per-segment relative loss (%), worst first"))
        XCTAssertTrue(html.contains("rtn4 document: \(SVGEscapeForTest(worstDoc))"))
        let cmp = try jsonObject(dir + "/compare.json")
        let runs = cmp["runs"] as! [[String: Any]]
        func steps(_ label: String) -> [String] {
            ((runs.first { $0["label"] as? String == label }?["verdict"] as? [String: Any])?["next_steps"] as? [String]) ?? []
        }
        // Unrotated results are pointed at rotation first; then the rest of the ladder.
        XCTAssertTrue(steps("rtn4").first?.contains("--rotate") ?? false, "\(steps("rtn4"))")
        XCTAssertTrue(steps("rtn4").dropFirst().first?.contains("--method gptq --act-order") ?? false, "\(steps("rtn4"))")
        XCTAssertTrue(steps("rtn4").dropFirst().first?.contains("instead of RTN") ?? false, "\(steps("rtn4"))")
        XCTAssertEqual(steps("gptq4").count, 2, "GPTQ act-order g32: rotation, then mixed precision: \(steps("gptq4"))")
        XCTAssertTrue(steps("gptq4").last?.hasPrefix("mixed precision: keep the most sensitive modules at 8 bits") ?? false, "\(steps("gptq4"))")
        XCTAssertTrue((cmp["segments"] as! [[String: Any]]).contains { $0["run"] as? String == "gptq4" })
    }

    /// `report`: FP32, FP16 (convert --dtype f16) and INT8 of stories260K in one study; the FP16 run is the
    /// baseline, FP32 the reference; bad input gives one line naming the flag or file and writes nothing.
    func testReportWithFP16BaselineAndBadInput() throws {
        let dir = Repo.tempDirectory("cli-report")
        let corpus = "Corpora/wikitext-2-raw/wiki.test.raw.zst", model = "Models/stories260K/stories260K.bin"
        let ppl = ["--corpus", corpus, "--ctx", "128", "--max-chunks", "8"]
        try run(["convert", "--llama2c", model, "--tokenizer", "Tokenizers/tok512/tok512.model", "--dtype", "f16", "--output", dir + "/fp16"])
        try run(["quantize", "--model", model, "--method", "rtn", "--bits", "8", "--group-size", "-1", "--output", dir + "/int8"])
        try run(["perplexity", "--model", model] + ppl + ["--save-logits", dir + "/base.zst", "--json", dir + "/fp32.json"])
        try run(["perplexity", "--model", dir + "/fp16"] + ppl + ["--kld-base", dir + "/base.zst", "--json", dir + "/fp16.json"])
        try run(["perplexity", "--model", dir + "/int8"] + ppl + ["--kld-base", dir + "/base.zst", "--json", dir + "/int8.json"])
        let fp16 = try readJSON(dir + "/fp16.json")
        XCTAssertEqual(fp16["bits_per_weight"] as? Double, 16)
        let files = [dir + "/fp32.json", dir + "/int8.json", dir + "/fp16.json", Repo.path("Tests/EvaluationTests/Fixtures/compare/answers.json")]
        let (_, out, _) = try run(["report"] + files + ["--html", dir + "/r.html", "--markdown", dir + "/r.md", "--json", dir + "/r.json"])
        XCTAssertTrue(out.contains("Language model: "), out)
        XCTAssertTrue(out.contains("FP32 -> FP16 (ppl): stories260K.bin"), out)
        let r = try readJSON(dir + "/r.json")
        XCTAssertEqual(r["kind"] as? String, "report")
        let cmps = r["comparisons"] as! [[String: Any]]
        XCTAssertEqual(cmps.map { $0["compared_kind"] as? String }, ["perplexity", "answers"])
        XCTAssertEqual(cmps[0]["baseline"] as? String, "fp16")
        XCTAssertEqual(cmps[0]["reference"] as? String, "stories260K.bin")
        let html = try String(contentsOfFile: dir + "/r.html", encoding: .utf8)
        XCTAssertTrue(html.contains("<section id=\"perplexity\">") && html.contains("<section id=\"answers\">"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/r.md"))

        try expectError(["report"] + files + ["--baseline", dir + "/other.json", "--html", dir + "/bad.html"], mentioning: "--baseline \(dir)/other.json")
        try expectError(["report", dir + "/fp32.json", dir + "/missing.json", "--html", dir + "/bad.html"], mentioning: "missing.json")
        try expectError(["report"] + files + ["--thresholds", "3,1", "--html", dir + "/bad.html"], mentioning: "--thresholds")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/bad.html"), "no report after a failed run")
    }

    /// XML escaping of a segment name as the HTML report writes it.
    private func SVGEscapeForTest(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
            .replacingOccurrences(of: "\"", with: "&quot;").replacingOccurrences(of: "'", with: "&#39;")
    }

    private func readJSON(_ path: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
    }

    /// The NPU facts every --backend npu result carries: settings, fallbacks (counted) and which op ran where.
    private func checkNPUFields(_ o: [String: Any], fallbacks: Int, ops: [String], file: StaticString = #filePath, line: UInt = #line) {
        let cfg = o["npu_config"] as? [String: Any]
        XCTAssertEqual(cfg?["weight_bits"] as? Int, 8, file: file, line: line)
        XCTAssertEqual(cfg?["nonlinear_mode"] as? String, "fp16", file: file, line: line)
        XCTAssertGreaterThanOrEqual(o["npu_calibration_tokens"] as? Int ?? 0, 16, file: file, line: line)
        XCTAssertNotNil(o["npu_calibration"], file: file, line: line)
        XCTAssertEqual(o["npu_fallback_count"] as? Int, fallbacks, file: file, line: line)
        XCTAssertEqual((o["npu_fallbacks"] as? [Any])?.count, fallbacks, file: file, line: line)
        let entries = (o["npu_ops"] as? [[String: Any]]) ?? []
        for op in ops {
            XCTAssertGreaterThan(entries.first { $0["op"] as? String == op }?["calls"] as? Int ?? 0, 0, "op \(op) counted", file: file, line: line)
        }
    }

    func testRagRetrievalThroughNPU() throws {
        let dir = Repo.tempDirectory("cli-npu-retrieval")
        let (_, out, _) = try run(["rag", "retrieval", "--max-queries", "4", "--max-docs", "40", "--no-cache", "--backend", "npu",
                                   "--npu-calibration-tokens", "1024", "--json", dir + "/r.json"])
        XCTAssertTrue(out.contains("npu op layer_norm on fp16"), out)
        let r = try readJSON(dir + "/r.json")
        XCTAssertEqual(r["backend"] as? String, "npu")
        checkNPUFields(r, fallbacks: 0, ops: ["layer_norm", "gelu", "softmax", "attention_matmul", "residual_add"])
        XCTAssertTrue((r["npu_calibration"] as? String ?? "").contains("corpus"), "calibrated on corpus passages")
        XCTAssertEqual(r["npu_host_ops"] as? [String], ["embedding gather + position/type add", "pooling", "L2 normalisation"])
        let runs = r["runs"] as! [[String: Any]]
        XCTAssertEqual(runs.map { $0["label"] as? String }, ["float", "npu-w8a8-fp16"])
        XCTAssertEqual(runs.map { $0["backend"] as? String }, ["cpu", "npu"])
        for run in runs { XCTAssertNotNil((run["metrics"] as? [String: Any])?["ndcg@10"]) }
        let comps = r["comparisons"] as! [[String: Any]]
        XCTAssertEqual(comps.count, 1)
        XCTAssertEqual(comps[0]["other"] as? String, "npu-w8a8-fp16")
        XCTAssertNotNil((comps[0]["deltas"] as? [String: Any])?["ndcg@10"])
    }

    func testRagAnswersThroughNPU() throws {
        let dir = Repo.tempDirectory("cli-npu-answers")
        try run(["rag", "answers", "--oracle-context", "--max-questions", "3", "--max-tokens", "4", "--backend", "npu",
                 "--npu-calibration-tokens", "512", "--json", dir + "/a.json"])
        let a = try readJSON(dir + "/a.json")
        XCTAssertEqual(a["backend"] as? String, "npu")
        XCTAssertEqual((a["npu_config"] as? [String: Any])?["weight_bits"] as? Int, 8)
        let runs = a["runs"] as! [[String: Any]]
        XCTAssertEqual(runs.map { $0["label"] as? String }, ["float", "npu-w8a8"])
        XCTAssertEqual(runs.map { $0["backend"] as? String }, ["cpu", "npu"])
        checkNPUFields(runs[1], fallbacks: 0, ops: ["rms_norm", "swiglu", "softmax", "rope", "residual_add"])
        let m = runs[1]["metrics"] as! [String: Any]
        let agreement = try XCTUnwrap(m["agreement_em"] as? Double)
        XCTAssertTrue((0...1).contains(agreement))
        XCTAssertEqual((runs[0]["metrics"] as! [String: Any])["agreement_em"] as? Double, 1)

        // A quantized generator through the NPU: its packed int8 layers cannot be re-quantized by the NPU; each
        // falls back to the CPU, is named on stderr and counted (5 blocks x 7 linears); lm_head stays float -> NPU.
        let (_, _, err) = try run(["rag", "answers", "--oracle-context", "--max-questions", "2", "--max-tokens", "2",
                                   "--generator-quantized", "rtn-int8", "--backend", "npu", "--npu-calibration-tokens", "256",
                                   "--json", dir + "/q.json"])
        XCTAssertTrue(err.contains("falls back to the float CPU path"), err)
        let q = try readJSON(dir + "/q.json")
        let qr = q["runs"] as! [[String: Any]]
        XCTAssertEqual(qr.map { $0["label"] as? String }, ["float", "rtn-int8", "npu-w8a8(rtn-int8)"])
        checkNPUFields(qr[2], fallbacks: 35, ops: ["rms_norm"])
    }

    func testNPUBackendBadInput() throws {
        let dir = Repo.tempDirectory("cli-npu-bad")
        try #"{"weight_bits": 5}"#.write(toFile: dir + "/bad.json", atomically: true, encoding: .utf8)
        try #"{"hardware": {"macs_per_cycle": 0}}"#.write(toFile: dir + "/zero.json", atomically: true, encoding: .utf8)
        for args in [["rag", "answers", "--oracle-context", "--max-questions", "1"], ["rag", "retrieval", "--max-queries", "1", "--max-docs", "5", "--no-cache"],
                     ["perplexity", "--model", "Models/stories260K/stories260K.bin", "--corpus", "Corpora/tinystories/tinystories_sample.txt.zst", "--ctx", "64"]] {
            try expectError(args + ["--backend", "npu", "--npu-config", dir + "/bad.json", "--json", dir + "/o.json"], mentioning: "bad.json")
            try expectError(args + ["--backend", "npu", "--npu-config", dir + "/zero.json", "--json", dir + "/o.json"], mentioning: "zero.json")
            try expectError(args + ["--npu-config", dir + "/bad.json"], mentioning: "--npu-config needs --backend npu")
            try expectError(args + ["--backend", "gpu"], mentioning: "--backend must be cpu or npu")
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/o.json"), "no output after a failed run")
        }
        // Calibration text too small for the NPU config's minimum.
        try #"{"min_calibration_tokens": 100000}"#.write(toFile: dir + "/min.json", atomically: true, encoding: .utf8)
        try expectError(["rag", "answers", "--oracle-context", "--max-questions", "1", "--backend", "npu", "--npu-config", dir + "/min.json"],
                        mentioning: "calibration too small")
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
        // Each run names its quantization (the verdict's advice depends on the method).
        XCTAssertEqual(((r2["runs"] as! [[String: Any]])[1]["quantization"] as? [String: Any])?["method"] as? String, "gptq")
        XCTAssertTrue((r2["runs"] as! [[String: Any]])[0]["quantization"] is NSNull)
        // Calibrated on the evaluation queries: refused unless --allow-overlap.
        try run(["quantize", "--model", "minilm", "--method", "gptq", "--bits", "8", "--group-size", "-1",
                 "--calibration", "Corpora/scifact/queries.jsonl.zst", "--samples", "8", "--seqlen", "32", "--output", dir + "/qq"])
        try expectError(["rag", "retrieval", "--embedder-quantized", dir + "/qq"] + small, mentioning: "overlap")
        // A retriever calibrated on the SQuAD questions is refused by `rag answers`.
        let squad = try JSONSerialization.jsonObject(with: readMaybeCompressed(Repo.path("Corpora/squad/squad-v2-dev-first5.json.zst"))) as! [String: Any]
        var questions: [String] = []
        for article in squad["data"] as! [[String: Any]] {
            for p in article["paragraphs"] as! [[String: Any]] {
                for qa in p["qas"] as! [[String: Any]] { questions.append(qa["question"] as! String) }
            }
        }
        try questions.joined(separator: "\n").write(toFile: dir + "/questions.txt", atomically: true, encoding: .utf8)
        try run(["quantize", "--model", "minilm", "--method", "gptq", "--bits", "8", "--group-size", "-1",
                 "--calibration", dir + "/questions.txt", "--samples", "8", "--seqlen", "32", "--output", dir + "/qsquad"])
        // (The check samples 1 in 8 word 8-grams: enough questions to hold some; it fails before any generation.)
        try expectError(["rag", "answers", "--retriever", dir + "/qsquad", "--max-questions", "300", "--max-tokens", "2"],
                        mentioning: "overlap")
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

    /// The recovery methods through the CLI: a rotated RTN checkpoint and a pruned float checkpoint load in
    /// perplexity and carry their record into the result; the NPU takes --rotate; bad flags get one clear line.
    /// `--shard` and `merge` through the binary: the merged result equals the unsharded one; bad shards and bad
    /// plans get one line, a non-zero exit, and no merged file.
    func testShardMergeAndSweepPlanFromTheCommandLine() throws {
        let dir = Repo.tempDirectory("cli-shard")
        let eval = ["--model", "Models/stories260K/stories260K.bin", "--corpus", "Corpora/wikitext-2-raw/wiki.test.raw.zst", "--ctx", "64", "--max-chunks", "5"]
        try run(["perplexity"] + eval + ["--json", dir + "/whole.json"])
        for i in 0..<2 { try run(["perplexity"] + eval + ["--shard", "\(i)/2", "--json", dir + "/p\(i).json"]) }
        let (_, merged, _) = try run(["merge", dir + "/p1.json", dir + "/p0.json", "--json", dir + "/merged.json"])
        XCTAssertTrue(merged.contains("chunks       5"), merged)
        let a = try JSONSerialization.jsonObject(with: readFile(dir + "/whole.json")) as! [String: Any]
        let b = try JSONSerialization.jsonObject(with: readFile(dir + "/merged.json")) as! [String: Any]
        for k in ["ppl", "ppl_error", "chunk_nll", "tokens_scored", "corpus_sha256"] {
            XCTAssertEqual(a[k] as? NSObject, b[k] as? NSObject, k)
        }

        try expectError(["perplexity"] + eval + ["--shard", "2/2", "--json", dir + "/x.json"], mentioning: "--shard 2/2")
        try expectError(["perplexity"] + eval + ["--shard", "0/0", "--json", dir + "/x.json"], mentioning: "--shard 0/0")
        try expectError(["perplexity"] + eval + ["--shard", "0/9", "--json", dir + "/x.json"], mentioning: "only 5 windows")
        try expectError(["perplexity"] + eval + ["--shard", "0/2"], mentioning: "--shard needs --json")
        try expectError(["merge", dir + "/p0.json", "--json", dir + "/m2.json"], mentioning: "shard 1 of 2 missing")
        try expectError(["merge", dir + "/p0.json", dir + "/p0.json", dir + "/p1.json", "--json", dir + "/m2.json"], mentioning: "given twice")
        try expectError(["merge", dir + "/p0.json", dir + "/whole.json", "--json", dir + "/m2.json"], mentioning: "whole.json: not a partial result")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/x.json"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/m2.json"))

        let grid = ["sweep", "--model", "Models/stories260K/stories260K.bin", "--eval", "Corpora/wikitext-2-raw/wiki.test.raw.zst",
                    "--methods", "rtn", "--bits", "4", "--max-chunks", "4", "--output", dir + "/sweep"]
        let (_, emitted, _) = try run(grid + ["--emit", "slurm", dir + "/jobs", "--eval-shards", "2"])
        XCTAssertTrue(emitted.contains("stages 1 + 1 + 2 + 1 tasks"), emitted)
        try expectError(grid + ["--emit", "pbs", dir + "/jobs2"], mentioning: "--emit")
        try expectError(["sweep", "--model", "Models/stories260K/stories260K.bin", "--eval", "Corpora/wikitext-2-raw/wiki.test.raw.zst",
                         "--methods", "rtn,nope", "--output", dir + "/s2", "--emit", "slurm", dir + "/jobs3"], mentioning: "'nope'")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/jobs3/plan.json"))
        try expectError(["sweep", "--plan", dir + "/jobs/plan.json", "--stage", "2", "--task", "2"], mentioning: "--task 2")
        try expectError(["sweep", "--plan", dir + "/whole.json", "--stage", "0", "--task", "0"], mentioning: "not a sweep plan")
        // The report stage before the tasks it needs: one line naming the missing record.
        try expectError(["sweep", "--plan", dir + "/jobs/plan.json", "--stage", "3", "--task", "0"], mentioning: "float.json.point: missing")
    }

    func testRecoveryMethodsEndToEndAndBadInput() throws {
        let dir = Repo.tempDirectory("cli-recovery")
        let model = "Models/stories260K/stories260K.bin"
        let corpus = "Corpora/tinystories/tinystories_sample.txt.zst"
        let cal = ["--calibration", "Corpora/scifact/corpus.jsonl.zst", "--samples", "8", "--seqlen", "64"]
        try run(["quantize", "--model", model, "--method", "rtn", "--rotate", "--bits", "4", "--group-size", "32",
                 "--output", dir + "/rot", "--json", dir + "/q-rot.json"])
        try run(["quantize", "--model", model, "--method", "sparsegpt", "--sparsity", "2:4"] + cal + ["--output", dir + "/sp"])
        try run(["quantize", "--model", model, "--method", "gptq", "--gptaq", "--gptaq-alpha", "0.5", "--bits", "4", "--group-size", "32"] + cal
                + ["--output", dir + "/gptaq", "--json", dir + "/q-gptaq.json"])
        try run(["quantize", "--model", model, "--method", "rtn", "--smoothquant", "--bits", "8", "--group-size", "32"] + cal
                + ["--output", dir + "/sq", "--json", dir + "/q-sq.json"])
        XCTAssertEqual((try jsonObject(dir + "/q-sq.json")["recovery"] as? [String: Any])?["smoothquant_alpha"] as? Double, 0.5)
        let gq = try jsonObject(dir + "/q-gptaq.json")
        XCTAssertEqual((gq["recovery"] as? [String: Any])?["gptaq_alpha"] as? Double, 0.5)
        let common = ["--corpus", corpus, "--ctx", "64", "--max-chunks", "4"]
        try run(["perplexity", "--model", dir + "/rot"] + common + ["--json", dir + "/rot.json"])
        try run(["perplexity", "--model", dir + "/sp"] + common + ["--json", dir + "/sp.json"])
        let rot = try jsonObject(dir + "/rot.json")["quantization"] as! [String: Any]
        let rotation = (rot["recovery"] as! [String: Any])["rotation"] as! [String: Any]
        XCTAssertEqual(rotation["online_hadamard"] as? Bool, true)
        XCTAssertEqual(rotation["residual"] as? String, "hadamard")
        let sp = try jsonObject(dir + "/sp.json")["quantization"] as! [String: Any]
        XCTAssertEqual(sp["method"] as? String, "sparsegpt")
        let sparsity = (sp["recovery"] as! [String: Any])["sparsity"] as! [String: Any]
        XCTAssertEqual(sparsity["density"] as! Double, 0.5, accuracy: 1e-12)
        try run(["perplexity", "--model", model] + common + ["--backend", "npu", "--rotate", "--npu-calibration-tokens", "512",
                 "--json", dir + "/npu.json"])
        XCTAssertNotNil((try jsonObject(dir + "/npu.json")["npu_recovery"] as? [String: Any])?["rotation"] as? [String: Any])

        try expectError(["quantize", "--model", model, "--method", "sparsegpt", "--sparsity", "3:2", "--output", dir + "/x"], mentioning: "--sparsity '3:2'")
        try expectError(["quantize", "--model", model, "--method", "rtn", "--sparsity", "0.5", "--output", dir + "/x"], mentioning: "--sparsity needs --method sparsegpt")
        try expectError(["quantize", "--model", model, "--method", "hqq", "--awq", "--output", dir + "/x"], mentioning: "--awq combines with")
        try expectError(["quantize", "--model", model, "--method", "nope", "--output", dir + "/x"], mentioning: "awq, hqq, sparsegpt")
        try expectError(["quantize", "--model", model, "--method", "rtn", "--gptaq", "--output", dir + "/x"], mentioning: "--gptaq applies to --method gptq")
        try expectError(["perplexity", "--model", model] + common + ["--smoothquant"], mentioning: "--backend npu")
        try expectError(["perplexity", "--model", model] + common + ["--backend", "npu", "--smoothquant-alpha", "1.5"], mentioning: "--smoothquant-alpha")
        try expectError(["export", "--model", dir + "/rot", "--format", "gguf", "--type", "q4_0", "--output", dir + "/r.gguf"], mentioning: "online Hadamard")
        try expectError(["sweep", "--model", model, "--eval", "Corpora/scifact/corpus.jsonl.zst", "--output", dir + "/sw"], mentioning: "overlaps the calibration text")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/x"), "no partial output")
    }
}
