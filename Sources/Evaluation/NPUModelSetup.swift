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
    /// SmoothQuant before calibration (Llama models): alpha given, or searched when nil.
    public var smoothQuant = false
    public var smoothQuantAlpha: Double?
    /// Also smooth down_proj's input through up_proj's rows (beyond the paper).
    public var smoothQuantDown = false
    /// Rotate the float model (randomized Hadamard, online Hadamard before down_proj) before calibration.
    public var rotate = false
    public var rotationSeed: UInt64 = 0
    /// `--requant` as given (a RequantRule name); it overrides the config file's "requant". nil: the file's or
    /// the default rule.
    public var requant: String?
    public static var defaultCalibration: String { ShippedData.path("Corpora/scifact/corpus.jsonl.zst") }
    /// SmoothQuant's alpha search grid (the objective: mean KL(float || NPU) on the calibration tokens).
    public static let smoothQuantAlphaGrid: [Double] = (1...9).map { Double($0) / 10 }

    public init(configPath: String? = nil, calibration: String? = nil, calibrationTokens: Int = 4096) {
        self.configPath = configPath
        self.calibration = calibration
        self.calibrationTokens = calibrationTokens
    }

    var needsFloatTransform: Bool { smoothQuant || rotate }

    /// For the runs that take the NPU settings but not the float transforms (rag answers, rag retrieval).
    func refuseFloatTransforms(_ command: String) throws {
        if needsFloatTransform {
            throw QuantKitError(.unsupported, "--smoothquant / --rotate are applied by `quantkit perplexity --backend npu`; \(command) does not take them yet")
        }
    }

    /// Every run with `--backend npu` loads the config first: the token count is checked here too.
    public func loadConfig() throws -> NPUConfig {
        try UserLimits.check(calibrationTokens, "--npu-calibration-tokens", 1...UserLimits.heldTokens)
        var c = try configPath.map { try NPUConfig.load(path: $0) } ?? NPUConfig()
        if let requant { c.requant = try RequantRule(parsing: requant, flag: "--requant") }
        return c
    }
}

/// Builds the simulated NPU for a model from its float run on calibration text (the one code path for every
/// run that takes `--backend npu`).
public enum NPUModelSetup {
    /// The calibration text, cut to what `tokens` tokens can need (64 bytes a token is far above any tokenizer's
    /// average), so a large corpus is not tokenized whole for a few thousand tokens.
    public static func calibrationText(_ path: String, tokens: Int) throws -> String {
        try UserLimits.check(tokens, "--npu-calibration-tokens", 1...UserLimits.heldTokens)
        let text = try CalibrationText.load(path)
        let limit = max(4096, tokens * 64)
        return text.utf8.count > limit ? String(decoding: text.utf8.prefix(limit), as: UTF8.self) : text
    }

    /// Calibrates the activation ranges on `model` (run as loaded: float, or a quantized checkpoint whose layers
    /// then stay on the CPU and are reported as fallbacks), then converts it in place: linears (and lm_head) to
    /// NPU layers, nonlinear ops to the NPU's. Returns the simulator for its summary and op counts.
    public static func apply(to model: LlamaModel, tokenizer: any Tokenizer, settings: NPUBackendSettings, window: Int,
                             progress: any ProgressObserver = NoProgress()) throws -> NPUSimulator {
        let path = settings.calibration ?? NPUBackendSettings.defaultCalibration
        let ids = try calibrationIDs(tokenizer: tokenizer, settings: settings)
        let sim = try apply(to: model, ids: ids, config: try settings.loadConfig(), window: window, progress: progress)
        progress.note("npu: calibrated on \(ids.count) tokens of \(path)")
        return sim
    }

    static func apply(to model: LlamaModel, ids: [Int32], config: NPUConfig, window: Int,
                      progress: any ProgressObserver) throws -> NPUSimulator {
        let sim = try NPUSimulator.calibrate(model: model, config: config, calibrationTokens: ids, window: window, progress: progress)
        try sim.apply(to: model)
        return sim
    }

    static func calibrationIDs(tokenizer: any Tokenizer, settings: NPUBackendSettings) throws -> [Int32] {
        let path = settings.calibration ?? NPUBackendSettings.defaultCalibration
        let text = try calibrationText(path, tokens: settings.calibrationTokens)
        return tokenizer.encode(text, addSpecialTokens: false).prefix(settings.calibrationTokens).map { Int32($0) }
    }

