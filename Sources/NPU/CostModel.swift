import Foundation
import Kernels
import Models
import TensorCore

/// The simulated NPU's hardware parameters for the cost model.
public struct NPUHardware: Codable, Equatable, Sendable {
    public var name: String
    /// int8 multiply-accumulates per cycle of the MAC array.
    public var macsPerCycle: Int
    public var clockHz: Double
    /// On-chip SRAM; half of it double-buffers weight tiles, the rest holds activations.
    public var sramBytes: Int
    /// DRAM bandwidth (bytes per second), shared by weights and spilled activations.
    public var dramBytesPerSecond: Double
    /// Lossless weight compression on the DRAM path; when on, weight bytes moved are multiplied by
    /// `compressionRatio` (0.75 by default: entropy-coded int8 weights of LLMs typically shrink by 15-30%).
    public var weightCompression: Bool
    public var compressionRatio: Double
    /// Element operations per cycle of the vector unit (nonlinear ops, requantization of activations).
    public var vectorOpsPerCycle: Int

    enum CodingKeys: String, CodingKey {
        case name, macsPerCycle = "macs_per_cycle", clockHz = "clock_hz", sramBytes = "sram_bytes"
        case dramBytesPerSecond = "dram_bytes_per_second", weightCompression = "weight_compression"
        case compressionRatio = "compression_ratio", vectorOpsPerCycle = "vector_ops_per_cycle"
    }

    public init(name: String, macsPerCycle: Int, clockHz: Double, sramBytes: Int, dramBytesPerSecond: Double,
                weightCompression: Bool = false, compressionRatio: Double = 0.75, vectorOpsPerCycle: Int = 16) {
        self.name = name
        self.macsPerCycle = macsPerCycle
        self.clockHz = clockHz
        self.sramBytes = sramBytes
        self.dramBytesPerSecond = dramBytesPerSecond
        self.weightCompression = weightCompression
        self.compressionRatio = compressionRatio
        self.vectorOpsPerCycle = vectorOpsPerCycle
    }

    /// Named presets (numbers chosen to resemble two classes of parts, not any one product):
    /// - `edge-small`: a microcontroller-class NPU: 256 int8 MACs/cycle at 800 MHz (0.41 TOPS), 1 MiB SRAM,
    ///   4 GB/s LPDDR, 16-lane vector unit.
    /// - `edge-mid`: a phone-class NPU slice: 1024 MACs/cycle at 1 GHz (2 TOPS), 4 MiB SRAM, 12.8 GB/s, 32 lanes.
    /// - `edge-large`: a laptop/automotive NPU: 4096 MACs/cycle at 1 GHz (8.2 TOPS), 8 MiB SRAM, 25 GB/s,
    ///   weight compression on, 64 lanes.
    public static let presets: [NPUHardware] = [
        NPUHardware(name: "edge-small", macsPerCycle: 256, clockHz: 800e6, sramBytes: 1 << 20,
                    dramBytesPerSecond: 4e9, vectorOpsPerCycle: 16),
        NPUHardware(name: "edge-mid", macsPerCycle: 1024, clockHz: 1e9, sramBytes: 4 << 20,
                    dramBytesPerSecond: 12.8e9, vectorOpsPerCycle: 32),
        NPUHardware(name: "edge-large", macsPerCycle: 4096, clockHz: 1e9, sramBytes: 8 << 20,
                    dramBytesPerSecond: 25e9, weightCompression: true, compressionRatio: 0.75, vectorOpsPerCycle: 64),
    ]

    /// `source` names where the name came from in the error: the flag, or a config file's key.
    public static func preset(_ name: String, source: String = "--preset") throws -> NPUHardware {
        guard let p = presets.first(where: { $0.name == name }) else {
            throw QuantKitError(.config, "\(source) '\(name)': unknown NPU preset; known: \(presets.map(\.name).joined(separator: ", "))")
        }
        return p
    }

    /// Rejects values no hardware can have.
    public func validate(source: String = "NPU config") throws {
        func bad(_ field: String, _ value: String, _ why: String) -> QuantKitError {
            QuantKitError(.config, "\(source): \(field) = \(value) is impossible (\(why))")
        }
        if macsPerCycle <= 0 { throw bad("macs_per_cycle", "\(macsPerCycle)", "must be > 0") }
        if !(clockHz > 0) || !clockHz.isFinite { throw bad("clock_hz", "\(clockHz)", "must be a positive number") }
        if sramBytes < 1024 { throw bad("sram_bytes", "\(sramBytes)", "must be at least 1024") }
        if !(dramBytesPerSecond > 0) || !dramBytesPerSecond.isFinite {
            throw bad("dram_bytes_per_second", "\(dramBytesPerSecond)", "must be a positive number")
        }
        if !(compressionRatio > 0 && compressionRatio <= 1) {
            throw bad("compression_ratio", "\(compressionRatio)", "must be in (0, 1]")
        }
        if vectorOpsPerCycle <= 0 { throw bad("vector_ops_per_cycle", "\(vectorOpsPerCycle)", "must be > 0") }
    }

