import Foundation
import Kernels
import Models
import TensorCore

/// What `quantkit export --format gguf` writes.
public struct GGUFExportOptions: Sendable {
    /// A float model (HF directory, llama2.c .bin, GGUF) or a GPTQ-layout directory (GPTQ or RTN result).
    public var model: String
    public var output: String
    /// F32, F16, Q8_0 or Q4_0.
    public var type: GGMLType
    public static let types: [GGMLType] = [.f32, .f16, .q8_0, .q4_0]

    public init(model: String, output: String, type: GGMLType) {
        self.model = model
        self.output = output
        self.type = type
    }

    public func validate() throws {
        guard Self.types.contains(type) else {
            throw QuantKitError(.input, "--type \(type.name.lowercased()): GGUF export writes \(Self.types.map { $0.name.lowercased() }.joined(separator: ", "))")
        }
    }
}

/// The `kind: export` result.
public struct GGUFExportReport: Encodable, Sendable {
    public struct Fallback: Encodable, Sendable {
        public var tensor: String
        public var stored: String
        public var reason: String
    }
    public var model: String
    public var output: String
    /// The requested type ("Q4_0", ...).
    public var type: String
    /// "float" or the quantization method of a GPTQ-layout source ("gptq", "rtn").
    public var source: String
    public var tensorTypes: [String: Int]
    /// Tensors stored in another type than requested, and why (llama.cpp's own quantizer falls back likewise).
    public var fallbacks: [Fallback]
    /// GPTQ/RTN sources: the largest change of any weight from rounding the scales to fp16 (0 when the
    /// checkpoint already stores fp16 scales, as the GPTQ layout does), absolute and relative to the largest |w|.
    public var scaleRoundingMaxAbs: Double?
    public var scaleRoundingMaxRelative: Double?
    public var bytes: Int
    /// Storage bits per weight of the blocks' linear layers.
    public var blockBitsPerWeight: Double
    public var notes: [String]

    enum CodingKeys: String, CodingKey {
        case model, output, type, source, tensorTypes = "tensor_types", fallbacks
        case scaleRoundingMaxAbs = "scale_rounding_max_abs", scaleRoundingMaxRelative = "scale_rounding_max_relative"
        case bytes, blockBitsPerWeight = "block_bits_per_weight", notes
    }
}

/// Writes a Llama model as a llama.cpp GGUF (architecture "llama", llama.cpp's converter names, Q/K rows in its
/// RoPE order). A GPTQ/RTN result maps onto Q8_0 / Q4_0 only when every quantized layer is symmetric with
/// groups of 32 in input order (act-order only with static groups): then a Q4_0/Q8_0 block holds exactly the
/// layer's codes and its fp16 scale, and llama.cpp computes with the same weights QuantKit quantized.
public enum GGUFExport {
    /// llama_ftype numbers of the file types written.
    static func fileType(_ t: GGMLType) -> UInt32 {
        switch t {
        case .f16: return 1
        case .q4_0: return 2
        case .q8_0: return 7
        default: return 0
        }
    }

