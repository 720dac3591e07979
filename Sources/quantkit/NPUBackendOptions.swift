import ArgumentParser
import Foundation
import Models
import NPU
import Quantization
import TensorCore
import Tokenization

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

/// Builds the simulated NPU for a model from its float run on calibration text (the one code path for every
/// command that takes `--backend npu`).
enum NPUModelSetup {
    static let defaultCalibration = "Corpora/scifact/corpus.jsonl.zst"

    /// The calibration text, cut to what `tokens` tokens can need (64 bytes a token is far above any tokenizer's
    /// average), so a large corpus is not tokenized whole for a few thousand tokens.
    static func calibrationText(_ path: String, tokens: Int) throws -> String {
        let text = try CalibrationText.load(path)
        let limit = max(4096, tokens * 64)
        return text.utf8.count > limit ? String(decoding: text.utf8.prefix(limit), as: UTF8.self) : text
    }

    /// Calibrates the activation ranges on `model` (run as loaded: float, or a quantized checkpoint whose layers
    /// then stay on the CPU and are reported as fallbacks), then converts it in place: linears (and lm_head) to
    /// NPU layers, nonlinear ops to the NPU's. Returns the simulator for its summary and op counts.
    static func apply(to model: LlamaModel, tokenizer: any Tokenizer, options: NpuBackendOptions, window: Int) throws -> NPUSimulator {
        let cfg = try options.loadConfig()
        let path = options.npuCalibration ?? defaultCalibration
        let text = try calibrationText(path, tokens: options.npuCalibrationTokens)
        let ids = tokenizer.encode(text, addSpecialTokens: false).prefix(options.npuCalibrationTokens).map { Int32($0) }
        let sim = try NPUSimulator.calibrate(model: model, config: cfg, calibrationTokens: Array(ids), window: window)
        try sim.apply(to: model)
        logInfo("npu: calibrated on \(ids.count) tokens of \(path)")
        return sim
    }

    /// Passages (blank-line separated after CalibrationText's reading) of a calibration file, for encoders.
    static func passages(_ path: String, tokens: Int) throws -> [String] {
        let text = try calibrationText(path, tokens: tokens)
        let parts = text.components(separatedBy: "\n\n").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }.filter { !$0.isEmpty }
        guard !parts.isEmpty else { throw QuantKitError(.input, "--npu-calibration \(path): no text") }
        return parts
    }

    /// JSON fields of an NPU run: the simulator's report plus where it was calibrated.
    static func fields(_ sim: NPUSimulator, calibration: String) -> [String: Any] {
        var f = sim.reportFields
        f["npu_calibration"] = calibration
        return f
    }
}
