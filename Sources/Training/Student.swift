import Foundation
import Models
import TensorCore

/// A smaller model distilled from a Llama-family teacher: fewer layers and/or a narrower MLP, initialised from the
/// teacher's own weights so distillation starts close to it.
public struct StudentShape: Sendable, Equatable, Codable {
    public var layers: Int
    public var intermediateSize: Int

    public init(layers: Int, intermediateSize: Int) { self.layers = layers; self.intermediateSize = intermediateSize }

    /// "LAYERSxHIDDEN", e.g. "3x86"; either side may be "-" for the teacher's own value.
    public static func parse(_ text: String, teacher: LlamaConfig) throws -> StudentShape {
        let parts = text.lowercased().split(separator: "x", omittingEmptySubsequences: false).map(String.init)
        func side(_ s: String, _ full: Int, _ what: String) throws -> Int {
            if s == "-" { return full }
            guard let v = Int(s), v > 0, v <= full else {
                throw QuantKitError(.input, "--student '\(text)': \(what) must be 1...\(full) (the teacher's) or '-'")
            }
            return v
        }
        guard parts.count == 2 else { throw QuantKitError(.input, "--student '\(text)': expected LAYERSxHIDDEN, e.g. 3x86 or 2x-") }
        return StudentShape(layers: try side(parts[0], teacher.numHiddenLayers, "layers"),
                            intermediateSize: try side(parts[1], teacher.intermediateSize, "the MLP width"))
    }

    public var label: String { "\(layers)x\(intermediateSize)" }
}

/// How a student was cut from its teacher, recorded in the checkpoint so its size can be stated against the teacher's.
public struct StudentInitialization: Sendable, Equatable {
    public var config: LlamaConfig
    /// Teacher layer of each student layer.
    public var keptLayers: [Int]
    /// Per student layer, the teacher's MLP channels kept (ascending).
    public var keptChannels: [[Int]]
    public var tensors: [String: [Float]]
}

public enum StudentCut {
    /// Evenly spaced teacher layers, first and last included (one layer: the first).
    public static func layers(_ n: Int, of total: Int) -> [Int] {
        guard n > 1 else { return [0] }
        return (0..<n).map { Int((Double($0) * Double(total - 1) / Double(n - 1)).rounded()) }
    }

    /// Mean |input| of each down_proj column on calibration windows, times that column's L2 norm: how much each MLP
    /// channel contributes to the block's output. [teacher layer][channel].
    public static func channelImportance(teacher: LlamaModel, windows: [[Int32]]) throws -> [[Double]] {
        let c = teacher.config
        let observer = DownProjInputMeans(layers: c.numHiddenLayers, width: c.intermediateSize)
        let previous = teacher.observer
        teacher.observer = observer
        defer { teacher.observer = previous }
        let longest = windows.map(\.count).max() ?? 0
        let cache = teacher.makeCache(capacity: longest), state = teacher.makeState(maxRows: longest)
        for w in windows where !w.isEmpty { _ = teacher.forwardSequences(w, count: 1, cache: cache, state: state) }
        return try (0..<c.numHiddenLayers).map { l -> [Double] in
            let down = try teacher.source.tensor("model.layers.\(l).mlp.down_proj.weight").floats()
            return (0..<c.intermediateSize).map { j -> Double in
                var norm = 0.0
                for r in 0..<c.hiddenSize { let v = Double(down[r * c.intermediateSize + j]); norm += v * v }
                let mean = observer.rows[l] > 0 ? observer.sums[l][j] / Double(observer.rows[l]) : 0
                return mean * norm.squareRoot()
            }
        }
    }

