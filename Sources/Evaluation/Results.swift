import Foundation
import TensorCore

// Result files: every QuantKit command writes a schema-versioned JSON result. This file reads them tolerantly
// (other commands' shapes evolve), identifies their kind, and turns each into one or more comparable runs.

/// A parsed JSON value (Sendable, unlike the output of JSONSerialization).
public enum ResultValue: Sendable, Equatable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([ResultValue])
    case object([String: ResultValue])

    init(any: Any) {
        switch any {
        case let n as NSNumber:
            // JSONSerialization gives booleans as NSNumber too; their objCType is "c" (JSON numbers never are).
            if String(cString: n.objCType) == "c" { self = .bool(n.boolValue) } else { self = .number(n.doubleValue) }
        case let s as String: self = .string(s)
        case let a as [Any]: self = .array(a.map(ResultValue.init(any:)))
        case let d as [String: Any]: self = .object(d.mapValues(ResultValue.init(any:)))
        default: self = .null
        }
    }

    public var double: Double? {
        switch self {
        case .number(let d): return d
        case .string(let s): return Double(s.trimmingCharacters(in: .whitespaces).replacingOccurrences(of: "%", with: ""))
        default: return nil
        }
    }
    public var int: Int? { double.flatMap { $0.isFinite && $0 == $0.rounded() ? Int($0) : nil } }
    public var string: String? {
        switch self {
        case .string(let s): return s
        case .number(let d): return d == d.rounded() && abs(d) < 1e15 ? String(Int(d)) : String(d)
        case .bool(let b): return String(b)
        default: return nil
        }
    }
    public var bool: Bool? {
        switch self {
        case .bool(let b): return b
        case .number(let d): return d != 0
        case .string(let s): return ["true", "yes", "1"].contains(s.lowercased())
        default: return nil
        }
    }
    public var object: [String: ResultValue]? { if case .object(let o) = self { return o } else { return nil } }
    public var array: [ResultValue]? { if case .array(let a) = self { return a } else { return nil } }

    /// Looks a key up by its normalized spelling (case, '_', '-', '@', ' ' ignored), so `nDCG@10`, `ndcg_at_10`
    /// and `NDCG10` all match.
    public subscript(key: String) -> ResultValue? {
        guard case .object(let o) = self else { return nil }
        if let v = o[key] { return v }
        let want = ResultValue.normalize(key)
        for (k, v) in o where ResultValue.normalize(k) == want { return v }
        return nil
    }

    /// The first of several alternative keys present.
    public func first(_ keys: [String]) -> ResultValue? {
        for k in keys { if let v = self[k], v != .null { return v } }
        return nil
    }

    static func normalize(_ key: String) -> String {
        var s = key.lowercased().replacingOccurrences(of: "_at_", with: "")
        s.removeAll { !($0.isLetter || $0.isNumber) }
        return s
    }

    /// A stable text form (sorted keys) for comparing structured values.
    public var canonical: String {
        switch self {
        case .null: return "null"
        case .bool(let b): return String(b)
        case .number(let d): return string ?? String(d)
        case .string(let s): return "\"\(s)\""
        case .array(let a): return "[" + a.map(\.canonical).joined(separator: ",") + "]"
        case .object(let o): return "{" + o.keys.sorted().map { "\"\($0)\":\(o[$0]!.canonical)" }.joined(separator: ",") + "}"
        }
    }

    /// Serializes back to Foundation objects (for merging into written JSON).
    public var foundation: Any {
        switch self {
        case .null: return NSNull()
        case .bool(let b): return b
        case .number(let d): return d
        case .string(let s): return s
        case .array(let a): return a.map(\.foundation)
        case .object(let o): return o.mapValues(\.foundation)
        }
    }
}

extension ResultValue: Encodable {
    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let b): try c.encode(b)
        case .number(let d): try c.encode(d)
        case .string(let s): try c.encode(s)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
    }
}

/// Encodable values as Foundation JSON objects, for the result bodies still assembled as dictionaries. Goes through
/// Foundation's JSON parser, which can move a double by an ulp: not for figures (write typed reports instead).
public enum JSONBridge {
    public static func object<T: Encodable>(_ value: T) throws -> Any {
        let enc = JSONEncoder()
        enc.nonConformingFloatEncodingStrategy = .throw
        return try JSONSerialization.jsonObject(with: enc.encode(value), options: [.fragmentsAllowed])
    }
}

/// What a result file measures.
public enum ResultKind: String, Sendable, CaseIterable {
    case perplexity, retrieval, answers, layers, finetune

