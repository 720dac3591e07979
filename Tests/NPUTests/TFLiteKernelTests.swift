import Foundation
import NPU
import TensorCore
import TestSupport
import XCTest

/// Outputs of TensorFlow Lite 2.21 itself (Tools/tflite_fixtures.py): int8 FULLY_CONNECTED layers run by its
/// reference kernels, its optimized kernels and its XNNPACK delegate on the same inputs.
struct TFLiteKernelFixture: Decodable {
    struct Layer: Decodable {
        let name: String
        let n: Int, k: Int, rows: Int
        let per_channel: Bool
        let activation: String
        let input_scale: String, input_zero_point: Int32
        let weight_scales: [String]
        let output_scale: String, output_zero_point: Int32
        let x: [Int], w: [Int], bias: [Int]
        let outputs: [String: [Int]]
    }
    let tensorflow_version: String
    let layers: [Layer]

    static let dir = "Tests/NPUTests/Fixtures/tflite"
    static let shared: (TFLiteKernelFixture, Data) = {
        let meta = try! Data(contentsOf: URL(fileURLWithPath: Repo.path(dir + "/layers.json")))
        let blob = try! Data(contentsOf: URL(fileURLWithPath: Repo.path(dir + "/layers.bin")))
        return (try! JSONDecoder().decode(TFLiteKernelFixture.self, from: meta), blob)
    }()
}

/// One fixture layer decoded: what QuantKit needs to run it and what each TFLite path produced.
struct TFLiteLayer {
    let name: String, n: Int, k: Int, rows: Int, perChannel: Bool, relu: Bool
    let sIn: Float, sOut: Float, sW: [Float], zpIn: Int32, zpOut: Int32
    let x: [Int8], w: [Int8], bias: [Int32]
    let outputs: [String: [Int8]]

    init(_ l: TFLiteKernelFixture.Layer, blob: Data) {
        func bytes(_ r: [Int]) -> Data { blob.subdata(in: r[0]..<(r[0] + r[1])) }
        func int8s(_ r: [Int]) -> [Int8] { bytes(r).map { Int8(bitPattern: $0) } }
        func f32(_ s: String) -> Float { Float(hexDouble(s)) }  // hex floats of float32 values: exact
        name = l.name; n = l.n; k = l.k; rows = l.rows; perChannel = l.per_channel; relu = l.activation == "relu"
        sIn = f32(l.input_scale); sOut = f32(l.output_scale); zpIn = l.input_zero_point; zpOut = l.output_zero_point
        let scales = l.weight_scales.map(f32)
        sW = perChannel ? scales : [Float](repeating: scales[0], count: l.n)
        x = int8s(l.x); w = int8s(l.w)
        bias = bytes(l.bias).withUnsafeBytes { raw in (0..<l.n).map { Int32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self)) } }
        outputs = l.outputs.mapValues(int8s)
    }

    func multipliers(_ rule: RequantRule) -> [Requant.Multiplier] {
        sW.map { Requant.multiplier(inputScale: sIn, weightScale: $0, outputScale: sOut, perTensor: !perChannel, rule: rule) }
    }

    /// TFLite's fused ReLU clamps at the quantized 0, the output zero point.
    func activate(_ y: [Int8]) -> [Int8] {
        relu ? y.map { Swift.max($0, Int8(clamping: zpOut)) } : y
    }
}

/// Each rule reproduces its TFLite kernel path exactly (tolerance: 0 differing outputs), and the rules differ.
final class TFLiteKernelTests: XCTestCase {
    /// The kernel path each rule claims to reproduce; gemmlowp claims none.
    static let paths: [RequantRule: String] = [.tfliteReference: "reference", .tfliteOptimized: "optimized", .xnnpack: "xnnpack"]
    static let pathNames = ["reference", "optimized", "xnnpack"]

    lazy var layers: [TFLiteLayer] = {
        let (fx, blob) = TFLiteKernelFixture.shared
        return fx.layers.map { TFLiteLayer($0, blob: blob) }
    }()

