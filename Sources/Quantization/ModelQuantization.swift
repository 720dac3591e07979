import Foundation
import Kernels
import Models
import Datasets
import TensorCore

/// A linear layer holding quantized weights, run on the Kernels' W8A16/W4A16 kernels: each weight is
/// scale (rounded to f16, as stored in the checkpoint) x (q - zero), which is exactly what a loader of the
/// checkpoint computes. The codes live only as GEMM panels (QuantizedPanels), which serve prefill and decode.
public final class QuantizedLinear: LinearLayer, @unchecked Sendable {
    /// The scheme, for size accounting: bits per code and groups per output row. (The QuantizedWeight itself,
    /// with a byte per code, is not kept.)
    public let bits: Int
    public let groupCount: Int
    public let inFeatures: Int
    public let outFeatures: Int
    /// The packed integer codes the kernels run on; the float weight matrix is never materialised.
    public let panels: QuantizedPanels
    private let bias: [Float]?
    // The W8A16/W4A16 GEMM and GEMV compute each output row from its own input row.
    public var rowIndependent: Bool { true }

    public init(_ q: QuantizedWeight, bias: Tensor? = nil, name: String = "linear") throws {
        bits = q.bits
        groupCount = q.groupCount
        inFeatures = q.inFeatures
        outFeatures = q.outFeatures
        // Scales are stored as float16 in the checkpoint; round them here too so a freshly quantized layer
        // computes exactly what its written and reloaded checkpoint computes.
        do {
            let matrix = try QuantizedMatrix.fromGroupIndex(
                bits: q.bits, outFeatures: q.outFeatures, inFeatures: q.inFeatures, codesOriginalOrder: q.codes,
                scales: q.scales.map { Float(Float16($0)) }, zeros: q.zeros.map { Float($0) }, gIdx: q.gIdx)
            panels = QuantizedPanels(matrix)
        } catch let e as QuantKitError {
            throw QuantKitError(e.kind, "\(name): \(e.message)")
        }
        if let bias {
            guard bias.count == q.outFeatures, bias.dtype.isFloat else {
                throw QuantKitError(.shape, "\(name).bias: shape \(bias.shape), expected [\(q.outFeatures)]")
            }
            self.bias = bias.floats()
        } else {
            self.bias = nil
        }
    }

    /// Set by `useInt8Activations`: the layer then runs as W4A8.
    public private(set) var w4a8: W4A8Panels?

    /// Runs this layer as W4A8 (activations quantized to int8 per 32-input block, integer dot products: the
    /// contract of llama.cpp's Q4_0 x Q8_0) when its codes (<= 4 bits), input size and groups (multiples of 32)
    /// allow it, else leaves it on W4A16. A different numerical contract from W4A16, so opt-in. Returns whether the
    /// layer now runs as W4A8.
    @discardableResult
    public func useInt8Activations(_ on: Bool = true) -> Bool {
        w4a8 = on ? (w4a8 ?? W4A8Panels(panels)) : nil
        return w4a8 != nil
    }

    public func forward(_ x: UnsafePointer<Float>, rows: Int, out: UnsafeMutablePointer<Float>, threads: Int) {
        let run = { (b: UnsafePointer<Float>?) in
            if let w = self.w4a8 {
                Kernels.matmulW4A8(x: x, m: rows, panels: w, bias: b, out: out, threads: threads)
            } else {
                Kernels.matmulQuantized(x: x, m: rows, panels: self.panels, bias: b, out: out, threads: threads)
            }
        }
        if let bias { bias.withUnsafeBufferPointer { run($0.baseAddress) } } else { run(nil) }
    }
}

/// Builds quantized layers for modules stored as qweight/qzeros/scales/g_idx (AutoGPTQ v1) and dense ones
/// for modules stored as `.weight`. Hand it to `LlamaModel.load(path:backend:)` for a GPTQ directory.
public struct QuantizedLinearBackend: LinearBackend {
    public let config: GPTQQuantizeConfig

    public init(config: GPTQQuantizeConfig) { self.config = config }

    /// Reads quantize_config.json (or config.json's quantization_config) of a checkpoint directory.
    public init(directory: String) throws { config = try GPTQCheckpoint.readConfig(directory).config }

