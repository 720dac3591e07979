import Foundation
import Kernels
import TensorCore

/// How a GGUF model's matrix products treat their activations.
public enum GGUFActivations: String, Sendable, CaseIterable, Codable {
    /// llama.cpp's CPU contract: each product's input is first converted to the weight type's companion format
    /// (Q8_0 / Q8_1 / Q8_K blocks, F16, BF16), as ggml does before its dot products.
    case llamacpp
    /// Weight-only: float activations against the decoded weights.
    case float
}

/// Llama-architecture GGUF files (llama.cpp's converter names and hyperparameter keys) as a LlamaModel.
public enum GGUFLlama {
    /// The architectures run as Llama: llama.cpp writes Llama, Mistral and most Llama derivatives as "llama".
    public static let architectures = ["llama"]

    /// The HF config equivalent of the file's `llama.*` keys.
    public static func config(_ f: GGUFFile) throws -> LlamaConfig {
        let arch = try f.require("general.architecture", "a string") { $0.string }
        guard architectures.contains(arch) else {
            throw QuantKitError(.unsupported, "\(f.path): general.architecture is '\(arch)'; QuantKit runs GGUF files of architecture \(architectures.joined(separator: ", "))")
        }
        func int(_ key: String) throws -> Int {
            let v = try f.require("\(arch).\(key)", "a positive integer") { $0.int }
            guard v > 0 else { throw QuantKitError(.format, "\(f.path): \(arch).\(key) must be positive, got \(v)") }
            return v
        }
        func optional(_ key: String) -> GGUFValue? { f.metadata["\(arch).\(key)"] }
        let dim = try int("embedding_length"), heads = try int("attention.head_count")
        // head_count_kv may be an array (one per layer) in some files: QuantKit needs one value.
        var kvHeads = heads
        if let v = optional("attention.head_count_kv") {
            guard let n = v.int ?? (v.ints.flatMap { Set($0).count == 1 ? $0.first : nil }), n > 0 else {
                throw QuantKitError(.unsupported, "\(f.path): \(arch).attention.head_count_kv must be one positive integer, got \(v)")
            }
            kvHeads = n
        }
        guard heads % kvHeads == 0, optional("attention.key_length") != nil || dim % heads == 0 else {
            throw QuantKitError(.format, "\(f.path): \(arch).attention.head_count (\(heads)) must divide \(arch).embedding_length (\(dim)) and be a multiple of \(arch).attention.head_count_kv (\(kvHeads))")
        }
        let headDim = try optional("attention.key_length").map { v -> Int in
            guard let n = v.int, n > 0 else { throw QuantKitError(.format, "\(f.path): \(arch).attention.key_length must be a positive integer") }
            return n
        } ?? dim / heads
        if let rope = optional("rope.dimension_count")?.int, rope != headDim {
            throw QuantKitError(.unsupported, "\(f.path): \(arch).rope.dimension_count is \(rope) but heads are \(headDim) wide; partial RoPE is not supported")
        }
        if let scaling = optional("rope.scaling.type")?.string, scaling != "none" {
            throw QuantKitError(.unsupported, "\(f.path): \(arch).rope.scaling.type '\(scaling)' is not supported (plain RoPE only)")
        }
        guard let embd = f.info("token_embd.weight"), embd.dims.count == 2 else {
            throw QuantKitError(.format, "\(f.path): tensor 'token_embd.weight' is missing or not 2-D")
        }
        let vocab = optional("vocab_size")?.int ?? embd.dims[1]
        let eps = try f.require("\(arch).attention.layer_norm_rms_epsilon", "a number") { $0.double }
        var cfg = LlamaConfig(hiddenSize: dim, intermediateSize: try int("feed_forward_length"),
                              numHiddenLayers: try int("block_count"), numAttentionHeads: heads,
                              numKeyValueHeads: kvHeads, headDim: headDim == dim / heads ? nil : headDim,
                              rmsNormEps: eps, ropeTheta: optional("rope.freq_base")?.double ?? 10000,
                              vocabSize: vocab, maxPositionEmbeddings: optional("context_length")?.int ?? 2048,
                              tieWordEmbeddings: f.info("output.weight") == nil,
                              bosTokenId: f.metadata["tokenizer.ggml.bos_token_id"]?.int,
                              eosTokenId: f.metadata["tokenizer.ggml.eos_token_id"]?.int)
        if f.info("blk.0.attn_q.bias") != nil { cfg.attentionBias = true }
        try cfg.validate(source: f.path)
        return cfg
    }

