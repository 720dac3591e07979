import Foundation
import Kernels
import TensorCore

/// Keys and values of every layer: per layer [rows, kvDim] Float32. `length` tokens have been run; a forward
/// call appends its rows after them. A layer with a sliding attention window w never needs keys older than the
/// last w - 1 tokens, so when the cache is made for chunks of at most `maxChunk` rows, such a layer holds only
/// w - 1 + maxChunk rows (a rolling buffer, as llama.cpp's SWA cache keeps): before a chunk would overflow it,
/// the rows a query at `length` or later can still see move to the front and `origins[l]` (the absolute
/// position of row 0) advances. Full-attention layers hold `capacity` rows.
public final class KVCache {
    public let layers: Int
    /// Tokens the cache can take in all (absolute positions 0..<capacity).
    public let capacity: Int
    /// Largest number of rows one forward call may append.
    public let maxChunk: Int
    public let kvDim: Int
    public var length: Int = 0 {
        didSet { if length == 0 { for l in origins.indices { origins[l] = 0 } } }
    }
    /// Rows each layer's buffers hold.
    public let layerCapacity: [Int]
    /// Absolute position of each layer's row 0 (above 0 only after a rolling layer dropped old rows).
    public private(set) var origins: [Int]
    let windows: [Int?]
    public let keys: [UnsafeMutablePointer<Float>]
    public let values: [UnsafeMutablePointer<Float>]

    /// maxChunk: the most rows one forward call will append (default: capacity, no rolling).
    public init(config: LlamaConfig, capacity: Int, maxChunk: Int? = nil) {
        layers = config.numHiddenLayers
        self.capacity = capacity
        self.maxChunk = min(capacity, max(1, maxChunk ?? capacity))
        kvDim = config.kvDim
        windows = (0..<layers).map { config.attentionWindow(layer: $0) }
        let chunk = self.maxChunk
        layerCapacity = windows.map { w in w.map { min(capacity, $0 - 1 + chunk) } ?? capacity }
        origins = Array(repeating: 0, count: layers)
        keys = layerCapacity.map { UnsafeMutablePointer<Float>.allocate(capacity: max(1, $0 * config.kvDim)) }
        values = layerCapacity.map { UnsafeMutablePointer<Float>.allocate(capacity: max(1, $0 * config.kvDim)) }
    }

    public func reset() { length = 0 }

    /// Bytes held by keys and values.
    public var bytes: Int { layerCapacity.reduce(0, +) * kvDim * 2 * MemoryLayout<Float>.stride }

    /// Makes room in every layer for `rows` more tokens after `length` (rows <= maxChunk, length + rows <=
    /// capacity): a rolling layer that would overflow keeps its last window - 1 rows, moved to row 0.
    func reserve(rows: Int) {
        precondition(rows <= maxChunk && length + rows <= capacity, "chunk larger than the cache was made for")
        for l in 0..<layers where length - origins[l] + rows > layerCapacity[l] {
            let keep = min(windows[l]! - 1, length - origins[l]), from = length - keep - origins[l]
            if keep > 0 {
                keys[l].update(from: keys[l] + from * kvDim, count: keep * kvDim)
                values[l].update(from: values[l] + from * kvDim, count: keep * kvDim)
            }
            origins[l] = length - keep
        }
    }

    deinit {
        keys.forEach { $0.deallocate() }
        values.forEach { $0.deallocate() }
    }
}

/// Scratch activations for up to `maxRows` rows, allocated once (llama2.c's RunState); forward allocates nothing.
public final class RunState {
    public let maxRows: Int
    public let x: UnsafeMutablePointer<Float>       // [rows, dim] residual stream
    public let xb: UnsafeMutablePointer<Float>      // [rows, dim] normed input
    public let xb2: UnsafeMutablePointer<Float>     // [rows, dim] block output before the residual add
    public let q: UnsafeMutablePointer<Float>       // [rows, qDim]
    public let att: UnsafeMutablePointer<Float>     // [rows, qDim]
    public let hb: UnsafeMutablePointer<Float>      // [rows, hidden] gate
    public let hb2: UnsafeMutablePointer<Float>     // [rows, hidden] up
    public let logits: UnsafeMutablePointer<Float>  // [rows, vocab]
    public let positions: UnsafeMutablePointer<Int32>
    let dim: Int

    public init(config c: LlamaConfig, maxRows: Int) {
        self.maxRows = maxRows
        let r = max(1, maxRows)
        dim = c.hiddenSize
        x = .allocate(capacity: r * c.hiddenSize)
        xb = .allocate(capacity: r * c.hiddenSize)
        xb2 = .allocate(capacity: r * c.hiddenSize)
        q = .allocate(capacity: r * c.qDim)
        att = .allocate(capacity: r * c.qDim)
        hb = .allocate(capacity: r * c.intermediateSize)
        hb2 = .allocate(capacity: r * c.intermediateSize)
        logits = .allocate(capacity: r * c.vocabSize)
        positions = .allocate(capacity: r)
    }

