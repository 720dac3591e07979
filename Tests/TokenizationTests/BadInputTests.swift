import Foundation
import TensorCore
import TestSupport
import Tokenization
import XCTest

/// Malformed or unsupported tokenizer files: a typed error whose one line names the file and the part.
final class BadInputTests: XCTestCase {
    private func expectError(_ data: Data, _ name: String, contains needle: String,
                             file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try TokenizerLoader.load(data: data, fileName: name), file: file, line: line) { e in
            let text = String(describing: e)
            XCTAssertTrue(e is TokenizerError, "not a TokenizerError: \(text)", file: file, line: line)
            XCTAssertTrue(text.hasPrefix(name + ": "), text, file: file, line: line)
            XCTAssertTrue(text.contains(needle), "'\(text)' lacks '\(needle)'", file: file, line: line)
            XCTAssertFalse(text.contains("\n"), file: file, line: line)
        }
    }

    private func gpt2JSON() throws -> [String: Any] {
        let data = try readMaybeCompressed(Repo.path("Tokenizers/gpt2/tokenizer.json.zst"))
        return try JSONSerialization.jsonObject(with: data) as! [String: Any]
    }

    private func json(_ o: [String: Any]) throws -> Data { try JSONSerialization.data(withJSONObject: o) }

    /// Ids are checked against the vocabulary when the file is read: negative or far out of range ids used to trap
    /// (Int32 conversion) or size tables of terabytes.
    func testTokenIdsOutsideTheVocabulary() throws {
        var o = try gpt2JSON()
        var model = o["model"] as! [String: Any]
        var vocab = model["vocab"] as! [String: Any]
        vocab["zzqq"] = 1 << 40
        model["vocab"] = vocab
        o["model"] = model
        expectError(try json(o), "tokenizer.json", contains: "token 'zzqq' has id 1099511627776, outside 0...")
        vocab["zzqq"] = -7
        model["vocab"] = vocab
        o["model"] = model
        expectError(try json(o), "tokenizer.json", contains: "token 'zzqq' has id -7")
        var added = try gpt2JSON()
        added["added_tokens"] = [["id": 9_000_000_000_000_000, "content": "<huge>", "special": true]]
        expectError(try json(added), "tokenizer.json", contains: "added_tokens[0] ('<huge>') has id 9000000000000000")
        added["added_tokens"] = [["id": -2, "content": "<neg>", "special": true]]
        expectError(try json(added), "tokenizer.json", contains: "added_tokens[0] ('<neg>') has id -2")
        var post = try gpt2JSON()
        post["post_processor"] = ["type": "TemplateProcessing", "single": [["SpecialToken": ["id": "<s>", "type_id": 0]], ["Sequence": ["id": "A", "type_id": 0]]],
                                  "special_tokens": ["<s>": ["id": "<s>", "ids": [1 << 40], "tokens": ["<s>"]]]]
        expectError(try json(post), "tokenizer.json", contains: "post_processor names special token id 1099511627776")
    }

    func testMalformedJSON() {
        expectError(Data("{\"model\": {".utf8), "tokenizer.json", contains: "not valid JSON")
        expectError(Data("[1, 2]".utf8), "tokenizer.json", contains: "not a JSON object")
        expectError(Data("{}".utf8), "tokenizer.json", contains: "missing \"model\"")
    }

    func testUnsupportedComponents() throws {
        var o = try gpt2JSON()
        o["pre_tokenizer"] = ["type": "Foo"]
        expectError(try json(o), "tokenizer.json", contains: "unsupported pre_tokenizer type 'Foo'")
        o = try gpt2JSON(); o["normalizer"] = ["type": "Precompiled", "precompiled_charsmap": "AAAA"]
        expectError(try json(o), "tokenizer.json", contains: "unsupported normalizer type 'Precompiled'")
        o = try gpt2JSON(); o["decoder"] = ["type": "CTC"]
        expectError(try json(o), "tokenizer.json", contains: "unsupported decoder type 'CTC'")
        o = try gpt2JSON(); o["post_processor"] = ["type": "Bar"]
        expectError(try json(o), "tokenizer.json", contains: "unsupported post_processor type 'Bar'")
        o = try gpt2JSON(); o["pre_tokenizer"] = ["type": "Split", "pattern": ["Regex": "\\d+"], "behavior": "Isolated"]
        expectError(try json(o), "tokenizer.json", contains: "unsupported pre_tokenizer Split regex")
        o = try gpt2JSON()
        var model = o["model"] as! [String: Any]
        model["dropout"] = 0.1
        o["model"] = model
        expectError(try json(o), "tokenizer.json", contains: "unsupported BPE dropout")
        o["model"] = ["type": "Unigram", "vocab": [["a", -1.0]]]
        expectError(try json(o), "tokenizer.json", contains: "unsupported model type 'Unigram'")
        model = try gpt2JSON()["model"] as! [String: Any]
        model["merges"] = ["Ġ t", "zzqq yyxx"]
        o = try gpt2JSON(); o["model"] = model
        expectError(try json(o), "tokenizer.json", contains: "merge 1")
    }

    func testTruncatedTokenizerBin() throws {
        let full = try Data(contentsOf: URL(fileURLWithPath: Repo.path("Tokenizers/tok512/tok512.bin")))
        expectError(full.prefix(2), "tok512.bin", contains: "truncated header")
        expectError(full.prefix(full.count - 3), "tok512.bin", contains: "truncated")
        expectError(full.prefix(4 + 8 + 2), "tok512.bin", contains: "truncated")
        var lying = full
        lying.replaceSubrange(8..<12, with: [0xFF, 0xFF, 0xFF, 0x7F])
        expectError(lying, "tok512.bin", contains: "length")
    }

    func testGarbageModelFile() throws {
        expectError(Data((0..<500).map { UInt8(($0 * 37 + 11) % 256) }), "tok512.model", contains: "not a SentencePiece model")
        expectError(Data("hello world, not a protobuf".utf8), "x.model", contains: "not a SentencePiece model")
        let full = try Data(contentsOf: URL(fileURLWithPath: Repo.path("Tokenizers/tok512/tok512.model")))
        expectError(full.prefix(full.count / 2), "tok512.model", contains: "not a SentencePiece model")
        expectError(Data(), "tok512.model", contains: "not a SentencePiece model")
    }

    func testUnknownExtension() {
        expectError(Data("x".utf8), "vocab.txt", contains: "unknown tokenizer format")
    }
}
