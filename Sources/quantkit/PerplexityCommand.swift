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
    @Option(help: "Write a JSON result here.") var json: String?
    @Option(name: .customLong("save-logits"), help: "Store this run's scored distributions (zstd) for a later --kld-base.") var saveLogits: String?
    @Option(name: .customLong("kld-base"), help: "Compare with a base run saved by --save-logits (KLD statistics).") var kldBase: String?

    func validate() throws {
        if stride != nil && protocolKind != .strided { throw ValidationError("--stride applies to --protocol strided only") }
        if ctx < 2 { throw ValidationError("--ctx must be at least 2") }
        if let m = maxChunks, m <= 0 { throw ValidationError("--max-chunks must be positive") }
    }

    @OptionGroup var npu: NpuBackendOptions
    @Flag(name: .customLong("allow-overlap"), help: "Only warn when the corpus overlaps a quantized model's calibration text.")
    var allowOverlap = false

    func run() throws {
        try runReportingErrors {
            let t0 = Date()
            let m = try ModelLoading.loadModel(model)
            if let t = threads { m.threads = max(1, t) }
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
            let opts = PerplexityOptions(protocolKind: protocolKind, ctx: ctx, stride: stride, maxChunks: maxChunks)

            let base = try kldBase.map { try LogitsFile(path: $0) }
            try base?.checkCompatible(corpusSHA256: sha, tokenizer: tokLabel, protocolName: protocolKind.rawValue, ctx: ctx,
                                      stride: opts.effectiveStride, vocab: m.config.vocabSize)
            let acc = base.map { KLDAccumulator(base: $0) }
            let writer = saveLogits != nil ? LogitsWriter(vocab: m.config.vocabSize) : nil
            let reporter = ProgressReporter("perplexity", total: try Perplexity.windowCount(n: ids.count, options: opts), unit: "tok")
            var processed = 0
            var chunkNLL: [(Double, Int)] = []
            let bitsPerWeight = npu.isNPU ? nil : ModelLoading.blockLinearBitsPerWeight(m)
            let r = try Perplexity.evaluate(model: m, tokens: ids, addsBOS: tok.addsBOS, bosId: bos, options: opts,
                onRow: { row in
                    writer?.add(row)
                    try acc?.add(row)
                    // Per-chunk NLL sums let `compare` bootstrap confidence intervals over chunks.
                    while chunkNLL.count <= row.chunk { chunkNLL.append((0, 0)) }
                    chunkNLL[row.chunk].0 += negativeLogLikelihood(row.logits, vocab: row.vocab, target: Int(row.target))
                    chunkNLL[row.chunk].1 += 1
                },
                progress: { done, total, _, ppl in
                    processed += ctx
                    reporter.update(done: done, units: processed, extra: String(format: "ppl %.4f", ppl))
                })
            let kld = try acc?.result()
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
            if let j = json {
                var obj: [String: Any] = [
                    "schema_version": 1, "protocol": protocolKind.rawValue, "ctx": ctx,
                    "stride": opts.effectiveStride.map { $0 as Any } ?? NSNull(), "chunks": r.chunks,
                    "tokens_scored": r.tokensScored, "corpus_sha256": sha, "tokenizer": tokLabel, "model": model,
                    "ppl": r.ppl, "ppl_error": r.pplError, "kind": "perplexity", "backend": npu.backend,
                    "chunk_nll": chunkNLL.map { ["nll_sum": $0.0, "count": $0.1] },
                    "timings": ["total_s": total, "tokenize_s": tokenizeSecs, "evaluate_s": r.seconds, "tokens_per_s": tps],
                ]
                if let b = bitsPerWeight { obj["bits_per_weight"] = b }
                if let sim { obj.merge(NPUModelSetup.fields(sim, calibration: npu.npuCalibration ?? NPUModelSetup.defaultCalibration)) { $1 } }
                if let k = kld {
                    obj["kld"] = try JSONSerialization.jsonObject(with: JSONEncoder().encode(k))
                }
                try AtomicFile.write(try JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys]), to: j)
            }
        }
    }
}