    /// llama.cpp's converter names: whole-model tensors, and per block (under "blk.N.") the GGUF suffix, the HF
    /// suffix (under "model.layers.N.") and whether the rows carry the RoPE permutation of queries or keys.
    static let modelTensors = [("token_embd.weight", "model.embed_tokens.weight"), ("output_norm.weight", "model.norm.weight"),
                               ("output.weight", "lm_head.weight")]
    enum RopeRows { case queries, keys }
    static let blockTensors: [(gguf: String, hf: String, rope: RopeRows?)] = [
        ("attn_norm.weight", "input_layernorm.weight", nil), ("ffn_norm.weight", "post_attention_layernorm.weight", nil),
        ("attn_q.weight", "self_attn.q_proj.weight", .queries), ("attn_k.weight", "self_attn.k_proj.weight", .keys),
        ("attn_q.bias", "self_attn.q_proj.bias", .queries), ("attn_k.bias", "self_attn.k_proj.bias", .keys),
        ("attn_v.weight", "self_attn.v_proj.weight", nil), ("attn_v.bias", "self_attn.v_proj.bias", nil),
        ("attn_output.weight", "self_attn.o_proj.weight", nil), ("ffn_gate.weight", "mlp.gate_proj.weight", nil),
        ("ffn_up.weight", "mlp.up_proj.weight", nil), ("ffn_down.weight", "mlp.down_proj.weight", nil),
    ]

    /// Maps a name between the two conventions (`toHF` true: GGUF -> HF), with the head count when the rows
    /// carry llama.cpp's RoPE permutation. nil for a name outside the Llama layout.
    public static func rename(_ name: String, toHF: Bool, config c: LlamaConfig) -> (name: String, permuteHeads: Int?)? {
        if let m = modelTensors.first(where: { (toHF ? $0.0 : $0.1) == name }) { return (toHF ? m.1 : m.0, nil) }
        let (prefix, target) = toHF ? ("blk.", "model.layers.") : ("model.layers.", "blk.")
        guard name.hasPrefix(prefix) else { return nil }
        let rest = name.dropFirst(prefix.count)
        guard let dot = rest.firstIndex(of: "."), let layer = Int(rest[..<dot]) else { return nil }
        let suffix = String(rest[rest.index(after: dot)...])
        guard let t = blockTensors.first(where: { (toHF ? $0.gguf : $0.hf) == suffix }) else { return nil }
        let heads = t.rope.map { $0 == .queries ? c.numAttentionHeads : c.kvHeads }
        return ("\(target)\(layer).\(toHF ? t.hf : t.gguf)", heads)
    }

    /// Row `r` of a RoPE-permuted tensor in HF order is this row in GGUF order: llama.cpp's converter stores
    /// each head's rows in interleaved-pair order (h*d + 2i + j), HF's rotate_half wants h*d + j*d/2 + i.
    public static func ggufRow(ofHFRow r: Int, rows: Int, heads: Int) -> Int {
        let hd = rows / heads, half = hd / 2
        let head = r / hd, w = r % hd, j = w / half, i = w % half
        return head * hd + 2 * i + j
    }

    /// What a loaded GGUF model runs, for reports: the contract, and each stored weight type's activation format
    /// (e.g. "Q4_0": "q8_0"). nil for a model that is not from GGUF.
    public static func describe(_ m: LlamaModel) -> (activations: GGUFActivations, formats: [String: String])? {
        let layers = m.blocks.flatMap { b in b.linearGroups.joined().compactMap { b.linear(named: $0) } } + [m.lmHead]
        let gguf = layers.compactMap { $0 as? any GGUFStoredLinear }
        guard let first = gguf.first else { return nil }
        return (first.contract, gguf.reduce(into: [:]) { $0[$1.weightType.name] = $1.format.rawValue })
    }

    public static func load(path: String, activations: GGUFActivations = .llamacpp,
                            threads: Int = Parallel.defaultThreads) throws -> LlamaModel {
        let file = try GGUFFile(path: path)
        let cfg = try config(file)
        let weights = try GGUFWeights(file: file, config: cfg, threads: threads)
        let backend = GGUFBackend(weights: weights, activations: activations)
        let model = try LlamaModel(config: cfg, source: weights, backend: backend, name: path)
        let headName = cfg.tieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight"
        model.lmHead = try backend.makeLinear(weightName: headName)
        return model
    }
}