    /// The student's config and starting tensors: teacher layers `layers(shape.layers)`, each MLP cut to its most
    /// important channels (gate/up rows and down columns); embedding, final norm and head as the teacher's.
    public static func cut(teacher config: LlamaConfig, tensors: [String: [Float]], shape: StudentShape,
                           importance: [[Double]]) throws -> StudentInitialization {
        guard shape.layers >= 1, shape.layers <= config.numHiddenLayers,
              shape.intermediateSize >= 1, shape.intermediateSize <= config.intermediateSize else {
            throw QuantKitError(.input, "student \(shape.label) does not fit inside the teacher (\(config.numHiddenLayers) layers, MLP \(config.intermediateSize))")
        }
        var sc = config
        sc.numHiddenLayers = shape.layers
        sc.intermediateSize = shape.intermediateSize
        let kept = layers(shape.layers, of: config.numHiddenLayers)
        if let types = config.layerTypes { sc.layerTypes = kept.map { $0 < types.count ? types[$0] : "full_attention" } }
        sc.maxWindowLayers = nil
        var out: [String: [Float]] = [:]
        var channels: [[Int]] = []
        func take(_ name: String) throws -> [Float] {
            guard let v = tensors[name] else { throw QuantKitError(.input, "teacher: \(name) is missing") }
            return v
        }
        for name in ["model.embed_tokens.weight", "model.norm.weight"] + (config.tieWordEmbeddings ? [] : ["lm_head.weight"]) {
            out[name] = try take(name)
        }
        let dim = config.hiddenSize, width = config.intermediateSize
        for (i, t) in kept.enumerated() {
            let from = "model.layers.\(t).", to = "model.layers.\(i)."
            for rel in ["input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
                        "self_attn.v_proj", "self_attn.o_proj"] {
                out[to + rel + ".weight"] = try take(from + rel + ".weight")
            }
            let score = t < importance.count && importance[t].count == width ? importance[t] : Array(repeating: 0, count: width)
            // Largest contribution first; ties keep the lower index, so the cut is deterministic.
            let keep = (0..<width).sorted { score[$0] != score[$1] ? score[$0] > score[$1] : $0 < $1 }
                .prefix(shape.intermediateSize).sorted()
            channels.append(Array(keep))
            let gate = try take(from + "mlp.gate_proj.weight"), up = try take(from + "mlp.up_proj.weight")
            let down = try take(from + "mlp.down_proj.weight")
            out[to + "mlp.gate_proj.weight"] = keep.flatMap { gate[($0 * dim)..<(($0 + 1) * dim)] }
            out[to + "mlp.up_proj.weight"] = keep.flatMap { up[($0 * dim)..<(($0 + 1) * dim)] }
            var d = [Float](); d.reserveCapacity(dim * keep.count)
            for r in 0..<dim { for j in keep { d.append(down[r * width + j]) } }
            out[to + "mlp.down_proj.weight"] = d
        }
        return StudentInitialization(config: sc, keptLayers: kept, keptChannels: channels, tensors: out)
    }

    /// Weights in the transformer blocks' linear layers of a config (what bits per weight counts).
    public static func blockLinearWeights(_ c: LlamaConfig) -> Int {
        c.numHiddenLayers * (c.hiddenSize * (2 * c.qDim + 2 * c.kvDim) + 3 * c.hiddenSize * c.intermediateSize)
    }
}

/// Sums |x| of each down_proj input column per layer.
private final class DownProjInputMeans: LinearObserver {
    var sums: [[Double]]
    var rows: [Int]
    init(layers: Int, width: Int) {
        sums = Array(repeating: Array(repeating: 0, count: width), count: layers)
        rows = Array(repeating: 0, count: layers)
    }
    func observe(module: String, input: UnsafePointer<Float>, inFeatures: Int, output: UnsafePointer<Float>,
                 outFeatures: Int, rows n: Int) {
        guard module.hasSuffix(".mlp.down_proj"), let l = Int(module.dropFirst("model.layers.".count).prefix { $0 != "." }),
              l < sums.count, sums[l].count == inFeatures else { return }
        for r in 0..<n { for j in 0..<inFeatures { sums[l][j] += Double(abs(input[r * inFeatures + j])) } }
        rows[l] += n
    }
}