    deinit {
        for p in [x, xb, xb2, q, att, hb, hb2, logits] { p.deallocate() }
        positions.deallocate()
    }
}

/// What a block needs from its model while running.
public struct BlockContext {
    public var ops: NonlinearOps
    public var observer: LinearObserver?
    public var threads: Int
    /// When set (a module name relative to the block, e.g. "self_attn.v_proj"), the block returns right after
    /// that module ran: a calibration pass that only needs its inputs observed skips the rest. The block's
    /// output (x) is then not computed.
    public var stopAfter: String?
    public init(ops: NonlinearOps, observer: LinearObserver?, threads: Int, stopAfter: String? = nil) {
        self.ops = ops; self.observer = observer; self.threads = threads; self.stopAfter = stopAfter
    }
}

/// One decoder layer. The linear layers are `var`s: a quantizer swaps them one by one after loading.
public final class LlamaBlock {
    public let index: Int
    public let prefix: String  // "model.layers.<i>."
    public let config: LlamaConfig
    public var qProj: LinearLayer     // self_attn.q_proj [qDim, dim]
    public var kProj: LinearLayer     // self_attn.k_proj [kvDim, dim]
    public var vProj: LinearLayer     // self_attn.v_proj [kvDim, dim]
    public var oProj: LinearLayer     // self_attn.o_proj [dim, qDim]
    public var gateProj: LinearLayer  // mlp.gate_proj [hidden, dim]
    public var upProj: LinearLayer    // mlp.up_proj [hidden, dim]
    public var downProj: LinearLayer  // mlp.down_proj [dim, hidden]
    /// Sliding attention window of this layer (nil: full causal attention).
    public let attentionWindow: Int?
    /// RoPE inverse frequencies (config.ropeFrequencies).
    let ropeFrequencies: [Double]
    public let inputNorm: [Float]          // input_layernorm.weight [dim]
    public let postAttentionNorm: [Float]  // post_attention_layernorm.weight [dim]

    /// Relative module names in true-sequential order (GPTQ): each group's inputs are known once the previous
    /// groups ran.
    public static let sequentialGroups: [[String]] = [
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
        ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"],
    ]
    public static let linearNames: [String] = sequentialGroups.flatMap { $0 }

    /// Full module names ("model.layers.3.self_attn.q_proj") in true-sequential groups.
    public var linearGroups: [[String]] { LlamaBlock.sequentialGroups.map { $0.map { prefix + $0 } } }

    init(index: Int, config: LlamaConfig, linears: [String: LinearLayer], inputNorm: [Float], postNorm: [Float]) {
        self.index = index
        self.prefix = "model.layers.\(index)."
        self.config = config
        attentionWindow = config.attentionWindow(layer: index)
        ropeFrequencies = config.ropeFrequencies
        qProj = linears["self_attn.q_proj"]!; kProj = linears["self_attn.k_proj"]!; vProj = linears["self_attn.v_proj"]!
        oProj = linears["self_attn.o_proj"]!; gateProj = linears["mlp.gate_proj"]!; upProj = linears["mlp.up_proj"]!
        downProj = linears["mlp.down_proj"]!
        self.inputNorm = inputNorm
        self.postAttentionNorm = postNorm
    }

    /// The linear layer under a relative ("mlp.up_proj") or full ("model.layers.0.mlp.up_proj") name.
    public func linear(named name: String) -> LinearLayer? {
        switch name.hasPrefix(prefix) ? String(name.dropFirst(prefix.count)) : name {
        case "self_attn.q_proj": return qProj
        case "self_attn.k_proj": return kProj
        case "self_attn.v_proj": return vProj
        case "self_attn.o_proj": return oProj
        case "mlp.gate_proj": return gateProj
        case "mlp.up_proj": return upProj
        case "mlp.down_proj": return downProj
        default: return nil
        }
    }

    /// Replaces a linear layer (same in/out features required). Returns false for an unknown name.
    @discardableResult
    public func setLinear(_ layer: LinearLayer, named name: String) throws -> Bool {
        guard let old = linear(named: name) else { return false }
        guard old.inFeatures == layer.inFeatures, old.outFeatures == layer.outFeatures else {
            throw QuantKitError(.shape, "\(prefix)\(name): replacement is [\(layer.outFeatures), \(layer.inFeatures)], expected [\(old.outFeatures), \(old.inFeatures)]")
        }
        switch name.hasPrefix(prefix) ? String(name.dropFirst(prefix.count)) : name {
        case "self_attn.q_proj": qProj = layer
        case "self_attn.k_proj": kProj = layer
        case "self_attn.v_proj": vProj = layer
        case "self_attn.o_proj": oProj = layer
        case "mlp.gate_proj": gateProj = layer
        case "mlp.up_proj": upProj = layer
        default: downProj = layer
        }
        return true
    }

