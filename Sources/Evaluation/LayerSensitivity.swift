import Foundation
import Models
import Quantization
import TensorCore

// Per-module sensitivity (issue 7): how far each quantized linear module's output moves from the float one on
// calibration inputs (cosine, MSE, SQNR), and what quantizing only it (enable-one) or all but it (disable-one)
// does to the perplexity of a held-out sample. Quantized weights are given dequantized (the same numbers the
// quantized kernels compute with, up to float summation order), so any quantizer's output can be analysed.

public struct ModuleSensitivity: Sendable {
    public var name: String
    public var parameters: Int
    /// Output error of this module alone (float inputs) over the calibration tokens.
    public var error: ErrorMetrics
    /// QError of the held-out sample with only this module quantized.
    public var enableOneQError: Double?
    /// QError with every module quantized except this one (lower than the all-quantized QError = this module
    /// matters).
    public var disableOneQError: Double?

    /// Larger = more sensitive: the measured enable-one effect when present, else -SQNR.
    public var sensitivity: Double { enableOneQError ?? -error.sqnrDB }
}

public struct SensitivityReport: Sendable {
    public var modules: [ModuleSensitivity]
    public var floatPPL: Double?
    public var quantizedPPL: Double?
    public var calibrationTokens: Int
    public var heldoutTokensScored: Int
    public var qerrorAll: Double? { floatPPL.flatMap { f in quantizedPPL.map { $0 / f - 1 } } }
    /// Most sensitive first.
    public var ranked: [ModuleSensitivity] { modules.sorted { ($0.sensitivity, $1.name) > ($1.sensitivity, $0.name) } }
}

/// Accumulates the output error of each module's quantized twin on the float model's own inputs.
final class SensitivityObserver: LinearObserver {
    let twins: [String: LinearLayer]
    var acc: [String: ErrorAccumulator] = [:]
    var scratch: [Float] = []
    let threads: Int
    init(twins: [String: LinearLayer], threads: Int) { self.twins = twins; self.threads = threads }

    func observe(module: String, input: UnsafePointer<Float>, inFeatures: Int, output: UnsafePointer<Float>,
                 outFeatures: Int, rows: Int) {
        guard let q = twins[module] else { return }
        let n = rows * outFeatures
        if scratch.count < n { scratch = [Float](repeating: 0, count: n) }
        scratch.withUnsafeMutableBufferPointer { sb in
            q.forward(input, rows: rows, out: sb.baseAddress!, threads: threads)
            acc[module, default: ErrorAccumulator()].add(reference: output, approximation: sb.baseAddress!, count: n)
        }
    }
}

public enum LayerSensitivity {
    /// Token windows of `ctx` for calibration, at most `maxWindows`, non-overlapping from the start.
    static func windows(_ tokens: [Int32], ctx: Int, maxWindows: Int) -> [[Int32]] {
        var out: [[Int32]] = []
        var i = 0
        while i + ctx <= tokens.count && out.count < maxWindows { out.append(Array(tokens[i..<i + ctx])); i += ctx }
        if out.isEmpty && tokens.count >= 2 { out.append(tokens) }
        return out
    }

    /// Replaces the named modules by dense layers holding `weights` (dequantized, [out*in] row-major) and returns
    /// the layers that were there, to restore them.
    static func swap(_ model: LlamaModel, _ layers: [String: LinearLayer]) throws -> [String: LinearLayer] {
        var old: [String: LinearLayer] = [:]
        for (name, l) in layers {
            guard let b = model.blocks.first(where: { name.hasPrefix($0.prefix) }), let cur = b.linear(named: name) else {
                throw QuantKitError(.input, "no linear module named '\(name)' in the model")
            }
            old[name] = cur
            try b.setLinear(l, named: name)
        }
        return old
    }

    public static func denseLayers(_ quantized: [String: [Float]], model: LlamaModel) throws -> [String: LinearLayer] {
        var out: [String: LinearLayer] = [:]
        for (name, w) in quantized {
            guard let b = model.blocks.first(where: { name.hasPrefix($0.prefix) }), let cur = b.linear(named: name) else {
                throw QuantKitError(.input, "quantized weights name '\(name)', which is not a linear module of the model")
            }
            guard w.count == cur.inFeatures * cur.outFeatures else {
                throw QuantKitError(.shape, "\(name): \(w.count) quantized values for a [\(cur.outFeatures), \(cur.inFeatures)] module")
            }
            out[name] = try DenseLinear(weight: Tensor(shape: [cur.outFeatures, cur.inFeatures], floats: w), name: name)
        }
        return out
    }

