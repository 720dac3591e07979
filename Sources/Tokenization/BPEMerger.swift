/// Greedy pair merging shared by the BPE models: repeatedly merge the adjacent pair with the highest priority,
/// the leftmost one on ties, until no adjacent pair is mergeable. A binary heap with lazy invalidation makes it
/// O(n log n) over the whole sequence (the algorithm of sentencepiece's bpe_model.cc and of the Hugging Face
/// BPE `Word::merge_all`, which give the same result as the naive rescan of llama2.c's run.c).
struct PairInfo: Sendable {
    var priority: Float   // higher merges first (SentencePiece score; -rank for rank-ordered merges)
    var merged: Int32     // id of the merged symbol
}

@inline(__always) func pairKey(_ a: Int32, _ b: Int32) -> UInt64 {
    UInt64(UInt32(bitPattern: a)) << 32 | UInt64(UInt32(bitPattern: b))
}

/// Merge lookup by (left id, right id): a dense table for small vocabularies (SentencePiece/llama2.c models of
/// a few hundred pieces, where this lookup dominates), a hash map otherwise.
struct PairTable: Sendable {
    private let dense: [PairInfo]
    private let stride: Int
    private let map: [UInt64: PairInfo]

    init(_ pairs: [UInt64: PairInfo], symbolCount: Int) {
        if symbolCount <= 1024 {
            var d = [PairInfo](repeating: PairInfo(priority: 0, merged: -1), count: symbolCount * symbolCount)
            for (k, v) in pairs { d[Int(k >> 32) * symbolCount + Int(k & 0xFFFF_FFFF)] = v }
            dense = d; stride = symbolCount; map = [:]
        } else {
            dense = []; stride = 0; map = pairs
        }
    }

    @inline(__always) func lookup(_ a: Int32, _ b: Int32) -> PairInfo? {
        if stride > 0 {
            guard Int(a) < stride && Int(b) < stride else { return nil }
            let v = dense[Int(a) * stride + Int(b)]
            return v.merged >= 0 ? v : nil
        }
        return map[pairKey(a, b)]
    }
}

struct BPEMerger {
    private struct Candidate {
        var priority: Float
        var left: Int32
        var right: Int32
        var size: Int32    // combined length of the two symbols when pushed (stale-entry check)
        var merged: Int32
    }
    private var heap: [Candidate] = []
    private var prev: [Int32] = []
    private var next: [Int32] = []
    private var len: [Int32] = []

    init() {}

    @inline(__always) private static func before(_ a: Candidate, _ b: Candidate) -> Bool {
        a.priority > b.priority || (a.priority == b.priority && a.left < b.left)
    }

    private mutating func push(_ c: Candidate) {
        heap.append(c)
        var i = heap.count - 1
        while i > 0 {
            let p = (i - 1) >> 1
            if !BPEMerger.before(heap[i], heap[p]) { break }
            heap.swapAt(i, p); i = p
        }
    }

    private mutating func pop() -> Candidate {
        let top = heap[0]
        let last = heap.removeLast()
        if !heap.isEmpty {
            heap[0] = last
            var i = 0
            let n = heap.count
            while true {
                let l = 2 * i + 1
                if l >= n { break }
                var m = l
                if l + 1 < n && BPEMerger.before(heap[l + 1], heap[l]) { m = l + 1 }
                if !BPEMerger.before(heap[m], heap[i]) { break }
                heap.swapAt(i, m); i = m
            }
        }
        return top
    }

    /// Merges `ids` in place (ids of -1 never merge; `frozen` symbols never merge). `lengths` are the symbols'
    /// sizes in any unit (bytes or chars); `pairs` maps (left id, right id) to the merge. `onMerge` sees each
    /// merge (left id, right id, merged id). Returns the surviving symbols in order.
    mutating func merge(ids: inout [Int32], lengths: [Int32], frozen: [Bool]? = nil,
                        pairs: PairTable,
                        onMerge: ((Int32, Int32, Int32) -> Void)? = nil) -> [Int32] {
        let n = ids.count
        if n < 2 { return ids }
        heap.removeAll(keepingCapacity: true)
        prev = (0..<n).map { Int32($0) - 1 }
        next = (0..<n).map { $0 + 1 < n ? Int32($0 + 1) : -1 }
        len = lengths
        if let frozen { for i in 0..<n where frozen[i] { len[i] = -1_000_000 } }  // never matches a size

        @inline(__always) func consider(_ l: Int32, _ r: Int32, _ ids: [Int32]) -> Candidate? {
            let a = ids[Int(l)], b = ids[Int(r)]
            if a < 0 || b < 0 || len[Int(l)] <= 0 || len[Int(r)] <= 0 { return nil }
            guard let info = pairs.lookup(a, b) else { return nil }
            return Candidate(priority: info.priority, left: l, right: r,
                             size: len[Int(l)] + len[Int(r)], merged: info.merged)
        }
        for i in 0..<(n - 1) {
            if let c = consider(Int32(i), Int32(i + 1), ids) { push(c) }
        }
        while !heap.isEmpty {
            let top = pop()
            let l = Int(top.left), r = Int(top.right)
            // Stale: one side already merged away or grown since this entry was pushed.
            if len[l] <= 0 || len[r] <= 0 || len[l] + len[r] != top.size { continue }
            onMerge?(ids[l], ids[r], top.merged)
            ids[l] = top.merged
            len[l] = top.size
            len[r] = 0
            let nr = next[r]
            next[l] = nr
            if nr >= 0 { prev[Int(nr)] = Int32(l) }
            let p = prev[l]
            if p >= 0, let c = consider(p, Int32(l), ids) { push(c) }
            if nr >= 0, let c = consider(Int32(l), nr, ids) { push(c) }
        }
        var out: [Int32] = []
        out.reserveCapacity(n / 2)
        var i: Int32 = 0
        while i >= 0 { out.append(ids[Int(i)]); i = next[Int(i)] }
        return out
    }
}
