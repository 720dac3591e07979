import Foundation
import TensorCore
import TestSupport
import XCTest

final class SafetensorsTests: XCTestCase {
    private func writeRaw(header: String, data: [UInt8] = [], lengthOverride: UInt64? = nil) -> String {
        let path = Repo.tempDirectory("st") + "/broken.safetensors"
        var bytes = Data()
        var n = (lengthOverride ?? UInt64(header.utf8.count)).littleEndian
        bytes.append(Data(bytes: &n, count: 8))
        bytes.append(header.data(using: .utf8)!)
        bytes.append(contentsOf: data)
        FileManager.default.createFile(atPath: path, contents: bytes)
        return path
    }

    private func expect(_ path: String, _ check: (SafetensorsError) -> Bool, file: StaticString = #filePath, line: UInt = #line) {
        do {
            _ = try SafetensorsFile(path: path)
            XCTFail("expected an error", file: file, line: line)
        } catch let e as SafetensorsError {
            XCTAssertTrue(check(e), "unexpected error: \(e)", file: file, line: line)
            XCTAssertTrue(e.description.contains(path), "error must name the file: \(e)", file: file, line: line)
        } catch {
            XCTFail("wrong error type: \(error)", file: file, line: line)
        }
    }

    func testRoundTripAllDTypes() throws {
        let dir = Repo.tempDirectory("st")
        let path = dir + "/model.safetensors"
        var rng = SplitMix64(seed: 7)
        let a = Tensor(shape: [3, 5], floats: rng.floats(15))
        let b = a.converted(to: .f16)
        let c = a.converted(to: .bf16)
        let d = Tensor(shape: [4], int32: [1, -2, 3, Int32.max])
        let e = Tensor(zeros: .i8, shape: [2, 3])
        let f = Tensor(zeros: .i64, shape: [0])
        try SafetensorsWriter.write([("a", a), ("b.f16", b), ("c", c), ("d", d), ("e", e), ("empty", f)],
                                    metadata: ["format": "pt", "note": "ünïcode"], to: path)
        let file = try SafetensorsFile(path: path)
        XCTAssertEqual(file.metadata, ["format": "pt", "note": "ünïcode"])
        XCTAssertEqual(Set(file.names), ["a", "b.f16", "c", "d", "e", "empty"])
        let ra = try file.tensor("a")
        XCTAssertEqual(ra.shape, [3, 5])
        XCTAssertEqual(ra.floats(), a.floats())
        XCTAssertTrue(ra.storage.isMapped)
        XCTAssertEqual(try file.tensor("b.f16").dtype, .f16)
        XCTAssertEqual(try file.tensor("b.f16").floats(), a.floats().map { Float(Float16($0)) })
        XCTAssertEqual(try file.tensor("c").floats(), a.floats().map { bf16ToFloat(floatToBF16($0)) })
        XCTAssertEqual(try file.tensor("d").int32s(), [1, -2, 3, Int32.max])
        XCTAssertEqual(try file.tensor("empty").count, 0)
        // No temporary files are left beside the output.
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["model.safetensors"])
    }

    func testHeaderLayoutMatchesFormat() throws {
        // The format: u64 little-endian header size, JSON, then the data area; offsets relative to the data area.
        let path = Repo.tempDirectory("st") + "/x.safetensors"
        try SafetensorsWriter.write([("w", Tensor(shape: [2], floats: [1.5, -2]))], to: path)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        let n = Int(bytes.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
        let header = try JSONSerialization.jsonObject(with: bytes.subdata(in: 8..<(8 + n))) as! [String: Any]
        let w = header["w"] as! [String: Any]
        XCTAssertEqual(w["dtype"] as? String, "F32")
        XCTAssertEqual(w["data_offsets"] as? [Int], [0, 8])
        let data = bytes.subdata(in: (8 + n)..<bytes.count)
        XCTAssertEqual(data, Data([0, 0, 0xC0, 0x3F, 0, 0, 0, 0xC0]))
    }

    func testTruncatedFile() {
        let path = Repo.tempDirectory("st") + "/t.safetensors"
        FileManager.default.createFile(atPath: path, contents: Data([1, 2, 3]))
        expect(path) { if case .truncated = $0 { return true }; return false }
    }

    func testLyingHeaderLength() {
        let path = writeRaw(header: "{}", lengthOverride: 4096)
        expect(path) { if case .headerTooLarge = $0 { return true }; return false }
    }

    func testAbsurdHeaderLength() {
        let path = writeRaw(header: "{}", lengthOverride: UInt64.max)
        expect(path) { if case .headerTooLarge = $0 { return true }; return false }
    }

    func testBadJSON() {
        let path = writeRaw(header: "{\"a\": [1, 2")
        expect(path) { if case .badJSON = $0 { return true }; return false }
    }

    func testUnknownDType() {
        let path = writeRaw(header: #"{"w":{"dtype":"F8_E9","shape":[2],"data_offsets":[0,2]}}"#, data: [0, 0])
        expect(path) { if case .unknownDType(_, "w", "F8_E9") = $0 { return true }; return false }
    }

    func testOverlappingRanges() {
        let h = #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#
        let path = writeRaw(header: h, data: [UInt8](repeating: 0, count: 12))
        expect(path) { if case .overlap = $0 { return true }; return false }
    }

    func testOffsetsPastDataArea() {
        let path = writeRaw(header: #"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, data: [0, 0, 0, 0])
        expect(path) { if case .offsetsOutOfRange(_, "w", 16, 4) = $0 { return true }; return false }
    }

    func testSizeNotMatchingShape() {
        let path = writeRaw(header: #"{"w":{"dtype":"F16","shape":[3],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0])
        expect(path) { if case .sizeMismatch(_, "w", 6, 4) = $0 { return true }; return false }
    }

    func testMalformedEntry() {
        let path = writeRaw(header: #"{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0])
        expect(path) { if case .badEntry = $0 { return true }; return false }
    }

    func testShardedCheckpoint() throws {
        let dir = Repo.tempDirectory("shard")
        try SafetensorsWriter.write([("x", Tensor(shape: [2], floats: [1, 2]))], to: dir + "/model-00001-of-00002.safetensors")
        try SafetensorsWriter.write([("y", Tensor(shape: [1], floats: [3]))], to: dir + "/model-00002-of-00002.safetensors")
        let index = #"{"metadata":{},"weight_map":{"x":"model-00001-of-00002.safetensors","y":"model-00002-of-00002.safetensors"}}"#
        try index.write(toFile: dir + "/model.safetensors.index.json", atomically: true, encoding: .utf8)
        let ckpt = try SafetensorsCheckpoint(path: dir)
        XCTAssertEqual(ckpt.names, ["x", "y"])
        XCTAssertEqual(try ckpt.tensor("y").floats(), [3])
        XCTAssertEqual(try ckpt.tensor("x").floats(), [1, 2])
        // An index that maps a tensor to the wrong shard is rejected.
        let bad = #"{"weight_map":{"x":"model-00002-of-00002.safetensors"}}"#
        try bad.write(toFile: dir + "/model.safetensors.index.json", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try SafetensorsCheckpoint(path: dir)) { XCTAssertTrue("\($0)".contains("does not contain")) }
    }
}
