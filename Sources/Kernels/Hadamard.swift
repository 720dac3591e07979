import Foundation
import TensorCore

/// Hadamard rotations for rotated quantization (METHODS.md §3, QuaRot / SpinQuant): ±1 matrices of order
/// n = K·2^m built as H_K ⊗ H_(2^m), a fast in-place transform x ← x·H_n/√n, and the seeded residual rotation Q.
/// Row i = a·2^m + i' and column j = b·2^m + j' of H_n hold H_K[a][b]·S[i'][j'], S the Sylvester (Walsh) matrix
/// S[i'][j'] = (-1)^popcount(i' & j').
public enum Hadamard {
    /// Base orders K, in the order they are tried (QuaRot's get_hadK; METHODS.md §3).
    public static let baseOrders = [172, 156, 140, 108, 60, 52, 36, 28, 40, 20, 12]

    /// n = k·2^m: k = 1 for a power of two, else the first base order dividing n with a power-of-two quotient;
    /// nil when there is none (5632 = 11·512).
    public static func factorization(of n: Int) -> (k: Int, m: Int)? {
        guard n > 0 else { return nil }
        if n & (n - 1) == 0 { return (1, n.trailingZeroBitCount) }
        for k in baseOrders where n % k == 0 {
            let q = n / k
            if q & (q - 1) == 0 { return (k, q.trailingZeroBitCount) }
        }
        return nil
    }

    /// H_n row-major (n·n entries, each +1 or -1), or nil when n has no factorization (or n·n overflows).
    public static func signMatrix(order n: Int) -> [Int8]? {
        guard let (k, m) = factorization(of: n), !n.multipliedReportingOverflow(by: n).overflow else { return nil }
        let base = baseMatrix(k)
        var h = [Int8](repeating: 0, count: n * n)
        for row in 0..<n { for col in 0..<n { h[row * n + col] = entry(row, col, base: base, k: k, m: m) } }
        return h
    }

    /// H_n[row][col] = H_k[row >> m][col >> m]·(-1)^popcount(row & col & (2^m - 1)).
    @inline(__always)
    static func entry(_ row: Int, _ col: Int, base: [Int8], k: Int, m: Int) -> Int8 {
        let h = base[(row >> m) * k + (col >> m)]
        return (row & col & ((1 << m) - 1)).nonzeroBitCount & 1 == 0 ? h : -h
    }

    /// The base matrix H_k (k = 1 or a base order), row-major.
    static func baseMatrix(_ k: Int) -> [Int8] {
        k == 1 ? [1] : bases[k]!
    }

    /// Every base matrix, built once: Paley I for q ≡ 3 (mod 4) prime (order q+1), Paley II for q ≡ 1 (mod 4)
    /// a prime power (order 2(q+1)), 40 by doubling 20, 156 and 172 from Sloane's tables.
    private static let bases: [Int: [Int8]] = {
        var b: [Int: [Int8]] = [:]
        for q in [11, 19, 59, 107, 139] { b[q + 1] = paleyI(FiniteField(order: q)) }
        for q in [13, 17, 25] { b[2 * (q + 1)] = paleyII(FiniteField(order: q)) }
        let h20 = b[20]!
        var h40 = [Int8](repeating: 0, count: 1600)
        for r in 0..<40 {
            for c in 0..<40 {
                let v = h20[(r % 20) * 20 + c % 20]
                h40[r * 40 + c] = (r >= 20 && c >= 20) ? -v : v
            }
        }
        b[40] = h40
        b[156] = decode(had156)
        b[172] = decode(had172)
        return b
    }()

    private static func decode(_ rows: [String]) -> [Int8] {
        var h: [Int8] = []
        for row in rows {
            for ch in row {
                let nibble = ch.hexDigitValue!
                for bit in (0..<4).reversed() { h.append(nibble >> bit & 1 == 1 ? -1 : 1) }
            }
        }
        return h
    }

    /// GF(q) for q = p or p² (p an odd prime), enough for the quadratic character of a difference. Element index
    /// x = a + p·b stands for a + b·α with α² = r, r the smallest quadratic non-residue mod p.
    struct FiniteField {
        let q: Int, p: Int, r: Int
        /// chi[x]: 0 for 0, +1 for a nonzero square, -1 otherwise.
        let chi: [Int8]

