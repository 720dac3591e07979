import Foundation
import Kernels
import TensorCore

/// A Llama-family model config with the Hugging Face config.json names. Optional fields take the defaults
/// transformers uses; derived sizes are computed properties.
public struct LlamaConfig: Codable, Sendable, Equatable {
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var numHiddenLayers: Int
    public var numAttentionHeads: Int
    public var numKeyValueHeads: Int?
    public var headDim: Int?
    public var rmsNormEps: Double
    public var ropeTheta: Double
    public var vocabSize: Int
    public var maxPositionEmbeddings: Int
    public var tieWordEmbeddings: Bool
    public var bosTokenId: Int?
    public var eosTokenId: Int?
    public var modelType: String
    public var architectures: [String]?
    public var attentionBias: Bool?
    public var torchDtype: String?
    /// Mistral's sliding_window / Qwen2's (with use_sliding_window): attention sees at most this many positions.
    public var slidingWindow: Int?
    public var useSlidingWindow: Bool?
    /// Qwen2: the window applies only to layers >= max_window_layers (transformers' default 28), unless
    /// layer_types names each layer's kind ("sliding_attention" / "full_attention").
    public var maxWindowLayers: Int?
    public var layerTypes: [String]?
    /// RoPE scaling: "rope_scaling" (transformers 4.x) or the "rope_parameters" of transformers 5.x, which also
    /// carry rope_theta there. nil: plain RoPE.
    public var ropeScaling: RopeScaling?
    /// The MLP activation; only SiLU (SwiGLU) is run, anything else is refused rather than run as SiLU.
    public var hiddenAct: String?
    /// Llama's mlp_bias (biases on gate/up/down): not supported, refused.
    public var mlpBias: Bool?
    /// QuantKit's rotated checkpoints (`quantize --rotate`): every down_proj input passes through the orthonormal
    /// Hadamard transform H/sqrt(n) at run time (the online half of the rotation; its other half is folded
    /// into down_proj's weights). nil / false: plain Llama.
    public var downProjInputHadamard: Bool?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case hiddenSize = "hidden_size", intermediateSize = "intermediate_size", numHiddenLayers = "num_hidden_layers"
        case numAttentionHeads = "num_attention_heads", numKeyValueHeads = "num_key_value_heads", headDim = "head_dim"
        case rmsNormEps = "rms_norm_eps", ropeTheta = "rope_theta", vocabSize = "vocab_size"
        case maxPositionEmbeddings = "max_position_embeddings", tieWordEmbeddings = "tie_word_embeddings"
        case bosTokenId = "bos_token_id", eosTokenId = "eos_token_id", modelType = "model_type"
        case architectures, attentionBias = "attention_bias", torchDtype = "torch_dtype"
        case slidingWindow = "sliding_window", useSlidingWindow = "use_sliding_window"
        case maxWindowLayers = "max_window_layers", layerTypes = "layer_types"
        case ropeScaling = "rope_scaling", hiddenAct = "hidden_act", mlpBias = "mlp_bias"
        case downProjInputHadamard = "quantkit_down_proj_hadamard"
    }
    /// Read, never written (an exported config keeps the 4.x layout, which transformers 5 reads too).
    enum DecodingOnlyKeys: String, CodingKey { case ropeParameters = "rope_parameters" }

    public static let supportedModelTypes = ["llama", "mistral", "qwen2"]
    public static let supportedArchitectures = ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"]

    public init(hiddenSize: Int, intermediateSize: Int, numHiddenLayers: Int, numAttentionHeads: Int,
                numKeyValueHeads: Int? = nil, headDim: Int? = nil, rmsNormEps: Double = 1e-6, ropeTheta: Double = 10000,
                vocabSize: Int, maxPositionEmbeddings: Int = 2048, tieWordEmbeddings: Bool = false,
                bosTokenId: Int? = 1, eosTokenId: Int? = 2, modelType: String = "llama",
                architectures: [String]? = ["LlamaForCausalLM"], attentionBias: Bool? = nil) {
        self.hiddenSize = hiddenSize; self.intermediateSize = intermediateSize; self.numHiddenLayers = numHiddenLayers
        self.numAttentionHeads = numAttentionHeads; self.numKeyValueHeads = numKeyValueHeads; self.headDim = headDim
        self.rmsNormEps = rmsNormEps; self.ropeTheta = ropeTheta; self.vocabSize = vocabSize
        self.maxPositionEmbeddings = maxPositionEmbeddings; self.tieWordEmbeddings = tieWordEmbeddings
        self.bosTokenId = bosTokenId; self.eosTokenId = eosTokenId; self.modelType = modelType
        self.architectures = architectures; self.attentionBias = attentionBias
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        hiddenSize = try c.decode(Int.self, forKey: .hiddenSize)
        intermediateSize = try c.decode(Int.self, forKey: .intermediateSize)
        numHiddenLayers = try c.decode(Int.self, forKey: .numHiddenLayers)
        numAttentionHeads = try c.decode(Int.self, forKey: .numAttentionHeads)
        numKeyValueHeads = try c.decodeIfPresent(Int.self, forKey: .numKeyValueHeads)
        headDim = try c.decodeIfPresent(Int.self, forKey: .headDim)
        rmsNormEps = try c.decodeIfPresent(Double.self, forKey: .rmsNormEps) ?? 1e-6
        // transformers 5 writes rope_theta and the scaling into rope_parameters; 4.x has them at the top level.
        let parameters = try decoder.container(keyedBy: DecodingOnlyKeys.self)
            .decodeIfPresent(RopeScaling.self, forKey: .ropeParameters)
        ropeTheta = try c.decodeIfPresent(Double.self, forKey: .ropeTheta) ?? parameters?.ropeTheta ?? 10000
        let scaling = try c.decodeIfPresent(RopeScaling.self, forKey: .ropeScaling) ?? parameters
        ropeScaling = scaling?.ropeType == "default" ? nil : scaling
        hiddenAct = try c.decodeIfPresent(String.self, forKey: .hiddenAct)
        mlpBias = try c.decodeIfPresent(Bool.self, forKey: .mlpBias)
        vocabSize = try c.decode(Int.self, forKey: .vocabSize)
        maxPositionEmbeddings = try c.decodeIfPresent(Int.self, forKey: .maxPositionEmbeddings) ?? 2048
        tieWordEmbeddings = try c.decodeIfPresent(Bool.self, forKey: .tieWordEmbeddings) ?? false
        bosTokenId = try c.decodeIfPresent(Int.self, forKey: .bosTokenId)
        // eos_token_id may be a list in HF configs; the first entry is the primary one.
        if let one = try? c.decodeIfPresent(Int.self, forKey: .eosTokenId) {
            eosTokenId = one
        } else {
            eosTokenId = (try? c.decodeIfPresent([Int].self, forKey: .eosTokenId))??.first
        }
        modelType = try c.decode(String.self, forKey: .modelType)
        architectures = try c.decodeIfPresent([String].self, forKey: .architectures)
        attentionBias = try c.decodeIfPresent(Bool.self, forKey: .attentionBias)
        torchDtype = try? c.decodeIfPresent(String.self, forKey: .torchDtype)
        slidingWindow = (try? c.decodeIfPresent(Int.self, forKey: .slidingWindow)) ?? nil
        useSlidingWindow = (try? c.decodeIfPresent(Bool.self, forKey: .useSlidingWindow)) ?? nil
        maxWindowLayers = (try? c.decodeIfPresent(Int.self, forKey: .maxWindowLayers)) ?? nil
        layerTypes = try c.decodeIfPresent([String].self, forKey: .layerTypes)
        downProjInputHadamard = try c.decodeIfPresent(Bool.self, forKey: .downProjInputHadamard)
    }

    /// The attention window in effect, if any: Mistral applies sliding_window whenever set; Qwen2 only with
    /// use_sliding_window true; Llama has none (transformers' LlamaModel ignores a stray sliding_window key).
    public var attentionWindow: Int? {
        guard let w = slidingWindow, w > 0 else { return nil }
        switch modelType {
        case "mistral": return w
        case "qwen2": return useSlidingWindow == true ? w : nil
        default: return nil
        }
    }

    /// The window of one decoder layer, as transformers decides it: every Mistral layer; for Qwen2 (Qwen2Config)
    /// the layers whose layer_types entry is "sliding_attention", or without layer_types those with
    /// index >= max_window_layers (default 28).
    public func attentionWindow(layer: Int) -> Int? {
        guard let w = attentionWindow else { return nil }
        guard modelType == "qwen2" else { return w }
        if let types = layerTypes, layer < types.count { return types[layer] == "sliding_attention" ? w : nil }
        return layer >= (maxWindowLayers ?? 28) ? w : nil
    }

    /// The headDim/2 RoPE inverse frequencies (radians per position) with any scaling applied, by the formulas of
    /// transformers' modeling_rope_utils (_compute_default / _linear / _llama3_parameters), in Double.
    public var ropeFrequencies: [Double] {
        let base = RopeTable.frequencies(headDim: headDimension, theta: Float(ropeTheta))
        guard let s = ropeScaling else { return base }
        let factor = s.factor ?? 1
        switch s.ropeType {
        case "linear":
            return base.map { $0 / factor }
        case "llama3":
            // Long wavelengths are slowed down by `factor`, short ones kept, and the band between is blended.
            let low = s.lowFreqFactor ?? 1, high = s.highFreqFactor ?? 4
            let original = Double(s.originalMaxPositionEmbeddings ?? 8192)
            let lowWavelength = original / low, highWavelength = original / high
            return base.map { f in
                let wavelength = 2 * Double.pi / f
                if wavelength < highWavelength { return f }
                if wavelength > lowWavelength { return f / factor }
                let smooth = (original / wavelength - low) / (high - low)
                return (1 - smooth) * f / factor + smooth * f
            }
        default:
            return base  // validate() refuses other types
        }
    }

    /// The largest sizes a config may declare, each far above any released model's (Llama 3.1 405B: hidden 16384,
    /// MLP 53248, 126 layers, 128 heads; vocabularies up to ~256 k; contexts up to 10 M positions).
    public enum Limits {
        public static let dimension = 1 << 20
        public static let layers = 1 << 12
        public static let heads = 1 << 14
        public static let vocabulary = 1 << 24
        public static let positions = 1 << 24
    }

    // Derived sizes.
    public var kvHeads: Int { numKeyValueHeads ?? numAttentionHeads }
    public var headDimension: Int { headDim ?? hiddenSize / numAttentionHeads }
    public var qDim: Int { numAttentionHeads * headDimension }
    public var kvDim: Int { kvHeads * headDimension }
    /// Qwen2 always has q/k/v biases; Llama has them (and an o bias) when attention_bias is true.
    public var hasQKVBias: Bool { modelType == "qwen2" || attentionBias == true }
    public var hasOBias: Bool { modelType != "qwen2" && attentionBias == true }

    /// Checks the architecture is one this engine runs and the sizes are consistent.
    public func validate(source: String = "config.json") throws {
        guard LlamaConfig.supportedModelTypes.contains(modelType) else {
            throw QuantKitError(.unsupported, "\(source): unknown model_type '\(modelType)' (supported: \(LlamaConfig.supportedModelTypes.joined(separator: ", ")))")
        }
        if let archs = architectures {
            for a in archs where !LlamaConfig.supportedArchitectures.contains(a) {
                throw QuantKitError(.unsupported, "\(source): unknown architecture '\(a)' (supported: \(LlamaConfig.supportedArchitectures.joined(separator: ", ")))")
            }
        }
        // Every size within its stated limit before any of them is combined: no product can overflow and no
        // allocation is sized from a corrupt or hostile file. Derived sizes are checked after their parts.
        typealias L = LlamaConfig.Limits
        var sizes = [("hidden_size", hiddenSize, L.dimension), ("intermediate_size", intermediateSize, L.dimension),
                     ("num_hidden_layers", numHiddenLayers, L.layers), ("num_attention_heads", numAttentionHeads, L.heads),
                     ("vocab_size", vocabSize, L.vocabulary), ("max_position_embeddings", maxPositionEmbeddings, L.positions)]
        if let k = numKeyValueHeads { sizes.append(("num_key_value_heads", k, L.heads)) }
        if let d = headDim { sizes.append(("head_dim", d, L.dimension)) }
        for (name, v, limit) in sizes where v <= 0 || v > limit {
            throw QuantKitError(.config, v <= 0 ? "\(source): \(name) must be positive (got \(v))"
                                                : "\(source): \(name) \(v) is above QuantKit's limit of \(limit)")
        }
        for (name, v) in [("num_attention_heads x head_dim", numAttentionHeads * headDimension),
                          ("num_key_value_heads x head_dim", kvHeads * headDimension)] where v > L.dimension {
            throw QuantKitError(.config, "\(source): \(name) = \(v) is above QuantKit's limit of \(L.dimension)")
        }
        if headDimension <= 0 {
            throw QuantKitError(.config, "\(source): hidden_size / num_attention_heads gives head_dim \(headDimension); set head_dim")
        }
        if let w = slidingWindow, w <= 0 || w > L.positions {
            throw QuantKitError(.config, "\(source): sliding_window must be 1...\(L.positions) or null (got \(w))")
        }
        if let m = maxWindowLayers, m < 0 || m > L.layers {
            throw QuantKitError(.config, "\(source): max_window_layers must be 0...\(L.layers) (got \(m))")
        }
        for (name, id) in [("bos_token_id", bosTokenId), ("eos_token_id", eosTokenId)] {
            if let id, id < 0 || id >= vocabSize {
                throw QuantKitError(.config, "\(source): \(name) \(id) is outside the vocabulary (0...\(vocabSize - 1))")
            }
        }
        if headDim == nil, hiddenSize % numAttentionHeads != 0 {
            throw QuantKitError(.config, "\(source): num_attention_heads (\(numAttentionHeads)) does not divide hidden_size (\(hiddenSize))")
        }
        if numAttentionHeads % kvHeads != 0 {
            throw QuantKitError(.config, "\(source): num_key_value_heads (\(kvHeads)) does not divide num_attention_heads (\(numAttentionHeads))")
        }
        if headDimension % 2 != 0 {
            throw QuantKitError(.config, "\(source): head_dim (\(headDimension)) must be even for rotary embeddings")
        }
        if let types = layerTypes {
            if types.count != numHiddenLayers {
                throw QuantKitError(.config, "\(source): layer_types has \(types.count) entries, num_hidden_layers is \(numHiddenLayers)")
            }
            if let bad = types.first(where: { $0 != "sliding_attention" && $0 != "full_attention" }) {
                throw QuantKitError(.unsupported, "\(source): layer_types entry '\(bad)' is not supported (sliding_attention, full_attention)")
            }
        }
        if !(rmsNormEps > 0) || !rmsNormEps.isFinite { throw QuantKitError(.config, "\(source): rms_norm_eps must be positive and finite (got \(rmsNormEps))") }
        if !(ropeTheta > 0) || !ropeTheta.isFinite { throw QuantKitError(.config, "\(source): rope_theta must be positive and finite (got \(ropeTheta))") }
        if let s = ropeScaling { try s.validate(source: source) }
        if let act = hiddenAct, act != "silu", act != "swish" {
            throw QuantKitError(.unsupported, "\(source): hidden_act '\(act)' is not supported (silu)")
        }
        if mlpBias == true { throw QuantKitError(.unsupported, "\(source): mlp_bias true is not supported") }
        if downProjInputHadamard == true, Hadamard.factorization(of: intermediateSize) == nil {
            throw QuantKitError(.config, "\(source): quantkit_down_proj_hadamard is set but no Hadamard matrix of order intermediate_size \(intermediateSize) is known")
        }
    }

    /// Reads and validates a config.json; decoding failures name the missing or mistyped field.
    public static func load(path: String) throws -> LlamaConfig {
        let data = try readFile(path)
        let cfg: LlamaConfig
        do { cfg = try JSONDecoder().decode(LlamaConfig.self, from: data) } catch let DecodingError.keyNotFound(key, _) {
            throw QuantKitError(.config, "\(path): missing field '\(key.stringValue)'")
        } catch let DecodingError.typeMismatch(_, ctx) {
            throw QuantKitError(.config, "\(path): field '\(ctx.codingPath.map(\.stringValue).joined(separator: "."))' has the wrong type")
        } catch let DecodingError.valueNotFound(_, ctx) {
            throw QuantKitError(.config, "\(path): field '\(ctx.codingPath.map(\.stringValue).joined(separator: "."))' is null")
        } catch {
            throw QuantKitError(.config, "\(path): not a valid config.json (\(error.localizedDescription))")
        }
        try cfg.validate(source: path)
        return cfg
    }

    /// Pretty JSON with HF names, as written into converted checkpoints.
    public func jsonData() throws -> Data {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try enc.encode(self)
    }
}

