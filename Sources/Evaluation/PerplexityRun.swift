import Foundation
import Models
import NPU
import Quantization
import TensorCore
import Tokenization

/// Everything one perplexity run needs: the model, tokenizer and corpus, the SPECS.md protocol, and what to keep
/// or compare (a base logits file for KLD and the per-segment deltas).
public struct PerplexityRunOptions: Sendable {
    /// HF directory, llama2.c .bin or a quantized (GPTQ-layout) directory.
    public var model: String
    /// Tokenizer file; nil: the model's own (ModelLoading.tokenizerPath).
    public var tokenizer: String?
    /// The evaluated text (.zst is decompressed; the exact bytes are evaluated).
    public var corpus: String
    public var evaluation: PerplexityOptions
    public var threads: Int?
    /// Store this run's scored distributions for a later run's `kldBase`.
    public var saveLogits: String?
    /// A base run saved with `saveLogits`: KLD statistics and per-segment deltas against it.
    public var kldBase: String?
    /// How the text splits into documents for the per-segment deltas.
    public var documents: DocumentRule = .auto
    /// With `kldBase`: write the per-token records behind the segments (TSV).
    public var saveTokens: String?
    /// Only warn when the corpus overlaps a quantized model's calibration text.
    public var allowOverlap = false
    /// Run a quantized model's 4-bit layers as W4A8 (int8 activations per 32 inputs).
    public var int8Activations = false
    /// Run on the simulated integer NPU with these settings; nil: the CPU.
    public var npu: NPUBackendSettings?
    /// A GGUF model's activation contract (llama.cpp's by default).
    public var ggufActivations: GGUFActivations = .llamacpp
    /// Evaluate only this shard's windows and write a partial result (`runShard`); nil: the whole run.
    public var shard: Shard?

    public init(model: String, corpus: String, evaluation: PerplexityOptions) {
        self.model = model
        self.corpus = corpus
        self.evaluation = evaluation
    }

    /// Errors for option combinations no run can honour, naming the flag.
    public func validate() throws {
        let e = evaluation
        try e.validate()
        if let p = saveLogits { try AtomicFile.checkDestination(p, flag: "--save-logits", directory: false) }
        if let p = saveTokens { try AtomicFile.checkDestination(p, flag: "--save-tokens", directory: false) }
        if saveTokens != nil && kldBase == nil {
            throw QuantKitError(.input, "--save-tokens needs --kld-base (the per-token base NLL comes from it)")
        }
        if shard != nil {
            if saveLogits != nil { throw QuantKitError(.input, "--save-logits with --shard: save the base logits from an unsharded run") }
            if saveTokens != nil { throw QuantKitError(.input, "--save-tokens with --shard: the merged result has the segments; run unsharded for the per-token TSV") }
            if npu != nil { throw QuantKitError(.input, "--shard with --backend npu: the simulated NPU's runs are not sharded yet; run it unsharded") }
        }
        if int8Activations && npu != nil {
            throw QuantKitError(.input, "--int8-activations: the simulated NPU sets its own activation precision")
        }
    }
}

/// How the per-segment deltas were assigned (the `segment_rules` object of a perplexity result).
public struct SegmentRules: Codable, Sendable, Equatable {
    public struct TokenLocation: Codable, Sendable, Equatable {
        public var resolution = "line"
        public var exactLines: Int
        public var approximateLines: Int
        enum CodingKeys: String, CodingKey { case resolution, exactLines = "exact_lines", approximateLines = "approximate_lines" }
    }
    public var documents: String
    public var documentCount: Int
    public var tokenLocation: TokenLocation
    public var positionBucketWidth: Int
    public var position = "window position of the row predicting the token, in buckets [k*w, (k+1)*w - 1]"
    public var frequency = "distinct scored target ids ranked by count (then id): top 10% of ids frequent, bottom 50% rare, the rest mid"
    public var ppl = "exp(mean NLL over the segment's tokens); base NLL from --kld-base (its Float32 target log-prob)"

