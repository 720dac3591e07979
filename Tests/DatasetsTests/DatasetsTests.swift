import Foundation
import TensorCore
import TestSupport
import XCTest
@testable import Datasets

final class DatasetsTests: XCTestCase {
    func write(_ dir: String, _ name: String, _ text: String) {
        let path = (dir as NSString).appendingPathComponent(name)
        try? FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent,
                                                 withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: path, contents: text.data(using: .utf8))
    }

    func testShippedSciFact() throws {
        let ds = try Datasets.loadBEIR(Repo.path("Corpora/scifact"), split: "test")
        // Figures from Corpora/SOURCES.md: 5,183 abstracts, 300 test queries, 339 judgements.
        XCTAssertEqual(ds.corpus.count, 5183)
        XCTAssertEqual(ds.queries.count, 300)
        XCTAssertEqual(ds.qrels.values.map(\.count).reduce(0, +), 339)
        XCTAssertEqual(ds.unknownQueryJudgements, 0)
        XCTAssertEqual(ds.unknownDocJudgements, 0)
        // sha256 of the decompressed bytes, computed independently with `zstd -dc | sha256sum`.
        let raw = try readMaybeCompressed(Repo.path("Corpora/scifact/corpus.jsonl.zst"))
        XCTAssertEqual(ds.corpusSHA256, Digest.sha256(raw))
        XCTAssertEqual(ds.corpus[0].id, "4983")
        XCTAssertTrue(ds.corpus[0].embeddingText.hasPrefix("Microstructural development of human newborn cerebral white matter assessed in vivo by diffusion tensor magnetic resonance imaging. Alterations"))
    }

    func testSubsetKeepsJudgedDocuments() throws {
        let ds = try Datasets.loadBEIR(Repo.path("Corpora/scifact"), split: "test")
        let sub = ds.subset(maxDocs: 500, maxQueries: 50)
        XCTAssertEqual(sub.queries.count, 50)
        XCTAssertEqual(sub.corpus.count, 500)
        let ids = Set(sub.corpus.map(\.id))
        for q in sub.queries { for d in sub.qrels[q.id]!.keys { XCTAssertTrue(ids.contains(d)) } }
    }

    func testBadBEIRInputs() throws {
        let dir = Repo.tempDirectory("beir")
        write(dir, "queries.jsonl", "{\"_id\": \"q1\", \"text\": \"a\"}\n")
        write(dir, "qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq9\td1\t1\nq1\td7\t2\n")
        write(dir, "corpus.jsonl", "")
        XCTAssertThrowsError(try Datasets.loadBEIR(dir)) { XCTAssertTrue("\($0)".contains("empty corpus"), "\($0)") }
        write(dir, "corpus.jsonl", "{\"_id\": \"d1\", \"text\": \"x\"}\n{\"_id\": \"d1\", \"text\": \"y\"}\n")
        XCTAssertThrowsError(try Datasets.loadBEIR(dir)) { XCTAssertTrue("\($0)".contains("duplicate document id \"d1\""), "\($0)") }
        write(dir, "corpus.jsonl", "{\"_id\": \"d1\", \"text\": \"x\"}\n\n{\"_id\": \"d2\", \"text\": \"y\"\n")
        XCTAssertThrowsError(try Datasets.loadBEIR(dir)) { XCTAssertTrue("\($0)".contains("line 3: malformed JSON"), "\($0)") }
        write(dir, "corpus.jsonl", "{\"_id\": \"d1\", \"title\": \"T\", \"text\": \"x\"}\n{\"_id\": 2, \"text\": \"y\"}\n")
        let ds = try Datasets.loadBEIR(dir)
        XCTAssertEqual(ds.unknownQueryJudgements, 1)
        XCTAssertEqual(ds.unknownDocJudgements, 1)
        XCTAssertEqual(ds.qrels, ["q1": ["d1": 1, "d7": 2]])
        XCTAssertEqual(ds.corpus.map(\.embeddingText), ["T x", "y"])
        XCTAssertEqual(ds.warnings.count, 2)
        write(dir, "qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\tone\n")
        XCTAssertThrowsError(try Datasets.loadBEIR(dir)) { XCTAssertTrue("\($0)".contains("line 2"), "\($0)") }
        XCTAssertThrowsError(try Datasets.loadBEIR(dir, split: "dev")) { XCTAssertTrue("\($0)".contains("dev.tsv"), "\($0)") }
    }

    func testPlainTextAndLines() throws {
        let dir = Repo.tempDirectory("txt")
        write(dir, "a.txt", "one\r\ntwo\n\nthree\n")
        let (lines, src) = try Datasets.readLines(dir + "/a.txt")
        XCTAssertEqual(lines, ["one", "two", "", "three"])
        // sha256("one\r\ntwo\n\nthree\n") from `printf 'one\r\ntwo\n\nthree\n' | sha256sum`
        XCTAssertEqual(src.sha256, "abc5915f9e96cd49eefbaf312b53a202c05632d9885f3092ed8dfa2a3855e9d0")
        XCTAssertEqual(src.bytes, 16)
        FileManager.default.createFile(atPath: dir + "/bad.txt", contents: Data([0x66, 0xFF, 0xFE]))
        XCTAssertThrowsError(try Datasets.readPlainText(dir + "/bad.txt")) { XCTAssertTrue("\($0)".contains("UTF-8")) }
    }

    func testSQuAD() throws {
        let ds = try Datasets.loadSQuAD(Repo.path("Corpora/squad/squad-v2-dev-first5.json.zst"))
        // Corpora/SOURCES.md: 173 paragraphs, 1,407 questions (705 answerable).
        XCTAssertEqual(ds.contexts.count, 173)
        XCTAssertEqual(ds.questions.count, 1407)
        XCTAssertEqual(ds.questions.filter { !$0.isImpossible }.count, 705)
        XCTAssertEqual(ds.questions[0].question, "In what country is Normandy located?")
        XCTAssertEqual(ds.questions[0].answers, ["France", "France", "France", "France"])
        let dir = Repo.tempDirectory("squad")
        write(dir, "s.json", "{\"data\": 3}")
        XCTAssertThrowsError(try Datasets.loadSQuAD(dir + "/s.json")) { XCTAssertTrue("\($0)".contains("SQuAD")) }
    }
}
