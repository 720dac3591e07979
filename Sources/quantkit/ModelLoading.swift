import Foundation
import Models
import TensorCore
import Tokenization

/// Shared by generate / perplexity / convert: find and load a model and its tokenizer.
enum ModelLoading {
    /// The tokenizer file: --tokenizer if given; else one in the model directory (tokenizer.json, tokenizer.model,
    /// tokenizer.bin, tok*.model); else, for a llama2.c file, a tok512.model beside it or the shipped
    /// Tokenizers/tok512/tok512.model.
    static func tokenizerPath(model: String, explicit: String?) throws -> String {
        if let t = explicit { return t }
        let fm = FileManager.default
        var isDir: ObjCBool = false
        _ = fm.fileExists(atPath: model, isDirectory: &isDir)
        let dir = isDir.boolValue ? model : (model as NSString).deletingLastPathComponent
        var candidates = ["tokenizer.json", "tokenizer.model", "tokenizer.bin"].map { (dir as NSString).appendingPathComponent($0) }
        if let files = try? fm.contentsOfDirectory(atPath: dir) {
            candidates += files.filter { $0.hasPrefix("tok") && ($0.hasSuffix(".model") || $0.hasSuffix(".json")) }.sorted()
                .map { (dir as NSString).appendingPathComponent($0) }
        }
        candidates.append("Tokenizers/tok512/tok512.model")
        for c in candidates where fm.fileExists(atPath: c) { return c }
        throw QuantKitError(.input, "\(model): no tokenizer found beside the model; pass --tokenizer FILE")
    }

    static func loadTokenizer(_ path: String) throws -> any Tokenizer {
        let data = try readMaybeCompressed(path)
        do { return try TokenizerLoader.load(data: data, fileName: path) } catch let e as TokenizerError {
            throw QuantKitError(.format, e.description)
        }
    }

    /// Tokenizer id for reports: the tokenizer's name plus the file's hash prefix (two files with the same name
    /// but different contents must not compare).
    static func tokenizerLabel(_ tok: any Tokenizer, path: String) throws -> String {
        let sha = Digest.sha256(try readMaybeCompressed(path))
        return "\(tok.name)@\(sha.prefix(12))"
    }

    /// Errors when the tokenizer cannot address the model's embedding rows.
    static func checkVocab(_ tok: any Tokenizer, model: LlamaModel, tokenizerPath: String) throws {
        if tok.vocabSize != model.config.vocabSize {
            throw QuantKitError(.input, "tokenizer \(tokenizerPath) has \(tok.vocabSize) tokens but the model's embedding has \(model.config.vocabSize) rows")
        }
    }
}