    @inline(__always)
    /// Runs one linear module; true when the context asks to stop after it.
    @discardableResult
    private func run(_ l: LinearLayer, _ rel: String, _ x: UnsafePointer<Float>, _ rows: Int,
                     _ out: UnsafeMutablePointer<Float>, _ ctx: BlockContext) -> Bool {
        l.forward(x, rows: rows, out: out, threads: ctx.threads)
        ctx.observer?.observe(module: prefix + rel, input: x, inFeatures: l.inFeatures, output: out,
                              outFeatures: l.outFeatures, rows: rows)
        return ctx.stopAfter == rel
    }

    /// Runs the block on `rows` hidden states `x` (in place, [rows, dim]). keys/values: this layer's cache
    /// ([start+rows, kvDim] at least); the new rows' K/V are written at row `start`, and new row r sees cached rows
    /// up to start + r (only the last `attentionWindow` of them with a sliding window). state.positions[0..<rows]
    /// must hold the rows' absolute positions (RoPE); `start` is a row of the buffer, which for a rolling cache is
    /// the absolute position less the buffer's origin. sequenceLength: the rows are independent sequences of
    /// this many rows each, side by side in x and in the cache (rows s*len..<(s+1)*len), all starting at `start`
    /// (which must then be 0); attention stays inside each sequence. nil: one sequence.
    /// outputFrom: only rows outputFrom..< of each sequence leave the block, moved to the front of x in order
    /// ([sequences * (seqLen - outputFrom), dim]); every row still writes its K/V. The last block of a pass whose
    /// caller scores only a suffix of each window skips the attention, o_proj and MLP work of the other rows, as
    /// llama.cpp does for tokens whose logits are not requested. Only for row-independent layers and ops with no
    /// observer, and 4+ kept rows: the kept rows' results are then bit for bit those of the full block.
    public func forward(_ x: UnsafeMutablePointer<Float>, rows: Int, start: Int, keys: UnsafeMutablePointer<Float>,
                        values: UnsafeMutablePointer<Float>, state s: RunState, context ctx: BlockContext,
                        sequenceLength: Int? = nil, outputFrom: Int = 0) {
        let seqLen = sequenceLength ?? rows
        precondition(seqLen > 0 && rows % seqLen == 0 && (seqLen == rows || start == 0), "bad sequence layout")
        precondition(outputFrom == 0 || (ctx.observer == nil && ctx.stopAfter == nil && outputFrom < seqLen),
                     "row pruning needs a full pass without an observer")
        // The plain pass, with each mode in one step: projections may stop early (calibration capture), row
        // pruning keeps the scored rows only, attention stays inside each packed sequence.
        if projectQKV(x, rows: rows, start: start, keys: keys, values: values, state: s, context: ctx) { return }
        let kept = keepRows(x, rows: rows, sequenceLength: seqLen, outputFrom: outputFrom, state: s)
        if attend(x, sequences: rows / seqLen, sequenceLength: seqLen, kept: kept, start: start + outputFrom, keys: keys,
                  values: values, state: s, context: ctx) { return }
        mlp(x, rows: rows / seqLen * kept, state: s, context: ctx)
    }

    /// `forward` of one sequence in two halves, for layer-wise searches that vary only the MLP and so re-run only
    /// that half: `forwardAttention` leaves x holding the residual stream after attention (the MLP's input) and
    /// `forwardMLP` continues from it; together they are `forward` bit for bit. forwardAttention returns true when
    /// the context stopped after one of its modules (x is then not updated); forwardMLP may stop like `forward`.
    @discardableResult
    public func forwardAttention(_ x: UnsafeMutablePointer<Float>, rows: Int, start: Int, keys: UnsafeMutablePointer<Float>,
                                 values: UnsafeMutablePointer<Float>, state s: RunState, context ctx: BlockContext) -> Bool {
        if projectQKV(x, rows: rows, start: start, keys: keys, values: values, state: s, context: ctx) { return true }
        return attend(x, sequences: 1, sequenceLength: rows, kept: rows, start: start, keys: keys, values: values, state: s,
                      context: ctx)
    }

    public func forwardMLP(_ x: UnsafeMutablePointer<Float>, rows: Int, state s: RunState, context ctx: BlockContext) {
        mlp(x, rows: rows, state: s, context: ctx)
    }

