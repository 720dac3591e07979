import Foundation
import TensorCore
import TestSupport
import Tokenization
import XCTest

/// Fixtures written by Tools/gen_tokenizer_fixtures.py from the reference libraries.
struct CaseFile: Decodable {
    struct Case: Decodable {
        let text: String
        let ids: [Int]
        let ids_special: [Int]?
        let decoded: String?
        let decoded_skip: String?
        let agrees_with_sentencepiece: Bool?
    }
    struct DecodeCase: Decodable {
        let ids: [Int]
        let decoded: String
        let decoded_skip: String?
    }
    struct Whole: Decodable {
        let count: Int
        let sha256_int32le: String
        let first: [Int]
        let last: [Int]
    }
    let cases: [Case]
    let decode_cases: [DecodeCase]?
    let wikitext_test: Whole?
    let bos_id: Int?
    let eos_id: Int?
    let vocab_size: Int?

    static func load(_ name: String) throws -> CaseFile {
        let data = try readMaybeCompressed(Repo.path("Tests/TokenizationTests/Fixtures/\(name)"))
        return try JSONDecoder().decode(CaseFile.self, from: data)
    }
}

func loadShipped(_ relative: String) throws -> any Tokenizer {
    let data = try readMaybeCompressed(Repo.path(relative))
    return try TokenizerLoader.load(data: data, fileName: relative)
}

/// Collects mismatches and fails once with the first few, so a regression is readable.
struct Mismatches {
    var count = 0
    var examples: [String] = []
    mutating func check<T: Equatable>(_ got: T, _ want: T, _ what: @autoclosure () -> String) {
        if got == want { return }
        count += 1
        if examples.count < 6 { examples.append("\(what())\n   got:  \(got)\n   want: \(want)") }
    }
    func assertNone(_ label: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(count, 0, "\(label): \(count) mismatches\n" + examples.joined(separator: "\n"), file: file, line: line)
    }
}

func idsDigest(_ ids: [Int]) -> String {
    var le = [UInt8]()
    le.reserveCapacity(ids.count * 4)
    for x in ids { let v = UInt32(bitPattern: Int32(x)); for k in 0..<4 { le.append(UInt8((v >> (8 * UInt32(k))) & 0xFF)) } }
    return Digest.sha256(Data(le))
}

func wikiText() throws -> String {
    String(decoding: try readMaybeCompressed(Repo.path("Corpora/wikitext-2-raw/wiki.test.raw.zst")), as: UTF8.self)
}
