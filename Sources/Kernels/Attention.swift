import TensorCore

enum Attention {
    /// Up to 4 query rows of one head at once (rows share every key and value load). Keys come transposed and
    /// contiguous, kt[c * ldk + j] (ldk a multiple of 16, columns past the keys zero); values contiguous
    /// v[j * vStride + c]. Row r attends to keys firsts[r]..<lens[r] (firsts all 0 without a sliding window);
    /// its scores live in scores[r * ldk ...]. Keys below the rows' smallest first (rounded down to 16) are
    /// skipped; keys between that and a row's own first get probability 0.
    @inline(__always)
    static func block4(q: (UnsafePointer<Float>, UnsafePointer<Float>, UnsafePointer<Float>, UnsafePointer<Float>),
                       rows: Int, firsts: SIMD4<Int32> = SIMD4(repeating: 0), lens: SIMD4<Int32>,
                       kt: UnsafePointer<Float>, ldk: Int, v: UnsafePointer<Float>,
                       vStride: Int, headDim d: Int, scale: Float, scores: UnsafeMutablePointer<Float>,
                       out: (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>,
                             UnsafeMutablePointer<Float>)) {
        var maxLen = 0, minFirst = Int.max
        for r in 0..<rows { maxLen = max(maxLen, Int(lens[r])); minFirst = min(minFirst, Int(firsts[r])) }
        // Multiple of 16, so that the 16-key passes stay inside ldk.
        let j0 = minFirst & ~15
        let s0 = scores, s1 = scores + ldk, s2 = scores + 2 * ldk, s3 = scores + 3 * ldk
        let sv = SIMD8<Float>(repeating: scale)
        // Scores: 4 rows x 16 keys per pass, the keys' dimension c innermost.
        var j = j0
        while j < maxLen {
            var a00 = SIMD8<Float>(), a01 = SIMD8<Float>(), a10 = SIMD8<Float>(), a11 = SIMD8<Float>()
            var a20 = SIMD8<Float>(), a21 = SIMD8<Float>(), a30 = SIMD8<Float>(), a31 = SIMD8<Float>()
            var kp = kt + j
            for c in 0..<d {
                let k0 = loadU(kp), k1 = loadU(kp + 8)
                var b = SIMD8<Float>(repeating: q.0[c]); a00.addProduct(b, k0); a01.addProduct(b, k1)
                b = SIMD8<Float>(repeating: q.1[c]); a10.addProduct(b, k0); a11.addProduct(b, k1)
                b = SIMD8<Float>(repeating: q.2[c]); a20.addProduct(b, k0); a21.addProduct(b, k1)
                b = SIMD8<Float>(repeating: q.3[c]); a30.addProduct(b, k0); a31.addProduct(b, k1)
                kp += ldk
            }
            storeU(a00 * sv, s0 + j); storeU(a01 * sv, s0 + j + 8); storeU(a10 * sv, s1 + j); storeU(a11 * sv, s1 + j + 8)
            storeU(a20 * sv, s2 + j); storeU(a21 * sv, s2 + j + 8); storeU(a30 * sv, s3 + j); storeU(a31 * sv, s3 + j + 8)
            j += 16
        }
        // Softmax over each row's own keys; probabilities of keys a row does not see are 0.
        for r in 0..<4 {
            let p = scores + r * ldk
            let len = r < rows ? Int(lens[r]) : 0
            let first = r < rows ? min(Int(firsts[r]), len) : 0
            for jj in j0..<max(j0, first) { p[jj] = 0 }
            if len > first { Elementwise.softmaxRow(p + first, len - first) }
            for jj in max(j0, len)..<maxLen { p[jj] = 0 }
        }
        // Outputs: 4 rows x 16 dimensions per pass over the values.
        let d16 = d & ~15
        var c = 0
        while c < d16 {
            var o00 = SIMD8<Float>(), o01 = SIMD8<Float>(), o10 = SIMD8<Float>(), o11 = SIMD8<Float>()
            var o20 = SIMD8<Float>(), o21 = SIMD8<Float>(), o30 = SIMD8<Float>(), o31 = SIMD8<Float>()
            var vp = v + j0 * vStride + c
            for jj in j0..<maxLen {
                let v0 = loadU(vp), v1 = loadU(vp + 8)
                var b = SIMD8<Float>(repeating: s0[jj]); o00.addProduct(b, v0); o01.addProduct(b, v1)
                b = SIMD8<Float>(repeating: s1[jj]); o10.addProduct(b, v0); o11.addProduct(b, v1)
                b = SIMD8<Float>(repeating: s2[jj]); o20.addProduct(b, v0); o21.addProduct(b, v1)
                b = SIMD8<Float>(repeating: s3[jj]); o30.addProduct(b, v0); o31.addProduct(b, v1)
                vp += vStride
            }
            storeU(o00, out.0 + c); storeU(o01, out.0 + c + 8)
            if rows > 1 { storeU(o10, out.1 + c); storeU(o11, out.1 + c + 8) }
            if rows > 2 { storeU(o20, out.2 + c); storeU(o21, out.2 + c + 8) }
            if rows > 3 { storeU(o30, out.3 + c); storeU(o31, out.3 + c + 8) }
            c += 16
        }
        while c < d {
            var o = SIMD4<Float>()
            for jj in j0..<maxLen {
                let x = v[jj * vStride + c]
                o.addProduct(SIMD4(s0[jj], s1[jj], s2[jj], s3[jj]), SIMD4(repeating: x))
            }
            out.0[c] = o[0]
            if rows > 1 { out.1[c] = o[1] }
            if rows > 2 { out.2[c] = o[2] }
            if rows > 3 { out.3[c] = o[3] }
            c += 1
        }
    }

