import XCTest
import TensorCore

/// Error messages quote names and values read from users' files; each must still print as one line.
final class OneLineTests: XCTestCase {
    func testControlCharactersAreEscaped() {
        XCTAssertEqual(OneLine.text("tensor 'a\nb\tc\u{1}'"), "tensor 'a\\nb\\tc\\u{1}'")
        XCTAssertEqual(QuantKitError(.format, "f.gguf: key 'x\r\ny'").description, "f.gguf: key 'x\\r\\ny'")
    }

    func testOrdinaryMessagesAreUnchanged() {
        let m = "model.gguf: tensor 'blk.0.attn_q.weight' (Q4_0 [32, 32]) needs 576 bytes at offset 32, ünïcode kept"
        XCTAssertEqual(OneLine.text(m), m)
    }

    func testLongMessagesAreCutAndSaySo() {
        let long = String(repeating: "x", count: OneLine.maxCharacters + 500)
        let t = OneLine.text(long)
        XCTAssertTrue(t.hasPrefix(String(repeating: "x", count: OneLine.maxCharacters)))
        XCTAssertTrue(t.hasSuffix("... (500 more characters)"), t)
    }
}
