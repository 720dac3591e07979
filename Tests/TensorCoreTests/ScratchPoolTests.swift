import Foundation
import XCTest
@testable import TensorCore

/// The scratch pool hands a returned buffer to the next caller that fits, never one buffer to two callers at once,
/// and keeps at most `keep` free buffers.
final class ScratchPoolTests: XCTestCase {
    func testReusesFreeBuffersAndNeverSharesOneAtATime() {
        let pool = ScratchPool()
        let first = pool.withBuffer(of: Float.self, count: 1000) { UInt(bitPattern: $0) }
        let again = pool.withBuffer(of: Double.self, count: 500) { UInt(bitPattern: $0) }
        XCTAssertEqual(first, again, "a returned buffer that fits is reused")
        let nested = pool.withBuffer(of: Float.self, count: 1000) { outer in
            pool.withBuffer(of: Float.self, count: 1000) { inner in (UInt(bitPattern: outer), UInt(bitPattern: inner)) }
        }
        XCTAssertNotEqual(nested.0, nested.1, "a buffer in use is not handed out again")
        XCTAssertEqual(pool.heldBytes, 8000, "both nested buffers are kept")
        // Many threads at once: each writes its own id through its buffer and reads it back intact.
        let failures = UnsafeMutablePointer<Int>.allocate(capacity: 16)
        failures.initialize(repeating: 0, count: 16)
        defer { failures.deallocate() }
        let f = SendablePointer(failures)
        DispatchQueue.concurrentPerform(iterations: 16) { t in
            for _ in 0..<200 {
                pool.withBuffer(of: Int.self, count: 4096) { p in
                    for i in 0..<4096 { p[i] = t }
                    usleep(10)
                    if (0..<4096).contains(where: { p[$0] != t }) { f[t] += 1 }
                }
            }
        }
        XCTAssertEqual((0..<16).map { failures[$0] }, [Int](repeating: 0, count: 16))
        XCTAssertLessThanOrEqual(pool.heldBytes, ScratchPool.keep * 4096 * 8 + 8000)
    }
}
