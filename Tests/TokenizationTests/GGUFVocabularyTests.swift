import Foundation
import TensorCore
import TestSupport
@testable import Tokenization
import XCTest

/// GGUF tokenizers against three independent references: llama.cpp's own expected ids (its models/*.inp/.out),
/// Python `sentencepiece` on Llama-2's tokenizer.model (fixture), and the repo's HF pipeline on GPT-2's
/// tokenizer.json (itself checked against the Python `tokenizers` library in ExactnessTests).
final class GGUFVocabularyTests: XCTestCase {
    /// The shipped .gguf.zst decompressed to a temporary .gguf (GGUFFile maps a path).
    static func gguf(_ name: String) throws -> GGUFFile {
        let dir = Repo.tempDirectory("gguf-vocab")
        let path = dir + "/" + name
        if !FileManager.default.fileExists(atPath: path) {
            try readMaybeCompressed(Repo.path("Tokenizers/gguf/\(name).zst")).write(to: URL(fileURLWithPath: path))
        }
        return try GGUFFile(path: path)
    }

    static func spm() throws -> any Tokenizer { try GGUFVocabulary.tokenizer(gguf("ggml-vocab-llama-spm.gguf")) }
    static func bpe() throws -> any Tokenizer { try GGUFVocabulary.tokenizer(gguf("ggml-vocab-gpt-2.gguf")) }

    /// llama.cpp's tests/test-tokenizer-0 format: inputs separated by "\n__ggml_vocab_test__\n", one line of ids each.
    static func llamaCppCases(_ name: String) throws -> [(String, [Int])] {
        let dir = "Tests/TokenizationTests/Fixtures/llamacpp/"
        let inp = try String(contentsOfFile: Repo.path(dir + name + ".inp"), encoding: .utf8)
        let out = try String(contentsOfFile: Repo.path(dir + name + ".out"), encoding: .utf8)
        let sep = "\n__ggml_vocab_test__\n"
        var texts = inp.components(separatedBy: sep)
        if inp.hasSuffix(sep) { texts.removeLast() }   // llama.cpp stops at the end: no empty case after the last marker
        var lines = out.components(separatedBy: "\n")
        if lines.last == "" { lines.removeLast() }
        XCTAssertEqual(texts.count, lines.count, "\(name): inputs and outputs differ in count")
        return zip(texts, lines).map { t, l in (t, l.split(separator: " ").map { Int($0)! }) }
    }

    func checkLlamaCpp(_ tok: any Tokenizer, _ name: String, expectCases: Int) throws {
        let cases = try Self.llamaCppCases(name)
        XCTAssertEqual(cases.count, expectCases)
        var m = Mismatches()
        for (text, ids) in cases { m.check(tok.encode(text, addSpecialTokens: false), ids, "\(name) \(text.debugDescription)") }
        m.assertNone("\(name) vs llama.cpp's expected ids")
    }

    func testSPMMatchesLlamaCppExpectedIds() throws {
        try checkLlamaCpp(try Self.spm(), "ggml-vocab-llama-spm.gguf", expectCases: 46)
    }

    func testBPEMatchesLlamaCppExpectedIds() throws {
        try checkLlamaCpp(try Self.bpe(), "ggml-vocab-gpt-2.gguf", expectCases: 46)
    }

    struct SPCases: Decodable {
        struct Case: Decodable { let text: String; let ids: [Int]; let decoded: String }
        let vocab_size: Int
        let cases: [Case]
    }

    static func spCases() throws -> SPCases {
        let data = try readMaybeCompressed(Repo.path("Tests/TokenizationTests/Fixtures/gguf_llama2_sp_cases.json.zst"))
        return try JSONDecoder().decode(SPCases.self, from: data)
    }

    func testSPMMatchesSentencePieceOnLlama2Model() throws {
        let tok = try Self.spm()
        let f = try Self.spCases()
        XCTAssertEqual(tok.vocabSize, f.vocab_size)
        XCTAssertGreaterThan(f.cases.count, 300)
        var ids = Mismatches(), dec = Mismatches()
        for c in f.cases {
            let got = tok.encode(c.text, addSpecialTokens: false)
            ids.check(got, c.ids, "encode \(c.text.debugDescription)")
            dec.check(tok.decode(c.ids, skipSpecialTokens: true), c.decoded, "decode of \(c.text.debugDescription)")
        }
        ids.assertNone("GGUF llama SPM vs sentencepiece ids")
        dec.assertNone("GGUF llama SPM vs sentencepiece decode")
    }