    enum CodingKeys: String, CodingKey {
        case documents, documentCount = "document_count", tokenLocation = "token_location"
        case positionBucketWidth = "position_bucket_width", position, frequency, ppl
    }
}

/// What a perplexity run measured: the `kind: perplexity` result (docs/RESULTS.md lists every key).
public struct PerplexityReport: Encodable, Sendable {
    public struct Timings: Encodable, Sendable {
        public var totalSeconds: Double
        public var tokenizeSeconds: Double
        public var evaluateSeconds: Double
        public var tokensPerSecond: Double
        enum CodingKeys: String, CodingKey {
            case totalSeconds = "total_s", tokenizeSeconds = "tokenize_s", evaluateSeconds = "evaluate_s"
            case tokensPerSecond = "tokens_per_s"
        }
    }

    public var model: String
    public var tokenizer: String
    public var corpus: String
    public var corpusSHA256: String
    public var protocolKind: PerplexityProtocol
    public var ctx: Int
    public var stride: Int?
    public var chunks: Int
    public var tokensScored: Int
    /// Tokens of the whole tokenized corpus (BOS included when the tokenizer adds it).
    public var corpusTokens: Int
    public var ppl: Double
    public var pplError: Double
    /// "cpu" or "npu".
    public var backend: String
    /// "float32", or which quantized layers ran with int8 activations (W4A8).
    public var activations: String
    public var int8Activations: Bool
    /// Per-window NLL sums, for the bootstrap intervals of `compare`.
    public var chunkNLL: [ChunkNLL]
    public var timings: Timings
    /// Storage bits per weight of the blocks' linear layers (nil on the NPU, whose weights are its own int8).
    public var bitsPerWeight: Double?
    /// nil: a float model.
    public var quantization: QuantizationSummary?
    public var kld: KLDResult?
    /// With a KLD base: per document, window-position bucket and token-frequency class, each group worst first.
    public var segments: [SegmentDelta]?
    public var segmentRules: SegmentRules?
    public var npu: NPURunSummary?
    /// A model read from GGUF: its stored types and the activation contract it ran under.
    public var gguf: GGUFRunSummary?
    /// Lines the segment location could not place exactly (also sent as a note).
    public var approximateLines: Int

    enum CodingKeys: String, CodingKey {
        case model, tokenizer, corpus, corpusSHA256 = "corpus_sha256", protocolKind = "protocol", ctx, stride, chunks
        case tokensScored = "tokens_scored", corpusTokens = "corpus_tokens", ppl, pplError = "ppl_error", backend, activations, chunkNLL = "chunk_nll"
        case timings, bitsPerWeight = "bits_per_weight", quantization, kld, segments, segmentRules = "segment_rules", gguf
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(model, forKey: .model)
        try c.encode(tokenizer, forKey: .tokenizer)
        try c.encode(corpus, forKey: .corpus)
        try c.encode(corpusSHA256, forKey: .corpusSHA256)
        try c.encode(protocolKind.rawValue, forKey: .protocolKind)
        try c.encode(ctx, forKey: .ctx)
        try c.encode(stride, forKey: .stride)  // null when the protocol has none
        try c.encode(chunks, forKey: .chunks)
        try c.encode(tokensScored, forKey: .tokensScored)
        try c.encode(corpusTokens, forKey: .corpusTokens)
        try c.encode(ppl, forKey: .ppl)
        try c.encode(pplError, forKey: .pplError)
        try c.encode(backend, forKey: .backend)
        try c.encode(activations, forKey: .activations)
        try c.encode(chunkNLL, forKey: .chunkNLL)
        try c.encode(timings, forKey: .timings)
        try c.encodeIfPresent(bitsPerWeight, forKey: .bitsPerWeight)
        try c.encode(quantization, forKey: .quantization)  // null for a float model
        try c.encodeIfPresent(gguf, forKey: .gguf)
        try c.encodeIfPresent(kld, forKey: .kld)
        if kld != nil {
            try c.encode(segments ?? [], forKey: .segments)
            try c.encode(segmentRules, forKey: .segmentRules)
        }
        try npu?.encode(to: encoder)  // its keys sit at the top level (npu, npu_config, ...)
    }
}

