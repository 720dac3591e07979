import Foundation
import Models
import TensorCore

/// AWQ settings (METHODS.md §1). The weight quantizer inside both searches is the scheme the model is then
/// quantized with, so the objectives measure the error that will actually be made.
public struct AWQConfig: Sendable {
    public var scheme: QuantScheme
    /// Exponents tried: i / grid for i in 0..<grid (0 = no scaling).
    public var grid = 20
    /// Clip search: shrink factors 1 - i / clipGrid for i < clipMaxShrink * clipGrid, on at most about
    /// `clipTokens` input rows (every (n / clipTokens)-th).
    public var clipGrid = 20
    public var clipMaxShrink = 0.5
    public var clipTokens = 512
    public var clip = true

    public init(scheme: QuantScheme) { self.scheme = scheme }
}

/// One scale search: the group, its exponent and the objective at every exponent tried.
public struct AWQGroupReport: Encodable, Sendable, Equatable {
    public var block: Int
    /// "qkv", "vo", "gate_up" or "down".
    public var group: String
    public var alpha: Double
    public var losses: [Double]
    public var scales: [Double]

    enum CodingKeys: String, CodingKey { case block, group, alpha, losses }
}

/// Clip search of one linear module: the shrink factor chosen most often and the mean shrink.
public struct AWQClipReport: Encodable, Sendable, Equatable {
    public var module: String
    /// Per (row, group): the clipping bound m* (the original max |w| times the chosen shrink factor).
    public var bounds: [Double]
    public var meanShrink: Double
    public var clippedGroups: Int

    enum CodingKeys: String, CodingKey { case module, meanShrink = "mean_shrink", clippedGroups = "clipped_groups" }
}

public struct AWQReport: Sendable {
    public var groups: [AWQGroupReport]
    public var clips: [AWQClipReport]
    public var seconds: Double
}