    func testBPEMatchesHFTokenizerJSON() throws {
        let tok = try Self.bpe()
        let hf = try loadShipped("Tokenizers/gpt2/tokenizer.json.zst")
        var texts = try Self.spCases().cases.map(\.text)
        texts += try CaseFile.load("gpt2_cases.json.zst").cases.map(\.text)
        texts += try Self.llamaCppCases("ggml-vocab-gpt-2.gguf").map(\.0)
        // llama.cpp (parse_special off) reads control tokens in text as text; tokenizers splits them out.
        let special = texts.filter { $0.contains("<|endoftext|>") }
        texts = texts.filter { !$0.contains("<|endoftext|>") }
        XCTAssertGreaterThan(texts.count, 1000)
        var m = Mismatches()
        for t in texts { m.check(tok.encode(t, addSpecialTokens: false), hf.encode(t, addSpecialTokens: false), t.debugDescription) }
        m.assertNone("GGUF gpt2 BPE vs tokenizer.json")
        XCTAssertEqual(hf.encode("a<|endoftext|>b", addSpecialTokens: false), [64, 50256, 65])
        let literal = tok.encode("a<|endoftext|>b", addSpecialTokens: false)
        XCTAssertFalse(literal.contains(50256))
        XCTAssertEqual(tok.decode(literal, skipSpecialTokens: true), "a<|endoftext|>b")
        XCTAssertTrue(special.isEmpty || special.allSatisfy { !tok.encode($0, addSpecialTokens: false).contains(50256) })
    }

    func testMetadataAndSpecialTokens() throws {
        let spm = try Self.spm(), bpe = try Self.bpe()
        XCTAssertEqual(spm.name, "gguf-spm:ggml-vocab-llama-spm.gguf")
        XCTAssertEqual(bpe.name, "gguf-bpe:ggml-vocab-gpt-2.gguf")
        XCTAssertEqual(spm.vocabSize, 32000); XCTAssertEqual(bpe.vocabSize, 50257)
        XCTAssertEqual(spm.bosId, 1); XCTAssertEqual(spm.eosId, 2); XCTAssertNil(spm.padId)
        XCTAssertEqual(bpe.bosId, 50256); XCTAssertEqual(bpe.eosId, 50256)
        XCTAssertTrue(spm.addsBOS); XCTAssertFalse(bpe.addsBOS)
        XCTAssertEqual(spm.encode("Hello world", addSpecialTokens: true), [1, 15043, 3186])
        XCTAssertEqual(bpe.encode("Hello world", addSpecialTokens: true), [15496, 995])
        XCTAssertEqual(spm.token(for: 15043), "\u{2581}Hello"); XCTAssertNil(spm.token(for: 32000))
        XCTAssertEqual(bpe.token(for: 50256), "<|endoftext|>")
    }

    func testDecodeFollowsLlamaCpp() throws {
        let spm = try Self.spm(), bpe = try Self.bpe()
        // The prefix space is stripped from the first piece, but not after a removed BOS (llama_detokenize).
        XCTAssertEqual(spm.decode([15043, 3186], skipSpecialTokens: true), "Hello world")
        XCTAssertEqual(spm.decode([1, 15043, 3186], skipSpecialTokens: true), " Hello world")
        XCTAssertEqual(spm.decode([1, 15043, 2], skipSpecialTokens: false), "<s> Hello</s>")
        XCTAssertEqual(spm.decode([0, 15043], skipSpecialTokens: false), "<unk> Hello")
        XCTAssertEqual(spm.decode([0, 15043], skipSpecialTokens: true), " Hello")
        XCTAssertEqual(spm.decode([29871, 243, 162, 169, 156], skipSpecialTokens: true), "\u{1F999}")   // byte pieces
        // Every llama.cpp case round-trips through the SPM vocabulary (it loses nothing).
        for (t, ids) in try Self.llamaCppCases("ggml-vocab-llama-spm.gguf") {
            XCTAssertEqual(spm.decode(ids, skipSpecialTokens: true), t)
        }
        // GPT-2: clean_up_tokenization_spaces as llama.cpp ("gpt-2" pre-tokenizer leaves it on).
        let ids = bpe.encode("Hello , world . I 'm here ' ok ' and 're 't", addSpecialTokens: false)
        XCTAssertEqual(bpe.decode(ids, skipSpecialTokens: true), "Hello, world. I'm here'ok'and're 't")
        XCTAssertEqual(bpe.decode([50256, 15496], skipSpecialTokens: false), "<|endoftext|>Hello")
        XCTAssertEqual(bpe.decode([50256, 15496], skipSpecialTokens: true), "Hello")
        for t in ["Hello world", " leading", "code:\n\tx = 1\n", "🦙 ünïcödé", "multiple   spaces"] {
            XCTAssertEqual(bpe.decode(bpe.encode(t, addSpecialTokens: false), skipSpecialTokens: true), t)
        }
    }