/// Everything of a perplexity result except its figures: what was evaluated, and how.
public struct PerplexityRunInfo: Codable, Sendable {
    public var model: String
    public var tokenizer: String
    public var corpus: String
    public var corpusSHA256: String
    public var protocolKind: PerplexityProtocol
    public var ctx: Int
    public var stride: Int?
    public var corpusTokens: Int
    public var backend: String
    public var activations: String
    public var int8Activations: Bool
    public var bitsPerWeight: ExactDouble?
    public var quantization: QuantizationSummary?
    public var gguf: GGUFRunSummary?
}

/// Where each scored token sits, for the per-segment deltas: its place in the token stream and its window, its id,
/// the byte offset of its line, and the documents and rules that group them.
public struct TokenPlacement: Codable, Sendable {
    public struct Document: Codable, Sendable, Equatable { public var name: String; public var start: Int; public var end: Int }
    public var tokenIndex: [Int] = []
    public var windowPosition: [Int] = []
    public var tokenId: [Int32] = []
    public var byteOffset: [Int] = []
    public var documents: [Document]
    public var rules: SegmentRules

    enum CodingKeys: String, CodingKey {
        case tokenIndex = "token_index", windowPosition = "window_position", tokenId = "token_id", byteOffset = "byte_offset"
        case documents, rules
    }

    init(documents: [DocumentSpan], rules: SegmentRules) {
        self.documents = documents.map { Document(name: $0.name, start: $0.bytes.lowerBound, end: $0.bytes.upperBound) }
        self.rules = rules
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        tokenIndex = try c.decode(PackedArray<Int>.self, forKey: .tokenIndex).values
        windowPosition = try c.decode(PackedArray<Int>.self, forKey: .windowPosition).values
        tokenId = try c.decode(PackedArray<Int32>.self, forKey: .tokenId).values
        byteOffset = try c.decode(PackedArray<Int>.self, forKey: .byteOffset).values
        documents = try c.decode([Document].self, forKey: .documents)
        rules = try c.decode(SegmentRules.self, forKey: .rules)
        let n = tokenIndex.count
        guard windowPosition.count == n, tokenId.count == n, byteOffset.count == n,
              documents.allSatisfy({ 0 <= $0.start && $0.start <= $0.end }) else {
            throw DecodingError.dataCorrupted(.init(codingPath: c.codingPath, debugDescription: "token placement arrays differ in length or a document range is reversed"))
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(PackedArray(tokenIndex), forKey: .tokenIndex)
        try c.encode(PackedArray(windowPosition), forKey: .windowPosition)
        try c.encode(PackedArray(tokenId), forKey: .tokenId)
        try c.encode(PackedArray(byteOffset), forKey: .byteOffset)
        try c.encode(documents, forKey: .documents)
        try c.encode(rules, forKey: .rules)
    }

    var spans: [DocumentSpan] { documents.map { DocumentSpan(name: $0.name, bytes: $0.start..<$0.end) } }
}

/// What a perplexity pass over some windows measured, per window and per scored token in scoring order: the
/// inputs of every figure of a perplexity result. A whole run and a merge of shards (their measurements
/// concatenated) turn it into a report through the same `report()`, so their figures are the same bits.
public struct PerplexityMeasurement: Codable, Sendable {
    public var info: PerplexityRunInfo
    public var chunkNLLSum: [Double] = []
    public var chunkTokens: [Int] = []
    /// -log p(target) per scored token, as added into the perplexity.
    public var nll: [Double] = []
    public var tokenizeSeconds = 0.0
    public var evaluateSeconds = 0.0
    public var totalSeconds = 0.0
    /// With a KLD base.
    public var kld: KLDTokens?
    /// With a KLD base: the per-segment placement of every scored token.
    public var placement: TokenPlacement?

