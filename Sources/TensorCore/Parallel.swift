import Foundation
import Synchronization
import CHints

/// A raw pointer that may cross into parallel closures. Each use site hands threads disjoint
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
    /// Default worker count: the machine's active processors unless `configure` set another.
    public static var defaultThreads: Int {
        let n = configuredThreads.load(ordering: .relaxed)
        return n > 0 ? n : max(1, ProcessInfo.processInfo.activeProcessorCount)
    }

    /// The machine's active processors.
    public static var processorCount: Int { max(1, ProcessInfo.processInfo.activeProcessorCount) }

    /// The most worker threads a run uses: more only slices the work finer on the same cores.
    public static var maxThreads: Int { 4 * processorCount }

    /// Whether parallel kernels may use the spinning worker pool (else GCD only, for comparisons).
    public static var spinPoolEnabled: Bool { spinPoolSetting.load(ordering: .relaxed) }

    private static let configuredThreads = Atomic<Int>(0)
    private static let spinPoolSetting = Atomic<Bool>(true)

    /// Sets the default worker count (nil: the machine's processors) and whether the spinning pool is used.
    /// Call before the first parallel kernel runs: the pool is sized once, on first use.
    /// A count above `maxThreads` is clamped to it (the CLI says so).
    public static func configure(threads: Int?, spinPool: Bool) {
        configuredThreads.store(min(max(0, threads ?? 0), maxThreads), ordering: .relaxed)
        spinPoolSetting.store(spinPool, ordering: .relaxed)
    }

    /// Splits `0..<count` into at most `threads` contiguous ranges and runs `body` on each concurrently.
    /// Runs inline when one thread is asked for or the work is too small to pay for dispatch (~0.65 us a call).
    public static func forRanges(_ count: Int, threads: Int = defaultThreads, minPerThread: Int = 1,
                                 _ body: @Sendable (Range<Int>) -> Void) {
        guard count > 0 else { return }
        let n = max(1, min(threads, count / max(1, minPerThread), count))
        if n == 1 { body(0..<count); return }
        run(participants: n) { t in
            let lo = count * t / n, hi = count * (t + 1) / n
            if lo < hi { body(lo..<hi) }
        }
    }

    /// Runs `body(i)` for every index with dynamic scheduling, for uneven work items.
    public static func forEach(_ count: Int, threads: Int = defaultThreads, _ body: @Sendable (Int) -> Void) {
        guard count > 0 else { return }
        if threads <= 1 || count == 1 { for i in 0..<count { body(i) }; return }
        let next = IndexCounter()
        run(participants: min(threads, count)) { _ in
            while true {
                let i = next.value.wrappingAdd(1, ordering: .relaxed).oldValue
                if i >= count { return }
                body(i)
            }
        }
    }

    /// Runs body(0..<participants) concurrently: on the spinning pool when it is free and large enough (kernels
    /// run back to back, and a sleeping GCD worker took ~15 us to wake for each one, 3% of a 128-token GEMM), else
    /// on GCD (nested calls, calls from several threads at once, more participants than cores).
    static func run(participants: Int, _ body: @Sendable (Int) -> Void) {
        if let pool = SpinPool.shared, pool.run(participants: participants, body) { return }
        DispatchQueue.concurrentPerform(iterations: participants, execute: body)
    }
}

private final class IndexCounter: Sendable {
    let value = Atomic<Int>(0)
}

/// Worker threads that spin for a while after each job before they sleep, so a job posted soon after the last
/// one starts within a microsecond. Participant 0 is the posting thread; every worker acknowledges every job
/// (those past the job's participant count do nothing), so no worker can lag into the next job.
final class SpinPool: @unchecked Sendable {
    /// nil with one thread, or when the pool is switched off (Parallel.configure).
    static let shared: SpinPool? = {
        // Never more spinning workers than the other cores: past that, spinning threads take the cores from the
        // threads that would finish the job (QUANTKIT_THREADS=1000 on 2 cores never finished). Bigger jobs go to GCD.
        let workers = min(Parallel.defaultThreads, Parallel.processorCount) - 1
        guard workers > 0, Parallel.spinPoolEnabled else { return nil }
        return SpinPool(workers: workers)
    }()

    /// How long an idle worker spins before it sleeps.
    static let spinNanoseconds: UInt64 = 2_000_000

    let workers: Int
    private let generation = Atomic<Int>(0)
    private let unfinished = Atomic<Int>(0)
    private let sleepers = Atomic<Int>(0)
    private let busy = Atomic<Bool>(false)
    private let wake = NSCondition()
    // Written by the poster before `generation` is bumped (release) and read by workers after they see the bump
    // (acquire); cleared only after every worker has acknowledged.
    private var job: ((Int) -> Void)?
    private var participants = 0

    private init(workers: Int) {
        self.workers = workers
        for index in 1...workers {
            let thread = Thread { [unowned self] in self.work(index: index) }
            thread.name = "quantkit-worker-\(index)"
            thread.start()
        }
    }

    /// Runs the job; false (nothing run) when the pool is busy or too small.
    func run(participants: Int, _ body: (Int) -> Void) -> Bool {
        guard participants - 1 <= workers,
              busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else { return false }
        withoutActuallyEscaping(body) { body in
            job = body
            self.participants = participants
            unfinished.store(workers, ordering: .relaxed)
            generation.wrappingAdd(1, ordering: .sequentiallyConsistent)
            if sleepers.load(ordering: .sequentiallyConsistent) > 0 {
                wake.lock()
                wake.broadcast()
                wake.unlock()
            }
            body(0)
            while unfinished.load(ordering: .acquiring) > 0 { quantkit_spin_pause() }
            job = nil
        }
        busy.store(false, ordering: .releasing)
        return true
    }

    private func work(index: Int) {
        var seen = 0
        while true {
            var current = generation.load(ordering: .acquiring)
            if current == seen {
                let start = DispatchTime.now().uptimeNanoseconds
                var spins = 0
                while current == seen {
                    quantkit_spin_pause()
                    current = generation.load(ordering: .acquiring)
                    spins += 1
                    if spins & 255 == 0 && DispatchTime.now().uptimeNanoseconds - start > Self.spinNanoseconds {
                        wake.lock()
                        sleepers.wrappingAdd(1, ordering: .sequentiallyConsistent)
                        while generation.load(ordering: .sequentiallyConsistent) == seen { wake.wait() }
                        sleepers.wrappingSubtract(1, ordering: .sequentiallyConsistent)
                        wake.unlock()
                        current = generation.load(ordering: .acquiring)
                    }
                }
            }
            seen = current
            runJob(index)
            unfinished.wrappingSubtract(1, ordering: .releasing)
        }
    }

    /// Not inlined, so this worker's reference to the job is released before it acknowledges: the poster's
    /// `withoutActuallyEscaping` traps if the closure is still referenced when it returns.
    @inline(never) private func runJob(_ index: Int) {
        if index < participants, let job { job(index) }
    }
}
