import Foundation
import TensorCore
import TestSupport
import XCTest
@testable import Datasets

/// Calibration text and passages read through the shared JSONL and SQuAD readers: expected strings written by
/// hand, and each call site's own error wording.
final class CalibrationTextTests: XCTestCase {
    let corpus = """
        {"_id": "d1", "title": "Alpha", "text": "first body"}
         \t\r
        {"_id": "d2", "text": "no title"}
        {"_id": "d3", "title": "Only title"}
        {"_id": "d4", "title": "", "text": ""}
        {"title": "No id", "text": "still read", "extra": 1}

        """
    let squad = """
        {"data": [
          {"title": "A", "paragraphs": [{"context": "Ctx one.", "qas": []}, {"context": "Ctx two."}]},
          {"title": "B"},
          {"paragraphs": [{"qas": []}, {"context": "Ctx three.", "qas": [{"id": "x"}]}]}
        ]}
        """

    func file(_ name: String, _ text: String) throws -> String {
        let path = Repo.tempDirectory("caltext") + "/" + name
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func message(_ body: () throws -> Any) -> String {
        do { _ = try body(); return "no error" } catch { return "\(error)" }
    }

    func testBEIRCorpus() throws {
        let path = try file("corpus.jsonl", corpus)
        XCTAssertEqual(try CalibrationText.load(path), "Alpha\nfirst body\n\nno title\n\nOnly title\n\nNo id\nstill read")
        XCTAssertEqual(try CalibrationText.passages(path).passages, ["Alpha first body", "no title", "Only title ", "No id still read"])
        XCTAssertEqual(try CalibrationText.passages(path).raw, Data(corpus.utf8))
        let doc = BeirDocument(id: "1", title: "T", text: "body")
        XCTAssertEqual(doc.runningText, "T\nbody")
        XCTAssertEqual(doc.embeddingText, "T body")
    }

    func testSQuADContexts() throws {
        let path = try file("squad.json", squad)
        // Calibration reads every context it finds; the evaluation reader refuses the paragraph without "qas".
        XCTAssertEqual(try CalibrationText.load(path), "Ctx one.\n\nCtx two.\n\nCtx three.")
        XCTAssertEqual(try CalibrationText.passages(path).passages, ["Ctx one.", "Ctx two.", "Ctx three."])
        XCTAssertEqual(message { try Datasets.loadSQuAD(path) }, "\(path): data[0].paragraphs[1]: needs \"context\" and \"qas\"")
    }

    func testPlainText() throws {
        let path = try file("notes.txt", "line one\r\nline two\n\n  \nend")
        XCTAssertEqual(try CalibrationText.load(path), "line one\r\nline two\n\n  \nend")
        XCTAssertEqual(try CalibrationText.passages(path).passages, ["line one", "line two", "  ", "end"])
    }

    func testErrorsKeepEachReadersWording() throws {
        let bad = try file("c.jsonl", "{\"text\": \"a\"}\n\n[1]\n")
        XCTAssertEqual(message { try CalibrationText.load(bad) }, "\(bad): line 3: not a JSON object")
        XCTAssertEqual(message { try CalibrationText.passages(bad) }, "\(bad): line 3: not a JSON object")
        XCTAssertEqual(message { try Datasets.readJSONL(bad) }, "\(bad): line 3: expected a JSON object")
        let broken = try file("b.jsonl", "{\"text\": \"a\"}\noops\n")
        XCTAssertEqual(message { try CalibrationText.load(broken) }, "\(broken): line 2: not a JSON object")
        XCTAssertEqual(message { try Datasets.readJSONL(broken) }, "\(broken): line 2: malformed JSON")

        let notSquad = try file("s.json", "{\"data\": 3}")
        XCTAssertEqual(message { try CalibrationText.load(notSquad) }, "\(notSquad): expected a SQuAD JSON object with a 'data' list")
        XCTAssertEqual(message { try Datasets.loadSQuAD(notSquad) }, "\(notSquad): expected an object with a \"data\" array (SQuAD format)")
        let notJSON = try file("n.json", "{oops")
        XCTAssertEqual(message { try CalibrationText.load(notJSON) }, "\(notJSON): expected a SQuAD JSON object with a 'data' list")
        XCTAssertEqual(message { try Datasets.loadSQuAD(notJSON) }, "\(notJSON): malformed JSON")

        let dir = Repo.tempDirectory("caltext")
        FileManager.default.createFile(atPath: dir + "/bad.jsonl", contents: Data([0x7B, 0xFF, 0x7D]))
        XCTAssertEqual(message { try CalibrationText.load(dir + "/bad.jsonl") }, "\(dir)/bad.jsonl: not valid UTF-8 text")
        XCTAssertEqual(message { try CalibrationText.passages(dir + "/bad.jsonl") }, "\(dir)/bad.jsonl: not valid UTF-8 text")
    }

    func testShippedSciFactRunningText() throws {
        // The GPTQ calibration text of the demo: SciFact documents as running text.
        let text = try CalibrationText.load(Repo.path("Corpora/scifact/corpus.jsonl.zst"))
        XCTAssertTrue(text.hasPrefix("Microstructural development of human newborn cerebral white matter assessed in vivo by diffusion tensor magnetic resonance imaging.\nAlterations"), String(text.prefix(200)))
    }
}