    /// QuantKit's outputs for a layer under a rule: the fast IntGemm, checked equal to the scalar reference.
    func quantkit(_ l: TFLiteLayer, _ rule: RequantRule, threads: Int = 2) throws -> [Int8] {
        let weights = try NPUWeights(quantized: l.w, n: l.n, k: l.k, bits: 8, granularity: l.perChannel ? .perChannel : .perTensor,
                                     scales: l.sW)
        let mults = l.multipliers(rule)
        var out = [Int8](repeating: 0, count: l.rows * l.n)
        l.x.withUnsafeBufferPointer { xp in
            l.bias.withUnsafeBufferPointer { bp in
                mults.withUnsafeBufferPointer { mp in
                    out.withUnsafeMutableBufferPointer { op in
                        IntGemm.run(x: xp.baseAddress!, m: l.rows, k: l.k, weights: weights,
                                    output: .int8(op.baseAddress!, zpX: l.zpIn, bias: bp.baseAddress!, multipliers: mp.baseAddress!,
                                                  zpOut: l.zpOut, rule: rule), threads: threads)
                    }
                }
            }
        }
        let scalar = IntReference.fullyConnected(x: l.x, w: l.w, m: l.rows, k: l.k, n: l.n, zpX: l.zpIn, bias: l.bias,
                                                 multipliers: mults, zpOut: l.zpOut, rule: rule)
        let differ = zip(out, scalar).filter { $0 != $1 }.count
        XCTAssertEqual(differ, 0, "\(l.name) \(rule): fast path vs scalar reference, differing outputs")
        return l.activate(out)
    }

    func testFixtureIsTFLite221WithEveryShape() {
        let (fx, blob) = TFLiteKernelFixture.shared
        XCTAssertEqual(fx.tensorflow_version, "2.21.0")
        XCTAssertEqual(layers.count, 19)
        for (n, k) in [(64, 64), (172, 64), (64, 172), (96, 33)] {
            for pc in [true, false] {
                for relu in [false, true] {
                    XCTAssertTrue(layers.contains { $0.n == n && $0.k == k && $0.perChannel == pc && $0.relu == relu && !$0.name.hasPrefix("ties") },
                                  "\(n)x\(k) pc=\(pc) relu=\(relu)")
                }
            }
        }
        for l in layers {
            XCTAssertEqual(l.x.count, l.rows * l.k, l.name)
            XCTAssertEqual(l.w.count, l.n * l.k, l.name)
            XCTAssertEqual(Set(l.outputs.keys), Set(Self.pathNames), l.name)
            for (_, y) in l.outputs { XCTAssertEqual(y.count, l.rows * l.n, l.name) }
        }
        XCTAssertLessThan(blob.count, 1_500_000)
    }

    /// Differing outputs, [rule][path], over all layers (the report prints it).
    func mismatchTable() throws -> [RequantRule: [String: Int]] {
        var t: [RequantRule: [String: Int]] = [:]
        for rule in RequantRule.allCases {
            var row = Dictionary(uniqueKeysWithValues: Self.pathNames.map { ($0, 0) })
            for l in layers {
                let y = try quantkit(l, rule)
                for p in Self.pathNames { row[p]! += zip(y, l.outputs[p]!).filter { $0 != $1 }.count }
            }
            t[rule] = row
        }
        return t
    }

    func testEachRuleIsBitExactToItsKernelPathAndTheRulesDiffer() throws {
        let total = layers.reduce(0) { $0 + $1.rows * $1.n }
        XCTAssertGreaterThan(total, 100_000)
        let t = try mismatchTable()
        var report = "differing outputs of \(total) per TFLite 2.21 kernel path (rows: QuantKit rule)\n"
        for rule in RequantRule.allCases {
            report += rule.rawValue.padding(toLength: 18, withPad: " ", startingAt: 0)
                + Self.pathNames.map { "\($0) \(t[rule]![$0]!)" }.joined(separator: "  ") + "\n"
        }
        print(report, terminator: "")
        for (rule, path) in Self.paths {
            XCTAssertEqual(t[rule]![path], 0, "\(rule) must reproduce TFLite's \(path) path exactly")
            // ...and only that path: were two rules the same, one of these would be 0.
            for other in Self.pathNames where other != path {
                XCTAssertGreaterThan(t[rule]![other]!, 50, "\(rule) vs \(other)")
            }
        }
        for p in Self.pathNames { XCTAssertGreaterThan(t[.gemmlowp]![p]!, 50, "gemmlowp vs \(p)") }
    }

