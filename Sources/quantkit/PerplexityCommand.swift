import ArgumentParser
import Evaluation
import Foundation
import Models
import NPU
import Quantization
import TensorCore
import Tokenization

extension PerplexityProtocol: ExpressibleByArgument {}

struct PerplexityCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "perplexity",
        abstract: "Perplexity under a SPECS.md protocol; optional base logits save / KLD comparison.")
    @Option(help: "HF model directory or llama2.c .bin checkpoint.") var model: String
    @Option(help: "Tokenizer file (.json, .model, .bin); default: the model's own.") var tokenizer: String?
    @Option(help: "Text corpus (.zst is decompressed; the exact bytes are evaluated).") var corpus: String
    @Option(help: "Context length (window) in tokens.") var ctx: Int
    @Option(name: .customLong("protocol"), help: "llamacpp | gptq | strided") var protocolKind: PerplexityProtocol = .llamacpp
    @Option(help: "Stride for --protocol strided (default ctx/2).") var stride: Int?
    @Option(name: .customLong("max-chunks"), help: "Evaluate at most this many windows.") var maxChunks: Int?
    @Option(help: "Worker threads.") var threads: Int?
    @Option(help: "Tokens per forward pass: batch / ctx windows run side by side (as llama.cpp's -b); the figures do not depend on it. Use --batch equal to --ctx for one window per pass.")
    var batch: Int = PerplexityOptions.defaultBatchTokens
    @Option(help: "Write a JSON result here.") var json: String?
    @Option(name: .customLong("save-logits"), help: "Store this run's scored distributions (zstd) for a later --kld-base.") var saveLogits: String?
    @Option(name: .customLong("kld-base"), help: "Compare with a base run saved by --save-logits (KLD statistics).") var kldBase: String?
    @Option(help: "With --kld-base: how the text splits into documents for the per-segment deltas: auto | wikitext | paragraphs | lines:N (see Segments.swift, DocumentRule).")
    var documents: String = "auto"
    @Option(name: .customLong("save-tokens"), help: "With --kld-base: write the per-token records behind the segments (TSV).") var saveTokens: String?

    func validate() throws {
        if stride != nil && protocolKind != .strided { throw ValidationError("--stride applies to --protocol strided only") }
        if ctx < 2 { throw ValidationError("--ctx must be at least 2") }
        if let m = maxChunks, m <= 0 { throw ValidationError("--max-chunks must be positive") }
        if batch < 1 { throw ValidationError("--batch must be positive") }
        if saveTokens != nil && kldBase == nil { throw ValidationError("--save-tokens needs --kld-base (the per-token base NLL comes from it)") }
        do { _ = try DocumentRule(parsing: documents) } catch { throw ValidationError("\(error)") }
    }

    @OptionGroup var npu: NpuBackendOptions
    @Flag(name: .customLong("allow-overlap"), help: "Only warn when the corpus overlaps a quantized model's calibration text.")
    var allowOverlap = false
    @Flag(name: .customLong("int8-activations"), help: "Run a quantized model's 4-bit layers as W4A8: activations rounded to int8 per 32 inputs and integer dot products, as llama.cpp runs Q4_0 (faster; a different numerical contract from W4A16). Layers whose input size or groups are not multiples of 32 stay W4A16.")
    var int8Activations = false

    func run() throws {
        try runReportingErrors {
            let t0 = Date()
            let m = try ModelLoading.loadModel(model)
            if let t = threads { m.threads = max(1, t) }
            var activations = "float32"
            if int8Activations {
                guard !npu.isNPU else { throw QuantKitError(.input, "--int8-activations: the simulated NPU sets its own activation precision") }
                let (w4a8, quantized) = m.useInt8Activations()
                guard w4a8 > 0 else {
                    throw QuantKitError(.input, "--int8-activations: \(model) has no 4-bit layer whose input size and groups are multiples of 32 (\(quantized) quantized layers)")
                }
                activations = "int8 per 32 inputs in \(w4a8) of \(quantized) quantized layers (W4A8)"
                logInfo("W4A8: \(activations)")
            }
            let tokPath = try ModelLoading.tokenizerPath(model: model, explicit: tokenizer)
            let tok = try ModelLoading.loadTokenizer(tokPath)
            try ModelLoading.checkVocab(tok, model: m, tokenizerPath: tokPath)
            let tokLabel = try ModelLoading.tokenizerLabel(tok, path: tokPath)
            if ctx > m.config.maxPositionEmbeddings {
                logInfo("warning: ctx \(ctx) exceeds the model's trained context (max_position_embeddings \(m.config.maxPositionEmbeddings))")
            }
            let bytes = try readMaybeCompressed(corpus)
            let sha = Digest.sha256(bytes)
            guard let text = String(data: bytes, encoding: .utf8) else { throw QuantKitError(.format, "\(corpus): not valid UTF-8 text") }
            try ModelLoading.checkCalibrationOverlap(model: model, text: text, corpus: corpus, allow: allowOverlap)
            var sim: NPUSimulator?
            if npu.isNPU {
                sim = try NPUModelSetup.apply(to: m, tokenizer: tok, options: npu, window: ctx)
            }
            let t1 = Date()
            var ids = tok.encode(text, addSpecialTokens: false).map { Int32($0) }
            let bos = Int32(tok.bosId ?? m.config.bosTokenId ?? 1)
            if tok.addsBOS { ids.insert(bos, at: 0) }
            let tokenizeSecs = Date().timeIntervalSince(t1)
            let opts = PerplexityOptions(protocolKind: protocolKind, ctx: ctx, stride: stride, maxChunks: maxChunks,
                                         batchTokens: batch)

            let base = try kldBase.map { try LogitsFile(path: $0) }
            try base?.checkCompatible(corpusSHA256: sha, tokenizer: tokLabel, protocolName: protocolKind.rawValue, ctx: ctx,
                                      stride: opts.effectiveStride, vocab: m.config.vocabSize)
            let acc = base.map { KLDAccumulator(base: $0) }
            let writer = saveLogits != nil ? LogitsWriter(vocab: m.config.vocabSize) : nil
            let reporter = ProgressReporter("perplexity", total: try Perplexity.windowCount(n: ids.count, options: opts), unit: "tok")
            var processed = 0
            var chunkNLL: [(Double, Int)] = []
            // Per scored token (with --kld-base): where it sits, for the per-segment breakdown.
            var rowPlaces: [(tokenIndex: Int, windowPosition: Int, target: Int32)] = []
            let bitsPerWeight = npu.isNPU ? nil : ModelLoading.blockLinearBitsPerWeight(m)
            let r = try Perplexity.evaluate(model: m, tokens: ids, addsBOS: tok.addsBOS, bosId: bos, options: opts,
                onRow: { row in
                    writer?.add(row)
                    try acc?.add(row)
                    if acc != nil { rowPlaces.append((row.tokenIndex, row.windowPosition, row.target)) }
                    // Per-chunk NLL sums let `compare` bootstrap confidence intervals over chunks.
                    while chunkNLL.count <= row.chunk { chunkNLL.append((0, 0)) }
                    chunkNLL[row.chunk].0 += row.nll
                    chunkNLL[row.chunk].1 += 1
                },
                progress: { done, total, _, ppl in
                    processed += ctx
                    reporter.update(done: done, units: processed, extra: String(format: "ppl %.4f", ppl))
                })
            let kld = try acc?.result()
            var segments: [SegmentDelta] = []
            var segmentRules: [String: Any]? = nil
            if let a = acc {
                let docRule = try DocumentRule(parsing: documents)
                let (spans, used) = Segments.documents(text, rule: docRule)
                let leading = tok.addsBOS ? 1 : 0
                let located = Segments.locateLines(text: text, tokens: ids, leading: leading,
                                                   limit: (rowPlaces.map(\.tokenIndex).max() ?? 0) + 1) { pieces in
                    tok.encodeBatch(pieces, addSpecialTokens: false, threads: m.threads)
                }
                if located.approximateLines > 0 {
                    logInfo("segments: \(located.approximateLines) of \(located.exactLines + located.approximateLines) lines did not tokenize on their own as in the whole text; their tokens were placed approximately")
                }
                let baseTokens = rowPlaces.enumerated().map { i, r in
                    SegmentToken(tokenIndex: r.tokenIndex, windowPosition: r.windowPosition, tokenId: r.target,
                                 byteOffset: located.offsets[r.tokenIndex], nll: a.baseNLL[i])
                }
                var quantTokens = baseTokens
                for i in quantTokens.indices { quantTokens[i].nll = a.runNLL[i]; quantTokens[i].kld = a.tokenKLD[i] }
                let positions = rowPlaces.map(\.windowPosition)
                let width = Segments.positionBucketWidth(minPosition: positions.min() ?? 0, maxPosition: positions.max() ?? 0)
                segments = try Segments.perplexityBreakdown(base: baseTokens, quantized: quantTokens, documents: spans,
                                                            positionBucketWidth: width)
                segmentRules = [
                    "documents": used.description, "document_count": spans.count,
                    "token_location": ["resolution": "line", "exact_lines": located.exactLines, "approximate_lines": located.approximateLines],
                    "position_bucket_width": width,
                    "position": "window position of the row predicting the token, in buckets [k*w, (k+1)*w - 1]",
                    "frequency": "distinct scored target ids ranked by count (then id): top 10% of ids frequent, bottom 50% rare, the rest mid",
                    "ppl": "exp(mean NLL over the segment's tokens); base NLL from --kld-base (its Float32 target log-prob)",
                ]
                if let path = saveTokens {
                    let docOf = Segments.documentNamer(spans)
                    var tsv = "token_index\twindow_position\ttoken_id\tbyte_offset\tdocument\tnll_base\tnll_quantized\tkld\n"
                    for (b, q) in zip(baseTokens, quantTokens) {
                        let doc = (docOf(b.byteOffset) ?? "").map { $0 == "\t" || $0 == "\n" || $0 == "\r" ? " " : $0 }
                        tsv += "\(b.tokenIndex)\t\(b.windowPosition)\t\(b.tokenId)\t\(b.byteOffset)\t\(String(doc))\t\(b.nll)\t\(q.nll)\t\(q.kld ?? .nan)\n"
                    }
                    try AtomicFile.write(Data(tsv.utf8), to: path)
                }
            }
            let quantization = try GPTQCheckpoint.quantizationSummary(model)
            if let w = writer, let path = saveLogits {
                try w.write(to: path, corpusSHA256: sha, tokenizer: tokLabel, protocolName: protocolKind.rawValue, ctx: ctx,
                            stride: opts.effectiveStride, model: model)
            }
            let total = Date().timeIntervalSince(t0)
            let tps = Double(processed) / max(r.seconds, 1e-9)
            print("model        \(model)")
            print("tokenizer    \(tokLabel)")
            print("corpus       \(corpus)  sha256 \(sha)")
            print("protocol     \(protocolKind.rawValue)  ctx \(ctx)  stride \(opts.effectiveStride.map(String.init) ?? "-")")
            print("chunks       \(r.chunks)  tokens scored \(r.tokensScored)  (corpus \(ids.count) tokens)")
            print(String(format: "ppl          %.4f +/- %.4f", r.ppl, r.pplError))
            if int8Activations { print("activations  \(activations)") }
            print(String(format: "speed        %.1f tokens/s  (%.2f s evaluating, %.2f s tokenizing)", tps, r.seconds, tokenizeSecs))
            if let sim { print(sim.summary) }  // after the run: the op counts are the run's
            if let k = kld {
                print(String(format: "KLD          %.6g +/- %.3g  max %.6g", k.kld_mean, k.kld_stderr, k.kld_max))
                print("KLD pct      " + KLDAccumulator.percentiles.map { p -> String in
                    let key = p == 99.9 ? "99.9" : (p == 0.1 ? "0.1" : String(Int(p)))
                    return String(format: "%@: %.4g", key, k.kld_percentiles[key] ?? .nan)
                }.joined(separator: "  "))
                print(String(format: "RMS dp       %.4f %%   same top %.2f %%", 100 * k.rms_dp, k.same_top_percent))
                print(String(format: "ppl ratio    %.6f  ln ratio %.6f  QError %.6f  (base ppl %.4f)", k.ppl_ratio, k.ln_ppl_diff, k.q_error, k.ppl_base))
            }
            if let q = quantization {
                print("quantization \(q["method"] ?? "?")  bits \(q["bits"] ?? "?")  group \(q["group_size"] ?? "?")  act-order \(q["act_order"] ?? "?")  static groups \(q["static_groups"] ?? "?")  sym \(q["sym"] ?? "?")"
                      + ((q["overrides"] as? [String: Any]).map { "  (\($0.count) modules overridden)" } ?? ""))
            }
            if !segments.isEmpty {
                print("segments     the 5 worst per group (rel. loss = segment ppl_q / ppl_base - 1)")
                var rows: [[String]] = [["group", "segment", "tokens", "ppl base", "ppl quant", "rel. loss", "KLD mean"]]
                for (_, segs) in Segments.worstPerGroup(segments, limit: 5) {
                    for sg in segs {
                        rows.append([sg.group, sg.segment, String(sg.count), String(format: "%.4f", sg.base), String(format: "%.4f", sg.quantized),
                                     String(format: "%+.2f%%", 100 * sg.relativeLoss), sg.kldMean.map { String(format: "%.5f", $0) } ?? "-"])
                    }
                }
                print(Self.align(rows).split(separator: "\n").map { "  " + $0 }.joined(separator: "\n"))
            }
            if let j = json {
                var obj: [String: Any] = [
                    "schema_version": ResultSchema.current, "protocol": protocolKind.rawValue, "ctx": ctx,
                    "stride": opts.effectiveStride.map { $0 as Any } ?? NSNull(), "chunks": r.chunks,
                    "tokens_scored": r.tokensScored, "corpus_sha256": sha, "tokenizer": tokLabel, "model": model,
                    "ppl": r.ppl, "ppl_error": r.pplError, "kind": "perplexity", "backend": npu.backend, "activations": activations,
                    "chunk_nll": chunkNLL.map { ["nll_sum": $0.0, "count": $0.1] },
                    "timings": ["total_s": total, "tokenize_s": tokenizeSecs, "evaluate_s": r.seconds, "tokens_per_s": tps],
                ]
                if let b = bitsPerWeight { obj["bits_per_weight"] = b }
                // Float models: null; GPTQ-layout directories: method and settings (GPTQCheckpoint.quantizationSummary).
                obj["quantization"] = quantization ?? NSNull()
                if acc != nil {
                    obj["segments"] = segments.map(\.json)
                    obj["segment_rules"] = segmentRules ?? NSNull()
                }
                if let sim { obj.merge(NPUModelSetup.fields(sim, calibration: npu.npuCalibration ?? NPUModelSetup.defaultCalibration)) { $1 } }
                if let k = kld {
                    obj["kld"] = try JSONSerialization.jsonObject(with: JSONEncoder().encode(k))
                }
                try AtomicFile.write(try JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys]), to: j)
            }
        }
    }

    /// Left-aligned columns separated by two spaces.
    static func align(_ rows: [[String]]) -> String {
        var w = [Int](repeating: 0, count: rows.map(\.count).max() ?? 0)
        for r in rows { for (i, c) in r.enumerated() { w[i] = max(w[i], c.count) } }
        return rows.map { r in
            r.enumerated().map { i, c in c.padding(toLength: w[i], withPad: " ", startingAt: 0) }.joined(separator: "  ")
                .trimmingCharacters(in: .whitespaces)
        }.joined(separator: "\n")
    }
}