        init(order q: Int) {
            var p = q
            for d in 2...q where q % d == 0 { p = d; break }
            self.q = q
            self.p = p
            let squaresModP = Set((1..<p).map { $0 * $0 % p })
            r = (2..<max(p, 3)).first { !squaresModP.contains($0) } ?? 0
            var chi = [Int8](repeating: -1, count: q)
            chi[0] = 0
            for x in 1..<q { chi[Self.multiply(x, x, p: p, r: r)] = 1 }
            self.chi = chi
        }

        static func multiply(_ x: Int, _ y: Int, p: Int, r: Int) -> Int {
            let a1 = x % p, b1 = x / p, a2 = y % p, b2 = y / p
            let a = (a1 * a2 + r * b1 * b2) % p, b = (a1 * b2 + a2 * b1) % p
            return a + p * b
        }

        func subtract(_ x: Int, _ y: Int) -> Int {
            let a = (x % p - y % p + p) % p, b = (x / p - y / p + p) % p
            return a + p * b
        }
    }

    /// Paley I: H = I + [[0, 1ᵀ], [-1, Q]], Q[i][j] = χ(j - i) skew-symmetric since χ(-1) = -1.
    private static func paleyI(_ f: FiniteField) -> [Int8] {
        let n = f.q + 1
        var h = [Int8](repeating: 0, count: n * n)
        for c in 0..<n { h[c] = 1 }
        for i in 1..<n {
            h[i * n] = -1
            for j in 1..<n { h[i * n + j] = i == j ? 1 : f.chi[f.subtract(j - 1, i - 1)] }
        }
        return h
    }

    /// Paley II: the symmetric conference matrix C = [[0, 1ᵀ], [1, Q]] with each 0 replaced by [[1, -1], [-1, -1]]
    /// and each ±1 by ±[[1, 1], [1, -1]].
    private static func paleyII(_ f: FiniteField) -> [Int8] {
        let c = f.q + 1, n = 2 * c
        var h = [Int8](repeating: 0, count: n * n)
        for i in 0..<c {
            for j in 0..<c {
                let v: Int8 = i == j ? 0 : (i == 0 || j == 0 ? 1 : f.chi[f.subtract(j - 1, i - 1)])
                let block: [Int8] = v == 0 ? [1, -1, -1, -1] : [v, v, v, -v]
                for d in 0..<4 { h[(2 * i + d / 2) * n + 2 * j + d % 2] = block[d] }
            }
        }
        return h
    }

    // MARK: - Transform

    static func unsupported(_ n: Int) -> QuantKitError {
        QuantKitError(.shape, "no Hadamard matrix of order \(n): it must be a power of two or K·2^m with K in "
                      + baseOrders.map(String.init).joined(separator: ", "))
    }

    /// Each of `rows` rows of x (length n, contiguous) becomes x·H_n/√n, in place. Throws for an n without a
    /// factorization. FWHT butterflies on the 2^m axis, then the K×K product on the K axis, in Float.
    public static func transform(_ x: UnsafeMutablePointer<Float>, rows: Int, n: Int,
                                 threads: Int = Parallel.defaultThreads) throws {
        guard let (k, m) = factorization(of: n) else { throw unsupported(n) }
        guard rows >= 0 else { throw QuantKitError(.shape, "Hadamard transform: row count \(rows) is negative") }
        let plan = TransformPlan(k: k, m: m)
        let xp = SendablePointer(x)
        // Per row: n·m butterfly adds plus k·n multiply-adds; keep ~64K operations per thread at least.
        let perRow = n * (m + k)
        Parallel.forRanges(rows, threads: threads, minPerThread: max(1, 65536 / perRow)) { range in
            plan.run(xp.base + range.lowerBound * n, rows: range.count)
        }
    }

    /// Scalar twin of `transform`: the dense product with `signMatrix` in Double.
    public static func transformReference(_ x: UnsafeMutablePointer<Float>, rows: Int, n: Int) throws {
        guard let h = signMatrix(order: n) else { throw unsupported(n) }
        let scale = 1 / Double(n).squareRoot()
        var y = [Double](repeating: 0, count: n)
        for r in 0..<max(rows, 0) {
            let row = x + r * n
            for j in 0..<n {
                var s = 0.0
                for i in 0..<n { s += Double(row[i]) * Double(h[i * n + j]) }
                y[j] = s * scale
            }
            for j in 0..<n { row[j] = Float(y[j]) }
        }
    }