    enum CodingKeys: String, CodingKey {
        case info, chunkNLLSum = "chunk_nll_sum", chunkTokens = "chunk_tokens", nll, tokenizeSeconds = "tokenize_s"
        case evaluateSeconds = "evaluate_s", totalSeconds = "total_s", kld, placement
    }

    init(info: PerplexityRunInfo) { self.info = info }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        info = try c.decode(PerplexityRunInfo.self, forKey: .info)
        chunkNLLSum = try c.decode(PackedArray<Double>.self, forKey: .chunkNLLSum).values
        chunkTokens = try c.decode(PackedArray<Int>.self, forKey: .chunkTokens).values
        nll = try c.decode(PackedArray<Double>.self, forKey: .nll).values
        tokenizeSeconds = try c.decode(Double.self, forKey: .tokenizeSeconds)
        evaluateSeconds = try c.decode(Double.self, forKey: .evaluateSeconds)
        totalSeconds = try c.decode(Double.self, forKey: .totalSeconds)
        kld = try c.decodeIfPresent(KLDTokens.self, forKey: .kld)
        placement = try c.decodeIfPresent(TokenPlacement.self, forKey: .placement)
        if let problem = inconsistency() {
            throw DecodingError.dataCorrupted(.init(codingPath: c.codingPath, debugDescription: problem))
        }
        guard chunkNLLSum.count == chunkTokens.count, chunkTokens.reduce(0, +) == nll.count,
              kld.map({ $0.kld.count == nll.count }) ?? true, placement.map({ $0.tokenIndex.count == nll.count }) ?? true,
              (kld == nil) == (placement == nil) else {
            throw DecodingError.dataCorrupted(.init(codingPath: c.codingPath, debugDescription: "per-window and per-token arrays do not agree in length"))
        }
    }

    /// What a damaged or hand-edited partial holds that no run writes: sizes outside their limits, positions outside
    /// the window, non-finite figures. Checked on reading, before any sum or bucket is formed from them.
    private func inconsistency() -> String? {
        let ctx = info.ctx
        guard (2...UserLimits.contextTokens).contains(ctx) else { return "ctx \(ctx) is outside 2...\(UserLimits.contextTokens)" }
        if let s = info.stride, !(1...ctx).contains(s) { return "stride \(s) is outside 1...\(ctx)" }
        guard info.corpusTokens >= 0 else { return "corpus_tokens \(info.corpusTokens) is negative" }
        guard chunkTokens.count <= UserLimits.items, chunkTokens.allSatisfy({ (0...ctx).contains($0) }) else {
            return "a window scores a number of tokens outside 0...ctx"
        }
        guard chunkNLLSum.allSatisfy(\.isFinite), nll.allSatisfy(\.isFinite) else { return "a negative log-likelihood is not finite" }
        if let k = kld {
            guard k.kld.allSatisfy(\.isFinite), k.dpSquared.allSatisfy(\.isFinite), k.baseNLL.allSatisfy(\.isFinite),
                  k.runNLL.allSatisfy(\.isFinite), k.baseNLLSum.isFinite, k.baseTokens >= 0 else {
                return "a KLD figure is not finite"
            }
        }
        if let p = placement {
            guard p.windowPosition.allSatisfy({ (0..<ctx).contains($0) }) else { return "a token's window position is outside 0..<ctx" }
            guard p.tokenIndex.allSatisfy({ $0 >= 0 }), p.tokenId.allSatisfy({ $0 >= 0 }), p.byteOffset.allSatisfy({ $0 >= 0 }) else {
                return "a token index, id or byte offset is negative"
            }
        }
        return nil
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(info, forKey: .info)
        try c.encode(PackedArray(chunkNLLSum), forKey: .chunkNLLSum)
        try c.encode(PackedArray(chunkTokens), forKey: .chunkTokens)
        try c.encode(PackedArray(nll), forKey: .nll)
        try c.encode(tokenizeSeconds, forKey: .tokenizeSeconds)
        try c.encode(evaluateSeconds, forKey: .evaluateSeconds)
        try c.encode(totalSeconds, forKey: .totalSeconds)
        try c.encodeIfPresent(kld, forKey: .kld)
        try c.encodeIfPresent(placement, forKey: .placement)
    }

