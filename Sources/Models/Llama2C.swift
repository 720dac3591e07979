import Foundation
import TensorCore

/// llama2.c legacy checkpoints (karpathy/llama2.c run.c "version 0"): a header of 7 int32
/// (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a negative vocab_size means the
/// classifier is stored separately), then f32 tensors: token_embedding [vocab, dim], rms_att [L, dim],
/// wq [L, dim, dim], wk [L, kvDim, dim], wv [L, kvDim, dim], wo [L, dim, dim], rms_ffn [L, dim],
/// w1 [L, hidden, dim], w2 [L, dim, hidden], w3 [L, hidden, dim], rms_final [dim],
/// freq_cis_real/imag [seq, headDim/2] each, then wcls [vocab, dim] when not shared.
public enum Llama2C {
    public struct Header: Sendable, Equatable {
        public var dim, hiddenDim, nLayers, nHeads, nKVHeads, vocabSize, seqLen: Int
        public var sharedClassifier: Bool
    }

    public static func readHeader(_ file: MappedFile) throws -> Header {
        guard file.size >= 28 else { throw QuantKitError(.format, "\(file.path): too short for a llama2.c header (\(file.size) bytes)") }
        let v = (0..<7).map { Int(Int32(littleEndian: file.base.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self))) }
        let h = Header(dim: v[0], hiddenDim: v[1], nLayers: v[2], nHeads: v[3], nKVHeads: v[4], vocabSize: abs(v[5]),
                       seqLen: v[6], sharedClassifier: v[5] > 0)
        // LlamaConfig's limits keep every size product below 2^63 (the file size check multiplies them).
        typealias L = LlamaConfig.Limits
        for (n, x, limit) in [("dim", h.dim, L.dimension), ("hidden_dim", h.hiddenDim, L.dimension), ("n_layers", h.nLayers, L.layers),
                              ("n_heads", h.nHeads, L.heads), ("n_kv_heads", h.nKVHeads, L.heads), ("vocab_size", h.vocabSize, L.vocabulary),
                              ("seq_len", h.seqLen, L.positions)] where x <= 0 || x > limit {
            throw QuantKitError(.format, "\(file.path): invalid llama2.c model header: field \(n) = \(x) is not plausible (must be 1...\(limit))")
        }
        guard h.dim % h.nHeads == 0, h.nHeads % h.nKVHeads == 0, (h.dim / h.nHeads) % 2 == 0 else {
            throw QuantKitError(.format, "\(file.path): llama2.c header has inconsistent heads (dim \(h.dim), heads \(h.nHeads), kv heads \(h.nKVHeads))")
        }
        return h
    }

    /// Whether a .bin is laid out as llama2.c's tokenizer.bin (int32 max_token_length, then records of float32
    /// score, int32 length, bytes, ending exactly at the end of the file). A model checkpoint, even one whose
    /// header is damaged (a negative dimension), is not: it is then reported by `readHeader` as an invalid model
    /// header, naming the field, instead of being read as a tokenizer.
    public static func isTokenizerLayout(_ file: MappedFile) -> Bool {
        let size = file.size
        guard size >= 4 else { return false }
        func i32(_ o: Int) -> Int { Int(Int32(littleEndian: file.base.loadUnaligned(fromByteOffset: o, as: Int32.self))) }
        let maxLen = i32(0)
        guard maxLen > 0 && maxLen < 1 << 16 else { return false }
        var o = 4, count = 0
        while o < size {
            guard size - o >= 8 else { return false }
            let n = i32(o + 4)
            guard n >= 0 && n <= maxLen, size - o - 8 >= n else { return false }
            o += 8 + n
            count += 1
        }
        return count > 0
    }

    public static func config(_ h: Header) -> LlamaConfig {
        LlamaConfig(hiddenSize: h.dim, intermediateSize: h.hiddenDim, numHiddenLayers: h.nLayers, numAttentionHeads: h.nHeads,
                    numKeyValueHeads: h.nKVHeads, rmsNormEps: 1e-5, ropeTheta: 10000, vocabSize: h.vocabSize,
                    maxPositionEmbeddings: h.seqLen, tieWordEmbeddings: h.sharedClassifier, bosTokenId: 1, eosTokenId: 2,
                    modelType: "llama", architectures: ["LlamaForCausalLM"])
    }

    /// HF row order for q/k: llama2.c rotates interleaved pairs (2i, 2i+1) of each head, HF rotate_half rotates
    /// (i, i + d/2). Moving row h*d + 2i + j to h*d + j*d/2 + i makes rotate_half compute the same thing — the
    /// permutation of transformers' convert_llama_weights_to_hf.py (view(heads, d/2, 2, in).transpose(1, 2)).
    public static func permuteForRotateHalf(_ src: UnsafePointer<Float>, rows: Int, cols: Int, heads: Int) -> Tensor {
        let t = Tensor(zeros: .f32, shape: [rows, cols])
        let dst = t.mutableRaw.assumingMemoryBound(to: Float.self)
        let hd = rows / heads, half = hd / 2
        for h in 0..<heads {
            for i in 0..<half {
                for j in 0..<2 {
                    let from = h * hd + 2 * i + j, to = h * hd + j * half + i
                    (dst + to * cols).update(from: src + from * cols, count: cols)
                }
            }
        }
        return t
    }

    /// The inverse permutation (HF -> llama2.c), used by tools and tests.
    public static func unpermute(_ src: UnsafePointer<Float>, rows: Int, cols: Int, heads: Int) -> [Float] {
        var out = [Float](repeating: 0, count: rows * cols)
        let hd = rows / heads, half = hd / 2
        for h in 0..<heads { for i in 0..<half { for j in 0..<2 {
            let llama = h * hd + 2 * i + j, hf = h * hd + j * half + i
            for c in 0..<cols { out[llama * cols + c] = src[hf * cols + c] }
        } } }
        return out
    }

    /// Config plus weights under HF names. Tensors are zero-copy views into the mapped file except wq/wk,
    /// which are permuted copies.
    public static func load(path: String) throws -> (LlamaConfig, TensorDictionary) {
        let file = try MappedFile(path: path)
        let h: Header
        do { h = try readHeader(file) } catch {
            if isTokenizerLayout(file) {
                throw QuantKitError(.input, "\(path): a llama2.c tokenizer file, not a model checkpoint")
            }
            throw error
        }
        let hd = h.dim / h.nHeads, kvDim = h.nKVHeads * hd, L = h.nLayers
        var floats = h.vocabSize * h.dim + L * h.dim * 2 + L * h.dim * h.dim * 2 + L * kvDim * h.dim * 2
        floats += L * h.hiddenDim * h.dim * 3 + h.dim + h.seqLen * hd
        if !h.sharedClassifier { floats += h.vocabSize * h.dim }
        let expected = 28 + floats * 4
        guard file.size == expected else {
            throw QuantKitError(.format, "\(path): llama2.c file is \(file.size) bytes, the header implies \(expected)")
        }
        var offset = 28
        var t: [String: Tensor] = [:]
        func take(_ shape: [Int]) -> Tensor {
            let n = shape.reduce(1, *)
            let tensor = Tensor(dtype: .f32, shape: shape, storage: TensorStorage(mapping: file, offset: offset, byteCount: n * 4))
            offset += n * 4
            return tensor
        }
        func perLayer(_ shape: [Int], _ name: String, permuteHeads: Int? = nil) {
            let all = take([L] + shape)
            let n = shape.reduce(1, *)
            for l in 0..<L {
                let key = "model.layers.\(l).\(name)"
                if let heads = permuteHeads {
                    t[key] = permuteForRotateHalf(all.pointer(as: Float.self) + l * n, rows: shape[0], cols: shape[1], heads: heads)
                } else {
                    t[key] = Tensor(dtype: .f32, shape: shape, storage: TensorStorage(mapping: file, offset: offset - (L - l) * n * 4, byteCount: n * 4))
                }
            }
        }
        t["model.embed_tokens.weight"] = take([h.vocabSize, h.dim])
        perLayer([h.dim], "input_layernorm.weight")
        perLayer([h.dim, h.dim], "self_attn.q_proj.weight", permuteHeads: h.nHeads)
        perLayer([kvDim, h.dim], "self_attn.k_proj.weight", permuteHeads: h.nKVHeads)
        perLayer([kvDim, h.dim], "self_attn.v_proj.weight")
        perLayer([h.dim, h.dim], "self_attn.o_proj.weight")
        perLayer([h.dim], "post_attention_layernorm.weight")
        perLayer([h.hiddenDim, h.dim], "mlp.gate_proj.weight")
        perLayer([h.dim, h.hiddenDim], "mlp.down_proj.weight")
        perLayer([h.hiddenDim, h.dim], "mlp.up_proj.weight")
        t["model.norm.weight"] = take([h.dim])
        _ = take([h.seqLen * hd])  // freq_cis real + imag: recomputed by the RoPE kernel
        if !h.sharedClassifier { t["lm_head.weight"] = take([h.vocabSize, h.dim]) }
        return (config(h), TensorDictionary(t, label: path))
    }

    /// Writes a llama2.c legacy file (f32) from HF-named float weights, inverting the q/k permutation.
    /// Used to make benchmark models; `weights` must hold every tensor of `config`.
    public static func write(config c: LlamaConfig, weights: WeightSource, to path: String) throws {
        let hd = c.headDimension, L = c.numHiddenLayers
        var data = Data()
        func i32(_ v: Int) { var x = Int32(v).littleEndian; data.append(Data(bytes: &x, count: 4)) }
        func floats(_ a: [Float]) { a.withUnsafeBytes { data.append(contentsOf: $0) } }
        for v in [c.hiddenSize, c.intermediateSize, L, c.numAttentionHeads, c.kvHeads,
                  c.tieWordEmbeddings ? c.vocabSize : -c.vocabSize, c.maxPositionEmbeddings] { i32(v) }
        floats(try weights.tensor("model.embed_tokens.weight").floats())
        func layers(_ name: String, heads: Int? = nil) throws {
            for l in 0..<L {
                let w = try weights.tensor("model.layers.\(l).\(name)")
                if let hN = heads {
                    let f = w.floats()
                    floats(f.withUnsafeBufferPointer { unpermute($0.baseAddress!, rows: w.shape[0], cols: w.shape[1], heads: hN) })
                } else { floats(w.floats()) }
            }
        }
        try layers("input_layernorm.weight")
        try layers("self_attn.q_proj.weight", heads: c.numAttentionHeads)
        try layers("self_attn.k_proj.weight", heads: c.kvHeads)
        try layers("self_attn.v_proj.weight"); try layers("self_attn.o_proj.weight")
        try layers("post_attention_layernorm.weight")
        try layers("mlp.gate_proj.weight"); try layers("mlp.down_proj.weight"); try layers("mlp.up_proj.weight")
        floats(try weights.tensor("model.norm.weight").floats())
        // freq_cis as llama2.c's export writes it (unused by QuantKit, kept for compatibility).
        var re = [Float](), im = [Float]()
        for p in 0..<c.maxPositionEmbeddings { for i in 0..<(hd / 2) {
            let f = 1.0 / pow(c.ropeTheta, Double(2 * i) / Double(hd))
            re.append(Float(cos(Double(p) * f))); im.append(Float(sin(Double(p) * f)))
        } }
        floats(re); floats(im)
        if !c.tieWordEmbeddings { floats(try weights.tensor("lm_head.weight").floats()) }
        try AtomicFile.write(data, to: path)
    }
}