    /// Held-out perplexity under the current model layers (protocol gptq: every position after the first).
    public static func perplexity(_ model: LlamaModel, tokens: [Int32], ctx: Int, maxChunks: Int) throws -> (ppl: Double, scored: Int) {
        let r = try Perplexity.evaluate(model: model, tokens: tokens, addsBOS: false, bosId: 0,
                                        options: PerplexityOptions(protocolKind: .gptq, ctx: ctx, maxChunks: maxChunks))
        return (r.ppl, r.tokensScored)
    }

    /// The modules `analyze` reports on, in its order (model order, `order`).
    public static func moduleOrder(_ quantized: [String: [Float]]) -> [String] {
        quantized.keys.sorted { a, b in order(a) < order(b) }
    }

    /// Analyses every module present in `quantized` (name -> dequantized weights), or the modules at positions
    /// `only` of `moduleOrder(quantized)` (a shard's).
    /// - calibration: tokens whose windows feed the output-error statistics.
    /// - heldout: tokens for the enable-one / disable-one perplexities (nil = skip the effects).
    /// - quantizedPPL: also measure the all-quantized held-out perplexity (a whole-model figure; a shard other than
    ///   the first skips it).
    /// Each module's figures depend on that module alone: its twin sees the float model's inputs, enable-one swaps
    /// in only it, disable-one swaps in every twin but it; so any slice of the modules gets the figures the whole
    /// analysis gets. The calibration forwards and the float perplexity are run whole by every slice.
    public static func analyze(model: LlamaModel, quantized: [String: [Float]], calibration: [Int32], ctx: Int,
                               calibrationWindows: Int = 8, heldout: [Int32]? = nil, heldoutChunks: Int = 4,
                               only: Range<Int>? = nil, quantizedPPL measureAll: Bool = true,
                               progress: any ProgressObserver = NoProgress()) throws -> SensitivityReport {
        guard !quantized.isEmpty else { throw QuantKitError(.input, "no quantized modules to analyse") }
        let twins = try denseLayers(quantized, model: model)
        let all = moduleOrder(quantized)
        if let r = only, r.lowerBound < 0 || r.upperBound > all.count {
            throw QuantKitError(.input, "modules \(r.lowerBound)..<\(r.upperBound) of \(all.count) asked for")
        }
        let names = only.map { Array(all[$0]) } ?? all
        // 1. Output error on calibration inputs (float model, quantized twins see the same inputs).
        let observed = Set(names)
        let obs = SensitivityObserver(twins: twins.filter { observed.contains($0.key) }, threads: model.threads)
        let saved = model.observer
        model.observer = obs
        defer { model.observer = saved }
        let wins = windows(calibration, ctx: ctx, maxWindows: calibrationWindows)
        guard !wins.isEmpty else { throw QuantKitError(.input, "calibration text is too short: \(calibration.count) tokens") }
        try model.validate(tokens: calibration)
        let cache = model.makeCache(capacity: ctx), state = model.makeState(maxRows: ctx)
        var calTokens = 0
        let calibrationTask = progress.task("layers calibration", total: wins.count, unit: "windows")
        for (i, w) in wins.enumerated() {
            cache.reset()
            _ = model.forward(w, cache: cache, state: state, logitsFrom: w.count - 1)
            calTokens += w.count
            calibrationTask.update(done: i + 1)
        }
        model.observer = saved
        var modules: [ModuleSensitivity] = names.map { n in
            ModuleSensitivity(name: n, parameters: twins[n]!.inFeatures * twins[n]!.outFeatures,
                              error: (obs.acc[n] ?? ErrorAccumulator()).metrics)
        }
        // 2. Effects on held-out perplexity.
        var floatPPL: Double? = nil, quantPPL: Double? = nil, scored = 0
        if let held = heldout {
            let f = try perplexity(model, tokens: held, ctx: ctx, maxChunks: heldoutChunks)
            floatPPL = f.ppl; scored = f.scored
            let effects = progress.task("layers effects", total: 2 * names.count + (measureAll ? 1 : 0), unit: "ppl runs")
            var done = 0
            for (i, n) in names.enumerated() {
                let old = try swap(model, [n: twins[n]!])
                defer { _ = try? swap(model, old) }
                modules[i].enableOneQError = try perplexity(model, tokens: held, ctx: ctx, maxChunks: heldoutChunks).ppl / f.ppl - 1
                done += 1; effects.update(done: done)
            }
            let originals = try swap(model, twins)
            defer { _ = try? swap(model, originals) }
            if measureAll {
                quantPPL = try perplexity(model, tokens: held, ctx: ctx, maxChunks: heldoutChunks).ppl
                done += 1; effects.update(done: done)
            }
            for (i, n) in names.enumerated() {
                let q = try swap(model, [n: originals[n]!])
                defer { _ = try? swap(model, q) }
                modules[i].disableOneQError = try perplexity(model, tokens: held, ctx: ctx, maxChunks: heldoutChunks).ppl / f.ppl - 1
                done += 1; effects.update(done: done)
            }
        }
        return SensitivityReport(modules: modules, floatPPL: floatPPL, quantizedPPL: quantPPL, calibrationTokens: calTokens,
                                 heldoutTokensScored: scored)
    }

