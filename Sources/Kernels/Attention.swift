import TensorCore

enum Attention {
    @inline(__always)
    static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
        let n8 = n & ~7
        var s0 = SIMD8<Float>(), s1 = SIMD8<Float>()
        var i = 0
        while i + 16 <= n8 {
            s0.addProduct(loadU(a + i), loadU(b + i)); s1.addProduct(loadU(a + i + 8), loadU(b + i + 8)); i += 16
        }
        if i < n8 { s0.addProduct(loadU(a + i), loadU(b + i)); i += 8 }
        var s = (s0 + s1).sum()
        while i < n { s += a[i] * b[i]; i += 1 }
        return s
    }

    /// One query row of one head: scores over `len` cached keys, softmax, weighted sum of values.
    @inline(__always)
    static func row(q: UnsafePointer<Float>, keys: UnsafePointer<Float>, values: UnsafePointer<Float>, len: Int,
                    kvStride: Int, headDim: Int, scale: Float, scores: UnsafeMutablePointer<Float>,
                    out: UnsafeMutablePointer<Float>) {
        for j in 0..<len { scores[j] = dot(q, keys + j * kvStride, headDim) * scale }
        Elementwise.softmaxRow(scores, len)
        let d8 = headDim & ~7
        for i in 0..<headDim { out[i] = 0 }
        var j = 0
        // Four value rows per pass over the output row.
        while j + 4 <= len {
            let p0 = SIMD8<Float>(repeating: scores[j]), p1 = SIMD8<Float>(repeating: scores[j + 1])
            let p2 = SIMD8<Float>(repeating: scores[j + 2]), p3 = SIMD8<Float>(repeating: scores[j + 3])
            let v0 = values + j * kvStride, v1 = v0 + kvStride, v2 = v1 + kvStride, v3 = v2 + kvStride
            var i = 0
            while i < d8 {
                var o = loadU(out + i)
                o.addProduct(p0, loadU(v0 + i)); o.addProduct(p1, loadU(v1 + i))
                o.addProduct(p2, loadU(v2 + i)); o.addProduct(p3, loadU(v3 + i))
                storeU(o, out + i)
                i += 8
            }
            while i < headDim {
                out[i] += scores[j] * v0[i] + scores[j + 1] * v1[i] + scores[j + 2] * v2[i] + scores[j + 3] * v3[i]
                i += 1
            }
            j += 4
        }
        while j < len {
            let p = scores[j], v = values + j * kvStride
            var i = 0
            while i < d8 { storeU(loadU(out + i).addingProduct(SIMD8(repeating: p), loadU(v + i)), out + i); i += 8 }
            while i < headDim { out[i] += p * v[i]; i += 1 }
            j += 1
        }
    }

    static func run(q: UnsafePointer<Float>, keys: UnsafePointer<Float>, values: UnsafePointer<Float>,
                    tokens: Int, start: Int, nHeads: Int, nKVHeads: Int, headDim: Int,
                    out: UnsafeMutablePointer<Float>, threads: Int) {
        guard tokens > 0, nHeads > 0, nKVHeads > 0, headDim > 0 else { return }
        let group = nHeads / nKVHeads
        let scale = 1 / Float(headDim).squareRoot()
        let kvStride = nKVHeads * headDim, qStride = nHeads * headDim
        let items = nHeads * tokens
        // Causal rows cost start + t + 1 keys each: cut the (head, token) items into ranges of equal total cost.
        let work = Double(nHeads) * Double(tokens) * (Double(start) + Double(tokens + 1) / 2) * Double(headDim)
        let t = max(1, min(threads, items, work < 65_536 ? 1 : threads))
        var bounds = [0]
        if t > 1 {
            let total = Double(nHeads) * (Double(tokens) * Double(start) + Double(tokens) * Double(tokens + 1) / 2)
            var acc = 0.0
            for it in 0..<items {
                acc += Double(start + it % tokens + 1)
                if acc >= total * Double(bounds.count) / Double(t) && bounds.count < t { bounds.append(it + 1) }
            }
        }
        while bounds.count <= t { bounds.append(items) }
        let qs = SendablePointer(q), ks = SendablePointer(keys), vs = SendablePointer(values), os = SendablePointer(out)
        let bs = bounds
        let total = start + tokens
        Parallel.forRanges(t, threads: t) { r in
            let scores = UnsafeMutablePointer<Float>.allocate(capacity: total + 8)
            // One KV head's keys and values copied contiguous: rows of the cache lie nKV·headDim floats apart
            // (2 KiB for 8 heads of 64), a power-of-two stride that maps every row to the same few cache sets.
            let kbuf = UnsafeMutablePointer<Float>.allocate(capacity: total * headDim)
            let vbuf = UnsafeMutablePointer<Float>.allocate(capacity: total * headDim)
            defer { scores.deallocate(); kbuf.deallocate(); vbuf.deallocate() }
            var copiedHead = -1, copiedRows = 0
            for part in r {
                for it in bs[part]..<bs[part + 1] {
                    let h = it / tokens, tok = it % tokens
                    let kvh = h / group
                    let len = start + tok + 1
                    if kvh != copiedHead || len > copiedRows {
                        // Rows this part needs for the head: up to its last token of head h.
                        let last = min(bs[part + 1], (h + 1) * tokens) - 1 - h * tokens
                        let rows = start + last + 1
                        for j in 0..<rows {
                            (kbuf + j * headDim).update(from: ks.base + j * kvStride + kvh * headDim, count: headDim)
                            (vbuf + j * headDim).update(from: vs.base + j * kvStride + kvh * headDim, count: headDim)
                        }
                        copiedHead = kvh; copiedRows = rows
                    }
                    row(q: qs.base + tok * qStride + h * headDim, keys: kbuf, values: vbuf, len: len,
                        kvStride: headDim, headDim: headDim, scale: scale, scores: scores,
                        out: os.base + tok * qStride + h * headDim)
                }
            }
        }
    }
}
