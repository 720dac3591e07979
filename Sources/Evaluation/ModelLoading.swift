import Foundation
import Models
import Quantization
import Datasets
import TensorCore
import Tokenization

/// Finds and loads a model (float checkpoint or quantized directory) and its tokenizer, for every run and command.
public enum ModelLoading {
    /// Loads a float checkpoint (HF dir or llama2.c .bin), a GPTQ-format directory (quantized kernels) or a llama
    /// GGUF file (its stored types, under `ggufActivations`).
    public static func loadModel(_ path: String, ggufActivations: GGUFActivations = .llamacpp) throws -> LlamaModel {
        if GGUFFile.isGGUF(path) { return try GGUFLlama.load(path: path, activations: ggufActivations) }
        if GPTQCheckpoint.isGPTQ(path) {
            return try LlamaModel.load(path: path, backend: try QuantizedLinearBackend(directory: path))
        }
        return try LlamaModel.load(path: path)
    }

    /// A model and its tokenizer (`tokenizerPath(model:explicit:)`), checked against each other: the one path for
    /// every command that runs a model on text (perplexity, generate, npu report, rag answers...).
    public static func loadModelAndTokenizer(_ path: String, tokenizer explicit: String?, shipped: String = "tok512.model",
                                             ggufActivations: GGUFActivations = .llamacpp)
        throws -> (model: LlamaModel, tokenizer: any Tokenizer, tokenizerPath: String) {
        let m = try loadModel(path, ggufActivations: ggufActivations)
        let tokPath = try tokenizerPath(model: path, explicit: explicit, shipped: shipped)
        let tok = try loadTokenizer(tokPath)
        try checkVocab(tok, model: m, tokenizerPath: tokPath)
        return (m, tok, tokPath)
    }

    /// What `path` holds when it is not a float checkpoint: "already quantized (rtn, 4 bits, group size 32)" for a
    /// GPTQ-layout directory, "a GGUF file (llama.cpp types)" for a GGUF file; nil for a float checkpoint.
    public static func nonFloatDescription(_ path: String) throws -> String? {
        if GGUFFile.isGGUF(path) { return "a GGUF file (llama.cpp's stored types)" }
        guard GPTQCheckpoint.isGPTQ(path) else { return nil }
        guard let s = try GPTQCheckpoint.quantizationSummary(path) else { return "already quantized" }
        let group = s.groupSize < 0 ? "per output channel" : "group size \(s.groupSize)"
        return "already quantized (\(s.method), \(s.bits) bits, \(group))"
    }

    /// Refuses a quantized directory or GGUF file where only a float model makes sense (quantize, layers' --model):
    /// one line naming the path, what it is and `advice`.
    public static func requireFloatModel(_ path: String, advice: String) throws {
        guard let what = try nonFloatDescription(path) else { return }
        throw QuantKitError(.input, "\(path) is \(what); \(advice)")
    }

    /// Storage bits per weight of the transformer blocks' linear layers (what quantization changes): codes plus
    /// per-group float16 scales and integer zero points for quantized layers, the stored dtype for float ones.
    /// A distilled student's bits are counted per weight of its teacher, so it compares with the teacher's
    /// quantized variants at equal size.
    public static func blockLinearBitsPerWeight(_ m: LlamaModel, summary: QuantizationSummary?) -> Double? {
        let own = blockLinearBitsPerWeight(m)
        guard let s = summary?.recovery?.student else { return own }
        return own.map { $0 * s.sizeRatio }
    }

    public static func blockLinearBitsPerWeight(_ m: LlamaModel) -> Double? {
        var bits = 0.0, weights = 0.0
        for block in m.blocks {
            for name in block.linearGroups.joined() {
                guard let layer = block.linear(named: name) else { continue }
                let n = Double(layer.inFeatures * layer.outFeatures)
                if let g = layer as? any GGUFStoredLinear {
                    bits += n * g.weightType.bitsPerWeight
                } else if let q = layer as? QuantizedLinear {
                    let groups = Double(q.groupCount * q.outFeatures)
                    bits += n * Double(q.bits) + groups * Double(16 + q.bits)
                } else if let d = layer as? DenseLinear {
                    bits += n * Double(d.weight.dtype.byteSize * 8)
                } else {
                    return nil
                }
                weights += n
            }
        }
        return weights > 0 ? bits / weights : nil
    }

    /// A quantized checkpoint records its calibration text's n-gram fingerprint; evaluating on text that
    /// overlaps it would flatter the quantized model. Refuses above 10% overlap unless allowed (then warns).
    public static func checkCalibrationOverlap(model: String, text: String, corpus: String, allow: Bool,
                                               progress: any ProgressObserver = NoProgress()) throws {
        guard let fp = try CalibrationFingerprint.read(checkpoint: model) else { return }
        try refuseOverlap(fp.overlap(with: text), model: model, corpus: corpus, allow: allow, progress: progress)
    }

