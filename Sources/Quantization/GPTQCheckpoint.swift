import Foundation
import Models
import TensorCore

/// The AutoGPTQ "gptq" v1 checkpoint layout (SPECS.md "GPTQ checkpoint layout"), per quantized linear `prefix`:
/// - `prefix.qweight` int32 [in*bits/32, out]: codes packed along the input dimension, LSB first; for 3 bits
///   the values run across word boundaries (a continuous LSB-first bit stream, 32 values per 3 words).
/// - `prefix.qzeros` int32 [nGroups, out*bits/32]: zero - 1, packed the same way along the output dimension.
/// - `prefix.scales` float16 [nGroups, out]; `prefix.g_idx` int32 [in].
/// When in*bits or out*bits is not a multiple of 32 (e.g. hidden 172 at 4 bits) the last word is zero-padded,
/// i.e. the first dimension is ceil(in*bits/32); Hugging Face / vLLM kernels need multiples of 32 anyway, and
/// QuantKit reads both.
public enum GPTQPacking {
    public static func words(_ values: Int, bits: Int) -> Int { (values * bits + 31) / 32 }

    /// Packs `count` values (read through `value(i)`, each < 2^bits) into a little-endian bit stream of words.
    @inline(__always)
    static func pack(count: Int, bits: Int, into out: UnsafeMutablePointer<UInt32>, stride: Int, value: (Int) -> UInt32) {
        let nw = words(count, bits: bits)
        for w in 0..<nw { out[w * stride] = 0 }
        for i in 0..<count {
            let bit = i * bits, w = bit >> 5, s = bit & 31
            let v = value(i)
            out[w * stride] |= v << UInt32(s)
            if s + bits > 32 { out[(w + 1) * stride] |= v >> UInt32(32 - s) }
        }
    }

    @inline(__always)
    static func unpack(_ words: UnsafePointer<UInt32>, stride: Int, index i: Int, bits: Int) -> UInt32 {
        let mask = UInt32((1 << bits) - 1)
        let bit = i * bits, w = bit >> 5, s = bit & 31
        var v = words[w * stride] >> UInt32(s)
        if s + bits > 32 { v |= words[(w + 1) * stride] << UInt32(32 - s) }
        return v & mask
    }

    /// qweight [words(in), out] from codes [out, in].
    public static func packWeight(_ q: QuantizedWeight) -> Tensor {
        let rows = words(q.inFeatures, bits: q.bits), out = q.outFeatures, inF = q.inFeatures
        var t = Tensor(zeros: .i32, shape: [rows, out])
        let p = t.mutableRaw.assumingMemoryBound(to: UInt32.self)
        q.codes.withUnsafeBufferPointer { c in
            for o in 0..<out {
                pack(count: inF, bits: q.bits, into: p + o, stride: out) { UInt32(c[o * inF + $0]) }
            }
        }
        t = Tensor(dtype: .i32, shape: [rows, out], storage: t.storage)
        return t
    }

    /// qzeros [nGroups, words(out)] storing zero - 1 (v1).
    public static func packZeros(_ q: QuantizedWeight, name: String) throws -> Tensor {
        let ng = q.groupCount, out = q.outFeatures
        if let i = q.zeros.firstIndex(where: { $0 < 1 || $0 > (1 << q.bits) - 1 + 1 }) {
            throw QuantKitError(.unsupported, "\(name): zero point \(q.zeros[i]) (row \(i / ng), group \(i % ng)) cannot be stored in the GPTQ v1 layout (it stores zero-1 in \(q.bits) bits); quantize with zero points >= 1 (QuantScheme minZero: 1) or symmetric")
        }
        let cols = words(out, bits: q.bits)
        let t = Tensor(zeros: .i32, shape: [ng, cols])
        let p = t.mutableRaw.assumingMemoryBound(to: UInt32.self)
        q.zeros.withUnsafeBufferPointer { z in
            for g in 0..<ng { pack(count: out, bits: q.bits, into: p + g * cols, stride: 1) { UInt32(z[$0 * ng + g] - 1) } }
        }
        return t
    }

    public static func scalesTensor(_ q: QuantizedWeight) -> Tensor {
        let ng = q.groupCount, out = q.outFeatures
        var h = [Float16](repeating: 0, count: ng * out)
        for o in 0..<out { for g in 0..<ng { h[g * out + o] = Float16(q.scales[o * ng + g]) } }
        return Tensor(shape: [ng, out], float16: h)
    }

