import Foundation
import XCTest
import FuzzTargets

/// The fuzz targets (Tests/FuzzTargets) in the ordinary suite: every committed seed must be accepted (else the
/// fuzzer starts at the header checks only), and every input that once crashed a parser (Tests/Fuzz/Regressions,
/// one folder per target) must now be refused with one line that names the file. A trap in a parser fails the run.
final class FuzzRegressionTests: XCTestCase {
    private let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fuzz")

    private func inputs(_ folder: String) throws -> [(target: FuzzTarget, file: URL)] {
        let dir = root.appendingPathComponent(folder)
        var out: [(FuzzTarget, URL)] = []
        for name in try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted() {
            guard let target = fuzzTargets.first(where: { $0.name == name }) else {
                XCTFail("\(folder)/\(name): no fuzz target of that name"); continue
            }
            let sub = dir.appendingPathComponent(name)
            for file in try FileManager.default.contentsOfDirectory(atPath: sub.path).sorted() {
                out.append((target, sub.appendingPathComponent(file)))
            }
        }
        return out
    }

    func testEverySeedIsAccepted() throws {
        let seeds = try inputs("Corpus")
        XCTAssertEqual(Set(seeds.map(\.target.name)), Set(fuzzTargets.map(\.name)), "every target has seeds")
        let scratch = Scratch()
        for (target, file) in seeds {
            let refusal = target.outcome(try Data(contentsOf: file), scratch)
            XCTAssertNil(refusal, "\(target.name) seed \(file.lastPathComponent)")
        }
    }

    func testPastFindingsAreRefusedWithOneLine() throws {
        let findings = try inputs("Regressions")
        XCTAssertGreaterThanOrEqual(findings.count, 2)
        let scratch = Scratch()
        for (target, file) in findings {
            guard let refusal = target.outcome(try Data(contentsOf: file), scratch) else {
                XCTFail("\(target.name) \(file.lastPathComponent): accepted; it was a malformed input"); continue
            }
            XCTAssertTrue(refusal.contains(scratch.dir), "\(target.name) \(file.lastPathComponent): '\(refusal)' names no file")
        }
    }
}