    /// The base matrix in Float for the K-axis product, plus the per-call constants.
    struct TransformPlan: Sendable {
        let k: Int, m: Int, size: Int, n: Int, scale: Float
        /// H_K row-major, rows padded with zeros to a multiple of 8.
        let paddedRows: [Float], padded: Int

        init(k: Int, m: Int) {
            self.k = k
            self.m = m
            size = 1 << m
            n = k * size
            scale = Float(1 / Double(n).squareRoot())
            let base = Hadamard.baseMatrix(k)
            padded = (k + 7) & ~7
            var rowsPadded = [Float](repeating: 0, count: k * padded)
            for a in 0..<k { for b in 0..<k { rowsPadded[a * padded + b] = Float(base[a * k + b]) } }
            paddedRows = rowsPadded
        }

        /// Transforms `rows` consecutive rows; the scratch is allocated once per call (one call per thread).
        func run(_ x: UnsafeMutablePointer<Float>, rows: Int) {
            let scratch = UnsafeMutablePointer<Float>.allocate(capacity: n + 2 * padded)
            defer { scratch.deallocate() }
            paddedRows.withUnsafeBufferPointer { hrows in
                for r in 0..<rows {
                    let row = x + r * n
                    for a in 0..<k { Hadamard.walsh(row + a * size, size: size) }
                    if k == 1 {
                        scaleInPlace(row, count: n)
                    } else if size >= 8 {
                        mixWide(row, out: scratch, rows: hrows.baseAddress!)
                        row.update(from: scratch, count: n)
                    } else {
                        mixNarrow(row, rows: hrows.baseAddress!, u: scratch, v: scratch + padded)
                    }
                }
            }
        }

        private func scaleInPlace(_ p: UnsafeMutablePointer<Float>, count: Int) {
            var i = 0
            while i + 8 <= count { store(p + i, load(p + i) * scale); i += 8 }
            while i < count { p[i] *= scale; i += 1 }
        }

        /// size >= 8 (a multiple of 8): out[b·size + j] = scale·Σ_a H[a][b]·t[a·size + j], four columns b (k is a
        /// multiple of 4) by 16 or 8 lanes of j per pass, so each loaded vector of t feeds four accumulators.
        private func mixWide(_ t: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>, rows h: UnsafePointer<Float>) {
            for b in stride(from: 0, to: k, by: 4) {
                let o = out + b * size
                var j = 0
                while j + 16 <= size {
                    var s00 = SIMD8<Float>(), s01 = s00, s10 = s00, s11 = s00, s20 = s00, s21 = s00, s30 = s00, s31 = s00
                    for a in 0..<k {
                        let p = t + a * size + j, hr = h + a * padded + b
                        let x0 = load(p), x1 = load(p + 8)
                        let w0 = SIMD8(repeating: hr[0]), w1 = SIMD8(repeating: hr[1])
                        let w2 = SIMD8(repeating: hr[2]), w3 = SIMD8(repeating: hr[3])
                        s00.addProduct(w0, x0); s01.addProduct(w0, x1); s10.addProduct(w1, x0); s11.addProduct(w1, x1)
                        s20.addProduct(w2, x0); s21.addProduct(w2, x1); s30.addProduct(w3, x0); s31.addProduct(w3, x1)
                    }
                    store(o + j, s00 * scale); store(o + j + 8, s01 * scale)
                    store(o + size + j, s10 * scale); store(o + size + j + 8, s11 * scale)
                    store(o + 2 * size + j, s20 * scale); store(o + 2 * size + j + 8, s21 * scale)
                    store(o + 3 * size + j, s30 * scale); store(o + 3 * size + j + 8, s31 * scale)
                    j += 16
                }
                if j < size {  // size == 8
                    var s0 = SIMD8<Float>(), s1 = s0, s2 = s0, s3 = s0
                    for a in 0..<k {
                        let x = load(t + a * size + j), hr = h + a * padded + b
                        s0.addProduct(SIMD8(repeating: hr[0]), x); s1.addProduct(SIMD8(repeating: hr[1]), x)
                        s2.addProduct(SIMD8(repeating: hr[2]), x); s3.addProduct(SIMD8(repeating: hr[3]), x)
                    }
                    store(o + j, s0 * scale); store(o + size + j, s1 * scale)
                    store(o + 2 * size + j, s2 * scale); store(o + 3 * size + j, s3 * scale)
                }
            }
        }

