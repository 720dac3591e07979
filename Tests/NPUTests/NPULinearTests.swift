import Foundation
import Kernels
import NPU
import TensorCore
import TestSupport
import XCTest

final class NPULinearTests: XCTestCase {
    /// The layer's float output is exactly dequant(scalar integer reference(quant(x))), under every rule.
    func testLinearEqualsScalarPipeline() throws {
        var rng = SplitMix64(seed: 21)
        let m = 9, k = 70, n = 33
        let x = rng.floats(m * k, in: -2...3), w = rng.floats(n * k, in: -0.5...0.5), b = rng.floats(n, in: -1...1)
        for bits in [8, 4] {
            for (g, rule) in [WeightGranularity.perChannel, .perTensor].flatMap({ g in RequantRule.allCases.map { (g, $0) } }) {
                let weights = try w.withUnsafeBufferPointer { try NPUWeights(weight: .f32($0.baseAddress!), n: n, k: k, bits: bits, granularity: g) }
                var yf = [Float](repeating: 0, count: m * n)
                Reference.matmulNT(x: x, m: m, k: k, weight: .f32(w), n: n, bias: b, out: &yf)
                let inP = Int8AffineParams.fromRange(min: -2, max: 3), outP = Int8AffineParams.fromRange(min: yf.min()!, max: yf.max()!)
                let layer = try NPULinear(name: "l", weights: weights, bias: b, input: inP, output: outP, rule: rule)
                var y = [Float](repeating: 0, count: m * n)
                layer.forward(x: x, rows: m, out: &y, threads: 2)
                let xq = x.map { inP.quantize($0) }
                let yq = IntReference.fullyConnected(x: xq, w: weights.unpacked(), m: m, k: k, n: n, zpX: inP.zeroPoint,
                                                     bias: layer.bias, multipliers: layer.multipliers, zpOut: outP.zeroPoint, rule: rule)
                XCTAssertEqual(y, yq.map { outP.dequantize($0) }, "int\(bits) \(g) \(rule)")
                // and it approximates the float layer (SQNR of a W8A8 layer on uniform data is ~30 dB; W4 ~15 dB)
                let e = ErrorMetrics(reference: yf, approximation: y)
                XCTAssertGreaterThan(e.sqnrDB, bits == 8 ? 25 : 12, "int\(bits) \(g): \(e)")
                XCTAssertGreaterThan(e.cosine, bits == 8 ? 0.99 : 0.95)
            }
        }
    }

    /// A 9 x 70 -> 33 layer: inputs in [-2, 3], its int8 per-channel weights, bias, and the float output.
    static func int8Layer(seed: UInt64) throws
        -> (m: Int, k: Int, n: Int, x: [Float], b: [Float], weights: NPUWeights, yf: [Float]) {
        var rng = SplitMix64(seed: seed)
        let m = 9, k = 70, n = 33
        let x = rng.floats(m * k, in: -2...3), w = rng.floats(n * k, in: -0.5...0.5), b = rng.floats(n, in: -1...1)
        let weights = try w.withUnsafeBufferPointer { try NPUWeights(weight: .f32($0.baseAddress!), n: n, k: k, bits: 8, granularity: .perChannel) }
        var yf = [Float](repeating: 0, count: m * n)
        Reference.matmulNT(x: x, m: m, k: k, weight: .f32(w), n: n, bias: b, out: &yf)
        return (m, k, n, x, b, weights, yf)
    }

    /// An int16 output: the layer returns scale16 x the scalar reference's int16 codes, and those are the real
    /// accumulator s_in s_w (sum (x_q - zp) w_q + bias) rounded to the int16 grid: within half a step for the
    /// single-rounding rules, a step for the double-rounding ones (0.5 + 0.5 / 2^shift), where the int8 output is
    /// 256 times coarser.
    func testInt16OutputIsTheAccumulatorOnAFinerGrid() throws {
        let (m, k, n, x, b, weights, yf) = try Self.int8Layer(seed: 22)
        let amax = yf.map(abs).max()!
        let inP = Int8AffineParams.fromRange(min: -2, max: 3), outP = Int8AffineParams.fromRange(min: yf.min()!, max: yf.max()!)
        let s16 = amax / 32767
        let xq = x.map { inP.quantize($0) }, wq = weights.unpacked()
        for rule in RequantRule.allCases {
            let layer = try NPULinear(name: "l", weights: weights, bias: b, input: inP, output: outP, outputFormat: .int16(scale: s16), rule: rule)
            var y = [Float](repeating: 0, count: m * n)
            layer.forward(x: x, rows: m, out: &y, threads: 2)
            let codes = IntReference.fullyConnected16(x: xq, w: wq, m: m, k: k, n: n, zpX: inP.zeroPoint, bias: layer.bias,
                                                      multipliers: layer.multipliers, rule: rule)
            XCTAssertEqual(y, codes.map { s16 * Float($0) }, "\(rule)")
            let acc = IntReference.accumulators(x: xq, w: wq, m: m, k: k, n: n, zpX: inP.zeroPoint, bias: layer.bias)
            for i in 0..<(m * n) {
                let real = Double(inP.scale) * Double(weights.scales[i % n]) * Double(acc[i])
                let steps = rule == .tfliteReference || rule == .xnnpack ? 0.5001 : 1.0001
                XCTAssertEqual(Double(y[i]), real, accuracy: steps * Double(s16) + 1e-6 * abs(real), "\(rule) \(i)")
            }
        }
    }

