import Foundation
import TensorCore

/// The simulator's settings (`--npu-config FILE`, JSON). Every field is optional; defaults are W8 per-channel,
/// A8 min/max, fp16 nonlinear unit, the edge-small hardware, requantization as TFLite's reference kernels
/// (RequantRule.default). Example:
/// ```
/// { "weight_bits": 4, "weight_granularity": "per_tensor", "activation_calibration": "percentile",
///   "percentile": 99.99, "nonlinear_mode": "lut", "preset": "edge-large", "requant": "xnnpack",
///   "hardware": { "dram_bytes_per_second": 50e9 }, "min_calibration_tokens": 32,
///   "int16_outputs": ["q_proj", "k_proj"] }
/// ```
/// `int16_outputs` keeps the named modules' outputs at 16 bits (int16, symmetric, zero point 0: TFLite's 16-bit
/// activations, W8A16 on other NPUs) while their inputs stay int8. `per_channel_outputs` keeps them int8 with a
/// symmetric scale per output channel (the output stage's per-channel multiplier carries it; the consumer, the
/// fp16 vector unit, dequantizes per channel).
public struct NPUConfig: Equatable, Sendable {
    public var weightBits: Int = 8
    public var weightGranularity: WeightGranularity = .perChannel
    public var calibration: CalibrationMethod = .minMax
    public var nonlinearMode: NonlinearMode = .fp16
    /// Which real kernel's int32 -> int8 rounding the NPU reproduces (`--requant`, "requant").
    public var requant: RequantRule = .default
    public var hardware: NPUHardware = NPUHardware.presets[0]
    /// Fewer calibration tokens than this is an error (ranges from a handful of tokens are noise).
    public var minCalibrationTokens: Int = 16
    /// Modules (the last part of their names: q_proj ... down_proj, lm_head) whose outputs are int16, not int8.
    public var int16Outputs: [String] = []
    /// Modules whose int8 outputs have one symmetric scale per channel instead of one per tensor.
    public var perChannelOutputs: [String] = []

    public init() {}