    /// input norm, then q, k, v of every row (k and v into the cache at `start`), RoPE on q and k. True when the
    /// context stops after one of them.
    private func projectQKV(_ x: UnsafeMutablePointer<Float>, rows: Int, start: Int, keys: UnsafeMutablePointer<Float>,
                            values: UnsafeMutablePointer<Float>, state s: RunState, context ctx: BlockContext) -> Bool {
        let c = config
        let kvDim = c.kvDim
        inputNorm.withUnsafeBufferPointer {
            ctx.ops.rmsNorm(x, weight: $0.baseAddress!, rows: rows, dim: c.hiddenSize, eps: Float(c.rmsNormEps), out: s.xb)
        }
        let kOut = keys + start * kvDim, vOut = values + start * kvDim
        if run(qProj, "self_attn.q_proj", s.xb, rows, s.q, ctx) { return true }
        if run(kProj, "self_attn.k_proj", s.xb, rows, kOut, ctx) { return true }
        if run(vProj, "self_attn.v_proj", s.xb, rows, vOut, ctx) { return true }
        ctx.ops.rope(s.q, rows: rows, heads: c.numAttentionHeads, headDim: c.headDimension, positions: s.positions,
                     frequencies: ropeFrequencies)
        ctx.ops.rope(kOut, rows: rows, heads: c.kvHeads, headDim: c.headDimension, positions: s.positions,
                     frequencies: ropeFrequencies)
        return false
    }

    /// Row pruning: rows outputFrom..< of each sequence move to the front of x and q (never past their source,
    /// so a forward copy is safe). Returns the rows kept per sequence.
    private func keepRows(_ x: UnsafeMutablePointer<Float>, rows: Int, sequenceLength seqLen: Int, outputFrom: Int,
                          state s: RunState) -> Int {
        let kept = seqLen - outputFrom
        guard outputFrom > 0 else { return kept }
        let dim = config.hiddenSize, qDim = config.qDim
        for q in 0..<(rows / seqLen) {
            let from = q * seqLen + outputFrom, to = q * kept
            (s.q + to * qDim).update(from: s.q + from * qDim, count: kept * qDim)
            (x + to * dim).update(from: x + from * dim, count: kept * dim)
        }
        return kept
    }

    /// Attention of the kept rows inside each sequence (queries from position `start` on), o_proj, residual add.
    /// True when the context stops after o_proj.
    private func attend(_ x: UnsafeMutablePointer<Float>, sequences: Int, sequenceLength seqLen: Int, kept: Int, start: Int,
                        keys: UnsafeMutablePointer<Float>, values: UnsafeMutablePointer<Float>, state s: RunState,
                        context ctx: BlockContext) -> Bool {
        let c = config
        let kvDim = c.kvDim, qDim = c.qDim, outRows = sequences * kept
        for q in 0..<sequences {
            ctx.ops.attention(q: s.q + q * kept * qDim, keys: keys + q * seqLen * kvDim, values: values + q * seqLen * kvDim,
                              tokens: kept, start: start, nHeads: c.numAttentionHeads, nKVHeads: c.kvHeads,
                              headDim: c.headDimension, window: attentionWindow, out: s.att + q * kept * qDim,
                              threads: ctx.threads)
        }
        if run(oProj, "self_attn.o_proj", s.att, outRows, s.xb2, ctx) { return true }
        ctx.ops.residualAdd(x, s.xb2, count: outRows * c.hiddenSize)
        return false
    }

    /// post-attention norm, SwiGLU MLP, residual add (stops early like the projections when asked).
    private func mlp(_ x: UnsafeMutablePointer<Float>, rows: Int, state s: RunState, context ctx: BlockContext) {
        let c = config
        let dim = c.hiddenSize
        postAttentionNorm.withUnsafeBufferPointer {
            ctx.ops.rmsNorm(x, weight: $0.baseAddress!, rows: rows, dim: dim, eps: Float(c.rmsNormEps), out: s.xb)
        }
        if run(gateProj, "mlp.gate_proj", s.xb, rows, s.hb, ctx) { return }
        if run(upProj, "mlp.up_proj", s.xb, rows, s.hb2, ctx) { return }
        ctx.ops.swiglu(gate: s.hb, up: s.hb2, count: rows * c.intermediateSize)
        if c.downProjInputHadamard == true {
            // Rotated checkpoints: the online half of down_proj's rotation.
            ctx.ops.hadamard(s.hb, rows: rows, n: c.intermediateSize, threads: ctx.threads)
        }
        if run(downProj, "mlp.down_proj", s.hb, rows, s.xb2, ctx) { return }
        ctx.ops.residualAdd(x, s.xb2, count: rows * dim)
    }
}

