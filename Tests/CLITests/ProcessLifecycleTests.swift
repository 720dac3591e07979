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

    /// SIGINT in the middle of fine-tuning: exit 130 saying how to resume, no output and no temporary file; the same
    /// command with --resume finishes from the saved state with a checkpoint identical, byte for byte, to an
    /// uninterrupted run's (the loop is repeatable bit for bit at a fixed thread count).
    func testInterruptedFineTuneResumesToTheSameCheckpoint() throws {
        let dir = Repo.tempDirectory("finetune-interrupt")
        func args(_ out: String, _ extra: [String] = []) -> [String] {
            ["finetune", "--model", "Models/stories260K/stories260K.bin", "--method", "rtn", "--bits", "4", "--group-size", "32",
             "--steps", "120", "--batch", "2", "--seqlen", "32", "--samples", "16", "--checkpoint-every", "5", "--threads", "2",
             "--output", dir + "/" + out] + extra
        }
        let env = ["QUANTKIT_QUIET": "1"]
        let straight = try quantkit(args("straight"), environment: env)
        XCTAssertEqual(straight.status, 0, straight.err)
        // Interrupt once the first state is saved (the run takes a few seconds in all).
        let p = Process()
        var bin = Bundle(for: ProcessLifecycleTests.self).bundleURL.deletingLastPathComponent()
        if !FileManager.default.fileExists(atPath: bin.appendingPathComponent("quantkit").path) {
            bin = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        }
        p.executableURL = bin.appendingPathComponent("quantkit")
        p.arguments = args("cut")
        p.currentDirectoryURL = Repo.root
        p.environment = ProcessInfo.processInfo.environment.merging(env) { $1 }
        let err = Pipe()
        p.standardError = err
        p.standardOutput = Pipe()
        try p.run()
        let state = dir + "/cut.finetune-state.safetensors"
        let deadline = Date().addingTimeInterval(120)
        while p.isRunning && !FileManager.default.fileExists(atPath: state) && Date() < deadline { usleep(2_000) }
        XCTAssertTrue(p.isRunning, "the run ended before it could be interrupted")
        p.interrupt()
        p.waitUntilExit()
        let message = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(p.terminationStatus, 130, message)
        XCTAssertTrue(message.contains("interrupted (SIGINT)") && message.contains("--resume"), message)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/cut"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: state))
        let leftovers = (FileManager.default.enumerator(atPath: dir)?.allObjects as? [String] ?? []).filter { $0.contains(".tmp-") }
        XCTAssertEqual(leftovers, [])
        let resumed = try quantkit(args("cut", ["--resume"]), environment: env)
        XCTAssertEqual(resumed.status, 0, resumed.err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: state), "the state is removed once the checkpoint is written")
        let a = try Data(contentsOf: URL(fileURLWithPath: dir + "/straight/model.safetensors"))
        let b = try Data(contentsOf: URL(fileURLWithPath: dir + "/cut/model.safetensors"))
        XCTAssertEqual(a, b, "the resumed run's weights differ from the uninterrupted run's")
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
