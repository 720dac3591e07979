import Foundation
import TensorCore

/// Hugging Face BertConfig (config.json names).
public struct BertConfig: Codable, Sendable, Equatable {
    public var vocabSize: Int
    public var hiddenSize: Int
    public var numHiddenLayers: Int
    public var numAttentionHeads: Int
    public var intermediateSize: Int
    public var maxPositionEmbeddings: Int
    public var typeVocabSize: Int
    public var layerNormEps: Float
    public var hiddenAct: String
    public var positionEmbeddingType: String?
    public var modelType: String?

    enum CodingKeys: String, CodingKey {
        case vocabSize = "vocab_size", hiddenSize = "hidden_size", numHiddenLayers = "num_hidden_layers"
        case numAttentionHeads = "num_attention_heads", intermediateSize = "intermediate_size"
        case maxPositionEmbeddings = "max_position_embeddings", typeVocabSize = "type_vocab_size"
        case layerNormEps = "layer_norm_eps", hiddenAct = "hidden_act"
        case positionEmbeddingType = "position_embedding_type", modelType = "model_type"
    }

    public var headDim: Int { hiddenSize / numAttentionHeads }

    public static func load(_ path: String) throws -> BertConfig {
        let data = try readFile(path)
        let c: BertConfig
        do { c = try JSONDecoder().decode(BertConfig.self, from: data) } catch {
            throw QuantKitError(.config, "\(path): not a BERT config.json (\(error))")
        }
        try c.validate(path)
        return c
    }

    public func validate(_ path: String) throws {
        if let t = modelType, !["bert"].contains(t) {
            throw QuantKitError(.unsupported, "\(path): model_type \"\(t)\" is not a BERT encoder")
        }
        // Exact erf GELU only: "gelu_new"/"gelu_pytorch_tanh" are different functions.
        guard hiddenAct == "gelu" else {
            throw QuantKitError(.unsupported, "\(path): hidden_act \"\(hiddenAct)\" not supported (only exact \"gelu\")")
        }
        if let p = positionEmbeddingType, p != "absolute" {
            throw QuantKitError(.unsupported, "\(path): position_embedding_type \"\(p)\" not supported (only \"absolute\")")
        }
        guard hiddenSize > 0, numAttentionHeads > 0, hiddenSize % numAttentionHeads == 0, numHiddenLayers > 0,
              intermediateSize > 0, vocabSize > 0, maxPositionEmbeddings > 0, typeVocabSize > 0 else {
            throw QuantKitError(.config, "\(path): inconsistent sizes (hidden_size must divide by num_attention_heads, all > 0)")
        }
    }
}

/// sentence-transformers pooling, read from modules.json, 1_Pooling/config.json and sentence_bert_config.json.
public struct SentencePoolingConfig: Sendable, Equatable {
    public enum Mode: String, Sendable { case mean, cls }
    public var mode: Mode
    public var normalize: Bool
    public var maxSeqLength: Int
    /// Anything assumed because a file was absent (reported by the CLI).
    public var notes: [String]

    public init(mode: Mode, normalize: Bool, maxSeqLength: Int, notes: [String] = []) {
        self.mode = mode
        self.normalize = normalize
        self.maxSeqLength = maxSeqLength
        self.notes = notes
    }

    public static func load(directory dir: String, config: BertConfig) throws -> SentencePoolingConfig {
        let fm = FileManager.default
        func json(_ rel: String) throws -> [String: Any]? {
            let p = (dir as NSString).appendingPathComponent(rel)
            guard fm.fileExists(atPath: p) else { return nil }
            guard let o = try JSONSerialization.jsonObject(with: readFile(p)) as? [String: Any] else {
                throw QuantKitError(.format, "\(p): expected a JSON object")
            }
            return o
        }
        var notes: [String] = []
        var mode = Mode.mean, normalize = true
        var poolingDir = "1_Pooling", transformerDir = ""
        let modulesPath = (dir as NSString).appendingPathComponent("modules.json")
        if fm.fileExists(atPath: modulesPath) {
            guard let mods = try JSONSerialization.jsonObject(with: readFile(modulesPath)) as? [[String: Any]] else {
                throw QuantKitError(.format, "\(modulesPath): expected a JSON array of modules")
            }
            let types = mods.compactMap { $0["type"] as? String }
            normalize = types.contains { $0.hasSuffix("models.Normalize") }
            for m in mods {
                let t = m["type"] as? String ?? "", path = m["path"] as? String ?? ""
                if t.hasSuffix("models.Pooling") { poolingDir = path }
                else if t.hasSuffix("models.Transformer") { transformerDir = path }
                else if t.hasSuffix("models.Normalize") { continue }
                else { throw QuantKitError(.unsupported, "\(modulesPath): module type \"\(t)\" not supported (Transformer, Pooling, Normalize)") }
            }
        } else {
            notes.append("no modules.json: assuming mean pooling + L2 normalisation (sentence-transformers default)")
        }
        if let p = try json((poolingDir as NSString).appendingPathComponent("config.json")) {
            let meanOn = p["pooling_mode_mean_tokens"] as? Bool ?? false
            let clsOn = p["pooling_mode_cls_token"] as? Bool ?? false
            let others = ["pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens",
                          "pooling_mode_lasttoken"].filter { p[$0] as? Bool ?? false }
            guard others.isEmpty, meanOn != clsOn else {
                throw QuantKitError(.unsupported, "\(dir)/\(poolingDir)/config.json: only one of mean or CLS pooling is supported")
            }
            mode = meanOn ? .mean : .cls
        } else if fm.fileExists(atPath: modulesPath) {
            notes.append("no \(poolingDir)/config.json: assuming mean pooling")
        }
        var maxLen = config.maxPositionEmbeddings
        if let s = try json((transformerDir as NSString).appendingPathComponent("sentence_bert_config.json")),
           let m = s["max_seq_length"] as? Int {
            maxLen = m
        } else {
            notes.append("no sentence_bert_config.json max_seq_length: using max_position_embeddings \(maxLen)")
        }
        if maxLen > config.maxPositionEmbeddings {
            notes.append("max_seq_length \(maxLen) exceeds max_position_embeddings; capped at \(config.maxPositionEmbeddings)")
            maxLen = config.maxPositionEmbeddings
        }
        guard maxLen >= 2 else { throw QuantKitError(.config, "\(dir): max_seq_length \(maxLen) too small") }
        return SentencePoolingConfig(mode: mode, normalize: normalize, maxSeqLength: maxLen, notes: notes)
    }
}
