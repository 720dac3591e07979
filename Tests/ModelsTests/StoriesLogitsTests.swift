import Foundation
import Models
import TensorCore
import TestSupport
import XCTest

/// Fixture JSON written by Tools/reference_llama.py (numpy float64 forward, llama2.c's own interleaved RoPE).
struct LogitFixture: Decodable {
    struct Window: Decodable { let tokens: [Int32]; let logits: [Float] }
    let vocab: Int
    let windows: [Window]
    let greedy_from_bos: [Int32]?
    let greedy_text: String?

    static func load(_ relative: String) throws -> LogitFixture {
        try JSONDecoder().decode(LogitFixture.self, from: readMaybeCompressed(Repo.path(relative)))
    }
}

final class StoriesLogitsTests: XCTestCase {
    static let modelPath = Repo.path("Models/stories260K/stories260K.bin")

    func testLogitsMatchNumpyReference() throws {
        let model = try LlamaModel.load(path: Self.modelPath)
        XCTAssertEqual(model.config.hiddenSize, 64)
        XCTAssertEqual(model.config.kvHeads, 4)
        let fx = try LogitFixture.load("Tests/ModelsTests/Fixtures/stories260K_logits.json.zst")
        XCTAssertEqual(fx.windows.count, 4)
        for w in fx.windows {
            let got = try model.logits(w.tokens)
            let d = maxAbsDiff(got, w.logits)
            XCTAssertLessThan(d, 1e-4, "window of \(w.tokens.count) tokens")
        }
    }

    /// Prefill in two parts through the KV cache gives the same logits as one prefill.
    func testCacheContinuationMatchesPrefill() throws {
        let model = try LlamaModel.load(path: Self.modelPath)
        let fx = try LogitFixture.load("Tests/ModelsTests/Fixtures/stories260K_logits.json.zst")
        let w = fx.windows[1]  // 17 tokens
        let cache = model.makeCache(capacity: w.tokens.count)
        let state = model.makeState(maxRows: w.tokens.count)
        model.forward(Array(w.tokens[0..<10]), cache: cache, state: state)
        var got: [Float] = []
        for t in w.tokens[10...] {
            let p = model.forward([t], cache: cache, state: state)
            got += Array(UnsafeBufferPointer(start: p, count: fx.vocab))
        }
        XCTAssertLessThan(maxAbsDiff(got, Array(w.logits[(10 * fx.vocab)...])), 1e-4)
    }

    func testGreedyGenerationFromBOS() throws {
        let model = try LlamaModel.load(path: Self.modelPath)
        let fx = try LogitFixture.load("Tests/ModelsTests/Fixtures/stories260K_logits.json.zst")
        let ref = fx.greedy_from_bos!
        XCTAssertTrue(fx.greedy_text!.hasPrefix("Once upon a time, there was a little girl named Lily."))
        let got = try model.generateGreedy(prompt: [1], maxTokens: ref.count - 1)
        XCTAssertEqual(got, Array(ref.dropFirst()))
    }
}

final class LayerwiseTests: XCTestCase {
    /// What the layer-wise driver walks (embed, every block in turn on the hidden states) followed by the final norm
    /// and head gives exactly the full forward's logits, and those match the numpy reference.
    func testBlockByBlockEqualsFullForward() throws {
        let model = try LlamaModel.load(path: StoriesLogitsTests.modelPath)
        let fx = try LogitFixture.load("Tests/ModelsTests/Fixtures/stories260K_logits.json.zst")
        let walker = LlamaLayerwise(model: model, maxRows: fx.windows.map(\.tokens.count).max()!)
        var batches = try walker.embed(calibration: fx.windows.map(\.tokens))
        for i in 0..<walker.blockCount {
            for b in batches.indices { walker.runBlock(i, on: &batches[b], observer: nil, stopAfter: nil) }
        }
        for (w, b) in zip(fx.windows, batches) {
            let got = walker.logits(b)
            XCTAssertEqual(got, try model.logits(w.tokens), "window of \(w.tokens.count) tokens")
            XCTAssertLessThan(maxAbsDiff(got, w.logits), 1e-4)
        }
    }

    /// Batches run side by side on single-threaded kernels, whole or as attention then MLP, give exactly what the
    /// serial pass on threaded kernels gives: block outputs, module outputs, and the batches left as they were
    /// when a pass stops early.
    func testConcurrentAndSplitPassesEqualSerial() throws {
        let model = try LlamaModel.load(path: StoriesLogitsTests.modelPath)
        model.threads = 2
        var rng = SplitMix64(seed: 11)
        let windows = [200, 64, 131, 256, 7].map { n in (0..<n).map { _ in Int32(rng.index(model.config.vocabSize)) } }
        let walker = LlamaLayerwise(model: model, maxRows: 256)
        let input = try walker.embed(calibration: windows)
        let modules = Set(model.blocks[1].linearGroups.flatMap { $0 })
        let serial = OutputRecorder(modules), split = OutputRecorder(modules)
        var expected = input
        for b in expected.indices { walker.runBlock(1, on: &expected[b], observer: serial, stopAfter: nil) }

        var whole = input
        walker.runConcurrently(1, on: &whole, stopAfter: nil, workers: 2)
        var halves = input
        let observers = input.map { _ in OutputRecorder(modules) }
        walker.runConcurrently(1, part: .attention, on: &halves, observers: observers, stopAfter: nil, workers: 3)
        walker.runConcurrently(1, part: .mlp, on: &halves, observers: observers, stopAfter: nil, workers: 2)
        for o in observers { split.outputs.merge(o.outputs) { $0 + $1 } }
        for b in input.indices {
            XCTAssertEqual(whole[b].hidden, expected[b].hidden, "window \(b), whole block")
            XCTAssertEqual(halves[b].hidden, expected[b].hidden, "window \(b), attention then MLP")
        }
        XCTAssertEqual(split.outputs, serial.outputs)

        var stopped = input
        walker.runConcurrently(1, part: .attention, on: &stopped, stopAfter: model.blocks[1].prefix + "self_attn.o_proj", workers: 2)
        XCTAssertEqual(stopped.map(\.hidden), input.map(\.hidden))
    }
}

/// Every output of chosen modules, concatenated in the order seen.
private final class OutputRecorder: LinearObserver {
    let modules: Set<String>
    var outputs: [String: [Float]] = [:]
    init(_ modules: Set<String>) { self.modules = modules }
    func observe(module: String, input: UnsafePointer<Float>, inFeatures: Int, output: UnsafePointer<Float>, outFeatures: Int,
                 rows: Int) {
        guard modules.contains(module) else { return }
        outputs[module, default: []] += UnsafeBufferPointer(start: output, count: rows * outFeatures)
    }
}
