import Foundation
import NPU
import TensorCore
import TestSupport
import XCTest

/// Fixture written by Tools/reference_tflite_requant.py (an independent Python re-implementation of TFLite's
/// QuantizeMultiplier / MultiplyByQuantizedMultiplier and gemmlowp's fixed-point functions): the `gemmlowp` rule.
/// The other rules are checked against TFLite itself in TFLiteKernelTests.
struct TFLiteFixture: Decodable {
    struct QM: Decodable { let m: String; let m0: Int32; let shift: Int }
    struct MBQM: Decodable { let x: Int32; let m0: Int32; let shift: Int; let srdhm: Int32; let out: Int32 }
    struct RDBPOT: Decodable { let x: Int32; let e: Int; let out: Int32 }
    struct RQ: Decodable { let acc: Int32; let m: String; let m0: Int32; let shift: Int; let zp: Int32; let out: Int8 }
    struct FC: Decodable {
        let name: String; let m: Int; let k: Int; let n: Int; let bits: Int; let per_channel: Bool
        let x: [Int8]; let w: [Int8]; let bias: [Int32]; let zp_x: Int32; let zp_out: Int32
        let s_in: String; let s_out: String; let s_w: [String]; let acc: [Int32]; let m0: [Int32]; let shift: [Int]
        let y: [Int8]
    }
    let quantize_multiplier: [QM]
    let multiply_by_quantized_multiplier: [MBQM]
    let rounding_divide_by_pot: [RDBPOT]
    let requantize_int8: [RQ]
    let fully_connected: [FC]

    static let shared: TFLiteFixture = {
        let data = try! Data(contentsOf: URL(fileURLWithPath: Repo.path("Tests/NPUTests/Fixtures/tflite_requant.json")))
        return try! JSONDecoder().decode(TFLiteFixture.self, from: data)
    }()
}

func hexDouble(_ s: String) -> Double {
    guard let d = Double(s) else { XCTFail("bad hex float \(s)"); return .nan }
    return d
}

final class RequantTests: XCTestCase {
    let fx = TFLiteFixture.shared

    func testQuantizeMultiplierMatchesPython() {
        XCTAssertGreaterThan(fx.quantize_multiplier.count, 300)
        for c in fx.quantize_multiplier {
            let got = Requant.quantizeMultiplier(hexDouble(c.m))
            XCTAssertEqual(got, Requant.Multiplier(m0: c.m0, shift: c.shift), "multiplier \(c.m)")
        }
    }

    func testQuantizeMultiplierEdgeCases() {
        // q rounds up to 2^31: M0 becomes 2^30 and the shift grows.
        XCTAssertEqual(Requant.quantizeMultiplier(1 - pow(2, -33)), .init(m0: 1 << 30, shift: 1))
        XCTAssertEqual(Requant.quantizeMultiplier(1), .init(m0: 1 << 30, shift: 1))
        XCTAssertEqual(Requant.quantizeMultiplier(0.75), .init(m0: 1610612736, shift: 0))
        // Below 2^-32 the exponent is < -31: flushed to zero.
        XCTAssertEqual(Requant.quantizeMultiplier(pow(2, -33)), .init(m0: 0, shift: 0))
        XCTAssertEqual(Requant.quantizeMultiplier(0), .init(m0: 0, shift: 0))
        for v in [1e-6, 0.0123, 0.5, 3.7, 1000.0] {
            let m = Requant.quantizeMultiplier(v)
            XCTAssertGreaterThanOrEqual(m.m0, 1 << 30)
            XCTAssertEqual(m.realValue, v, accuracy: v * 1e-9)
        }
    }

    func testMultiplyByQuantizedMultiplierMatchesPythonAndReference() {
        for c in fx.multiply_by_quantized_multiplier {
            let shifted = c.x &<< Int32(max(c.shift, 0))
            XCTAssertEqual(Requant.saturatingRoundingDoublingHighMul(shifted, c.m0), c.srdhm, "srdhm \(c.x) \(c.m0) \(c.shift)")
            XCTAssertEqual(RequantReference.doublingHighMul(shifted, c.m0), c.srdhm, "ref srdhm \(c.x) \(c.m0)")
            XCTAssertEqual(Requant.multiplyByQuantizedMultiplier(c.x, c.m0, c.shift), c.out, "mbqm \(c.x) \(c.m0) \(c.shift)")
            XCTAssertEqual(RequantReference.multiply(c.x, c.m0, c.shift), c.out, "ref mbqm \(c.x) \(c.m0) \(c.shift)")
        }
    }