/// Activation-aware weight scaling (Lin et al. 2023), the search of mit-han-lab/llm-awq as METHODS.md §1 states
/// it: per block, on the float model's inputs, a per-input-channel scale s = mean|x|^α (normalised) for each
/// group of linears sharing an input, α chosen on the group's output error after quantizing W·diag(s); the
/// scales are folded into the preceding norm or linear (the float model is unchanged), then each linear but
/// q/k gets a clipping bound per (row, group). The result is a transformed float model to quantize.
public enum AWQ {
    /// Transforms `weights` (the float weights of `model`, which stays untouched and supplies every block's
    /// inputs) in place. Progress: one item per block.
    /// `scaleGrids` ("<block>.<group>" -> the scale vector of every exponent) replaces the grid computed from the
    /// activation statistics, so tests can feed a reference's exact scales.
    public static func apply(to weights: LlamaFloatWeights, model: LlamaModel, calibration windows: [[Int32]], config: AWQConfig,
                             progress: any ProgressObserver = NoProgress(), scaleGrids: [String: [[Double]]] = [:]) throws -> AWQReport {
        let t0 = Date()
        guard config.scheme.groupSize != QuantScheme.perTensor else {
            throw QuantKitError(.input, "AWQ needs per-channel or grouped weights, not per-tensor")
        }
        guard !windows.isEmpty else { throw QuantKitError(.input, "AWQ needs calibration windows") }
        let walker = LlamaLayerwise(model: model, maxRows: windows.map(\.count).max() ?? 0)
        let workers = max(1, model.threads)
        var batches = try walker.embed(calibration: windows)
        let counter = progress.task("awq", total: model.blocks.count, unit: "blocks")
        var groups: [AWQGroupReport] = []
        var clips: [AWQClipReport] = []
        for i in 0..<model.blocks.count {
            let p = "model.layers.\(i)."
            let names = (q: p + "self_attn.q_proj", k: p + "self_attn.k_proj", v: p + "self_attn.v_proj", o: p + "self_attn.o_proj",
                         gate: p + "mlp.gate_proj", up: p + "mlp.up_proj", down: p + "mlp.down_proj")
            // One float pass: the groups' inputs and the outputs their objectives compare against, the residual
            // streams after attention (the MLP's inputs, the same for every gate/up candidate) and the block's outputs.
            let capture = ActivationCapture([names.q: (true, false), names.o: (true, true), names.gate: (true, false),
                                             names.down: (true, true)])
            var mlpInputs: [LlamaLayerwise.Batch] = [], outputs: [LlamaLayerwise.Batch] = []
            // Batches run side by side, a few at a time; the capture sums rows in order, so each batch's modules
            // are recorded and handed to it in batch order.
            for lo in stride(from: 0, to: batches.count, by: 8 * workers) {
                let chunk = lo..<min(batches.count, lo + 8 * workers)
                let recorders = chunk.map { _ in LinearRecorder(modules: Set(capture.wanted.keys)) }
                var mid = Array(batches[chunk])
                walker.runConcurrently(i, part: .attention, on: &mid, observers: recorders, stopAfter: nil, workers: workers)
                var out = mid
                walker.runConcurrently(i, part: .mlp, on: &out, observers: recorders, stopAfter: nil, workers: workers)
                for r in recorders { r.replay(to: capture) }
                mlpInputs += mid
                outputs += out
            }
            let cap = capture.modules
            func module(_ n: String) -> ActivationCapture.Module { cap[n]! }

            // (a) q, k, v: the whole attention (through o_proj) is the objective.
            let sQKV = try searchGroup(block: i, group: "qkv", linears: [names.q, names.k, names.v], weights: weights,
                                       grid: scaleGrids["\(i).qkv"] ?? scaleGrid(capture.absMean(names.q), steps: config.grid), config: config, model: model) { candidates in
                try blockError(walker, block: i, part: .attention, batches: batches, replacing: candidates, module: names.o,
                               reference: module(names.o).outputs)
            }
            groups.append(sQKV)
            // (b) v -> o, only without grouped-query heads (v_proj and o_proj of equal shape).
            var sVO: AWQGroupReport?
            if weights.shape(names.v + ".weight") == weights.shape(names.o + ".weight") {
                let x = module(names.o).inputs, ref = module(names.o).outputs
                sVO = try searchGroup(block: i, group: "vo", linears: [names.o], weights: weights,
                                      grid: scaleGrids["\(i).vo"] ?? scaleGrid(capture.absMean(names.o), steps: config.grid), config: config, model: model) { candidates in
                    try linearError(candidates[names.o]!, input: x, reference: ref, threads: model.threads)
                }
                groups.append(sVO!)
            }
            // (c) gate, up: the whole MLP (through down_proj).
            let sGU = try searchGroup(block: i, group: "gate_up", linears: [names.gate, names.up], weights: weights,
                                      grid: scaleGrids["\(i).gate_up"] ?? scaleGrid(capture.absMean(names.gate), steps: config.grid), config: config, model: model) { candidates in
                try blockError(walker, block: i, part: .mlp, batches: mlpInputs, replacing: candidates, module: names.down,
                               reference: module(names.down).outputs)
            }
            groups.append(sGU)
            // (d) up -> down: silu(gate) * up is linear in up, so up's rows absorb down's input scale exactly.
            let xd = module(names.down).inputs, refd = module(names.down).outputs
            let sDown = try searchGroup(block: i, group: "down", linears: [names.down], weights: weights,
                                        grid: scaleGrids["\(i).down"] ?? scaleGrid(capture.absMean(names.down), steps: config.grid), config: config, model: model) { candidates in
                try linearError(candidates[names.down]!, input: xd, reference: refd, threads: model.threads)
            }
            groups.append(sDown)

            // Fold every group's scales (each was searched on the original float block).
            weights.divideGain(p + "input_layernorm.weight", by: sQKV.scales)
            for n in [names.q, names.k, names.v] { weights.scaleColumns(n + ".weight", by: sQKV.scales) }
            if let vo = sVO {
                weights.divideRows(names.v, by: vo.scales)
                weights.scaleColumns(names.o + ".weight", by: vo.scales)
            }
            weights.divideGain(p + "post_attention_layernorm.weight", by: sGU.scales)
            for n in [names.gate, names.up] { weights.scaleColumns(n + ".weight", by: sGU.scales) }
            weights.divideRows(names.up, by: sDown.scales)
            weights.scaleColumns(names.down + ".weight", by: sDown.scales)

            if config.clip {
                // The clip objective sees each linear's inputs as the scaled model receives them: x / s.
                let inputs: [(String, [Float], [Double]?)] = [
                    (names.v, module(names.q).inputs, sQKV.scales), (names.o, module(names.o).inputs, sVO?.scales),
                    (names.gate, module(names.gate).inputs, sGU.scales), (names.up, module(names.gate).inputs, sGU.scales),
                    (names.down, module(names.down).inputs, sDown.scales),
                ]
                for (n, x, s) in inputs {
                    clips.append(try clip(n, weights: weights, inputs: x, scales: s, config: config, threads: model.threads))
                }
            }
            // The next block's inputs come from the float block (the searches put its linears back).
            batches = outputs
            counter.update(done: i + 1, detail: "block \(i)")
        }
        return AWQReport(groups: groups, clips: clips, seconds: Date().timeIntervalSince(t0))
    }

    /// The candidate scales: for α = i / steps, s = max(a^α, 1e-4) / sqrt(max s * min s).
    static func scaleGrid(_ a: [Double], steps: Int) -> [[Double]] {
        (0..<steps).map { step in
            let alpha = Double(step) / Double(steps)
            let s = a.map { max(pow($0, alpha), 1e-4) }
            let norm = (s.max()! * s.min()!).squareRoot()
            return s.map { $0 / norm }
        }
    }

