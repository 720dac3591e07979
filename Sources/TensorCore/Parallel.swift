import Foundation

/// A raw pointer that may cross into `concurrentPerform` closures. Each use site hands threads disjoint
/// row ranges, which is what makes sharing it sound.
public struct SendablePointer<T>: @unchecked Sendable {
    public let base: UnsafeMutablePointer<T>
    public init(_ base: UnsafeMutablePointer<T>) { self.base = base }
    public init(_ base: UnsafePointer<T>) { self.base = UnsafeMutablePointer(mutating: base) }
    @inlinable public subscript(i: Int) -> T {
        get { base[i] }
        nonmutating set { base[i] = newValue }
    }
    @inlinable public func advanced(by n: Int) -> UnsafeMutablePointer<T> { base + n }
}

public enum Parallel {
    /// Default worker count: the machine's active processors, overridable with QUANTKIT_THREADS.
    public static let defaultThreads: Int = {
        if let s = ProcessInfo.processInfo.environment["QUANTKIT_THREADS"], let n = Int(s), n > 0 { return n }
        return max(1, ProcessInfo.processInfo.activeProcessorCount)
    }()

    /// Splits `0..<count` into at most `threads` contiguous ranges and runs `body` on each concurrently.
    /// Runs inline when one thread is asked for or the work is too small to pay for dispatch (~0.65 us a call).
    public static func forRanges(_ count: Int, threads: Int = defaultThreads, minPerThread: Int = 1,
                                 _ body: @Sendable (Range<Int>) -> Void) {
        guard count > 0 else { return }
        let n = max(1, min(threads, count / max(1, minPerThread), count))
        if n == 1 { body(0..<count); return }
        DispatchQueue.concurrentPerform(iterations: n) { t in
            let lo = count * t / n, hi = count * (t + 1) / n
            if lo < hi { body(lo..<hi) }
        }
    }

    /// Runs `body(i)` for every index with dynamic scheduling, for uneven work items.
    public static func forEach(_ count: Int, threads: Int = defaultThreads, _ body: @Sendable (Int) -> Void) {
        guard count > 0 else { return }
        if threads <= 1 || count == 1 { for i in 0..<count { body(i) }; return }
        DispatchQueue.concurrentPerform(iterations: count) { body($0) }
    }
}