/// A RoPE scaling entry ("rope_scaling" / "rope_parameters"), HF names. The type is "rope_type" (older configs:
/// "type"). QuantKit runs default, linear and llama3 scaling and refuses the others (dynamic, yarn, longrope ...)
/// rather than run them as plain RoPE.
public struct RopeScaling: Codable, Sendable, Equatable {
    public var ropeType: String
    public var factor: Double?
    public var lowFreqFactor: Double?
    public var highFreqFactor: Double?
    public var originalMaxPositionEmbeddings: Int?
    /// rope_parameters carries rope_theta too (transformers 5).
    public var ropeTheta: Double?

    public static let supportedTypes = ["default", "linear", "llama3"]

    enum CodingKeys: String, CodingKey {
        case ropeType = "rope_type", type, factor, lowFreqFactor = "low_freq_factor", highFreqFactor = "high_freq_factor"
        case originalMaxPositionEmbeddings = "original_max_position_embeddings", ropeTheta = "rope_theta"
    }

    public init(ropeType: String, factor: Double? = nil, lowFreqFactor: Double? = nil, highFreqFactor: Double? = nil,
                originalMaxPositionEmbeddings: Int? = nil) {
        self.ropeType = ropeType; self.factor = factor; self.lowFreqFactor = lowFreqFactor
        self.highFreqFactor = highFreqFactor; self.originalMaxPositionEmbeddings = originalMaxPositionEmbeddings
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        ropeType = try c.decodeIfPresent(String.self, forKey: .ropeType) ?? c.decodeIfPresent(String.self, forKey: .type) ?? "default"
        factor = try c.decodeIfPresent(Double.self, forKey: .factor)
        lowFreqFactor = try c.decodeIfPresent(Double.self, forKey: .lowFreqFactor)
        highFreqFactor = try c.decodeIfPresent(Double.self, forKey: .highFreqFactor)
        originalMaxPositionEmbeddings = try c.decodeIfPresent(Int.self, forKey: .originalMaxPositionEmbeddings)
        ropeTheta = try c.decodeIfPresent(Double.self, forKey: .ropeTheta)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(ropeType, forKey: .ropeType)
        try c.encodeIfPresent(factor, forKey: .factor)
        try c.encodeIfPresent(lowFreqFactor, forKey: .lowFreqFactor)
        try c.encodeIfPresent(highFreqFactor, forKey: .highFreqFactor)
        try c.encodeIfPresent(originalMaxPositionEmbeddings, forKey: .originalMaxPositionEmbeddings)
    }

    func validate(source: String) throws {
        guard RopeScaling.supportedTypes.contains(ropeType) else {
            throw QuantKitError(.unsupported, "\(source): rope_scaling type '\(ropeType)' is not supported (\(RopeScaling.supportedTypes.joined(separator: ", ")))")
        }
        guard ropeType != "default" else { return }
        guard (factor ?? 0) > 0 else {
            throw QuantKitError(.config, "\(source): rope_scaling (\(ropeType)) needs a positive factor")
        }
        if ropeType == "llama3" {
            guard let low = lowFreqFactor, let high = highFreqFactor, let original = originalMaxPositionEmbeddings else {
                throw QuantKitError(.config, "\(source): llama3 rope_scaling needs low_freq_factor, high_freq_factor and original_max_position_embeddings")
            }
            guard low > 0, high > low, original > 0 else {
                throw QuantKitError(.config, "\(source): llama3 rope_scaling needs 0 < low_freq_factor < high_freq_factor and a positive original_max_position_embeddings")
            }
        }
    }
}