/// A Llama-family causal LM (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM).
public final class LlamaModel {
    public let config: LlamaConfig
    /// model.embed_tokens.weight [vocab, dim], stored dtype.
    public let embedding: Tensor
    public var blocks: [LlamaBlock]
    /// model.norm.weight [dim]
    public let finalNorm: [Float]
    /// lm_head.weight [vocab, dim] (the embedding when tied). Always dense unless swapped.
    public var lmHead: LinearLayer
    public var ops: NonlinearOps = FloatOps()
    public var observer: LinearObserver?
    public var threads: Int = Parallel.defaultThreads
    /// A label for reports (the path it was loaded from).
    public var name: String
    /// Where the weights came from (kept alive: tensors may be views into its mapping).
    public let source: WeightSource

    public var context: BlockContext { BlockContext(ops: ops, observer: observer, threads: threads) }

    /// Builds the model from weights with HF names, verifying every tensor name and shape. All problems are
    /// listed in one error.
    public init(config: LlamaConfig, source: WeightSource, backend: LinearBackend = DenseBackend(),
                name: String = "model") throws {
        try config.validate(source: name)
        self.config = config
        self.name = name
        self.source = source
        let rec = RecordingSource(source)
        var missing: [String] = [], misshaped: [String] = [], unexpected: [String] = []
        let dim = config.hiddenSize, vocab = config.vocabSize

        var nonFinite: NonFiniteWeight? = nil
        func expect(_ n: String, _ shape: [Int]) -> Tensor? {
            guard source.contains(n) else { missing.append(n); return nil }
            let read: Tensor?
            do { read = try rec.tensor(n) } catch let e as NonFiniteWeight { if nonFinite == nil { nonFinite = e }; return nil } catch { read = nil }
            guard let t = read else { missing.append(n); return nil }
            guard t.shape == shape, t.dtype.isFloat else {
                misshaped.append("\(n) (expected \(shape), got \(t.dtype.rawValue) \(t.shape))"); return nil
            }
            return t
        }
        func floats(_ t: Tensor?) -> [Float] { t?.floats() ?? [] }

        let emb = expect("model.embed_tokens.weight", [vocab, dim])
        let norm = floats(expect("model.norm.weight", [dim]))
        var head: Tensor? = nil
        if config.tieWordEmbeddings {
            if source.contains("lm_head.weight") { _ = expect("lm_head.weight", [vocab, dim]) }  // present but unused
            head = emb
        } else {
            head = expect("lm_head.weight", [vocab, dim])
        }
        let dims: [String: (out: Int, in: Int, bias: Bool)] = [
            "self_attn.q_proj": (config.qDim, dim, config.hasQKVBias), "self_attn.k_proj": (config.kvDim, dim, config.hasQKVBias),
            "self_attn.v_proj": (config.kvDim, dim, config.hasQKVBias), "self_attn.o_proj": (dim, config.qDim, config.hasOBias),
            "mlp.gate_proj": (config.intermediateSize, dim, false), "mlp.up_proj": (config.intermediateSize, dim, false),
            "mlp.down_proj": (dim, config.intermediateSize, false),
        ]
        var built: [LlamaBlock] = []
        for i in 0..<config.numHiddenLayers {
            let p = "model.layers.\(i)."
            let inNorm = floats(expect(p + "input_layernorm.weight", [dim]))
            let postNorm = floats(expect(p + "post_attention_layernorm.weight", [dim]))
            var linears: [String: LinearLayer] = [:]
            for rel in LlamaBlock.linearNames {
                let full = p + rel
                let d = dims[rel]!
                var ok = true
                // Dense-style tensors are checked here; other formats are checked by their backend.
                if source.contains(full + ".weight"), let t = try? source.tensor(full + ".weight"), t.shape != [d.out, d.in] {
                    misshaped.append("\(full).weight (expected \([d.out, d.in]), got \(t.dtype.rawValue) \(t.shape))"); ok = false
                }
                if d.bias {
                    if !source.contains(full + ".bias") { missing.append(full + ".bias"); ok = false }
                } else if source.contains(full + ".bias") {
                    unexpected.append(full + ".bias"); ok = false
                }
                guard ok else { continue }
                let before = rec.missing.count
                do {
                    let l = try backend.makeLinear(name: full, source: rec)
                    if l.inFeatures != d.in || l.outFeatures != d.out {
                        misshaped.append("\(full) (expected [\(d.out), \(d.in)], got [\(l.outFeatures), \(l.inFeatures)])")
                    } else {
                        linears[rel] = l
                    }
                } catch let e as NonFiniteWeight {
                    if nonFinite == nil { nonFinite = e }
                } catch {
                    if rec.missing.count > before { missing.append(contentsOf: rec.missing[before...]) } else {
                        misshaped.append("\(full): \(error)")
                    }
                }
            }
            if nonFinite != nil { break }  // reported below; the rest is not read
            if missing.isEmpty && misshaped.isEmpty && unexpected.isEmpty {
                built.append(LlamaBlock(index: i, config: config, linears: linears, inputNorm: inNorm, postNorm: postNorm))
            }
        }
        if let all = allTensorNames(source) {
            for n in all where !rec.accessed.contains(n) && !n.hasSuffix("rotary_emb.inv_freq") && !unexpected.contains(n) {
                if missing.contains(n) || misshaped.contains(where: { $0.hasPrefix(n + " ") }) { continue }
                unexpected.append(n)
            }
        }
        if let e = nonFinite { throw QuantKitError(.numeric, e.message) }
        if !missing.isEmpty || !misshaped.isEmpty || !unexpected.isEmpty {
            var parts: [String] = []
            if !missing.isEmpty { parts.append("missing \(missing.count): " + missing.joined(separator: ", ")) }
            if !misshaped.isEmpty { parts.append("mis-shaped \(misshaped.count): " + misshaped.joined(separator: ", ")) }
            if !unexpected.isEmpty { parts.append("unexpected \(unexpected.count): " + unexpected.sorted().joined(separator: ", ")) }
            throw QuantKitError(.shape, "\(name): checkpoint does not match the \(config.modelType) config: " + parts.joined(separator: "; "))
        }
        embedding = emb!
        finalNorm = norm
        blocks = built
        lmHead = try DenseLinear(weight: head!, name: config.tieWordEmbeddings ? "model.embed_tokens" : "lm_head")
        ops = FloatOps(ropeTable: RopeTable(headDim: config.headDimension, frequencies: config.ropeFrequencies,
                                            maxPositions: min(config.maxPositionEmbeddings, 8192)))
    }

