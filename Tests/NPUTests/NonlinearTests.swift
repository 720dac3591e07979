import Foundation
import Kernels
import NPU
import TensorCore
import TestSupport
import XCTest

/// Both modes against the float reference kernels (Kernels.Reference), with bounds derived from each mode's
/// precision: fp16 ~ 2^-11 relative per op; LUT modes from their 8-bit input steps (stated per test).
final class NonlinearTests: XCTestCase {
    func isFP16(_ v: [Float]) -> Bool { v.allSatisfy { Float(Float16($0)) == $0 } }

    func testSoftmaxBothModes() {
        var rng = SplitMix64(seed: 11)
        for cols in [1, 7, 33, 172, 513] {
            let x = rng.floats(3 * cols, in: -4...4)
            var ref = x
            ref.withUnsafeMutableBufferPointer { Reference.softmax($0.baseAddress!, rows: 3, cols: cols) }
            for mode in NonlinearMode.allCases {
                let npu = NPUNonlinear(mode: mode)
                var y = x
                y.withUnsafeMutableBufferPointer { npu.softmax($0.baseAddress!, rows: 3, cols: cols) }
                // fp16: a few fp16 roundings of values <= 1. LUT: score step <= 11.09/255 = 0.0435 -> exp off by
                // <= 2.2% of p, plus output rounding to 1/256.
                let tol: Float = mode == .fp16 ? 2e-3 : 0.022 * 1 + 1.0 / 256
                XCTAssertLessThanOrEqual(maxAbsDiff(y, ref), tol, "\(mode) cols=\(cols)")
                XCTAssertTrue(isFP16(y))
                XCTAssertEqual(npu.counter.calls("softmax", unit: mode == .fp16 ? "fp16" : "int-lut"), 1)
            }
        }
        // Two equal scores: the exp table gives 2^15 each and the uint8 output is exactly 128/256.
        var two: [Float] = [0.3, 0.3]
        two.withUnsafeMutableBufferPointer { NPUNonlinear(mode: .lut).softmax($0.baseAddress!, rows: 1, cols: 2) }
        XCTAssertEqual(two, [0.5, 0.5])
    }

    /// A rotated model's online Hadamard on the fp16 unit, in both modes: each output is the exact (Double) product
    /// of the fp16-rounded row with H_n/√n (Hadamard.signMatrix, the dense definition), rounded once to fp16. The
    /// unit sums in fp32, so an output may sit one fp16 step away where the fp32 sum crossed a rounding boundary.
    func testHadamardOnTheFP16Unit() throws {
        var rng = SplitMix64(seed: 13)
        for n in [24, 172] {
            let rows = 5
            let x = rng.floats(rows * n, in: -3...3)
            let h = try XCTUnwrap(Hadamard.signMatrix(order: n))
            let scale = 1 / Double(n).squareRoot()
            var want = [Float](repeating: 0, count: rows * n)
            for r in 0..<rows {
                for j in 0..<n {
                    var acc = 0.0
                    for i in 0..<n { acc += Double(Float(Float16(x[r * n + i]))) * Double(h[i * n + j]) }
                    want[r * n + j] = Float(Float16(acc * scale))
                }
            }
            var plain = x
            try plain.withUnsafeMutableBufferPointer { try Hadamard.transform($0.baseAddress!, rows: rows, n: n) }
            for mode in NonlinearMode.allCases {
                let npu = NPUNonlinear(mode: mode)
                var y = x
                y.withUnsafeMutableBufferPointer { npu.hadamard($0.baseAddress!, rows: rows, n: n, threads: 2) }
                XCTAssertTrue(isFP16(y), "\(mode) n=\(n)")
                var exact = 0
                for i in y.indices {
                    let step = Float(Float16(want[i]).ulp)
                    XCTAssertLessThanOrEqual(abs(y[i] - want[i]), step, "\(mode) n=\(n) [\(i)]: \(y[i]) vs \(want[i])")
                    if y[i] == want[i] { exact += 1 }
                }
                XCTAssertGreaterThanOrEqual(Double(exact), 0.98 * Double(y.count), "\(mode) n=\(n): \(exact) of \(y.count) exact")
                XCTAssertNotEqual(y, plain, "the fp16 unit rounds; the float transform does not")
                XCTAssertEqual(npu.counter.calls("hadamard", unit: "fp16"), 1)
            }
        }
    }

