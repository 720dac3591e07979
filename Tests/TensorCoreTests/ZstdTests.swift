import Foundation
import TensorCore
import TestSupport
import XCTest

final class ZstdTests: XCTestCase {
    func testRoundTripLargeInput() throws {
        var rng = SplitMix64(seed: 3)
        // Compressible but not trivial, larger than one streaming buffer (128 KB).
        let words = ["alpha ", "beta ", "gamma\n", "δέλτα ", "🙂 "]
        var s = ""
        for _ in 0..<200_000 { s += words[Int(rng.next() % 5)] }
        let data = s.data(using: .utf8)!
        let c = try Zstd.compress(data, level: 3)
        XCTAssertLessThan(c.count, data.count / 3)
        XCTAssertEqual(try Zstd.decompress(c), data)
    }

    func testShippedCorpusDecompressesToPublishedHash() throws {
        // sha256 published with WikiText-2 raw test in shared/README.md: 4f3e427e...
        let data = try readMaybeCompressed(Repo.path("Corpora/wikitext-2-raw/wiki.test.raw.zst"))
        XCTAssertEqual(data.count, 1_290_547)
        XCTAssertEqual(Digest.sha256(data), "4f3e427e4aff23acff917a8a51aeae21bf12832256e26914c8fc250dcef4103c")
    }

    func testCorruptStream() throws {
        var c = try Zstd.compress("hello hello hello hello".data(using: .utf8)!)
        c[c.count / 2] ^= 0xFF
        c[c.count - 1] ^= 0xFF
        XCTAssertThrowsError(try Zstd.decompress(c, source: "x.zst")) { XCTAssertTrue("\($0)".contains("x.zst")) }
    }

    func testTruncatedStream() throws {
        var rng = SplitMix64(seed: 5)
        let data = Data((0..<100_000).map { _ in UInt8(rng.next() % 16) })
        let c = try Zstd.compress(data)
        XCTAssertThrowsError(try Zstd.decompress(c.prefix(c.count - 10), source: "cut.zst")) {
            XCTAssertTrue("\($0)".contains("truncated"), "\($0)")
        }
    }

    func testNotZstdAtAll() {
        XCTAssertThrowsError(try Zstd.decompress("plain text".data(using: .utf8)!, source: "p.zst")) {
            XCTAssertTrue("\($0)".contains("p.zst"))
        }
    }

    func testNonUTF8TextIsRejected() throws {
        let path = Repo.tempDirectory("utf") + "/bad.txt"
        FileManager.default.createFile(atPath: path, contents: Data([0x66, 0xFF, 0xFE, 0x66]))
        XCTAssertThrowsError(try readText(path)) { XCTAssertTrue("\($0)".contains("UTF-8")) }
    }

    func testAtomicWriteLeavesNoPartialFile() throws {
        let dir = Repo.tempDirectory("atomic")
        struct Boom: Error {}
        XCTAssertThrowsError(try AtomicFile.write(to: dir + "/out.json") { h in
            try h.write(contentsOf: Data("partial".utf8))
            throw Boom()
        })
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [])
    }
}

final class ZstdFileWriterTests: XCTestCase {
    /// Written piece by piece (odd sizes, several streaming buffers), the frame equals `Zstd.compress` of the whole.
    func testPiecesEqualOneShotCompression() throws {
        var rng = SplitMix64(seed: 7)
        var data = Data(count: 3_000_017)
        data.withUnsafeMutableBytes { b in for i in 0..<b.count { b[i] = UInt8(truncatingIfNeeded: (rng.next() % 7) * 31 + UInt64(i % 13)) } }
        for level: Int32 in [3, 19] {
            let path = Repo.tempDirectory("zstd-writer") + "/out-\(level).zst"
            try AtomicFile.write(to: path) { handle in
                let z = try ZstdFileWriter(handle: handle, level: level, pledgedSize: data.count)
                var offset = 0, piece = 1
                while offset < data.count {
                    let n = min(piece, data.count - offset)
                    try z.write(data.subdata(in: offset..<(offset + n)))
                    offset += n
                    piece = piece * 3 + 1
                }
                try z.finish()
            }
            XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path)), try Zstd.compress(data, level: level), "level \(level)")
        }
    }
}
