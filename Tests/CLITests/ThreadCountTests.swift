import Foundation
import TestSupport
import XCTest

/// A thread count far above the cores: the spinning pool used to livelock (QUANTKIT_THREADS=1000 never finished a
/// two-window run on 2 cores). It now clamps with a note and finishes with the same figures.
final class ThreadCountTests: XCTestCase {
    private func quantkit(_ args: [String], environment extra: [String: String]) throws -> (status: Int32, out: String, err: String) {
        let p = Process()
        var dir = Bundle(for: ThreadCountTests.self).bundleURL.deletingLastPathComponent()
        if !FileManager.default.fileExists(atPath: dir.appendingPathComponent("quantkit").path) {
            dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        }
        p.executableURL = dir.appendingPathComponent("quantkit")
        p.arguments = args
        p.currentDirectoryURL = Repo.root
        p.environment = ProcessInfo.processInfo.environment.merging(extra) { $1 }
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        // A livelocked run would never end: kill it after a minute, which fails the test.
        let deadline = Date().addingTimeInterval(60)
        while p.isRunning && Date() < deadline { usleep(50_000) }
        if p.isRunning { p.terminate() }
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    func testOversubscribedThreadsFinishWithTheSameFigures() throws {
        let args = ["perplexity", "--model", "Models/stories260K/stories260K.bin", "--corpus",
                    "Corpora/tinystories/tinystories_sample.txt.zst", "--ctx", "64", "--max-chunks", "2"]
        let plain = try quantkit(args, environment: ["QUANTKIT_QUIET": "1"])
        let many = try quantkit(args, environment: ["QUANTKIT_QUIET": "1", "QUANTKIT_THREADS": "1000"])
        XCTAssertEqual(plain.status, 0, plain.err)
        XCTAssertEqual(many.status, 0, many.err)
        XCTAssertTrue(many.err.contains("QUANTKIT_THREADS=1000 is more than 4 x the"), many.err)
        let ppl = { (s: String) in s.split(separator: "\n").first { $0.hasPrefix("ppl") }.map(String.init) }
        XCTAssertNotNil(ppl(plain.out))
        XCTAssertEqual(ppl(plain.out), ppl(many.out))
        let bad = try quantkit(args, environment: ["QUANTKIT_THREADS": "lots"])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.err.contains("QUANTKIT_THREADS 'lots'"), bad.err)
    }
}
