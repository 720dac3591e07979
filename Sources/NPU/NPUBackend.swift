import Foundation
import Kernels
import Models
import TensorCore

extension NPULinear: LinearLayer {
    public func forward(_ x: UnsafePointer<Float>, rows: Int, out: UnsafeMutablePointer<Float>, threads: Int) {
        forward(x: x, rows: rows, out: out, threads: threads)
    }
}

/// The model's nonlinear hooks on the simulated NPU (NPUNonlinear in the configured mode, counting every call).
/// Attention: Q.K^T and P.V run on the fp16 vector unit (fp16 inputs, exact products, fp32 accumulation,
/// fp16 results) in both modes; the softmax between them follows the mode (fp16 or the 256-entry exp LUT).
public struct NPUNonlinearOps: NonlinearOps, @unchecked Sendable {
    public let npu: NPUNonlinear
    public init(npu: NPUNonlinear) { self.npu = npu }

    public func rmsNorm(_ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, rows: Int, dim: Int, eps: Float,
                        out: UnsafeMutablePointer<Float>) {
        npu.rmsNorm(x: x, weight: weight, rows: rows, dim: dim, eps: eps, out: out)
    }
    public func rope(_ x: UnsafeMutablePointer<Float>, rows: Int, heads: Int, headDim: Int, positions: UnsafePointer<Int32>,
                     frequencies: [Double]) {
        npu.rope(x, rows: rows, heads: heads, headDim: headDim, positions: positions, frequencies: frequencies)
    }
    public func swiglu(gate: UnsafeMutablePointer<Float>, up: UnsafePointer<Float>, count: Int) {
        npu.swiglu(gate: gate, up: up, count: count)
    }
    public func residualAdd(_ x: UnsafeMutablePointer<Float>, _ delta: UnsafePointer<Float>, count: Int) {
        npu.residualAdd(x, delta, count: count)
    }
    public func hadamard(_ x: UnsafeMutablePointer<Float>, rows: Int, n: Int, threads: Int) {
        npu.hadamard(x, rows: rows, n: n, threads: threads)
    }

    public func attention(q: UnsafePointer<Float>, keys: UnsafePointer<Float>, values: UnsafePointer<Float>, tokens: Int,
                          start: Int, nHeads: Int, nKVHeads: Int, headDim: Int, window: Int?,
                          out: UnsafeMutablePointer<Float>, threads: Int) {
        let group = nHeads / nKVHeads
        let kvStride = nKVHeads * headDim, qStride = nHeads * headDim
        let scale = fp16(1 / Float(headDim).squareRoot())
        let total = start + tokens
        // Sliding window: the query at position p sees keys firstKey(p)...p only.
        @Sendable func firstKey(_ p: Int) -> Int { window.map { max(0, p - $0 + 1) } ?? 0 }
        var scores = 0
        for t in 0..<tokens { scores += nHeads * (start + t + 1 - firstKey(start + t)) }
        npu.counter.record("attention_matmul", unit: "fp16", elements: 2 * scores * headDim)
        npu.counter.record("softmax", unit: npu.mode == .fp16 ? "fp16" : "int-lut", elements: scores)
        let mode = npu.mode
        let qp = SendablePointer(q), kp = SendablePointer(keys), vp = SendablePointer(values), op = SendablePointer(out)
        Parallel.forRanges(tokens * nHeads, threads: threads, minPerThread: 8) { range in
            let p = UnsafeMutablePointer<Float>.allocate(capacity: total)
            let acc = UnsafeMutablePointer<Float>.allocate(capacity: headDim)
            defer { p.deallocate(); acc.deallocate() }
            for item in range {
                let t = item / nHeads, h = item % nHeads, kvh = h / group
                let first = firstKey(start + t)
                let len = start + t + 1 - first
                let qr = qp.base + t * qStride + h * headDim
                for j in 0..<len {
                    let kr = kp.base + (first + j) * kvStride + kvh * headDim
                    var d: Float = 0
                    for i in 0..<headDim { d += fp16(qr[i]) * fp16(kr[i]) }
                    p[j] = fp16(fp16(d) * scale)
                }
                if mode == .fp16 { NPUNonlinear.softmaxFP16Row(p, cols: len) } else { SoftmaxLUT.row(p, cols: len) }
                for i in 0..<headDim { acc[i] = 0 }
                for j in 0..<len {
                    let w = p[j], vr = vp.base + (first + j) * kvStride + kvh * headDim
                    for i in 0..<headDim { acc[i] += w * fp16(vr[i]) }
                }
                let o = op.base + t * qStride + h * headDim
                for i in 0..<headDim { o[i] = fp16(acc[i]) }
            }
        }
    }
}

