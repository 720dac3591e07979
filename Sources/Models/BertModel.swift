import Foundation
import Kernels
import TensorCore

/// Hugging Face BertModel (no pooler): embeddings + post-LayerNorm transformer blocks.
public final class BertModel: @unchecked Sendable {
    public let config: BertConfig
    public let directory: String
    /// "" or "bert." (BertFor* checkpoints).
    public let prefix: String

    /// One encoder layer. The linear layers are `var`s: a quantizer swaps them one by one after loading.
    final class Layer {
        let prefix: String  // "<prefix>encoder.layer.<i>."
        var query, key, value, attnOut, inter, out: any LinearLayer
        let ln1g, ln1b, ln2g, ln2b: [Float]
        init(prefix: String, query: any LinearLayer, key: any LinearLayer, value: any LinearLayer, attnOut: any LinearLayer,
             inter: any LinearLayer, out: any LinearLayer, ln1g: [Float], ln1b: [Float], ln2g: [Float], ln2b: [Float]) {
            self.prefix = prefix
            self.query = query; self.key = key; self.value = value; self.attnOut = attnOut; self.inter = inter; self.out = out
            self.ln1g = ln1g; self.ln1b = ln1b; self.ln2g = ln2g; self.ln2b = ln2b
        }
    }

    /// LayerNorm, GELU, attention and residual adds (float Kernels by default; the NPU target swaps in its own).
    public var ops: any BertNonlinearOps = BertFloatOps()
    /// Sees every linear module's input and output during forward (activation-range calibration).
    public var observer: (any LinearObserver)?

    /// The weights as loaded (float tensors of every module; a quantizer reads the linear weights from here).
    public let source: SafetensorsCheckpoint
    let wordEmbeddings: Tensor  // [vocab, hidden]
    let positionEmbeddings: [Float]  // [maxPos, hidden]
    let tokenTypeEmbeddings: [Float]  // [types, hidden]
    let embLNg, embLNb: [Float]
    let layers: [Layer]
    let wordRef: WeightRef

    /// The linear modules of one encoder layer in true-sequential order (GPTQ): [query, key, value] see the same
    /// input, then the attention output projection, the intermediate (FFN up) and the output (FFN down) layers.
    public static let sequentialGroups: [[String]] = [
        ["attention.self.query", "attention.self.key", "attention.self.value"], ["attention.output.dense"],
        ["intermediate.dense"], ["output.dense"],
    ]

    /// The names of every linear layer, in forward order (what a quantizer replaces).
    public static func linearNames(_ c: BertConfig, prefix: String = "") -> [String] {
        (0..<c.numHiddenLayers).flatMap { i in sequentialGroups.joined().map { "\(prefix)encoder.layer.\(i).\($0)" } }
    }

    /// Number of encoder layers.
    public var layerCount: Int { layers.count }

    /// Full module names of encoder layer `i`, grouped in true-sequential order.
    public func linearGroups(layer i: Int) -> [[String]] {
        BertModel.sequentialGroups.map { $0.map { layers[i].prefix + $0 } }
    }

    /// The linear layer stored under a full module name (e.g. "encoder.layer.0.attention.self.query").
    public func linear(named name: String) -> (any LinearLayer)? {
        guard let (l, sub) = locate(name) else { return nil }
        switch sub {
        case "attention.self.query": return l.query
        case "attention.self.key": return l.key
        case "attention.self.value": return l.value
        case "attention.output.dense": return l.attnOut
        case "intermediate.dense": return l.inter
        case "output.dense": return l.out
        default: return nil
        }
    }

    /// Replaces one linear layer (same shape) by full module name.
    public func setLinear(_ layer: any LinearLayer, named name: String) throws {
        guard let (l, sub) = locate(name), let old = linear(named: name) else {
            throw QuantKitError(.input, "\(directory): no BERT linear module named '\(name)'")
        }
        guard old.inFeatures == layer.inFeatures, old.outFeatures == layer.outFeatures else {
            throw QuantKitError(.shape, "\(name): replacement is [\(layer.outFeatures), \(layer.inFeatures)], expected [\(old.outFeatures), \(old.inFeatures)]")
        }
        switch sub {
        case "attention.self.query": l.query = layer
        case "attention.self.key": l.key = layer
        case "attention.self.value": l.value = layer
        case "attention.output.dense": l.attnOut = layer
        case "intermediate.dense": l.inter = layer
        default: l.out = layer
        }
    }

    private func locate(_ name: String) -> (Layer, String)? {
        for l in layers where name.hasPrefix(l.prefix) { return (l, String(name.dropFirst(l.prefix.count))) }
        return nil
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
        source = ckpt
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
            return Layer(prefix: p + q, query: try lin(q + "attention.self.query"), key: try lin(q + "attention.self.key"),
                         value: try lin(q + "attention.self.value"), attnOut: try lin(q + "attention.output.dense"),
                         inter: try lin(q + "intermediate.dense"), out: try lin(q + "output.dense"),
                         ln1g: try floats(q + "attention.output.LayerNorm.weight"), ln1b: try floats(q + "attention.output.LayerNorm.bias"),
                         ln2g: try floats(q + "output.LayerNorm.weight"), ln2b: try floats(q + "output.LayerNorm.bias"))
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
        var (x, offsets) = try embed(sequences)
        if offsets.last! == 0 { return (x, offsets) }
        let scratch = Scratch(config: config, rows: offsets.last!)
        for i in 0..<layers.count { forwardLayer(i, x: &x, offsets: offsets, scratch: scratch, threads: threads) }
        return (x, offsets)
    }