    /// Kinds with a headline metric that baselines and verdicts compare (layers and finetune results add detail).
    public var isMeasured: Bool { self == .perplexity || self == .retrieval || self == .answers }

    /// Names other commands may write in "kind" for the same thing.
    static func parse(_ s: String) -> ResultKind? {
        switch ResultValue.normalize(s) {
        case "perplexity", "ppl", "kld", "perplexitykld": return .perplexity
        case "retrieval", "ragretrieval": return .retrieval
        case "answers", "raganswers", "qa": return .answers
        case "layers", "sensitivity", "layersensitivity", "npureport", "npu", "quantize", "quantization": return .layers
        case "finetune", "finetuning", "distill": return .finetune
        default: return nil
        }
    }
}

/// The schema versions this build reads (and writes as `current`); docs/RESULTS.md describes every key of the current
/// version. A newer file gets an error saying which QuantKit schema it needs.
/// - 1: the first.
/// - 2: perplexity results add `quantization` and, with --kld-base, `segments` and `segment_rules`.
/// - 3: every command's result goes through ResultEnvelope (schema_version, kind, tool, created, command); the
///   per-command `command: "quantize"`-style names became `kind`.
/// - 4: perplexity results add `corpus_tokens`, and for GGUF models `gguf`; `kld` adds `base_source` (a llama.cpp base) and the encoding
///   `llamacpp-u16`; new kind `export`.
/// - 5: `quantization.recovery` (AWQ, rotation, HQQ, sparsity), perplexity's `npu_recovery` (SmoothQuant, rotation
///   on the NPU), quantize's `recovery`, `awq_search` and `timings.awq_s`, per-layer `density`; quantize methods
///   awq, hqq, sparsegpt.
public enum ResultSchema {
    public static let current = 6
    public static let oldestReadable = 1
}

/// One measured configuration (a model + backend) inside a result file.
public struct ResultRun: Sendable {
    public var label: String
    public var file: String
    public var kind: ResultKind
    /// Metric name (normalized, e.g. "ppl", "ndcg10", "em") -> value.
    public var metrics: [String: Double]
    /// Per-query values (retrieval): query id -> metric (normalized) -> value.
    public var perQuery: [String: [String: Double]]
    /// Per-chunk NLL sums (perplexity), for the bootstrap.
    public var chunks: [ChunkNLL]?
    public var bitsPerWeight: Double?
    /// Quantization settings when the result names them (method, bits, group_size, act_order).
    public var quantization: [String: ResultValue]
    /// Per-segment figures carried in the file (`segments` arrays).
    public var segments: [SegmentDelta]
    /// True when this run is the float/base side of a file that holds both sides.
    public var isBase: Bool
    /// Query texts by query id, when the per-query entries carry them (for query-length buckets).
    public var queryTexts: [String: String] = [:]
    /// A GGUF model's stored tensor types (the result's `gguf.tensor_types`), for advice that names llama.cpp's types.
    public var ggufTensorTypes: [String: Int]?
    /// "npu" for a run on the simulated NPU (nil: the CPU), and whether SmoothQuant or a rotation prepared its
    /// float model (`npu_recovery`).
    public var backend: String?
    public var npuRecovered = false
    /// An NPU run's modules with int16 or per-channel int8 outputs (its npu_config's int16_outputs and
    /// per_channel_outputs).
    public var npuWideOutputs: [String] = []
    /// Perplexity: how many tokens and chunks (windows) the run scored, when the result says; runs scored on
    /// different numbers are not compared.
    public var tokensScored: Int?
    public var chunkCount: Int?

    public init(label: String, file: String, kind: ResultKind, metrics: [String: Double] = [:],
                perQuery: [String: [String: Double]] = [:], chunks: [ChunkNLL]? = nil, bitsPerWeight: Double? = nil,
                quantization: [String: ResultValue] = [:], segments: [SegmentDelta] = [], isBase: Bool = false) {
        self.label = label; self.file = file; self.kind = kind; self.metrics = metrics; self.perQuery = perQuery
        self.chunks = chunks; self.bitsPerWeight = bitsPerWeight; self.quantization = quantization
        self.segments = segments; self.isBase = isBase
    }

    public func metric(_ name: String) -> Double? { metrics[ResultValue.normalize(name)] }
}

/// Per-chunk negative log-likelihood sum and the number of scored tokens in it.
public struct ChunkNLL: Sendable, Equatable, Encodable {
    public var nllSum: Double
    public var count: Int
    enum CodingKeys: String, CodingKey { case nllSum = "nll_sum", count }
    public init(nllSum: Double, count: Int) { self.nllSum = nllSum; self.count = count }
}

