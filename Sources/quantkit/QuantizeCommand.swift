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
    @Option(help: "gptq, rtn, awq (activation-aware scales + clipping, then RTN), hqq (calibration-free, asymmetric) or sparsegpt (pruning; with --sparsity).")
    var method: String = "gptq"
    @Flag(help: "AWQ scales and clipping before GPTQ or RTN (--method gptq --awq).") var awq = false
    @Flag(help: "AWQ without its weight-clipping search (scales only).") var noAwqClip = false
    @Flag(help: "GPTAQ: GPTQ that also corrects the drift between the float model's inputs and the partly quantized model's (asymmetric calibration).")
    var gptaq = false
    @Option(name: .customLong("gptaq-alpha"), help: "GPTAQ's alpha (with --gptaq).") var gptaqAlpha: Double = 0.25
    @Flag(help: "SmoothQuant the float model before quantizing (q/k/v, gate/up and down_proj's input through up_proj), for W8A8 use such as a Q8_0 GGUF export that llama.cpp runs with int8 activations.")
    var smoothquant = false
    @Option(name: .customLong("smoothquant-alpha"), help: "SmoothQuant's migration strength in [0, 1] (default 0.5).") var smoothquantAlpha: Double?
    @Flag(help: "Rotate the residual stream with a randomized Hadamard (QuaRot-style, no training) and apply an online Hadamard before down_proj; composes with every method.")
    var rotate = false
    @Option(help: "Seed of the rotation's random signs.") var rotationSeed: UInt64 = 0
    @Option(help: "Bits: 2, 3, 4 or 8 (default 4; with --method sparsegpt, given only to quantize the pruned weights too).") var bits: Int?
    @Option(help: "SparseGPT sparsity: a fraction such as 0.5 (unstructured) or n:m such as 2:4 (semi-structured).") var sparsity: String?
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

    func options() throws -> QuantizeRunOptions {
        guard let m = QuantMethod(rawValue: method.lowercased()) else {
            throw QuantKitError(.input, "--method must be one of \(QuantMethod.names) (got \(method))")
        }
        if sym && asym { throw QuantKitError(.input, "--sym and --asym are exclusive") }
        var o = QuantizeRunOptions(model: model, output: output)
        o.method = m
        o.bits = bits ?? 4
        o.sparsity = sparsity
        o.pruneOnly = m == .sparsegpt && bits == nil
        o.groupSize = groupSize
        o.plan = plan
        o.actOrder = actOrder
        o.staticGroups = staticGroups
        o.symmetric = !asym
        o.mseSearch = mse
        o.awq = awq
        o.awqClip = !noAwqClip
        o.gptaqAlpha = gptaq ? gptaqAlpha : nil
        o.smoothQuantAlpha = smoothquant || smoothquantAlpha != nil ? (smoothquantAlpha ?? 0.5) : nil
        o.rotate = rotate
        o.rotationSeed = rotationSeed
        o.dampPercent = damp
        o.trueSequential = !noTrueSequential
        o.calibration = calibration
        o.tokenizer = tokenizer
        o.samples = samples
        o.seqlen = seqlen
        o.seed = seed
        o.overrides = override
        o.skip = skip
        o.threads = threads
        o.embedderOverride = Console.embedderOverride
        return o
    }

    func run() throws {
        try runReportingErrors {
            let report = try QuantizeRun.run(try options(), progress: Console.progress)
            print(Self.summary(report))
            if let json { try ResultEnvelope(kind: "quantize").write(report, to: json) }
        }
    }

    /// The per-layer table and the size line, rendered from the report.
    static func summary(_ r: QuantizeReport) -> String {
        func pad(_ s: String, _ n: Int) -> String { s.padding(toLength: max(n, s.count), withPad: " ", startingAt: 0) }
        var lines = ["layer                                         shape          bits  group  gptq-loss     SQNR dB   damp     time s"]
        for l in r.layers {
            lines.append(pad(l.name, 45) + " " + pad("\(l.outFeatures)x\(l.inFeatures)", 14) + String(format: " %4d  %5d  ", l.bits, l.groupSize)
                         + pad(l.gptqLoss.map { String(format: "%.5g", $0) } ?? "-", 12) + String(format: "  %7.2f   ", l.error.sqnrDB)
                         + pad(l.dampPercentUsed.map { String(format: "%g", $0) } ?? "-", 7) + String(format: "  %.3f", l.seconds))
        }
        let s = r.size
        lines.append(String(format: "%d layers quantized (%@, %@) in %.2f s; layer weights %.2f MB -> %.2f MB packed (%.2fx); model tensors %.2f MB -> %.2f MB (%.2fx)",
                            r.layers.count, r.method.rawValue, r.scheme.label, r.totalSeconds, Double(s.layersFloatBytes) / 1e6,
                            Double(s.layersPackedBytes) / 1e6, Double(s.layersFloatBytes) / Double(max(s.layersPackedBytes, 1)),
                            Double(s.modelInputTensorBytes) / 1e6, Double(s.modelOutputFileBytes) / 1e6,
                            Double(s.modelInputTensorBytes) / Double(max(s.modelOutputFileBytes, 1))))
        lines.append("SQNR = \(ErrorMetrics.definitions()["sqnr_db"]!); gptq-loss = sum (w-q)^2 / Hinv_ii^2 / 2 (GPTQ reference 'error')")
        lines.append("wrote \(r.output)")
        return lines.joined(separator: "\n")
    }
}