    /// Appends a later shard's windows and tokens; timings add up.
    mutating func append(_ o: PerplexityMeasurement) {
        chunkNLLSum += o.chunkNLLSum; chunkTokens += o.chunkTokens; nll += o.nll
        tokenizeSeconds += o.tokenizeSeconds; evaluateSeconds += o.evaluateSeconds; totalSeconds += o.totalSeconds
        if kld != nil, let k = o.kld { kld!.append(k) }
        if placement != nil, let p = o.placement {
            placement!.tokenIndex += p.tokenIndex; placement!.windowPosition += p.windowPosition
            placement!.tokenId += p.tokenId; placement!.byteOffset += p.byteOffset
        }
    }

    /// The report's figures: sums in scoring order (SPECS.md), KLD statistics, per-segment deltas.
    public func report() throws -> PerplexityReport {
        var r = PerplexityResult(protocolKind: info.protocolKind, ctx: info.ctx, stride: info.stride, chunks: chunkTokens.count,
                                 tokensScored: nll.count, totalTokens: info.corpusTokens, nllSum: 0, nllSqSum: 0, seconds: evaluateSeconds)
        for x in nll { r.nllSum += x; r.nllSqSum += x * x }
        let stats = try kld?.statistics()
        var segments: [SegmentDelta]?
        var rules = placement?.rules
        if let k = kld, let p = placement {
            let (base, quant) = segmentTokens(k, p)
            let width = Segments.positionBucketWidth(minPosition: p.windowPosition.min() ?? 0, maxPosition: p.windowPosition.max() ?? 0)
            segments = try Segments.perplexityBreakdown(base: base, quantized: quant, documents: p.spans, positionBucketWidth: width)
            rules?.positionBucketWidth = width
        }
        let processed = r.chunks * info.ctx
        return PerplexityReport(
            model: info.model, tokenizer: info.tokenizer, corpus: info.corpus, corpusSHA256: info.corpusSHA256,
            protocolKind: info.protocolKind, ctx: info.ctx, stride: info.stride, chunks: r.chunks, tokensScored: r.tokensScored,
            corpusTokens: info.corpusTokens, ppl: r.ppl, pplError: r.pplError, backend: info.backend, activations: info.activations,
            int8Activations: info.int8Activations,
            chunkNLL: zip(chunkNLLSum, chunkTokens).map { ChunkNLL(nllSum: $0, count: $1) },
            timings: .init(totalSeconds: totalSeconds, tokenizeSeconds: tokenizeSeconds, evaluateSeconds: evaluateSeconds,
                           tokensPerSecond: Double(processed) / max(evaluateSeconds, 1e-9)),
            bitsPerWeight: info.bitsPerWeight?.value, quantization: info.quantization, kld: stats, segments: segments,
            segmentRules: rules, npu: nil, gguf: info.gguf, approximateLines: placement?.rules.tokenLocation.approximateLines ?? 0)
    }

    /// The base's and this run's per-token records for the segment analysis.
    func segmentTokens(_ k: KLDTokens, _ p: TokenPlacement) -> (base: [SegmentToken], quantized: [SegmentToken]) {
        var base: [SegmentToken] = [], quant: [SegmentToken] = []
        base.reserveCapacity(k.kld.count); quant.reserveCapacity(k.kld.count)
        for i in k.kld.indices {
            let t = SegmentToken(tokenIndex: p.tokenIndex[i], windowPosition: p.windowPosition[i], tokenId: p.tokenId[i],
                                 byteOffset: p.byteOffset[i], nll: k.baseNLL[i])
            base.append(t)
            var q = t
            q.nll = k.runNLL[i]; q.kld = k.kld[i]
            quant.append(q)
        }
        return (base, quant)
    }
}