/// One per-layer (or per-module) measurement from a layers / npu report / quantize result.
public struct LayerFigure: Sendable, Equatable {
    public var name: String
    public var cosine: Double?
    public var mse: Double?
    public var sqnrDB: Double?
    /// GPTQ loss or any "loss"/"error" figure.
    public var loss: Double?
    /// Effect on the headline metric when only this module is quantized (enable-one), if measured.
    public var qerror: Double?
    public init(name: String, cosine: Double? = nil, mse: Double? = nil, sqnrDB: Double? = nil, loss: Double? = nil,
                qerror: Double? = nil) {
        self.name = name; self.cosine = cosine; self.mse = mse; self.sqnrDB = sqnrDB; self.loss = loss; self.qerror = qerror
    }

    /// Larger = more sensitive. Prefers measured effects, then SQNR (low is bad), cosine, loss, MSE.
    public var sensitivity: Double {
        if let q = qerror { return q }
        if let s = sqnrDB { return -s }
        if let c = cosine { return 1 - c }
        if let l = loss { return l }
        return mse ?? 0
    }
}

/// A read result file: its kind, the fields that define "same data, same protocol", and its runs.
public struct ResultFile: Sendable {
    public let path: String
    public let kind: ResultKind
    public let schemaVersion: Int
    public let root: ResultValue
    public let runs: [ResultRun]
    public let layers: [LayerFigure]
    /// A `finetune` result's recipe, loss curve and validation.
    public let fineTune: FineTuneResult?

    public init(path: String) throws {
        let data = try readMaybeCompressed(path)
        try self.init(data: data, path: path)
    }