    public static func tensors(prefix: String, _ q: QuantizedWeight) throws -> [(String, Tensor)] {
        [("\(prefix).qweight", packWeight(q)), ("\(prefix).qzeros", try packZeros(q, name: prefix)),
         ("\(prefix).scales", scalesTensor(q)), ("\(prefix).g_idx", Tensor(shape: [q.inFeatures], int32: q.gIdx))]
    }

    /// Reads one quantized linear. `inFeatures`/`outFeatures` come from the model config when known (needed when
    /// the input dimension was padded and no g_idx is present); `bits`/`groupSize` from quantize_config.json.
    /// Scales are taken as stored (f16 -> Float), so every consumer dequantizes exactly what is on disk.
    public static func readLayer(_ ckpt: WeightSource, prefix: String, bits: Int, groupSize: Int,
                                 inFeatures: Int? = nil, outFeatures: Int? = nil, symmetric: Bool = true) throws -> QuantizedWeight {
        func need(_ suffix: String) throws -> Tensor {
            guard ckpt.contains("\(prefix).\(suffix)") else {
                throw QuantKitError(.format, "\(prefix): GPTQ tensor '\(prefix).\(suffix)' is missing")
            }
            return try ckpt.tensor("\(prefix).\(suffix)")
        }
        guard [2, 3, 4, 8].contains(bits) else {
            throw QuantKitError(.unsupported, "\(prefix): \(bits)-bit GPTQ packing is not supported (2, 3, 4, 8)")
        }
        let qweight = try need("qweight"), qzeros = try need("qzeros"), scales = try need("scales")
        let gIdxT: Tensor? = ckpt.contains("\(prefix).g_idx") ? try ckpt.tensor("\(prefix).g_idx") : nil
        guard qweight.dtype == .i32, qweight.shape.count == 2 else {
            throw QuantKitError(.format, "\(prefix).qweight: expected a 2-D int32 tensor, got \(qweight.dtype.rawValue) \(qweight.shape)")
        }
        guard qzeros.dtype == .i32, qzeros.shape.count == 2 else {
            throw QuantKitError(.format, "\(prefix).qzeros: expected a 2-D int32 tensor, got \(qzeros.dtype.rawValue) \(qzeros.shape)")
        }
        guard scales.dtype.isFloat, scales.shape.count == 2 else {
            throw QuantKitError(.format, "\(prefix).scales: expected a 2-D float tensor, got \(scales.dtype.rawValue) \(scales.shape)")
        }
        let out = outFeatures ?? qweight.shape[1]
        guard qweight.shape[1] == out else {
            throw QuantKitError(.shape, "\(prefix).qweight: \(qweight.shape[1]) output columns, the model expects \(out)")
        }
        let inF: Int
        if let inFeatures { inF = inFeatures } else if let g = gIdxT { inF = g.count } else {
            guard (qweight.shape[0] * 32) % bits == 0 else {
                throw QuantKitError(.shape, "\(prefix).qweight: \(qweight.shape[0]) rows do not hold a whole number of \(bits)-bit values")
            }
            inF = qweight.shape[0] * 32 / bits
        }
        guard qweight.shape[0] == words(inF, bits: bits) || (inF * bits) % 32 == 0 && qweight.shape[0] == inF * bits / 32 else {
            throw QuantKitError(.shape, "\(prefix).qweight: shape \(qweight.shape) does not hold \(inF) inputs at \(bits) bits (expected [\(words(inF, bits: bits)), \(out)]); wrong bits in quantize_config.json?")
        }
        let gs = groupSize > 0 ? groupSize : inF
        let ng = (inF + gs - 1) / gs
        guard scales.shape == [ng, out] else {
            throw QuantKitError(.shape, "\(prefix).scales: shape \(scales.shape), expected [\(ng), \(out)] for group size \(groupSize) and \(inF) inputs")
        }
        guard qzeros.shape == [ng, words(out, bits: bits)] else {
            throw QuantKitError(.shape, "\(prefix).qzeros: shape \(qzeros.shape), expected [\(ng), \(words(out, bits: bits))]")
        }
        var gIdx: [Int32]
        if let g = gIdxT {
            guard g.dtype == .i32 || g.dtype == .i64, g.count == inF else {
                throw QuantKitError(.shape, "\(prefix).g_idx: expected \(inF) int32 entries, got \(g.dtype.rawValue) \(g.shape)")
            }
            // Clamping keeps absurd int64 entries out-of-range (reported below) instead of trapping.
            gIdx = g.dtype == .i32 ? g.int32s() : UnsafeBufferPointer(start: g.pointer(as: Int64.self), count: g.count).map { Int32(clamping: $0) }
            if let bad = gIdx.firstIndex(where: { $0 < 0 || Int($0) >= ng }) {
                throw QuantKitError(.format, "\(prefix).g_idx[\(bad)] = \(gIdx[bad]) is outside the \(ng) groups")
            }
        } else {
            gIdx = (0..<inF).map { Int32($0 / gs) }
        }
        let sf = scales.floats()
        if let bad = sf.firstIndex(where: { !$0.isFinite }) {
            throw QuantKitError(.numeric, "\(prefix).scales: non-finite value at [\(bad / out), \(bad % out)]")
        }
        var codes = [UInt8](repeating: 0, count: out * inF)
        let qw = qweight.pointer(as: UInt32.self)
        for o in 0..<out { for i in 0..<inF { codes[o * inF + i] = UInt8(unpack(qw + o, stride: out, index: i, bits: bits)) } }
        var sc = [Float](repeating: 0, count: out * ng), zs = [Int32](repeating: 0, count: out * ng)
        let qz = qzeros.pointer(as: UInt32.self)
        let zc = qzeros.shape[1]
        for g in 0..<ng {
            for o in 0..<out {
                sc[o * ng + g] = sf[g * out + o]
                zs[o * ng + g] = Int32(unpack(qz + g * zc, stride: 1, index: o, bits: bits)) + 1
            }
        }
        return QuantizedWeight(outFeatures: out, inFeatures: inF, bits: bits, symmetric: symmetric, groupSize: groupSize,
                               codes: codes, scales: sc, zeros: zs, gIdx: gIdx)
    }
}