    /// Writes keys rows 0..<rows (row stride kStride) of one head transposed into kt[c * ldk + j], zeroing the
    /// padding columns rows..<ldk.
    @inline(__always)
    static func transposeKeys(_ k: UnsafePointer<Float>, rows: Int, kStride: Int, headDim: Int,
                              kt: UnsafeMutablePointer<Float>, ldk: Int) {
        for j in 0..<rows {
            let src = k + j * kStride
            for c in 0..<headDim { kt[c * ldk + j] = src[c] }
        }
        if rows < ldk { for c in 0..<headDim { (kt + c * ldk + rows).update(repeating: 0, count: ldk - rows) } }
    }

    @inline(__always) static func roundUp16(_ n: Int) -> Int { (n + 15) & ~15 }
    /// A row stride for transposed keys: a multiple of 16 floats that is an odd number of 64-byte lines, so that
    /// the headDim rows read together do not all fall into the same few L1 sets (a power-of-two stride would).
    @inline(__always) static func keyStride(_ n: Int) -> Int { roundUp16(n) | 16 }

    static func run(q: UnsafePointer<Float>, keys: UnsafePointer<Float>, values: UnsafePointer<Float>,
                    tokens: Int, start: Int, nHeads: Int, nKVHeads: Int, headDim: Int, window: Int? = nil,
                    out: UnsafeMutablePointer<Float>, threads: Int) {
        guard tokens > 0, nHeads > 0, nKVHeads > 0, headDim > 0 else { return }
        let group = nHeads / nKVHeads
        let scale = 1 / Float(headDim).squareRoot()
        let kvStride = nKVHeads * headDim, qStride = nHeads * headDim
        let items = nHeads * tokens
        // The query at absolute position p sees keys max(0, p - w + 1)...p (at most w of them).
        let w = window ?? Int.max
        @Sendable @inline(__always) func firstKey(_ p: Int) -> Int { p >= w ? p - w + 1 : 0 }
        // Row p costs its p - firstKey(p) + 1 visible keys: cut the (head, token) items into ranges of equal cost.
        var rowCost = 0.0
        for tok in 0..<tokens { rowCost += Double(start + tok + 1 - firstKey(start + tok)) }
        let work = Double(nHeads) * rowCost * Double(headDim)
        let t = max(1, min(threads, items, work < 65_536 ? 1 : threads))
        var bounds = [0]
        if t > 1 {
            let total = Double(nHeads) * rowCost
            var acc = 0.0
            for it in 0..<items {
                let p = start + it % tokens
                acc += Double(p + 1 - firstKey(p))
                if acc >= total * Double(bounds.count) / Double(t) && bounds.count < t { bounds.append(it + 1) }
            }
        }
        while bounds.count <= t { bounds.append(items) }
        let qs = SendablePointer(q), ks = SendablePointer(keys), vs = SendablePointer(values), os = SendablePointer(out)
        let bs = bounds
        let total = start + tokens
        Parallel.forRanges(t, threads: t) { r in
            let ldkMax = keyStride(total)
            let scores = UnsafeMutablePointer<Float>.allocate(capacity: 4 * ldkMax)
            // One KV head's keys transposed and values copied contiguous: rows of the cache lie nKV·headDim floats
            // apart (2 KiB for 8 heads of 64), a power-of-two stride that maps every row to the same few cache sets.
            let kt = UnsafeMutablePointer<Float>.allocate(capacity: ldkMax * headDim)
            let vbuf = UnsafeMutablePointer<Float>.allocate(capacity: total * headDim)
            defer { scores.deallocate(); kt.deallocate(); vbuf.deallocate() }
            var copiedHead = -1, copiedRows = 0, ldk = 16
            for part in r {
                var it = bs[part]
                while it < bs[part + 1] {
                    let h = it / tokens, tok = it % tokens
                    let kvh = h / group
                    // Up to 4 consecutive tokens of the same head inside this part.
                    let n = min(4, bs[part + 1] - it, tokens - tok)
                    let lastLen = start + tok + n
                    if kvh != copiedHead || lastLen > copiedRows {
                        // Rows this part needs for the head: up to its last token of head h.
                        let last = min(bs[part + 1], (h + 1) * tokens) - 1 - h * tokens
                        let rows = start + last + 1
                        ldk = keyStride(rows)
                        transposeKeys(ks.base + kvh * headDim, rows: rows, kStride: kvStride, headDim: headDim, kt: kt, ldk: ldk)
                        for j in 0..<rows {
                            (vbuf + j * headDim).update(from: vs.base + j * kvStride + kvh * headDim, count: headDim)
                        }
                        copiedHead = kvh; copiedRows = rows
                    }
                    let qb = qs.base + tok * qStride + h * headDim, ob = os.base + tok * qStride + h * headDim
                    func qrow(_ i: Int) -> UnsafePointer<Float> { UnsafePointer(i < n ? qb + i * qStride : qb) }
                    func orow(_ i: Int) -> UnsafeMutablePointer<Float> { i < n ? ob + i * qStride : ob }
                    let base = Int32(start + tok + 1)
                    let p = start + tok
                    let firsts = window == nil ? SIMD4<Int32>(repeating: 0)
                        : SIMD4(Int32(firstKey(p)), Int32(firstKey(p + 1)), Int32(firstKey(p + 2)), Int32(firstKey(p + 3)))
                    block4(q: (qrow(0), qrow(1), qrow(2), qrow(3)), rows: n, firsts: firsts,
                           lens: SIMD4(base, base + 1, base + 2, base + 3),
                           kt: kt, ldk: ldk, v: vbuf, vStride: headDim, headDim: headDim, scale: scale, scores: scores,
                           out: (orow(0), orow(1), orow(2), orow(3)))
                    it += n
                }
            }
        }
    }