    public init(data: Data, path: String) throws {
        let any: Any
        do { any = try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]) } catch {
            throw QuantKitError(.format, "\(path): not valid JSON (\(error.localizedDescription))")
        }
        let root = ResultValue(any: any)
        guard root.object != nil else { throw QuantKitError(.format, "\(path): a result file must hold a JSON object") }
        self.path = path
        self.root = root
        guard let sv = root["schema_version"] else {
            throw QuantKitError(.format, "\(path): missing field \"schema_version\" (this QuantKit reads schema_version \(ResultSchema.oldestReadable)...\(ResultSchema.current))")
        }
        guard let v = sv.int else {
            throw QuantKitError(.format, "\(path): field \"schema_version\" must be an integer, found \(sv)")
        }
        if v > ResultSchema.current {
            throw QuantKitError(.unsupported, "\(path): schema_version \(v) is newer than this QuantKit reads (\(ResultSchema.oldestReadable)...\(ResultSchema.current)); use a QuantKit that writes schema_version \(v)")
        }
        if v < ResultSchema.oldestReadable {
            throw QuantKitError(.unsupported, "\(path): schema_version \(v) is too old; this QuantKit reads schema_version \(ResultSchema.oldestReadable)...\(ResultSchema.current): re-run the command that wrote it")
        }
        schemaVersion = v
        kind = try ResultFile.identify(root, path: path)
        layers = ResultFile.readLayers(root)
        switch kind {
        case .perplexity: runs = try ResultFile.perplexityRuns(root, path: path)
        case .retrieval: runs = try ResultFile.metricRuns(root, path: path, kind: .retrieval, required: ["ndcg@10"])
        case .answers: runs = try ResultFile.metricRuns(root, path: path, kind: .answers, required: [])
        case .layers:
            guard !layers.isEmpty else {
                throw QuantKitError(.format, "\(path): missing field \"layers\" (an array of per-layer figures) in a \(root["kind"]?.string ?? "layers") result")
            }
            runs = []
        case .finetune:
            runs = []
        }
        fineTune = kind == .finetune ? try FineTuneResult(root, path: path) : nil
    }

    /// The "kind" field when present, otherwise inferred from the keys.
    static func identify(_ root: ResultValue, path: String) throws -> ResultKind {
        if let k = root["kind"]?.string {
            guard let kind = ResultKind.parse(k) else {
                throw QuantKitError(.unsupported, "\(path): unknown result kind \"\(k)\" (known: \(ResultKind.allCases.map(\.rawValue).joined(separator: ", ")), npu_report, quantize)")
            }
            return kind
        }
        if root["ppl"] != nil || root["protocol"] != nil { return .perplexity }
        if containsKey(root, "ndcg@10", depth: 3) { return .retrieval }
        if containsKey(root, "em", depth: 3) || containsKey(root, "exact_match", depth: 3) || containsKey(root, "agreement_em", depth: 3) { return .answers }
        if root["layers"]?.array != nil || root["modules"]?.array != nil { return .layers }
        throw QuantKitError(.format, "\(path): cannot tell what kind of result this is (no \"kind\" field, and none of ppl/protocol, ndcg@10, em, layers); add \"kind\": one of \(ResultKind.allCases.map(\.rawValue).joined(separator: ", "))")
    }

    static func containsKey(_ v: ResultValue, _ key: String, depth: Int) -> Bool {
        guard depth > 0, let o = v.object else { return false }
        if v[key] != nil { return true }
        for (_, child) in o where containsKey(child, key, depth: depth - 1) { return true }
        return false
    }

    // MARK: field access with clear errors

    static func required(_ v: ResultValue, _ key: String, path: String) throws -> ResultValue {
        guard let x = v[key], x != .null else { throw QuantKitError(.format, "\(path): missing field \"\(key)\"") }
        return x
    }
    static func requiredDouble(_ v: ResultValue, _ key: String, path: String) throws -> Double {
        let x = try required(v, key, path: path)
        guard let d = x.double else { throw QuantKitError(.format, "\(path): field \"\(key)\" must be a number, found \(x)") }
        return d
    }

    /// Model metadata: label, bits per weight, quantization settings. Looks at the top level, "model",
    /// "quantization" and "quantize_config".
    static func modelInfo(_ v: ResultValue, fallbackLabel: String) -> (label: String, bpw: Double?, quant: [String: ResultValue]) {
        let model = v["model"]
        var label = v.first(["label", "name"])?.string
        if label == nil, let m = model { label = m.string ?? m.first(["label", "name", "path", "id"])?.string }
        var bpw = v["bits_per_weight"]?.double ?? model?["bits_per_weight"]?.double
        var quant: [String: ResultValue] = [:]
        for src in [model?["quantization"], model?["quantize_config"], v["quantization"], v["quantize_config"]] {
            if let o = src?.object { quant.merge(o) { a, _ in a } }
        }
        if bpw == nil { bpw = quant.first { ResultValue.normalize($0.key) == "bitsperweight" }?.value.double }
        if bpw == nil, let dt = (model?["dtype"] ?? v["dtype"])?.string?.lowercased() {
            bpw = ["f32": 32, "float32": 32, "f16": 16, "float16": 16, "bf16": 16, "bfloat16": 16][dt]
        }
        var name = label.map { URL(fileURLWithPath: $0).lastPathComponent } ?? fallbackLabel
        if name.isEmpty { name = fallbackLabel }
        // Runs of one model on different backends (CPU, NPU) need telling apart.
        if let b = (v["backend"] ?? model?["backend"])?.string, !["cpu", "dense", "float", ""].contains(b.lowercased()) { name += " (\(b))" }
        return (name, bpw, quant)
    }

    static func fileLabel(_ path: String) -> String {
        URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent
    }

    // MARK: perplexity

    static func perplexityRuns(_ root: ResultValue, path: String) throws -> [ResultRun] {
        for f in ["protocol", "ctx", "corpus_sha256", "tokenizer", "ppl"] { _ = try required(root, f, path: path) }
        let ppl = try requiredDouble(root, "ppl", path: path)
        guard ppl.isFinite, ppl > 0 else { throw QuantKitError(.format, "\(path): field \"ppl\" must be a positive number, found \(ppl)") }
        let info = modelInfo(root, fallbackLabel: fileLabel(path))
        var metrics: [String: Double] = ["ppl": ppl]
        if let e = root["ppl_error"]?.double { metrics["pplerror"] = e }
        // KLD statistics may sit at the top level or in a "kld" object.
        let kldObj = root["kld"]?.object != nil ? root["kld"]! : root
        if let m = kldObj.first(["kld_mean", "mean_kld", "mean"])?.double ?? root["kld"]?.double { metrics["kldmean"] = m }
        if let s = kldObj.first(["kld_stderr", "stderr", "kld_std_error"])?.double { metrics["kldstderr"] = s }
        if let m = kldObj.first(["kld_max", "max"])?.double { metrics["kldmax"] = m }
        if let r = kldObj.first(["rms_dp", "rmsdp"])?.double { metrics["rmsdp"] = r }
        if let s = kldObj.first(["same_top", "same_top_percent", "same_top_pct"])?.double { metrics["sametop"] = s }
        if let r = kldObj.first(["ppl_ratio"])?.double { metrics["pplratio"] = r }
        if let q = kldObj.first(["qerror", "q_error"])?.double { metrics["qerror"] = q }
        if let b = kldObj.first(["ppl_base", "base_ppl"])?.double { metrics["pplbase"] = b }
        if let p = kldObj.first(["percentiles", "kld_percentiles"])?.object {
            for (k, v) in p { if let d = v.double { metrics["kldp" + ResultValue.normalize(k)] = d } }
        }
        var chunks: [ChunkNLL]? = nil
        if let arr = root.first(["chunk_nll", "per_chunk"])?.array ?? root["chunks"]?.array {
            chunks = try arr.enumerated().map { i, c in
                guard let s = c.first(["nll_sum", "nll"])?.double, let n = c.first(["count", "tokens", "n"])?.int else {
                    throw QuantKitError(.format, "\(path): chunks[\(i)] needs numeric \"nll_sum\" and \"count\"")
                }
                return ChunkNLL(nllSum: s, count: n)
            }
        }
        let segs = readSegments(root, higherIsBetter: false)
        var runs = [ResultRun(label: info.label, file: path, kind: .perplexity, metrics: metrics, chunks: chunks,
                              bitsPerWeight: info.bpw, quantization: info.quant, segments: segs)]
        runs[0].ggufTensorTypes = root["gguf"]?["tensor_types"]?.object?.compactMapValues { $0.int }
        runs[0].backend = root["backend"]?.string
        runs[0].npuRecovered = root["npu_recovery"]?.object != nil
        runs[0].npuWideOutputs = ["int16_outputs", "per_channel_outputs"].flatMap { root["npu_config"]?[$0]?.array?.compactMap(\.string) ?? [] }
        let scored = root["tokens_scored"]?.int, chunkCount = root["chunks"]?.int ?? chunks?.count
        runs[0].tokensScored = scored
        runs[0].chunkCount = chunkCount
        // A quantized-vs-base file names the base's perplexity: make the base a run of its own so a single file
        // can be compared.
        var basePPL = metrics["pplbase"]
        if basePPL == nil, let r = metrics["pplratio"], r > 0 { basePPL = ppl / r }
        if basePPL == nil, let q = metrics["qerror"] { basePPL = ppl / (1 + q) }
        if let b = basePPL {
            let baseLabel = kldObj.first(["base_model", "base", "kld_base"])?.string.map { URL(fileURLWithPath: $0).lastPathComponent } ?? "base"
            var base = ResultRun(label: baseLabel, file: path, kind: .perplexity, metrics: ["ppl": b], isBase: true)
            base.tokensScored = scored  // the same evaluation, against the base's logits
            base.chunkCount = chunkCount
            runs.insert(base, at: 0)
        }
        return runs
    }

    // MARK: retrieval and answers

    /// A file may hold one run (metrics at the top level or in "metrics"), a base + quantized pair ("float"/"base"
    /// and "quantized" objects), or a "runs" array of objects with a label and metrics.
    static func metricRuns(_ root: ResultValue, path: String, kind: ResultKind, required: [String]) throws -> [ResultRun] {
        var pieces: [(label: String, value: ResultValue, isBase: Bool)] = []
        if let arr = root["runs"]?.array {
            for (i, r) in arr.enumerated() {
                let l = r.first(["label", "name"])?.string ?? (r["model"].flatMap { modelInfo(.object(["model": $0]), fallbackLabel: "run\(i)").label } ?? "run\(i)")
                pieces.append((l, r, r["is_base"]?.bool ?? (i == 0)))
            }
        } else {
            let base = root.first(["float", "base", "baseline"])
            let quant = root.first(["quantized", "quant"])
            if let b = base, b.object != nil { pieces.append(("float", b, true)) }
            if let q = quant, q.object != nil { pieces.append(("quantized", q, false)) }
            if pieces.isEmpty { pieces.append((modelInfo(root, fallbackLabel: fileLabel(path)).label, root, false)) }
        }
        var runs: [ResultRun] = []
        for p in pieces {
            let mobj = p.value["metrics"]?.object != nil ? p.value["metrics"]! : p.value
            var metrics: [String: Double] = [:]
            if let o = mobj.object { for (k, v) in o { if let d = v.double, case .number = v { metrics[ResultValue.normalize(k)] = d } } }
            if kind == .answers {
                if metrics["em"] == nil, let e = metrics["exactmatch"] { metrics["em"] = e }
                if metrics["agreementem"] == nil, let a = metrics["agreement"] { metrics["agreementem"] = a }
                // Answers at top level may name agreement outside the run objects.
                if !p.isBase, metrics["agreementem"] == nil, let a = root.first(["agreement_em", "agreement"])?.double { metrics["agreementem"] = a }
                if metrics["em"] == nil && metrics["f1"] == nil && metrics["agreementem"] == nil {
                    throw QuantKitError(.format, "\(path): missing field \"em\" (or \"f1\" / \"agreement_em\") in run \"\(p.label)\"")
                }
            }
            for r in required where metrics[ResultValue.normalize(r)] == nil {
                throw QuantKitError(.format, "\(path): missing field \"\(r)\" in run \"\(p.label)\"")
            }
            let info = modelInfo(p.value, fallbackLabel: p.label)
            let rootInfo = modelInfo(root, fallbackLabel: p.label)
            var run = ResultRun(label: p.label, file: path, kind: kind, metrics: metrics,
                                  perQuery: readPerQuery(root, run: p.value, side: p.isBase ? "base" : "quantized", single: pieces.count == 1),
                                  bitsPerWeight: info.bpw ?? (p.isBase ? nil : rootInfo.bpw), quantization: info.quant.isEmpty && !p.isBase ? rootInfo.quant : info.quant,
                                  segments: readSegments(p.value, higherIsBetter: true) + (p.isBase ? [] : readSegments(root, higherIsBetter: true)),
                                  isBase: p.isBase)
            run.queryTexts = readQueryTexts(root, run: p.value)
            runs.append(run)
        }
        return runs
    }

    /// Per-query values: an array of objects with an id and metric values, either in the run object or at the top
    /// level; top-level entries may split sides as {"float": {...}, "quantized": {...}} or as "ndcg@10_float" /
    /// "ndcg@10_quantized" keys.
    static func readPerQuery(_ root: ResultValue, run: ResultValue, side: String, single: Bool) -> [String: [String: Double]] {
        let arr = run.first(["per_query", "queries"])?.array ?? root.first(["per_query", "queries"])?.array ?? []
        var out: [String: [String: Double]] = [:]
        let sideKeys = side == "base" ? ["float", "base"] : ["quantized", "quant"]
        for (i, e) in arr.enumerated() {
            guard let o = e.object else { continue }
            let id = e.first(["query_id", "qid", "id"])?.string ?? String(i)
            var vals: [String: Double] = [:]
            if let nested = e.first(sideKeys)?.object {
                for (k, v) in nested { if let d = v.double { vals[ResultValue.normalize(k)] = d } }
            } else {
                for (k, v) in o {
                    guard let d = v.double, case .number = v else { continue }
                    let n = ResultValue.normalize(k)
                    if let suffix = sideKeys.first(where: { n.hasSuffix($0) }) { vals[String(n.dropLast(suffix.count))] = d }
                    else if single || !(n.hasSuffix("float") || n.hasSuffix("base") || n.hasSuffix("quantized") || n.hasSuffix("delta")) {
                        if vals[n] == nil { vals[n] = d }
                    }
                }
            }
            if !vals.isEmpty { out[id] = vals }
        }
        return out
    }

    static func readQueryTexts(_ root: ResultValue, run: ResultValue) -> [String: String] {
        let arr = run.first(["per_query", "queries"])?.array ?? root.first(["per_query", "queries"])?.array ?? []
        var out: [String: String] = [:]
        for (i, e) in arr.enumerated() {
            if let t = e.first(["text", "query", "query_text"])?.string, case .string = e.first(["text", "query", "query_text"])! {
                out[e.first(["query_id", "qid", "id"])?.string ?? String(i)] = t
            }
        }
        return out
    }

    static func readSegments(_ v: ResultValue, higherIsBetter: Bool) -> [SegmentDelta] {
        guard let arr = v["segments"]?.array else { return [] }
        return arr.compactMap { s in
            guard let name = s.first(["segment", "name", "label"])?.string else { return nil }
            let base = s.first(["base", "float", "base_value"])?.double
            let q = s.first(["quantized", "quant", "value"])?.double
            let group = s.first(["group", "by", "dimension"])?.string ?? "segment"
            let count = s.first(["count", "n", "tokens"])?.int ?? 0
            if let b = base, let q = q {
                return SegmentDelta(group: group, segment: name, count: count, base: b, quantized: q,
                                    higherIsBetter: s["higher_is_better"]?.bool ?? higherIsBetter, kldMean: s["kld_mean"]?.double)
            }
            if let d = s.first(["relative", "relative_delta"])?.double {
                return SegmentDelta(group: group, segment: name, count: count, base: 1, quantized: 1 + d, higherIsBetter: false)
            }
            return nil
        }
    }

    static func readLayers(_ root: ResultValue) -> [LayerFigure] {
        guard let arr = root.first(["layers", "modules", "per_layer"])?.array else { return [] }
        return arr.compactMap { l in
            guard let name = l.first(["name", "module", "layer"])?.string else { return nil }
            return LayerFigure(name: name, cosine: l.first(["cosine", "cosine_similarity", "cos"])?.double,
                               mse: l["mse"]?.double, sqnrDB: l.first(["sqnr_db", "sqnr"])?.double,
                               loss: l.first(["loss", "gptq_loss", "error"])?.double,
                               qerror: l.first(["qerror", "enable_one_qerror", "delta_qerror"])?.double)
        }
    }

    // MARK: same data, same protocol

    /// The fields that must agree between files compared together, per kind.
    static func identityFields(_ kind: ResultKind) -> [[String]] {
        switch kind {
        case .perplexity: return [["protocol"], ["ctx"], ["stride"], ["corpus_sha256"], ["tokenizer"]]
        case .retrieval: return [["dataset", "dataset_name"], ["split"], ["corpus_sha256", "dataset_sha256"], ["qrels_sha256", "qrels"]]
        case .answers: return [["dataset_sha256", "dataset_sha", "sha256"]]
        case .layers, .finetune: return []
        }
    }

    /// The value of an identity field (top level, then "dataset"/"data" objects), as a comparable string.
    func identity(_ keys: [String]) -> String? {
        for src in [root, root["dataset"] ?? .null, root["data"] ?? .null, root["corpus"] ?? .null] {
            for k in keys {
                if let v = src[k], v != .null { return v.string ?? v.canonical }
            }
        }
        return nil
    }

    /// Throws a one-line error when `files` were not made on the same data with the same protocol.
    public static func checkComparable(_ files: [ResultFile]) throws {
        guard let first = files.first else { return }
        for f in files.dropFirst() where f.kind != first.kind && f.kind.isMeasured && first.kind.isMeasured {
            throw QuantKitError(.input, "cannot compare a \(first.kind.rawValue) result (\(first.path)) with a \(f.kind.rawValue) result (\(f.path))")
        }
        let measured = files.filter { $0.kind.isMeasured }
        guard let ref = measured.first else { return }
        for keys in identityFields(ref.kind) {
            let a = ref.identity(keys)
            for f in measured.dropFirst() {
                let b = f.identity(keys)
                if a != b {
                    throw QuantKitError(.input, "not the same data/protocol: \"\(keys[0])\" is \(a.map { "\"\($0)\"" } ?? "absent") in \(ref.path) but \(b.map { "\"\($0)\"" } ?? "absent") in \(f.path)")
                }
            }
        }
    }
}

