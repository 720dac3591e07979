import ArgumentParser
import Evaluation
import Foundation
import Models
import Quantization
import TensorCore

/// `quantkit layers`: per-module sensitivity of a quantized model (or a quantization scheme) and mixed-precision
/// plans built from it.
struct LayersCommand: RunCommand {
    static let configuration = CommandConfiguration(
        commandName: "layers",
        abstract: "Per-module sensitivity (output cosine/MSE/SQNR, enable-one/disable-one QError) and mixed-precision plans.",
        discussion: """
        Token inputs: --calibration/--heldout take text (tokenized with the model's tokenizer, BOS prepended when \
        it adds one) or token ids as JSON (a list, or an object with "tokens").
        Plans: --plan auto with --target-bits B (promote the most sensitive modules to 8 bits within B bits per \
        weight) or --target-qerror P (percent; promote until the measured held-out QError is at most P) writes \
        --plan-out (JSON a user can edit: scheme, modules {name: {bits: 8} | {float: true}}).
        """)

    @Option(help: "Base (float) model: HF directory or llama2.c .bin.") var model: String
    @Option(help: "A quantized GPTQ-layout directory of the same model.") var quantized: String?
    @Option(help: "Or quantize here with RTN: BITS[:GROUP][:asym], e.g. 4:32 (GROUP -1 = per channel).") var scheme: String?
    @Option(help: "Calibration text or JSON token ids (not the evaluation text).") var calibration: String
    @Option(help: "Held-out text or JSON token ids for enable-one/disable-one effects and plans; omit to skip effects.") var heldout: String?
    @Option(help: "Tokenizer for text inputs (default: the model's).") var tokenizer: String?
    @Option(help: "Window length.") var ctx: Int = 128
    @Option(help: "Calibration windows.") var windows: Int = 8
    @Option(help: "Held-out chunks (protocol gptq).") var chunks: Int = 4
    @Option(help: "Mixed-precision plan: 'auto'.") var plan: String?
    @Option(help: "Plan target: bits per weight.") var targetBits: Double?
    @Option(help: "Plan target: held-out QError in percent.") var targetQerror: Double?
    @Option(help: "Where to write the plan JSON.") var planOut: String = "plan.json"
    @Option(help: "Write the sensitivity result JSON here.") var json: String?
    @Option(help: "Worker threads.") var threads: Int?
    @Option(help: "Analyse only shard INDEX/COUNT of the modules (0-based, in model order, e.g. $SLURM_ARRAY_TASK_ID/4) and write a partial result to --json; `quantkit merge` joins the shards. Every shard runs the calibration windows and the float held-out perplexity; not with --plan (merge first).")
    var shard: String?

    func options() throws -> LayersRunOptions {
        var o = LayersRunOptions(model: model, calibration: calibration)
        o.quantized = quantized
        o.scheme = scheme
        o.heldout = heldout
        o.tokenizer = tokenizer
        o.ctx = ctx
        o.windows = windows
        o.chunks = chunks
        o.threads = threads
        o.shard = try shard.map { try Shard(parsing: $0) }
        if let p = plan {
            guard p == "auto" else { throw ValidationError("--plan: only 'auto' builds a plan here (pass a plan FILE to quantize)") }
            switch (targetBits, targetQerror) {
            case (let b?, nil): o.planTarget = .bitsPerWeight(b)
            case (nil, let q?): o.planTarget = .qerror(q / 100)
            default: throw ValidationError("--plan auto needs exactly one of --target-bits or --target-qerror")
            }
        }
        return o
    }


    func run() throws {
        try runReportingErrors {
            let o = try options()
            if let shard = o.shard {
                try o.validate()
                try writeShard(json: json, shard, detail: { _ in "analysed" }) { try LayersRun.runShard(o, progress: Console.progress) }
                return
            }
            let r = try LayersRun.run(o, progress: Console.progress)
            print(Self.summary(r))
            if let p = r.plan { try ResultEnvelope(kind: "plan").write(p, to: planOut) }
            if let plan = r.plan {
                let size = plan.bitsPerWeight * Double(r.sensitivity.modules.reduce(0) { $0 + $1.parameters }) / 8
                print(String(format: "plan: %d modules kept at higher precision, %.3f bits/weight (%.0f bytes of linear weights)%@ -> %@",
                             plan.plan.overrides.count, plan.bitsPerWeight, size,
                             plan.measuredQError.map { String(format: ", measured QError %+.3f%%", $0 * 100) } ?? "", planOut))
            }
            if let path = json {
                try ResultEnvelope(kind: "layers", bitsPerWeight: r.bitsPerWeight).write(r, to: path)
                print("JSON: \(path)")
            }
        }
    }

    /// The ranked table and the held-out line, rendered from the report.
    static func summary(_ r: LayersReport) -> String {
        let rep = r.sensitivity
        var lines = ["Per-module sensitivity of \(r.source) vs \(r.model) (most sensitive first; calibration \(rep.calibrationTokens) tokens)"]
        var rows = [["rank", "module", "cosine", "MSE", "SQNR dB", "enable-one QError", "disable-one QError"]]
        for (i, x) in rep.ranked.enumerated() {
            rows.append([String(i + 1), x.name, String(format: "%.6f", x.error.cosine), String(format: "%.3e", x.error.mse), String(format: "%.2f", x.error.sqnrDB),
                         x.enableOneQError.map { String(format: "%+.3f%%", $0 * 100) } ?? "-",
                         x.disableOneQError.map { String(format: "%+.3f%%", $0 * 100) } ?? "-"])
        }
        lines.append(TextTable.align(rows))
        if let f = rep.floatPPL, let q = rep.quantizedPPL {
            lines.append(String(format: "held-out ppl: float %.4f, all quantized %.4f (QError %+.3f%%, %d tokens, protocol gptq ctx %d); %.3f bits/weight",
                                f, q, (q / f - 1) * 100, rep.heldoutTokensScored, r.ctx, r.bitsPerWeight))
        }
        lines.append("SQNR = \(ErrorMetrics.definitions()["sqnr_db"]!) of the module output on float inputs; QError = ppl_q / ppl_float - 1")
        if r.planTargetMissed { lines.append("note: even with every module at 8 bits or float the QError target is not met") }
        return lines.joined(separator: "\n")
    }
}