        /// size < 8: for each j gather u[a] = t[a·size + j], v = u·H_K along contiguous rows of H_K, scatter back.
        private func mixNarrow(_ t: UnsafeMutablePointer<Float>, rows h: UnsafePointer<Float>,
                               u: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>) {
            for j in 0..<size {
                for a in 0..<k { u[a] = t[a * size + j] }
                v.update(repeating: 0, count: padded)
                for a in 0..<k {
                    let w = SIMD8<Float>(repeating: u[a]), hr = h + a * padded
                    var b = 0
                    while b < padded { store(v + b, load(v + b).addingProduct(w, load(hr + b))); b += 8 }
                }
                for b in 0..<k { t[b * size + j] = v[b] * scale }
            }
        }
    }

    /// Unnormalized fast Walsh-Hadamard transform of `size` (a power of two) values in place: p ← p·S.
    static func walsh(_ p: UnsafeMutablePointer<Float>, size: Int) {
        var h = 1
        if size >= 8 {
            // Strides 1, 2, 4 inside one vector: three rounds of (even + odd, even - odd) butterfly every index bit
            // once and rotate the bits back into place.
            for i in stride(from: 0, to: size, by: 8) {
                var v = load(p + i)
                for _ in 0..<3 { let e = v.evenHalf, o = v.oddHalf; v = SIMD8(lowHalf: e + o, highHalf: e - o) }
                store(p + i, v)
            }
            h = 8
        }
        while h < size {
            var i = 0
            while i < size {
                if h >= 8 {
                    var j = i
                    while j < i + h {
                        let a = load(p + j), b = load(p + j + h)
                        store(p + j, a + b); store(p + j + h, a - b)
                        j += 8
                    }
                } else {
                    for j in i..<(i + h) {
                        let a = p[j], b = p[j + h]
                        p[j] = a + b; p[j + h] = a - b
                    }
                }
                i += 2 * h
            }
            h *= 2
        }
    }

    // MARK: - Rotation

    /// The residual-stream rotation Q (n×n, row-major, orthogonal), deterministic in `seed`; empty for n <= 0 or an
    /// n·n that overflows.
    /// With a factorization: Q = D·H_n/√n, D = diag(d_i), d_i = +1 when the top bit of the i-th SplitMix64(seed)
    /// output is 0, else -1 (row i of H_n scaled by d_i). Without one: the Q factor of the Householder QR of an
    /// n×n standard Gaussian matrix, columns multiplied by sign(R[j][j]) so the draw is Haar-distributed.
    /// Gaussians: Box-Muller on successive output pairs, u1 = ((next() >> 11) + 1)·2^-53 in (0, 1],
    /// u2 = (next() >> 11)·2^-53; √(-2 ln u1)·cos(2π u2) then √(-2 ln u1)·sin(2π u2) fill the matrix row-major
    /// (the last sine is dropped when n² is odd).
    public static func orthogonal(n: Int, seed: UInt64) -> [Double] {
        guard n > 0, !n.multipliedReportingOverflow(by: n).overflow else { return [] }
        var rng = SplitMix64(seed: seed)
        guard let (k, m) = factorization(of: n) else { return gaussianOrthogonal(n: n, rng: &rng) }
        let base = baseMatrix(k)
        let s = 1 / Double(n).squareRoot()
        var q = [Double](repeating: 0, count: n * n)
        for row in 0..<n {
            let d = rng.next() >> 63 == 0 ? s : -s
            for col in 0..<n { q[row * n + col] = entry(row, col, base: base, k: k, m: m) > 0 ? d : -d }
        }
        return q
    }

    static func gaussianOrthogonal(n: Int, rng: inout SplitMix64) -> [Double] {
        var a = [Double](repeating: 0, count: n * n)
        var i = 0
        while i < n * n {
            let u1 = Double((rng.next() >> 11) + 1) * 0x1p-53, u2 = Double(rng.next() >> 11) * 0x1p-53
            let radius = (-2 * log(u1)).squareRoot(), angle = 2 * Double.pi * u2
            a[i] = radius * cos(angle)
            if i + 1 < n * n { a[i + 1] = radius * sin(angle) }
            i += 2
        }
        return DenseMath.orthogonalFactor(&a, n: n)
    }
}

@inline(__always) private func load(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
}

@inline(__always) private func store(_ p: UnsafeMutablePointer<Float>, _ v: SIMD8<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self)
}
