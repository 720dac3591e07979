import Foundation
import TensorCore

/// A text tokenizer that is byte-exact with its reference library (see SPECS.md, "Tokenizer facts").
public protocol Tokenizer: Sendable {
    /// Id used in reports, e.g. "sentencepiece:tok512.model".
    var name: String { get }
    var vocabSize: Int { get }
    var bosId: Int? { get }
    var eosId: Int? { get }
    var padId: Int? { get }
    /// Whether the model's convention prepends BOS to a text (Llama/SentencePiece: true; GPT-2: false).
    var addsBOS: Bool { get }
    /// `addSpecialTokens`: BOS (SentencePiece, llama2.c) or the post-processor's tokens ([CLS] .. [SEP]).
    func encode(_ text: String, addSpecialTokens: Bool) -> [Int]
    func decode(_ ids: [Int], skipSpecialTokens: Bool) -> String
    /// The piece string of an id (nil when out of range).
    func token(for id: Int) -> String?
}

/// A load error: names the file and the malformed or unsupported part, in one line.
public struct TokenizerError: Error, CustomStringConvertible, Equatable, Sendable {
    public enum Kind: String, Sendable { case malformed, unsupported }
    public let kind: Kind
    public let file: String
    public let detail: String
    public init(_ kind: Kind, file: String, _ detail: String) {
        self.kind = kind; self.file = file; self.detail = detail
    }
    public var description: String { OneLine.text("\(file): \(detail)") }
}

public enum TokenizerLoader {
    /// Picks the format from the file name (a trailing ".zst" is ignored: pass decompressed data):
    /// *.json = Hugging Face tokenizer.json, *.model = SentencePiece model, *.bin = llama2.c tokenizer.bin.
    /// Data starting with "GGUF" is a GGUF file whatever its name: its tokenizer.ggml.* metadata is read
    /// (GGUFVocabulary; errors are QuantKitError naming the key).
    public static func load(data: Data, fileName: String) throws -> any Tokenizer {
        if data.starts(with: Array("GGUF".utf8)) { return try loadGGUF(data: data, fileName: fileName) }
        var base = (fileName as NSString).lastPathComponent
        if base.hasSuffix(".zst") { base.removeLast(4) }
        // Errors name the file as given; the tokenizer's name is short (parent folder kept for tokenizer.json).
        let parent = ((fileName as NSString).deletingLastPathComponent as NSString).lastPathComponent
        let display = base == "tokenizer.json" && !parent.isEmpty ? parent + "/" + base : base
        if base.hasSuffix(".json") { return try HFTokenizer(data: data, fileName: fileName, name: "hf-tokenizers:" + display) }
        if base.hasSuffix(".model") { return try SentencePieceTokenizer(data: data, fileName: fileName, name: "sentencepiece:" + display) }
        if base.hasSuffix(".bin") { return try Llama2cTokenizer(data: data, fileName: fileName, name: "llama2c:" + display) }
        throw TokenizerError(.unsupported, file: fileName,
                             "unknown tokenizer format (expected .json, .model or .bin)")
    }
}

extension TokenizerLoader {
    /// GGUFFile maps a path: use the named file when it is this GGUF, else (e.g. it was .zst) a temporary copy.
    static func loadGGUF(data: Data, fileName: String) throws -> any Tokenizer {
        if !fileName.hasSuffix(".zst"), GGUFFile.isGGUF(fileName),
           let size = (try? FileManager.default.attributesOfItem(atPath: fileName))?[.size] as? Int, size == data.count {
            return try GGUFVocabulary.tokenizer(try GGUFFile(path: fileName))
        }
        var base = (fileName as NSString).lastPathComponent
        if base.hasSuffix(".zst") { base.removeLast(4) }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("quantkit-gguf-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent(base.isEmpty ? "tokenizer.gguf" : base).path
        do { try data.write(to: URL(fileURLWithPath: path)) } catch {
            throw QuantKitError(.io, "\(fileName): cannot write a temporary copy to read the GGUF (\(error.localizedDescription))")
        }
        return try GGUFVocabulary.tokenizer(try GGUFFile(path: path))
    }
}

/// Tokenizers whose encoder can share a word cache across many texts (one cache per thread).
protocol CachingEncoder: Tokenizer {
    associatedtype Cache
    func makeCache() -> Cache
    func encode(_ text: String, addSpecialTokens: Bool, cache: inout Cache) -> [Int]
}

/// Hands disjoint result slots to worker threads (each index is written by exactly one worker).
private final class ResultSlots: @unchecked Sendable {
    let base: UnsafeMutablePointer<[Int]>
    let count: Int
    init(_ n: Int) {
        count = n
        base = .allocate(capacity: n)
        base.initialize(repeating: [], count: n)
    }
    deinit { base.deinitialize(count: count); base.deallocate() }
    func toArray() -> [[Int]] { Array(UnsafeBufferPointer(start: base, count: count)) }
}

extension Tokenizer {
    /// Encodes many texts with `threads` workers (contiguous chunks, one word cache per chunk).
    public func encodeBatch(_ texts: [String], addSpecialTokens: Bool = false, threads: Int) -> [[Int]] {
        let n = texts.count
        if n == 0 { return [] }
        let slots = ResultSlots(n)
        let workers = max(1, min(threads, n))
        // More chunks than workers balance lines of unequal length.
        let chunks = workers == 1 ? 1 : min(n, workers * 4)
        let work: @Sendable (Int) -> Void = { c in
            let lo = n * c / chunks, hi = n * (c + 1) / chunks
            var out = [[Int]](); out.reserveCapacity(hi - lo)
            self.encodeRange(texts, lo..<hi, addSpecialTokens, &out)
            for (k, ids) in out.enumerated() { slots.base[lo + k] = ids }
        }
        if chunks == 1 { work(0) } else { DispatchQueue.concurrentPerform(iterations: chunks, execute: work) }
        return slots.toArray()
    }

    fileprivate func encodeRange(_ texts: [String], _ r: Range<Int>, _ special: Bool, _ out: inout [[Int]]) {
        if let c = self as? any CachingEncoder {
            c.encodeWithCache(texts, r, special, &out)
        } else {
            for i in r { out.append(encode(texts[i], addSpecialTokens: special)) }
        }
    }
}

extension CachingEncoder {
    fileprivate func encodeWithCache(_ texts: [String], _ r: Range<Int>, _ special: Bool, _ out: inout [[Int]]) {
        var cache = makeCache()
        for i in r { out.append(encode(texts[i], addSpecialTokens: special, cache: &cache)) }
    }
}