    func testLoaderAcceptsGGUF() throws {
        let rel = "Tokenizers/gguf/ggml-vocab-gpt-2.gguf.zst"
        let z = try TokenizerLoader.load(data: try readMaybeCompressed(Repo.path(rel)), fileName: Repo.path(rel))
        XCTAssertEqual(z.name, "gguf-bpe:ggml-vocab-gpt-2.gguf")
        let path = try Self.gguf("ggml-vocab-llama-spm.gguf").path
        let direct = try TokenizerLoader.load(data: try Data(contentsOf: URL(fileURLWithPath: path)), fileName: path)
        XCTAssertEqual(direct.name, "gguf-spm:ggml-vocab-llama-spm.gguf")
        XCTAssertEqual(direct.encode(" Hello", addSpecialTokens: false), [29871, 15043])
    }

    // MARK: - Synthetic vocabularies

    static let tinyPieces = ["<unk>", "<s>", "</s>", "\u{2581}", "a", "b", "\u{2581}a", "<X>", "ab", "bb"]
    static let tinyTypes = [2, 3, 3, 1, 1, 1, 1, 4, 1, 1]
    static let tinyScores: [Float] = [0, 0, 0, -1, -2, -2, -3, 0, -4, -6]

    static func write(_ entries: [(String, GGUFValue)], _ name: String) throws -> String {
        var w = GGUFWriter()
        for (k, v) in entries { w.set(k, v) }
        let path = Repo.tempDirectory("gguf-vocab-bad") + "/" + name
        try w.write(to: path)
        return path
    }

    static func tinySPM(dropping: Set<String> = [], replacing: [String: GGUFValue] = [:]) -> [(String, GGUFValue)] {
        var e: [(String, GGUFValue)] = [
            ("tokenizer.ggml.model", .string("llama")),
            ("tokenizer.ggml.tokens", .array(.string, tinyPieces.map { .string($0) })),
            ("tokenizer.ggml.scores", .array(.float32, tinyScores.map { .float32($0) })),
            ("tokenizer.ggml.token_type", .array(.int32, tinyTypes.map { .int32(Int32($0)) })),
            ("tokenizer.ggml.bos_token_id", .uint32(1)),
        ]
        e = e.filter { !dropping.contains($0.0) }.map { (k, v) in (k, replacing[k] ?? v) }
        for (k, v) in replacing where !e.contains(where: { $0.0 == k }) { e.append((k, v)) }
        return e
    }

    /// Hand-derived from llama.cpp's rules: user-defined "<X>" is split out, each text fragment gets the space
    /// prefix, the higher score merges first ("▁a" over "ab"), and a character without a piece (no <0xNN> pieces
    /// here) becomes <unk>.
    func testUserDefinedSplitAndSpacePrefix() throws {
        let tok = try GGUFVocabulary.tokenizer(GGUFFile(path: Self.write(Self.tinySPM(), "tiny.gguf")))
        XCTAssertEqual(tok.encode("ab<X>b", addSpecialTokens: false), [6, 5, 7, 3, 5])
        XCTAssertEqual(tok.encode("ab", addSpecialTokens: true), [1, 6, 5])
        XCTAssertEqual(tok.encode("a c", addSpecialTokens: false), [6, 3, 0])
        XCTAssertEqual(tok.encode("", addSpecialTokens: false), [])
        let noPrefix = try GGUFVocabulary.tokenizer(GGUFFile(path: Self.write(
            Self.tinySPM(replacing: ["tokenizer.ggml.add_space_prefix": .bool(false)]), "tiny-noprefix.gguf")))
        XCTAssertEqual(noPrefix.encode("ab", addSpecialTokens: false), [8])
        XCTAssertEqual(noPrefix.decode([8, 7, 6], skipSpecialTokens: true), "ab<X> a")
    }

    func assertBad(_ entries: [(String, GGUFValue)], _ name: String, key: String, mentions extra: String = "",
                   file: StaticString = #filePath, line: UInt = #line) throws {
        let path = try Self.write(entries, name)
        XCTAssertThrowsError(try GGUFVocabulary.tokenizer(GGUFFile(path: path)), file: file, line: line) { e in
            guard let q = e as? QuantKitError else { return XCTFail("not a QuantKitError: \(e)", file: file, line: line) }
            XCTAssertTrue(q.message.contains(path), "no file in: \(q.message)", file: file, line: line)
            XCTAssertTrue(q.message.contains("'\(key)'"), "no key \(key) in: \(q.message)", file: file, line: line)
            if !extra.isEmpty { XCTAssertTrue(q.message.contains(extra), "no '\(extra)' in: \(q.message)", file: file, line: line) }
            XCTAssertFalse(q.message.contains("\n"), file: file, line: line)
        }
    }

