import Foundation
import TestSupport
import XCTest
@testable import Datasets
@testable import Evaluation

final class RagAnswersTests: XCTestCase {
    /// Replies from a table keyed by question text; records the prompts it saw.
    final class TableGenerator: AnswerGenerator {
        let name: String
        let replies: [String: String]
        var prompts: [String] = []
        init(_ name: String, _ replies: [String: String]) { self.name = name; self.replies = replies }
        func generate(prompt: String, maxTokens: Int) throws -> String {
            prompts.append(prompt)
            let q = prompt.components(separatedBy: "Question: ")[1].components(separatedBy: "\n")[0]
            return replies[q] ?? ""
        }
    }

    func q(_ id: String, _ question: String, _ answers: [String]) -> SquadQuestion {
        SquadQuestion(id: id, question: question, context: "ctx \(id)", title: "", answers: answers, isImpossible: answers.isEmpty)
    }

    func testScoresAgreementAndSegments() throws {
        let qs = [q("1", "Where?", ["France", "in France"]), q("2", "When?", ["10th century"]),
                  q("3", "Who?", ["Rollo"]), q("4", "What?", [])]
        let float = TableGenerator("float", ["Where?": " France.\nmore text", "When?": "the 10th century", "Who?": "Rolf", "What?": "unanswerable"])
        let quant = TableGenerator("int4", ["Where?": "France", "When?": "10th", "Who?": "Rollo", "What?": "Paris"])
        let ctx = qs.map { [$0.context] }
        let a = try AnswerEvaluation.run(float, questions: qs, contexts: ctx, maxTokens: 16)
        let b = try AnswerEvaluation.run(quant, questions: qs, contexts: ctx, maxTokens: 16)
        XCTAssertTrue(float.prompts[0].contains("Context: ctx 1\n\nQuestion: Where?\nAnswer:"))
        XCTAssertEqual(a.records.map(\.answer), ["France.", "the 10th century", "Rolf", "unanswerable"])
        // answerable: EM 1,1,0 -> 2/3; F1 1,1,0 -> 2/3
        XCTAssertEqual(a.em, 2.0 / 3, accuracy: 1e-12)
        XCTAssertEqual(a.unanswerableAbstention, 1)
        // int4: EM 1,0,1; F1: "10th" vs "10th century" = 2*(1*0.5)/(1.5) = 2/3
        XCTAssertEqual(b.em, 2.0 / 3, accuracy: 1e-12)
        XCTAssertEqual(b.f1, (1 + 2.0 / 3 + 1) / 3, accuracy: 1e-12)
        XCTAssertEqual(b.unanswerableAbstention, 0)
        // agreement over all 4: France/France.=1, "10th"/"the 10th century"=0 (F1 2/3), Rollo/Rolf=0, Paris/unanswerable=0
        let ag = AnswerEvaluation.agreement(a, b)
        XCTAssertEqual(ag.em, 0.25, accuracy: 1e-12)
        XCTAssertEqual(ag.f1, (1 + 2.0 / 3) / 4, accuracy: 1e-12)
        let types = qs.map { AnswerType.of($0) }
        XCTAssertEqual(types, [.name, .date, .name, .unanswerable])
        let segs = AnswerEvaluation.segments(b)
        XCTAssertEqual(segs.map(\.answerType), ["unanswerable", "date", "name"])
        XCTAssertEqual(segs.map(\.questions), [1, 1, 2])
    }

    /// The one answer-type rule (AnswerType.of): a four-digit year is a date, not a number.
    func testAnswerTypeRule() {
        let cases: [(String, AnswerType)] = [("1998", .date), ("March 4, 1789", .date), ("the 10th century", .date),
                                             ("3.5 million", .number), ("George Washington", .name),
                                             ("the upper house", .shortPhrase), ("because the river flooded the plain", .longPhrase)]
        for (answer, type) in cases { XCTAssertEqual(AnswerType.of(q("x", "?", [answer])), type, answer) }
        XCTAssertEqual(AnswerType.of(q("x", "?", [])), .unanswerable)
    }
}