/// The common header every QuantKit result carries. Commands build their body as a dictionary (or an Encodable)
/// and write it with `ResultEnvelope.write`, which adds schema_version, kind, tool version, creation time (UTC,
/// ISO 8601) and the command line, plus `bits_per_weight` when the command knows it.
public struct ResultEnvelope: Sendable {
    public static let toolVersion = "0.1.0"
    public var kind: String
    public var command: [String]
    public var created: Date
    public var bitsPerWeight: Double?
    /// Write infinite and NaN numbers as the strings "inf", "-inf", "nan" (the NPU results, whose dB figures are
    /// infinite for an exact layer) instead of refusing them.
    public var nonFiniteAsStrings = false

    public init(kind: String, command: [String] = CommandLine.arguments, created: Date = Date(), bitsPerWeight: Double? = nil) {
        self.kind = kind; self.command = command; self.created = created; self.bitsPerWeight = bitsPerWeight
    }

    /// UTC, ISO 8601.
    var createdText: String {
        let fmt = ISO8601DateFormatter()
        fmt.timeZone = TimeZone(identifier: "UTC")
        return fmt.string(from: created)
    }

    /// The command line, arguments holding spaces quoted.
    var commandText: String { command.map { $0.contains(" ") ? "'\($0)'" : $0 }.joined(separator: " ") }