    /// Per-channel int8 outputs: channel j is scales[j] x the scalar reference's int8 codes (zero point 0, the
    /// multiplier formed with scales[j]), within half a step of the real accumulator for the single-rounding rules.
    func testPerChannelInt8Output() throws {
        let (m, k, n, x, b, weights, yf) = try Self.int8Layer(seed: 23)
        // Channel maxima over the rows; every third channel's scale halved so that some codes saturate.
        let scales = (0..<n).map { j in (0..<m).map { abs(yf[$0 * n + j]) }.max()! / 127 * (j % 3 == 0 ? 0.5 : 1) }
        let inP = Int8AffineParams.fromRange(min: -2, max: 3), outP = Int8AffineParams.fromRange(min: yf.min()!, max: yf.max()!)
        let xq = x.map { inP.quantize($0) }, wq = weights.unpacked()
        for rule in [RequantRule.tfliteReference, .xnnpack] {
            let layer = try NPULinear(name: "l", weights: weights, bias: b, input: inP, output: outP,
                                      outputFormat: .int8PerChannel(scales: scales), rule: rule)
            var y = [Float](repeating: 0, count: m * n)
            layer.forward(x: x, rows: m, out: &y, threads: 2)
            let codes = IntReference.fullyConnected(x: xq, w: wq, m: m, k: k, n: n, zpX: inP.zeroPoint, bias: layer.bias,
                                                    multipliers: layer.multipliers, zpOut: 0, rule: rule)
            XCTAssertEqual(y, codes.enumerated().map { scales[$0.offset % n] * Float($0.element) }, "\(rule)")
            XCTAssertTrue(codes.contains(127) || codes.contains(-128), "some channel saturates")
            let acc = IntReference.accumulators(x: xq, w: wq, m: m, k: k, n: n, zpX: inP.zeroPoint, bias: layer.bias)
            for i in 0..<(m * n) {
                let j = i % n, real = Double(inP.scale) * Double(weights.scales[j]) * Double(acc[i])
                let s = Double(scales[j]), clamped = min(max(real, -128 * s), 127 * s)
                XCTAssertEqual(Double(y[i]), clamped, accuracy: 0.5001 * s + 1e-6 * abs(real), "\(rule) \(i)")
            }
        }
        XCTAssertThrowsError(try NPULinear(name: "l", weights: weights, bias: b, input: inP, output: outP,
                                           outputFormat: .int8PerChannel(scales: [1, 2])))
    }

    func testErrorMetricsHandComputed() {
        // ref (3, 4), approx (3, 3): MSE = 1/2, SQNR = 10 log10(25 / 1) = 13.979 dB, PSNR = 10 log10(16 / 0.5) = 15.051 dB,
        // cosine = 21 / (5 * sqrt 18).
        let e = ErrorMetrics(reference: [3, 4], approximation: [3, 3])
        XCTAssertEqual(e.mse, 0.5)
        XCTAssertEqual(e.sqnrDB, 10 * log10(25.0), accuracy: 1e-12)
        XCTAssertEqual(e.psnrDB, 10 * log10(32.0), accuracy: 1e-12)
        XCTAssertEqual(e.cosine, 21 / (5 * 18.0.squareRoot()), accuracy: 1e-12)
        var acc = ErrorAccumulator()
        acc.add(reference: [3], approximation: [3], count: 1)
        acc.add(reference: [4], approximation: [3], count: 1)
        XCTAssertEqual(acc.metrics, e)
    }
}