    func testActivationsBothModes() {
        var rng = SplitMix64(seed: 12)
        let n = 513
        let g = rng.floats(n, in: -6...6), u = rng.floats(n, in: -1...1)
        var refSwiglu = g
        refSwiglu.withUnsafeMutableBufferPointer { Reference.swiglu(gate: $0.baseAddress!, up: u, count: n) }
        var refGelu = g
        refGelu.withUnsafeMutableBufferPointer { Reference.gelu($0.baseAddress!, count: n) }
        for mode in NonlinearMode.allCases {
            let npu = NPUNonlinear(mode: mode)
            var y = g
            y.withUnsafeMutableBufferPointer { npu.swiglu(gate: $0.baseAddress!, up: u, count: n) }
            // fp16: |silu| <= 6, a few roundings of 2^-11 relative. LUT: input step 12/255 = 0.047, |silu'| <= 1.1,
            // so <= 0.026 before the |up| <= 1 product, plus fp16 rounding.
            XCTAssertLessThanOrEqual(maxAbsDiff(y, refSwiglu), mode == .fp16 ? 8e-3 : 0.03, "swiglu \(mode)")
            var z = g
            z.withUnsafeMutableBufferPointer { npu.gelu($0.baseAddress!, count: n) }
            XCTAssertLessThanOrEqual(maxAbsDiff(z, refGelu), mode == .fp16 ? 8e-3 : 0.03, "gelu \(mode)")
            XCTAssertTrue(isFP16(y) && isFP16(z))
        }
    }

    func testNormsBothModes() {
        var rng = SplitMix64(seed: 13)
        let rows = 4, dim = 172
        let x = rng.floats(rows * dim, in: -3...3), w = rng.floats(dim, in: 0.5...1.5), b = rng.floats(dim, in: -0.2...0.2)
        var ref = [Float](repeating: 0, count: rows * dim), refLN = ref
        Reference.rmsNorm(x: x, weight: w, rows: rows, dim: dim, eps: 1e-5, out: &ref)
        Reference.layerNorm(x: x, gamma: w, beta: b, rows: rows, dim: dim, eps: 1e-5, out: &refLN)
        for mode in NonlinearMode.allCases {
            let npu = NPUNonlinear(mode: mode)
            var y = [Float](repeating: 0, count: rows * dim), z = y
            npu.rmsNorm(x: x, weight: w, rows: rows, dim: dim, eps: 1e-5, out: &y)
            npu.layerNorm(x: x, gamma: w, beta: b, rows: rows, dim: dim, eps: 1e-5, out: &z)
            // fp16: outputs up to ~3 x 1.5 -> 2^-11 relative x a few ops. LUT: int8 input step max|x|/254 ~ 0.012,
            // divided by rms ~1.7 and times |w| <= 1.5 -> ~0.011, plus fp16 rounding.
            let tol: Float = mode == .fp16 ? 1e-2 : 2e-2
            XCTAssertLessThanOrEqual(maxAbsDiff(y, ref), tol, "rms \(mode)")
            XCTAssertLessThanOrEqual(maxAbsDiff(z, refLN), tol, "layer \(mode)")
        }
    }

