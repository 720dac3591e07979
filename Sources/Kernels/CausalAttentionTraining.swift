import TensorCore

/// Causal grouped-query attention for training, forward and backward, over `batch` sequences of `length` tokens
/// side by side: q [batch * length, heads * headDim], k and v [batch * length, kvHeads * headDim], RoPE already
/// applied. The forward keeps the probabilities [batch, heads, length, length] (zero above the diagonal) for the
/// backward. One work item per (sequence, kv head): its query heads run in order, so the kv head's dk, dv are summed
/// in a fixed order and a run repeats bit for bit. The item's keys and values are transposed once, so that every
/// sum and update runs SIMD along the keys (the head dimension is short: 8 in stories260K).
/// The scalar twin is the training graph's own loop (Training's LlamaGraph over Double), which the tests compare.
public struct CausalAttentionShape: Sendable {
    public var batch: Int, length: Int, heads: Int, kvHeads: Int, headDim: Int
    public init(batch: Int, length: Int, heads: Int, kvHeads: Int, headDim: Int) {
        self.batch = batch; self.length = length; self.heads = heads; self.kvHeads = kvHeads; self.headDim = headDim
    }
    var qDim: Int { heads * headDim }
    var kvDim: Int { kvHeads * headDim }
}

extension Kernels {
    public static func causalAttentionForward(_ s: CausalAttentionShape, q: UnsafePointer<Float>, k: UnsafePointer<Float>,
                                              v: UnsafePointer<Float>, probs: UnsafeMutablePointer<Float>,
                                              out: UnsafeMutablePointer<Float>, threads: Int) {
        let (len, hd, qDim, heads, group) = (s.length, s.headDim, s.qDim, s.heads, s.heads / s.kvHeads)
        let scale = 1 / Float(hd).squareRoot()
        let qp = SendablePointer(q), kp = SendablePointer(k), vp = SendablePointer(v)
        let pp = SendablePointer(probs), op = SendablePointer(out), kvh = s.kvHeads
        Parallel.forEach(s.batch * kvh, threads: threads) { item in
            let b = item / kvh, kh = item % kvh
            let kt = UnsafeMutablePointer<Float>.allocate(capacity: hd * len), vt = UnsafeMutablePointer<Float>.allocate(capacity: hd * len)
            defer { kt.deallocate(); vt.deallocate() }
            gatherTransposed(s, k: kp.base, v: vp.base, sequence: b, kvHead: kh, kt: kt, vt: vt)
            for h in (kh * group)..<((kh + 1) * group) {
                // Query rows two at a time (as the backward): kt and vt are loaded once for both.
                var i = 0
                while i < len {
                    let n = i + 1
                    let qi = qp.base + (b * len + i) * qDim + h * hd
                    let pr = pp.base + ((b * heads + h) * len + i) * len
                    let o = op.base + (b * len + i) * qDim + h * hd
                    guard i + 1 < len else {
                        pr.update(repeating: 0, count: len)
                        for e in 0..<hd { axpy(qi[e] * scale, kt + e * len, pr, n) }
                        Elementwise.softmaxRow(pr, n)
                        for e in 0..<hd { o[e] = dot(pr, vt + e * len, n) }
                        i += 1
                        continue
                    }
                    let qi2 = qi + qDim, pr2 = pr + len, o2 = o + qDim
                    pr.update(repeating: 0, count: 2 * len)
                    for e in 0..<hd { axpy2(qi[e] * scale, qi2[e] * scale, kt + e * len, pr, pr2, n + 1) }
                    Elementwise.softmaxRow(pr, n)
                    Elementwise.softmaxRow(pr2, n + 1)
                    for e in 0..<hd {
                        let (a, c) = dot2(pr, pr2, vt + e * len, n)
                        o[e] = a
                        o2[e] = c + pr2[n] * vt[e * len + n]
                    }
                    i += 2
                }
            }
        }
    }

