import Foundation
import Kernels
import Models
import Quantization
import TensorCore

/// A Llama-family model being trained: its parameters (every float tensor, plus the learned quantization scales),
/// how each linear layer is fake-quantized, and one step's loss and gradients.
public final class TrainableLlama<T: TrainScalar> {
    public let config: LlamaConfig
    public let parameters: ParameterSet<T>
    public let weightQuant: [String: WeightFakeQuant]
    public let activations: ActivationFakeQuant
    public let batch: Int, sequenceLength: Int
    /// Integer zero points and column groups of the grouped layers (fixed while training).
    public let zeros: [String: [T]]
    public let groups: [String: [Int32]]
    let graph: LlamaGraph<T>
    private let dLogits: UnsafeMutablePointer<T>

    /// The configurations the backward pass covers; anything else is refused by name.
    public static func checkTrainable(_ c: LlamaConfig, source: String) throws {
        var unsupported: [String] = []
        if c.hasQKVBias || c.hasOBias || c.mlpBias == true { unsupported.append("linear biases") }
        if (0..<c.numHiddenLayers).contains(where: { c.attentionWindow(layer: $0) != nil }) { unsupported.append("sliding-window attention") }
        if c.downProjInputHadamard == true, Hadamard.factorization(of: c.intermediateSize) == nil {
            unsupported.append("an online Hadamard rotation of order \(c.intermediateSize)")
        }
        if let a = c.hiddenAct, a != "silu" { unsupported.append("activation \(a)") }
        guard unsupported.isEmpty else {
            throw QuantKitError(.config, "\(source): fine-tuning does not cover \(unsupported.joined(separator: ", ")) yet")
        }
    }

    /// - tensors: every float tensor by its HF name (HFExport.tensorNames), values row-major.
    /// - weightQuant: the fake quantization of each quantized linear (by module name, e.g. "model.layers.0.mlp.up_proj").
    /// - scales/zeros/groups: for grouped layers, the initial scales [out, groups], zero points and column groups.
    /// - trainFloatTensors: whether the tensors that stay float (embedding, norms, untied head, unquantized
    ///   linears) train too, or keep their values (their gradients are still computed, not applied).
    public init(config: LlamaConfig, tensors: [String: [T]], weightQuant: [String: WeightFakeQuant] = [:],
                scales: [String: [T]] = [:], zeros: [String: [T]] = [:], groups: [String: [Int32]] = [:],
                activations: ActivationFakeQuant = .none, trainFloatTensors: Bool = true, batch: Int, sequenceLength: Int,
                threads: Int = Parallel.defaultThreads) throws {
        try Self.checkTrainable(config, source: "model")
        guard batch > 0, sequenceLength > 0 else { throw QuantKitError(.config, "batch and sequence length must be positive") }
        self.config = config
        self.weightQuant = weightQuant
        self.activations = activations
        self.batch = batch; self.sequenceLength = sequenceLength
        var specs: [(name: String, shape: [Int], kind: ParameterSet<T>.Kind, trainable: Bool)] = []
        for name in HFExport.tensorNames(config) {
            guard let v = tensors[name] else { throw QuantKitError(.input, "model: \(name) is missing") }
            let shape = Self.shape(of: name, config)
            guard v.count == shape.reduce(1, *) else {
                throw QuantKitError(.shape, "model: \(name) has \(v.count) values, expected \(shape)")
            }
            // Quantized linears always train; the rest (embedding, norms, float head) when asked.
            let quantized = name.hasSuffix(".weight") && weightQuant[String(name.dropLast(".weight".count))] != nil
            specs.append((name, shape, shape.count == 2 ? .matrix : .vector, quantized || trainFloatTensors))
        }
        var zerosByModule = zeros, groupsByModule = groups
        for (module, mode) in weightQuant.sorted(by: { $0.key < $1.key }) {
            guard let w = specs.first(where: { $0.name == module + ".weight" }) else {
                throw QuantKitError(.input, "model: no linear layer \(module) to quantize")
            }
            guard case .grouped(_, _, let learn) = mode else { continue }
            let (out, inF) = (w.shape[0], w.shape[1])
            guard let s = scales[module], let z = zeros[module], let g = groups[module], g.count == inF,
                  !s.isEmpty, s.count == z.count, s.count % out == 0,
                  g.allSatisfy({ $0 >= 0 && Int($0) < s.count / out }) else {
                throw QuantKitError(.input, "model: \(module): scales, zero points and groups do not fit [\(out), \(inF)]")
            }
            specs.append((module + ".scales", [out, s.count / out], .scales, learn))
            zerosByModule[module] = z; groupsByModule[module] = g
        }
        parameters = ParameterSet(specs)
        for s in specs where s.kind != .scales { try parameters.set(s.name, tensors[s.name]!) }
        for (module, mode) in weightQuant { if case .grouped = mode { try parameters.set(module + ".scales", scales[module]!) } }
        self.zeros = zerosByModule; self.groups = groupsByModule
        graph = LlamaGraph(config: config, params: parameters, weights: weightQuant, zeros: zerosByModule,
                           groups: groupsByModule, activations: activations, batch: batch, sequenceLength: sequenceLength,
                           threads: threads)
        dLogits = .allocate(capacity: batch * sequenceLength * config.vocabSize)
    }