    public var fields: [String: Any] {
        var f: [String: Any] = ["schema_version": ResultSchema.current, "kind": kind,
                                "tool": ["name": "quantkit", "version": ResultEnvelope.toolVersion],
                                "created": createdText, "command": commandText]
        if let b = bitsPerWeight { f["bits_per_weight"] = b }
        return f
    }

    /// The body with the envelope's fields added (the body's own keys win, except schema_version and kind).
    public func merged(_ body: [String: Any]) -> [String: Any] {
        var out = body
        for (k, v) in fields where out[k] == nil || k == "schema_version" || k == "kind" { out[k] = v }
        return out
    }

    public func data(_ body: [String: Any]) throws -> Data {
        var m = merged(body)
        if nonFiniteAsStrings { m = Self.nonFiniteToStrings(m) as! [String: Any] }
        if let (path, v) = Self.firstUnrepresentable(m, path: "") {
            throw QuantKitError(.numeric, "result for \(kind): \(path) holds \(v), which JSON cannot represent")
        }
        var d: Data
        do { d = try JSONSerialization.data(withJSONObject: m, options: [.prettyPrinted, .sortedKeys]) } catch {
            throw QuantKitError(.input, "result for \(kind) cannot be written as JSON: \(error.localizedDescription)")
        }
        d.append(0x0A)
        return d
    }