    /// Model order: layer index, then q, k, v, o, gate, up, down.
    static func order(_ name: String) -> (Int, Int, String) {
        let parts = name.split(separator: ".")
        let layer = parts.firstIndex(of: "layers").flatMap { i in i + 1 < parts.count ? Int(parts[i + 1]) : nil } ?? Int.max
        let kinds = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        return (layer, kinds.firstIndex { name.hasSuffix($0) } ?? kinds.count, name)
    }
}

// MARK: mixed-precision plans

/// A per-module precision plan: a default scheme and the modules kept at higher precision. Written as JSON a
/// user can edit and pass back (`kind: "plan"`).
public struct MixedPrecisionPlan: Sendable, Equatable {
    public var defaultBits: Int
    public var groupSize: Int
    /// Module name -> bits (8) or 16 for "keep float (fp16)".
    public var overrides: [String: Int]

    public init(defaultBits: Int, groupSize: Int, overrides: [String: Int] = [:]) {
        self.defaultBits = defaultBits; self.groupSize = groupSize; self.overrides = overrides
    }

    /// The dequantized weights this plan runs: `low` (the default scheme) with its 8-bit modules taken from `eight`
    /// and its float modules left out (the model keeps their float weights).
    public func weights(low: [String: [Float]], eight: [String: [Float]]) -> [String: [Float]] {
        var out: [String: [Float]] = [:]
        for (n, w) in low {
            switch overrides[n] {
            case 16?: continue
            case 8?: out[n] = eight[n] ?? w
            default: out[n] = w
            }
        }
        return out
    }

    /// Storage bits per weight of one module [out, in]: b + (16-bit scale + b-bit zero) per group;
    /// per channel (group <= 0) one pair per row; float modules count 16 (fp16).
    public static func bitsPerWeight(bits: Int, groupSize: Int, inFeatures: Int) -> Double {
        if bits >= 16 { return 16 }
        let g = groupSize > 0 ? min(groupSize, inFeatures) : inFeatures
        let groups = (inFeatures + g - 1) / g
        return Double(bits) + Double(groups) * Double(16 + bits) / Double(inFeatures)
    }

    /// Parameter-weighted bits per weight over `modules` (name -> (out, in)), summed in name order (a dictionary's
    /// own order changes from one process to the next, and with it the last bits of the sum).
    public func bitsPerWeight(modules: [String: (out: Int, in: Int)]) -> Double {
        var bits = 0.0, params = 0
        for n in modules.keys.sorted() {
            let s = modules[n]!
            let b = overrides[n] ?? defaultBits
            // 8-bit overrides stay per channel (the usual W8 scheme); low-bit modules use the plan's groups.
            let g = b == defaultBits ? groupSize : -1
            bits += MixedPrecisionPlan.bitsPerWeight(bits: b, groupSize: g, inFeatures: s.in) * Double(s.out * s.in)
            params += s.out * s.in
        }
        return params > 0 ? bits / Double(params) : 0
    }

