import Datasets
import Foundation
import Models
import NPU
import Quantization
import TensorCore
import Tokenization

/// `--backend npu` settings, shared by perplexity, rag answers and rag retrieval.
public struct NPUBackendSettings: Sendable {
    /// NPU settings file (JSON); nil: the defaults.
    public var configPath: String?
    /// Text whose first tokens calibrate the activation ranges; nil: `defaultCalibration` (retrieval: its corpus).
    public var calibration: String?
    public var calibrationTokens: Int
    public static let defaultCalibration = "Corpora/scifact/corpus.jsonl.zst"

    public init(configPath: String? = nil, calibration: String? = nil, calibrationTokens: Int = 4096) {
        self.configPath = configPath
        self.calibration = calibration
        self.calibrationTokens = calibrationTokens
    }

    public func loadConfig() throws -> NPUConfig {
        try configPath.map { try NPUConfig.load(path: $0) } ?? NPUConfig()
    }
}

/// Builds the simulated NPU for a model from its float run on calibration text (the one code path for every
/// run that takes `--backend npu`).
public enum NPUModelSetup {
    /// The calibration text, cut to what `tokens` tokens can need (64 bytes a token is far above any tokenizer's
    /// average), so a large corpus is not tokenized whole for a few thousand tokens.
    public static func calibrationText(_ path: String, tokens: Int) throws -> String {
        let text = try CalibrationText.load(path)
        let limit = max(4096, tokens * 64)
        return text.utf8.count > limit ? String(decoding: text.utf8.prefix(limit), as: UTF8.self) : text
    }

    /// Calibrates the activation ranges on `model` (run as loaded: float, or a quantized checkpoint whose layers
    /// then stay on the CPU and are reported as fallbacks), then converts it in place: linears (and lm_head) to
    /// NPU layers, nonlinear ops to the NPU's. Returns the simulator for its summary and op counts.
    public static func apply(to model: LlamaModel, tokenizer: any Tokenizer, settings: NPUBackendSettings, window: Int,
                             progress: any ProgressObserver = NoProgress()) throws -> NPUSimulator {
        let cfg = try settings.loadConfig()
        let path = settings.calibration ?? NPUBackendSettings.defaultCalibration
        let text = try calibrationText(path, tokens: settings.calibrationTokens)
        let ids = tokenizer.encode(text, addSpecialTokens: false).prefix(settings.calibrationTokens).map { Int32($0) }
        let sim = try NPUSimulator.calibrate(model: model, config: cfg, calibrationTokens: Array(ids), window: window,
                                             progress: progress)
        try sim.apply(to: model)
        progress.note("npu: calibrated on \(ids.count) tokens of \(path)")
        return sim
    }

    /// Passages (blank-line separated after CalibrationText's reading) of a calibration file, for encoders.
    public static func passages(_ path: String, tokens: Int) throws -> [String] {
        let text = try calibrationText(path, tokens: tokens)
        let parts = text.components(separatedBy: "\n\n").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }.filter { !$0.isEmpty }
        guard !parts.isEmpty else { throw QuantKitError(.input, "--npu-calibration \(path): no text") }
        return parts
    }
}

/// What a run on the simulated NPU reports beside its figures: settings, calibration, fallbacks (module + reason)
/// and op counts per unit. Its keys sit at the top level of the run's result (npu, npu_config, ...).
public struct NPURunSummary: Encodable, Sendable {
    /// The readable summary (fallbacks and op counts, one line each).
    public var summary: String
    public var config: ResultValue
    public var calibrationTokens: Int
    public var calibration: String
    public var fallbacks: [FallbackLog.Entry]
    public var ops: [OpCounter.Entry]
    public var hostOps: [String]

    public init(_ sim: NPUSimulator, calibration: String) {
        summary = sim.summary
        config = ResultValue(any: sim.config.json)
        calibrationTokens = sim.calibrationTokens
        self.calibration = calibration
        fallbacks = sim.fallbacks.entries
        ops = sim.npu.counter.entries
        hostOps = sim.hostOps
    }

    enum CodingKeys: String, CodingKey {
        case summary = "npu", config = "npu_config", calibrationTokens = "npu_calibration_tokens", calibration = "npu_calibration"
        case fallbackCount = "npu_fallback_count", fallbacks = "npu_fallbacks", ops = "npu_ops", hostOps = "npu_host_ops"
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(summary, forKey: .summary)
        try c.encode(config, forKey: .config)
        try c.encode(calibrationTokens, forKey: .calibrationTokens)
        try c.encode(calibration, forKey: .calibration)
        try c.encode(fallbacks.count, forKey: .fallbackCount)
        try c.encode(fallbacks, forKey: .fallbacks)
        try c.encode(ops, forKey: .ops)
        try c.encode(hostOps, forKey: .hostOps)
    }
}