    deinit { dLogits.deallocate() }

    public var threads: Int {
        get { graph.threads }
        set { graph.threads = newValue }
    }

    /// The shape of a float tensor of the model, by HF name.
    public static func shape(of name: String, _ c: LlamaConfig) -> [Int] {
        let dim = c.hiddenSize
        if name == "model.embed_tokens.weight" || name == "lm_head.weight" { return [c.vocabSize, dim] }
        if name.hasSuffix("norm.weight") { return [dim] }
        if name.hasSuffix("q_proj.weight") { return [c.qDim, dim] }
        if name.hasSuffix("k_proj.weight") || name.hasSuffix("v_proj.weight") { return [c.kvDim, dim] }
        if name.hasSuffix("o_proj.weight") { return [dim, c.qDim] }
        if name.hasSuffix("down_proj.weight") { return [dim, c.intermediateSize] }
        return [c.intermediateSize, dim]  // gate_proj, up_proj
    }

    /// Loss of one batch; with `gradients`, every parameter's gradient is left in `parameters.grads` (zeroed first).
    /// tokens: [batch, sequenceLength] inputs; targets: the next tokens (for the cross-entropy term);
    /// teacher: the teacher's logits [batch * sequenceLength, vocab] (for the KL term), or teacherTopK its top k.
    public func loss(tokens: [Int32], targets: [Int32]?, teacher: UnsafePointer<T>?, teacherTopK: TeacherTopK? = nil,
                     weights: LossWeights, gradients: Bool) throws -> LossValue {
        let rows = batch * sequenceLength, vocab = config.vocabSize
        guard tokens.count == rows, targets.map({ $0.count == rows }) ?? true else {
            throw QuantKitError(.input, "a training batch holds \(rows) tokens (\(batch) x \(sequenceLength)), got \(tokens.count)")
        }
        if let bad = (tokens + (targets ?? [])).first(where: { $0 < 0 || Int($0) >= vocab }) {
            throw QuantKitError(.input, "token id \(bad) is outside the vocabulary (0..<\(vocab))")
        }
        graph.forward(tokens: tokens)
        let value = { (t: UnsafePointer<Int32>?) in
            DistillationLoss.evaluate(logits: self.graph.logits, rows: rows, vocab: self.config.vocabSize, teacher: teacher,
                                      topK: teacherTopK, targets: t, weights: weights, dLogits: gradients ? self.dLogits : nil,
                                      threads: self.graph.threads)
        }
        let v = targets.map { t in t.withUnsafeBufferPointer { value($0.baseAddress) } } ?? value(nil)
        if gradients {
            parameters.zeroGradients()
            graph.backward(dLogits: dLogits)
        }
        return v
    }

    /// The logits of the last forward, [batch * sequenceLength, vocab].
    public var logits: UnsafePointer<T> { UnsafePointer(graph.logits) }

    /// The effective (fake-quantized) weight of a linear layer as the last forward used it.
    public func effectiveWeight(_ module: String) -> [T]? {
        for layer in graph.linears { for l in layer where l.name == module {
            l.refresh(parameters, threads: graph.threads)
            return Array(UnsafeBufferPointer(start: l.effective, count: l.outFeatures * l.inFeatures))
        } }
        return nil
    }
}