/// quantize_config.json of the AutoGPTQ layout, plus QuantKit's own metadata under "quantkit".
public struct GPTQQuantizeConfig: Sendable, Equatable {
    public var bits: Int
    public var groupSize: Int
    public var descAct: Bool
    public var sym: Bool
    public var staticGroups: Bool
    public var dampPercent: Double
    public var trueSequential: Bool
    /// Per-module overrides (bits / group size) keyed by the module prefix, when layers differ from the default.
    public var overrides: [String: (bits: Int, groupSize: Int)]

    public init(bits: Int, groupSize: Int, descAct: Bool, sym: Bool, staticGroups: Bool = false, dampPercent: Double = 0.01,
                trueSequential: Bool = true, overrides: [String: (bits: Int, groupSize: Int)] = [:]) {
        self.bits = bits
        self.groupSize = groupSize
        self.descAct = descAct
        self.sym = sym
        self.staticGroups = staticGroups
        self.dampPercent = dampPercent
        self.trueSequential = trueSequential
        self.overrides = overrides
    }

    public static func == (a: Self, b: Self) -> Bool {
        a.bits == b.bits && a.groupSize == b.groupSize && a.descAct == b.descAct && a.sym == b.sym && a.staticGroups == b.staticGroups
            && a.dampPercent == b.dampPercent && a.trueSequential == b.trueSequential
            && a.overrides.mapValues { [$0.bits, $0.groupSize] } == b.overrides.mapValues { [$0.bits, $0.groupSize] }
    }

    public func settings(for prefix: String) -> (bits: Int, groupSize: Int) { overrides[prefix] ?? (bits, groupSize) }

    /// The JSON object (AutoGPTQ keys first; `extra` goes under "quantkit").
    public func json(extra: [String: Any] = [:]) -> [String: Any] {
        var o: [String: Any] = ["bits": bits, "group_size": groupSize, "desc_act": descAct, "sym": sym,
                                "static_groups": staticGroups, "damp_percent": dampPercent, "true_sequential": trueSequential,
                                "quant_method": "gptq", "checkpoint_format": "gptq", "model_file_base_name": "model"]
        var q = extra
        if !overrides.isEmpty {
            q["layer_overrides"] = overrides.mapValues { ["bits": $0.bits, "group_size": $0.groupSize] }
        }
        if !q.isEmpty { o["quantkit"] = q }
        return o
    }