    /// Greedy by sensitivity: promote the most sensitive modules to 8 bits while the model stays within
    /// `targetBits` (a module that does not fit is skipped, later smaller ones may still fit).
    public static func forTargetBits(ranking: [String], modules: [String: (out: Int, in: Int)], defaultBits: Int,
                                     groupSize: Int, targetBits: Double) throws -> MixedPrecisionPlan {
        var plan = MixedPrecisionPlan(defaultBits: defaultBits, groupSize: groupSize)
        let floor = plan.bitsPerWeight(modules: modules)
        guard targetBits >= floor - 1e-12 else {
            throw QuantKitError(.input, String(format: "--target-bits %.3f is below the %d-bit plan's own %.3f bits per weight", targetBits, defaultBits, floor))
        }
        for n in ranking where modules[n] != nil {
            plan.overrides[n] = 8
            if plan.bitsPerWeight(modules: modules) > targetBits + 1e-12 { plan.overrides[n] = nil }
        }
        return plan
    }

    public func json(modules: [String: (out: Int, in: Int)], extra: [String: Any] = [:]) -> [String: Any] {
        var o: [String: Any] = ["scheme": ["bits": defaultBits, "group_size": groupSize],
                                "modules": Dictionary(uniqueKeysWithValues: overrides.map { ($0.key, $0.value >= 16 ? ["float": true] as [String: Any] : ["bits": $0.value]) }),
                                "bits_per_weight": bitsPerWeight(modules: modules)]
        for (k, v) in extra { o[k] = v }
        return o
    }

    /// Reads a plan JSON (as written by `json`, possibly edited).
    public static func read(_ path: String) throws -> MixedPrecisionPlan {
        let f = try ResultValue(any: JSONSerialization.jsonObject(with: readMaybeCompressed(path)))
        guard let scheme = f["scheme"], let bits = scheme["bits"]?.int else {
            throw QuantKitError(.format, "\(path): missing field \"scheme.bits\"")
        }
        var plan = MixedPrecisionPlan(defaultBits: bits, groupSize: scheme["group_size"]?.int ?? -1)
        for (n, v) in f["modules"]?.object ?? [:] {
            if v["float"]?.bool == true { plan.overrides[n] = 16 }
            else if let b = v["bits"]?.int { plan.overrides[n] = b }
            else { throw QuantKitError(.format, "\(path): module \"\(n)\" needs \"bits\" or \"float\": true") }
        }
        return plan
    }
}

extension LayerSensitivity {
    /// Builds a plan for a QError target by measurement: promote modules in `ranking` order to 8 bits (then, if
    /// still above, to float) until the held-out QError of the whole plan is at most `target`.
    /// `low`/`eight`: dequantized weights of every module at the default scheme and at 8 bits.
    public static func planForTargetQError(model: LlamaModel, low: [String: [Float]], eight: [String: [Float]], ranking: [String],
                                           heldout: [Int32], ctx: Int, chunks: Int, target: Double, defaultBits: Int, groupSize: Int,
                                           progress: any ProgressObserver = NoProgress()) throws -> (plan: MixedPrecisionPlan, qerror: Double) {
        let floatPPL = try perplexity(model, tokens: heldout, ctx: ctx, maxChunks: chunks).ppl
        var plan = MixedPrecisionPlan(defaultBits: defaultBits, groupSize: groupSize)
        func measure() throws -> Double {
            let originals = try swap(model, denseLayers(plan.weights(low: low, eight: eight), model: model))
            defer { _ = try? swap(model, originals) }
            return try perplexity(model, tokens: heldout, ctx: ctx, maxChunks: chunks).ppl / floatPPL - 1
        }
        var q = try measure()
        progress.note(String(format: "plan: QError %.4f%% with no module promoted", 100 * q))
        var steps = 0
        for level in [8, 16] {
            for n in ranking where q > target && low[n] != nil && (plan.overrides[n] ?? defaultBits) < level {
                plan.overrides[n] = level
                q = try measure()
                steps += 1
                progress.note(String(format: "plan: %@ -> %d bits: QError %.4f%%", n, level, 100 * q))
            }
        }
        return (plan, q)
    }
}
