import Evaluation
import ArgumentParser
import Foundation
import Models
import TensorCore
import Tokenization

struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "generate", abstract: "Greedy text generation.")
    @Option(help: "HF model directory, llama2.c .bin, quantized directory (quantkit quantize) or llama GGUF file.") var model: String
    @Option(help: "Tokenizer file (.json, .model, .bin); default: the model's own.") var tokenizer: String?
    @Option(help: "Prompt text (BOS is prepended when the tokenizer adds it).") var prompt: String = ""
    @Option(name: .customLong("max-tokens"), help: "Tokens to generate.") var maxTokens: Int = 64
    @Option(help: "Worker threads.") var threads: Int?
    @Option(help: "Write a JSON result here.") var json: String?

    func run() throws {
        try runReportingErrors {
            guard maxTokens > 0 else { throw QuantKitError(.input, "--max-tokens must be positive") }
            let (m, tok, tokPath) = try ModelLoading.loadModelAndTokenizer(model, tokenizer: tokenizer)
            if let t = threads { m.threads = max(1, t) }
            var ids = tok.encode(prompt, addSpecialTokens: true).map { Int32($0) }
            if ids.isEmpty, let b = tok.bosId ?? m.config.bosTokenId { ids = [Int32(b)] }
            guard !ids.isEmpty else { throw QuantKitError(.input, "empty prompt and the tokenizer has no BOS token") }
            var stops = Set<Int32>()
            if let e = tok.eosId ?? m.config.eosTokenId { stops.insert(Int32(e)) }
            if tok.addsBOS, let b = tok.bosId { stops.insert(Int32(b)) }  // llama2.c stops at BOS too
            let t0 = Date()
            let out = try m.generateGreedy(prompt: ids, maxTokens: maxTokens, stopTokens: stops)
            let secs = Date().timeIntervalSince(t0)
            let text = tok.decode(out.map { Int($0) }, skipSpecialTokens: true)
            print(prompt + text)
            logInfo(String(format: "%d tokens in %.3f s (%.1f tok/s)", out.count, secs, Double(out.count) / max(secs, 1e-9)))
            if let j = json {
                let obj: [String: Any] = ["model": model, "tokenizer": try ModelLoading.tokenizerLabel(tok, path: tokPath),
                                          "prompt": prompt, "prompt_tokens": ids.map { Int($0) }, "tokens": out.map { Int($0) },
                                          "text": text, "timings": ["seconds": secs]]
                try ResultEnvelope(kind: "generate").write(obj, to: j)
            }
        }
    }
}