/// A GGUF file's tensors under their HF names. Float tensors in their row order are zero-copy views; quantized
/// tensors (and the RoPE-permuted Q/K rows) are decoded to Float32 on each request and not kept (layers that run
/// on the stored blocks never hold a float copy).
public final class GGUFWeights: WeightSource, @unchecked Sendable {
    public let file: GGUFFile
    public let config: LlamaConfig
    let threads: Int
    private var entries: [String: (info: GGUFTensorInfo, permuteHeads: Int?)] = [:]
    private var unmapped: [String] = []

    public init(file: GGUFFile, config: LlamaConfig, threads: Int) throws {
        self.file = file
        self.config = config
        self.threads = threads
        for info in file.tensors {
            if let (name, heads) = GGUFLlama.rename(info.name, toHF: true, config: config) {
                if !GGMLBlocks.canDecode(info.type) {
                    throw QuantKitError(.unsupported, "\(file.path): tensor '\(info.name)' has type \(info.type.name), which QuantKit does not decode (supported: \(GGMLType.allCases.filter(GGMLBlocks.canDecode).map(\.name).joined(separator: ", ")))")
                }
                if let h = heads, info.dims.count == 2 ? info.dims[1] % h != 0 || (info.dims[1] / h) % 2 != 0 : info.dims[0] % h != 0 {
                    throw QuantKitError(.shape, "\(file.path): tensor '\(info.name)' has \(info.shape) elements, which do not split into \(h) heads of even width")
                }
                entries[name] = (info, heads)
            } else {
                unmapped.append(info.name)
            }
        }
    }

    /// HF names, plus the GGUF names QuantKit does not map (the model reports them as unexpected).
    public var names: [String] { Array(entries.keys).sorted() + unmapped }
    public func contains(_ name: String) -> Bool { entries[name] != nil }
    public func info(_ name: String) -> GGUFTensorInfo? { entries[name]?.info }

    public func tensor(_ name: String) throws -> Tensor {
        guard let (info, heads) = entries[name] else { throw QuantKitError(.format, "\(file.path): no tensor for '\(name)'") }
        if heads == nil, [.f32, .f16, .bf16].contains(info.type) { return try file.floatTensor(info.name) }
        let t = Tensor(zeros: .f32, shape: info.shape)
        let dst = t.mutableRaw.assumingMemoryBound(to: Float.self)
        let rows = info.rowCount, n = info.rowLength, src = file.bytes(info)
        if let h = heads, info.dims.count == 1 {
            // A query/key bias: its elements are the permuted rows.
            var flat = [Float](repeating: 0, count: n)
            GGMLBlocks.decodeRow(info.type, src, count: n, into: &flat)
            for r in 0..<n { dst[r] = flat[GGUFLlama.ggufRow(ofHFRow: r, rows: n, heads: h)] }
        } else if let h = heads {
            for r in 0..<rows {
                let from = GGUFLlama.ggufRow(ofHFRow: r, rows: rows, heads: h)
                GGMLBlocks.decodeRow(info.type, src + from * info.type.rowBytes(n), count: n, into: dst + r * n)
            }
        } else {
            GGMLBlocks.decode(info.type, src, rows: rows, rowLength: n, into: dst, threads: threads)
        }
        return t
    }

    /// The rows of a stored tensor in HF row order, as raw blocks (for layers that keep the stored type).
    public func rawRows(_ name: String) throws -> (type: GGMLType, rows: Int, rowLength: Int, bytes: [UInt8]) {
        guard let (info, heads) = entries[name] else { throw QuantKitError(.format, "\(file.path): no tensor for '\(name)'") }
        let rows = info.rowCount, n = info.rowLength, rb = info.type.rowBytes(n), src = file.bytes(info)
        var out = [UInt8](repeating: 0, count: rows * rb)
        out.withUnsafeMutableBytes { dst in
            for r in 0..<rows {
                let from = heads.map { GGUFLlama.ggufRow(ofHFRow: r, rows: rows, heads: $0) } ?? r
                (dst.baseAddress! + r * rb).copyMemory(from: src + from * rb, byteCount: rb)
            }
        }
        return (info.type, rows, n, out)
    }
}

/// Linear layers from a GGUF file under an activation contract.
public struct GGUFBackend: LinearBackend {
    public let weights: GGUFWeights
    public let activations: GGUFActivations

    public func makeLinear(name: String, source: WeightSource) throws -> LinearLayer {
        // Read through `source` so the model's bookkeeping sees the access.
        _ = try source.tensor(name + ".weight")
        return try makeLinear(weightName: name + ".weight", bias: source.contains(name + ".bias") ? try source.tensor(name + ".bias") : nil)
    }