    /// Bidirectional attention inside packed sequences (BERT with its padding mask): sequence s occupies rows
    /// offsets[s]..<offsets[s+1] of q/k/v/out [total, heads * headDim]; one task per (sequence, head).
    static func bidirectional(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                              out: UnsafeMutablePointer<Float>, offsets: [Int], heads: Int, headDim: Int, threads: Int) {
        let nSeq = offsets.count - 1
        guard nSeq > 0, heads > 0, headDim > 0 else { return }
        let stride = heads * headDim
        let scale = 1 / Float(headDim).squareRoot()
        let qp = SendablePointer(q), kp = SendablePointer(k), vp = SendablePointer(v), op = SendablePointer(out)
        let maxLen = (0..<nSeq).map { offsets[$0 + 1] - offsets[$0] }.max() ?? 0
        let ldkMax = roundUp16(maxLen)
        Parallel.forEach(nSeq * heads, threads: threads) { task in
            let s = task / heads, hd = task % heads
            let start = offsets[s], len = offsets[s + 1] - start
            if len == 0 { return }
            let ldk = roundUp16(len)
            let scores = UnsafeMutablePointer<Float>.allocate(capacity: 4 * ldkMax)
            let kt = UnsafeMutablePointer<Float>.allocate(capacity: ldkMax * headDim)
            defer { scores.deallocate(); kt.deallocate() }
            let col = start * stride + hd * headDim
            transposeKeys(kp.base + col, rows: len, kStride: stride, headDim: headDim, kt: kt, ldk: ldk)
            let l32 = Int32(len)
            var i = 0
            while i < len {
                let n = min(4, len - i)
                let qb = qp.base + col + i * stride, ob = op.base + col + i * stride
                func qrow(_ r: Int) -> UnsafePointer<Float> { UnsafePointer(r < n ? qb + r * stride : qb) }
                func orow(_ r: Int) -> UnsafeMutablePointer<Float> { r < n ? ob + r * stride : ob }
                block4(q: (qrow(0), qrow(1), qrow(2), qrow(3)), rows: n, lens: SIMD4(repeating: l32), kt: kt, ldk: ldk,
                       v: UnsafePointer(vp.base + col), vStride: stride, headDim: headDim, scale: scale, scores: scores,
                       out: (orow(0), orow(1), orow(2), orow(3)))
                i += n
            }
        }
    }
}
