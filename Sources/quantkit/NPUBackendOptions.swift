import ArgumentParser
import Evaluation
import Foundation
import NPU

/// `--backend cpu|npu` and the NPU settings, shared by perplexity, rag answers and rag retrieval.
struct NpuBackendOptions: ParsableArguments {
    @Option(help: "cpu | npu: also run the model's linear layers and nonlinear ops on the simulated integer NPU.")
    var backend: String = "cpu"
    @Option(name: .customLong("npu-config"), help: "NPU settings (JSON), with --backend npu (keys as for quantkit npu --npu-config, e.g. \"per_channel_outputs\": [\"q_proj\", \"k_proj\"]).") var npuConfig: String?
    @Option(name: .customLong("npu-calibration"), help: """
        Text whose first tokens calibrate the NPU activation ranges (.jsonl BEIR corpus / SQuAD .json read as text; \
        default: Corpora/scifact/corpus.jsonl.zst; rag retrieval: the dataset's corpus passages).
        """)
    var npuCalibration: String?
    @Option(name: .customLong("npu-calibration-tokens"), help: "Calibration tokens for the NPU ranges.") var npuCalibrationTokens: Int = 4096
    @Option(help: ArgumentHelp("How the NPU rounds int32 accumulators to int8: tflite-reference (default; TFLite's reference kernels), tflite-optimized (its ruy kernels), xnnpack (its default delegate), gemmlowp (the rule before tflite-reference). Overrides the --npu-config file's \"requant\".", valueName: "rule"))
    var requant: String?
    @Flag(help: "SmoothQuant the float model before NPU calibration (migrates activation outliers of the normed inputs into q/k/v and gate/up).")
    var smoothquant = false
    @Option(name: .customLong("smoothquant-alpha"), help: "SmoothQuant migration strength in [0, 1]; default: searched on the calibration tokens (least KL to the float model).")
    var smoothquantAlpha: Double?
    @Flag(name: .customLong("smoothquant-down"), help: "With --smoothquant: also smooth down_proj's input (the SwiGLU product) through up_proj's rows; an extension beyond the paper, which leaves it unsmoothed.")
    var smoothquantDown = false
    @Flag(help: "Rotate the float model (randomized Hadamard on the residual stream, online Hadamard before down_proj) before NPU calibration.")
    var rotate = false
    @Option(help: "Seed of the rotation's random signs.") var rotationSeed: UInt64 = 0

    var isNPU: Bool { backend == "npu" }

    /// The library settings; nil for the CPU backend.
    var settings: NPUBackendSettings? {
        guard isNPU else { return nil }
        var s = NPUBackendSettings(configPath: npuConfig, calibration: npuCalibration, calibrationTokens: npuCalibrationTokens)
        s.smoothQuant = smoothquant || smoothquantAlpha != nil || smoothquantDown
        s.smoothQuantDown = smoothquantDown
        s.smoothQuantAlpha = smoothquantAlpha
        s.rotate = rotate
        s.rotationSeed = rotationSeed
        s.requant = requant
        return s
    }

    func validate() throws {
        guard ["cpu", "npu"].contains(backend) else { throw ValidationError("--backend must be cpu or npu, not '\(backend)'") }
        if npuConfig != nil && !isNPU { throw ValidationError("--npu-config needs --backend npu") }
        if npuCalibration != nil && !isNPU { throw ValidationError("--npu-calibration needs --backend npu") }
        if requant != nil && !isNPU { throw ValidationError("--requant needs --backend npu") }
        guard npuCalibrationTokens >= 1 else { throw ValidationError("--npu-calibration-tokens must be at least 1") }
        if (smoothquant || smoothquantAlpha != nil || smoothquantDown || rotate) && !isNPU {
            throw ValidationError("--smoothquant, --smoothquant-alpha and --rotate apply to --backend npu (for the CPU, rotate at quantize time: quantize --rotate)")
        }
        if let a = smoothquantAlpha, !(a >= 0 && a <= 1) { throw ValidationError("--smoothquant-alpha must be in [0, 1] (got \(a))") }
    }

    func loadConfig() throws -> NPUConfig {
        try npuConfig.map { try NPUConfig.load(path: $0) } ?? NPUConfig()
    }
}
