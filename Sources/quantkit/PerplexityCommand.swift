import ArgumentParser
import Evaluation
import Foundation
import Models
import NPU
import Quantization
import TensorCore
import Tokenization

extension PerplexityProtocol: ExpressibleByArgument {}
extension GGUFActivations: ExpressibleByArgument {}

struct PerplexityCommand: RunCommand {
    static let configuration = CommandConfiguration(
        commandName: "perplexity",
        abstract: "Perplexity under a SPECS.md protocol; optional base logits save / KLD comparison.")
    @Option(help: "HF model directory, llama2.c .bin checkpoint, quantized directory or llama GGUF file.") var model: String
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

    @OptionGroup var npu: NpuBackendOptions
    @Flag(name: .customLong("allow-overlap"), help: "Only warn when the corpus overlaps a quantized model's calibration text.")
    var allowOverlap = false
    @Flag(name: .customLong("int8-activations"), help: "Run a quantized model's 4-bit layers as W4A8: activations rounded to int8 per 32 inputs and integer dot products, as llama.cpp runs Q4_0 (faster; a different numerical contract from W4A16). Layers whose input size or groups are not multiples of 32 stay W4A16.")
    var int8Activations = false
    @Option(help: "A GGUF model's activations: llamacpp (converted to each weight type's companion format as llama.cpp's CPU backend does: Q8_0, Q8_1, Q8_K, F16, BF16) or float (weight-only).")
    var activations: GGUFActivations = .llamacpp
    @Option(help: "Evaluate only shard INDEX/COUNT of the windows (0-based, e.g. $SLURM_ARRAY_TASK_ID/3) and write a partial result to --json; `quantkit merge` joins the shards.")
    var shard: String?

    func options() throws -> PerplexityRunOptions {
        var o = PerplexityRunOptions(model: model, corpus: corpus,
                                     evaluation: PerplexityOptions(protocolKind: protocolKind, ctx: ctx, stride: stride,
                                                                   maxChunks: maxChunks, batchTokens: batch))
        o.tokenizer = tokenizer
        o.threads = threads
        o.saveLogits = saveLogits
        o.kldBase = kldBase
        o.documents = try DocumentRule(parsing: documents)
        o.saveTokens = saveTokens
        o.allowOverlap = allowOverlap
        o.int8Activations = int8Activations
        o.ggufActivations = activations
        o.npu = npu.settings
        o.shard = try shard.map { try Shard(parsing: $0) }
        return o
    }


    func run() throws {
        try runReportingErrors {
            let o = try options()
            if let shard = o.shard {
                try writeShard(json: json, shard, detail: { String(format: "%d tokens scored in %.2f s", $0.nll.count, $0.evaluateSeconds) }) {
                    try PerplexityRun.runShard(o, progress: Console.progress)
                }
                return
            }
            let report = try PerplexityRun.run(o, progress: Console.progress)
            print(Self.summary(report))
            if let j = json { try ResultEnvelope(kind: "perplexity", bitsPerWeight: report.bitsPerWeight).write(report, to: j) }
        }
    }

    /// The readable summary, rendered from the report.
    static func summary(_ r: PerplexityReport) -> String {
        var lines = [
            "model        \(r.model)",
            "tokenizer    \(r.tokenizer)",
            "corpus       \(r.corpus)  sha256 \(r.corpusSHA256)",
            "protocol     \(r.protocolKind.rawValue)  ctx \(r.ctx)  stride \(r.stride.map(String.init) ?? "-")",
            "chunks       \(r.chunks)  tokens scored \(r.tokensScored)  (corpus \(r.corpusTokens) tokens)",
            String(format: "ppl          %.4f +/- %.4f", r.ppl, r.pplError),
        ]
        if r.int8Activations || r.gguf != nil { lines.append("activations  \(r.activations)") }
        if let g = r.gguf {
            lines.append("gguf types   " + g.tensorTypes.sorted { $0.key < $1.key }.map { "\($0.key) x\($0.value)" }.joined(separator: "  "))
        }
        lines.append(String(format: "speed        %.1f tokens/s  (%.2f s evaluating, %.2f s tokenizing)", r.timings.tokensPerSecond,
                            r.timings.evaluateSeconds, r.timings.tokenizeSeconds))
        if let n = r.npu { lines.append(n.summary) }  // after the run: the op counts are the run's
        if let k = r.kld {
            lines.append(String(format: "KLD          %.6g +/- %.3g  max %.6g", k.kld_mean, k.kld_stderr, k.kld_max))
            lines.append("KLD pct      " + KLDAccumulator.percentiles.map { p -> String in
                let key = p == 99.9 ? "99.9" : (p == 0.1 ? "0.1" : String(Int(p)))
                return String(format: "%@: %.4g", key, k.kld_percentiles[key] ?? .nan)
            }.joined(separator: "  "))
            lines.append(String(format: "RMS dp       %.4f %%   same top %.2f %%", 100 * k.rms_dp, k.same_top_percent))
            lines.append(String(format: "ppl ratio    %.6f  ln ratio %.6f  QError %.6f  (base ppl %.4f)", k.ppl_ratio, k.ln_ppl_diff,
                                k.q_error, k.ppl_base))
        }
        if let q = r.quantization {
            lines.append("quantization \(q.method)  bits \(q.bits)  group \(q.groupSize)  act-order \(q.actOrder)  static groups \(q.staticGroups.map(String.init) ?? "?")  sym \(q.sym)"
                         + (q.overrides.map { "  (\($0.count) modules overridden)" } ?? ""))
        }
        if let segments = r.segments, !segments.isEmpty {
            lines.append("segments     the 5 worst per group (rel. loss = segment ppl_q / ppl_base - 1)")
            var rows: [[String]] = [["group", "segment", "tokens", "ppl base", "ppl quant", "rel. loss", "KLD mean"]]
            for (_, segs) in Segments.worstPerGroup(segments, limit: 5) {
                for sg in segs {
                    rows.append([sg.group, sg.segment, String(sg.count), String(format: "%.4f", sg.base), String(format: "%.4f", sg.quantized),
                                 String(format: "%+.2f%%", 100 * sg.relativeLoss), sg.kldMean.map { String(format: "%.5f", $0) } ?? "-"])
                }
            }
            lines.append(TextTable.align(rows).split(separator: "\n").map { "  " + $0 }.joined(separator: "\n"))
        }
        return lines.joined(separator: "\n")
    }
}
