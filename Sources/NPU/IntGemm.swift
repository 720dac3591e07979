import Foundation
import TensorCore

/// Sign-extends 16 int8 lanes to int32. Written as a lane loop because the generic SIMD conversion
/// initialisers are not inlined on Linux (a call per vector); LLVM turns this loop into vpmovsxbw, and a
/// product of two such vectors summed over even + odd lanes into vpmaddwd (checked in the assembly).
@inlinable @inline(__always)
func widen32(_ v: SIMD16<Int8>) -> SIMD16<Int32> {
    var r = SIMD16<Int32>()
    for i in 0..<16 { r[i] = Int32(v[i]) }
    return r
}

@inlinable @inline(__always)
func load16(_ p: UnsafePointer<Int8>) -> SIMD16<Int8> { UnsafeRawPointer(p).loadUnaligned(as: SIMD16<Int8>.self) }

/// 16 products summed pairwise into 8 int32 lanes (vpmaddwd). Exact: |x * w| <= 128 * 127.
@inlinable @inline(__always)
func madd(_ x: SIMD16<Int32>, _ w: SIMD16<Int32>) -> SIMD8<Int32> {
    let p = x &* w
    return p.evenHalf &+ p.oddHalf
}

/// Integer GEMM of the simulated NPU: int8 activations x int8 or packed int4 weights -> int32 accumulators,
/// with the TFLite output stage fused (zero-point correction through weight row sums, int32 bias,
/// per-channel requantization under a RequantRule, output zero point, saturation to int8). Threads take
/// contiguous ranges of output channels; nothing is allocated inside the loops.
public enum IntGemm {
    /// What happens to each accumulator.
    public enum Output {
        /// Raw sums: out[i, j] = sum_k x[i, k] * w[j, k] (no zero point, no bias).
        case int32(UnsafeMutablePointer<Int32>)
        /// out[i, j] = sat8(zpOut + requant(sum_k (x - zpX) w + bias[j], M_j)), requant as `rule` defines it.
        case int8(UnsafeMutablePointer<Int8>, zpX: Int32, bias: UnsafePointer<Int32>?,
                  multipliers: UnsafePointer<Requant.Multiplier>, zpOut: Int32, rule: RequantRule)
        /// out[i, j] = sat16(requant(sum_k (x - zpX) w + bias[j], M_j)): a symmetric int16 output (zero point 0).
        case int16(UnsafeMutablePointer<Int16>, zpX: Int32, bias: UnsafePointer<Int32>?,
                   multipliers: UnsafePointer<Requant.Multiplier>, rule: RequantRule)
    }

    public static func run(x: UnsafePointer<Int8>, m: Int, k: Int, weights: NPUWeights, output: Output,
                           threads: Int = Parallel.defaultThreads) {
        precondition(k == weights.k, "IntGemm: x has \(k) columns, weights \(weights.k)")
        let n = weights.n
        guard m > 0, n > 0 else { return }
        weights.data.withUnsafeBufferPointer { wbuf in
            weights.rowSums.withUnsafeBufferPointer { sums in
                let wp = SendablePointer(UnsafeRawPointer(wbuf.baseAddress!).assumingMemoryBound(to: Int8.self))
                let xp = SendablePointer(x)
                let sp = SendablePointer(sums.baseAddress!)
                let out = OutputBox(output)
                let bpr = weights.bytesPerRow, int4 = weights.bits == 4
                // ~64K MACs per thread before splitting pays for the dispatch.
                let minCols = max(1, 65536 / max(1, m * k))
                Parallel.forRanges(n, threads: threads, minPerThread: minCols) { cols in
                    var i0 = 0
                    while i0 < m {
                        let rows = min(4, m - i0)
                        var j = cols.lowerBound
                        while j < cols.upperBound {
                            let pair = min(2, cols.upperBound - j)
                            var acc = (SIMD4<Int32>(), SIMD4<Int32>())
                            if int4 {
                                tileInt4(x: xp.base, i0: i0, rows: rows, k: k, w: wp.base, bpr: bpr, j: j, cols: pair, acc: &acc)
                            } else {
                                tileInt8(x: xp.base, i0: i0, rows: rows, k: k, w: wp.base, j: j, cols: pair, acc: &acc)
                            }
                            for c in 0..<pair {
                                let a = c == 0 ? acc.0 : acc.1
                                for r in 0..<rows { out.store(a[r], row: i0 + r, col: j + c, n: n, rowSum: sp[j + c]) }
                            }
                            j += pair
                        }
                        i0 += rows
                    }
                }
            }
        }
    }