    func makeLinear(weightName: String, bias: Tensor? = nil) throws -> LinearLayer {
        guard let info = weights.info(weightName) else { throw QuantKitError(.format, "\(weights.file.path): no tensor for '\(weightName)'") }
        if activations == .llamacpp, info.type == .q4_0 || info.type == .q8_0,
           let fast = try GGUFIntegerLinear(weights.rawRows(weightName), bias: bias) {
            return fast
        }
        let dense = try DenseLinear(weight: try weights.tensor(weightName), bias: bias, name: info.name)
        let format = activations == .llamacpp ? GGMLActivationFormat.companion(of: info.type) : .f32
        // Q8_1 dot products use the block's stored s = fp16(d * sum q) for the weight's min term.
        var mins: DenseLinear? = nil
        if format == .q8_1 {
            let raw = try weights.rawRows(weightName)
            let blocks = raw.rowLength / 32
            let m = Tensor(zeros: .f32, shape: [raw.rows, blocks])
            let dst = m.mutableRaw.assumingMemoryBound(to: Float.self)
            raw.bytes.withUnsafeBytes { src in
                for b in 0..<raw.rows * blocks {
                    // Q4_1 / Q5_1 blocks start with fp16 d then fp16 m.
                    dst[b] = Float(src.loadUnaligned(fromByteOffset: b * raw.type.blockBytes + 2, as: Float16.self))
                }
            }
            mins = try DenseLinear(weight: m, name: info.name + " (mins)")
        }
        return GGUFLinear(dense: dense, weightType: info.type, contract: activations, format: format, mins: mins)
    }
}

/// What a linear layer read from GGUF runs: its stored type and the activation contract.
public protocol GGUFStoredLinear: LinearLayer {
    var weightType: GGMLType { get }
    var contract: GGUFActivations { get }
    /// The companion format the inputs are converted to (f32: none).
    var format: GGMLActivationFormat { get }
}

/// Q4_0 and Q8_0 weights under llama.cpp's contract on QuantKit's integer kernels, with the activations quantized
/// to Q8_0 exactly as ggml does (fp16 d, 127 / amax, round half to even), so each block's product is ggml's:
/// - Q4_0 on W4A8: the block's codes and fp16 scale become one group of 32 with zero point 8,
///   d_w * d_a * sum((c - 8) q);
/// - Q8_0 on W8A8: the block's int8 codes and fp16 scale as stored, d_w * d_a * sum(c q).
public final class GGUFIntegerLinear: GGUFStoredLinear, FloatWeightsProviding, @unchecked Sendable {
    enum Kernel { case w4a8(W4A8Panels), w8a8(W8A8Panels) }
    let kernel: Kernel
    public let weightType: GGMLType
    public let inFeatures: Int
    public let outFeatures: Int
    private let bias: [Float]?
    /// The stored rows (HF row order), for `floatEquivalent`.
    private let storedRows: [UInt8]
    public var contract: GGUFActivations { .llamacpp }
    public var format: GGMLActivationFormat { .q8_0 }
    public var rowIndependent: Bool { true }

    /// nil for other types, or rows the kernels cannot take.
    init?(_ raw: (type: GGMLType, rows: Int, rowLength: Int, bytes: [UInt8]), bias: Tensor?) throws {
        let (n, k) = (raw.rows, raw.rowLength)
        let blocks = k / 32, blockBytes = raw.type.blockBytes
        var scales = [Float](repeating: 0, count: n * blocks)
        // Each block starts with its fp16 scale; the 32 codes follow.
        func forEachBlock(_ body: (_ at: Int, _ codes: UnsafeRawBufferPointer) -> Void) {
            raw.bytes.withUnsafeBytes { src in
                for i in 0..<n * blocks {
                    scales[i] = Float(src.loadUnaligned(fromByteOffset: i * blockBytes, as: Float16.self))
                    body((i / blocks) * k + (i % blocks) * 32, UnsafeRawBufferPointer(rebasing: src[(i * blockBytes + 2)..<((i + 1) * blockBytes)]))
                }
            }
        }
        switch raw.type {
        case .q4_0:
            var codes = [UInt8](repeating: 0, count: n * k)
            forEachBlock { at, q in for j in 0..<16 { codes[at + j] = q[j] & 15; codes[at + j + 16] = q[j] >> 4 } }
            let matrix = try QuantizedMatrix(bits: 4, outFeatures: n, inFeatures: k, groupSize: 32, codes: codes, scales: scales,
                                             zeros: [Float](repeating: 8, count: n * blocks), inputPermutation: nil)
            guard let p = W4A8Panels(QuantizedPanels(matrix)) else { return nil }
            kernel = .w4a8(p)
        case .q8_0:
            var codes = [Int8](repeating: 0, count: n * k)
            forEachBlock { at, q in for j in 0..<32 { codes[at + j] = Int8(bitPattern: q[j]) } }
            guard let p = W8A8Panels(n: n, k: k, codes: codes, scales: scales) else { return nil }
            kernel = .w8a8(p)
        default:
            return nil
        }
        weightType = raw.type
        inFeatures = k
        outFeatures = n
        self.bias = bias?.floats()
        storedRows = raw.bytes
    }