/// One perplexity run (SPECS.md protocols) with optional KLD against a base run and per-segment deltas.
public enum PerplexityRun {
    public static func run(_ o: PerplexityRunOptions, progress: any ProgressObserver = NoProgress()) throws -> PerplexityReport {
        guard o.shard == nil else { throw QuantKitError(.input, "--shard: a shard writes a partial result (PerplexityRun.runShard)") }
        let m = try measure(o, progress: progress)
        var report = try m.measurement.report()
        report.npu = m.npu
        if let path = o.saveTokens, let k = m.measurement.kld, let p = m.measurement.placement {
            try writeTokens(m.measurement.segmentTokens(k, p), documents: p.spans, to: path)
        }
        return report
    }

    /// The shard `o.shard` of a run: its windows' measurement and the provenance a merge checks.
    public static func runShard(_ o: PerplexityRunOptions, progress: any ProgressObserver = NoProgress()) throws -> PartialResult<PerplexityMeasurement> {
        guard let shard = o.shard else { throw QuantKitError(.input, "--shard is required for a partial run") }
        let m = try measure(o, progress: progress)
        var provenance = [
            "model_sha256": try Digest.sha256(modelPath: o.model), "corpus_sha256": m.measurement.info.corpusSHA256,
            "tokenizer": m.measurement.info.tokenizer, "protocol": o.evaluation.protocolKind.rawValue, "ctx": String(o.evaluation.ctx),
            "stride": o.evaluation.effectiveStride.map(String.init) ?? "none", "max_chunks": o.evaluation.maxChunks.map(String.init) ?? "none",
            "activations": m.measurement.info.activations, "documents": o.documents.description,
        ]
        if let k = m.measurement.kld {
            provenance["kld_base"] = "\(k.baseTokens) tokens, nll sum \(String(k.baseNLLSum.bitPattern, radix: 16)), \(k.encoding.rawValue)"
        }
        return PartialResult(header: PartialHeader(partialOf: "perplexity", shard: shard, provenance: provenance,
                                                   items: ShardItems(unit: "windows", first: m.windows.lowerBound,
                                                                     count: m.windows.count, total: m.totalWindows)),
                             body: m.measurement)
    }

