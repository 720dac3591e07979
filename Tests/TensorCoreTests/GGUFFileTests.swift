import Foundation
import XCTest
import TensorCore
import TestSupport

/// The GGUF container: what the writer stores the reader gives back, and no damaged or lying file gets past the
/// reader (a one-line QuantKitError, never a trap). Reading real llama.cpp files is covered where they are used
/// (the GGUF model and vocabulary tests).
final class GGUFFileTests: XCTestCase {
    /// A small file: scalar and array metadata of several types, an F32 matrix and a Q8_0 row block.
    func sampleWriter() throws -> GGUFWriter {
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.set("llama.block_count", .uint32(2))
        w.set("llama.rope.freq_base", .float32(10000))
        w.set("test.i64", .int64(-5))
        w.set("test.f64", .float64(0.25))
        w.set("test.flag", .bool(true))
        w.set("tokenizer.ggml.tokens", .array(.string, [.string("<unk>"), .string("▁a"), .string("b")]))
        w.set("tokenizer.ggml.scores", .array(.float32, [.float32(0), .float32(-1.5), .float32(-2)]))
        let floats: [Float] = (0..<6).map { Float($0) - 2.5 }
        try w.add(.init(name: "m", type: .f32, shape: [2, 3], data: floats.withUnsafeBytes { Data($0) }))
        try w.add(.init(name: "q", type: .q8_0, shape: [1, 32], data: Data((0..<34).map { UInt8($0) })))
        return w
    }

    func testRoundTrip() throws {
        let dir = Repo.tempDirectory("gguf")
        let path = dir + "/sample.gguf"
        try sampleWriter().write(to: path)
        let f = try GGUFFile(path: path)
        XCTAssertEqual(f.version, 3)
        XCTAssertEqual(f.keys, ["general.architecture", "llama.block_count", "llama.rope.freq_base", "test.i64", "test.f64",
                                "test.flag", "tokenizer.ggml.tokens", "tokenizer.ggml.scores"])
        XCTAssertEqual(f.metadata["llama.block_count"], .uint32(2))
        XCTAssertEqual(f.metadata["test.i64"]?.int, -5)
        XCTAssertEqual(f.metadata["test.f64"]?.double, 0.25)
        XCTAssertEqual(f.metadata["test.flag"]?.bool, true)
        XCTAssertEqual(f.metadata["tokenizer.ggml.tokens"]?.strings, ["<unk>", "▁a", "b"])
        XCTAssertEqual(f.metadata["tokenizer.ggml.scores"]?.doubles, [0, -1.5, -2])
        XCTAssertEqual(f.tensors.map(\.name), ["m", "q"])
        let m = try XCTUnwrap(f.info("m"))
        XCTAssertEqual(m.dims, [3, 2], "ggml stores the innermost dimension first")
        XCTAssertEqual(m.shape, [2, 3])
        XCTAssertEqual(try f.floatTensor("m").floats(), (0..<6).map { Float($0) - 2.5 })
        let q = try XCTUnwrap(f.info("q"))
        XCTAssertEqual(q.byteCount, 34)
        XCTAssertEqual(q.offset % 32, 0)
        XCTAssertEqual(Array(UnsafeRawBufferPointer(start: f.bytes(q), count: 34)), (0..<34).map { UInt8($0) })
        XCTAssertEqual(f.typeCounts, ["F32": 1, "Q8_0": 1])
        XCTAssertThrowsError(try f.floatTensor("q"))
        // The vocabulary digest ignores everything but the tokenizer keys.
        var other = try sampleWriter()
        other.set("llama.block_count", .uint32(7))
        try other.write(to: dir + "/other.gguf")
        XCTAssertEqual(try GGUFFile(path: dir + "/other.gguf").metadataDigest(prefix: "tokenizer."), f.metadataDigest(prefix: "tokenizer."))
        other.set("tokenizer.ggml.scores", .array(.float32, [.float32(0), .float32(-1.5), .float32(-3)]))
        try other.write(to: dir + "/other.gguf")
        XCTAssertNotEqual(try GGUFFile(path: dir + "/other.gguf").metadataDigest(prefix: "tokenizer."), f.metadataDigest(prefix: "tokenizer."))
    }

    /// Version 2 has the same layout (64-bit counts and lengths): it reads the same.
    func testVersion2Reads() throws {
        var bytes = try sampleWriter().serialized()
        bytes[4] = 2
        let path = Repo.tempDirectory("gguf-v2") + "/v2.gguf"
        try bytes.write(to: URL(fileURLWithPath: path))
        let f = try GGUFFile(path: path)
        XCTAssertEqual(f.version, 2)
        XCTAssertEqual(try f.floatTensor("m").floats(), (0..<6).map { Float($0) - 2.5 })
    }

    func testWriterRefusesBytesThatDoNotMatchTheShape() {
        var w = GGUFWriter()
        XCTAssertThrowsError(try w.add(.init(name: "x", type: .q4_0, shape: [2, 32], data: Data(count: 18)))) { e in
            XCTAssertTrue("\(e)".contains("'x'"), "\(e)")
        }
        XCTAssertThrowsError(try w.add(.init(name: "y", type: .q4_0, shape: [1, 40], data: Data(count: 18))))
    }

