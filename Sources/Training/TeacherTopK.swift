import Foundation
import Kernels
import TensorCore

/// The teacher's distribution kept compactly per position: its k most probable tokens (log-probabilities,
/// highest first, ties to the lower id) and the log of the probability left to every other token. Against it the
/// loss is the KL between the two distributions over k + 1 outcomes (the k tokens, then "any other"): exact when
/// k is the vocabulary, a lower bound of the full KL otherwise, with the gradient q_j - p~_j where p~ spreads the
/// teacher's remaining mass over the other tokens in the student's own proportions.
public struct TeacherTopK: @unchecked Sendable {
    public let k: Int
    /// [rows, k]
    public let indices: UnsafePointer<Int32>
    /// [rows, k], natural log.
    public let logProbs: UnsafePointer<Float>
    /// [rows]: log of 1 - (the k probabilities), computed from the other tokens' probabilities (-infinity when none
    /// is left).
    public let restLogProb: UnsafePointer<Float>

    public init(k: Int, indices: UnsafePointer<Int32>, logProbs: UnsafePointer<Float>, restLogProb: UnsafePointer<Float>) {
        self.k = k; self.indices = indices; self.logProbs = logProbs; self.restLogProb = restLogProb
    }

    /// Bytes one position takes.
    public static func bytesPerPosition(k: Int) -> Int { k * (MemoryLayout<Int32>.size + MemoryLayout<Float>.size) + MemoryLayout<Float>.size }

    /// Selects the k most probable tokens of each row of `logits` [rows, vocab] (log-softmax in Double), rows in
    /// parallel, into indices/logProbs [rows, k] and restLogProb [rows].
    public static func select(logits: UnsafePointer<Float>, rows: Int, vocab: Int, k: Int,
                              indices: UnsafeMutablePointer<Int32>, logProbs: UnsafeMutablePointer<Float>,
                              restLogProb: UnsafeMutablePointer<Float>, threads: Int) {
        precondition(k >= 1 && k <= vocab, "top-k: k \(k) outside 1...\(vocab)")
        let src = SendablePointer(logits), ix = SendablePointer(indices), lp = SendablePointer(logProbs)
        let rest = SendablePointer(restLogProb)
        Parallel.forRanges(rows, threads: threads, minPerThread: 4) { range in
            ScratchPool.shared.withBuffer(of: Double.self, count: 3 * vocab) { scratch in
                let chosen = UnsafeMutablePointer<Bool>.allocate(capacity: vocab)
                defer { chosen.deallocate() }
                chosen.initialize(repeating: false, count: vocab)
                var heap: [(value: Float, id: Int32)] = []
                heap.reserveCapacity(k)
                for r in range {
                    let row = src.base + r * vocab
                    for v in 0..<vocab { scratch[v] = Double(row[v]) }
                    _ = Kernels.softmaxAndLogs(scratch, count: vocab, logs: scratch + vocab, probabilities: scratch + 2 * vocab)
                    selectLargest(row, vocab, k, into: &heap)
                    var left = 0.0
                    for (j, e) in heap.enumerated() {
                        ix[r * k + j] = e.id
                        lp[r * k + j] = Float(scratch[vocab + Int(e.id)])
                        chosen[Int(e.id)] = true
                    }
                    for v in 0..<vocab where !chosen[v] { left += scratch[2 * vocab + v] }
                    for e in heap { chosen[Int(e.id)] = false }
                    rest[r] = left > 0 ? Float(Foundation.log(left)) : -.infinity
                }
            }
        }
    }

    /// `heap` <- the k largest entries of x, sorted by value descending then id ascending (the order a stable
    /// descending sort gives). A min-heap of k entries keyed (value, -id): most entries cost one comparison.
    static func selectLargest(_ x: UnsafePointer<Float>, _ n: Int, _ k: Int, into heap: inout [(value: Float, id: Int32)]) {
        heap.removeAll(keepingCapacity: true)
        // a is "smaller" than b when it would be dropped first: a lower value, or the same value and a higher id.
        func below(_ a: (value: Float, id: Int32), _ b: (value: Float, id: Int32)) -> Bool {
            a.value < b.value || (a.value == b.value && a.id > b.id)
        }
        func siftDown(_ start: Int) {
            var i = start
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < heap.count && below(heap[l], heap[m]) { m = l }
                if r < heap.count && below(heap[r], heap[m]) { m = r }
                if m == i { return }
                heap.swapAt(i, m)
                i = m
            }
        }
        for v in 0..<n {
            let e = (value: x[v], id: Int32(v))
            if heap.count < k {
                heap.append(e)
                var i = heap.count - 1
                while i > 0, below(heap[i], heap[(i - 1) / 2]) { heap.swapAt(i, (i - 1) / 2); i = (i - 1) / 2 }
            } else if below(heap[0], e) {
                heap[0] = e
                siftDown(0)
            }
        }
        heap.sort { below($1, $0) }
    }
}