    /// Loads, tokenizes and evaluates the run's windows (the shard's, or all), collecting the measurement.
    static func measure(_ o: PerplexityRunOptions, progress: any ProgressObserver) throws
        -> (measurement: PerplexityMeasurement, npu: NPURunSummary?, windows: Range<Int>, totalWindows: Int) {
        try o.validate()
        let t0 = Date()
        var m = try ModelLoading.loadModel(o.model, ggufActivations: o.ggufActivations)
        if let t = o.threads { m.threads = max(1, t) }
        let gguf = try GGUFRunSummary(model: m, path: o.model)
        var activations = gguf?.activationsLabel ?? "float32"
        if o.int8Activations {
            let (w4a8, quantized) = m.useInt8Activations()
            guard w4a8 > 0 else {
                throw QuantKitError(.input, "--int8-activations: \(o.model) has no 4-bit layer whose input size and groups are multiples of 32 (\(quantized) quantized layers)")
            }
            activations = "int8 per 32 inputs in \(w4a8) of \(quantized) quantized layers (W4A8)"
            progress.note("W4A8: \(activations)")
        }
        let tokPath = try ModelLoading.tokenizerPath(model: o.model, explicit: o.tokenizer)
        let tok = try ModelLoading.loadTokenizer(tokPath)
        try ModelLoading.checkVocab(tok, model: m, tokenizerPath: tokPath)
        let tokLabel = try ModelLoading.tokenizerLabel(tok, path: tokPath)
        let ctx = o.evaluation.ctx
        if ctx > m.config.maxPositionEmbeddings {
            progress.note("warning: ctx \(ctx) exceeds the model's trained context (max_position_embeddings \(m.config.maxPositionEmbeddings))")
        }
        let bytes = try readMaybeCompressed(o.corpus)
        let sha = Digest.sha256(bytes)
        guard let text = String(data: bytes, encoding: .utf8) else { throw QuantKitError(.format, "\(o.corpus): not valid UTF-8 text") }
        try ModelLoading.checkCalibrationOverlap(model: o.model, text: text, corpus: o.corpus, allow: o.allowOverlap, progress: progress)
        var npuRecovery: NPURecovery?
        if let s = o.npu, let r = try NPUModelSetup.recover(m, tokenizer: tok, settings: s, window: ctx, progress: progress) {
            m = r.model
            npuRecovery = r.record
        }
        let sim = try o.npu.map { try NPUModelSetup.apply(to: m, tokenizer: tok, settings: $0, window: ctx, progress: progress) }

        let t1 = Date()
        let ids = PerplexityRun.tokens(text, tokenizer: tok, model: m)
        let tokenizeSecs = Date().timeIntervalSince(t1)
        let opts = o.evaluation
        let protocolName = opts.protocolKind.rawValue
        let windows = try Perplexity.windows(n: ids.tokens.count, options: opts, addsBOS: tok.addsBOS)
        let range = try o.shard?.range(of: windows.count, unit: "windows") ?? windows.indices
        let firstRow = windows[..<range.lowerBound].reduce(0) { $0 + $1.end - $1.scoreFrom }

        let base = try o.kldBase.map { try LogitsFile(path: $0) }
        try base?.checkCompatible(corpusSHA256: sha, tokenizer: tokLabel, protocolName: protocolName, ctx: ctx,
                                  stride: opts.effectiveStride, vocab: m.config.vocabSize)
        let acc = base.map { KLDAccumulator(base: $0, firstRow: firstRow) }
        // Rows wait on the destination's disk, not in memory, until the file is written.
        let writer = o.saveLogits.map { path -> LogitsWriter in
            let dir = (path as NSString).deletingLastPathComponent
            return LogitsWriter(vocab: m.config.vocabSize, spoolDirectory: dir.isEmpty ? "." : dir)
        }
        let summary = try GPTQCheckpoint.quantizationSummary(o.model)
        var measured = PerplexityMeasurement(info: PerplexityRunInfo(
            model: o.model, tokenizer: tokLabel, corpus: o.corpus, corpusSHA256: sha, protocolKind: opts.protocolKind, ctx: ctx,
            stride: opts.effectiveStride, corpusTokens: ids.tokens.count, backend: sim == nil ? "cpu" : "npu", activations: activations,
            int8Activations: o.int8Activations, bitsPerWeight: sim == nil ? ModelLoading.blockLinearBitsPerWeight(m, summary: summary).map(ExactDouble.init) : nil,
            quantization: summary, gguf: gguf))
        // Per scored token (with a KLD base): where it sits, for the per-segment breakdown.
        var rowPlaces: [(tokenIndex: Int, windowPosition: Int, target: Int32)] = []
        let r = try Perplexity.evaluate(model: m, tokens: ids.tokens, addsBOS: tok.addsBOS, bosId: ids.bos, options: opts,
                                        windows: range, progress: progress) { row in
            try writer?.add(row)
            try acc?.add(row)
            if acc != nil { rowPlaces.append((row.tokenIndex, row.windowPosition, row.target)) }
            let chunk = row.chunk - range.lowerBound
            while measured.chunkTokens.count <= chunk { measured.chunkNLLSum.append(0); measured.chunkTokens.append(0) }
            measured.chunkNLLSum[chunk] += row.nll
            measured.chunkTokens[chunk] += 1
            measured.nll.append(row.nll)
        }
        if let a = acc {
            measured.kld = a.tokens
            // Lines are located up to the run's last scored token, whichever shard this is, so every shard
            // reports the same rules.
            measured.placement = placement(text: text, tokens: ids.tokens, tokenizer: tok, threads: m.threads, places: rowPlaces,
                                           limit: windows.last!.end, rule: o.documents, progress: progress)
        }
        if let w = writer, let path = o.saveLogits {
            try w.write(to: path, corpusSHA256: sha, tokenizer: tokLabel, protocolName: protocolName, ctx: ctx,
                        stride: opts.effectiveStride, model: o.model)
        }
        measured.tokenizeSeconds = tokenizeSecs
        measured.evaluateSeconds = r.seconds
        measured.totalSeconds = Date().timeIntervalSince(t0)
        let npu = sim.map { NPURunSummary($0, calibration: o.npu?.calibration ?? NPUBackendSettings.defaultCalibration, recovery: npuRecovery) }
        return (measured, npu, range, windows.count)
    }