    public var dramBytesPerCycle: Double { dramBytesPerSecond / clockHz }
}

/// The transformer dimensions the cost model needs (Llama family), taken from Models' LlamaConfig.
public struct TransformerShape: Codable, Equatable, Sendable {
    public var dim: Int
    public var hiddenDim: Int
    public var layers: Int
    public var heads: Int
    public var kvHeads: Int
    public var vocab: Int
    /// config.json's head_dim when it gives one (it may differ from dim / heads); nil: dim / heads.
    public var explicitHeadDim: Int?
    /// Sliding attention window per layer (nil: full causal attention), as the engine applies it
    /// (LlamaConfig.attentionWindow). Absent or empty: no layer has a window.
    public var attentionWindows: [Int?]?
    /// A rotated checkpoint's Hadamard transform on down_proj's input (`quantkit_down_proj_hadamard`); nil: none.
    public var onlineHadamard: Bool?
    public var headDim: Int { explicitHeadDim ?? dim / heads }
    public var qDim: Int { heads * headDim }
    public var kvDim: Int { kvHeads * headDim }

    enum CodingKeys: String, CodingKey {
        case dim, hiddenDim, layers, heads, kvHeads, vocab, explicitHeadDim = "head_dim", attentionWindows = "attention_windows"
        case onlineHadamard = "online_hadamard"
    }

    public init(dim: Int, hiddenDim: Int, layers: Int, heads: Int, kvHeads: Int, vocab: Int, headDim: Int? = nil,
                attentionWindows: [Int?]? = nil) {
        self.dim = dim
        self.hiddenDim = hiddenDim
        self.layers = layers
        self.heads = heads
        self.kvHeads = kvHeads
        self.vocab = vocab
        self.explicitHeadDim = headDim
        self.attentionWindows = attentionWindows
    }

    public init(config c: LlamaConfig) {
        let windows = c.attentionWindow == nil ? nil : (0..<c.numHiddenLayers).map { c.attentionWindow(layer: $0) }
        self.init(dim: c.hiddenSize, hiddenDim: c.intermediateSize, layers: c.numHiddenLayers, heads: c.numAttentionHeads,
                  kvHeads: c.kvHeads, vocab: c.vocabSize, headDim: c.headDim, attentionWindows: windows)
        onlineHadamard = c.downProjInputHadamard == true ? true : nil
    }

    /// The shape of a llama2.c .bin (its header) or a Hugging Face directory (its config.json), read and validated
    /// by Models.
    public static func load(model path: String) throws -> TransformerShape {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw QuantKitError(.io, "\(path): no such file or directory")
        }
        if isDir.boolValue { return TransformerShape(config: try LlamaConfig.load(path: path + "/config.json")) }
        return TransformerShape(config: Llama2C.config(try Llama2C.readHeader(try MappedFile(path: path))))
    }

    public func attentionWindow(layer: Int) -> Int? {
        guard let w = attentionWindows, layer < w.count else { return nil }
        return w[layer]
    }

    /// The linear layers of one decoder block, Hugging Face names: (name, inFeatures, outFeatures).
    public var blockLinears: [(String, Int, Int)] {
        [("q_proj", dim, qDim), ("k_proj", dim, kvDim), ("v_proj", dim, kvDim), ("o_proj", qDim, dim),
         ("gate_proj", dim, hiddenDim), ("up_proj", dim, hiddenDim), ("down_proj", hiddenDim, dim)]
    }
}

/// One row of the cost model.
public struct LayerCost: Codable, Equatable, Sendable {
    public enum Bound: String, Codable, Sendable { case compute, memory, vector }
    public var name: String
    public var macs: Int
    /// Weight bytes read from DRAM (after compression) and parameter bytes (multiplier + bias per channel).
    public var weightBytes: Int
    /// Activation / KV-cache bytes moved to or from DRAM.
    public var activationBytes: Int
    public var sramPeakBytes: Int
    public var vectorOps: Int
    public var computeCycles: Int
    public var memoryCycles: Int
    public var cycles: Int
    public var bound: Bound

    enum CodingKeys: String, CodingKey {
        case name, macs, weightBytes = "weight_bytes", activationBytes = "activation_bytes"
        case sramPeakBytes = "sram_peak_bytes", vectorOps = "vector_ops", computeCycles = "compute_cycles"
        case memoryCycles = "memory_cycles", cycles, bound
    }
}

public struct CostPhase: Codable, Sendable {
    public var tokens: Int
    public var context: Int
    public var layers: [LayerCost]
    public var totalCycles: Int
    public var totalMacs: Int
    public var totalDramBytes: Int
    public var seconds: Double
    public var secondsPerToken: Double
    public var tokensPerSecond: Double