    /// The decoded weights as a DenseLinear.
    public var floatEquivalent: DenseLinear {
        get throws {
            let t = Tensor(zeros: .f32, shape: [outFeatures, inFeatures])
            storedRows.withUnsafeBytes {
                GGMLBlocks.decode(weightType, $0.baseAddress!, rows: outFeatures, rowLength: inFeatures,
                                  into: t.mutableRaw.assumingMemoryBound(to: Float.self), threads: 1)
            }
            return try DenseLinear(weight: t, bias: bias.map { Tensor(shape: [$0.count], floats: $0) }, name: weightType.name)
        }
    }

    public func forward(_ x: UnsafePointer<Float>, rows: Int, out: UnsafeMutablePointer<Float>, threads: Int) {
        func run(_ b: UnsafePointer<Float>?) {
            switch kernel {
            case .w4a8(let p): Kernels.matmulW4A8(x: x, m: rows, panels: p, bias: b, out: out, threads: threads, ggmlActivations: true)
            case .w8a8(let p): Kernels.matmulW8A8(x: x, m: rows, panels: p, bias: b, out: out, threads: threads)
            }
        }
        if let bias { bias.withUnsafeBufferPointer { run($0.baseAddress) } } else { run(nil) }
    }
}

/// A linear layer that runs llama.cpp's activation contract: its input rows are converted to the weight type's
/// companion format and back (exactly as ggml quantizes them), then multiplied by the decoded weight. The sums
/// differ from ggml's integer dot products only in float summation order.
public final class GGUFLinear: GGUFStoredLinear, FloatWeightsProviding, @unchecked Sendable {
    public let dense: DenseLinear
    public let weightType: GGMLType
    public let contract: GGUFActivations
    public let format: GGMLActivationFormat
    /// Q4_1/Q5_1: the per-block mins [out, in/32], for the correction by ggml's rounded block sums.
    let mins: DenseLinear?
    public var inFeatures: Int { dense.inFeatures }
    public var outFeatures: Int { dense.outFeatures }
    public var rowIndependent: Bool { true }

    public var floatEquivalent: DenseLinear { dense }

    init(dense: DenseLinear, weightType: GGMLType, contract: GGUFActivations, format: GGMLActivationFormat, mins: DenseLinear?) {
        self.dense = dense
        self.weightType = weightType
        self.contract = contract
        self.format = format
        self.mins = mins
    }

    public func forward(_ x: UnsafePointer<Float>, rows: Int, out: UnsafeMutablePointer<Float>, threads: Int) {
        if format == .f32 { return dense.forward(x, rows: rows, out: out, threads: threads) }
        let k = inFeatures
        let a = UnsafeMutablePointer<Float>.allocate(capacity: rows * k)
        defer { a.deallocate() }
        guard let mins else {
            format.roundTripRows(x, rows: rows, k: k, into: a, sums: nil, threads: threads)
            dense.forward(a, rows: rows, out: out, threads: threads)
            return
        }
        let blocks = k / 32
        let sums = UnsafeMutablePointer<Float>.allocate(capacity: rows * blocks)
        let extra = UnsafeMutablePointer<Float>.allocate(capacity: rows * outFeatures)
        defer { sums.deallocate(); extra.deallocate() }
        format.roundTripRows(x, rows: rows, k: k, into: a, sums: sums, threads: threads)
        dense.forward(a, rows: rows, out: out, threads: threads)
        // ggml adds m * s where the decoded product has m * sum(a): add m * (s - sum(a)) per block.
        for r in 0..<rows {
            for b in 0..<blocks {
                var s: Float = 0
                for j in 0..<32 { s += a[r * k + b * 32 + j] }
                sums[r * blocks + b] -= s
            }
        }
        mins.forward(sums, rows: rows, out: extra, threads: threads)
        for i in 0..<rows * outFeatures { out[i] += extra[i] }
    }
}
