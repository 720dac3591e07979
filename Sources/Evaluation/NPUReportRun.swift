import Foundation
import Models
import NPU
import TensorCore

/// The token workload the NPU cost model prices.
public struct CostWorkload: Sendable {
    /// Prompt tokens for the prefill estimate.
    public var promptTokens = 128
    /// Cached tokens before the decoded token.
    public var decodeContext = 512
    public init() {}

    public func report(shape: TransformerShape, config: NPUConfig) throws -> CostReport {
        try CostModel.report(shape: shape, hw: config.hardware, weightBits: config.weightBits,
                             promptTokens: promptTokens, decodeContext: decodeContext, int16Outputs: config.int16Outputs)
    }
}

/// Everything `quantkit npu report` decides: the model, the NPU, the calibration text and how it splits.
public struct NPUReportOptions: Sendable {
    public var model: String
    public var config: NPUConfig
    /// Text (tokenized with the model's tokenizer) or JSON token ids.
    public var calibration: String
    /// Tokens from the end of the calibration input used for the comparison; the rest calibrate.
    public var compareTokens = 256
    /// Tokens per forward pass.
    public var window = 128
    public var workload = CostWorkload()

    public init(model: String, config: NPUConfig, calibration: String) {
        self.model = model
        self.config = config
        self.calibration = calibration
    }
}

/// Cost model plus per-layer float-vs-NPU errors (`kind: npu_report`).
public struct NPUReport: Sendable, Encodable {
    public var options: NPUReportOptions
    public var calibrationTokens: Int
    public var comparedTokens: Int
    public var cost: CostReport
    public var comparison: NPUComparisonResult
    /// Fallbacks and op counts, one line each.
    public var summary: String
    public var fallbacks: [FallbackLog.Entry]
    public var ops: [OpCounter.Entry]

    /// The `kind: npu_report` body (docs/RESULTS.md); written with `ResultEnvelope.nonFiniteAsStrings`.
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: AnyKey.self)
        try c.encode(options.model, forKey: AnyKey("model"))
        try c.encode(options.calibration, forKey: AnyKey("calibration"))
        try c.encode(ResultValue(any: options.config.json), forKey: AnyKey("config"))
        try c.encode(NPUComparison.definitions, forKey: AnyKey("definitions"))
        try c.encode(cost, forKey: AnyKey("cost"))
        try c.encode(comparison, forKey: AnyKey("comparison"))
        try c.encode(fallbacks, forKey: AnyKey("fallbacks"))
        try c.encode(ops, forKey: AnyKey("ops"))
    }
}

/// The simulated NPU on a model: calibrate on the first tokens, compare float and NPU layer by layer on the last.
public enum NPUReportRun {
    public static func run(_ o: NPUReportOptions, progress: any ProgressObserver = NoProgress()) throws -> NPUReport {
        try UserLimits.check(o.compareTokens, "--compare-tokens", 1...UserLimits.heldTokens)
        try UserLimits.check(o.window, "--window", 1...UserLimits.contextTokens)
        let m = try ModelLoading.loadModel(o.model)
        let tokens = try LayersRun.readTokens(o.calibration, model: o.model, tokenizer: nil, m: m)
        guard tokens.count > o.compareTokens else {
            throw QuantKitError(.input, "\(o.calibration): \(tokens.count) tokens; need more than --compare-tokens \(o.compareTokens) (the rest calibrate)")
        }
        let calib = Array(tokens[..<(tokens.count - o.compareTokens)]), compare = Array(tokens[(tokens.count - o.compareTokens)...])
        let cost = try o.workload.report(shape: TransformerShape(config: m.config), config: o.config)
        let sim = try NPUSimulator.calibrate(model: m, config: o.config, calibrationTokens: calib, window: o.window, progress: progress)
        let cmp = try NPUComparison.run(model: m, simulator: sim, tokens: compare, window: o.window)
        return NPUReport(options: o, calibrationTokens: calib.count, comparedTokens: compare.count, cost: cost, comparison: cmp,
                         summary: sim.summary, fallbacks: sim.fallbacks.entries, ops: sim.npu.counter.entries)
    }

    /// The cost model alone, from the model's dimensions (`kind: npu_cost`: {model, cost}).
    public static func cost(model: String, config: NPUConfig, workload: CostWorkload) throws -> CostReport {
        // A GGUF file's dimensions are in its metadata (TransformerShape reads HF directories and llama2.c headers).
        let shape = GGUFFile.isGGUF(model) ? TransformerShape(config: try GGUFLlama.config(try GGUFFile(path: model)))
            : try TransformerShape.load(model: model)
        return try workload.report(shape: shape, config: config)
    }
}

/// The `kind: npu_cost` body.
public struct NPUCostResult: Encodable, Sendable {
    public var model: String
    public var cost: CostReport
    public init(model: String, cost: CostReport) { self.model = model; self.cost = cost }
}

