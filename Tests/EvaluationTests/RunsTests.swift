import Evaluation
import Foundation
import Models
import NPU
import Quantization
import TensorCore
import TestSupport
import XCTest

/// The library runs the CLI calls: what used to be decided inside command `run()` methods (token stream and BOS
/// rule, option checks, scheme and override parsing, the result envelope, progress events) tested on its own.
final class RunsTests: XCTestCase {
    /// Records every event a run sends.
    final class Recorder: ProgressObserver, @unchecked Sendable {
        private let lock = NSLock()
        private(set) var events: [ProgressEvent] = []
        func handle(_ event: ProgressEvent) { lock.lock(); events.append(event); lock.unlock() }
    }

    struct Case: Decodable {
        let corpus: String; let sha256: String; let `protocol`: String; let ctx: Int; let stride: Int?
        let max_chunks: Int; let total_tokens: Int; let chunks: Int; let tokens_scored: Int; let ppl: Double
    }
    struct Fixture: Decodable { let cases: [Case] }

    /// The whole run (corpus read, QuantKit's own tokenization, BOS once, windows) against Tools/reference_llama.py,
    /// whose tokens come from the Python sentencepiece library: the run must see the same token stream.
    func testPerplexityRunMatchesNumpyReference() throws {
        let fx = try JSONDecoder().decode(Fixture.self, from: readMaybeCompressed(Repo.path("Tests/EvaluationTests/Fixtures/perplexity_stories260K.json.zst")))
        let cases = fx.cases.filter { $0.corpus.contains("tinystories") }
        XCTAssertEqual(cases.count, 4)
        for c in cases {
            var o = PerplexityRunOptions(model: Repo.path("Models/stories260K/stories260K.bin"), corpus: Repo.path(c.corpus),
                                         evaluation: PerplexityOptions(protocolKind: PerplexityProtocol(rawValue: c.protocol)!, ctx: c.ctx,
                                                                       stride: c.stride, maxChunks: c.max_chunks))
            o.tokenizer = Repo.path("Tokenizers/tok512/tok512.model")
            let recorder = Recorder()
            let r = try PerplexityRun.run(o, progress: recorder)
            let label = "\(c.protocol) ctx \(c.ctx)"
            XCTAssertEqual(r.corpusTokens, c.total_tokens, label)
            XCTAssertEqual(r.corpusSHA256, c.sha256, label)
            XCTAssertEqual(r.chunks, c.chunks, label)
            XCTAssertEqual(r.tokensScored, c.tokens_scored, label)
            XCTAssertEqual(r.ppl, c.ppl, accuracy: c.ppl * 1e-4, label)
            XCTAssertEqual(r.chunkNLL.count, c.chunks, label)
            XCTAssertEqual(r.chunkNLL.map(\.count).reduce(0, +), c.tokens_scored, label)
            XCTAssertNil(r.quantization, label)
            // Progress: the task is announced (done 0), then reaches its total.
            let steps = recorder.events.compactMap { e -> (String, Int, Int)? in
                if case let .advanced(task, done, total, _, _, _) = e { return (task, done, total) } else { return nil }
            }
            XCTAssertEqual(steps.first?.0, "perplexity", label)
            XCTAssertEqual(steps.first?.1, 0, label)
            XCTAssertEqual(steps.last?.1, c.chunks, label)
            XCTAssertEqual(steps.last?.2, c.chunks, label)
        }
    }

