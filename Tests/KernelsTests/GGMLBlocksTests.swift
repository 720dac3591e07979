import Foundation
import XCTest
import Kernels
import TensorCore
import TestSupport

/// GGMLBlocks and GGMLActivationFormat against fixtures from Tools/gguf_reference: block values from gguf-py's
/// numpy dequantize (cross-checked there against ggml's to_float), and llama.cpp's own activation conversions,
/// reference quantizers and vec_dot_type table. Every comparison is bit for bit: the same float operations in
/// the same order as ggml.
final class GGMLBlocksTests: XCTestCase {
    /// Little-endian reader over a decompressed fixture.
    struct Reader {
        let data: [UInt8]
        var at = 0
        mutating func u32() -> Int {
            defer { at += 4 }
            return Int(data[at]) | Int(data[at + 1]) << 8 | Int(data[at + 2]) << 16 | Int(data[at + 3]) << 24
        }
        mutating func bytes(_ n: Int) -> [UInt8] {
            defer { at += n }
            return Array(data[at..<at + n])
        }
        mutating func floats(_ n: Int) -> [Float] { bytes(4 * n).withUnsafeBytes { Array($0.bindMemory(to: Float.self)) } }
    }

    func fixture(_ name: String, magic: String) throws -> Reader {
        let packed = try Data(contentsOf: URL(fileURLWithPath: Repo.path("Tests/KernelsTests/Fixtures/\(name)")))
        var r = Reader(data: [UInt8](try Zstd.decompress(packed, source: name)))
        XCTAssertEqual(String(decoding: r.bytes(4), as: UTF8.self), magic)
        XCTAssertEqual(r.u32(), 1, "fixture version")
        return r
    }