    /// Sendable view of an Output (its pointers are written at disjoint (row, col) cells by each thread).
    struct OutputBox: @unchecked Sendable {
        let output: Output
        init(_ o: Output) { output = o }
        @inline(__always) func store(_ acc: Int32, row: Int, col: Int, n: Int, rowSum: Int32) {
            switch output {
            case .int32(let p):
                p[row * n + col] = acc
            case .int8(let p, let zpX, let bias, let mults, let zpOut, let rule):
                let a = acc &- zpX &* rowSum &+ (bias?[col] ?? 0)
                p[row * n + col] = Requant.requantizeToInt8(a, mults[col], zeroPoint: zpOut, rule: rule)
            case .int16(let p, let zpX, let bias, let mults, let rule):
                let a = acc &- zpX &* rowSum &+ (bias?[col] ?? 0)
                p[row * n + col] = Int16(clamping: Requant.apply(a, mults[col], rule: rule))
            }
        }
    }

    /// Up to 4 rows of x against up to 2 weight rows. Missing rows/columns repeat the last one (their results
    /// are discarded) so the SIMD body has a single shape.
    @inline(__always)
    static func tileInt8(x: UnsafePointer<Int8>, i0: Int, rows: Int, k: Int, w: UnsafePointer<Int8>, j: Int,
                         cols: Int, acc: inout (SIMD4<Int32>, SIMD4<Int32>)) {
        let x0 = x + i0 * k, x1 = x + (i0 + min(1, rows - 1)) * k
        let x2 = x + (i0 + min(2, rows - 1)) * k, x3 = x + (i0 + min(3, rows - 1)) * k
        let w0 = w + j * k, w1 = w + (j + cols - 1) * k
        var a00 = SIMD8<Int32>(), a01 = SIMD8<Int32>(), a02 = SIMD8<Int32>(), a03 = SIMD8<Int32>()
        var a10 = SIMD8<Int32>(), a11 = SIMD8<Int32>(), a12 = SIMD8<Int32>(), a13 = SIMD8<Int32>()
        var kk = 0
        while kk + 16 <= k {
            let v0 = widen32(load16(w0 + kk)), v1 = widen32(load16(w1 + kk))
            let u0 = widen32(load16(x0 + kk)), u1 = widen32(load16(x1 + kk))
            let u2 = widen32(load16(x2 + kk)), u3 = widen32(load16(x3 + kk))
            a00 &+= madd(u0, v0); a01 &+= madd(u1, v0); a02 &+= madd(u2, v0); a03 &+= madd(u3, v0)
            a10 &+= madd(u0, v1); a11 &+= madd(u1, v1); a12 &+= madd(u2, v1); a13 &+= madd(u3, v1)
            kk += 16
        }
        var r0 = SIMD4<Int32>(a00.wrappedSum(), a01.wrappedSum(), a02.wrappedSum(), a03.wrappedSum())
        var r1 = SIMD4<Int32>(a10.wrappedSum(), a11.wrappedSum(), a12.wrappedSum(), a13.wrappedSum())
        while kk < k {
            let c0 = Int32(w0[kk]), c1 = Int32(w1[kk])
            let xs = SIMD4<Int32>(Int32(x0[kk]), Int32(x1[kk]), Int32(x2[kk]), Int32(x3[kk]))
            r0 &+= xs &* c0
            r1 &+= xs &* c1
            kk += 1
        }
        acc = (r0, r1)
    }