    /// Every size a user supplies is checked against its stated limit, naming the flag, before any arithmetic or
    /// allocation (--ctx, --samples, --group-size ... at Int.max used to overflow or exhaust memory).
    func testHugeFlagValuesAreRefusedByName() throws {
        func refused(_ needle: String, line: UInt = #line, _ body: () throws -> Void) {
            XCTAssertThrowsError(try body(), line: line) { e in
                XCTAssertTrue("\(e)".contains(needle), "\(e) lacks \(needle)", line: line)
                XCTAssertFalse("\(e)".contains("\n"), line: line)
            }
        }
        refused("--ctx \(Int.max): must be 2...1048576") { try PerplexityOptions(ctx: .max).validate() }
        refused("--stride 99: must be 1...64") { try PerplexityOptions(protocolKind: .strided, ctx: 64, stride: 99).validate() }
        refused("--batch") { try PerplexityOptions(ctx: 64, batchTokens: .max).validate() }
        refused("--ctx") { _ = try Perplexity.windowCount(n: 100, options: PerplexityOptions(ctx: .max)) }
        refused("--samples \(Int.max): must be 1...65536") {
            _ = try CalibrationWindows.sample(tokens: [1, 2, 3], samples: .max, seqlen: 2, seed: 0)
        }
        refused("--samples 100000000") { _ = try CalibrationWindows.sample(tokens: [1, 2, 3], samples: 100_000_000, seqlen: 2, seed: 0) }
        refused("--samples 60000 x --seqlen 512") { _ = try CalibrationWindows.sample(tokens: [1, 2, 3], samples: 60_000, seqlen: 512, seed: 0) }
        refused("--seqlen") { _ = try CalibrationWindows.sample(tokens: [1, 2, 3], samples: 1, seqlen: .max, seed: 0) }
        var q = QuantizeRunOptions(model: "m", output: "o")
        q.groupSize = .max
        refused("--group-size \(Int.max)") { _ = try q.resolved() }
        q.groupSize = 32
        q.samples = .max
        refused("--samples") { _ = try q.resolved() }
        var l = LayersRunOptions(model: "m", calibration: "c")
        l.scheme = "4:32"
        l.ctx = .max
        refused("--ctx \(Int.max)") { try l.validate() }
        l.ctx = 128
        l.windows = .max
        refused("--windows \(Int.max)") { try l.validate() }
        var r = RetrievalRunOptions(dataset: "d")
        r.k = .max
        refused("--k \(Int.max)") { try r.validate() }
        var a = AnswersRunOptions(generator: "g", dataset: "d")
        a.maxTokens = .max
        refused("--max-tokens \(Int.max)") { try a.validate() }
        a.maxTokens = 16
        a.topK = .max
        refused("--top-k") { try a.validate() }
        refused("--npu-calibration-tokens") { _ = try NPUModelSetup.calibrationText("x", tokens: .max) }
        let m = try LlamaModel.load(path: Repo.path("Models/stories260K/stories260K.bin"))
        refused("--max-tokens \(Int.max)") { _ = try m.generateGreedy(prompt: [1], maxTokens: .max) }
    }

    func testPerplexityRunWarnsThroughTheObserver() throws {
        // stories260K was trained on 512 positions: a longer window is a note, not a line the library prints.
        let o = PerplexityRunOptions(model: Repo.path("Models/stories260K/stories260K.bin"),
                                     corpus: Repo.path("Corpora/tinystories/tinystories_sample.txt.zst"),
                                     evaluation: PerplexityOptions(ctx: 600, maxChunks: 1))
        let recorder = Recorder()
        _ = try PerplexityRun.run(o, progress: recorder)
        XCTAssertTrue(recorder.events.contains { if case .note(let m) = $0 { return m.contains("max_position_embeddings 512") } else { return false } })
    }

    func testPerplexityOptionsRefuseWhatNoRunCanHonour() {
        func options(_ change: (inout PerplexityRunOptions) -> Void) -> PerplexityRunOptions {
            var o = PerplexityRunOptions(model: "m", corpus: "c", evaluation: PerplexityOptions(ctx: 64))
            change(&o)
            return o
        }
        let cases: [(PerplexityRunOptions, String)] = [
            (options { $0.evaluation.stride = 8 }, "--stride"),
            (options { $0.evaluation.ctx = 1 }, "--ctx"),
            (options { $0.evaluation.maxChunks = 0 }, "--max-chunks"),
            (options { $0.evaluation.batchTokens = 0 }, "--batch"),
            (options { $0.saveTokens = "t.tsv" }, "--save-tokens needs --kld-base"),
            (options { $0.int8Activations = true; $0.npu = NPUBackendSettings() }, "--int8-activations"),
        ]
        for (o, flag) in cases {
            XCTAssertThrowsError(try o.validate(), flag) { XCTAssertTrue("\($0)".contains(flag), "\($0)") }
        }
        XCTAssertNoThrow(try options { $0.evaluation = PerplexityOptions(protocolKind: .strided, ctx: 64, stride: 8) }.validate())
    }