    public static func read(_ path: String) throws -> (config: GPTQQuantizeConfig, extra: [String: Any]) {
        let data = try readFile(path)
        guard let o = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw QuantKitError(.format, "\(path): not a JSON object")
        }
        func int(_ k: String) throws -> Int {
            guard let v = o[k] as? NSNumber else { throw QuantKitError(.format, "\(path): '\(k)' missing or not a number") }
            return v.intValue
        }
        let bits = try int("bits")
        guard [2, 3, 4, 8].contains(bits) else { throw QuantKitError(.unsupported, "\(path): bits \(bits) is not supported (2, 3, 4, 8)") }
        let gs = try int("group_size")
        guard gs == -1 || gs > 0 else { throw QuantKitError(.format, "\(path): group_size \(gs) is invalid") }
        if let fmt = o["checkpoint_format"] as? String, fmt != "gptq" {
            throw QuantKitError(.unsupported, "\(path): checkpoint_format '\(fmt)' is not supported (only the AutoGPTQ 'gptq' v1 layout)")
        }
        if let m = o["quant_method"] as? String, m != "gptq" {
            throw QuantKitError(.unsupported, "\(path): quant_method '\(m)' is not supported (only 'gptq')")
        }
        let extra = o["quantkit"] as? [String: Any] ?? [:]
        var overrides: [String: (bits: Int, groupSize: Int)] = [:]
        if let lo = extra["layer_overrides"] as? [String: [String: Any]] {
            for (k, v) in lo {
                guard let b = (v["bits"] as? NSNumber)?.intValue, let g = (v["group_size"] as? NSNumber)?.intValue else {
                    throw QuantKitError(.format, "\(path): layer override '\(k)' needs bits and group_size")
                }
                overrides[k] = (b, g)
            }
        }
        return (GPTQQuantizeConfig(bits: bits, groupSize: gs, descAct: (o["desc_act"] as? Bool) ?? false, sym: (o["sym"] as? Bool) ?? true,
                                   staticGroups: (o["static_groups"] as? Bool) ?? false,
                                   dampPercent: (o["damp_percent"] as? NSNumber)?.doubleValue ?? 0.01,
                                   trueSequential: (o["true_sequential"] as? Bool) ?? true, overrides: overrides), extra)
    }
}

/// A GPTQ checkpoint directory: model.safetensors (+ quantize_config.json, + whatever else the caller adds).
public enum GPTQCheckpoint {
    /// Writes the directory atomically. `floatTensors` (embeddings, norms, head, biases) are written as given;
    /// each quantized layer becomes qweight/qzeros/scales/g_idx under its prefix. `files` are extra files
    /// (config.json, tokenizer files; a name may contain "/" for a file in a subdirectory) copied into the directory.
    public static func write(to dir: String, floatTensors: [(String, Tensor)], layers: [(String, QuantizedWeight)],
                             config: GPTQQuantizeConfig, metadata: [String: Any] = [:], files: [String: Data] = [:]) throws {
        var tensors = floatTensors
        for (prefix, q) in layers { tensors += try GPTQPacking.tensors(prefix: prefix, q) }
        let cfg = try JSONSerialization.data(withJSONObject: config.json(extra: metadata), options: [.prettyPrinted, .sortedKeys])
        try AtomicFile.writeDirectory(to: dir) { tmp in
            try SafetensorsWriter.write(tensors, metadata: ["format": "pt", "quantized_by": "quantkit"], to: "\(tmp)/model.safetensors")
            try cfg.write(to: URL(fileURLWithPath: "\(tmp)/quantize_config.json"))
            for (name, data) in files {
                // Names may hold a subdirectory (sentence-transformers' 1_Pooling/config.json).
                let url = URL(fileURLWithPath: "\(tmp)/\(name)")
                try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
                try data.write(to: url)
            }
        }
    }

    /// True when `dir` looks like a GPTQ checkpoint (has quantize_config.json or a config.json with a gptq
    /// quantization_config).
    public static func isGPTQ(_ dir: String) -> Bool {
        if FileManager.default.fileExists(atPath: "\(dir)/quantize_config.json") { return true }
        guard let d = try? readFile("\(dir)/config.json"), let o = try? JSONSerialization.jsonObject(with: d) as? [String: Any],
              let q = o["quantization_config"] as? [String: Any] else { return false }
        return (q["quant_method"] as? String) == "gptq"
    }

    /// The quantize config of `dir`: quantize_config.json, or config.json's quantization_config.
    public static func readConfig(_ dir: String) throws -> (config: GPTQQuantizeConfig, extra: [String: Any]) {
        let qc = "\(dir)/quantize_config.json"
        if FileManager.default.fileExists(atPath: qc) { return try GPTQQuantizeConfig.read(qc) }
        let path = "\(dir)/config.json"
        let d = try readFile(path)
        guard let o = try? JSONSerialization.jsonObject(with: d) as? [String: Any], let q = o["quantization_config"] as? [String: Any] else {
            throw QuantKitError(.format, "\(dir): neither quantize_config.json nor a quantization_config in config.json")
        }
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("qk-qc-\(UUID().uuidString).json")
        try JSONSerialization.data(withJSONObject: q).write(to: tmp)
        defer { try? FileManager.default.removeItem(at: tmp) }
        return try GPTQQuantizeConfig.read(tmp.path)
    }