    func testBadMetadataNamesTheKey() throws {
        try assertBad(Self.tinySPM(dropping: ["tokenizer.ggml.model"]), "nomodel.gguf", key: "tokenizer.ggml.model")
        try assertBad(Self.tinySPM(replacing: ["tokenizer.ggml.model": .string("bert")]), "bert.gguf",
                      key: "tokenizer.ggml.model", mentions: "bert")
        try assertBad(Self.tinySPM(dropping: ["tokenizer.ggml.tokens"]), "notokens.gguf", key: "tokenizer.ggml.tokens")
        try assertBad(Self.tinySPM(replacing: ["tokenizer.ggml.tokens": .array(.int32, [.int32(1)])]), "inttokens.gguf",
                      key: "tokenizer.ggml.tokens")
        try assertBad(Self.tinySPM(dropping: ["tokenizer.ggml.scores"]), "noscores.gguf", key: "tokenizer.ggml.scores")
        try assertBad(Self.tinySPM(replacing: ["tokenizer.ggml.scores": .array(.float32, [.float32(0)])]), "shortscores.gguf",
                      key: "tokenizer.ggml.scores", mentions: "1 entries")
        try assertBad(Self.tinySPM(replacing: ["tokenizer.ggml.token_type": .array(.int32, [.int32(1), .int32(1)])]),
                      "shorttypes.gguf", key: "tokenizer.ggml.token_type", mentions: "2 entries")
        try assertBad(Self.tinySPM(replacing: ["tokenizer.ggml.token_type": .array(.int32, Self.tinyTypes.map { .int32(Int32($0 == 4 ? 9 : $0)) })]),
                      "badtype.gguf", key: "tokenizer.ggml.token_type", mentions: "9")
        try assertBad(Self.tinySPM(replacing: ["tokenizer.ggml.bos_token_id": .uint32(10)]), "bos.gguf",
                      key: "tokenizer.ggml.bos_token_id", mentions: "10")
        try assertBad(Self.tinySPM(replacing: ["tokenizer.ggml.unknown_token_id": .int32(-1)]), "unk.gguf",
                      key: "tokenizer.ggml.unknown_token_id")
        try assertBad(Self.tinySPM(replacing: ["tokenizer.ggml.add_bos_token": .uint8(1)]), "addbos.gguf",
                      key: "tokenizer.ggml.add_bos_token")
        var dup = Self.tinyPieces; dup[9] = "ab"
        try assertBad(Self.tinySPM(replacing: ["tokenizer.ggml.tokens": .array(.string, dup.map { .string($0) })]),
                      "dup.gguf", key: "tokenizer.ggml.tokens", mentions: "duplicate")

        let gpt2: [(String, GGUFValue)] = [
            ("tokenizer.ggml.model", .string("gpt2")), ("tokenizer.ggml.pre", .string("gpt-2")),
            ("tokenizer.ggml.tokens", .array(.string, ["a", "b", "ab"].map { .string($0) })),
            ("tokenizer.ggml.merges", .array(.string, [.string("a b")])),
        ]
        let ok = try GGUFVocabulary.tokenizer(GGUFFile(path: Self.write(gpt2, "gpt2ok.gguf")))
        XCTAssertEqual(ok.encode("abba", addSpecialTokens: false), [2, 1, 0])
        try assertBad(gpt2.filter { $0.0 != "tokenizer.ggml.merges" }, "nomerges.gguf", key: "tokenizer.ggml.merges")
        try assertBad(gpt2.map { $0.0 == "tokenizer.ggml.merges" ? ($0.0, .array(.string, [.string("a c")])) : $0 },
                      "badmerge.gguf", key: "tokenizer.ggml.merges", mentions: "a c")
        try assertBad(gpt2.map { $0.0 == "tokenizer.ggml.merges" ? ($0.0, .array(.string, [.string("ab")])) : $0 },
                      "nospacemerge.gguf", key: "tokenizer.ggml.merges")
        try assertBad(gpt2.map { $0.0 == "tokenizer.ggml.pre" ? ($0.0, .string("llama-bpe")) : $0 },
                      "pre.gguf", key: "tokenizer.ggml.pre", mentions: "llama-bpe")
        try assertBad(gpt2.filter { $0.0 != "tokenizer.ggml.pre" }, "nopre.gguf", key: "tokenizer.ggml.pre")
        try assertBad(gpt2 + [("tokenizer.ggml.eos_token_id", .uint32(3))], "eos.gguf", key: "tokenizer.ggml.eos_token_id")
    }
}