/// A LinearBackend that builds NPULinear layers from float checkpoint weights with calibrated activation ranges.
/// A module it cannot run (no calibration for it, non-float weights, an inner dimension that could overflow the
/// int32 accumulator) is built by `fallback` instead; the reason is printed once and counted.
public final class NPULinearBackend: LinearBackend, @unchecked Sendable {
    public let config: NPUConfig
    public let ranges: [String: (input: Int8AffineParams, output: Int8AffineParams)]
    /// Modules whose outputs are not per-tensor int8 (the config's int16_outputs, per_channel_outputs).
    public let outputFormats: [String: NPUOutputFormat]
    public let fallback: LinearBackend
    public let log: FallbackLog

    public init(config: NPUConfig, ranges: [String: (input: Int8AffineParams, output: Int8AffineParams)],
                outputFormats: [String: NPUOutputFormat] = [:], fallback: LinearBackend = DenseBackend(),
                log: FallbackLog = FallbackLog()) {
        self.config = config
        self.ranges = ranges
        self.outputFormats = outputFormats
        self.fallback = fallback
        self.log = log
    }

    public func makeLinear(name: String, source: WeightSource) throws -> LinearLayer {
        guard let r = ranges[name] else {
            log.add(name, "no calibrated activation range (module never ran during calibration)")
            return try fallback.makeLinear(name: name, source: source)
        }
        guard source.contains(name + ".weight") else {
            log.add(name, "no float '\(name).weight' (packed or unknown format); the NPU backend quantizes float weights")
            return try fallback.makeLinear(name: name, source: source)
        }
        let w = try source.tensor(name + ".weight")
        let b = source.contains(name + ".bias") ? try source.tensor(name + ".bias").floats() : nil
        guard w.shape.count == 2, let ref = WeightRef(w) else {
            log.add(name, "weight is \(w.dtype.rawValue) \(w.shape), not a 2-D float matrix")
            return try fallback.makeLinear(name: name, source: source)
        }
        return try NPUSimulator.makeLayer(name: name, weight: ref, n: w.shape[0], k: w.shape[1], bias: b, input: r.input,
                                          output: r.output, outputFormat: outputFormats[name], config: config, log: log)
            ?? fallback.makeLinear(name: name, source: source)
    }
}

/// Modules that ran off the NPU and why (a note each to the observer, counted for reports).
public final class FallbackLog: @unchecked Sendable {
    public struct Entry: Codable, Equatable, Sendable { public var module: String; public var reason: String }
    private var list: [Entry] = []
    private let lock = NSLock()
    private let observer: any ProgressObserver
    public init(observer: any ProgressObserver = NoProgress()) { self.observer = observer }
    public func add(_ module: String, _ reason: String) {
        lock.lock(); list.append(Entry(module: module, reason: reason)); lock.unlock()
        observer.note("npu: \(module) falls back to the float CPU path: \(reason)")
    }
    public var entries: [Entry] { lock.lock(); defer { lock.unlock() }; return list }
    public var count: Int { entries.count }
}

/// Records each linear module's input and output ranges while the float model runs.
final class CalibrationObserver: LinearObserver {
    var inputs: [String: RangeObserver] = [:]
    var outputs: [String: RangeObserver] = [:]
    /// max |output| per channel of the modules `perChannel` selects.
    var channelAbsMax: [String: [Float]] = [:]
    let capacity: Int
    let perChannel: (String) -> Bool
    init(capacity: Int, perChannel: @escaping (String) -> Bool = { _ in false }) {
        self.capacity = capacity
        self.perChannel = perChannel
    }
    func observe(module: String, input: UnsafePointer<Float>, inFeatures: Int, output: UnsafePointer<Float>,
                 outFeatures: Int, rows: Int) {
        let i = inputs[module] ?? RangeObserver(name: module + " input", capacity: capacity)
        let o = outputs[module] ?? RangeObserver(name: module + " output", capacity: capacity)
        inputs[module] = i; outputs[module] = o
        i.observe(input, count: rows * inFeatures)
        o.observe(output, count: rows * outFeatures)
        if perChannel(module) {
            var m = channelAbsMax[module] ?? [Float](repeating: 0, count: outFeatures)
            for r in 0..<rows { for j in 0..<outFeatures where output[r * outFeatures + j].isFinite { m[j] = max(m[j], abs(output[r * outFeatures + j])) } }
            channelAbsMax[module] = m
        }
    }
}

