import ArgumentParser
import Evaluation
import Foundation
import NPU

/// `--backend cpu|npu` and the NPU settings, shared by perplexity, rag answers and rag retrieval.
struct NpuBackendOptions: ParsableArguments {
    @Option(help: "cpu | npu: also run the model's linear layers and nonlinear ops on the simulated integer NPU.")
    var backend: String = "cpu"
    @Option(name: .customLong("npu-config"), help: "NPU settings (JSON), with --backend npu.") var npuConfig: String?
    @Option(name: .customLong("npu-calibration"), help: """
        Text whose first tokens calibrate the NPU activation ranges (.jsonl BEIR corpus / SQuAD .json read as text; \
        default: Corpora/scifact/corpus.jsonl.zst; rag retrieval: the dataset's corpus passages).
        """)
    var npuCalibration: String?
    @Option(name: .customLong("npu-calibration-tokens"), help: "Calibration tokens for the NPU ranges.") var npuCalibrationTokens: Int = 4096

    var isNPU: Bool { backend == "npu" }

    /// The library settings; nil for the CPU backend.
    var settings: NPUBackendSettings? {
        isNPU ? NPUBackendSettings(configPath: npuConfig, calibration: npuCalibration, calibrationTokens: npuCalibrationTokens) : nil
    }

    func validate() throws {
        guard ["cpu", "npu"].contains(backend) else { throw ValidationError("--backend must be cpu or npu, not '\(backend)'") }
        if npuConfig != nil && !isNPU { throw ValidationError("--npu-config needs --backend npu") }
        if npuCalibration != nil && !isNPU { throw ValidationError("--npu-calibration needs --backend npu") }
        guard npuCalibrationTokens >= 1 else { throw ValidationError("--npu-calibration-tokens must be at least 1") }
    }

    func loadConfig() throws -> NPUConfig {
        try npuConfig.map { try NPUConfig.load(path: $0) } ?? NPUConfig()
    }
}