    func testSchemeSyntaxOfLayers() throws {
        let s = try LayersRunOptions.parseScheme("4:32")
        XCTAssertEqual([s.bits, s.groupSize], [4, 32])
        XCTAssertTrue(s.symmetric)
        let pc = try LayersRunOptions.parseScheme("8")
        XCTAssertEqual(pc.bits, 8)
        XCTAssertEqual(pc.groupSize, QuantScheme.perChannel)
        XCTAssertFalse(try LayersRunOptions.parseScheme("4:128:asym").symmetric)
        XCTAssertThrowsError(try LayersRunOptions.parseScheme("four")) { XCTAssertTrue("\($0)".contains("--scheme")) }
        XCTAssertThrowsError(try LayersRunOptions.parseScheme("4:g32")) { XCTAssertTrue("\($0)".contains("\"g32\"")) }
    }

    func testLayersOptions() {
        var o = LayersRunOptions(model: "m", calibration: "c")
        XCTAssertThrowsError(try o.validate()) { XCTAssertTrue("\($0)".contains("exactly one of --quantized")) }
        o.scheme = "4:32"
        XCTAssertNoThrow(try o.validate())
        o.planTarget = .qerror(0.01)
        XCTAssertThrowsError(try o.validate()) { XCTAssertTrue("\($0)".contains("--heldout")) }
        o.heldout = "h"
        XCTAssertNoThrow(try o.validate())
    }