    public func makeLinear(name: String, source: WeightSource) throws -> LinearLayer {
        guard source.contains(name + ".qweight") else { return try DenseBackend().makeLinear(name: name, source: source) }
        let s = config.settings(for: name)
        let q = try GPTQPacking.readLayer(source, prefix: name, bits: s.bits, groupSize: s.groupSize, symmetric: config.sym)
        let bias = source.contains(name + ".bias") ? try source.tensor(name + ".bias") : nil
        let layer = try QuantizedLinear(q, bias: bias, name: name)
        // The layer holds its own copy of the codes, scales and zeros: the checkpoint's pages are not read again.
        for suffix in [".qweight", ".qzeros", ".scales", ".g_idx"] where source.contains(name + suffix) {
            try source.tensor(name + suffix).storage.releaseResidentPages()
        }
        return layer
    }
}

/// Calibration windows: `samples` random windows of `seqlen` tokens from the tokenized corpus (start drawn
/// uniformly, as the GPTQ reference's data loaders do), reproducible from `seed`.
public enum CalibrationWindows {
    public static func sample(tokens: [Int32], samples: Int, seqlen: Int, seed: UInt64, source: String = "calibration") throws -> [[Int32]] {
        try UserLimits.checkCalibration(samples: samples, seqlen: seqlen)
        guard tokens.count > seqlen else {
            throw QuantKitError(.input, "\(source): \(tokens.count) tokens, too short for windows of \(seqlen) tokens (need more than \(seqlen))")
        }
        var rng = SplitMix64(seed: seed)
        return (0..<samples).map { _ in
            let start = rng.index(tokens.count - seqlen)
            return Array(tokens[start..<(start + seqlen)])
        }
    }
}

/// The per-layer quantization method: GPTQ, round-to-nearest, AWQ (activation-aware scaling, then RTN), HQQ
/// (calibration-free zero-point optimisation) or SparseGPT (pruning, optionally with quantization).
public enum QuantMethod: String, Sendable, Codable, CaseIterable {
    case gptq, rtn, awq, hqq, sparsegpt
    public static var names: String { allCases.map(\.rawValue).joined(separator: ", ") }
    /// Whether the layers are calibrated on inputs (Hessians or activation statistics).
    public var needsCalibration: Bool { self != .rtn && self != .hqq }
}

public struct ModelQuantizationOptions: Sendable {
    public var method: QuantMethod
    public var scheme: QuantScheme
    public var actOrder: Bool
    public var staticGroups: Bool
    public var dampPercent: Double
    public var trueSequential: Bool
    /// (substring of the module name, bits): the first matching override sets the layer's bits.
    public var overrides: [(pattern: String, bits: Int)]
    /// Modules whose name contains any of these stay float.
    public var skip: [String]
    /// SparseGPT's pattern (method sparsegpt), and whether it only prunes (float weights, no quantization).
    public var sparsity: SparsityPattern?
    public var pruneOnly = false
    /// GPTAQ (method gptq only): alpha of the asymmetric-calibration term (`GPTAQConfig`; 0.25 upstream), nil: GPTQ.
    /// Needs the float model beside the quantized one (`ModelQuantizer.quantize(model:windows:options:)` builds it).
    public var gptaqAlpha: Double?

    public init(method: QuantMethod, scheme: QuantScheme, actOrder: Bool = false, staticGroups: Bool = false,
                dampPercent: Double = 0.01, trueSequential: Bool = true, overrides: [(pattern: String, bits: Int)] = [],
                skip: [String] = []) {
        self.method = method
        self.scheme = scheme
        self.actOrder = actOrder
        self.staticGroups = staticGroups
        self.dampPercent = dampPercent
        self.trueSequential = trueSequential
        self.overrides = overrides
        self.skip = skip
    }

    /// Settings that do not depend on the model; one clear error for the first bad one.
    public func validate() throws {
        if let a = gptaqAlpha {
            guard method == .gptq else { throw QuantKitError(.input, "--gptaq applies to --method gptq only (got --method \(method.rawValue))") }
            guard a.isFinite, a >= 0 else { throw QuantKitError(.input, "GPTAQ alpha must be a finite number >= 0 (got \(a))") }
        }
    }

    public func scheme(for module: String) throws -> QuantScheme? {
        if skip.contains(where: { module.contains($0) }) { return nil }
        guard let o = overrides.first(where: { module.contains($0.pattern) }) else { return scheme }
        return try QuantScheme(bits: o.bits, symmetric: scheme.symmetric, groupSize: scheme.groupSize, mseSearch: scheme.mseSearch,
                               minZero: scheme.minZero)
    }
}