    /// Bit patterns equal, any NaN equal to any NaN (payloads are not part of the contract).
    func sameBits(_ a: [Float], _ b: [Float], _ label: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, label, file: file, line: line)
        var bad = 0
        for i in 0..<min(a.count, b.count) where !(a[i].bitPattern == b[i].bitPattern || (a[i].isNaN && b[i].isNaN)) {
            if bad < 3 { XCTFail("\(label)[\(i)]: \(a[i]) vs reference \(b[i])", file: file, line: line) }
            bad += 1
        }
        if bad > 0 { XCTFail("\(label): \(bad) of \(a.count) values differ", file: file, line: line) }
    }

    func decode(_ t: GGMLType, _ bytes: [UInt8], rows: Int, rowLength: Int, threads: Int) -> [Float] {
        var out = [Float](repeating: .nan, count: rows * rowLength)
        bytes.withUnsafeBytes { src in
            out.withUnsafeMutableBufferPointer { dst in
                GGMLBlocks.decode(t, src.baseAddress!, rows: rows, rowLength: rowLength, into: dst.baseAddress!, threads: threads)
            }
        }
        return out
    }

    // MARK: decoders

    func testDecodersMatchGGUFPyBitForBit() throws {
        var r = try fixture("ggml_blocks.bin.zst", magic: "QKGB")
        let records = r.u32()
        XCTAssertEqual(records, 66)
        var seen = Set<GGMLType>(), compared = 0, shortRows = 0
        for _ in 0..<records {
            let id = r.u32(), rows = r.u32(), n = r.u32()
            let t = try XCTUnwrap(GGMLType(rawValue: UInt32(id)))
            XCTAssertTrue(GGMLBlocks.canDecode(t), t.name)
            let bytes = r.bytes(rows * t.rowBytes(n))
            let expected = r.floats(rows * n)
            XCTAssertTrue(expected.contains { $0 != 0 }, "\(t.name): a fixture of zeros would prove nothing")
            for threads in [1, 2] {
                sameBits(decode(t, bytes, rows: rows, rowLength: n, threads: threads), expected, "\(t.name) \(rows)x\(n) threads \(threads)")
            }
            seen.insert(t)
            compared += expected.count
            if n % 256 != 0 { shortRows += 1 }
        }
        XCTAssertEqual(seen, Set(GGMLType.allCases.filter(GGMLBlocks.canDecode)), "every decodable type has a fixture")
        XCTAssertGreaterThan(compared, 40_000)
        XCTAssertGreaterThan(shortRows, 10, "32-element types are tested at row lengths that are not multiples of 256")
    }

    func testCanDecodeList() {
        let expected: Set<GGMLType> = [.f32, .f16, .bf16, .q8_0, .q4_0, .q4_1, .q5_0, .q5_1, .q2_K, .q3_K, .q4_K, .q5_K,
                                       .q6_K, .q8_K, .iq4_nl, .iq4_xs]
        XCTAssertEqual(Set(GGMLType.allCases.filter(GGMLBlocks.canDecode)), expected)
    }

    // MARK: activations

    func testActivationRoundTripsMatchLlamaCpp() throws {
        var r = try fixture("ggml_activations.bin.zst", magic: "QKGA")
        let rows = r.u32(), k = r.u32()
        let x = r.floats(rows * k)
        let formats: [GGMLActivationFormat] = [.f32, .f16, .bf16, .q8_0, .q8_1, .q8_K]
        var expected: [GGMLActivationFormat: [Float]] = [:]
        for f in formats { expected[f] = r.floats(rows * k) }
        let expectedSums = r.floats(rows * k / 32)
        for f in formats {
            let want = try XCTUnwrap(expected[f])
            for threads in [1, 2] {
                var out = [Float](repeating: .nan, count: rows * k), sums = [Float](repeating: .nan, count: rows * k / 32)
                x.withUnsafeBufferPointer { src in
                    out.withUnsafeMutableBufferPointer { dst in
                        sums.withUnsafeMutableBufferPointer { s in
                            f.roundTripRows(src.baseAddress!, rows: rows, k: k, into: dst.baseAddress!,
                                            sums: f == .q8_1 ? s.baseAddress! : nil, threads: threads)
                        }
                    }
                }
                sameBits(out, want, "\(f.rawValue) threads \(threads)")
                if f == .q8_1 { sameBits(sums, expectedSums, "q8_1 s threads \(threads)") }
            }
            if f != .f32 { XCTAssertNotEqual(want, x, "\(f.rawValue) must round something in the fixture") }
        }
        // The s correction is not the sum of the rounded values: fp16(d * sum q) with the fp32 d.
        let q8_1 = try XCTUnwrap(expected[.q8_1])
        let differs = (0..<rows * k / 32).contains { b in
            q8_1[32 * b..<32 * b + 32].reduce(0, +) != expectedSums[b]
        }
        XCTAssertTrue(differs, "fixture should show s differing from the sum of dequantized values")
    }

    /// Edge behaviour pinned without the fixture: ties round to even (q8_0: amax 127 makes the scale 1), zero
    /// blocks stay zero with s = 0, and q8_K takes the signed max.
    func testActivationTiesAndZeros() {
        var x = [Float](repeating: 0, count: 256)
        x[0] = 127; x[1] = 2.5; x[2] = -3.5; x[3] = 0.5; x[4] = -0.5
        var out = [Float](repeating: .nan, count: 256), sums = [Float](repeating: .nan, count: 8)
        GGMLActivationFormat.q8_1.roundTrip(x, count: 256, into: &out, sums: &sums)
        XCTAssertEqual(Array(out[0..<5]), [127, 2, -4, 0, -0])
        XCTAssertEqual(sums[0], Float(Float16(Float(127 + 2 - 4))))
        XCTAssertEqual(Array(out[32...]), [Float](repeating: 0, count: 224))
        XCTAssertEqual(Array(sums[1...]), [Float](repeating: 0, count: 7))
        x[0] = -127  // signed max negative: iscale = 1, still ties to even
        GGMLActivationFormat.q8_K.roundTrip(x, count: 256, into: &out)
        XCTAssertEqual(Array(out[0..<5]), [-127, 2, -4, 0, -0])
        GGMLActivationFormat.q8_K.roundTrip([Float](repeating: 0, count: 256), count: 256, into: &out)
        XCTAssertEqual(out, [Float](repeating: 0, count: 256))
        // bf16: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 and rounds to the even 1.
        var b: [Float] = [1 + 0x1p-8, 1 + 3 * 0x1p-8, .nan, .infinity]
        GGMLActivationFormat.bf16.roundTrip(b, count: 4, into: &b)
        XCTAssertEqual(Array(b[0..<2]), [1, 1 + 0x1p-6])
        XCTAssertTrue(b[2].isNaN)
        XCTAssertEqual(b[3], .infinity)
    }

    /// NaN and infinite inputs must not trap (values are unspecified), for every format and both quantizers.
    func testNonFiniteInputsDoNotTrap() throws {
        var x = [Float](repeating: 1, count: 256)
        x[3] = .nan; x[40] = .infinity; x[41] = -.infinity
        var out = [Float](repeating: 0, count: 256), sums = [Float](repeating: 0, count: 8)
        for f in GGMLActivationFormat.allCases { f.roundTrip(x, count: 256, into: &out, sums: &sums) }
        XCTAssertEqual(try GGMLBlocks.quantizeRowQ8_0(x).count, 8 * 34)
        XCTAssertEqual(try GGMLBlocks.quantizeRowQ4_0(x).count, 8 * 18)
        x = [Float](repeating: 3e38, count: 32)
        XCTAssertEqual(try GGMLBlocks.quantizeRowQ4_0(x).count, 18)
    }

    func testCompanionTableMatchesGGMLCpu() throws {
        var r = try fixture("ggml_activations.bin.zst", magic: "QKGA")
        let rows = r.u32(), k = r.u32()
        r.at += 4 * rows * k * 7 + 4 * rows * k / 32 + rows * k / 32 * (34 + 18)
        let n = r.u32()
        XCTAssertGreaterThan(n, 40)
        var table: [Int] = []
        for _ in 0..<n { table.append(r.u32()) }
        XCTAssertEqual(r.at, r.data.count, "fixture fully read")
        let formatOf: [Int: GGMLActivationFormat] = [0: .f32, 1: .f16, 30: .bf16, 8: .q8_0, 9: .q8_1, 15: .q8_K]
        for t in GGMLType.allCases {
            let id = Int(t.rawValue)
            guard id < n else { XCTFail("\(t.name) is beyond ggml's type count"); continue }
            let expected = try XCTUnwrap(formatOf[table[id]], "\(t.name): vec_dot_type \(table[id])")
            XCTAssertEqual(GGMLActivationFormat.companion(of: t), expected, t.name)
        }
        XCTAssertEqual(GGMLActivationFormat.companion(of: .q4_1), .q8_1)
        XCTAssertEqual(GGMLActivationFormat.companion(of: .iq4_nl), .q8_0)
        XCTAssertEqual(GGMLActivationFormat.companion(of: .iq4_xs), .q8_K)
        XCTAssertEqual(GGMLActivationFormat.q8_K.blockSize, 256)
        XCTAssertEqual(GGMLActivationFormat.q8_1.blockSize, 32)
        XCTAssertEqual(GGMLActivationFormat.bf16.blockSize, 1)
    }

    // MARK: quantizers and encoders

    func testReferenceQuantizersMatchLlamaCppBytes() throws {
        var r = try fixture("ggml_activations.bin.zst", magic: "QKGA")
        let rows = r.u32(), k = r.u32()
        let x = r.floats(rows * k)
        r.at += 4 * rows * k * 6 + 4 * rows * k / 32
        let q8 = r.bytes(rows * k / 32 * 34), q4 = r.bytes(rows * k / 32 * 18)
        let mine8 = try GGMLBlocks.quantizeRowQ8_0(x), mine4 = try GGMLBlocks.quantizeRowQ4_0(x)
        XCTAssertEqual(mine8.count, q8.count)
        XCTAssertEqual(mine4.count, q4.count)
        for b in 0..<rows * k / 32 {
            if Array(mine8[34 * b..<34 * b + 34]) != Array(q8[34 * b..<34 * b + 34]) { XCTFail("Q8_0 block \(b) differs") }
            if Array(mine4[18 * b..<18 * b + 18]) != Array(q4[18 * b..<18 * b + 18]) { XCTFail("Q4_0 block \(b) differs") }
        }
        // Decoded, they approximate x within half a step (blocks whose fp16 d stays normal and finite); Q4_0 within
        // a full step, as values opposite the extreme saturate at code 15 (+7 steps) while they reach 8 steps.
        let d8 = decode(.q8_0, mine8, rows: 1, rowLength: x.count, threads: 1)
        let d4 = decode(.q4_0, mine4, rows: 1, rowLength: x.count, threads: 1)
        for b in 0..<x.count / 32 {
            let block = x[32 * b..<32 * b + 32]
            let amax = block.map { abs($0) }.max()!
            guard block.allSatisfy({ $0.isFinite }), amax > 1e-3, amax < 6e4 else { continue }
            for j in 32 * b..<32 * b + 32 {
                XCTAssertLessThanOrEqual(abs(d8[j] - x[j]), amax / 127 * 0.502 + amax * 1e-3, "Q8_0 [\(j)]")
                XCTAssertLessThanOrEqual(abs(d4[j] - x[j]), amax / 8 * 1.002 + amax * 2e-3, "Q4_0 [\(j)]")
            }
        }
    }

    /// Ties in the reference quantizers round away from zero (roundf; trunc(x + 8.5)), unlike the activations.
    func testReferenceQuantizerRounding() throws {
        var x = [Float](repeating: 0, count: 32)
        x[0] = 127; x[1] = 2.5; x[2] = -2.5
        let q8 = try GGMLBlocks.quantizeRowQ8_0(x)
        XCTAssertEqual(q8[2...4].map { Int8(bitPattern: $0) }, [127, 3, -3])
        x = [Float](repeating: 0, count: 32)
        x[0] = -8; x[1] = 8; x[2] = 0.5; x[3] = -0.5  // d = 1: codes 0, 16 -> capped 15, trunc(9.0) = 9, trunc(8.0) = 8
        let q4 = try GGMLBlocks.quantizeRowQ4_0(x)
        XCTAssertEqual(Float(Float16(bitPattern: UInt16(q4[0]) | UInt16(q4[1]) << 8)), 1)
        XCTAssertEqual([q4[2] & 0xF, q4[3] & 0xF, q4[4] & 0xF, q4[5] & 0xF], [0, 15, 9, 8])
    }

    func testEncodersRoundTripThroughDecoders() throws {
        var rng = SplitMix64(seed: 31)
        let blocks = 9
        let scales = (0..<blocks).map { _ in Float16(Float.random(in: -0.1...0.1, using: &rng)) }
        let codes8 = (0..<blocks * 32).map { _ in Int8.random(in: -128...127, using: &rng) }
        let codes4 = (0..<blocks * 32).map { _ in UInt8.random(in: 0...15, using: &rng) }
        let q8 = try GGMLBlocks.encodeQ8_0(scales: scales, codes: codes8)
        let q4 = try GGMLBlocks.encodeQ4_0(scales: scales, codes: codes4)
        XCTAssertEqual(q8.count, GGMLType.q8_0.rowBytes(blocks * 32))
        XCTAssertEqual(q4.count, GGMLType.q4_0.rowBytes(blocks * 32))
        let d8 = decode(.q8_0, q8, rows: 1, rowLength: blocks * 32, threads: 1)
        let d4 = decode(.q4_0, q4, rows: 1, rowLength: blocks * 32, threads: 1)
        for i in 0..<blocks * 32 {
            XCTAssertEqual(d8[i], Float(codes8[i]) * Float(scales[i / 32]), "Q8_0 [\(i)]")
            XCTAssertEqual(d4[i], Float(Int(codes4[i]) - 8) * Float(scales[i / 32]), "Q4_0 [\(i)]")
        }
        XCTAssertThrowsError(try GGMLBlocks.encodeQ8_0(scales: scales, codes: Array(codes8.dropLast())))
        XCTAssertThrowsError(try GGMLBlocks.encodeQ4_0(scales: scales, codes: Array(codes4.dropLast())))
        var bad = codes4
        bad[5] = 16
        XCTAssertThrowsError(try GGMLBlocks.encodeQ4_0(scales: scales, codes: bad))
        XCTAssertThrowsError(try GGMLBlocks.quantizeRowQ8_0([Float](repeating: 1, count: 33)))
    }
}
