import Foundation
import TestSupport
import XCTest

/// The process as a whole: thread counts far above the cores, and interrupts.
final class ProcessLifecycleTests: XCTestCase {
    /// Runs quantkit; with `interruptAfter`, sends SIGINT that many seconds after the start.
    private func quantkit(_ args: [String], environment extra: [String: String],
                          interruptAfter: Double? = nil) throws -> (status: Int32, out: String, err: String) {
        let p = Process()
        var dir = Bundle(for: ProcessLifecycleTests.self).bundleURL.deletingLastPathComponent()
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
        if let t = interruptAfter {
            usleep(UInt32(t * 1e6))
            p.interrupt()
        }
        // A livelocked run would never end: kill it after five minutes, which fails the test. (The sweep's resume
        // takes ~10 s alone but over a minute on a 2-core host busy with other work.)
        let deadline = Date().addingTimeInterval(300)
        while p.isRunning && Date() < deadline { usleep(50_000) }
        if p.isRunning { p.terminate() }
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    /// SIGINT in the middle of a sweep: exit 130 with one line saying how to resume, no temporary file left, and the
    /// same command again finishes from what was kept.
    func testInterruptedSweepLeavesNoTemporaryFilesAndResumes() throws {
        let dir = Repo.tempDirectory("interrupt")
        let args = ["sweep", "--model", "Models/stories260K/stories260K.bin", "--eval", "Corpora/wikitext-2-raw/wiki.test.raw.zst",
                    "--methods", "rtn,gptq,gptq+mse", "--bits", "4", "--max-chunks", "100", "--samples", "64", "--seqlen", "256",
                    "--output", dir + "/out", "--json", dir + "/sweep.json"]
        let cut = try quantkit(args, environment: ["QUANTKIT_QUIET": "1"], interruptAfter: 1.5)
        XCTAssertEqual(cut.status, 130, cut.err)
        XCTAssertTrue(cut.err.contains("interrupted (SIGINT)") && cut.err.contains("run the same command again to resume"), cut.err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/sweep.json"))
        let leftovers = (FileManager.default.enumerator(atPath: dir)?.allObjects as? [String] ?? []).filter { $0.contains(".tmp-") }
        XCTAssertEqual(leftovers, [])
        let again = try quantkit(args, environment: ["QUANTKIT_QUIET": "1"])
        XCTAssertEqual(again.status, 0, again.err)
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/sweep.json"))
        XCTAssertTrue(again.out.contains("gptq+mse-int4-g32"), again.out)
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