/// The simulated NPU for a model: calibrated activation ranges, the linear backend, the nonlinear ops.
///
/// Wiring (CLI `--backend npu [--npu-config FILE]`):
/// ```
/// let model = try LlamaModel.load(path: path)                          // float, as for --backend cpu
/// let npu = try NPUSimulator.calibrate(model: model, config: cfg, calibrationTokens: calib)
/// try npu.apply(to: model)      // every linear (and lm_head) -> NPULinear, model.ops -> NPU ops
/// ... run the unchanged perplexity / KLD / RAG pipeline on `model` ...
/// print(npu.summary)            // fallbacks and which nonlinear ops ran where
/// ```
/// or, for a fresh load: `let (backend, ops) = try NPUSimulator.makeBackend(model:config:calibrationTokens:)`,
/// then `LlamaModel.load(path:backend:)` and `model.ops = ops` (lm_head then stays float: LlamaModel builds it
/// without the backend; `apply(to:)` converts it too).
public final class NPUSimulator: @unchecked Sendable {
    public let config: NPUConfig
    public let ranges: [String: (input: Int8AffineParams, output: Int8AffineParams)]
    /// The output format of each module the config's int16_outputs or per_channel_outputs names.
    public let outputFormats: [String: NPUOutputFormat]
    public let npu: NPUNonlinear
    public let fallbacks: FallbackLog
    public var ops: NPUNonlinearOps { NPUNonlinearOps(npu: npu) }
    public var backend: NPULinearBackend {
        NPULinearBackend(config: config, ranges: ranges, outputFormats: outputFormats, log: fallbacks)
    }
    public let calibrationTokens: Int
    /// Operations of the model that stay on the host CPU in float (not NPU hooks), listed in reports.
    public internal(set) var hostOps: [String] = []

    init(config: NPUConfig, observed: CalibrationObserver, calibrationTokens: Int,
         observer: any ProgressObserver = NoProgress()) throws {
        var ranges: [String: (input: Int8AffineParams, output: Int8AffineParams)] = [:]
        var formats: [String: NPUOutputFormat] = [:]
        for (name, i) in observed.inputs {
            let o = observed.outputs[name]!
            ranges[name] = (try i.params(config.calibration), try o.params(config.calibration))
            if config.hasInt16Output(name) { formats[name] = .int16(scale: try o.int16Scale(config.calibration)) }
            if config.hasPerChannelOutput(name), let amax = observed.channelAbsMax[name] {
                formats[name] = .int8PerChannel(scales: amax.map { $0 > 1e-30 ? $0 / 127 : 1e-8 })
            }
        }
        self.config = config
        self.ranges = ranges
        self.outputFormats = formats
        self.npu = NPUNonlinear(mode: config.nonlinearMode)
        self.fallbacks = FallbackLog(observer: observer)
        self.calibrationTokens = calibrationTokens
    }

    /// Runs the float model over `calibrationTokens` (windows of at most `window` tokens, fresh cache each) and
    /// derives every linear module's int8 input/output parameters with the configured method. The model must be
    /// the float one (its ops and observer are restored afterwards).
    /// `progress` sees the calibration pass and, later, a note for each module that falls back to the CPU.
    public static func calibrate(model: LlamaModel, config: NPUConfig, calibrationTokens: [Int32],
                                 window: Int? = nil, progress: any ProgressObserver = NoProgress()) throws -> NPUSimulator {
        guard calibrationTokens.count >= config.minCalibrationTokens else {
            throw QuantKitError(.input, "NPU calibration too small: \(calibrationTokens.count) tokens, at least "
                                + "\(config.minCalibrationTokens) needed (min_calibration_tokens in the NPU config)")
        }
        try model.validate(tokens: calibrationTokens)
        let win = max(1, min(window ?? 256, model.config.maxPositionEmbeddings, calibrationTokens.count))
        let needsSamples = config.calibration != .minMax
        let obs = CalibrationObserver(capacity: needsSamples ? 1 << 18 : 0, perChannel: config.hasPerChannelOutput)
        let savedObserver = model.observer, savedOps = model.ops
        model.observer = obs
        model.ops = FloatOps()
        defer { model.observer = savedObserver; model.ops = savedOps }
        let cache = model.makeCache(capacity: win)
        let state = model.makeState(maxRows: win)
        var begin = 0
        let task = progress.task("npu calibration", total: calibrationTokens.count, unit: "tok")
        while begin < calibrationTokens.count {
            let end = min(begin + win, calibrationTokens.count)
            cache.reset()
            model.forward(Array(calibrationTokens[begin..<end]), cache: cache, state: state)
            begin = end
            task.update(done: begin)
        }
        return try NPUSimulator(config: config, observed: obs, calibrationTokens: calibrationTokens.count, observer: progress)
    }