    /// The rules' outputs differ from each other directly, pair by pair, on the fixture layers.
    func testRulesDifferPairwise() throws {
        var outs: [RequantRule: [Int8]] = [:]
        for rule in RequantRule.allCases { outs[rule] = try layers.flatMap { try quantkit($0, rule, threads: 1) } }
        for (i, a) in RequantRule.allCases.enumerated() {
            for b in RequantRule.allCases[(i + 1)...] {
                let d = zip(outs[a]!, outs[b]!).filter { $0 != $1 }.count
                XCTAssertGreaterThan(d, 50, "\(a) vs \(b)")
                // never more than 1 LSB apart: they differ only in rounding
                XCTAssertTrue(zip(outs[a]!, outs[b]!).allSatisfy { abs(Int($0) - Int($1)) <= 1 }, "\(a) vs \(b)")
            }
        }
    }

    /// The multiplier's formation matters on its own: TFLite's optimized per-tensor path takes the float32
    /// product s_in * s_w; a double product breaks the ties of the "ties-pt-float-exact" layer the other way.
    func testPerTensorFloat32ProductIsNeeded() throws {
        let l = try XCTUnwrap(layers.first { $0.name == "ties-pt-float-exact" })
        let formed = l.sW.map { Requant.quantizeMultiplier(Double(l.sIn) * Double($0) / Double(l.sOut)) }
        XCTAssertNotEqual(formed, l.multipliers(.tfliteOptimized))
        let acc = IntReference.accumulators(x: l.x, w: l.w, m: l.rows, k: l.k, n: l.n, zpX: l.zpIn, bias: l.bias)
        let viaDouble = acc.enumerated().map { Requant.requantizeToInt8($1, formed[$0 % l.n], zeroPoint: l.zpOut, rule: .tfliteOptimized) }
        XCTAssertGreaterThan(zip(viaDouble, l.outputs["optimized"]!).filter { $0 != $1 }.count, 20)
        XCTAssertEqual(try quantkit(l, .tfliteOptimized), l.outputs["optimized"]!)
    }

    /// NPULinear end to end (float in, float out) under each rule equals the dequantized TFLite outputs.
    func testNPULinearReproducesTFLite() throws {
        for l in layers {
            let weights = try NPUWeights(quantized: l.w, n: l.n, k: l.k, bits: 8, granularity: l.perChannel ? .perChannel : .perTensor,
                                         scales: l.sW)
            let inP = Int8AffineParams(scale: l.sIn, zeroPoint: l.zpIn), outP = Int8AffineParams(scale: l.sOut, zeroPoint: l.zpOut)
            // A float bias that NPULinear quantizes back to exactly the fixture's int32 bias.
            let bias = (0..<l.n).map { Float(Double(l.bias[$0]) * Double(l.sIn) * Double(l.sW[$0])) }
            let xf = l.x.map { inP.dequantize($0) }
            for (rule, path) in Self.paths {
                let layer = try NPULinear(name: l.name, weights: weights, bias: bias, input: inP, output: outP, rule: rule)
                XCTAssertEqual(layer.bias, l.bias, "\(l.name) bias")
                var y = [Float](repeating: 0, count: l.rows * l.n)
                layer.forward(x: xf, rows: l.rows, out: &y, threads: 2)
                if l.relu { y = y.map { Swift.max($0, 0) } }  // dequantize(zp) == 0 exactly
                let want = l.outputs[path]!.map { outP.dequantize($0) }
                XCTAssertEqual(zip(y, want).filter { $0 != $1 }.count, 0, "\(l.name) \(rule): differing outputs")
            }
        }
    }
}