    func testRoundingDivideByPOTMatchesPython() {
        for c in fx.rounding_divide_by_pot {
            XCTAssertEqual(Requant.roundingDivideByPOT(c.x, c.e), c.out, "rdbpot \(c.x) \(c.e)")
            XCTAssertEqual(RequantReference.roundShift(c.x, c.e), c.out, "ref rdbpot \(c.x) \(c.e)")
        }
        // Ties go away from zero.
        XCTAssertEqual(Requant.roundingDivideByPOT(6, 2), 2)   // 1.5 -> 2
        XCTAssertEqual(Requant.roundingDivideByPOT(-6, 2), -2) // -1.5 -> -2
        XCTAssertEqual(Requant.roundingDivideByPOT(5, 2), 1)   // 1.25 -> 1
    }

    func testRequantizeToInt8MatchesPython() {
        for c in fx.requantize_int8 {
            let m = Requant.quantizeMultiplier(hexDouble(c.m))
            XCTAssertEqual(m, .init(m0: c.m0, shift: c.shift))
            XCTAssertEqual(Requant.requantizeToInt8(c.acc, m, zeroPoint: c.zp, rule: .gemmlowp), c.out, "requant \(c.acc) \(c.m)")
        }
    }

    /// Every rule's fast form (inlined by IntGemm) equals its independent scalar form, on random accumulators and
    /// multipliers and on the edges (0, +-1, int32 extremes, exact halves).
    func testRuleFastFormsEqualScalarForms() {
        var rng = SplitMix64(seed: 99)
        var cases: [(Int32, Requant.Multiplier)] = []
        for _ in 0..<200_000 {
            let f = Float(exp(Double.random(in: log(1e-9)...log(0.9), using: &rng)))
            var m = Requant.quantizeMultiplier(Double(f))
            m.floatScale = f
            let acc: Int32 = Bool.random(using: &rng) ? Int32.random(in: -200_000...200_000, using: &rng)
                : Int32.random(in: Int32.min...Int32.max, using: &rng)
            cases.append((acc, m))
        }
        // Exact halves: M = 2^-e makes acc = (2j + 1) * 2^(e-1) a tie for every rule.
        for e in 1...20 {
            let m = Requant.Multiplier(m0: 1 << 30, shift: 1 - e, floatScale: Float(pow(2.0, Double(-e))))
            for j in -40...40 { cases.append((Int32((2 * j + 1) << (e - 1)), m)) }
        }
        for acc in [0, 1, -1, Int32.max, Int32.min, Int32.min + 1] {
            for m in [Requant.Multiplier(m0: Int32.max, shift: 0, floatScale: 1), .init(m0: 1 << 30, shift: -31, floatScale: 1e-9),
                      .init(m0: 0, shift: 0), .init(m0: 1 << 30, shift: 2, floatScale: 2)] { cases.append((acc, m)) }
        }
        for rule in RequantRule.allCases {
            var bad = 0
            for (acc, m) in cases where Requant.apply(acc, m, rule: rule) != RequantReference.apply(acc, m, rule: rule) {
                if bad < 5 { XCTFail("\(rule) acc=\(acc) \(m): fast \(Requant.apply(acc, m, rule: rule)), scalar \(RequantReference.apply(acc, m, rule: rule))") }
                bad += 1
            }
            XCTAssertEqual(bad, 0, "\(rule)")
        }
    }

    /// By hand, M = 1/4 (m0 = 2^30, shift = -1) on 6, -6, 10, -10 (ties 1.5, -1.5, 2.5, -2.5), 5 and -7 (1.25,
    /// -1.75). The two-step rules first round x / 2 (5 -> 2.5 -> 3, -7 -> -3.5), then halve again: double rounding.
    func testRuleTiesByHand() {
        let m = Requant.Multiplier(m0: 1 << 30, shift: -1, floatScale: 0.25)
        func r(_ rule: RequantRule) -> [Int32] { [6, -6, 10, -10, 5, -7].map { Requant.apply($0, m, rule: rule) } }
        XCTAssertEqual(r(.tfliteReference), [2, -2, 3, -3, 1, -2])  // once, ties away from zero
        XCTAssertEqual(r(.tfliteOptimized), [2, -1, 3, -2, 2, -1])  // twice, ties upward
        XCTAssertEqual(r(.xnnpack), [2, -2, 2, -2, 1, -2])          // once, ties to even
        XCTAssertEqual(r(.gemmlowp), [2, -2, 3, -3, 2, -2])         // twice, ties away from zero
        for rule in RequantRule.allCases {
            XCTAssertEqual([6, -6, 10, -10, 5, -7].map { RequantReference.apply($0, m, rule: rule) }, r(rule), "\(rule) scalar")
        }
    }