    public static func run(_ o: GGUFExportOptions, vocabulary: [(String, GGUFValue)],
                           progress: any ProgressObserver = NoProgress()) throws -> GGUFExportReport {
        try o.validate()
        let isGPTQ = GPTQCheckpoint.isGPTQ(o.model)
        let model = try isGPTQ ? LlamaModel.load(path: o.model, backend: try QuantizedLinearBackend(directory: o.model))
            : LlamaModel.load(path: o.model, backend: DenseBackend())
        let c = model.config
        guard ["llama", "mistral"].contains(c.modelType), c.ropeScaling == nil, c.attentionWindow == nil else {
            throw QuantKitError(.unsupported, "\(o.model): model_type \(c.modelType)\(c.ropeScaling != nil ? " with rope scaling" : "")\(c.attentionWindow != nil ? " with a sliding window" : ""): GGUF export writes plain Llama models")
        }
        if c.downProjInputHadamard == true {
            throw QuantKitError(.unsupported, "\(o.model): rotated with an online Hadamard before down_proj (quantkit_down_proj_hadamard), which llama.cpp does not apply; export the unrotated model")
        }
        var gptq: GPTQQuantizeConfig?
        var method = "float"
        if isGPTQ {
            gptq = try GPTQCheckpoint.readConfig(o.model).config
            method = try GPTQCheckpoint.quantizationSummary(o.model)?.method ?? "gptq"
            guard o.type == .q4_0 || o.type == .q8_0 else {
                throw QuantKitError(.input, "\(o.model) is a \(method.uppercased()) result: export it with --type q4_0 or q8_0 (its 4-bit layers become Q4_0, 8-bit ones Q8_0)")
            }
        }

        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.set("general.name", .string(URL(fileURLWithPath: o.model).deletingPathExtension().lastPathComponent))
        w.set("general.file_type", .uint32(fileType(o.type)))
        if o.type == .q4_0 || o.type == .q8_0 { w.set("general.quantization_version", .uint32(2)) }
        w.set("llama.context_length", .uint32(UInt32(c.maxPositionEmbeddings)))
        w.set("llama.embedding_length", .uint32(UInt32(c.hiddenSize)))
        w.set("llama.block_count", .uint32(UInt32(c.numHiddenLayers)))
        w.set("llama.feed_forward_length", .uint32(UInt32(c.intermediateSize)))
        w.set("llama.attention.head_count", .uint32(UInt32(c.numAttentionHeads)))
        w.set("llama.attention.head_count_kv", .uint32(UInt32(c.kvHeads)))
        w.set("llama.attention.layer_norm_rms_epsilon", .float32(Float(c.rmsNormEps)))
        w.set("llama.rope.freq_base", .float32(Float(c.ropeTheta)))
        w.set("llama.rope.dimension_count", .uint32(UInt32(c.headDimension)))
        if c.headDimension * c.numAttentionHeads != c.hiddenSize {
            w.set("llama.attention.key_length", .uint32(UInt32(c.headDimension)))
            w.set("llama.attention.value_length", .uint32(UInt32(c.headDimension)))
        }
        w.set("llama.vocab_size", .uint32(UInt32(c.vocabSize)))
        for (k, v) in vocabulary { w.set(k, v) }

        var fallbacks: [GGUFExportReport.Fallback] = []
        var roundAbs = 0.0, roundRel = 0.0
        var linearBits = 0.0, linearWeights = 0.0
        var names = ["model.embed_tokens.weight"]
        for l in 0..<c.numHiddenLayers {
            let p = "model.layers.\(l)."
            names += [p + "input_layernorm.weight"]
            for rel in LlamaBlock.linearNames {
                names.append(p + rel + ".weight")
                if model.source.contains(p + rel + ".bias") { names.append(p + rel + ".bias") }
            }
            names.append(p + "post_attention_layernorm.weight")
        }
        names.append("model.norm.weight")
        if !c.tieWordEmbeddings { names.append("lm_head.weight") }

        let task = progress.task("export", total: names.count, unit: "tensors")
        for (i, hf) in names.enumerated() {
            task.update(done: i)
            guard let (ggufName, heads) = GGUFLlama.rename(hf, toHF: false, config: c) else { continue }
            let prefix = String(hf.dropLast(".weight".count))
            let isBlockLinear = hf.hasPrefix("model.layers.") && hf.hasSuffix(".weight") && LlamaBlock.linearNames.contains { hf.hasSuffix($0 + ".weight") }
            if isGPTQ, hf.hasSuffix(".weight"), model.source.contains(prefix + ".qweight") {
                let settings = gptq!.settings(for: prefix)
                let q = try GPTQPacking.readLayer(model.source, prefix: prefix, bits: settings.bits, groupSize: settings.groupSize,
                                                  symmetric: gptq!.sym)
                let entry = try quantizedEntry(q, name: ggufName, hf: prefix, heads: heads, method: method, fallbacks: &fallbacks,
                                               roundAbs: &roundAbs, roundRel: &roundRel)
                try w.add(entry)
                if isBlockLinear { linearBits += Double(entry.data.count * 8); linearWeights += Double(q.inFeatures * q.outFeatures) }
                continue
            }
            let t = try model.source.tensor(hf)
            var values = t.floats()
            if let h = heads { values = permuteToGGUF(values, rows: t.shape.count == 2 ? t.shape[0] : t.count, heads: h) }
            // Vectors (norms, biases) stay F32, as llama.cpp's tools keep them.
            var type = t.shape.count == 2 ? o.type : .f32
            if isGPTQ && type != .f32 {
                // Float tensors of a GPTQ result (embedding, head) keep their stored precision.
                type = t.dtype == .f32 ? .f32 : .f16
            } else if type.blockSize > 1 && t.shape[1] % type.blockSize != 0 {
                fallbacks.append(.init(tensor: ggufName, stored: "F16", reason: "rows of \(t.shape[1]) are not a multiple of \(type.name)'s block of \(type.blockSize)"))
                type = .f16
            }
            let data = encode(values, rows: t.shape.count == 2 ? t.shape[0] : 1, type: type)
            try w.add(.init(name: ggufName, type: type, shape: t.shape, data: data))
            if isBlockLinear { linearBits += Double(data.count * 8); linearWeights += Double(t.count) }
        }
        task.update(done: names.count)
        let bytes = w.serialized()
        try AtomicFile.write(bytes, to: o.output)
        var notes: [String] = []
        if isGPTQ {
            notes.append("each \(o.type.name) block holds the layer's own codes and fp16 scale: llama.cpp computes with the quantized weights unchanged (up to the scale rounding reported)")
        } else if o.type == .q4_0 || o.type == .q8_0 {
            notes.append("round-to-nearest as llama-quantize --pure does (ggml's reference quantizer), every matrix including the embedding and head")
        }
        return GGUFExportReport(
            model: o.model, output: o.output, type: o.type.name, source: method,
            tensorTypes: w.tensors.reduce(into: [:]) { $0[$1.type.name, default: 0] += 1 }, fallbacks: fallbacks,
            scaleRoundingMaxAbs: isGPTQ ? roundAbs : nil, scaleRoundingMaxRelative: isGPTQ ? roundRel : nil,
            bytes: bytes.count, blockBitsPerWeight: linearWeights > 0 ? linearBits / linearWeights : 0, notes: notes)
    }

