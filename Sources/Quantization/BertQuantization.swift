import Datasets
import Foundation
import Models
import TensorCore

/// Calibration data of an embedder: whole passages as the embedder encodes them (not windows cut from a token
/// stream), drawn reproducibly from a corpus and tokenized with the embedder's own tokenizer.
public enum EmbedderCalibration {
    /// The passages of a calibration file (`CalibrationText.passages`: BEIR documents as retrieval embeds them,
    /// SQuAD contexts, or plain-text lines) with whitespace stripped as the encoder strips it, empty ones dropped,
    /// and the file's raw bytes (for the sha256).
    public static func passages(_ path: String) throws -> (passages: [String], raw: Data) {
        let (passages, raw) = try CalibrationText.passages(path)
        return (passages.map(BertSentenceEncoder.stripPythonWhitespace).filter { !$0.isEmpty }, raw)
    }

    /// `samples` distinct passage indices out of `count`, drawn without replacement (seeded partial Fisher-Yates
    /// on SplitMix64), in draw order.
    public static func draw(count: Int, samples: Int, seed: UInt64, source: String = "calibration") throws -> [Int] {
        try UserLimits.check(samples, "--samples", 1...UserLimits.samples)
        guard count >= samples else {
            throw QuantKitError(.input, "\(source): \(count) passages, too few for --samples \(samples)")
        }
        var rng = SplitMix64(seed: seed)
        var idx = Array(0..<count)
        for i in 0..<samples { idx.swapAt(i, i + rng.index(count - i)) }
        return Array(idx.prefix(samples))
    }

    /// Token sequences for calibration: `samples` passages drawn with `seed`, tokenized with [CLS] ... [SEP] and
    /// truncated to `seqlen` tokens the way sentence-transformers truncates (first seqlen-1 tokens + [SEP]).
    public static func sequences(passages: [String], samples: Int, seqlen: Int, seed: UInt64, source: String,
                                 tokenize: (String) throws -> [Int32]) throws -> [[Int32]] {
        try UserLimits.checkCalibration(samples: samples, seqlen: seqlen, minSeqlen: 2)  // [CLS] and [SEP]
        return try draw(count: passages.count, samples: samples, seed: seed, source: source).map { i in
            let ids = try tokenize(passages[i])
            guard !ids.isEmpty else { throw QuantKitError(.input, "\(source): passage \(i + 1) tokenizes to nothing") }
            return BertSentenceEncoder.truncate(ids, maxLength: seqlen).ids
        }
    }
}

extension ModelQuantizer {
    /// GPTQ or RTN of a BERT encoder, layer by layer (`BertLayerwise`: calibration sequences packed into batches of
    /// about `batchTokens` tokens, no padding rows). Inside each encoder layer the modules are quantized in
    /// true-sequential groups [query, key, value] -> [attention.output.dense] -> [intermediate.dense] -> [output.dense].
    public static func quantize(bert model: BertModel, sequences: [[Int32]], options: ModelQuantizationOptions,
                                batchTokens: Int = 8192, threads: Int = Parallel.defaultThreads,
                                progress: any ProgressObserver = NoProgress()) throws -> Result {
        guard options.method == .rtn || !sequences.isEmpty else { throw QuantKitError(.input, "GPTQ needs calibration passages") }
        guard options.gptaqAlpha == nil else {
            throw QuantKitError(.unsupported, "--gptaq is implemented for the Llama family, not BERT encoders")
        }
        let walker = BertLayerwise(model: model, threads: threads, batchTokens: batchTokens)
        return try quantize(walker, calibration: sequences, options: options, progress: progress)
    }

    /// Writes a quantized BERT embedder as a GPTQ directory: every tensor of the source checkpoint except the
    /// quantized linear weights (embeddings, LayerNorms, biases, pooler, position ids: as stored) plus the packed
    /// layers, the source's config.json with quantization_config added, quantize_config.json, the fingerprint and
    /// `copyFiles` (tokenizer and sentence-transformers files, see `BertSentenceEncoder.companionFiles`).
    public static func write(bert model: BertModel, result: Result, options: ModelQuantizationOptions, to dir: String,
                             metadata: [String: Any], fingerprint: CalibrationFingerprint?,
                             copyFiles: [(from: String, name: String)] = []) throws {
        let quantized = Set(result.layers.map { $0.0 + ".weight" })
        var floats: [(String, Tensor)] = []
        for name in model.source.names where !quantized.contains(name) { floats.append((name, try model.source.tensor(name))) }
        let cfgPath = (model.directory as NSString).appendingPathComponent("config.json")
        guard let modelConfig = try JSONSerialization.jsonObject(with: readFile(cfgPath)) as? [String: Any] else {
            throw QuantKitError(.format, "\(cfgPath): expected a JSON object")
        }
        try writeCheckpoint(floats: floats, modelConfig: modelConfig, result: result, options: options, to: dir, metadata: metadata,
                            fingerprint: fingerprint, copyFiles: copyFiles)
    }
}
