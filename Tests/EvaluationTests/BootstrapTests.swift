import Evaluation
import Foundation
import TensorCore
import TestSupport
import XCTest

/// The bootstrap against Tools/reference_bootstrap.py (numpy, same SplitMix64 resamples: exact to 1e-9) and
/// against scipy.stats.bootstrap (its own resamples: statistical agreement).
final class BootstrapTests: XCTestCase {
    struct Ref {
        let root: [String: Any]
        init() throws {
            let d = try Data(contentsOf: URL(fileURLWithPath: Repo.path("Tests/EvaluationTests/Fixtures/compare/bootstrap_reference.json")))
            root = try JSONSerialization.jsonObject(with: d) as! [String: Any]
        }
        func chunks(_ k: String) -> [ChunkNLL] {
            (root[k] as! [[String: Any]]).map { ChunkNLL(nllSum: ($0["nll_sum"] as! NSNumber).doubleValue, count: ($0["count"] as! NSNumber).intValue) }
        }
        func doubles(_ k: String) -> [Double] { (root[k] as! [NSNumber]).map(\.doubleValue) }
        func ci(_ k: String) -> [String: Double] { (root[k] as! [String: NSNumber]).mapValues(\.doubleValue) }
        var seed: UInt64 { UInt64((root["seed"] as! NSNumber).intValue) }
        var resamples: Int { (root["resamples"] as! NSNumber).intValue }
    }

    func testSplitMixIndicesMatchPython() throws {
        let ref = try Ref()
        var rng = SplitMix64(seed: ref.seed)
        let first = (0..<10).map { _ in rng.index(40) }
        XCTAssertEqual(first, (ref.root["first_indices"] as! [NSNumber]).map(\.intValue))
    }

    func testQErrorIntervalMatchesNumpyExactly() throws {
        let ref = try Ref()
        let ci = try Bootstrap.qerror(base: ref.chunks("chunks"), quantized: ref.chunks("chunks_quantized"),
                                      resamples: ref.resamples, seed: ref.seed, level: 0.95)
        let want = ref.ci("qerror")
        XCTAssertEqual(ci.estimate, want["estimate"]!, accuracy: 1e-9)
        XCTAssertEqual(ci.lower, want["lower"]!, accuracy: 1e-9)
        XCTAssertEqual(ci.upper, want["upper"]!, accuracy: 1e-9)
        XCTAssertLessThan(ci.lower, ci.estimate)
        XCTAssertGreaterThan(ci.upper, ci.estimate)
    }

    func testQueryIntervalsMatchNumpyExactly() throws {
        let ref = try Ref()
        let b = ref.doubles("ndcg_base"), q = ref.doubles("ndcg_quantized")
        let drop = try Bootstrap.relativeDrop(base: b, quantized: q, resamples: ref.resamples, seed: ref.seed)
        let md = try Bootstrap.meanDelta(base: b, quantized: q, resamples: ref.resamples, seed: ref.seed)
        for (got, key) in [(drop, "drop"), (md, "mean_delta")] {
            let want = ref.ci(key)
            XCTAssertEqual(got.estimate, want["estimate"]!, accuracy: 1e-9, key)
            XCTAssertEqual(got.lower, want["lower"]!, accuracy: 1e-9, key)
            XCTAssertEqual(got.upper, want["upper"]!, accuracy: 1e-9, key)
        }
    }

    /// scipy draws different resamples, so only statistical agreement is expected: with 4000 resamples each the
    /// percentile bounds' Monte Carlo error is about 0.001 here; tolerance 0.004 (about 10% of the interval width).
    func testQueryIntervalAgreesWithScipyStatistically() throws {
        let ref = try Ref()
        let drop = try Bootstrap.relativeDrop(base: ref.doubles("ndcg_base"), quantized: ref.doubles("ndcg_quantized"),
                                              resamples: 4000, seed: 99)
        let sp = ref.ci("scipy_drop")
        XCTAssertEqual(drop.lower, sp["lower"]!, accuracy: 0.004)
        XCTAssertEqual(drop.upper, sp["upper"]!, accuracy: 0.004)
    }

    func testPercentileMatchesNumpyLinear() {
        // numpy.percentile([1, 2, 4, 8], [0, 25, 50, 90, 100]) = 1, 1.75, 3, 6.8, 8
        let s = [1.0, 2, 4, 8]
        XCTAssertEqual(Bootstrap.percentile(s, 0), 1)
        XCTAssertEqual(Bootstrap.percentile(s, 0.25), 1.75, accuracy: 1e-12)
        XCTAssertEqual(Bootstrap.percentile(s, 0.5), 3, accuracy: 1e-12)
        XCTAssertEqual(Bootstrap.percentile(s, 0.9), 6.8, accuracy: 1e-12)
        XCTAssertEqual(Bootstrap.percentile(s, 1), 8)
    }

    func testBadInputsThrow() {
        XCTAssertThrowsError(try Bootstrap.qerror(base: [ChunkNLL(nllSum: 1, count: 2)], quantized: []))
        XCTAssertThrowsError(try Bootstrap.qerror(base: [ChunkNLL(nllSum: 1, count: 2), ChunkNLL(nllSum: 1, count: 2)],
                                                  quantized: [ChunkNLL(nllSum: 1, count: 2), ChunkNLL(nllSum: 1, count: 3)])) { e in
            XCTAssertTrue("\(e)".contains("chunk 1"), "\(e)")
        }
        XCTAssertThrowsError(try Bootstrap.relativeDrop(base: [1], quantized: [1]))
    }
}