    /// The key path ("kld.kld_mean", "rows[3].ppl") of the first value JSONSerialization cannot write: a NaN or an
    /// infinity, or a value of a non-JSON type.
    static func firstUnrepresentable(_ v: Any, path: String) -> (String, String)? {
        switch v {
        case let d as [String: Any]:
            for k in d.keys.sorted() { if let bad = firstUnrepresentable(d[k]!, path: path.isEmpty ? k : path + "." + k) { return bad } }
            return nil
        case let a as [Any]:
            for (i, x) in a.enumerated() { if let bad = firstUnrepresentable(x, path: "\(path)[\(i)]") { return bad } }
            return nil
        case is String, is NSNull, is Bool, is Int: return nil
        case let x as Double: return x.isFinite ? nil : (path.isEmpty ? "the body" : path, "\(x)")
        case let x as Float: return x.isFinite ? nil : (path.isEmpty ? "the body" : path, "\(x)")
        case is NSNumber: return nil
        default:
            return JSONSerialization.isValidJSONObject([v]) ? nil : (path.isEmpty ? "the body" : path, "a \(type(of: v)) value")
        }
    }

    static func nonFiniteToStrings(_ v: Any) -> Any {
        switch v {
        case let d as [String: Any]: return d.mapValues(nonFiniteToStrings)
        case let a as [Any]: return a.map(nonFiniteToStrings)
        case let x as Double where !x.isFinite: return x.isNaN ? "nan" : (x > 0 ? "inf" : "-inf")
        case let x as Float where !x.isFinite: return x.isNaN ? "nan" : (x > 0 ? "inf" : "-inf")
        default: return v
        }
    }