    /// The float model the NPU should run when the settings ask for SmoothQuant or a rotation (nil: run `model` as
    /// loaded), and what was done. SmoothQuant's statistics are the max |x| of the norm outputs on the NPU's own
    /// calibration tokens (in windows of `window`); with no alpha given, every alpha of the grid is tried on the
    /// simulated NPU and the one with the least mean KL(float || NPU) over those tokens wins.
    public static func recover(_ model: LlamaModel, tokenizer: any Tokenizer, settings: NPUBackendSettings, window: Int,
                               progress: any ProgressObserver = NoProgress()) throws -> (model: LlamaModel, record: NPURecovery)? {
        guard settings.needsFloatTransform else { return nil }
        let base = try LlamaFloatWeights(model: model)
        var record = NPURecovery()
        var current = model
        if settings.rotate {
            record.rotation = try Rotation.apply(to: base, seed: settings.rotationSeed, threads: model.threads)
            current = try base.makeModel(name: model.name)
            current.threads = model.threads
        }
        guard settings.smoothQuant else { return (current, record) }
        record.smoothQuantDown = settings.smoothQuantDown
        let ids = try calibrationIDs(tokenizer: tokenizer, settings: settings)
        let win = max(1, min(window, model.config.maxPositionEmbeddings))
        let windows = stride(from: 0, to: ids.count, by: win).map { Array(ids[$0..<min($0 + win, ids.count)]) }
        let stats = try SmoothQuant.statistics(model: current, windows: windows)
        func smoothed(_ alpha: Double) throws -> LlamaModel {
            let w = base.copy()
            try SmoothQuant.apply(to: w, statistics: stats, alpha: alpha, smoothDown: settings.smoothQuantDown)
            let m = try w.makeModel(name: model.name)
            m.threads = model.threads
            return m
        }
        if let a = settings.smoothQuantAlpha {
            record.smoothQuantAlpha = a
            return (try smoothed(a), record)
        }
        let reference = try logProbabilities(current, windows: windows)
        let cfg = try settings.loadConfig()
        let task = progress.task("smoothquant alpha", total: NPUBackendSettings.smoothQuantAlphaGrid.count, unit: "alphas")
        var best: (alpha: Double, kld: Double, model: LlamaModel)?
        for (k, alpha) in NPUBackendSettings.smoothQuantAlphaGrid.enumerated() {
            let m = try smoothed(alpha)
            _ = try apply(to: m, ids: ids, config: cfg, window: win, progress: NoProgress())
            let kld = try meanKL(reference: reference, model: m, windows: windows)
            record.alphaSearch.append(.init(alpha: alpha, kld: kld))
            if best == nil || kld < best!.kld { best = (alpha, kld, m) }
            task.update(done: k + 1, detail: String(format: "alpha %.2f KLD %.5f", alpha, kld))
        }
        record.smoothQuantAlpha = best!.alpha
        return (try smoothed(best!.alpha), record)
    }

    /// Log-probabilities of every position of every window (each run from position 0), [tokens, vocab].
    static func logProbabilities(_ model: LlamaModel, windows: [[Int32]]) throws -> [[Double]] {
        let vocab = model.config.vocabSize
        let longest = windows.map(\.count).max() ?? 1
        let cache = model.makeCache(capacity: longest), state = model.makeState(maxRows: longest)
        var out: [[Double]] = []
        for w in windows {
            cache.reset()
            let logits = model.forward(w, cache: cache, state: state)
            for r in 0..<w.count {
                var lp = [Double](repeating: 0, count: vocab)
                logSoftmax(logits + r * vocab, vocab: vocab, into: &lp)
                out.append(lp)
            }
        }
        return out
    }

    static func meanKL(reference: [[Double]], model: LlamaModel, windows: [[Int32]]) throws -> Double {
        let q = try logProbabilities(model, windows: windows)
        var total = 0.0
        for (p, lq) in zip(reference, q) {
            var kl = 0.0
            for v in p.indices where p[v] > -.infinity { kl += exp(p[v]) * (p[v] - lq[v]) }
            total += kl
        }
        guard total.isFinite else { throw QuantKitError(.numeric, "SmoothQuant alpha search: non-finite KL divergence on the NPU") }
        return total / Double(max(reference.count, 1))
    }

    /// Passages (blank-line separated after CalibrationText's reading) of a calibration file, for encoders.
    public static func passages(_ path: String, tokens: Int) throws -> [String] {
        let text = try calibrationText(path, tokens: tokens)
        let parts = text.components(separatedBy: "\n\n").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }.filter { !$0.isEmpty }
        guard !parts.isEmpty else { throw QuantKitError(.input, "--npu-calibration \(path): no text") }
        return parts
    }
}

/// What was done to the float model before the NPU took it: rotation, SmoothQuant's alpha and its search.
public struct NPURecovery: Encodable, Sendable {
    public struct AlphaTrial: Encodable, Sendable {
        public var alpha: Double
        /// Mean KL(float || NPU) over the calibration tokens.
        public var kld: Double
    }
    public var smoothQuantAlpha: Double?
    public var smoothQuantDown: Bool?
    public var alphaSearch: [AlphaTrial] = []
    public var rotation: RecoveryRecord.RotationSettings?

    enum CodingKeys: String, CodingKey {
        case smoothQuantAlpha = "smoothquant_alpha", smoothQuantDown = "smoothquant_down", alphaSearch = "smoothquant_alpha_search", rotation
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
    public var recovery: NPURecovery?

    public init(_ sim: NPUSimulator, calibration: String, recovery: NPURecovery? = nil) {
        self.recovery = recovery
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
        case recovery = "npu_recovery"
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
        try c.encode(recovery, forKey: .recovery)  // null: the float model as loaded
    }
}