    /// The embedding output (word + position + token type 0, LayerNorm) of packed sequences: [totalTokens, hidden]
    /// and the sequence offsets, after checking lengths and token ids.
    public func embed(_ sequences: [[Int32]]) throws -> (x: [Float], offsets: [Int]) {
        let h = config.hiddenSize
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
        tmp.withUnsafeMutableBufferPointer { xb in
            for (s, seq) in sequences.enumerated() {
                for (pos, id) in seq.enumerated() {
                    let row = xb.baseAddress! + (offsets[s] + pos) * h
                    let w = Int(id) * h
                    for i in 0..<h { row[i] = wordRef.element(w + i) + positionEmbeddings[pos * h + i] + tokenTypeEmbeddings[i] }
                }
            }
        }
        layerNorm(tmp, embLNg, embLNb, &x, rows: total, threads: Parallel.defaultThreads)
        return (x, offsets)
    }

    /// out = LN(src) through `ops`.
    private func layerNorm(_ src: [Float], _ g: [Float], _ b: [Float], _ out: inout [Float], rows: Int, threads: Int) {
        let (ops, h, eps) = (self.ops, config.hiddenSize, config.layerNormEps)
        src.withUnsafeBufferPointer { sb in
            g.withUnsafeBufferPointer { gb in
                b.withUnsafeBufferPointer { bb in
                    out.withUnsafeMutableBufferPointer { ob in
                        ops.layerNorm(sb.baseAddress!, gamma: gb.baseAddress!, beta: bb.baseAddress!, rows: rows, dim: h,
                                      eps: eps, out: ob.baseAddress!, threads: threads)
                    }
                }
            }
        }
    }

    /// Work buffers of one encoder layer for `rows` packed tokens (allocated once per forward pass).
    public final class Scratch {
        let rows: Int
        var q, k, v, tmp, inter: [Float]
        public init(config: BertConfig, rows: Int) {
            self.rows = rows
            let n = rows * config.hiddenSize
            q = [Float](repeating: 0, count: n); k = q; v = q; tmp = q
            inter = [Float](repeating: 0, count: rows * config.intermediateSize)
        }
    }

    /// Runs encoder layer `i` in place on packed hidden states `x` [offsets.last, hidden]. The observer (the
    /// argument, else the model's) sees every linear module's input and output under its full name (rows = real
    /// tokens only: sequences are packed, so no padding position ever reaches a linear layer).
    /// `stopAfter` (a full module name) ends the pass right after that linear module ran and was observed: calibration
    /// capture passes need nothing past the group being quantized. `x` is then left partly updated.
    public func forwardLayer(_ i: Int, x: inout [Float], offsets: [Int], scratch: Scratch? = nil, observer: LinearObserver? = nil,
                             stopAfter: String? = nil, threads: Int = Parallel.defaultThreads) {
        let h = config.hiddenSize, f = config.intermediateSize
        let total = offsets.last!
        guard total > 0 else { return }
        precondition(x.count == total * h, "hidden states do not match the offsets")
        let sc = scratch.flatMap { $0.rows == total ? $0 : nil } ?? Scratch(config: config, rows: total)
        let L = layers[i]
        let ops = self.ops, observer = observer ?? self.observer
        func residual(_ a: inout [Float], _ b: [Float]) {
            a.withUnsafeMutableBufferPointer { ab in
                b.withUnsafeBufferPointer { ops.residualAdd(ab.baseAddress!, $0.baseAddress!, count: total * h) }
            }
        }
        /// Runs and observes one module; true when the pass stops here.
        func run(_ l: any LinearLayer, _ sub: String, _ input: [Float], _ out: inout [Float]) -> Bool {
            input.withUnsafeBufferPointer { ib in
                out.withUnsafeMutableBufferPointer { ob in
                    l.forward(ib.baseAddress!, rows: total, out: ob.baseAddress!, threads: threads)
                    observer?.observe(module: L.prefix + sub, input: ib.baseAddress!, inFeatures: l.inFeatures,
                                      output: ob.baseAddress!, outFeatures: l.outFeatures, rows: total)
                }
            }
            return stopAfter == L.prefix + sub
        }
        if run(L.query, "attention.self.query", x, &sc.q) || run(L.key, "attention.self.key", x, &sc.k)
            || run(L.value, "attention.self.value", x, &sc.v) { return }
        sc.q.withUnsafeBufferPointer { qb in
            sc.k.withUnsafeBufferPointer { kb in
                sc.v.withUnsafeBufferPointer { vb in
                    sc.tmp.withUnsafeMutableBufferPointer { ob in
                        ops.attention(q: qb.baseAddress!, k: kb.baseAddress!, v: vb.baseAddress!, out: ob.baseAddress!,
                                      offsets: offsets, heads: config.numAttentionHeads, headDim: config.headDim,
                                      threads: threads)
                    }
                }
            }
        }
        // post-LN: x = LN(dense(ctx) + x)
        if run(L.attnOut, "attention.output.dense", sc.tmp, &sc.q) { return }
        residual(&sc.q, x)
        layerNorm(sc.q, L.ln1g, L.ln1b, &x, rows: total, threads: threads)
        if run(L.inter, "intermediate.dense", x, &sc.inter) { return }
        let interName = L.prefix + "intermediate.dense"
        sc.inter.withUnsafeMutableBufferPointer { ops.gelu($0.baseAddress!, count: total * f, producer: interName, threads: threads) }
        if run(L.out, "output.dense", sc.inter, &sc.q) { return }
        residual(&sc.q, x)
        layerNorm(sc.q, L.ln2g, L.ln2b, &x, rows: total, threads: threads)
    }
}