    /// The same check for many short texts (retrieval queries), each text's n-grams on its own.
    public static func checkCalibrationOverlap(model: String, texts: [String], corpus: String, allow: Bool,
                                               progress: any ProgressObserver = NoProgress()) throws {
        guard let fp = try CalibrationFingerprint.read(checkpoint: model) else { return }
        try refuseOverlap(fp.overlap(withTexts: texts), model: model, corpus: corpus, allow: allow, progress: progress)
    }

    private static func refuseOverlap(_ overlap: Double, model: String, corpus: String, allow: Bool,
                                      progress: any ProgressObserver) throws {
        guard overlap > 0.1 else { return }
        let msg = String(format: "%@ overlaps the calibration text of %@ (%.0f%% of its 8-grams were seen in calibration)",
                         corpus, model, overlap * 100)
        if !allow { throw QuantKitError(.input, msg + "; evaluate on other text or pass --allow-overlap") }
        progress.note("warning: " + msg)
    }

    /// The tokenizer file: --tokenizer if given; a GGUF file's own metadata; else one in the model's directory (the
    /// directory itself, or the folder holding a model file): tokenizer.json(.zst), tokenizer.model, tokenizer.bin,
    /// tok*.model / tok*.json; else the shipped `Tokenizers/tok512/<shipped>` of the repository that holds the model
    /// (found by walking up from the model's path). Never relative to the working directory: a command finds the
    /// same tokenizer from anywhere. `shipped`: tok512.model, or tok512.bin for the runs that always used that.
    public static func tokenizerPath(model: String, explicit: String?, shipped: String = "tok512.model") throws -> String {
        if let t = explicit { return t }
        if GGUFFile.isGGUF(model) { return model }  // the vocabulary is in the file's metadata
        let fm = FileManager.default
        var isDir: ObjCBool = false
        _ = fm.fileExists(atPath: model, isDirectory: &isDir)
        let dir = isDir.boolValue ? model : (model as NSString).deletingLastPathComponent
        let base = dir.isEmpty ? "." : dir
        var candidates = ["tokenizer.json", "tokenizer.json.zst", "tokenizer.model", "tokenizer.bin"]
            .map { (base as NSString).appendingPathComponent($0) }
        if let files = try? fm.contentsOfDirectory(atPath: base) {
            candidates += files.filter { $0.hasPrefix("tok") && ($0.hasSuffix(".model") || $0.hasSuffix(".json")) }.sorted()
                .map { (base as NSString).appendingPathComponent($0) }
        }
        if let shippedFile = shippedTokenizer(near: model, name: shipped) { candidates.append(shippedFile) }
        for c in candidates where fm.fileExists(atPath: c) { return c }
        throw QuantKitError(.input, "\(model): no tokenizer found beside the model; pass --tokenizer FILE")
    }

    /// `Tokenizers/tok512/<name>` in the nearest folder above `model` (made absolute) that has one; nil if none does.
    public static func shippedTokenizer(near model: String, name: String = "tok512.model") -> String? {
        var dir = URL(fileURLWithPath: model).standardizedFileURL.resolvingSymlinksInPath().deletingLastPathComponent()
        let fm = FileManager.default
        while true {
            let c = dir.appendingPathComponent("Tokenizers/tok512").appendingPathComponent(name).path
            if fm.fileExists(atPath: c) { return c }
            let up = dir.deletingLastPathComponent()
            if up.path == dir.path || dir.path == "/" { return nil }
            dir = up
        }
    }

    public static func loadTokenizer(_ path: String) throws -> any Tokenizer {
        // A GGUF's vocabulary is in its metadata: read that without loading the file's tensors into memory.
        if GGUFFile.isGGUF(path) { return try GGUFVocabulary.tokenizer(try GGUFFile(path: path)) }
        let data = try readMaybeCompressed(path)
        do { return try TokenizerLoader.load(data: data, fileName: path) } catch let e as TokenizerError {
            throw QuantKitError(.format, e.description)
        }
    }

    /// Tokenizer id for reports: its kind plus the file's hash prefix. Content, not file name, identifies it:
    /// a quantized directory carries the same tokenizer under another name and must still compare.
    public static func tokenizerLabel(_ tok: any Tokenizer, path: String) throws -> String {
        // A GGUF's vocabulary is its tokenizer.* metadata: files of one model in different types compare.
        let sha = GGUFFile.isGGUF(path) ? try GGUFFile(path: path).metadataDigest(prefix: "tokenizer.")
            : Digest.sha256(try readMaybeCompressed(path))
        let kind = tok.name.split(separator: ":").first.map(String.init) ?? tok.name
        return "\(kind)@\(sha.prefix(12))"
    }

    /// Errors when the tokenizer cannot address the model's embedding rows.
    public static func checkVocab(_ tok: any Tokenizer, model: LlamaModel, tokenizerPath: String) throws {
        if tok.vocabSize != model.config.vocabSize {
            throw QuantKitError(.input, "tokenizer \(tokenizerPath) has \(tok.vocabSize) tokens but the model's embedding has \(model.config.vocabSize) rows")
        }
    }
}