public struct LayerQuantReport: Sendable {
    public let name: String
    public let outFeatures: Int
    public let inFeatures: Int
    public let bits: Int
    public let groupSize: Int
    public let gptqLoss: Double?
    public let error: ErrorMetrics
    public let seconds: Double
    public let dampPercentUsed: Double?
    public let dampEscalations: Int
    public let deadColumns: Int
    /// Nonzero fraction of the written weights (SparseGPT), nil when nothing was pruned.
    public var density: Double?

    public var json: [String: Any] {
        var o: [String: Any] = ["name": name, "shape": [outFeatures, inFeatures], "bits": bits, "group_size": groupSize,
                                "seconds": seconds, "error": error.json, "damp_escalations": dampEscalations, "dead_columns": deadColumns]
        if let l = gptqLoss { o["gptq_loss"] = l }
        if let d = dampPercentUsed { o["damp_percent_used"] = d }
        if let d = density { o["density"] = d }
        return o
    }
}

/// GPTQ (optionally GPTAQ) or RTN (`options.method`) of one linear module at a time: the per-layer algorithm
/// `ModelQuantizer` runs over the layer-wise driver. Returns the quantized weight and its report.
public struct LayerQuantizer: LayerwiseAlgorithm {
    public let options: ModelQuantizationOptions
    /// Receives the damping notes of GPTQ.
    public let progress: any ProgressObserver

    public init(options: ModelQuantizationOptions, progress: any ProgressObserver = NoProgress()) {
        self.options = options
        self.progress = progress
    }

    public var needsHessian: Bool { options.method == .gptq || options.method == .sparsegpt }
    public var needsFloatInputs: Bool { options.method == .gptq && options.gptaqAlpha != nil }

    public func selects(_ name: String, layer: any LinearLayer) throws -> Bool {
        guard let s = try options.scheme(for: name) else { return false }
        try s.validate(outFeatures: layer.outFeatures, inFeatures: layer.inFeatures, name: name)
        return true
    }

    /// What one module became: quantized codes, or (SparseGPT without quantization) pruned float weights.
    public struct Output {
        public var quantized: QuantizedWeight?
        public var pruned: [Float]?
        public var report: LayerQuantReport
    }

    public func process(_ module: LayerwiseLayer) throws -> (replacement: any LinearLayer, output: Output) {
        let t0 = Date()
        let name = module.name, source = module.weights
        guard let scheme = try options.scheme(for: name) else { throw QuantKitError(.input, "\(name): not selected for quantization") }
        let wT = try source.tensor(name + ".weight")
        guard wT.shape.count == 2 else { throw QuantKitError(.shape, "\(name).weight is not 2-D") }
        let (out, inF) = (wT.shape[0], wT.shape[1])
        let w = wT.floats()
        // The float copy above is all this layer needs: a mapped checkpoint's pages of it are let go, so quantizing
        // holds one layer's float weights at a time.
        wT.storage.releaseResidentPages()
        var q: QuantizedWeight?
        var pruned: [Float]?
        var loss: Double?, damp: Double?, esc = 0, dead = 0
        var density: Double?
        switch options.method {
        case .gptq, .sparsegpt:
            guard let acc = module.hessian, acc.rows > 0 else { throw QuantKitError(.input, "\(name): no calibration input was observed") }
            if options.method == .gptq {
                var cfg = GPTQConfig(scheme: scheme, actOrder: options.actOrder, staticGroups: options.staticGroups,
                                     dampPercent: options.dampPercent)
                var asymmetry: [Double]?
                if let alpha = options.gptaqAlpha {
                    guard let d = module.asymmetry, d.rows == acc.rows, d.samples == acc.samples else {
                        throw QuantKitError(.input, "\(name): GPTAQ: the float model's inputs of this module were not observed")
                    }
                    cfg.gptaq = GPTAQConfig(alpha: alpha)
                    asymmetry = d.asymmetry()
                }
                let r = try GPTQ.quantize(weight: w, outFeatures: out, inFeatures: inF, hessian: acc.hessian(), asymmetry: asymmetry,
                                          config: cfg, name: name, log: { progress.note($0) }, threads: module.threads)
                q = r.weight; loss = r.loss; damp = r.dampPercentUsed; esc = r.dampEscalations; dead = r.deadColumns
            } else {
                guard let pattern = options.sparsity else { throw QuantKitError(.input, "--method sparsegpt needs --sparsity") }
                let cfg = SparseGPTConfig(pattern: pattern, quantize: options.pruneOnly ? nil : scheme, dampPercent: options.dampPercent)
                let r = try SparseGPT.prune(weight: w, outFeatures: out, inFeatures: inF, hessian: acc.hessian(), config: cfg,
                                            name: name, log: { progress.note($0) }, threads: module.threads)
                q = r.quantized; loss = r.loss; damp = r.dampPercentUsed; esc = r.dampEscalations; dead = r.deadColumns
                density = r.density
                if q == nil { pruned = r.floatWeights }
            }
        case .rtn, .awq:
            // AWQ has already scaled and clipped the float weights; what remains is round-to-nearest.
            q = try RTN.quantize(w, outFeatures: out, inFeatures: inF, scheme: scheme, name: name, threads: module.threads)
        case .hqq:
            q = try HQQ.quantize(w, outFeatures: out, inFeatures: inF, scheme: scheme, name: name, threads: module.threads).0
        }
        let bias = source.contains(name + ".bias") ? try source.tensor(name + ".bias") : nil
        let layer: any LinearLayer
        let approximation: [Float]
        if let q {
            layer = try QuantizedLinear(q, bias: bias, name: name)
            var f16 = q
            f16.scales = q.scales.map { Float(Float16($0)) }
            approximation = f16.dequantized()
        } else {
            layer = try DenseLinear(weight: Tensor(shape: [out, inF], floats: pruned!), bias: bias, name: name)
            approximation = pruned!
        }
        var rep = LayerQuantReport(name: name, outFeatures: out, inFeatures: inF, bits: q == nil ? 32 : scheme.bits,
                                   groupSize: scheme.groupSize, gptqLoss: loss, error: ErrorMetrics(reference: w, approximation: approximation),
                                   seconds: Date().timeIntervalSince(t0), dampPercentUsed: damp, dampEscalations: esc, deadColumns: dead)
        rep.density = density
        return (layer, Output(quantized: q, pruned: pruned, report: rep))
    }
}