    /// HF row order -> llama.cpp's (rows of `values.count / rows` elements).
    static func permuteToGGUF(_ values: [Float], rows: Int, heads: Int) -> [Float] {
        let n = values.count / rows
        var out = [Float](repeating: 0, count: values.count)
        for r in 0..<rows {
            let g = GGUFLlama.ggufRow(ofHFRow: r, rows: rows, heads: heads)
            for j in 0..<n { out[g * n + j] = values[r * n + j] }
        }
        return out
    }

    /// Float rows in a GGUF type: F32/F16 as is, Q8_0/Q4_0 by ggml's reference quantizers (llama-quantize's).
    static func encode(_ values: [Float], rows: Int, type: GGMLType) -> Data {
        switch type {
        case .f16: return values.map { Float16($0) }.withUnsafeBytes { Data($0) }
        case .q8_0, .q4_0:
            let n = values.count / rows
            var out = Data(count: rows * type.rowBytes(n))
            out.withUnsafeMutableBytes { dst in
                values.withUnsafeBufferPointer { src in
                    for r in 0..<rows {
                        let d = dst.baseAddress! + r * type.rowBytes(n)
                        if type == .q8_0 { GGMLBlocks.quantizeRowQ8_0(src.baseAddress! + r * n, count: n, into: d) }
                        else { GGMLBlocks.quantizeRowQ4_0(src.baseAddress! + r * n, count: n, into: d) }
                    }
                }
            }
            return out
        default: return values.withUnsafeBytes { Data($0) }
        }
    }