    /// dq, dk, dv (overwritten) from dOut = d(attention output) and the forward's q, k, v, probabilities.
    /// dK and dV build up transposed ([headDim][length], rows along the keys) so that every update runs along
    /// the keys too, then land in dk, dv once per work item.
    public static func causalAttentionBackward(_ s: CausalAttentionShape, q: UnsafePointer<Float>, k: UnsafePointer<Float>,
                                               v: UnsafePointer<Float>, probs: UnsafePointer<Float>, dOut: UnsafePointer<Float>,
                                               dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>,
                                               dv: UnsafeMutablePointer<Float>, threads: Int) {
        let (len, hd, qDim, kvDim, heads, group) = (s.length, s.headDim, s.qDim, s.kvDim, s.heads, s.heads / s.kvHeads)
        let scale = 1 / Float(hd).squareRoot()
        let qp = SendablePointer(q), kp = SendablePointer(k), vp = SendablePointer(v), pp = SendablePointer(probs)
        let gp = SendablePointer(dOut), dqp = SendablePointer(dq), dkp = SendablePointer(dk), dvp = SendablePointer(dv)
        let kvh = s.kvHeads
        Parallel.forEach(s.batch * kvh, threads: threads) { item in
            let b = item / kvh, kh = item % kvh
            let buffers = UnsafeMutablePointer<Float>.allocate(capacity: 4 * hd * len + 2 * len)
            defer { buffers.deallocate() }
            let vt = buffers, kt = buffers + hd * len, dkt = buffers + 2 * hd * len, dvt = buffers + 3 * hd * len
            let ds = buffers + 4 * hd * len
            dkt.update(repeating: 0, count: 2 * hd * len)
            gatherTransposed(s, k: kp.base, v: vp.base, sequence: b, kvHead: kh, kt: kt, vt: vt)
            for h in (kh * group)..<((kh + 1) * group) {
                // Query rows two at a time: they share every load and store of kt, vt, dkt and dvt over the keys
                // the first row sees; the second row's one extra key follows on its own.
                var i = 0
                while i < len {
                    let pair = i + 1 < len
                    let n = i + 1
                    let pr = pp.base + ((b * heads + h) * len + i) * len
                    let go = gp.base + (b * len + i) * qDim + h * hd
                    let qi = qp.base + (b * len + i) * qDim + h * hd, dqi = dqp.base + (b * len + i) * qDim + h * hd
                    // dP = dO · Vᵀ, then dS = P (dP - <P, dP>) / sqrt(d).
                    guard pair else {
                        ds.update(repeating: 0, count: n)
                        for e in 0..<hd { axpy(go[e], vt + e * len, ds, n) }
                        scaleShifted(ds, pr, shift: dot(pr, ds, n), scale: scale, n)
                        for e in 0..<hd {
                            dqi[e] = dotAndUpdate(ds, kt + e * len, qi[e], dkt + e * len, pr, go[e], dvt + e * len, n)
                        }
                        i += 1
                        continue
                    }
                    let pr2 = pr + len, go2 = go + qDim, qi2 = qi + qDim, dqi2 = dqi + qDim, ds2 = ds + len
                    ds.update(repeating: 0, count: n)
                    ds2.update(repeating: 0, count: n + 1)
                    for e in 0..<hd { axpy2(go[e], go2[e], vt + e * len, ds, ds2, n + 1) }
                    scaleShifted(ds, pr, shift: dot(pr, ds, n), scale: scale, n)
                    scaleShifted(ds2, pr2, shift: dot(pr2, ds2, n + 1), scale: scale, n + 1)
                    for e in 0..<hd {
                        let (a, c) = dotAndUpdate2(ds, ds2, kt + e * len, qi[e], qi2[e], dkt + e * len, pr, pr2, go[e], go2[e],
                                                   dvt + e * len, n)
                        // The second row's last key (index n).
                        dqi[e] = a
                        dqi2[e] = c + ds2[n] * kt[e * len + n]
                        dkt[e * len + n] += qi2[e] * ds2[n]
                        dvt[e * len + n] += go2[e] * pr2[n]
                    }
                    i += 2
                }
            }
            for j in 0..<len {
                let at = (b * len + j) * kvDim + kh * hd
                for e in 0..<hd { dkp[at + e] = dkt[e * len + j]; dvp[at + e] = dvt[e * len + j] }
            }
        }
    }

    /// A work item's keys and values transposed, [headDim][length]: every sum along the keys reads contiguously.
    @inline(__always)
    static func gatherTransposed(_ s: CausalAttentionShape, k: UnsafePointer<Float>, v: UnsafePointer<Float>, sequence b: Int,
                                 kvHead kh: Int, kt: UnsafeMutablePointer<Float>, vt: UnsafeMutablePointer<Float>) {
        let (len, hd, kvDim) = (s.length, s.headDim, s.kvDim)
        for j in 0..<len {
            let at = (b * len + j) * kvDim + kh * hd
            for e in 0..<hd { kt[e * len + j] = k[at + e]; vt[e * len + j] = v[at + e] }
        }
    }

    /// y[0..<n] += a x[0..<n].
    @inline(__always)
    static func axpy(_ a: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
        let av = SIMD8<Float>(repeating: a)
        var i = 0
        while i + 8 <= n { storeU(loadU(y + i) + av * loadU(x + i), y + i); i += 8 }
        while i < n { y[i] += a * x[i]; i += 1 }
    }

    @inline(__always)
    static func dot(_ x: UnsafePointer<Float>, _ y: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = SIMD8<Float>()
        var i = 0
        while i + 8 <= n { acc += loadU(x + i) * loadU(y + i); i += 8 }
        var s = acc.sum()
        while i < n { s += x[i] * y[i]; i += 1 }
        return s
    }

