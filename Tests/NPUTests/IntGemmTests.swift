import Foundation
import Kernels
import NPU
import TensorCore
import TestSupport
import XCTest

final class IntGemmTests: XCTestCase {
    /// Runs the fast kernel's fused int8 output stage.
    func fastFC(x: [Int8], m: Int, k: Int, weights: NPUWeights, zpX: Int32, bias: [Int32]?,
                mults: [Requant.Multiplier], zpOut: Int32, threads: Int, rule: RequantRule) -> [Int8] {
        var out = [Int8](repeating: 0, count: m * weights.n)
        x.withUnsafeBufferPointer { xp in
            mults.withUnsafeBufferPointer { mp in
                out.withUnsafeMutableBufferPointer { op in
                    if let bias {
                        bias.withUnsafeBufferPointer { bp in
                            IntGemm.run(x: xp.baseAddress!, m: m, k: k, weights: weights,
                                        output: .int8(op.baseAddress!, zpX: zpX, bias: bp.baseAddress!,
                                                      multipliers: mp.baseAddress!, zpOut: zpOut, rule: rule), threads: threads)
                        }
                    } else {
                        IntGemm.run(x: xp.baseAddress!, m: m, k: k, weights: weights,
                                    output: .int8(op.baseAddress!, zpX: zpX, bias: nil, multipliers: mp.baseAddress!,
                                                  zpOut: zpOut, rule: rule), threads: threads)
                    }
                }
            }
        }
        return out
    }

    func fastFC16(x: [Int8], m: Int, k: Int, weights: NPUWeights, zpX: Int32, bias: [Int32],
                  mults: [Requant.Multiplier], threads: Int, rule: RequantRule) -> [Int16] {
        var out = [Int16](repeating: 0, count: m * weights.n)
        x.withUnsafeBufferPointer { xp in
            mults.withUnsafeBufferPointer { mp in
                bias.withUnsafeBufferPointer { bp in
                    out.withUnsafeMutableBufferPointer { op in
                        IntGemm.run(x: xp.baseAddress!, m: m, k: k, weights: weights,
                                    output: .int16(op.baseAddress!, zpX: zpX, bias: bp.baseAddress!, multipliers: mp.baseAddress!,
                                                   rule: rule), threads: threads)
                    }
                }
            }
        }
        return out
    }

    /// The int16 output stage against the scalar reference, every rule, int8 and int4 weights, with multipliers
    /// large enough that some outputs saturate at -32768 / 32767.
    func testInt16OutputBitExact() throws {
        var rng = SplitMix64(seed: 7)
        var saturated = 0, checked = 0
        for bits in [8, 4] {
            for (m, k, n) in [(1, 64, 7), (7, 172, 33), (33, 513, 17)] {
                let c = try randomCase(&rng, m: m, k: k, n: n, bits: bits)
                let mults = (0..<n).map { _ -> Requant.Multiplier in
                    let f = Float.random(in: 1e-4...0.25, using: &rng)
                    var q = Requant.quantizeMultiplier(Double(f))
                    q.floatScale = f
                    return q
                }
                for rule in RequantRule.allCases {
                    let ref = IntReference.fullyConnected16(x: c.x, w: c.w, m: m, k: k, n: n, zpX: c.zpX, bias: c.bias,
                                                            multipliers: mults, rule: rule)
                    XCTAssertEqual(fastFC16(x: c.x, m: m, k: k, weights: c.weights, zpX: c.zpX, bias: c.bias, mults: mults,
                                            threads: 2, rule: rule), ref, "int\(bits) m=\(m) k=\(k) n=\(n) \(rule)")
                    saturated += ref.filter { $0 == .min || $0 == .max }.count
                    checked += ref.count
                }
            }
        }
        XCTAssertGreaterThan(saturated, 0)
        XCTAssertLessThan(saturated, checked / 2)
    }

    func fastAcc(x: [Int8], m: Int, k: Int, weights: NPUWeights, threads: Int) -> [Int32] {
        var out = [Int32](repeating: 0, count: m * weights.n)
        x.withUnsafeBufferPointer { xp in
            out.withUnsafeMutableBufferPointer { op in
                IntGemm.run(x: xp.baseAddress!, m: m, k: k, weights: weights, output: .int32(op.baseAddress!), threads: threads)
            }
        }
        return out
    }

    /// The Python re-implementation is gemmlowp's double rounding: the `gemmlowp` rule.
    func testFullyConnectedMatchesPythonFixture() throws {
        for c in TFLiteFixture.shared.fully_connected {
            let sIn = hexDouble(c.s_in), sOut = hexDouble(c.s_out), sW = c.s_w.map(hexDouble)
            let mults = (0..<c.n).map { Requant.quantizeMultiplier(sIn * sW[c.per_channel ? $0 : 0] / sOut) }
            XCTAssertEqual(mults.map(\.m0), c.m0, c.name)
            XCTAssertEqual(mults.map(\.shift), c.shift, c.name)
            let weights = try NPUWeights(quantized: c.w, n: c.n, k: c.k, bits: c.bits,
                                         granularity: c.per_channel ? .perChannel : .perTensor,
                                         scales: (0..<c.n).map { Float(sW[c.per_channel ? $0 : 0]) })
            XCTAssertEqual(weights.unpacked(), c.w, "\(c.name) pack/unpack")
            let ref = IntReference.accumulators(x: c.x, w: c.w, m: c.m, k: c.k, n: c.n, zpX: c.zp_x, bias: c.bias)
            XCTAssertEqual(ref, c.acc, "\(c.name) scalar accumulators vs numpy")
            XCTAssertEqual(IntReference.fullyConnected(x: c.x, w: c.w, m: c.m, k: c.k, n: c.n, zpX: c.zp_x, bias: c.bias,
                                                       multipliers: mults, zpOut: c.zp_out, rule: .gemmlowp), c.y, "\(c.name) scalar")
            for threads in [1, 2] {
                XCTAssertEqual(fastFC(x: c.x, m: c.m, k: c.k, weights: weights, zpX: c.zp_x, bias: c.bias, mults: mults,
                                      zpOut: c.zp_out, threads: threads, rule: .gemmlowp), c.y, "\(c.name) fast, \(threads) threads")
            }
        }
    }

