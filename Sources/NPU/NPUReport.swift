import Foundation
import Kernels
import Models
import TensorCore

/// One linear module's NPU output against the float model's, on the same tokens.
public struct LayerComparison: Codable, Sendable {
    public var module: String
    /// The NPU layer fed the float layer's exact input: this layer's own quantization error.
    public var isolated: ErrorMetrics
    /// The module's output in the full NPU model vs the float model: errors of all earlier layers included.
    public var endToEnd: ErrorMetrics

    enum CodingKeys: String, CodingKey { case module, isolated, endToEnd = "end_to_end" }
}

public struct NPUComparisonResult: Codable, Sendable {
    public var tokens: Int
    /// Ranked worst first (lowest end-to-end SQNR).
    public var layers: [LayerComparison]
    public var logits: ErrorMetrics
}

/// Float-vs-NPU comparison, layer by layer (`quantkit npu report`).
public enum NPUComparison {
    /// The report's one-line definitions, naming the approximation "npu".
    public static let definitions: String = {
        let d = ErrorMetrics.definitions(approximation: "npu")
        return "SQNR = \(d["sqnr_db"]!) dB; PSNR = \(d["psnr_db"]!) dB"
    }()

    final class FloatPass: LinearObserver {
        var outputs: [String: [[Float]]] = [:]
        var isolated: [String: ErrorAccumulator] = [:]
        let layers: [String: NPULinear]
        let threads: Int
        init(layers: [String: NPULinear], threads: Int) { self.layers = layers; self.threads = threads }
        func observe(module: String, input: UnsafePointer<Float>, inFeatures: Int, output: UnsafePointer<Float>,
                     outFeatures: Int, rows: Int) {
            outputs[module, default: []].append(Array(UnsafeBufferPointer(start: output, count: rows * outFeatures)))
            guard let l = layers[module] else { return }
            var y = [Float](repeating: 0, count: rows * outFeatures)
            y.withUnsafeMutableBufferPointer { l.forward(x: input, rows: rows, out: $0.baseAddress!, threads: threads) }
            y.withUnsafeBufferPointer {
                isolated[module, default: ErrorAccumulator()].add(reference: output, approximation: $0.baseAddress!, count: rows * outFeatures)
            }
        }
    }

    final class NPUPass: LinearObserver {
        let reference: [String: [[Float]]]
        var calls: [String: Int] = [:]
        var errors: [String: ErrorAccumulator] = [:]
        init(reference: [String: [[Float]]]) { self.reference = reference }
        func observe(module: String, input: UnsafePointer<Float>, inFeatures: Int, output: UnsafePointer<Float>,
                     outFeatures: Int, rows: Int) {
            let i = calls[module, default: 0]
            calls[module] = i + 1
            guard let ref = reference[module], i < ref.count, ref[i].count == rows * outFeatures else { return }
            ref[i].withUnsafeBufferPointer {
                errors[module, default: ErrorAccumulator()].add(reference: $0.baseAddress!, approximation: output, count: rows * outFeatures)
            }
        }
    }

    /// Runs `tokens` (windows of `window`) through the float `model`, then converts it with `simulator.apply`
    /// and runs them again. The model is left converted to the NPU.
    public static func run(model: LlamaModel, simulator: NPUSimulator, tokens: [Int32], window: Int = 128) throws
        -> NPUComparisonResult {
        try model.validate(tokens: tokens)
        guard !tokens.isEmpty else { throw QuantKitError(.input, "npu report: no tokens to compare on") }
        // The NPU layers, built once from the float weights (not yet swapped in).
        var layers: [String: NPULinear] = [:]
        let quietLog = FallbackLog()
        func build(_ name: String, _ l: LinearLayer) throws {
            guard let d = try? (l as? any FloatWeightsProviding)?.floatEquivalent, let ref = WeightRef(d.weight), let r = simulator.ranges[name] else { return }
            layers[name] = try NPUSimulator.makeLayer(name: name, weight: ref, n: d.outFeatures, k: d.inFeatures, bias: d.bias,
                                                      input: r.input, output: r.output, outputFormat: simulator.outputFormats[name],
                                                      config: simulator.config, log: quietLog)
        }
        for b in model.blocks { for rel in LlamaBlock.linearNames { try build(b.prefix + rel, b.linear(named: rel)!) } }
        try build("lm_head", model.lmHead)

        let win = max(1, min(window, model.config.maxPositionEmbeddings, tokens.count))
        let windows = stride(from: 0, to: tokens.count, by: win).map { Array(tokens[$0..<min($0 + win, tokens.count)]) }
        func pass(_ observer: LinearObserver) {
            let saved = model.observer
            model.observer = observer
            defer { model.observer = saved }
            let cache = model.makeCache(capacity: win), state = model.makeState(maxRows: win)
            for w in windows { cache.reset(); model.forward(w, cache: cache, state: state) }
        }
        let fp = FloatPass(layers: layers, threads: model.threads)
        pass(fp)
        try simulator.apply(to: model)
        let np = NPUPass(reference: fp.outputs)
        pass(np)
        var result: [LayerComparison] = []
        for (name, acc) in np.errors {
            let iso = fp.isolated[name]?.metrics ?? acc.metrics
            result.append(LayerComparison(module: name, isolated: iso, endToEnd: acc.metrics))
        }
        result.sort { ($0.endToEnd.sqnrDB, $0.module) < ($1.endToEnd.sqnrDB, $1.module) }
        let logits = (np.errors["lm_head"] ?? ErrorAccumulator()).metrics
        return NPUComparisonResult(tokens: tokens.count, layers: result, logits: logits)
    }
}