    func testIntegerRsqrt() {
        var rng = SplitMix64(seed: 14)
        var values: [Int64] = [1, 2, 3, 4, 255, 256, 1 << 20, (1 << 30) - 1, 1 << 30, (1 << 32) - 1, 1 << 32, 1 << 40]
        for _ in 0..<2000 { values.append(Int64.random(in: 1...(Int64(1) << 44), using: &rng)) }
        for v in values {
            let exact = 1073741824.0 / Double(v).squareRoot()
            let got = Double(IntRsqrt.rsqrtQ30(v))
            // the result is an integer: allow its rounding plus 1e-7 relative
            XCTAssertLessThanOrEqual(abs(got - exact), 0.51 + exact * 1e-7, "v=\(v)")
        }
        XCTAssertEqual(Double(IntRsqrt.rsqrtQ30(1)), Double(1 << 30), accuracy: 1)
        XCTAssertEqual(Double(IntRsqrt.rsqrtQ30(4)), Double(1 << 29), accuracy: 1)
    }

    func testRopeAndResidualOnFP16Unit() {
        var rng = SplitMix64(seed: 15)
        let rows = 3, heads = 2, hd = 8
        let x = rng.floats(rows * heads * hd, in: -1...1)
        let pos: [Int32] = [0, 5, 300]
        var ref = x
        ref.withUnsafeMutableBufferPointer { Reference.rope($0.baseAddress!, rows: rows, heads: heads, headDim: hd, positions: pos, theta: 10000) }
        for mode in NonlinearMode.allCases {
            let npu = NPUNonlinear(mode: mode)
            var y = x
            y.withUnsafeMutableBufferPointer { npu.rope($0.baseAddress!, rows: rows, heads: heads, headDim: hd, positions: pos,
                                                                 frequencies: RopeTable.frequencies(headDim: hd, theta: 10000)) }
            XCTAssertLessThanOrEqual(maxAbsDiff(y, ref), 3e-3)
            var a: [Float] = [1, 2048, 0.1]
            a.withUnsafeMutableBufferPointer { npu.residualAdd($0.baseAddress!, [1, 1, 0.2], count: 3) }
            XCTAssertEqual(a, [2, 2048, Float(Float16(Float(Float16(0.1)) + Float(Float16(0.2))))])  // 2049 rounds to 2048 in fp16
            XCTAssertEqual(npu.counter.calls("rope", unit: "fp16"), 1)
            XCTAssertEqual(npu.counter.calls("residual_add", unit: "fp16"), 1)
        }
    }

    /// Causal attention of a Llama block on the NPU with a sliding window (prefill and decode after a cache):
    /// against Reference.attention with the same window, within the bounds of NPUBertTests'
    /// testAttentionAgainstDoubleReference (fp16 0.05, LUT 0.1, at most 24 keys here); the softmax counts only
    /// the keys inside the window.
    func testCausalAttentionWithWindow() {
        var rng = SplitMix64(seed: 16)
        let nHeads = 4, nKV = 2, hd = 16
        for (tokens, start) in [(9, 0), (1, 23), (6, 12)] {
            let total = start + tokens
            let q = rng.floats(tokens * nHeads * hd, in: -2...2)
            let k = rng.floats(total * nKV * hd, in: -2...2), v = rng.floats(total * nKV * hd, in: -1...1)
            for window in [1, 4, 7, 100] {
                var ref = [Float](repeating: 0, count: tokens * nHeads * hd)
                Reference.attention(q: q, keys: k, values: v, tokens: tokens, start: start, nHeads: nHeads, nKVHeads: nKV,
                                    headDim: hd, window: window, out: &ref)
                var keys = 0
                for p in start..<total { keys += min(p + 1, window) }
                for mode in NonlinearMode.allCases {
                    let ops = NPUNonlinearOps(npu: NPUNonlinear(mode: mode))
                    var out = [Float](repeating: .nan, count: tokens * nHeads * hd)
                    ops.attention(q: q, keys: k, values: v, tokens: tokens, start: start, nHeads: nHeads, nKVHeads: nKV,
                                  headDim: hd, window: window, out: &out, threads: 2)
                    XCTAssertLessThanOrEqual(maxAbsDiff(out, ref), mode == .fp16 ? 0.05 : 0.1,
                                             "\(mode) t \(tokens) s \(start) w \(window)")
                    XCTAssertEqual(ops.npu.counter.entries.first { $0.op == "softmax" }?.elements, nHeads * keys)
                }
            }
        }
    }
}