/// Model-level quantization: `LayerQuantizer` over the layer-wise driver. Inside each block the linear modules are
/// quantized in true-sequential groups from the Hessians of their inputs, each group seeing the already quantized
/// groups' outputs; the quantized block's outputs are the next block's inputs.
public enum ModelQuantizer {
    public struct Result {
        public var layers: [(String, QuantizedWeight)]
        public var reports: [LayerQuantReport]
        public var seconds: Double
        /// SparseGPT without quantization: the pruned float weights of each module.
        public var pruned: [(String, [Float])] = []
    }

    /// Any model the driver walks, calibrated on `calibration` (token sequences; unused by RTN). GPTAQ needs
    /// `floatTwin`: a separate model with the same float weights, left unmodified (see `LayerwiseDriver`).
    public static func quantize<M: LayerwiseModel>(_ model: M, floatTwin: M? = nil, calibration: [[Int32]],
                                                   options: ModelQuantizationOptions,
                                                   progress: any ProgressObserver = NoProgress()) throws -> Result {
        let start = Date()
        try options.validate()
        let out = try LayerwiseDriver.run(model, floatTwin: floatTwin, calibration: calibration,
                                          algorithm: LayerQuantizer(options: options, progress: progress),
                                          trueSequential: options.trueSequential, progress: progress)
        return Result(layers: out.compactMap { o in o.output.quantized.map { (o.name, $0) } }, reports: out.map(\.output.report),
                      seconds: Date().timeIntervalSince(start), pruned: out.compactMap { o in o.output.pruned.map { (o.name, $0) } })
    }

    /// A Llama model calibrated on `windows` (token windows, each run from position 0). GPTAQ builds the float twin
    /// from `model.source`, the float weights the quantizer reads too (so the model's layers must still be those).
    public static func quantize(model: LlamaModel, windows: [[Int32]], options: ModelQuantizationOptions,
                                progress: any ProgressObserver = NoProgress()) throws -> Result {
        guard !options.method.needsCalibration || !windows.isEmpty else {
            throw QuantKitError(.input, "--method \(options.method.rawValue) needs calibration windows")
        }
        try options.validate()
        let maxRows = windows.map(\.count).max() ?? 0
        let walker = LlamaLayerwise(model: model, maxRows: maxRows)
        var twin: LlamaLayerwise?
        if options.gptaqAlpha != nil {
            let f = try LlamaModel(config: model.config, source: model.source, name: model.name)
            f.ops = model.ops
            f.threads = model.threads
            twin = LlamaLayerwise(model: f, maxRows: maxRows)
        }
        return try quantize(walker, floatTwin: twin, calibration: windows, options: options, progress: progress)
    }