    enum CodingKeys: String, CodingKey {
        case tokens, context, layers, totalCycles = "total_cycles", totalMacs = "total_macs"
        case totalDramBytes = "total_dram_bytes", seconds, secondsPerToken = "seconds_per_token"
        case tokensPerSecond = "tokens_per_second"
    }
}

public struct CostReport: Codable, Sendable {
    public var hardware: NPUHardware
    public var shape: TransformerShape
    public var weightBits: Int
    /// Modules with int16 outputs (absent when all are int8).
    public var int16Outputs: [String]?
    public var prefill: CostPhase
    public var decode: CostPhase
}

/// cycles = max(compute, memory) per layer (SPECS.md "Integer NPU numerics").
public enum CostModel {
    static func ceilDiv(_ a: Double, _ b: Double) -> Int { Int((a / b).rounded(.up)) }

    /// A fully connected layer over `rows` tokens: weights stream from DRAM once per call through a
    /// double-buffered tile of at most half the SRAM; activations (int8) stay in SRAM when input + output +
    /// tile fit, otherwise they make one DRAM round trip. Per output channel 8 parameter bytes (int32
    /// multiplier with its shift packed, int32 bias). `outputBytes`: 2 for an int16 output.
    public static func linear(name: String, rows: Int, inFeatures: Int, outFeatures: Int, weightBits: Int,
                              outputBytes: Int = 1, hw: NPUHardware) -> LayerCost {
        let macs = rows * inFeatures * outFeatures
        let payload = Double((inFeatures * outFeatures * weightBits + 7) / 8)
        let weightBytes = Int((hw.weightCompression ? payload * hw.compressionRatio : payload).rounded(.up)) + 8 * outFeatures
        let acts = rows * (inFeatures + outFeatures * outputBytes)
        let tile = min(weightBytes, hw.sramBytes / 2)
        let fits = acts + tile <= hw.sramBytes
        let actBytes = fits ? 0 : acts
        let compute = ceilDiv(Double(macs), Double(hw.macsPerCycle))
        let memory = ceilDiv(Double(weightBytes + actBytes), hw.dramBytesPerCycle)
        return LayerCost(name: name, macs: macs, weightBytes: weightBytes, activationBytes: actBytes,
                         sramPeakBytes: fits ? acts + tile : hw.sramBytes, vectorOps: rows * outFeatures,
                         computeCycles: compute, memoryCycles: memory, cycles: max(compute, memory),
                         bound: compute >= memory ? .compute : .memory)
    }

    /// Attention score and value products for `rows` new tokens after `past` cached ones, on an int8 KV cache:
    /// MACs = 2 * heads * headDim * (sum of the keys each new token sees); K and V of the new tokens are written,
    /// and the cache is read from DRAM unless it fits in the activation half of SRAM. Softmax: ~5 vector ops per
    /// score. With a sliding window W a token sees at most W keys and only the last W cached tokens are kept.
    /// `kvBytes`: bytes per cached key plus value element (2 for int8 K and V, 3 with int16 keys).
    public static func attention(name: String, rows: Int, past: Int, shape: TransformerShape, window: Int? = nil,
                                 kvBytes: Int = 2, hw: NPUHardware) -> LayerCost {
        let ctxSum = visibleKeys(rows: rows, past: past, window: window)
        let macs = 2 * shape.heads * shape.headDim * ctxSum
        let kept = window.map { min(past + rows, $0) } ?? past + rows
        let cacheBytes = kept * shape.kvDim * kvBytes
        let written = rows * shape.kvDim * kvBytes
        let fits = cacheBytes <= hw.sramBytes / 2
        let pastRead = window.map { min(past, $0) } ?? past
        let actBytes = written + (fits ? 0 : pastRead * shape.kvDim * kvBytes)
        let compute = ceilDiv(Double(macs), Double(hw.macsPerCycle))
        let memory = ceilDiv(Double(actBytes), hw.dramBytesPerCycle)
        let vops = 5 * shape.heads * ctxSum
        let vector = ceilDiv(Double(vops), Double(hw.vectorOpsPerCycle))
        let cycles = max(compute, memory, vector)
        return LayerCost(name: name, macs: macs, weightBytes: 0, activationBytes: actBytes,
                         sramPeakBytes: min(cacheBytes, hw.sramBytes / 2), vectorOps: vops, computeCycles: compute,
                         memoryCycles: memory, cycles: cycles,
                         bound: cycles == compute ? .compute : (cycles == memory ? .memory : .vector))
    }

