import Foundation

/// Reusable scratch memory for kernels that need a large temporary on every call (a transposed operand, rows of
/// Double work space). Fresh memory costs a page fault per page, and glibc hands large blocks back to the kernel on
/// free, so a per-call allocation faults every time: at a 32,000-token vocabulary the training step's transposed
/// head gradient (262 MB) and loss work space spent a fifth of the step clearing pages. Buffers go back to the pool
/// after use and are kept for the process; concurrent users get distinct buffers.
public final class ScratchPool: @unchecked Sendable {
    public static let shared = ScratchPool()
    /// Free buffers kept at most (the smallest is released beyond it).
    static let keep = 8
    private var free: [(memory: UnsafeMutableRawPointer, bytes: Int)] = []
    private let lock = NSLock()

    public init() {}

    /// Runs `body` on `count` uninitialized values of T from the pool (the smallest free buffer that fits, or a new one).
    public func withBuffer<T, R>(of type: T.Type, count: Int, _ body: (UnsafeMutablePointer<T>) throws -> R) rethrows -> R {
        let bytes = max(1, count) * MemoryLayout<T>.stride
        lock.lock()
        var pick: Int? = nil
        for (i, b) in free.enumerated() where b.bytes >= bytes && (pick.map { b.bytes < free[$0].bytes } ?? true) { pick = i }
        let buffer = pick.map { free.remove(at: $0) }
        lock.unlock()
        let taken = buffer ?? (UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64), bytes)
        defer { give(back: taken) }
        return try body(taken.memory.bindMemory(to: T.self, capacity: max(1, count)))
    }

    private func give(back buffer: (memory: UnsafeMutableRawPointer, bytes: Int)) {
        lock.lock()
        free.append(buffer)
        var released: UnsafeMutableRawPointer? = nil
        if free.count > Self.keep, let i = free.indices.min(by: { free[$0].bytes < free[$1].bytes }) {
            released = free.remove(at: i).memory
        }
        lock.unlock()
        released?.deallocate()
    }

    /// Bytes held by free buffers (for tests).
    public var heldBytes: Int { lock.lock(); defer { lock.unlock() }; return free.reduce(0) { $0 + $1.bytes } }
}
