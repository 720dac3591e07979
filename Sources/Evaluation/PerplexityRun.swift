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

    public init(model: String, corpus: String, evaluation: PerplexityOptions) {
        self.model = model
        self.corpus = corpus
        self.evaluation = evaluation
    }

    /// Errors for option combinations no run can honour, naming the flag.
    public func validate() throws {
        let e = evaluation
        if e.stride != nil && e.protocolKind != .strided { throw QuantKitError(.input, "--stride applies to --protocol strided only") }
        if e.ctx < 2 { throw QuantKitError(.input, "--ctx must be at least 2") }
        if let m = e.maxChunks, m <= 0 { throw QuantKitError(.input, "--max-chunks must be positive") }
        if e.batchTokens < 1 { throw QuantKitError(.input, "--batch must be positive") }
        if saveTokens != nil && kldBase == nil {
            throw QuantKitError(.input, "--save-tokens needs --kld-base (the per-token base NLL comes from it)")
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

/// One perplexity run (SPECS.md protocols) with optional KLD against a base run and per-segment deltas.
public enum PerplexityRun {
    public static func run(_ o: PerplexityRunOptions, progress: any ProgressObserver = NoProgress()) throws -> PerplexityReport {
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

        let base = try o.kldBase.map { try LogitsFile(path: $0) }
        try base?.checkCompatible(corpusSHA256: sha, tokenizer: tokLabel, protocolName: protocolName, ctx: ctx,
                                  stride: opts.effectiveStride, vocab: m.config.vocabSize)
        let acc = base.map { KLDAccumulator(base: $0) }
        let writer = o.saveLogits != nil ? LogitsWriter(vocab: m.config.vocabSize) : nil
        var chunkNLL: [ChunkNLL] = []
        // Per scored token (with a KLD base): where it sits, for the per-segment breakdown.
        var rowPlaces: [(tokenIndex: Int, windowPosition: Int, target: Int32)] = []
        let r = try Perplexity.evaluate(model: m, tokens: ids.tokens, addsBOS: tok.addsBOS, bosId: ids.bos, options: opts,
                                        progress: progress) { row in
            writer?.add(row)
            try acc?.add(row)
            if acc != nil { rowPlaces.append((row.tokenIndex, row.windowPosition, row.target)) }
            while chunkNLL.count <= row.chunk { chunkNLL.append(ChunkNLL(nllSum: 0, count: 0)) }
            chunkNLL[row.chunk].nllSum += row.nll
            chunkNLL[row.chunk].count += 1
        }
        let kld = try acc?.result()
        var breakdown: (segments: [SegmentDelta], rules: SegmentRules, approximate: Int)?
        if let a = acc {
            breakdown = try segments(text: text, tokens: ids.tokens, tokenizer: tok, threads: m.threads, accumulator: a,
                                     places: rowPlaces, rule: o.documents, saveTokens: o.saveTokens, progress: progress)
        }
        if let w = writer, let path = o.saveLogits {
            try w.write(to: path, corpusSHA256: sha, tokenizer: tokLabel, protocolName: protocolName, ctx: ctx,
                        stride: opts.effectiveStride, model: o.model)
        }
        let processed = r.chunks * ctx
        return PerplexityReport(
            model: o.model, tokenizer: tokLabel, corpus: o.corpus, corpusSHA256: sha, protocolKind: opts.protocolKind, ctx: ctx,
            stride: opts.effectiveStride, chunks: r.chunks, tokensScored: r.tokensScored, corpusTokens: ids.tokens.count,
            ppl: r.ppl, pplError: r.pplError, backend: sim == nil ? "cpu" : "npu", activations: activations,
            int8Activations: o.int8Activations, chunkNLL: chunkNLL,
            timings: .init(totalSeconds: Date().timeIntervalSince(t0), tokenizeSeconds: tokenizeSecs, evaluateSeconds: r.seconds,
                           tokensPerSecond: Double(processed) / max(r.seconds, 1e-9)),
            bitsPerWeight: sim == nil ? ModelLoading.blockLinearBitsPerWeight(m) : nil,
            quantization: try GPTQCheckpoint.quantizationSummary(o.model), kld: kld, segments: breakdown?.segments,
            segmentRules: breakdown?.rules,
            npu: sim.map { NPURunSummary($0, calibration: o.npu?.calibration ?? NPUBackendSettings.defaultCalibration, recovery: npuRecovery) },
            gguf: gguf, approximateLines: breakdown?.approximate ?? 0)
    }

    /// The corpus as one token stream: the whole text encoded once, BOS prepended when the tokenizer adds it (the
    /// BOS id is the tokenizer's, else the model config's, else 1).
    public static func tokens(_ text: String, tokenizer tok: any Tokenizer, model m: LlamaModel) -> (tokens: [Int32], bos: Int32) {
        var ids = tok.encode(text, addSpecialTokens: false).map { Int32($0) }
        let bos = Int32(tok.bosId ?? m.config.bosTokenId ?? 1)
        if tok.addsBOS { ids.insert(bos, at: 0) }
        return (ids, bos)
    }

    /// Per-segment deltas of this run against the base (SPECS.md segments), and the rules that placed the tokens;
    /// with `saveTokens`, the per-token records as TSV.
    static func segments(text: String, tokens: [Int32], tokenizer tok: any Tokenizer, threads: Int, accumulator a: KLDAccumulator,
                         places: [(tokenIndex: Int, windowPosition: Int, target: Int32)], rule: DocumentRule, saveTokens: String?,
                         progress: any ProgressObserver) throws -> (segments: [SegmentDelta], rules: SegmentRules, approximate: Int) {
        let (spans, used) = Segments.documents(text, rule: rule)
        let located = Segments.locateLines(text: text, tokens: tokens, leading: tok.addsBOS ? 1 : 0,
                                           limit: (places.map(\.tokenIndex).max() ?? 0) + 1) { pieces in
            tok.encodeBatch(pieces, addSpecialTokens: false, threads: threads)
        }
        if located.approximateLines > 0 {
            progress.note("segments: \(located.approximateLines) of \(located.exactLines + located.approximateLines) lines did not tokenize on their own as in the whole text; their tokens were placed approximately")
        }
        let baseTokens = places.enumerated().map { i, r in
            SegmentToken(tokenIndex: r.tokenIndex, windowPosition: r.windowPosition, tokenId: r.target,
                         byteOffset: located.offsets[r.tokenIndex], nll: a.baseNLL[i])
        }
        var quantTokens = baseTokens
        for i in quantTokens.indices { quantTokens[i].nll = a.runNLL[i]; quantTokens[i].kld = a.tokenKLD[i] }
        let positions = places.map(\.windowPosition)
        let width = Segments.positionBucketWidth(minPosition: positions.min() ?? 0, maxPosition: positions.max() ?? 0)
        let segments = try Segments.perplexityBreakdown(base: baseTokens, quantized: quantTokens, documents: spans,
                                                        positionBucketWidth: width)
        let rules = SegmentRules(documents: used.description, documentCount: spans.count,
                                 tokenLocation: .init(exactLines: located.exactLines, approximateLines: located.approximateLines),
                                 positionBucketWidth: width)
        if let path = saveTokens {
            let docOf = Segments.documentNamer(spans)
            var tsv = "token_index\twindow_position\ttoken_id\tbyte_offset\tdocument\tnll_base\tnll_quantized\tkld\n"
            for (b, q) in zip(baseTokens, quantTokens) {
                let doc = (docOf(b.byteOffset) ?? "").map { $0 == "\t" || $0 == "\n" || $0 == "\r" ? " " : $0 }
                tsv += "\(b.tokenIndex)\t\(b.windowPosition)\t\(b.tokenId)\t\(b.byteOffset)\t\(String(doc))\t\(b.nll)\t\(q.nll)\t\(q.kld ?? .nan)\n"
            }
            try AtomicFile.write(Data(tsv.utf8), to: path)
        }
        return (segments, rules, located.approximateLines)
    }
}