    /// Writes the quantized model as a GPTQ directory: config.json (with quantization_config), model.safetensors
    /// (float tensors as stored + packed layers), quantize_config.json (with `metadata` under "quantkit"),
    /// calibration_fingerprint.json when given, and `copyFiles` (tokenizer).
    public static func write(model: LlamaModel, result: Result, options: ModelQuantizationOptions, to dir: String,
                             metadata: [String: Any], fingerprint: CalibrationFingerprint?,
                             copyFiles: [(from: String, name: String)] = []) throws {
        let quantized = Set(result.layers.map(\.0))
        let pruned = Dictionary(uniqueKeysWithValues: result.pruned)
        var floats: [(String, Tensor)] = []
        for name in HFExport.tensorNames(model.config) {
            let module = name.hasSuffix(".weight") ? String(name.dropLast(".weight".count)) : ""
            if quantized.contains(module) { continue }
            if let p = pruned[module] {
                floats.append((name, Tensor(shape: try model.source.tensor(name).shape, floats: p)))
            } else {
                floats.append((name, try model.source.tensor(name)))
            }
        }
        if result.layers.isEmpty && !result.pruned.isEmpty {
            // Pruned only: a float checkpoint (every reader loads it) with QuantKit's record beside it.
            let record = try JSONSerialization.data(withJSONObject: metadata, options: [.prettyPrinted, .sortedKeys])
            try AtomicFile.writeDirectory(to: dir) { tmp in
                try model.config.jsonData().write(to: URL(fileURLWithPath: tmp + "/config.json"))
                try SafetensorsWriter.write(floats, metadata: ["format": "pt"], to: tmp + "/model.safetensors")
                try record.write(to: URL(fileURLWithPath: tmp + "/" + GPTQCheckpoint.floatRecordFile))
                if let fp = fingerprint { try JSONEncoder().encode(fp).write(to: URL(fileURLWithPath: tmp + "/calibration_fingerprint.json")) }
                for f in copyFiles { try FileManager.default.copyItem(atPath: f.from, toPath: (tmp as NSString).appendingPathComponent(f.name)) }
            }
            return
        }
        let modelConfig = (try JSONSerialization.jsonObject(with: try model.config.jsonData()) as? [String: Any]) ?? [:]
        try writeCheckpoint(floats: floats, modelConfig: modelConfig, result: result, options: options, to: dir, metadata: metadata,
                            fingerprint: fingerprint, copyFiles: copyFiles)
    }

    /// The directory layout shared by every architecture: `floats` as stored, the packed layers of `result`,
    /// config.json (`modelConfig` + quantization_config), quantize_config.json, the fingerprint and copied files.
    static func writeCheckpoint(floats: [(String, Tensor)], modelConfig: [String: Any], result: Result, options: ModelQuantizationOptions,
                                to dir: String, metadata: [String: Any], fingerprint: CalibrationFingerprint?,
                                copyFiles: [(from: String, name: String)]) throws {
        var overrides: [String: (bits: Int, groupSize: Int)] = [:]
        for (name, q) in result.layers where q.bits != options.scheme.bits { overrides[name] = (q.bits, q.groupSize) }
        let cfg = GPTQQuantizeConfig(bits: options.scheme.bits, groupSize: options.scheme.groupSize > 0 ? options.scheme.groupSize : -1,
                                     descAct: options.actOrder, sym: options.scheme.symmetric, staticGroups: options.staticGroups,
                                     dampPercent: options.dampPercent, trueSequential: options.trueSequential, overrides: overrides)
        var modelConfig = modelConfig
        modelConfig["quantization_config"] = cfg.json()
        var files: [String: Data] = ["config.json": try JSONSerialization.data(withJSONObject: modelConfig, options: [.prettyPrinted, .sortedKeys])]
        if let fp = fingerprint { files["calibration_fingerprint.json"] = try JSONEncoder().encode(fp) }
        for f in copyFiles { files[f.name] = try readFile(f.from) }
        try GPTQCheckpoint.write(to: dir, floatTensors: floats, layers: result.layers, config: cfg, metadata: metadata, files: files)
    }
}

extension LlamaModel {
    /// Switches every quantized layer whose layout allows it to W4A8 (`QuantizedLinear.useInt8Activations`).
    /// Returns how many layers now run as W4A8 and how many quantized layers the model has.
    @discardableResult
    public func useInt8Activations() -> (w4a8: Int, quantized: Int) {
        var layers = blocks.flatMap { b in LlamaBlock.linearNames.compactMap { b.linear(named: $0) as? QuantizedLinear } }
        if let head = lmHead as? QuantizedLinear { layers.append(head) }
        return (layers.filter { $0.useInt8Activations() }.count, layers.count)
    }
}