    /// Every truncation of a valid file that cuts into a tensor's bytes is refused with a message naming the file
    /// (only the padding after the last tensor may go).
    func testEveryTruncationIsRefused() throws {
        let bytes = try sampleWriter().serialized()
        let dir = Repo.tempDirectory("gguf-trunc")
        try bytes.write(to: URL(fileURLWithPath: dir + "/whole.gguf"))
        let whole = try GGUFFile(path: dir + "/whole.gguf")
        let q = try XCTUnwrap(whole.info("q"))
        let needed = whole.dataStart + q.offset + q.byteCount
        XCTAssertNoThrow(try { try bytes.prefix(needed).write(to: URL(fileURLWithPath: dir + "/exact.gguf")); _ = try GGUFFile(path: dir + "/exact.gguf") }())
        for n in 0..<needed {
            let path = "\(dir)/t\(n).gguf"
            try bytes.prefix(n).write(to: URL(fileURLWithPath: path))
            XCTAssertThrowsError(try GGUFFile(path: path), "prefix of \(n) bytes") { e in
                XCTAssertTrue(e is QuantKitError && "\(e)".contains(path), "\(e)")
            }
        }
    }

    /// Header fields that lie: each gives one line naming what is wrong.
    func testLyingHeaders() throws {
        let good = try sampleWriter().serialized()
        let dir = Repo.tempDirectory("gguf-lies")
        func expect(_ mutate: (inout Data) -> Void, _ fragment: String, line: UInt = #line) throws {
            var d = good
            mutate(&d)
            let path = "\(dir)/lie\(line).gguf"
            try d.write(to: URL(fileURLWithPath: path))
            XCTAssertThrowsError(try GGUFFile(path: path), line: line) { e in
                XCTAssertTrue("\(e)".contains(fragment), "\(e)", line: line)
            }
        }
        func put<T: FixedWidthInteger>(_ v: T, at o: Int, in d: inout Data) {
            withUnsafeBytes(of: v.littleEndian) { d.replaceSubrange(o..<(o + MemoryLayout<T>.size), with: $0) }
        }
        try expect({ $0[0] = 0x58 }, "not a GGUF file")
        try expect({ put(UInt32(1), at: 4, in: &$0) }, "version 1")
        try expect({ put(UInt32(3).byteSwapped, at: 4, in: &$0) }, "big-endian")
        try expect({ put(UInt64(1 << 40), at: 8, in: &$0) }, "more than")
        try expect({ put(UInt64(1 << 40), at: 16, in: &$0) }, "more than")
        // The first key's length.
        try expect({ put(UInt64(1 << 50), at: 24, in: &$0) }, "claims")
        // The first value's type (after the 8-byte length and "general.architecture").
        let typeOffset = 24 + 8 + "general.architecture".utf8.count
        try expect({ put(UInt32(99), at: typeOffset, in: &$0) }, "unknown value type 99")
        // Offsets and types in the tensor infos: find "q"'s info (name, n_dims, dims, type, offset).
        let qInfo = try XCTUnwrap(good.range(of: Data([1, 0, 0, 0, 0, 0, 0, 0, UInt8(ascii: "q")]))).upperBound
        try expect({ put(UInt32(5), at: qInfo, in: &$0) }, "5 dimensions")
        try expect({ put(UInt32(200), at: qInfo + 4 + 16, in: &$0) }, "unknown ggml type 200")
        try expect({ put(UInt32(GGMLType.q4_K.rawValue), at: qInfo + 4 + 16, in: &$0) }, "not a multiple of Q4_K's block of 256")
        try expect({ put(UInt64(33), at: qInfo + 4 + 16 + 4, in: &$0) }, "not a multiple of the alignment")
        try expect({ put(UInt64(1 << 30), at: qInfo + 4 + 16 + 4, in: &$0) }, "truncated file?")
        try expect({ put(UInt64(0), at: qInfo + 4 + 16 + 4, in: &$0) }, "overlap")
    }

    /// Seeded random byte flips in the header: the reader may accept or refuse, but never traps.
    func testRandomCorruptionNeverTraps() throws {
        let good = try sampleWriter().serialized()
        let dir = Repo.tempDirectory("gguf-fuzz")
        var rng = SplitMix64(seed: 17)
        var refused = 0
        for i in 0..<300 {
            var d = good
            for _ in 0..<(1 + Int(rng.next() % 4)) {
                let o = Int(rng.next() % UInt64(min(d.count, 420)))
                d[o] = UInt8(truncatingIfNeeded: rng.next())
            }
            let path = "\(dir)/f\(i).gguf"
            try d.write(to: URL(fileURLWithPath: path))
            do { _ = try GGUFFile(path: path) } catch { refused += 1; XCTAssertTrue(error is QuantKitError, "\(error)") }
        }
        XCTAssertGreaterThan(refused, 30, "most header corruptions should be caught")
    }
}
