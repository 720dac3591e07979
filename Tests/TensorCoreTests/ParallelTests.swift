import XCTest
import Foundation
@testable import TensorCore

/// Parallel.forRanges / forEach on the spinning worker pool: every index runs exactly once, whether jobs come back
/// to back, after the workers have gone to sleep, nested inside another job, or from several threads at once
/// (the pool serves one caller; the others fall back to GCD).
final class ParallelTests: XCTestCase {
    /// Runs forRanges over `count` items, counting how often each index was visited.
    private func visits(_ count: Int, threads: Int) -> [Int] {
        let hits = UnsafeMutablePointer<Int>.allocate(capacity: count)
        hits.initialize(repeating: 0, count: count)
        defer { hits.deallocate() }
        let p = SendablePointer(hits)
        Parallel.forRanges(count, threads: threads) { r in for i in r { p[i] += 1 } }
        return Array(UnsafeBufferPointer(start: hits, count: count))
    }

    func testBackToBackJobsCoverEveryIndexOnce() {
        for round in 0..<5000 {
            let count = 1 + round % 37
            let v = visits(count, threads: 2)
            if v != [Int](repeating: 1, count: count) { XCTFail("round \(round): \(v)"); return }
        }
    }

    func testJobAfterWorkersSleep() {
        XCTAssertEqual(visits(64, threads: 2), [Int](repeating: 1, count: 64))
        Thread.sleep(forTimeInterval: Double(SpinPool.spinNanoseconds) * 3e-9)
        XCTAssertEqual(visits(64, threads: 2), [Int](repeating: 1, count: 64))
    }

    func testForEachDynamic() {
        let count = 1000
        let hits = UnsafeMutablePointer<Int>.allocate(capacity: count)
        hits.initialize(repeating: 0, count: count)
        defer { hits.deallocate() }
        let p = SendablePointer(hits)
        Parallel.forEach(count, threads: 2) { i in p[i] += 1 }
        XCTAssertEqual(Array(UnsafeBufferPointer(start: hits, count: count)), [Int](repeating: 1, count: count))
    }

    func testNestedAndConcurrentCallers() {
        let outer = 8, inner = 50
        let hits = UnsafeMutablePointer<Int>.allocate(capacity: outer * inner)
        hits.initialize(repeating: 0, count: outer * inner)
        defer { hits.deallocate() }
        let p = SendablePointer(hits)
        // Nested: each outer range runs its own parallel loop.
        Parallel.forRanges(4, threads: 2) { r in
            for o in r { Parallel.forRanges(inner, threads: 2) { ir in for i in ir { p[o * inner + i] += 1 } } }
        }
        // Four threads at once, each running many jobs over its own slice.
        DispatchQueue.concurrentPerform(iterations: 4) { t in
            for _ in 0..<200 {
                Parallel.forRanges(inner, threads: 2) { ir in for i in ir { p[(4 + t) * inner + i] += 1 } }
            }
        }
        let v = Array(UnsafeBufferPointer(start: hits, count: outer * inner))
        XCTAssertEqual(Array(v[0..<(4 * inner)]), [Int](repeating: 1, count: 4 * inner))
        XCTAssertEqual(Array(v[(4 * inner)...]), [Int](repeating: 200, count: 4 * inner))
    }
}
