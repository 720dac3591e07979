import Foundation
import Kernels
import TensorCore

/// Hugging Face BertModel (no pooler): embeddings + post-LayerNorm transformer blocks.
public final class BertModel: @unchecked Sendable {
    public let config: BertConfig
    public let directory: String
    /// "" or "bert." (BertFor* checkpoints).
    public let prefix: String

    struct Layer {
        let query, key, value, attnOut, inter, out: any LinearLayer
        let ln1g, ln1b, ln2g, ln2b: [Float]
        /// The module name prefix "<prefix>encoder.layer.<i>."
        let name: String
    }

    /// LayerNorm, GELU, attention and residual adds (float Kernels by default; the NPU target swaps in its own).
    public var ops: any BertNonlinearOps = BertFloatOps()
    /// Sees every linear module's input and output during forward (activation-range calibration).
    public var observer: (any LinearObserver)?

    let wordEmbeddings: Tensor  // [vocab, hidden]
    let positionEmbeddings: [Float]  // [maxPos, hidden]
    let tokenTypeEmbeddings: [Float]  // [types, hidden]
    let embLNg, embLNb: [Float]
    let layers: [Layer]
    let wordRef: WeightRef

    /// The names of every linear layer, in forward order (what a quantizer replaces).
    public static func linearNames(_ c: BertConfig, prefix: String = "") -> [String] {
        (0..<c.numHiddenLayers).flatMap { i in
            ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
             "intermediate.dense", "output.dense"].map { "\(prefix)encoder.layer.\(i).\($0)" }
        }
    }

    /// Every tensor name the model reads, with its expected shape.
    public static func expectedTensors(_ c: BertConfig, prefix: String = "") -> [(String, [Int])] {
        let h = c.hiddenSize, f = c.intermediateSize
        var t: [(String, [Int])] = [
            ("\(prefix)embeddings.word_embeddings.weight", [c.vocabSize, h]),
            ("\(prefix)embeddings.position_embeddings.weight", [c.maxPositionEmbeddings, h]),
            ("\(prefix)embeddings.token_type_embeddings.weight", [c.typeVocabSize, h]),
            ("\(prefix)embeddings.LayerNorm.weight", [h]), ("\(prefix)embeddings.LayerNorm.bias", [h]),
        ]
        for i in 0..<c.numHiddenLayers {
            let p = "\(prefix)encoder.layer.\(i)."
            for n in ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"] {
                t += [(p + n + ".weight", [h, h]), (p + n + ".bias", [h])]
            }
            t += [(p + "intermediate.dense.weight", [f, h]), (p + "intermediate.dense.bias", [f]),
                  (p + "output.dense.weight", [h, f]), (p + "output.dense.bias", [h])]
            for n in ["attention.output.LayerNorm", "output.LayerNorm"] { t += [(p + n + ".weight", [h]), (p + n + ".bias", [h])] }
        }
        return t
    }

    /// Loads config.json + model.safetensors (or a sharded index) from an HF directory, verifying every
    /// tensor name and shape. `backend` builds each linear layer (dense float by default; a quantized backend
    /// reads its own tensors, e.g. "<name>.qweight", from the same directory).
    public init(directory: String, backend: any LinearBackend = DenseBackend()) throws {
        self.directory = directory
        let config = try BertConfig.load((directory as NSString).appendingPathComponent("config.json"))
        self.config = config
        let ckpt = try SafetensorsCheckpoint(path: directory)
        prefix = ckpt.contains("bert.embeddings.word_embeddings.weight") ? "bert." : ""
        var problems: [String] = []
        let linearWeights = Set(BertModel.linearNames(config, prefix: prefix).flatMap { [$0 + ".weight", $0 + ".bias"] })
        // A quantized backend may store the linear layers differently; it verifies its own tensors.
        let checkLinears = backend is DenseBackend
        for (name, shape) in BertModel.expectedTensors(config, prefix: prefix) where checkLinears || !linearWeights.contains(name) {
            guard let info = ckpt.info(name) else { problems.append("missing \(name)"); continue }
            if info.shape != shape { problems.append("\(name): shape \(info.shape), expected \(shape)") }
            if ![.f32, .f16, .bf16].contains(info.dtype) { problems.append("\(name): dtype \(info.dtype) (float expected)") }
        }
        guard problems.isEmpty else {
            throw QuantKitError(.shape, "\(directory): BERT weights do not match config.json: " + problems.prefix(8).joined(separator: "; ")
                                + (problems.count > 8 ? " (+\(problems.count - 8) more)" : ""))
        }
        let p = prefix
        func floats(_ n: String) throws -> [Float] { try ckpt.tensor(p + n).floats() }
        wordEmbeddings = try ckpt.tensor(p + "embeddings.word_embeddings.weight")
        wordRef = WeightRef(wordEmbeddings)!
        positionEmbeddings = try floats("embeddings.position_embeddings.weight")
        tokenTypeEmbeddings = try floats("embeddings.token_type_embeddings.weight")
        embLNg = try floats("embeddings.LayerNorm.weight")
        embLNb = try floats("embeddings.LayerNorm.bias")
        func lin(_ n: String) throws -> any LinearLayer {
            let l = try backend.makeLinear(name: p + n, source: ckpt)
            let isInter = n.hasSuffix("intermediate.dense"), isOut = n.hasSuffix(".output.dense") && !n.contains("attention")
            let w = isInter ? [config.intermediateSize, config.hiddenSize]
                : (isOut ? [config.hiddenSize, config.intermediateSize] : [config.hiddenSize, config.hiddenSize])
            guard l.outFeatures == w[0], l.inFeatures == w[1] else {
                throw QuantKitError(.shape, "\(p + n): linear layer is [\(l.outFeatures), \(l.inFeatures)], expected \(w)")
            }
            return l
        }
        layers = try (0..<config.numHiddenLayers).map { i in
            let q = "encoder.layer.\(i)."
            return Layer(query: try lin(q + "attention.self.query"), key: try lin(q + "attention.self.key"),
                         value: try lin(q + "attention.self.value"), attnOut: try lin(q + "attention.output.dense"),
                         inter: try lin(q + "intermediate.dense"), out: try lin(q + "output.dense"),
                         ln1g: try floats(q + "attention.output.LayerNorm.weight"), ln1b: try floats(q + "attention.output.LayerNorm.bias"),
                         ln2g: try floats(q + "output.LayerNorm.weight"), ln2b: try floats(q + "output.LayerNorm.bias"),
                         name: p + q)
        }
    }

    /// Multiply-adds of the linear layers for `tokens` tokens (for GFLOP/s figures: x2).
    public func linearMACs(tokens: Int) -> Int {
        let h = config.hiddenSize, f = config.intermediateSize
        return tokens * config.numHiddenLayers * (4 * h * h + 2 * h * f)
    }

    /// Multiply-adds of attention (QK^T and PV) for one sequence of `length` tokens.
    public func attentionMACs(length: Int) -> Int { 2 * length * length * config.hiddenSize * config.numHiddenLayers }

    /// Last hidden states for a batch of sequences, packed: sequence s occupies rows offsets[s]..<offsets[s+1]
    /// of the [totalTokens, hidden] result. Each token attends only to the tokens of its own sequence, which is
    /// exactly BERT's attention padding mask (masked keys get weight 0) without computing padding rows.
    /// Token type ids are 0 (single-segment input), positions start at 0 per sequence.
    public func forward(_ sequences: [[Int32]], threads: Int = Parallel.defaultThreads) throws -> (hidden: [Float], offsets: [Int]) {
        let h = config.hiddenSize, f = config.intermediateSize
        var offsets = [0]
        for (i, s) in sequences.enumerated() {
            guard s.count <= config.maxPositionEmbeddings else {
                throw QuantKitError(.input, "sequence \(i): \(s.count) tokens exceed max_position_embeddings \(config.maxPositionEmbeddings)")
            }
            for t in s where t < 0 || Int(t) >= config.vocabSize {
                throw QuantKitError(.input, "sequence \(i): token id \(t) outside the vocabulary (\(config.vocabSize))")
            }
            offsets.append(offsets.last! + s.count)
        }
        let total = offsets.last!
        if total == 0 { return ([], offsets) }
        var x = [Float](repeating: 0, count: total * h)
        var tmp = [Float](repeating: 0, count: total * h)
        var q = [Float](repeating: 0, count: total * h)
        var k = [Float](repeating: 0, count: total * h)
        var v = [Float](repeating: 0, count: total * h)
        var inter = [Float](repeating: 0, count: total * f)

        // Embeddings: word + position + token type 0, then LayerNorm.
        x.withUnsafeMutableBufferPointer { xb in
            for (s, seq) in sequences.enumerated() {
                for (pos, id) in seq.enumerated() {
                    let row = xb.baseAddress! + (offsets[s] + pos) * h
                    let w = Int(id) * h
                    for i in 0..<h { row[i] = wordRef.element(w + i) + positionEmbeddings[pos * h + i] + tokenTypeEmbeddings[i] }
                }
            }
        }
        let ops = self.ops, observer = self.observer
        let eps = config.layerNormEps
        /// One linear module (observed when an observer is set).
        func linear(_ l: any LinearLayer, _ module: String, _ input: [Float], _ out: inout [Float]) {
            l.forward(input, rows: total, out: &out, threads: threads)
            if let observer {
                input.withUnsafeBufferPointer { ib in
                    out.withUnsafeBufferPointer { ob in
                        observer.observe(module: module, input: ib.baseAddress!, inFeatures: l.inFeatures, output: ob.baseAddress!,
                                         outFeatures: l.outFeatures, rows: total)
                    }
                }
            }
        }
        /// out = LN(src) with the given parameters.
        func norm(_ src: [Float], _ g: [Float], _ b: [Float], _ out: inout [Float]) {
            src.withUnsafeBufferPointer { sb in
                g.withUnsafeBufferPointer { gb in
                    b.withUnsafeBufferPointer { bb in
                        out.withUnsafeMutableBufferPointer { ob in
                            ops.layerNorm(sb.baseAddress!, gamma: gb.baseAddress!, beta: bb.baseAddress!, rows: total, dim: h,
                                          eps: eps, out: ob.baseAddress!, threads: threads)
                        }
                    }
                }
            }
        }
        func residual(_ a: inout [Float], _ b: [Float]) {
            a.withUnsafeMutableBufferPointer { ab in
                b.withUnsafeBufferPointer { ops.residualAdd(ab.baseAddress!, $0.baseAddress!, count: total * h) }
            }
        }
        tmp.withUnsafeMutableBufferPointer { t in
            x.withUnsafeBufferPointer { t.baseAddress!.update(from: $0.baseAddress!, count: total * h) }
        }
        norm(tmp, embLNg, embLNb, &x)

        for L in layers {
            linear(L.query, L.name + "attention.self.query", x, &q)
            linear(L.key, L.name + "attention.self.key", x, &k)
            linear(L.value, L.name + "attention.self.value", x, &v)
            q.withUnsafeBufferPointer { qb in
                k.withUnsafeBufferPointer { kb in
                    v.withUnsafeBufferPointer { vb in
                        tmp.withUnsafeMutableBufferPointer { ob in
                            ops.attention(q: qb.baseAddress!, k: kb.baseAddress!, v: vb.baseAddress!, out: ob.baseAddress!,
                                          offsets: offsets, heads: config.numAttentionHeads, headDim: config.headDim,
                                          threads: threads)
                        }
                    }
                }
            }
            // post-LN: x = LN(dense(ctx) + x)
            linear(L.attnOut, L.name + "attention.output.dense", tmp, &q)
            residual(&q, x)
            norm(q, L.ln1g, L.ln1b, &x)
            let interName = L.name + "intermediate.dense"
            linear(L.inter, interName, x, &inter)
            inter.withUnsafeMutableBufferPointer { ops.gelu($0.baseAddress!, count: total * f, producer: interName, threads: threads) }
            linear(L.out, L.name + "output.dense", inter, &q)
            residual(&q, x)
            norm(q, L.ln2g, L.ln2b, &x)
        }
        return (x, offsets)
    }

    /// Bidirectional multi-head attention inside each packed sequence (Kernels.attentionBidirectional).
    /// q/k/v/out: [total, heads*headDim]. Scale 1/sqrt(headDim), softmax with max subtraction.
    static func attention(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                          out: UnsafeMutablePointer<Float>, offsets: [Int], heads: Int, headDim: Int, threads: Int) {
        Kernels.attentionBidirectional(q: q, k: k, v: v, out: out, offsets: offsets, heads: heads, headDim: headDim,
                                       threads: threads)
    }
}