    func testQuantizeOptionsResolveOverridesAndPlans() throws {
        var o = QuantizeRunOptions(model: "m", output: "out")
        o.bits = 4
        o.groupSize = 32
        o.overrides = ["down_proj=8"]
        o.skip = ["layers.0."]
        let r = try o.resolved()
        XCTAssertEqual([r.bits, r.groupSize], [4, 32])
        XCTAssertEqual(try r.options.scheme(for: "model.layers.1.mlp.down_proj")?.bits, 8)
        XCTAssertEqual(try r.options.scheme(for: "model.layers.1.mlp.up_proj")?.bits, 4)
        XCTAssertNil(try r.options.scheme(for: "model.layers.0.mlp.up_proj"))  // skipped: stays float

        for bad in ["down_proj", "=8", "down_proj=5", "down_proj=x"] {
            o.overrides = [bad]
            XCTAssertThrowsError(try o.resolved(), bad) { XCTAssertTrue("\($0)".contains("--override '\(bad)'"), "\($0)") }
        }
        o.overrides = []
        o.groupSize = 0
        XCTAssertThrowsError(try o.resolved()) { XCTAssertTrue("\($0)".contains("--group-size")) }
        o.groupSize = -1
        o.staticGroups = true
        XCTAssertThrowsError(try o.resolved()) { XCTAssertTrue("\($0)".contains("--static-groups")) }

        // A plan replaces bits and group size (group 0 means per channel); 16-bit modules become float skips.
        let dir = Repo.tempDirectory("plan")
        let plan = dir + "/plan.json"
        try Data(#"{"scheme": {"bits": 3, "group_size": 0}, "modules": {"q_proj": {"bits": 8}, "lm": {"float": true}}}"#.utf8)
            .write(to: URL(fileURLWithPath: plan))
        var p = QuantizeRunOptions(model: "m", output: "out")
        p.plan = plan
        let rp = try p.resolved()
        XCTAssertEqual([rp.bits, rp.groupSize], [3, -1])
        XCTAssertEqual(try rp.options.scheme(for: "model.layers.2.self_attn.q_proj")?.bits, 8)
        XCTAssertNil(try rp.options.scheme(for: "lm"))
    }

    /// Typed reports are written by JSONEncoder alone: Foundation's parser on Linux reads 0.9999835850592672 back
    /// as 0.9999835850592671, which a round trip through it would write.
    func testEnvelopeWritesTypedReportsExactly() throws {
        struct Body: Encodable { var x = 0.9999835850592672; var y = 285.95030626400376; var kind = "ignored"; var command = "mine" }
        let data = try ResultEnvelope(kind: "test", command: ["quantkit", "a b"]).data(Body())
        let text = String(decoding: data, as: UTF8.self)
        XCTAssertTrue(text.contains("0.9999835850592672"), text)
        XCTAssertTrue(text.contains("285.95030626400376"), text)
        let o = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        XCTAssertEqual(o["schema_version"] as? Int, ResultSchema.current)
        XCTAssertEqual(o["kind"] as? String, "test")  // the envelope's kind wins
        XCTAssertEqual(o["command"] as? String, "mine")  // other body keys win
        XCTAssertEqual((o["tool"] as? [String: String])?["name"], "quantkit")
        XCTAssertNotNil(o["created"])

        struct Bad: Encodable { var ppl = Double.nan }
        XCTAssertThrowsError(try ResultEnvelope(kind: "perplexity").data(Bad())) {
            XCTAssertTrue("\($0)".contains("ppl"), "\($0)")
            XCTAssertTrue("\($0)".contains("JSON cannot represent"), "\($0)")
        }
    }

    func testTokenizerFoundBesideAllama2cFile() throws {
        let path = try ModelLoading.tokenizerPath(model: Repo.path("Models/stories260K/stories260K.bin"), explicit: nil)
        XCTAssertTrue(path.hasSuffix("tok512.model"), path)
        XCTAssertEqual(try ModelLoading.tokenizerPath(model: "x", explicit: "given.json"), "given.json")
    }

    /// The shipped tokenizer is found from the model's path (the repository above it), never from the working
    /// directory: the path returned is the repository's file, whatever the current directory is.
    func testShippedTokenizerFoundFromTheModelPathNotTheWorkingDirectory() throws {
        let shipped = URL(fileURLWithPath: Repo.path("Tokenizers/tok512/tok512.model")).resolvingSymlinksInPath().path
        let model = Repo.path("Models/stories260K/stories260K.bin")
        XCTAssertEqual(try ModelLoading.tokenizerPath(model: model, explicit: nil), shipped)
        XCTAssertEqual(ModelLoading.shippedTokenizer(near: model, name: "tok512.bin"),
                       URL(fileURLWithPath: Repo.path("Tokenizers/tok512/tok512.bin")).resolvingSymlinksInPath().path)
        // Outside any repository: no shipped fallback, one clear line naming the model.
        let dir = Repo.tempDirectory("tok-lookup")
        let lone = dir + "/stories.bin"
        try FileManager.default.copyItem(atPath: model, toPath: lone)
        XCTAssertNil(ModelLoading.shippedTokenizer(near: lone))
        XCTAssertThrowsError(try ModelLoading.tokenizerPath(model: lone, explicit: nil)) {
            XCTAssertTrue("\($0)".contains(lone) && "\($0)".contains("--tokenizer"), "\($0)")
        }
        // A directory's own tokenizer (as `convert` writes it: tokenizer.model) comes first.
        try FileManager.default.copyItem(atPath: Repo.path("Tokenizers/tok512/tok512.model"), toPath: dir + "/tokenizer.model")
        XCTAssertEqual(try ModelLoading.tokenizerPath(model: lone, explicit: nil), dir + "/tokenizer.model")
        XCTAssertEqual(try ModelLoading.tokenizerPath(model: dir, explicit: nil, shipped: "tok512.bin"), dir + "/tokenizer.model")
    }

    func testQuantizedOrGGUFModelNamedWhereAFloatOneIsNeeded() throws {
        XCTAssertNil(try ModelLoading.nonFloatDescription(Repo.path("Models/stories260K/stories260K.bin")))
        let gguf = Repo.path("Tests/ModelsTests/Fixtures/gguf/stories260K-Q8_0.gguf")
        XCTAssertThrowsError(try ModelLoading.requireFloatModel(gguf, advice: "use the float one")) {
            XCTAssertTrue("\($0)".contains(gguf) && "\($0)".contains("GGUF") && "\($0)".contains("use the float one"), "\($0)")
        }
    }

    func testRetrievalAndAnswersOptions() {
        var r = RetrievalRunOptions(dataset: "d")
        XCTAssertNoThrow(try r.validate())
        for (change, flag) in [({ (o: inout RetrievalRunOptions) in o.k = 0 }, "--k"), ({ $0.maxDocs = 0 }, "--max-docs"),
                               ({ $0.maxQueries = 0 }, "--max-queries")] {
            r = RetrievalRunOptions(dataset: "d")
            change(&r)
            XCTAssertThrowsError(try r.validate(), flag) { XCTAssertTrue("\($0)".contains(flag), "\($0)") }
        }
        var a = AnswersRunOptions(generator: "g", dataset: "d")
        XCTAssertNoThrow(try a.validate())
        for (change, flag) in [({ (o: inout AnswersRunOptions) in o.topK = 0 }, "--top-k"), ({ $0.maxTokens = 0 }, "--max-tokens"),
                               ({ $0.maxQuestions = 0 }, "--max-questions")] {
            a = AnswersRunOptions(generator: "g", dataset: "d")
            change(&a)
            XCTAssertThrowsError(try a.validate(), flag) { XCTAssertTrue("\($0)".contains(flag), "\($0)") }
        }
    }

    /// Token inputs of layers / npu report: JSON ids (a list or {"tokens": [...]}) as given; text through the model's
    /// tokenizer with BOS once, the same stream the perplexity run scores.
    func testTokenInputsOfLayersAndNPU() throws {
        let dir = Repo.tempDirectory("tokens")
        let model = Repo.path("Models/stories260K/stories260K.bin")
        let m = try LlamaModel.load(path: model)
        try Data("[1, 2, 300]".utf8).write(to: URL(fileURLWithPath: dir + "/a.json"))
        try Data(#"{"tokens": [5, 6]}"#.utf8).write(to: URL(fileURLWithPath: dir + "/b.json"))
        try Data("[1, 2.5]".utf8).write(to: URL(fileURLWithPath: dir + "/bad.json"))
        XCTAssertEqual(try LayersRun.readTokens(dir + "/a.json", model: model, tokenizer: nil, m: m), [1, 2, 300])
        XCTAssertEqual(try LayersRun.readTokens(dir + "/b.json", model: model, tokenizer: nil, m: m), [5, 6])
        XCTAssertThrowsError(try LayersRun.readTokens(dir + "/bad.json", model: model, tokenizer: nil, m: m)) {
            XCTAssertTrue("\($0)".contains("token 1 is not an integer id"), "\($0)")
        }
        let text = Repo.path("Corpora/tinystories/tinystories_sample.txt.zst")
        let ids = try LayersRun.readTokens(text, model: model, tokenizer: Repo.path("Tokenizers/tok512/tok512.model"), m: m)
        XCTAssertEqual(ids.count, 1883)  // the numpy reference's token count for this text, BOS included
        XCTAssertEqual(ids.first, 1)
        XCTAssertEqual(ids.dropFirst().firstIndex(of: 1), nil)  // BOS once
    }

    func testNPUReportRefusesTooFewTokens() throws {
        let dir = Repo.tempDirectory("npu")
        try Data("[1, 2, 3, 4]".utf8).write(to: URL(fileURLWithPath: dir + "/t.json"))
        var o = NPUReportOptions(model: Repo.path("Models/stories260K/stories260K.bin"), config: NPUConfig(), calibration: dir + "/t.json")
        o.compareTokens = 4
        XCTAssertThrowsError(try NPUReportRun.run(o)) { XCTAssertTrue("\($0)".contains("need more than --compare-tokens 4"), "\($0)") }
        o.window = 0
        XCTAssertThrowsError(try NPUReportRun.run(o)) { XCTAssertTrue("\($0)".contains("--window"), "\($0)") }
    }

    func testQuantizeFindsBertDirectoriesOnly() throws {
        let dir = Repo.tempDirectory("bert")
        try Data(#"{"model_type": "bert"}"#.utf8).write(to: URL(fileURLWithPath: dir + "/config.json"))
        XCTAssertEqual(try QuantizeRun.bertDirectory(dir), dir)
        let llama = Repo.tempDirectory("llama")
        try Data(#"{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}"#.utf8).write(to: URL(fileURLWithPath: llama + "/config.json"))
        XCTAssertNil(try QuantizeRun.bertDirectory(llama))
        XCTAssertNil(try QuantizeRun.bertDirectory(Repo.path("Models/stories260K/stories260K.bin")))
    }
}