    /// (Σ x1·y, Σ x2·y) over the first n entries, y loaded once.
    @inline(__always)
    static func dot2(_ x1: UnsafePointer<Float>, _ x2: UnsafePointer<Float>, _ y: UnsafePointer<Float>, _ n: Int) -> (Float, Float) {
        var a1 = SIMD8<Float>(), a2 = SIMD8<Float>()
        var i = 0
        while i + 8 <= n { let yv = loadU(y + i); a1 += loadU(x1 + i) * yv; a2 += loadU(x2 + i) * yv; i += 8 }
        var s1 = a1.sum(), s2 = a2.sum()
        while i < n { s1 += x1[i] * y[i]; s2 += x2[i] * y[i]; i += 1 }
        return (s1, s2)
    }

    /// One pass along the keys for a head-dimension index e: returns Σ ds·kt (dq's entry) while dkt += a·ds and
    /// dvt += c·p (dK's and dV's rows, transposed).
    @inline(__always)
    static func dotAndUpdate(_ ds: UnsafePointer<Float>, _ kt: UnsafePointer<Float>, _ a: Float, _ dkt: UnsafeMutablePointer<Float>,
                             _ p: UnsafePointer<Float>, _ c: Float, _ dvt: UnsafeMutablePointer<Float>, _ n: Int) -> Float {
        let av = SIMD8<Float>(repeating: a), cv = SIMD8<Float>(repeating: c)
        var acc = SIMD8<Float>()
        var i = 0
        while i + 8 <= n {
            let d = loadU(ds + i)
            acc += d * loadU(kt + i)
            storeU(loadU(dkt + i) + av * d, dkt + i)
            storeU(loadU(dvt + i) + cv * loadU(p + i), dvt + i)
            i += 8
        }
        var sum = acc.sum()
        while i < n { sum += ds[i] * kt[i]; dkt[i] += a * ds[i]; dvt[i] += c * p[i]; i += 1 }
        return sum
    }

    /// y1 += a1 x over the first n - 1 entries, y2 += a2 x over all n (two query rows, x loaded once).
    @inline(__always)
    static func axpy2(_ a1: Float, _ a2: Float, _ x: UnsafePointer<Float>, _ y1: UnsafeMutablePointer<Float>,
                      _ y2: UnsafeMutablePointer<Float>, _ n: Int) {
        let v1 = SIMD8<Float>(repeating: a1), v2 = SIMD8<Float>(repeating: a2)
        let m = n - 1
        var i = 0
        while i + 8 <= m {
            let xv = loadU(x + i)
            storeU(loadU(y1 + i) + v1 * xv, y1 + i)
            storeU(loadU(y2 + i) + v2 * xv, y2 + i)
            i += 8
        }
        while i < m { y1[i] += a1 * x[i]; y2[i] += a2 * x[i]; i += 1 }
        y2[m] += a2 * x[m]
    }

    /// dotAndUpdate for two query rows over the first n keys (those both see): returns both rows' Σ ds·kt while
    /// dkt += a1·ds1 + a2·ds2 and dvt += c1·p1 + c2·p2.
    @inline(__always)
    static func dotAndUpdate2(_ ds1: UnsafePointer<Float>, _ ds2: UnsafePointer<Float>, _ kt: UnsafePointer<Float>,
                              _ a1: Float, _ a2: Float, _ dkt: UnsafeMutablePointer<Float>, _ p1: UnsafePointer<Float>,
                              _ p2: UnsafePointer<Float>, _ c1: Float, _ c2: Float, _ dvt: UnsafeMutablePointer<Float>,
                              _ n: Int) -> (Float, Float) {
        let av1 = SIMD8<Float>(repeating: a1), av2 = SIMD8<Float>(repeating: a2)
        let cv1 = SIMD8<Float>(repeating: c1), cv2 = SIMD8<Float>(repeating: c2)
        var acc1 = SIMD8<Float>(), acc2 = SIMD8<Float>()
        var i = 0
        while i + 8 <= n {
            let d1 = loadU(ds1 + i), d2 = loadU(ds2 + i), k = loadU(kt + i)
            acc1 += d1 * k
            acc2 += d2 * k
            storeU(loadU(dkt + i) + av1 * d1 + av2 * d2, dkt + i)
            storeU(loadU(dvt + i) + cv1 * loadU(p1 + i) + cv2 * loadU(p2 + i), dvt + i)
            i += 8
        }
        var s1 = acc1.sum(), s2 = acc2.sum()
        while i < n {
            s1 += ds1[i] * kt[i]; s2 += ds2[i] * kt[i]
            dkt[i] += a1 * ds1[i] + a2 * ds2[i]
            dvt[i] += c1 * p1[i] + c2 * p2[i]
            i += 1
        }
        return (s1, s2)
    }

    /// d[j] = p[j] (d[j] - shift) scale.
    @inline(__always)
    static func scaleShifted(_ d: UnsafeMutablePointer<Float>, _ p: UnsafePointer<Float>, shift: Float, scale: Float, _ n: Int) {
        let sv = SIMD8<Float>(repeating: shift), cv = SIMD8<Float>(repeating: scale)
        var i = 0
        while i + 8 <= n { storeU(loadU(p + i) * (loadU(d + i) - sv) * cv, d + i); i += 8 }
        while i < n { d[i] = p[i] * (d[i] - shift) * scale; i += 1 }
    }
}