    /// The corpus as one token stream: the whole text encoded once, BOS prepended when the tokenizer adds it (the
    /// BOS id is the tokenizer's, else the model config's, else 1).
    public static func tokens(_ text: String, tokenizer tok: any Tokenizer, model m: LlamaModel) -> (tokens: [Int32], bos: Int32) {
        var ids = tok.encode(text, addSpecialTokens: false).map { Int32($0) }
        let bos = Int32(tok.bosId ?? m.config.bosTokenId ?? 1)
        if tok.addsBOS { ids.insert(bos, at: 0) }
        return (ids, bos)
    }

    /// Where the scored tokens sit (SPECS.md segments): documents, line offsets, the rules used.
    static func placement(text: String, tokens: [Int32], tokenizer tok: any Tokenizer, threads: Int,
                          places: [(tokenIndex: Int, windowPosition: Int, target: Int32)], limit: Int, rule: DocumentRule,
                          progress: any ProgressObserver) -> TokenPlacement {
        let (spans, used) = Segments.documents(text, rule: rule)
        let located = Segments.locateLines(text: text, tokens: tokens, leading: tok.addsBOS ? 1 : 0, limit: limit) { pieces in
            tok.encodeBatch(pieces, addSpecialTokens: false, threads: threads)
        }
        if located.approximateLines > 0 {
            progress.note("segments: \(located.approximateLines) of \(located.exactLines + located.approximateLines) lines did not tokenize on their own as in the whole text; their tokens were placed approximately")
        }
        var p = TokenPlacement(documents: spans, rules: SegmentRules(
            documents: used.description, documentCount: spans.count,
            tokenLocation: .init(exactLines: located.exactLines, approximateLines: located.approximateLines),
            positionBucketWidth: 0))
        p.tokenIndex = places.map(\.tokenIndex)
        p.windowPosition = places.map(\.windowPosition)
        p.tokenId = places.map(\.target)
        p.byteOffset = places.map { located.offsets[$0.tokenIndex] }
        return p
    }

    /// The per-token records behind the segments, as TSV (`--save-tokens`).
    static func writeTokens(_ t: (base: [SegmentToken], quantized: [SegmentToken]), documents: [DocumentSpan], to path: String) throws {
        let docOf = Segments.documentNamer(documents)
        var tsv = "token_index\twindow_position\ttoken_id\tbyte_offset\tdocument\tnll_base\tnll_quantized\tkld\n"
        for (b, q) in zip(t.base, t.quantized) {
            let doc = (docOf(b.byteOffset) ?? "").map { $0 == "\t" || $0 == "\n" || $0 == "\r" ? " " : $0 }
            tsv += "\(b.tokenIndex)\t\(b.windowPosition)\t\(b.tokenId)\t\(b.byteOffset)\t\(String(doc))\t\(b.nll)\t\(q.nll)\t\(q.kld ?? .nan)\n"
        }
        try AtomicFile.write(Data(tsv.utf8), to: path)
    }
}
