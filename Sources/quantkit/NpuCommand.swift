import Evaluation
import ArgumentParser
import Foundation
import Models
import NPU
import TensorCore

/// `quantkit npu ...`: the simulated integer NPU.
struct NpuCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "npu", abstract: "Simulated integer NPU: cost model and float-vs-NPU layer comparison.",
        subcommands: [NpuReportCommand.self, NpuCostCommand.self])
}

/// Options shared by the npu subcommands: which NPU.
struct NpuOptions: ParsableArguments {
    @Option(name: .customLong("npu-config"), help: "NPU settings (JSON): weight_bits, weight_granularity, activation_calibration, percentile, nonlinear_mode, preset, hardware{...}, min_calibration_tokens, requant, int16_outputs and per_channel_outputs (module names, e.g. [\"q_proj\", \"k_proj\"]).")
    var npuConfig: String?
    @Option(help: "Hardware preset (edge-small, edge-mid, edge-large); overrides the config's hardware.")
    var preset: String?

    func load() throws -> NPUConfig {
        var c = try npuConfig.map { try NPUConfig.load(path: $0) } ?? NPUConfig()
        if let p = preset { c.hardware = try NPUHardware.preset(p) }
        return c
    }
}

func costTable(_ r: CostReport) -> String {
    var s = "hardware \(r.hardware.name): \(r.hardware.macsPerCycle) MACs/cycle @ \(r.hardware.clockHz / 1e6) MHz, "
        + "SRAM \(r.hardware.sramBytes / 1024) KiB, DRAM \(r.hardware.dramBytesPerSecond / 1e9) GB/s, "
        + "weight compression \(r.hardware.weightCompression ? "on (x\(r.hardware.compressionRatio))" : "off"); W\(r.weightBits)A8\n"
    for (label, p) in [("prefill", r.prefill), ("decode", r.decode)] {
        s += String(format: "%@ (%d tokens, context %d): %d cycles, %.3f ms, %.4f ms/token, %.1f tokens/s, %.2f MMACs, %.2f MB DRAM\n",
                    label, p.tokens, p.context, p.totalCycles, p.seconds * 1e3, p.secondsPerToken * 1e3, p.tokensPerSecond,
                    Double(p.totalMacs) / 1e6, Double(p.totalDramBytes) / 1e6)
    }
    s += "decode per layer (first block and lm_head):\n"
    s += "  layer                                   MACs   weight B   act B  SRAM peak   cycles  bound\n"
    for l in r.decode.layers where l.name.hasPrefix("model.layers.0.") || l.name == "lm_head" {
        s += "  " + l.name.padding(toLength: 36, withPad: " ", startingAt: 0)
        s += String(format: " %8d %10d %7d %10d %8d  %@\n", l.macs, l.weightBytes,
                    l.activationBytes, l.sramPeakBytes, l.cycles, l.bound.rawValue as NSString)
    }
    return s
}

/// The cost workload flags, onto the library's CostWorkload.
struct CostWorkloadOptions: ParsableArguments {
    @Option(help: "Prompt tokens for the prefill estimate.") var promptTokens: Int = 128
    @Option(help: "Cached tokens before the decoded token.") var decodeContext: Int = 512

    var workload: CostWorkload {
        var w = CostWorkload()
        w.promptTokens = promptTokens
        w.decodeContext = decodeContext
        return w
    }
}

/// `quantkit npu cost`: the cost model alone (needs only the model's dimensions).
struct NpuCostCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "cost", abstract: "Cycles, bytes and tokens/s of a model on the NPU.")
    @Option(help: "Model: a llama2.c .bin, a Hugging Face or quantized directory (config.json) or a llama GGUF file.") var model: String
    @OptionGroup var npu: NpuOptions
    @OptionGroup var workload: CostWorkloadOptions
    @Option(help: "Write the report as JSON.") var json: String?

    func run() throws {
        try runReportingErrors {
            let r = try NPUReportRun.cost(model: model, config: try npu.load(), workload: workload.workload)
            print(costTable(r), terminator: "")
            if let json {
                var envelope = ResultEnvelope(kind: "npu_cost")
                envelope.nonFiniteAsStrings = true
                try envelope.write(NPUCostResult(model: model, cost: r), to: json)
            }
        }
    }
}

/// `quantkit npu report`: cost model + per-layer float-vs-NPU errors on calibration inputs, worst first.
struct NpuReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "report", abstract: "Cost model and per-layer float-vs-NPU comparison.")
    @Option(help: "Model: a llama2.c .bin, a Hugging Face or quantized directory (quantkit quantize) or a llama GGUF file.") var model: String
    @OptionGroup var npu: NpuOptions
    @Option(help: "Calibration text (tokenized with the model's tokenizer; .jsonl/SQuAD .json read as text) or JSON token ids.") var calibration: String
    @Option(help: ArgumentHelp("How the NPU rounds int32 accumulators to int8: tflite-reference (default; TFLite's reference kernels), tflite-optimized (its ruy kernels), xnnpack (its default delegate), gemmlowp (the rule before tflite-reference). Overrides the config's \"requant\".", valueName: "rule"))
    var requant: String?
    @Option(help: "Tokens (from the end of the calibration file) used for the comparison; the rest calibrate.") var compareTokens: Int = 256
    @Option(help: "Window (tokens per forward pass).") var window: Int = 128
    @OptionGroup var workload: CostWorkloadOptions
    @Option(help: "Write the report as JSON.") var json: String?

    func run() throws {
        try runReportingErrors {
            var config = try npu.load()
            if let r = requant { config.requant = try RequantRule(parsing: r, flag: "--requant") }
            var o = NPUReportOptions(model: model, config: config, calibration: calibration)
            o.compareTokens = compareTokens
            o.window = window
            o.workload = workload.workload
            let r = try NPUReportRun.run(o, progress: Console.progress)
            print(costTable(r.cost), terminator: "")
            print("\nper-layer float vs NPU on \(r.comparedTokens) tokens (calibrated on \(r.calibrationTokens)), worst first")
            print("  \(NPUComparison.definitions); isolated = the layer alone on the float input")
            print("  module                                  e2e SQNR  e2e PSNR  e2e cosine      e2e MSE  isolated SQNR")
            for l in r.comparison.layers {
                print("  " + l.module.padding(toLength: 38, withPad: " ", startingAt: 0) + String(format: " %8.2f  %8.2f  %10.6f  %11.4g  %12.2f", l.endToEnd.sqnrDB,
                             l.endToEnd.psnrDB, l.endToEnd.cosine, l.endToEnd.mse, l.isolated.sqnrDB))
            }
            print(String(format: "logits: SQNR %.2f dB, cosine %.6f", r.comparison.logits.sqnrDB, r.comparison.logits.cosine))
            print(r.summary)
            if let json {
                var envelope = ResultEnvelope(kind: "npu_report")
                envelope.nonFiniteAsStrings = true
                try envelope.write(r, to: json)
            }
        }
    }
}