    func randomCase(_ rng: inout SplitMix64, m: Int, k: Int, n: Int, bits: Int) throws
        -> (x: [Int8], w: [Int8], weights: NPUWeights, bias: [Int32], mults: [Requant.Multiplier], zpX: Int32, zpOut: Int32) {
        let lim: Int8 = bits == 8 ? 127 : 7
        let x = (0..<(m * k)).map { _ in Int8.random(in: -128...127, using: &rng) }
        var w = (0..<(n * k)).map { _ in Int8.random(in: -lim...lim, using: &rng) }
        if n * k > 3 { w[0] = lim; w[1] = -lim }  // extremes
        let weights = try NPUWeights(quantized: w, n: n, k: k, bits: bits, granularity: .perChannel,
                                     scales: [Float](repeating: 0.01, count: n))
        let bias = (0..<n).map { _ in Int32.random(in: -100_000...100_000, using: &rng) }
        let mults = (0..<n).map { _ -> Requant.Multiplier in
            let f = Float.random(in: 1e-6...0.05, using: &rng)
            var m = Requant.quantizeMultiplier(Double(f))
            m.floatScale = f  // read by the xnnpack rule only
            return m
        }
        return (x, w, weights, bias, mults, Int32.random(in: -128...127, using: &rng), Int32.random(in: -128...127, using: &rng))
    }

    func testRandomShapesBitExactInt8AndInt4() throws {
        var rng = SplitMix64(seed: 42)
        let sizes = [1, 7, 33, 172, 513]
        var checked = 0
        for bits in [8, 4] {
            for m in [1, 7, 33] {
                for k in sizes {
                    for n in [1, 7, 33, 172] where m * k * n <= 3_000_000 {
                        let c = try randomCase(&rng, m: m, k: k, n: n, bits: bits)
                        XCTAssertEqual(c.weights.unpacked(), c.w)
                        let ref = IntReference.accumulators(x: c.x, w: c.w, m: m, k: k, n: n, zpX: 0, bias: nil)
                        XCTAssertEqual(fastAcc(x: c.x, m: m, k: k, weights: c.weights, threads: 2), ref,
                                       "int\(bits) acc m=\(m) k=\(k) n=\(n)")
                        for rule in RequantRule.allCases {
                            let refY = IntReference.fullyConnected(x: c.x, w: c.w, m: m, k: k, n: n, zpX: c.zpX, bias: c.bias,
                                                                   multipliers: c.mults, zpOut: c.zpOut, rule: rule)
                            let y = fastFC(x: c.x, m: m, k: k, weights: c.weights, zpX: c.zpX, bias: c.bias, mults: c.mults,
                                           zpOut: c.zpOut, threads: 2, rule: rule)
                            XCTAssertEqual(y, refY, "int\(bits) fc m=\(m) k=\(k) n=\(n) \(rule)")
                        }
                        checked += 1
                    }
                }
            }
        }
        XCTAssertGreaterThan(checked, 100)
        // A larger shape exercising the thread split (n=513 with m=172).
        let c = try randomCase(&rng, m: 172, k: 513, n: 33, bits: 8)
        XCTAssertEqual(fastAcc(x: c.x, m: 172, k: 513, weights: c.weights, threads: 2),
                       IntReference.accumulators(x: c.x, w: c.w, m: 172, k: 513, n: 33, zpX: 0, bias: nil))
    }

    func testAccumulatorExtremes() throws {
        // All -128 inputs against all 127 weights: the largest magnitude sum an int8 layer can produce.
        let k = 513, n = 3
        let x = [Int8](repeating: -128, count: k)
        let w = [Int8](repeating: 127, count: n * k)
        let weights = try NPUWeights(quantized: w, n: n, k: k, bits: 8, granularity: .perTensor,
                                     scales: [Float](repeating: 1, count: n))
        XCTAssertEqual(fastAcc(x: x, m: 1, k: k, weights: weights, threads: 1), [Int32](repeating: -128 * 127 * 513, count: n))
    }

    func testWeightQuantization() throws {
        var rng = SplitMix64(seed: 3)
        let n = 5, k = 70
        let wf = rng.floats(n * k, in: -2...2)
        for bits in [8, 4] {
            for g in [WeightGranularity.perChannel, .perTensor] {
                let q = try wf.withUnsafeBufferPointer { try NPUWeights(weight: .f32($0.baseAddress!), n: n, k: k, bits: bits, granularity: g) }
                let deq = q.dequantized()
                let qmax: Float = bits == 8 ? 127 : 7
                for j in 0..<n {
                    let rowMax = (0..<k).map { abs(wf[j * k + $0]) }.max()!
                    let s = g == .perChannel ? rowMax / qmax : wf.map(abs).max()! / qmax
                    XCTAssertEqual(q.scales[j], s, accuracy: s * 1e-6)
                    for i in 0..<k { XCTAssertLessThanOrEqual(abs(deq[j * k + i] - wf[j * k + i]), s / 2 * 1.0001) }
                }
                XCTAssertEqual(q.unpacked().map { Int($0) }.max()!, Int(qmax))
            }
        }
        XCTAssertThrowsError(try wf.withUnsafeBufferPointer { try NPUWeights(weight: .f32($0.baseAddress!), n: n, k: k, bits: 3, granularity: .perTensor) })
    }
}