    /// As tileInt8 with packed int4 weights: each 16-byte group unpacks into weights [0, 16) (low nibbles,
    /// sign-extended by shifting left then arithmetically right) and [16, 32) (high nibbles).
    @inline(__always)
    static func tileInt4(x: UnsafePointer<Int8>, i0: Int, rows: Int, k: Int, w: UnsafePointer<Int8>, bpr: Int, j: Int,
                         cols: Int, acc: inout (SIMD4<Int32>, SIMD4<Int32>)) {
        let x0 = x + i0 * k, x1 = x + (i0 + min(1, rows - 1)) * k
        let x2 = x + (i0 + min(2, rows - 1)) * k, x3 = x + (i0 + min(3, rows - 1)) * k
        let w0 = w + j * bpr, w1 = w + (j + cols - 1) * bpr
        var a00 = SIMD8<Int32>(), a01 = SIMD8<Int32>(), a02 = SIMD8<Int32>(), a03 = SIMD8<Int32>()
        var a10 = SIMD8<Int32>(), a11 = SIMD8<Int32>(), a12 = SIMD8<Int32>(), a13 = SIMD8<Int32>()
        var kk = 0
        while kk + 32 <= k {
            let b0 = load16(w0 + kk / 2), b1 = load16(w1 + kk / 2)
            // Nibbles are extracted on 32-bit lanes (x86 has no byte shifts): the low one by shifting it to the
            // top and back, the high one by an arithmetic shift of the sign-extended byte.
            let v0 = widen32(b0), v1 = widen32(b1)
            let l0 = (v0 &<< 28) &>> 28, h0 = v0 &>> 4
            let l1 = (v1 &<< 28) &>> 28, h1 = v1 &>> 4
            var u0 = widen32(load16(x0 + kk)), u1 = widen32(load16(x1 + kk))
            var u2 = widen32(load16(x2 + kk)), u3 = widen32(load16(x3 + kk))
            a00 &+= madd(u0, l0); a01 &+= madd(u1, l0); a02 &+= madd(u2, l0); a03 &+= madd(u3, l0)
            a10 &+= madd(u0, l1); a11 &+= madd(u1, l1); a12 &+= madd(u2, l1); a13 &+= madd(u3, l1)
            u0 = widen32(load16(x0 + kk + 16)); u1 = widen32(load16(x1 + kk + 16))
            u2 = widen32(load16(x2 + kk + 16)); u3 = widen32(load16(x3 + kk + 16))
            a00 &+= madd(u0, h0); a01 &+= madd(u1, h0); a02 &+= madd(u2, h0); a03 &+= madd(u3, h0)
            a10 &+= madd(u0, h1); a11 &+= madd(u1, h1); a12 &+= madd(u2, h1); a13 &+= madd(u3, h1)
            kk += 32
        }
        var r0 = SIMD4<Int32>(a00.wrappedSum(), a01.wrappedSum(), a02.wrappedSum(), a03.wrappedSum())
        var r1 = SIMD4<Int32>(a10.wrappedSum(), a11.wrappedSum(), a12.wrappedSum(), a13.wrappedSum())
        while kk < k {
            let r = kk % 32, byte = kk / 32 * 16 + r % 16
            let c0 = nibble(w0[byte], high: r >= 16), c1 = nibble(w1[byte], high: r >= 16)
            let xs = SIMD4<Int32>(Int32(x0[kk]), Int32(x1[kk]), Int32(x2[kk]), Int32(x3[kk]))
            r0 &+= xs &* c0
            r1 &+= xs &* c1
            kk += 1
        }
        acc = (r0, r1)
    }

    @inline(__always) static func nibble(_ b: Int8, high: Bool) -> Int32 {
        Int32(high ? b >> 4 : (b << 4) >> 4)
    }
}

/// Scalar integer reference for the NPU's fully connected layer, written directly from the TFLite definition
/// (acc = sum (x - zp_x) * w + bias in int32, then requantize with the independent RequantReference
/// arithmetic of the rule). Shares no code with IntGemm.
public enum IntReference {
    /// sum_k (x[i, k] - zpX) * w[j, k] + bias[j], int32 wrapping.
    public static func accumulators(x: [Int8], w: [Int8], m: Int, k: Int, n: Int, zpX: Int32, bias: [Int32]?) -> [Int32] {
        var out = [Int32](repeating: 0, count: m * n)
        for i in 0..<m {
            for j in 0..<n {
                var acc: Int32 = bias?[j] ?? 0
                for kk in 0..<k { acc = acc &+ (Int32(x[i * k + kk]) - zpX) &* Int32(w[j * k + kk]) }
                out[i * n + j] = acc
            }
        }
        return out
    }

    public static func fullyConnected(x: [Int8], w: [Int8], m: Int, k: Int, n: Int, zpX: Int32, bias: [Int32]?,
                                      multipliers: [Requant.Multiplier], zpOut: Int32, rule: RequantRule) -> [Int8] {
        accumulators(x: x, w: w, m: m, k: k, n: n, zpX: zpX, bias: bias).enumerated().map { idx, acc in
            let v = Int64(RequantReference.apply(acc, multipliers[idx % n], rule: rule)) + Int64(zpOut)
            return Int8(max(-128, min(127, v)))
        }
    }

    /// The same layer with a symmetric int16 output: the requantized value saturated to [-32768, 32767].
    public static func fullyConnected16(x: [Int8], w: [Int8], m: Int, k: Int, n: Int, zpX: Int32, bias: [Int32]?,
                                        multipliers: [Requant.Multiplier], rule: RequantRule) -> [Int16] {
        accumulators(x: x, w: w, m: m, k: k, n: n, zpX: zpX, bias: bias).enumerated().map { idx, acc in
            let v = Int64(RequantReference.apply(acc, multipliers[idx % n], rule: rule))
            return Int16(max(-32768, min(32767, v)))
        }
    }
}