    /// A GPTQ/RTN layer as Q4_0 / Q8_0 blocks, or a refusal saying why it cannot be one and what to quantize with.
    static func quantizedEntry(_ q: QuantizedWeight, name: String, hf: String, heads: Int?, method: String,
                               fallbacks: inout [GGUFExportReport.Fallback], roundAbs: inout Double,
                               roundRel: inout Double) throws -> GGUFWriter.Entry {
        let out = q.outFeatures, inF = q.inFeatures, ng = q.groupCount
        guard q.bits == 4 || q.bits == 8 else {
            throw QuantKitError(.unsupported, "\(hf): \(q.bits)-bit codes have no GGUF block type QuantKit writes (Q4_0 holds 4-bit, Q8_0 8-bit); quantize with --bits 4 or 8")
        }
        let zero = Int32(1 << (q.bits - 1))
        if let g = q.zeros.firstIndex(where: { $0 != zero }) {
            throw QuantKitError(.unsupported, "\(hf): asymmetric \(method.uppercased()) (zero point \(q.zeros[g]) in group \(g % ng) of row \(g / ng), Q\(q.bits)_0 needs \(zero)): Q4_0/Q8_0 are symmetric; quantize with --sym")
        }
        // Every weight x = scale * (code - zero); the blocks need groups of 32 consecutive inputs.
        let inOrder = q.gIdx.enumerated().allSatisfy { Int($0.element) == $0.offset / 32 }
        if !inOrder {
            let actOrder = q.gIdx.enumerated().contains { Int($0.element) != $0.offset / max(1, q.groupSize) }
            throw QuantKitError(.unsupported, actOrder
                ? "\(hf): act-order without static groups puts inputs of one group all over the row; Q4_0/Q8_0 blocks are 32 consecutive inputs: quantize with --static-groups (or without --act-order) and --group-size 32"
                : "\(hf): group size \(q.groupSize); Q4_0/Q8_0 blocks are 32 inputs wide: quantize with --group-size 32")
        }
        // rowOrder[g]: the HF row written as GGUF row g (the RoPE permutation moves whole rows).
        var rowOrder = Array(0..<out)
        if let h = heads {
            for r in 0..<out { rowOrder[GGUFLlama.ggufRow(ofHFRow: r, rows: out, heads: h)] = r }
        }
        var maxW = 0.0
        for r in 0..<out { for g in 0..<ng {
            let s = q.scales[r * ng + g], s16 = Float(Float16(s))
            let span = Double(max(abs(Int(zero)), abs((1 << q.bits) - 1 - Int(zero))))
            roundAbs = max(roundAbs, Double(abs(s16 - s)) * span)
            maxW = max(maxW, Double(abs(s)) * span)
        } }
        if maxW > 0 { roundRel = max(roundRel, roundAbs / maxW) }
        guard inF % 32 == 0 else {
            // A row that does not fill whole blocks: the exact dequantized weights in F32 (llama.cpp's quantizer
            // falls back likewise, to F16).
            fallbacks.append(.init(tensor: name, stored: "F32", reason: "rows of \(inF) are not a multiple of 32: the layer's dequantized weights, exactly"))
            var values = [Float](repeating: 0, count: out * inF)
            for r in 0..<out { for j in 0..<inF {
                let g = Int(q.gIdx[j])
                values[r * inF + j] = Float(Float16(q.scales[r * ng + g])) * Float(Int32(q.codes[r * inF + j]) - zero)
            } }
            if let h = heads { values = permuteToGGUF(values, rows: out, heads: h) }
            return .init(name: name, type: .f32, shape: [out, inF], data: values.withUnsafeBytes { Data($0) })
        }
        var scales = [Float16](), codes8 = [Int8](), codes4 = [UInt8]()
        for g in rowOrder {
            for b in 0..<inF / 32 {
                scales.append(Float16(q.scales[g * ng + b]))
                for j in 0..<32 {
                    let c = q.codes[g * inF + b * 32 + j]
                    if q.bits == 8 { codes8.append(Int8(Int32(c) - zero)) } else { codes4.append(c) }
                }
            }
        }
        let data = q.bits == 8 ? try GGMLBlocks.encodeQ8_0(scales: scales, codes: codes8) : try GGMLBlocks.encodeQ4_0(scales: scales, codes: codes4)
        return .init(name: name, type: q.bits == 8 ? .q8_0 : .q4_0, shape: [out, inF], data: Data(data))
    }
}
