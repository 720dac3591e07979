import Foundation
import TensorCore
import TestSupport
import XCTest
@testable import Evaluation

/// Retrieval metrics against pytrec_eval (trec_eval C code) and SQuAD EM/F1 against a re-implementation of the
/// official v1.1 script; fixtures from Tools/reference_trec_eval.py and Tools/reference_squad.py.
final class RagMetricsTests: XCTestCase {
    let fixtures = Repo.path("Tests/EvaluationTests/Fixtures/rag")

    func testAgainstPytrecEval() throws {
        let qrels = try RetrievalMetrics.readQrels(fixtures + "/qrels_test_extra.tsv")
        let expected = try JSONSerialization.jsonObject(with: readFile(fixtures + "/trec_expected.json")) as! [String: Any]
        let runs = expected["runs"] as! [String: [String: Any]]
        for name in ["random", "ties"] {
            let run = try RetrievalMetrics.readTrecRun(fixtures + "/run_\(name).trec.zst")
            let scores = RetrievalMetrics.evaluate(qrels: qrels, run: run)
            let mean = runs[name]!["mean"] as! [String: Double]
            let per = runs[name]!["per_query"] as! [String: [String: Double]]
            XCTAssertEqual(Set(mean.keys), Set(RetrievalMetrics.metricNames))
            for (k, v) in mean { XCTAssertEqual(scores.mean[k]!, v, accuracy: 1e-6, "\(name) mean \(k)") }
            XCTAssertEqual(per.count, scores.perQuery.count)
            for (q, m) in per { for (k, v) in m { XCTAssertEqual(scores.perQuery[q]![k], v, accuracy: 1e-6, "\(name) \(q) \(k)") } }
            XCTAssertEqual(scores.queriesWithoutRelevant, 1)
            XCTAssertEqual(scores.queriesMissingFromRun, 1)
        }
    }

    func testTieRuleAndHandComputedValues() {
        // Equal scores: doc id descending byte-wise ("b" > "aa" > "a"; "Z" < "a" in ASCII).
        let run = [ScoredDoc(id: "a", score: 1), ScoredDoc(id: "Z", score: 1), ScoredDoc(id: "b", score: 1),
                   ScoredDoc(id: "aa", score: 1), ScoredDoc(id: "c", score: 0.5)]
        XCTAssertEqual(RetrievalMetrics.rank(run).map(\.id), ["b", "aa", "a", "Z", "c"])
        // rel: a=2 (rank 3), c=1 (rank 5), x=3 unretrieved. DCG@5 = 2/log2(4) + 1/log2(6);
        // IDCG@5 = 3/1 + 2/log2(3) + 1/2.
        let m = RetrievalMetrics.score(ranking: run, judgements: ["a": 2, "c": 1, "x": 3, "b": 0])
        let dcg = 2 / 2.0 + 1 / log2(6.0), idcg = 3 + 2 / log2(3.0) + 0.5
        XCTAssertEqual(m["ndcg@5"], dcg / idcg, accuracy: 1e-12)
        XCTAssertEqual(m["ndcg@1"], 0)
        XCTAssertEqual(m["mrr@10"], 1.0 / 3, accuracy: 1e-12)
        XCTAssertEqual(m["recall@10"], 2.0 / 3, accuracy: 1e-12)
    }

    func testTrecRunRoundTrip() throws {
        let run: TRECRun = ["q1": [ScoredDoc(id: "d2", score: 0.5), ScoredDoc(id: "d1", score: 0.75)]]
        let text = RetrievalMetrics.trecRunText(run, tag: "t")
        XCTAssertEqual(text, "q1 Q0 d1 1 0.75 t\nq1 Q0 d2 2 0.5 t\n")
        let dir = Repo.tempDirectory("run")
        try AtomicFile.write(text.data(using: .utf8)!, to: dir + "/r.trec")
        XCTAssertEqual(try RetrievalMetrics.readTrecRun(dir + "/r.trec")["q1"]!.map(\.id), ["d1", "d2"])
        try AtomicFile.write("q1 Q0 d1\n".data(using: .utf8)!, to: dir + "/bad.trec")
        XCTAssertThrowsError(try RetrievalMetrics.readTrecRun(dir + "/bad.trec")) { XCTAssertTrue("\($0)".contains("line 1")) }
    }

    func testSquadAgainstOfficialBehaviour() throws {
        let obj = try JSONSerialization.jsonObject(with: readFile(fixtures + "/squad_cases.json")) as! [String: Any]
        let cases = obj["cases"] as! [[String: Any]]
        XCTAssertGreaterThan(cases.count, 200)
        for c in cases {
            let p = c["prediction"] as! String, golds = c["golds"] as! [String]
            XCTAssertEqual(SquadMetrics.normalize(p), c["normalized"] as! String, "normalize(\(p.debugDescription))")
            XCTAssertEqual(SquadMetrics.exactMatch(p, golds: golds), c["em"] as! Double, "EM \(p.debugDescription) \(golds)")
            XCTAssertEqual(SquadMetrics.f1(p, golds: golds), c["f1"] as! Double, accuracy: 1e-12, "F1 \(p.debugDescription) \(golds)")
        }
    }
}