    /// Prefixes of every quantized module in a checkpoint (names ending in .qweight).
    public static func quantizedPrefixes(_ ckpt: SafetensorsCheckpoint) -> [String] {
        ckpt.names.filter { $0.hasSuffix(".qweight") }.map { String($0.dropLast(".qweight".count)) }
    }
}

/// How a quantized model was made, as result files record it (the `quantization` object; null for a float model):
/// - `method`: "gptq" or "rtn" (a GPTQ-layout checkpoint without QuantKit's own record was written by another GPTQ
///   tool: "gptq").
/// - `bits`, `group_size` (-1 = per output channel), `act_order` (desc_act), `sym`; for checkpoints also
///   `static_groups`, `damp_percent`, `true_sequential`, `format` and `overrides` (module -> bits / group_size).
public struct QuantizationSummary: Codable, Sendable, Equatable {
    public struct Override: Codable, Sendable, Equatable {
        public var bits: Int
        public var groupSize: Int
        enum CodingKeys: String, CodingKey { case bits, groupSize = "group_size" }
    }
    public var method: String
    public var bits: Int
    public var groupSize: Int
    public var actOrder: Bool
    public var sym: Bool
    public var staticGroups: Bool?
    public var dampPercent: Double?
    public var trueSequential: Bool?
    public var format: String?
    public var overrides: [String: Override]?
    /// Recovery methods applied before or with the quantization (AWQ, rotation, HQQ, sparsity).
    public var recovery: RecoveryRecord?

    enum CodingKeys: String, CodingKey {
        case method, bits, groupSize = "group_size", actOrder = "act_order", sym, staticGroups = "static_groups"
        case dampPercent = "damp_percent", trueSequential = "true_sequential", format, overrides, recovery
    }

    /// An RTN scheme applied at load time (no checkpoint settings).
    public init(rtnBits bits: Int, groupSize: Int, sym: Bool) {
        method = "rtn"; self.bits = bits; self.groupSize = groupSize; actOrder = false; self.sym = sym
    }

    init(checkpoint cfg: GPTQQuantizeConfig, method: String) {
        self.method = method; bits = cfg.bits; groupSize = cfg.groupSize; actOrder = cfg.descAct; sym = cfg.sym
        staticGroups = cfg.staticGroups; dampPercent = cfg.dampPercent; trueSequential = cfg.trueSequential; format = "gptq-v1"
        if !cfg.overrides.isEmpty { overrides = cfg.overrides.mapValues { Override(bits: $0.bits, groupSize: $0.groupSize) } }
    }
}

extension GPTQCheckpoint {
    /// A GPTQ-layout directory's summary; nil for a directory that is not one.
    /// QuantKit's record beside a float checkpoint that a method changed without quantizing it (SparseGPT pruning).
    public static let floatRecordFile = "quantkit_recovery.json"

    public static func quantizationSummary(_ dir: String) throws -> QuantizationSummary? {
        let floatRecord = (dir as NSString).appendingPathComponent(floatRecordFile)
        if !isGPTQ(dir), FileManager.default.fileExists(atPath: floatRecord) {
            guard let o = try? JSONSerialization.jsonObject(with: readFile(floatRecord)) as? [String: Any],
                  let m = o["method"] as? String, let r = o["recovery"], let rec = try? RecoveryRecord(jsonObject: r) else {
                throw QuantKitError(.format, "\(floatRecord): not a QuantKit recovery record (method, recovery)")
            }
            var s = QuantizationSummary(rtnBits: 32, groupSize: -1, sym: true)
            s.method = m
            s.recovery = rec
            return s
        }
        guard isGPTQ(dir) else { return nil }
        let (cfg, extra) = try readConfig(dir)
        var method = "gptq"
        if let m = extra["method"] as? String {
            guard QuantMethod(rawValue: m.lowercased()) != nil else {
                throw QuantKitError(.format, "\(dir)/quantize_config.json: quantkit.method '\(m)' is not one of \(QuantMethod.names)")
            }
            method = m.lowercased()
        }
        var summary = QuantizationSummary(checkpoint: cfg, method: method)
        if let r = extra["recovery"] {
            do { summary.recovery = try RecoveryRecord(jsonObject: r) } catch {
                throw QuantKitError(.format, "\(dir)/quantize_config.json: quantkit.recovery is not a valid record")
            }
        }
        return summary
    }
}