    func testMultiplierFormationPerRule() {
        let sIn: Float = 0.0123, sW: Float = 0.00457, sOut: Float = 0.0931
        let dbl = Requant.quantizeMultiplier(Double(sIn) * Double(sW) / Double(sOut))
        let f32 = Requant.quantizeMultiplier(Double(sIn * sW) / Double(sOut))
        XCTAssertNotEqual(dbl, f32)  // these scales separate the two products
        for perTensor in [false, true] {
            XCTAssertEqual(Requant.multiplier(inputScale: sIn, weightScale: sW, outputScale: sOut, perTensor: perTensor, rule: .tfliteReference), dbl)
            XCTAssertEqual(Requant.multiplier(inputScale: sIn, weightScale: sW, outputScale: sOut, perTensor: perTensor, rule: .gemmlowp), dbl)
            let x = Requant.multiplier(inputScale: sIn, weightScale: sW, outputScale: sOut, perTensor: perTensor, rule: .xnnpack)
            XCTAssertEqual(x.floatScale, sIn * sW / sOut)
        }
        XCTAssertEqual(Requant.multiplier(inputScale: sIn, weightScale: sW, outputScale: sOut, perTensor: true, rule: .tfliteOptimized), f32)
        XCTAssertEqual(Requant.multiplier(inputScale: sIn, weightScale: sW, outputScale: sOut, perTensor: false, rule: .tfliteOptimized), dbl)
        // Single rounding caps the shift at 30.
        XCTAssertEqual(Requant.multiplier(inputScale: 1e6, weightScale: 1e6, outputScale: 1e-3, perTensor: false, rule: .tfliteReference),
                       .init(m0: Int32.max, shift: 30))
    }

    func testRuleNamesAndDefault() throws {
        XCTAssertEqual(RequantRule.default, .tfliteReference)
        XCTAssertEqual(NPUConfig().requant, .tfliteReference)
        for r in RequantRule.allCases { XCTAssertEqual(try RequantRule(parsing: r.rawValue, flag: "--requant"), r) }
        XCTAssertThrowsError(try RequantRule(parsing: "tflite", flag: "--requant")) { e in
            let s = "\(e)"
            XCTAssertTrue(s.contains("--requant") && s.contains("'tflite'") && s.contains("tflite-reference"), s)
            XCTAssertFalse(s.contains("\n"), s)
        }
        let c = try NPUConfig.parse(Data(#"{"requant": "xnnpack"}"#.utf8), source: "cfg.json")
        XCTAssertEqual(c.requant, .xnnpack)
        XCTAssertEqual(c.json["requant"] as? String, "xnnpack")
        XCTAssertEqual(NPUConfig().json["requant"] as? String, "tflite-reference")
        XCTAssertThrowsError(try NPUConfig.parse(Data(#"{"requant": "ruy"}"#.utf8), source: "cfg.json")) { e in
            XCTAssertTrue("\(e)".contains("requant") && "\(e)".contains("cfg.json"), "\(e)")
        }
    }

    func testActivationParamsFromRange() {
        let p = Int8AffineParams.fromRange(min: -1, max: 3)
        XCTAssertEqual(p.scale, 4 / 255, accuracy: 1e-9)
        XCTAssertEqual(p.zeroPoint, -64)  // round(-128 + 63.75)
        XCTAssertEqual(p.quantize(0), Int8(-64))
        XCTAssertEqual(p.dequantize(p.quantize(0)), 0)
        XCTAssertEqual(p.quantize(100), 127)
        XCTAssertEqual(p.quantize(-100), -128)
        XCTAssertEqual(p.quantize(.nan), -64)
        // An all-positive range is widened to include 0: zero point -128.
        XCTAssertEqual(Int8AffineParams.fromRange(min: 2, max: 5).zeroPoint, -128)
        XCTAssertEqual(Int8AffineParams.fromRange(min: -5, max: -2).zeroPoint, 127)
    }

    func testCalibrationMethods() throws {
        var rng = SplitMix64(seed: 7)
        var xs = rng.floats(20000, in: -1...1)
        xs[123] = 50  // one outlier
        let obs = RangeObserver(name: "t")
        obs.observe(xs)
        let mm = try obs.params(.minMax)
        XCTAssertEqual(mm.scale, 51 / 255, accuracy: 1e-3)
        let pc = try obs.params(.percentile(99.99))
        XCTAssertLessThan(pc.scale, 2.1 / 255)   // the outlier is clipped
        XCTAssertGreaterThan(pc.scale, 1.9 / 255)
        let ms = try obs.params(.mse)
        XCTAssertLessThan(ms.scale, mm.scale)
        // MSE-optimal must not be worse than minmax on the samples it scored.
        func mse(_ p: Int8AffineParams) -> Double { xs.reduce(0) { $0 + Double(($1 - p.dequantize(p.quantize($1))) * ($1 - p.dequantize(p.quantize($1)))) } }
        XCTAssertLessThanOrEqual(mse(ms), mse(mm))
        // Too few samples for a percentile: a clear error naming the tensor.
        let small = RangeObserver(name: "layers.0.q_proj.input")
        small.observe([1, 2, 3])
        XCTAssertThrowsError(try small.params(.percentile(99.99))) { e in
            XCTAssertTrue("\(e)".contains("layers.0.q_proj.input"), "\(e)")
            XCTAssertTrue("\(e)".contains("10000"), "\(e)")
        }
    }
}