    /// Sum over the new tokens t = 0..<rows of the keys token past + t sees: past + t + 1, at most `window`.
    static func visibleKeys(rows: Int, past: Int, window: Int?) -> Int {
        let lo = past + 1, hi = past + rows
        guard let w = window, hi > w else { return (lo + hi) * rows / 2 }
        if lo > w { return rows * w }
        let below = w - lo + 1  // tokens lo...w see all their keys
        return (lo + w) * below / 2 + (rows - below) * w
    }

    /// Norms, RoPE, SwiGLU and residual adds of a block on the vector unit, in element operations: two RMSNorms
    /// at 4 per element, RoPE 3 per q and k element, SwiGLU 5 per hidden element, two residual adds at 1; a rotated
    /// model's online Hadamard on down_proj's input adds n(m + k) for n = k 2^m (m butterfly stages, then the
    /// k x k product that also applies 1/sqrt(n): Kernels' Hadamard.transform).
    public static func vectorOps(name: String, rows: Int, shape: TransformerShape, hw: NPUHardware) -> LayerCost {
        var perRow = 2 * 4 * shape.dim + 3 * (shape.qDim + shape.kvDim) + 5 * shape.hiddenDim + 2 * shape.dim
        if shape.onlineHadamard == true, let (k, m) = Hadamard.factorization(of: shape.hiddenDim) { perRow += shape.hiddenDim * (m + k) }
        let ops = rows * perRow
        let cycles = ceilDiv(Double(ops), Double(hw.vectorOpsPerCycle))
        return LayerCost(name: name, macs: 0, weightBytes: 0, activationBytes: 0, sramPeakBytes: rows * shape.dim * 2,
                         vectorOps: ops, computeCycles: 0, memoryCycles: 0, cycles: cycles, bound: .vector)
    }

    /// All layers for `rows` tokens after `past` cached ones. `int16Outputs`: the modules (q_proj ... lm_head)
    /// whose outputs are int16 (2 bytes; int16 keys or values double their share of the KV cache).
    public static func phase(shape: TransformerShape, hw: NPUHardware, weightBits: Int, rows: Int, past: Int,
                             int16Outputs: [String] = []) -> CostPhase {
        func bytes(_ module: String) -> Int { int16Outputs.contains(module) ? 2 : 1 }
        var layers: [LayerCost] = []
        for l in 0..<shape.layers {
            for (name, i, o) in shape.blockLinears {
                let prefix = ["gate_proj", "up_proj", "down_proj"].contains(name) ? "mlp" : "self_attn"
                layers.append(linear(name: "model.layers.\(l).\(prefix).\(name)", rows: rows, inFeatures: i, outFeatures: o,
                                     weightBits: weightBits, outputBytes: bytes(name), hw: hw))
            }
            layers.append(attention(name: "model.layers.\(l).self_attn.attention", rows: rows, past: past, shape: shape,
                                    window: shape.attentionWindow(layer: l), kvBytes: bytes("k_proj") + bytes("v_proj"), hw: hw))
            layers.append(vectorOps(name: "model.layers.\(l).vector_ops", rows: rows, shape: shape, hw: hw))
        }
        layers.append(linear(name: "lm_head", rows: rows, inFeatures: shape.dim, outFeatures: shape.vocab,
                             weightBits: weightBits, outputBytes: bytes("lm_head"), hw: hw))
        let cycles = layers.reduce(0) { $0 + $1.cycles }
        let seconds = Double(cycles) / hw.clockHz
        return CostPhase(tokens: rows, context: past + rows, layers: layers, totalCycles: cycles,
                         totalMacs: layers.reduce(0) { $0 + $1.macs },
                         totalDramBytes: layers.reduce(0) { $0 + $1.weightBytes + $1.activationBytes },
                         seconds: seconds, secondsPerToken: seconds / Double(rows), tokensPerSecond: Double(rows) / seconds)
    }

    /// Prefill of `promptTokens` tokens, then decoding one token with `decodeContext` tokens already cached.
    public static func report(shape: TransformerShape, hw: NPUHardware, weightBits: Int, promptTokens: Int,
                              decodeContext: Int, int16Outputs: [String] = []) throws -> CostReport {
        try hw.validate()
        guard weightBits == 8 || weightBits == 4 else { throw QuantKitError(.config, "weight bits must be 8 or 4, got \(weightBits)") }
        try UserLimits.check(promptTokens, "--prompt-tokens", 1...UserLimits.contextTokens)
        try UserLimits.check(decodeContext, "--decode-context", 0...UserLimits.contextTokens)
        return CostReport(hardware: hw, shape: shape, weightBits: weightBits, int16Outputs: int16Outputs.isEmpty ? nil : int16Outputs,
                          prefill: phase(shape: shape, hw: hw, weightBits: weightBits, rows: promptTokens, past: 0,
                                         int16Outputs: int16Outputs),
                          decode: phase(shape: shape, hw: hw, weightBits: weightBits, rows: 1, past: decodeContext,
                                        int16Outputs: int16Outputs))
    }
}
