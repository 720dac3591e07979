import Datasets
import Foundation
import TensorCore
import TestSupport
import XCTest

final class SQuADStrictTests: XCTestCase {
    func load(_ json: String) -> String {
        let path = Repo.tempDirectory("squadstrict") + "/s.json"
        try! json.write(toFile: path, atomically: true, encoding: .utf8)
        do { _ = try Datasets.loadSQuAD(path); return "ok" } catch { return "\(path)|\(error)" }
    }

    func squad(_ answers: String, extra: String = "") -> String {
        "{\"data\": [{\"title\": \"T\", \"paragraphs\": [{\"context\": \"five is 5\", \"qas\": [{\"id\": \"q1\", \"question\": \"n?\", \"answers\": [{\"text\": \"five\", \"answer_start\": 0}]}, {\"id\": \"q2\", \"question\": \"how many?\", \"answers\": \(answers)\(extra)}]}]}]}"
    }

    func testNumericAnswerIsRefusedNamingFileAndQuestion() {
        XCTAssertEqual(load(squad("[{\"text\": \"5\", \"answer_start\": 8}]")), "ok")
        for bad in ["[{\"text\": 5, \"answer_start\": 8}]", "[{\"answer_start\": 8}]", "[\"5\"]", "\"5\""] {
            let r = load(squad(bad)).split(separator: "|", maxSplits: 1).map(String.init)
            XCTAssertEqual(r.count, 2, bad)
            XCTAssertTrue(r[1].hasPrefix(r[0]) && r[1].contains("\"q2\""), "\(bad): \(r)")
        }
        XCTAssertTrue(load(squad("[]", extra: ", \"is_impossible\": \"no\"")).contains("is_impossible"))
    }
}
