import Foundation
import Models
import Quantization
import TensorCore
import Testing
import TestSupport
@testable import Training

/// Loss and gradients of the Float training graph against PyTorch autograd in float64 (Tools/train_reference.py,
/// committed fixture): plain float, distillation + cross-entropy, grouped int4/int8 fake quantization with and
/// without learned scales (LSQ), W4A8 activations, the NPU's int8 weights and activations.
/// Tolerance: 1e-4 relative (gradient norm of each tensor), the bar; the loss to 1e-5.
@Suite struct PyTorchReferenceTests {
    static let dir = fixturePath("train_reference")

    static func fixturePath(_ name: String) -> String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/\(name)").path
    }

    struct Case: Decodable {
        struct Weights: Decodable { let kind: String; let bits: Int; let symmetric: Bool?; let group_size: Int?; let lsq: Bool? }
        struct Affine: Decodable { let scale: Float; let zero_point: Int32 }
        let name: String
        let kd_weight: Double
        let ce_weight: Double
        let teacher_logits: [[[Double]]]
        let weights: Weights?
        let activations: String?
        let activation_params: [String: Affine]?
        let loss: Double
    }
    struct Cases: Decodable { let tokens: [[Int32]]; let cases: [Case] }

    static func load() throws -> (LlamaConfig, [String: [Float]], Cases) {
        let config = try LlamaConfig.load(path: dir + "/config.json")
        let st = try SafetensorsFile(path: dir + "/model.safetensors")
        var tensors: [String: [Float]] = [:]
        for name in HFExport.tensorNames(config) { tensors[name] = try st.tensor(name).floats() }
        let cases = try JSONDecoder().decode(Cases.self, from: Data(contentsOf: URL(fileURLWithPath: dir + "/cases.json")))
        return (config, tensors, cases)
    }

    func run(_ name: String) throws {
        let (config, tensors, all) = try Self.load()
        let c = try #require(all.cases.first { $0.name == name })
        let grads = try SafetensorsFile(path: Self.dir + "/grads_\(name).safetensors")
        var modes: [String: WeightFakeQuant] = [:]
        var scales: [String: [Float]] = [:], zeros: [String: [Float]] = [:], groups: [String: [Int32]] = [:]
        let modules = (0..<config.numHiddenLayers).flatMap { l in LlamaBlock.linearNames.map { "model.layers.\(l).\($0)" } }
        if let w = c.weights {
            for m in modules {
                if w.kind == "npu" { modes[m] = .npu(bits: w.bits); continue }
                modes[m] = .grouped(bits: w.bits, symmetric: w.symmetric!, learnScales: w.lsq!)
                let shape = TrainableLlama<Float>.shape(of: m + ".weight", config)
                let start = try QuantizerStart.roundToNearest(
                    tensors[m + ".weight"]!, outFeatures: shape[0], inFeatures: shape[1],
                    scheme: QuantScheme(bits: w.bits, symmetric: w.symmetric!, groupSize: w.group_size!), name: m)
                // The quantizer QuantKit derives is the one the reference derived.
                #expect(start.scales == (try grads.tensor(m + ".init_scales").floats()), "\(m) initial scales")
                #expect(start.zeros == (try grads.tensor(m + ".init_zeros").floats()), "\(m) zero points")
                scales[m] = start.scales; zeros[m] = start.zeros; groups[m] = start.groups
            }
        }
        var activations = ActivationFakeQuant.none
        if c.activations == "w4a8" { activations = .w4a8 }
        if c.activations == "int8_tensor" {
            activations = .int8Tensor(c.activation_params!.mapValues { AffineInt8(scale: $0.scale, zeroPoint: $0.zero_point) })
        }
        let batch = all.tokens.count, len = all.tokens[0].count - 1
        let model = try TrainableLlama<Float>(config: config, tensors: tensors, weightQuant: modes, scales: scales,
                                              zeros: zeros, groups: groups, activations: activations, batch: batch,
                                              sequenceLength: len, threads: 2)
        let inputs = all.tokens.flatMap { $0.dropLast() }, targets = all.tokens.flatMap { $0.dropFirst() }
        let teacher = c.teacher_logits.flatMap { $0.flatMap { $0.map(Float.init) } }
        let loss = try teacher.withUnsafeBufferPointer {
            try model.loss(tokens: inputs, targets: c.ce_weight != 0 ? targets : nil, teacher: c.kd_weight != 0 ? $0.baseAddress : nil,
                       weights: LossWeights(kd: c.kd_weight, ce: c.ce_weight), gradients: true)
        }
        #expect(abs(loss.total - c.loss) <= 1e-5 * abs(c.loss), "\(name): loss \(loss.total), PyTorch \(c.loss)")
        var compared = 0
        for e in model.parameters.entries where e.trainable {
            let ref = try grads.tensor(e.name).floats()
            let got = Array(UnsafeBufferPointer(start: model.parameters.grads + e.offset, count: e.count))
            #expect(ref.count == got.count)
            var diff = 0.0, norm = 0.0
            for (a, b) in zip(got, ref) { diff += Double(a - b) * Double(a - b); norm += Double(b) * Double(b) }
            let rel = (diff / max(norm, 1e-30)).squareRoot()
            #expect(rel <= 1e-4, "\(name): \(e.name) gradient differs from PyTorch by \(rel) relative")
            compared += 1
        }
        #expect(compared >= HFExport.tensorNames(config).count)
    }

    @Test func floatCrossEntropy() throws { try run("float_ce") }
    @Test func floatDistillationAndCrossEntropy() throws { try run("float_kd_ce") }
    @Test func int4Group16SymmetricStraightThrough() throws { try run("int4_g16_sym_ste") }
    @Test func int4Group16AsymmetricLearnedScales() throws { try run("int4_g16_asym_lsq") }
    @Test func int8PerChannelLearnedScales() throws { try run("int8_pc_sym_lsq") }
    @Test func w4a8Activations() throws { try run("w4a8") }
    @Test func npuInt8WeightsAndActivations() throws { try run("npu_w8a8") }
}