    /// Encodes the body and the envelope's fields into one object with JSONEncoder alone: Foundation's JSON parser
    /// on Linux rounds some doubles to a neighbouring value (0.9999835850592672 reads back as ...671), so a typed
    /// report never goes through it.
    public func data<T: Encodable>(_ body: T) throws -> Data {
        let enc = JSONEncoder()
        enc.nonConformingFloatEncodingStrategy = nonFiniteAsStrings
            ? .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan") : .throw
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        var d: Data
        do { d = try enc.encode(Enveloped(envelope: self, body: body)) } catch let e as EncodingError {
            if case .invalidValue(let v, let ctx) = e {
                let path = ctx.codingPath.map(\.stringValue).joined(separator: ".")
                throw QuantKitError(.numeric, "result for \(kind): \(path.isEmpty ? "the body" : path) holds \(v), which JSON cannot represent")
            }
            throw QuantKitError(.input, "result for \(kind) cannot be written as JSON: \(e)")
        }
        d.append(0x0A)
        return d
    }

    /// Writes the result atomically.
    public func write(_ body: [String: Any], to path: String) throws { try AtomicFile.write(try data(body), to: path) }
    public func write<T: Encodable>(_ body: T, to path: String) throws { try AtomicFile.write(try data(body), to: path) }
}

/// A typed report with the envelope's keys beside its own. JSONEncoder keeps the last value written for a key, so
/// the body's keys win over the envelope's, except schema_version and kind, written last.
private struct Enveloped<Body: Encodable>: Encodable {
    let envelope: ResultEnvelope
    let body: Body

    func encode(to encoder: Encoder) throws {
        let e = envelope
        var c = encoder.container(keyedBy: AnyKey.self)
        try c.encode(["name": "quantkit", "version": ResultEnvelope.toolVersion], forKey: AnyKey("tool"))
        try c.encode(e.createdText, forKey: AnyKey("created"))
        try c.encode(e.commandText, forKey: AnyKey("command"))
        try c.encodeIfPresent(e.bitsPerWeight, forKey: AnyKey("bits_per_weight"))
        try body.encode(to: encoder)
        var last = encoder.container(keyedBy: AnyKey.self)
        try last.encode(ResultSchema.current, forKey: AnyKey("schema_version"))
        try last.encode(e.kind, forKey: AnyKey("kind"))
    }
}
