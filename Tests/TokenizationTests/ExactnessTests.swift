import Foundation
import TensorCore
import TestSupport
import Tokenization
import XCTest

/// Ids and decoded strings equal the reference libraries' on >= 2,000 corpus lines plus adversarial strings.
final class ExactnessTests: XCTestCase {
    private func checkHF(_ fixture: String, _ path: String) throws {
        let tok = try loadShipped(path)
        let f = try CaseFile.load(fixture)
        XCTAssertGreaterThan(f.cases.count, 2000)
        var m = Mismatches()
        for c in f.cases {
            let quoted = String(reflecting: c.text.prefix(120))
            m.check(tok.encode(c.text, addSpecialTokens: false), c.ids, "encode \(quoted)")
            let withSpecial = c.ids_special ?? c.ids
            m.check(tok.encode(c.text, addSpecialTokens: true), withSpecial, "encode+special \(quoted)")
            if let d = c.decoded {
                m.check(tok.decode(withSpecial, skipSpecialTokens: false), d, "decode \(quoted)")
                m.check(tok.decode(withSpecial, skipSpecialTokens: true), c.decoded_skip ?? d, "decode skip \(quoted)")
            }
        }
        for c in f.decode_cases ?? [] {
            m.check(tok.decode(c.ids, skipSpecialTokens: false), c.decoded, "decode \(c.ids)")
            m.check(tok.decode(c.ids, skipSpecialTokens: true), c.decoded_skip ?? c.decoded, "decode skip \(c.ids)")
        }
        m.assertNone(fixture)
        if let w = f.wikitext_test { try checkWhole(tok, w) }
    }

    private func checkWhole(_ tok: any Tokenizer, _ w: CaseFile.Whole) throws {
        let ids = tok.encode(try wikiText(), addSpecialTokens: false)
        XCTAssertEqual(ids.count, w.count, "\(tok.name): whole WikiText-2 token count")
        XCTAssertEqual(Array(ids.prefix(1000)), w.first, "\(tok.name): first 1000 ids")
        XCTAssertEqual(Array(ids.suffix(1000)), w.last, "\(tok.name): last 1000 ids")
        XCTAssertEqual(idsDigest(ids), w.sha256_int32le, "\(tok.name): sha256 of the id sequence")
    }

    func testGPT2MatchesTokenizersLibrary() throws {
        try checkHF("gpt2_cases.json.zst", "Tokenizers/gpt2/tokenizer.json.zst")
    }

    func testMiniLMMatchesTokenizersLibrary() throws {
        try checkHF("minilm_cases.json.zst", "Tokenizers/minilm/tokenizer.json.zst")
    }

    func testTok512MatchesSentencePiece() throws {
        let tok = try loadShipped("Tokenizers/tok512/tok512.model")
        let f = try CaseFile.load("tok512_sp_cases.json.zst")
        XCTAssertEqual(tok.bosId, f.bos_id); XCTAssertEqual(tok.eosId, f.eos_id)
        XCTAssertEqual(tok.bosId, 1); XCTAssertEqual(tok.eosId, 2)
        XCTAssertEqual(tok.vocabSize, f.vocab_size)
        XCTAssertTrue(tok.addsBOS)
        var m = Mismatches()
        for c in f.cases {
            let quoted = String(reflecting: c.text.prefix(120))
            m.check(tok.encode(c.text, addSpecialTokens: false), c.ids, "encode \(quoted)")
            m.check(tok.encode(c.text, addSpecialTokens: true), [1] + c.ids, "encode+BOS \(quoted)")
            if let d = c.decoded { m.check(tok.decode(c.ids, skipSpecialTokens: false), d, "decode \(quoted)") }
        }
        for c in f.decode_cases ?? [] { m.check(tok.decode(c.ids, skipSpecialTokens: false), c.decoded, "decode \(c.ids)") }
        m.assertNone("tok512.model")
        try checkWhole(tok, XCTUnwrap(f.wikitext_test))
    }

    func testTok512BinMatchesLlama2cEncode() throws {
        let tok = try loadShipped("Tokenizers/tok512/tok512.bin")
        let f = try CaseFile.load("tok512_llama2c_cases.json.zst")
        XCTAssertGreaterThan(f.cases.count, 1000)
        var m = Mismatches()
        for c in f.cases {
            m.check(tok.encode(c.text, addSpecialTokens: false), c.ids, "encode \(String(reflecting: c.text))")
        }
        m.assertNone("tok512.bin")
        // Where llama2.c and sentencepiece agree (no extra whitespace), the .bin equals the .model.
        let sp = try loadShipped("Tokenizers/tok512/tok512.model")
        var agree = 0
        for c in f.cases where c.agrees_with_sentencepiece == true {
            XCTAssertEqual(tok.encode(c.text, addSpecialTokens: true), sp.encode(c.text, addSpecialTokens: true))
            agree += 1
        }
        XCTAssertGreaterThan(agree, 500)
        // The documented difference: remove_extra_whitespaces exists only in the .model.
        XCTAssertNotEqual(tok.encode("a  b", addSpecialTokens: false), sp.encode("a  b", addSpecialTokens: false))
    }

    func testMetadata() throws {
        let gpt2 = try loadShipped("Tokenizers/gpt2/tokenizer.json.zst")
        XCTAssertEqual(gpt2.name, "hf-tokenizers:gpt2/tokenizer.json")
        XCTAssertFalse(gpt2.addsBOS)
        XCTAssertEqual(gpt2.vocabSize, 50257)
        XCTAssertEqual(gpt2.eosId, 50256)
        XCTAssertEqual(gpt2.token(for: 50256), "<|endoftext|>")
        let minilm = try loadShipped("Tokenizers/minilm/tokenizer.json.zst")
        XCTAssertEqual(minilm.vocabSize, 30522)
        XCTAssertEqual(minilm.padId, 0)
        XCTAssertEqual(minilm.encode("", addSpecialTokens: true), [101, 102])
        // Truncation in the file (128) is not applied: callers truncate.
        XCTAssertEqual(minilm.encode(String(repeating: "word ", count: 300), addSpecialTokens: true).count, 302)
        let sp = try loadShipped("Tokenizers/tok512/tok512.model")
        XCTAssertEqual(sp.name, "sentencepiece:tok512.model")
        XCTAssertEqual(sp.token(for: 1), "<s>")
        let bin = try loadShipped("Tokenizers/tok512/tok512.bin")
        XCTAssertEqual(bin.vocabSize, 512)
        XCTAssertEqual(bin.bosId, 1); XCTAssertEqual(bin.eosId, 2); XCTAssertTrue(bin.addsBOS)
        XCTAssertEqual(bin.decode(bin.encode("Once upon a time", addSpecialTokens: true), skipSpecialTokens: true),
                       "Once upon a time")
    }

    func testBatchEqualsSequential() throws {
        let lines = try wikiText().split(separator: "\n", omittingEmptySubsequences: false).prefix(600).map(String.init)
        for path in ["Tokenizers/gpt2/tokenizer.json.zst", "Tokenizers/minilm/tokenizer.json.zst", "Tokenizers/tok512/tok512.model"] {
            let tok = try loadShipped(path)
            let seq = lines.map { tok.encode($0, addSpecialTokens: true) }
            XCTAssertEqual(tok.encodeBatch(lines, addSpecialTokens: true, threads: 3), seq, path)
            XCTAssertEqual(tok.encodeBatch(lines, addSpecialTokens: true, threads: 1), seq, path)
        }
    }
}