    /// The scale search of one group: for each candidate s, every linear of the group replaced by
    /// Q(W diag(s)) diag(s)^-1 and `objective` measured; the first smallest wins.
    static func searchGroup(block: Int, group: String, linears: [String], weights: LlamaFloatWeights, grid: [[Double]],
                            config: AWQConfig, model: LlamaModel,
                            objective: ([String: DenseLinear]) throws -> Double) throws -> AWQGroupReport {
        var losses: [Double] = []
        var best = (loss: Double.infinity, index: -1, scales: [Double]())
        for (step, s) in grid.enumerated() {
            let alpha = Double(step) / Double(grid.count)
            var candidates: [String: DenseLinear] = [:]
            for n in linears {
                let shape = weights.shape(n + ".weight")
                var w = weights.values(n + ".weight")
                let (rows, cols) = (shape[0], shape[1])
                for r in 0..<rows { for j in 0..<cols { w[r * cols + j] *= s[j] } }
                Quantizer.fakeQuantize(&w, rows: rows, cols: cols, scheme: config.scheme, threads: model.threads)
                for r in 0..<rows { for j in 0..<cols { w[r * cols + j] /= s[j] } }
                let bias = weights.contains(n + ".bias") ? Tensor(shape: [rows], floats: weights.values(n + ".bias").map { Float($0) }) : nil
                candidates[n] = try DenseLinear(weight: Tensor(shape: shape, floats: w.map { Float($0) }), bias: bias, name: n)
            }
            let loss = try objective(candidates)
            guard loss.isFinite else {
                throw QuantKitError(.numeric, "AWQ block \(block) \(group): non-finite output error at alpha \(alpha)")
            }
            losses.append(loss)
            if loss < best.loss { best = (loss, step, s) }
        }
        return AWQGroupReport(block: block, group: group, alpha: Double(best.index) / Double(grid.count), losses: losses,
                              scales: best.scales)
    }

    /// Mean squared error of `module`'s output over the calibration batches with `replacing` swapped into block
    /// `block` (the block's originals are put back). `part` of the block runs on `batches` (its inputs), the
    /// batches side by side on the model's threads.
    static func blockError(_ walker: LlamaLayerwise, block: Int, part: LlamaLayerwise.BlockPart, batches: [LlamaLayerwise.Batch],
                           replacing: [String: DenseLinear], module: String, reference: [Float]) throws -> Double {
        let originals = replacing.keys.map { ($0, walker.linear(named: $0)!) }
        defer { for (n, l) in originals { try? walker.setLinear(l, named: n) } }
        for (n, l) in replacing { try walker.setLinear(l, named: n) }
        // One observer per batch at its batch's place in the reference; their sums added in batch order are the
        // sum of one observer seeing the batches in turn, bit for bit.
        let width = walker.linear(named: module)!.outFeatures
        var offset = 0
        let observers = batches.map { b in
            defer { offset += b.rows * width }
            return OutputErrorObserver(module: module, reference: reference, offset: offset)
        }
        var x = batches
        walker.runConcurrently(block, part: part, on: &x, observers: observers, stopAfter: module, workers: max(1, walker.threads))
        let sum = observers.reduce(0.0) { $0 + $1.sum }
        return sum / Double(max(reference.count, 1))
    }

    /// Mean squared error of one linear on recorded inputs against its recorded outputs.
    static func linearError(_ layer: DenseLinear, input: [Float], reference: [Float], threads: Int) throws -> Double {
        let rows = input.count / layer.inFeatures
        var out = [Float](repeating: 0, count: rows * layer.outFeatures)
        input.withUnsafeBufferPointer { x in
            out.withUnsafeMutableBufferPointer { layer.forward(x.baseAddress!, rows: rows, out: $0.baseAddress!, threads: threads) }
        }
        var s = 0.0
        for i in out.indices { let d = Double(out[i]) - Double(reference[i]); s += d * d }
        return s / Double(max(out.count, 1))
    }

