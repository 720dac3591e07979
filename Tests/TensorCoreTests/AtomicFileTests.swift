import Foundation
import TensorCore
import TestSupport
import XCTest

final class AtomicFileTests: XCTestCase {
    func message(_ body: () throws -> Void) -> String {
        do { try body(); return "no error" } catch { return "\(error)" }
    }

    func testRefusesNonRegularDestinationsAndNamesTheGivenPath() throws {
        let dir = Repo.tempDirectory("atomic")
        let fifo = dir + "/pipe"
        XCTAssertEqual(mkfifo(fifo, 0o644), 0)
        let m = message { try AtomicFile.write(Data("x".utf8), to: fifo) }
        XCTAssertTrue(m.hasPrefix(fifo + ": exists and is a FIFO"), m)
        var st = stat()
        XCTAssertEqual(stat(fifo, &st), 0)
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFIFO, "the FIFO was replaced")
        XCTAssertTrue(message { try AtomicFile.write(Data("x".utf8), to: dir) }.contains("is a directory"))
        XCTAssertTrue(message { try AtomicFile.write(Data("x".utf8), to: "") }.contains("empty output path"))
        // An unwritable destination names the path given, not the temporary file.
        let ro = dir + "/ro"
        try FileManager.default.createDirectory(atPath: ro, withIntermediateDirectories: true)
        chmod(ro, 0o500)
        defer { chmod(ro, 0o700) }
        if getuid() != 0 {
            let m2 = message { try AtomicFile.write(Data("x".utf8), to: ro + "/out.json") }
            XCTAssertTrue(m2.hasPrefix(ro + "/out.json: cannot write") && !m2.contains(".tmp-"), m2)
        }
        XCTAssertEqual(message { try AtomicFile.checkDestination("", flag: "--json", directory: false) }, "--json: empty path")
    }

    /// What an interrupt does: the temporary outputs being written are removed, so the destination never
    /// appears half-written; outputs already in place stay.
    func testInterruptRemovesOutputsBeingWritten() throws {
        let dir = Repo.tempDirectory("inflight")
        try AtomicFile.write(Data("done".utf8), to: dir + "/kept.txt")
        var removed = -1
        XCTAssertThrowsError(try AtomicFile.write(to: dir + "/cut.txt") { h in
            try h.write(contentsOf: Data("half".utf8))
            removed = InFlightOutputs.removeAll()
        })
        XCTAssertEqual(removed, 1)
        XCTAssertThrowsError(try AtomicFile.writeDirectory(to: dir + "/cutdir") { tmp in
            try Data("x".utf8).write(to: URL(fileURLWithPath: tmp + "/a"))
            removed = InFlightOutputs.removeAll()
        })
        XCTAssertEqual(removed, 1)
        let names = try FileManager.default.contentsOfDirectory(atPath: dir)
        XCTAssertEqual(names, ["kept.txt"])
        XCTAssertEqual(InFlightOutputs.removeAll(), 0)
    }

    func testDirectoryNeverReplacesAFile() throws {
        let dir = Repo.tempDirectory("atomicdir")
        let file = dir + "/model.bin"
        try Data("weights".utf8).write(to: URL(fileURLWithPath: file))
        var ran = false
        let m = message { try AtomicFile.writeDirectory(to: file) { _ in ran = true } }
        XCTAssertTrue(m.hasPrefix(file + ": exists and is a file"), m)
        XCTAssertFalse(ran)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: file)), Data("weights".utf8))
        XCTAssertEqual(message { try AtomicFile.checkDestination(file, flag: "--output", directory: true) }.prefix(9), "--output ")
        try AtomicFile.writeDirectory(to: dir + "/out") { try Data("a".utf8).write(to: URL(fileURLWithPath: $0 + "/a")) }
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/out/a"))
    }
}
