import Evaluation
import Foundation
import Models
import Quantization
import TensorCore
import Tokenization

/// The tokenizer feeding an embedder: the model directory's tokenizer.json (or .zst) through Tokenization,
/// encoding with the post-processor's [CLS] ... [SEP] (the encoder truncates to max_seq_length).
enum RagTokenizerBridge {
    static func make(modelDirectory dir: String) throws -> @Sendable (String) throws -> [Int32] {
        try EmbedderTokenizer.load(directory: dir)
    }
}

/// What a run's quantized model is, for result files (the verdict's advice depends on the method): a GPTQ-layout
/// directory's method and settings, an RTN scheme's, or null for the float model.
enum RagQuantization {
    static func summary(_ spec: String?) throws -> Any {
        guard let spec else { return NSNull() }
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: spec, isDirectory: &isDir), isDir.boolValue {
            return try GPTQCheckpoint.quantizationSummary(spec).map(JSONBridge.object) ?? NSNull()
        }
        let s = try EmbedderQuantSpec.parseRTN(spec)
        return try JSONBridge.object(QuantizationSummary(rtnBits: s.bits, groupSize: s.groupSize, sym: s.symmetric))
    }
}

/// `--embedder-quantized` values: a GPTQ checkpoint directory (weights + config.json of a BERT embedder) or an
/// RTN scheme applied to the float embedder's weights at load time.
enum RagQuantizedEmbedders {
    static func load(spec: String, floatDirectory: String) throws -> (model: BertModel, label: String) {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: spec, isDirectory: &isDir), isDir.boolValue {
            guard GPTQCheckpoint.isGPTQ(spec) else {
                throw QuantKitError(.input, "--embedder-quantized \(spec): a directory must be a GPTQ checkpoint (quantize_config.json)")
            }
            return (try BertModel(directory: spec, backend: try QuantizedLinearBackend(directory: spec)),
                    (spec as NSString).lastPathComponent)
        }
        let scheme = try EmbedderQuantSpec.parseRTN(spec)
        if GPTQCheckpoint.isGPTQ(floatDirectory) {
            throw QuantKitError(.input, "--embedder-quantized \(spec): --embedder \(floatDirectory) is already quantized (GPTQ); RTN needs the float embedder")
        }
        return (try BertModel(directory: floatDirectory, backend: RTNEmbedderBackend(scheme: scheme)), spec)
    }
}