    public static let allowedKeys: Set<String> = ["weight_bits", "weight_granularity", "activation_calibration",
                                                  "percentile", "nonlinear_mode", "preset", "hardware",
                                                  "min_calibration_tokens", "requant", "int16_outputs", "per_channel_outputs", "schema_version",
                                                  "comment"]
    /// What `int16_outputs` may name.
    public static let outputModules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]

    /// Whether `module`'s output is int16 (its name's last component is listed in `int16_outputs`).
    public func hasInt16Output(_ module: String) -> Bool { Self.names(int16Outputs, module) }
    /// Whether `module`'s output is int8 per channel (listed in `per_channel_outputs`).
    public func hasPerChannelOutput(_ module: String) -> Bool { Self.names(perChannelOutputs, module) }
    static func names(_ list: [String], _ module: String) -> Bool {
        !list.isEmpty && list.contains(String(module.split(separator: ".").last ?? ""))
    }

    public static func load(path: String) throws -> NPUConfig {
        try parse(try readFile(path), source: path)
    }

    public static func parse(_ data: Data, source: String) throws -> NPUConfig {
        guard let obj = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw QuantKitError(.config, "\(source): not a JSON object")
        }
        func fail(_ msg: String) -> QuantKitError { QuantKitError(.config, "\(source): \(msg)") }
        if let unknown = obj.keys.sorted().first(where: { !allowedKeys.contains($0) }) {
            throw fail("unknown key '\(unknown)' (allowed: \(allowedKeys.sorted().joined(separator: ", ")))")
        }
        var c = NPUConfig()
        if let v = obj["weight_bits"] {
            guard let b = v as? Int, b == 8 || b == 4 else { throw fail("weight_bits = \(v) is impossible (8 or 4)") }
            c.weightBits = b
        }
        if let v = obj["weight_granularity"] {
            guard let s = v as? String, let g = WeightGranularity(rawValue: s) else {
                throw fail("weight_granularity = \(v) is not one of per_channel, per_tensor")
            }
            c.weightGranularity = g
        }
        if let v = obj["activation_calibration"] {
            switch v as? String {
            case "minmax": c.calibration = .minMax
            case "mse": c.calibration = .mse
            case "percentile":
                let p = obj["percentile"] as? Double ?? 99.99
                guard p > 50, p < 100 else { throw fail("percentile = \(p) is impossible (must be in (50, 100))") }
                c.calibration = .percentile(p)
            default: throw fail("activation_calibration = \(v) is not one of minmax, percentile, mse")
            }
        } else if obj["percentile"] != nil {
            throw fail("'percentile' given without \"activation_calibration\": \"percentile\"")
        }
        if let v = obj["nonlinear_mode"] {
            guard let s = v as? String, let m = NonlinearMode(rawValue: s) else {
                throw fail("nonlinear_mode = \(v) is not one of fp16, lut")
            }
            c.nonlinearMode = m
        }
        if let v = obj["requant"] {
            guard let s = v as? String, let r = RequantRule(rawValue: s) else {
                throw fail("requant = \(v) is not one of \(RequantRule.names)")
            }
            c.requant = r
        }
        if let v = obj["preset"] {
            guard let s = v as? String else { throw fail("preset must be a string") }
            do { c.hardware = try NPUHardware.preset(s, source: "preset") } catch let e as QuantKitError { throw fail(e.message) }
        }
        if let v = obj["hardware"] {
            guard let h = v as? [String: Any] else { throw fail("hardware must be an object") }
            try c.applyHardware(h, fail: fail)
        }
        if let v = obj["min_calibration_tokens"] {
            guard let n = v as? Int, n >= 1 else { throw fail("min_calibration_tokens = \(v) is impossible (>= 1)") }
            c.minCalibrationTokens = n
        }
        func modules(_ key: String) throws -> [String] {
            guard let v = obj[key] else { return [] }
            guard let names = v as? [String] else { throw fail("\(key) must be a list of module names (e.g. [\"q_proj\", \"k_proj\"])") }
            if let bad = names.first(where: { !outputModules.contains($0) }) {
                throw fail("\(key): '\(bad)' is not one of \(outputModules.joined(separator: ", "))")
            }
            return Array(Set(names)).sorted()
        }
        c.int16Outputs = try modules("int16_outputs")
        c.perChannelOutputs = try modules("per_channel_outputs")
        if let both = c.int16Outputs.first(where: c.perChannelOutputs.contains) {
            throw fail("'\(both)' is in both int16_outputs and per_channel_outputs")
        }
        try c.hardware.validate(source: source)
        return c
    }

    mutating func applyHardware(_ h: [String: Any], fail: (String) -> QuantKitError) throws {
        for (key, value) in h.sorted(by: { $0.key < $1.key }) {
            func number() throws -> Double {
                guard let d = value as? Double, d.isFinite else { throw fail("hardware.\(key) = \(value) is not a number") }
                return d
            }
            func integer() throws -> Int {
                let d = try number()
                guard d == d.rounded(), abs(d) < 1e15 else { throw fail("hardware.\(key) = \(value) is not an integer") }
                return Int(d)
            }
            switch key {
            case "name": hardware.name = value as? String ?? hardware.name
            case "macs_per_cycle": hardware.macsPerCycle = try integer()
            case "clock_hz": hardware.clockHz = try number()
            case "sram_bytes": hardware.sramBytes = try integer()
            case "dram_bytes_per_second": hardware.dramBytesPerSecond = try number()
            case "weight_compression":
                guard let b = value as? Bool else { throw fail("hardware.weight_compression must be true or false") }
                hardware.weightCompression = b
            case "compression_ratio": hardware.compressionRatio = try number()
            case "vector_ops_per_cycle": hardware.vectorOpsPerCycle = try integer()
            default: throw fail("unknown hardware key '\(key)'")
            }
        }
    }

    /// A JSON description of the effective settings (for reports).
    public var json: [String: Any] {
        var d: [String: Any] = ["weight_bits": weightBits, "weight_granularity": weightGranularity.rawValue,
                                "nonlinear_mode": nonlinearMode.rawValue, "min_calibration_tokens": minCalibrationTokens,
                                "requant": requant.rawValue, "int16_outputs": int16Outputs,
                                "per_channel_outputs": perChannelOutputs]
        switch calibration {
        case .minMax: d["activation_calibration"] = "minmax"
        case .mse: d["activation_calibration"] = "mse"
        case .percentile(let p): d["activation_calibration"] = "percentile"; d["percentile"] = p
        }
        d["hardware"] = ["name": hardware.name, "macs_per_cycle": hardware.macsPerCycle, "clock_hz": hardware.clockHz,
                         "sram_bytes": hardware.sramBytes, "dram_bytes_per_second": hardware.dramBytesPerSecond,
                         "weight_compression": hardware.weightCompression, "compression_ratio": hardware.compressionRatio,
                         "vector_ops_per_cycle": hardware.vectorOpsPerCycle] as [String: Any]
        return d
    }
}
