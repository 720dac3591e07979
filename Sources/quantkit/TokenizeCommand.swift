import Evaluation
import ArgumentParser
import Foundation
import TensorCore
import Tokenization

/// `quantkit tokenize`: encode a text or file with any supported tokenizer and show tokens, count and ids.
struct TokenizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokenize",
        abstract: "Tokenize a text or a file (tokenizer.json, SentencePiece .model, llama2.c .bin; .zst read transparently).")

    @Option(help: "Tokenizer file: tokenizer.json[.zst], *.model or llama2.c tokenizer *.bin.")
    var tokenizer: String
    @Option(help: "Text to tokenize.")
    var text: String?
    @Option(help: "File to tokenize (whole file as one text; .zst read transparently).")
    var file: String?
    @Flag(help: "Print only the ids.")
    var ids = false
    @Flag(help: "Add BOS / the post-processor's special tokens ([CLS] .. [SEP]).")
    var special = false
    @Option(help: "Write the JSON result (docs/RESULTS.md) to this path.")
    var json: String?

    func validate() throws {
        if (text == nil) == (file == nil) { throw ValidationError("give exactly one of --text or --file") }
    }

    func run() throws {
        try runReportingErrors {
            let tok = try TokenizerLoader.load(data: try readMaybeCompressed(tokenizer), fileName: tokenizer)
            let input: String
            if let text { input = text } else {
                let data = try readMaybeCompressed(file!)
                guard let s = String(data: data, encoding: .utf8) else {
                    throw QuantKitError(.input, "\(file!): not UTF-8 text")
                }
                input = s
            }
            let start = Date()
            let out = tok.encode(input, addSpecialTokens: special)
            let seconds = Date().timeIntervalSince(start)
            if ids {
                print(out.map(String.init).joined(separator: " "))
            } else {
                let shown = out.prefix(200)
                print(shown.map { "\($0)\t\(String(reflecting: tok.token(for: $0) ?? "?"))" }.joined(separator: "\n"))
                if out.count > shown.count { print("... (\(out.count - shown.count) more)") }
                print("tokenizer: \(tok.name)  vocab: \(tok.vocabSize)  tokens: \(out.count)  bytes: \(input.utf8.count)")
                print("ids: \(out.prefix(64).map(String.init).joined(separator: " "))\(out.count > 64 ? " ..." : "")")
            }
            if let json {
                let result: [String: Any] = [
                    "tokenizer": tok.name, "tokenizer_path": tokenizer,
                    "vocab_size": tok.vocabSize, "special_tokens_added": special, "input_bytes": input.utf8.count,
                    "input_sha256": Digest.sha256(Data(input.utf8)), "token_count": out.count, "ids": out,
                    "seconds": seconds,
                ]
                try ResultEnvelope(kind: "tokenize").write(result, to: json)
            }
        }
    }
}