    /// Calibrates on the float `model`, then returns a LinearBackend and NonlinearOps to hand to a fresh load.
    public static func makeBackend(model: LlamaModel, config: NPUConfig, calibrationTokens: [Int32]) throws
        -> (LinearBackend, NonlinearOps) {
        let s = try calibrate(model: model, config: config, calibrationTokens: calibrationTokens)
        return (s.backend, s.ops)
    }

    /// Builds one NPU layer, or nil (with a logged reason) when the NPU cannot run it.
    static func makeLayer(name: String, weight: WeightRef, n: Int, k: Int, bias: [Float]?, input: Int8AffineParams,
                          output: Int8AffineParams, outputFormat: NPUOutputFormat?, config: NPUConfig, log: FallbackLog) throws -> NPULinear? {
        // sum over k of |x - zp| * |w| <= 255 * qmax * k must fit the int32 accumulator
        let qmax = config.weightBits == 8 ? 127 : 7
        if 255 * qmax * k > Int(Int32.max) {
            log.add(name, "inner dimension \(k) could overflow the int32 accumulator")
            return nil
        }
        do {
            let w = try NPUWeights(weight: weight, n: n, k: k, bits: config.weightBits, granularity: config.weightGranularity)
            return try NPULinear(name: name, weights: w, bias: bias, input: input, output: output, outputFormat: outputFormat,
                                 rule: config.requant)
        } catch let e as QuantKitError {
            log.add(name, e.message)
            return nil
        }
    }

    /// Converts a loaded float model in place: each layer with float weights (DenseLinear, a GGUF layer's decoded
    /// weights) and lm_head becomes an NPULinear, the nonlinear ops become the NPU's. Other layers (e.g. quantized CPU layers) stay as they
    /// are, logged as fallbacks.
    public func apply(to model: LlamaModel) throws {
        func convert(_ name: String, _ layer: LinearLayer) throws -> LinearLayer {
            if layer is NPULinear { return layer }
            // GGUF layers hand over their decoded weights: the NPU quantizes them its own way.
            guard let dense = try (layer as? any FloatWeightsProviding)?.floatEquivalent, let ref = WeightRef(dense.weight) else {
                fallbacks.add(name, "\(type(of: layer)) has no float weights to quantize; kept on the CPU")
                return layer
            }
            guard let r = ranges[name] else {
                fallbacks.add(name, "no calibrated activation range (module never ran during calibration)")
                return layer
            }
            return try Self.makeLayer(name: name, weight: ref, n: dense.outFeatures, k: dense.inFeatures, bias: dense.bias,
                                      input: r.input, output: r.output, outputFormat: outputFormats[name], config: config,
                                      log: fallbacks) ?? layer
        }
        for b in model.blocks {
            for rel in LlamaBlock.linearNames {
                let name = b.prefix + rel
                try b.setLinear(try convert(name, b.linear(named: rel)!), named: rel)
            }
        }
        model.lmHead = try convert("lm_head", model.lmHead)
        model.ops = ops
    }

    /// Fallbacks and op counts, one line each.
    public var summary: String {
        let int16 = (config.int16Outputs.isEmpty ? "" : " (int16 outputs: \(config.int16Outputs.joined(separator: ", ")))")
            + (config.perChannelOutputs.isEmpty ? "" : " (per-channel outputs: \(config.perChannelOutputs.joined(separator: ", ")))")
        var lines = ["npu: \(config.weightBits)-bit weights (\(config.weightGranularity.rawValue)), int8 activations\(int16) "
                     + "(\(config.calibration), \(calibrationTokens) calibration tokens), nonlinear ops on \(config.nonlinearMode.rawValue), "
                     + "requantization \(config.requant.rawValue)",
                     "npu: \(fallbacks.count) module(s) fell back to the float CPU path"]
        lines += fallbacks.entries.map { "  \($0.module): \($0.reason)" }
        lines += npu.counter.entries.map { "npu op \($0.op) on \($0.unit): \($0.calls) calls, \($0.elements) elements" }
        if !hostOps.isEmpty { lines.append("npu: on the host CPU (float): " + hostOps.joined(separator: ", ")) }
        return lines.joined(separator: "\n")
    }
}