    /// The clip search of one (scaled) linear: per (row, group), the bound m = max|w| (1 - i/clipGrid) whose
    /// quantized clamped weights best reproduce the group's partial dot products on the sampled inputs; the
    /// weights are clamped to it.
    static func clip(_ name: String, weights: LlamaFloatWeights, inputs: [Float], scales: [Double]?, config: AWQConfig,
                     threads: Int) throws -> AWQClipReport {
        let shape = weights.shape(name + ".weight")
        let (rows, cols) = (shape[0], shape[1])
        let n = inputs.count / cols
        let stride = max(1, n / config.clipTokens)
        let picked = Array(Swift.stride(from: 0, to: n, by: stride))
        let t = picked.count
        // Sampled inputs transposed, x[j][k] for sample k: the partial dot products of all samples run side by side.
        var x = [Double](repeating: 0, count: t * cols)
        for (k, row) in picked.enumerated() {
            for j in 0..<cols { x[j * t + k] = Double(inputs[row * cols + j]) / (scales?[j] ?? 1) }
        }
        let gs = config.scheme.effectiveGroupSize(inFeatures: cols)
        let ng = config.scheme.groupCount(inFeatures: cols)
        let steps = Int(config.clipMaxShrink * Double(config.clipGrid))
        var w = weights.values(name + ".weight")
        var bounds = [Double](repeating: 0, count: rows * ng)
        var shrinks = [Double](repeating: 0, count: rows * ng)
        w.withUnsafeMutableBufferPointer { wb in x.withUnsafeBufferPointer { xb in
            bounds.withUnsafeMutableBufferPointer { bb in shrinks.withUnsafeMutableBufferPointer { sb in
                let wp = SendablePointer(wb.baseAddress!), xp = SendablePointer(xb.baseAddress!)
                let bp = SendablePointer(bb.baseAddress!), sp = SendablePointer(sb.baseAddress!)
                Parallel.forRanges(rows, threads: threads) { range in
                    let q = UnsafeMutablePointer<Double>.allocate(capacity: gs)
                    let org = UnsafeMutablePointer<Double>.allocate(capacity: t), d = UnsafeMutablePointer<Double>.allocate(capacity: t)
                    defer { q.deallocate(); org.deallocate(); d.deallocate() }
                    for r in range {
                        for g in 0..<ng {
                            let c0 = g * gs, len = min(gs, cols - c0)
                            let wr = wp.base + r * cols + c0, xg = UnsafePointer(xp.base + c0 * t)
                            var m0 = 0.0
                            for j in 0..<len { m0 = max(m0, abs(wr[j])) }
                            partialProducts(xg, samples: t, weights: wr, count: len, into: org)
                            var best = (err: Double.infinity, m: m0, shrink: 0.0)
                            for i in 0..<steps {
                                let shrink = Double(i) / Double(config.clipGrid)
                                let m = m0 * (1 - shrink)
                                for j in 0..<len { q[j] = min(max(wr[j], -m), m) }
                                Quantizer.fakeQuantizeSegment(q, count: len, scheme: config.scheme)
                                partialProducts(xg, samples: t, weights: q, count: len, into: d)
                                var err = 0.0
                                for k in 0..<t { err += (d[k] - org[k]) * (d[k] - org[k]) }
                                err /= Double(max(t, 1))
                                if err < best.err { best = (err, m, shrink) }
                            }
                            for j in 0..<len { wr[j] = min(max(wr[j], -best.m), best.m) }
                            bp[r * ng + g] = best.m
                            sp[r * ng + g] = best.shrink
                        }
                    }
                }
            } }
        } }
        weights.set(name + ".weight", shape: shape, values: w)
        return AWQClipReport(module: name, bounds: bounds, meanShrink: shrinks.reduce(0, +) / Double(max(shrinks.count, 1)),
                             clippedGroups: shrinks.filter { $0 > 0 }.count)
    }

    /// out[k] = sum over j < count of x[j * samples + k] * w[j], each sum in j order from 0 (as a scalar loop adds,
    /// bit for bit: products and sums stay separate roundings, no fused multiply-add), 16 samples at a time.
    @inline(__always)
    static func partialProducts(_ x: UnsafePointer<Double>, samples t: Int, weights w: UnsafePointer<Double>, count: Int,
                                into out: UnsafeMutablePointer<Double>) {
        typealias V = SIMD4<Double>
        func load(_ p: UnsafePointer<Double>) -> V { UnsafeRawPointer(p).loadUnaligned(as: V.self) }
        func store(_ v: V, _ p: UnsafeMutablePointer<Double>) { UnsafeMutableRawPointer(p).storeBytes(of: v, as: V.self) }
        var k = 0
        while k + 16 <= t {
            var a0 = V(), a1 = V(), a2 = V(), a3 = V()
            var p = x + k
            for j in 0..<count {
                let wj = V(repeating: w[j])
                a0 += load(p) * wj; a1 += load(p + 4) * wj; a2 += load(p + 8) * wj; a3 += load(p + 12) * wj
                p += t
            }
            store(a0, out + k); store(a1, out + k + 4); store(a2, out + k + 8); store(a3, out + k + 12)
            k += 16
        }
        while k < t {
            var a = 0.0
            for j in 0..<count { a += x[j * t + k] * w[j] }
            out[k] = a
            k += 1
        }
    }
}