    /// Loads a Hugging Face directory (config.json + safetensors), a llama GGUF file (llama.cpp's activation
    /// contract) or a llama2.c .bin checkpoint.
    public static func load(path: String, backend: LinearBackend = DenseBackend()) throws -> LlamaModel {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw QuantKitError(.io, "\(path): no such file or directory")
        }
        if !isDir.boolValue && GGUFFile.isGGUF(path) {
            guard backend is DenseBackend else {
                throw QuantKitError(.unsupported, "\(path): a GGUF file runs its own stored types; it cannot take another linear backend")
            }
            return try GGUFLlama.load(path: path)
        }
        if !isDir.boolValue {
            let (cfg, weights) = try Llama2C.load(path: path)
            return try LlamaModel(config: cfg, source: weights, backend: backend, name: path)
        }
        let cfgPath = URL(fileURLWithPath: path).appendingPathComponent("config.json").path
        let cfg = try LlamaConfig.load(path: cfgPath)
        let ckpt = try SafetensorsCheckpoint(path: path)
        return try LlamaModel(config: cfg, source: ckpt, backend: backend, name: path)
    }

    /// A cache for `capacity` tokens. With maxChunk (the most rows one forward call appends), sliding-window
    /// layers keep a rolling buffer of window - 1 + maxChunk rows instead of `capacity`.
    public func makeCache(capacity: Int, maxChunk: Int? = nil) -> KVCache {
        KVCache(config: config, capacity: capacity, maxChunk: maxChunk)
    }
    public func makeState(maxRows: Int) -> RunState { RunState(config: config, maxRows: maxRows) }

    /// Embedding rows (converted to Float32) for `tokens` into x [tokens.count, dim]. Ids must be < vocab.
    public func embed(_ tokens: UnsafeBufferPointer<Int32>, into x: UnsafeMutablePointer<Float>) {
        let dim = config.hiddenSize
        // A tied head that packed its panels released the row-major table: read the rows there (same values),
        // so the table is held once.
        let head = lmHead as? DenseLinear
        let panels = head?.weight.storage === embedding.storage && head?.weight.dtype == embedding.dtype ? head?.packedPanels : nil
        for (r, t) in tokens.enumerated() {
            let dst = x + r * dim
            if let panels { panels.copyRow(Int(t), into: dst); continue }
            let off = Int(t) * dim
            switch embedding.dtype {
            case .f32: dst.update(from: embedding.pointer(as: Float.self) + off, count: dim)
            case .f16: let p = embedding.pointer(as: Float16.self) + off; for i in 0..<dim { dst[i] = Float(p[i]) }
            case .bf16: let p = embedding.pointer(as: UInt16.self) + off; for i in 0..<dim { dst[i] = bf16ToFloat(p[i]) }
            default: break
            }
        }
    }

    /// Final RMSNorm of `rows` hidden states into out.
    public func applyFinalNorm(_ x: UnsafePointer<Float>, rows: Int, out: UnsafeMutablePointer<Float>) {
        finalNorm.withUnsafeBufferPointer {
            ops.rmsNorm(x, weight: $0.baseAddress!, rows: rows, dim: config.hiddenSize, eps: Float(config.rmsNormEps), out: out)
        }
    }

    /// Checks token ids against the vocabulary (user input).
    public func validate(tokens: [Int32]) throws {
        if let bad = tokens.first(where: { $0 < 0 || Int($0) >= config.vocabSize }) {
            throw QuantKitError(.input, "token id \(bad) is outside the model's vocabulary (0..<\(config.vocabSize))")
        }
    }

    /// Runs `tokens` after what `cache` holds (prefill of a window, or one decode step). Returns state.logits,
    /// holding [tokens.count - logitsFrom, vocab] logits for rows logitsFrom..<tokens.count.
    @discardableResult
    public func forward(_ tokens: [Int32], cache: KVCache, state: RunState, logitsFrom: Int = 0) -> UnsafeMutablePointer<Float> {
        cache.reserve(rows: tokens.count)
        return run(tokens, start: cache.length, sequenceLength: tokens.count, cache: cache, state: state, logitsFrom: logitsFrom)
    }

    /// Whether independent sequences may share one forward pass (`forwardSequences`) with results identical to
    /// running them one by one: every linear layer and the non-linear ops compute each row from that row alone
    /// (not so for a simulated NPU that quantizes activations per tensor), and no observer is watching.
    public var canBatchSequences: Bool {
        observer == nil && ops.rowIndependent && lmHead.rowIndependent
            && blocks.allSatisfy { b in LlamaBlock.linearNames.allSatisfy { b.linear(named: $0)!.rowIndependent } }
    }

    /// Runs `count` fresh sequences of `length` tokens each (`tokens` holds them back to back) in one pass, as
    /// llama.cpp's perplexity tool does with several sequences per batch: the linear layers see all rows at once
    /// (fewer, larger GEMMs), attention stays inside each sequence. The cache (capacity >= count * length) is
    /// overwritten. Returns state.logits: [count][length - logitsFrom][vocab].
    @discardableResult
    public func forwardSequences(_ tokens: [Int32], count: Int, cache: KVCache, state: RunState,
                                 logitsFrom: Int = 0) -> UnsafeMutablePointer<Float> {
        precondition(count > 0 && tokens.count % count == 0, "sequences of unequal length")
        cache.reset()
        cache.reserve(rows: tokens.count)
        return run(tokens, start: 0, sequenceLength: tokens.count / count, cache: cache, state: state, logitsFrom: logitsFrom)
    }

    /// The forward pass behind `forward` (one sequence continuing at `start`) and `forwardSequences` (sequences of
    /// `sequenceLength` rows, all from 0). The head runs once over rows logitsFrom..< of every sequence.
    private func run(_ tokens: [Int32], start: Int, sequenceLength length: Int, cache: KVCache, state: RunState,
                     logitsFrom: Int) -> UnsafeMutablePointer<Float> {
        let rows = tokens.count
        precondition(rows <= state.maxRows, "window larger than the allocated state")
        guard rows > 0 else { return state.logits }
        for r in 0..<rows { state.positions[r] = Int32(start + r % length) }
        tokens.withUnsafeBufferPointer { embed($0, into: state.x) }
        let ctx = context
        let from = min(max(0, logitsFrom), length)
        let n = length - from, count = rows / length
        // The last block hands on only the rows the head will read, when that cannot change their results: the
        // layers are row-independent and the kept rows still make a GEMM (the GEMV sums in another order).
        let pruneFrom = n > 0 && from > 0 && count * n > gemvMaxRows && canBatchSequences ? from : 0
        for (l, b) in blocks.enumerated() {
            b.forward(state.x, rows: rows, start: start - cache.origins[l], keys: cache.keys[l], values: cache.values[l], state: state,
                      context: ctx, sequenceLength: length, outputFrom: l == blocks.count - 1 ? pruneFrom : 0)
        }
        cache.length = start + rows
        if n > 0 {
            let dim = config.hiddenSize
            // The scored rows of every sequence, normed side by side, so the head runs as one GEMM.
            let stride = pruneFrom > 0 ? n : length, offset = pruneFrom > 0 ? 0 : from
            for s in 0..<count {
                applyFinalNorm(state.x + (s * stride + offset) * dim, rows: n, out: state.xb + s * n * dim)
            }
            lmHead.forward(state.xb, rows: count * n, out: state.logits, threads: threads)
            observer?.observe(module: "lm_head", input: state.xb, inFeatures: lmHead.inFeatures, output: state.logits,
                              outFeatures: lmHead.outFeatures, rows: count * n)
        }
        return state.logits
    }

    /// Logits [tokens.count * vocab] of one fresh sequence (convenience for tests and tools).
    public func logits(_ tokens: [Int32]) throws -> [Float] {
        try validate(tokens: tokens)
        let cache = makeCache(capacity: tokens.count)
        let state = makeState(maxRows: tokens.count)
        let p = forward(tokens, cache: cache, state: state)
        return Array(UnsafeBufferPointer(start: p, count: tokens.count * config.vocabSize))
    }

    /// Greedy generation: prefill the prompt, then one token at a time through the KV cache. Stops after
    /// maxTokens, at a stop token (not included), or when the context is full.
    public func generateGreedy(prompt: [Int32], maxTokens: Int, stopTokens: Set<Int32> = [],
                               onToken: ((Int32) -> Void)? = nil) throws -> [Int32] {
        guard !prompt.isEmpty else { throw QuantKitError(.input, "generation needs at least one prompt token") }
        try validate(tokens: prompt)
        try UserLimits.check(maxTokens, "--max-tokens", 1...UserLimits.contextTokens)
        let capacity = min(prompt.count + maxTokens, max(config.maxPositionEmbeddings, prompt.count))
        // Sliding-window layers keep a rolling buffer: the prompt is the largest chunk.
        let cache = makeCache(capacity: capacity, maxChunk: prompt.count)
        let state = makeState(maxRows: prompt.count)
        var out: [Int32] = []
        var logits = forward(prompt, cache: cache, state: state, logitsFrom: prompt.count - 1)
        let vocab = config.vocabSize
        while out.count < maxTokens {
            var best = 0
            for v in 1..<vocab where logits[v] > logits[best] { best = v }
            let next = Int32(best)
            if stopTokens.contains(next) { break }
            out.append(next)
            onToken?(next)
            if cache.length >= cache.capacity || out.count == maxTokens { break }
            logits = forward([next], cache: cache, state: state)
        }
        return out
    }
}

/// Records which tensors were read and which were asked for but absent, and refuses a float tensor holding a NaN
/// or an infinity the first time it is read (every format's weights reach the model through here: safetensors
/// and quantized directories' scales as stored, llama2.c views, GGUF tensors decoded to Float32).
final class RecordingSource: WeightSource {
    let base: WeightSource
    var accessed: Set<String> = []
    var missing: [String] = []
    init(_ base: WeightSource) { self.base = base }
    func tensor(_ name: String) throws -> Tensor {
        guard base.contains(name) else { missing.append(name); return try base.tensor(name) }
        let t = try base.tensor(name)
        if !accessed.contains(name) {
            try checkFinite(t, name: name)
            // The check read every page: drop them, so the whole file never sits resident at once. Whoever uses
            // the tensor (packing, quantizing one layer) faults its pages back and releases them after.
            t.storage.releaseResidentPages()
        }
        accessed.insert(name)
        return t
    }
    func contains(_ name: String) -> Bool { base.contains(name) }

    func checkFinite(_ t: Tensor, name: String) throws {
        guard t.dtype.isFloat, let i = FiniteCheck.firstNonFinite(t) else { return }
        throw NonFiniteWeight(message: "\(weightFile(base, name)): tensor '\(name)' holds a non-finite value (\(FiniteCheck.describe(t, at: i)) at element \(i) of shape \(t.shape)); the weights are damaged")
    }
}

/// A tensor holding NaN or Inf: the model refuses to load (never a NaN perplexity with exit 0).
struct NonFiniteWeight: Error { let message: String }

/// The file a source's tensor comes from, for messages.
func weightFile(_ s: WeightSource, _ name: String) -> String {
    if let c = s as? SafetensorsCheckpoint { return c.path(of: name) ?? c.files.first?.path ?? "checkpoint" }
    if let d = s as? TensorDictionary { return d.label }
    if let g = s as? GGUFWeights { return g.file.path }
    if let r = s as? RecordingSource { return weightFile(r.base, name) }
    return "weights"
}

/// Every tensor name of a source that can list them.
func allTensorNames(_ s: WeightSource) -> [String]? {
    if let c = s as? SafetensorsCheckpoint { return c.names }
    if let d = s as? TensorDictionary { return d.names }
    if let g = s as? GGUFWeights { return g.names }
    if let r = s as? RecordingSource { return allTensorNames(r.base) }
    return nil
}
