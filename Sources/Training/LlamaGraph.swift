import Foundation
import Kernels
import Models
import TensorCore

/// The training graph of a Llama-family model: a forward pass over `batch` sequences of `sequenceLength` tokens
/// that keeps what the backward pass needs, and the backward pass itself, writing every parameter's gradient
/// into the parameter set. Same math as the engine's LlamaBlock (RMSNorm, RoPE rotate_half, grouped-query causal
/// attention, SwiGLU, tied or separate head); the linear layers multiply by their fake-quantized weights.
/// Written once over the number type: Float runs on the GEMM kernels, Double on plain loops (gradient checks).
final class LlamaGraph<T: TrainScalar> {
    let config: LlamaConfig
    let batch: Int, sequenceLength: Int, rows: Int
    let params: ParameterSet<T>
    let activations: ActivationFakeQuant
    var threads: Int
    /// Per layer, in LlamaBlock.linearNames order: q, k, v, o, gate, up, down.
    let linears: [[FakeQuantWeight<T>]]
    let headName: String

    private let dim: Int, qDim: Int, kvDim: Int, hidden: Int, vocab: Int, heads: Int, kvHeads: Int, headDim: Int
    private let eps: Double
    private let cosTable: [T], sinTable: [T]
    /// Rotated checkpoints: T = H/sqrt(n) [hidden, hidden], applied to down_proj's input (h <- h T) as the engine
    /// applies it online; the backward multiplies by its transpose.
    private let hadamard: [T]?

    /// What one layer's forward keeps for the backward.
    private final class LayerTape {
        let xIn, xb, xbq, q, k, v, probs, att, attq, xMid, xb2, xb2q, gate, up, h, hq: UnsafeMutablePointer<T>
        let r1, r2: UnsafeMutablePointer<T>
        let quantizedInputs: Bool
        private var owned: [UnsafeMutablePointer<T>] = []

        init(rows n: Int, dim: Int, qDim: Int, kvDim: Int, hidden: Int, probs: Int, quantizedInputs: Bool) {
            func alloc(_ c: Int) -> UnsafeMutablePointer<T> { .allocate(capacity: max(1, c)) }
            xIn = alloc(n * dim); xb = alloc(n * dim); q = alloc(n * qDim); k = alloc(n * kvDim); v = alloc(n * kvDim)
            self.probs = alloc(probs); att = alloc(n * qDim); xMid = alloc(n * dim); xb2 = alloc(n * dim)
            gate = alloc(n * hidden); up = alloc(n * hidden); h = alloc(n * hidden)
            r1 = alloc(n); r2 = alloc(n)
            self.quantizedInputs = quantizedInputs
            // Without activation quantization a linear's input is the tensor itself.
            xbq = quantizedInputs ? alloc(n * dim) : xb
            attq = quantizedInputs ? alloc(n * qDim) : att
            xb2q = quantizedInputs ? alloc(n * dim) : xb2
            hq = quantizedInputs ? alloc(n * hidden) : h
            owned = [xIn, xb, q, k, v, self.probs, att, xMid, xb2, gate, up, h, r1, r2] + (quantizedInputs ? [xbq, attq, xb2q, hq] : [])
        }
        deinit { owned.forEach { $0.deallocate() } }
    }

    private let tapes: [LayerTape]
    private var tokens: [Int32] = []
    private let xFinal, rFinal, xf: UnsafeMutablePointer<T>
    /// The head's input as it multiplies: xf, or its int8 round trip when the activations quantize the head's input.
    private let headInput: UnsafeMutablePointer<T>
    private let quantizedHeadInput: Bool
    let logits: UnsafeMutablePointer<T>
    // Backward work buffers.
    private let dx, dxb, dq, dk, dv, datt, dgate, dup, dh, tmpDim: UnsafeMutablePointer<T>
    private let dEffective: UnsafeMutablePointer<T>

    init(config: LlamaConfig, params: ParameterSet<T>, weights: [String: WeightFakeQuant], zeros: [String: [T]],
         groups: [String: [Int32]], activations: ActivationFakeQuant, batch: Int, sequenceLength: Int, threads: Int) {
        self.config = config
        self.batch = batch; self.sequenceLength = sequenceLength; rows = batch * sequenceLength
        self.params = params
        self.activations = activations
        self.threads = threads
        dim = config.hiddenSize; qDim = config.qDim; kvDim = config.kvDim; hidden = config.intermediateSize
        vocab = config.vocabSize; heads = config.numAttentionHeads; kvHeads = config.kvHeads; headDim = config.headDimension
        eps = config.rmsNormEps
        headName = config.tieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight"
        let freqs = config.ropeFrequencies, half = headDim / 2
        var c = [T](repeating: 0, count: sequenceLength * half), s = c
        for p in 0..<sequenceLength {
            for i in 0..<half {
                let a = Double(p) * freqs[i]
                // As the engine's table: angles in Double, cos/sin rounded once to the working type.
                c[p * half + i] = T(Foundation.cos(a)); s[p * half + i] = T(Foundation.sin(a))
            }
        }
        cosTable = c; sinTable = s
        if config.downProjInputHadamard == true, let h = Hadamard.signMatrix(order: config.intermediateSize) {
            let scale = 1 / Double(config.intermediateSize).squareRoot()
            hadamard = h.map { T(Double($0) * scale) }
        } else {
            hadamard = nil
        }
        let dims: [String: (Int, Int)] = [
            "self_attn.q_proj": (config.qDim, dim), "self_attn.k_proj": (config.kvDim, dim), "self_attn.v_proj": (config.kvDim, dim),
            "self_attn.o_proj": (dim, config.qDim), "mlp.gate_proj": (config.intermediateSize, dim),
            "mlp.up_proj": (config.intermediateSize, dim), "mlp.down_proj": (dim, config.intermediateSize),
        ]
        linears = (0..<config.numHiddenLayers).map { l in
            LlamaBlock.linearNames.map { rel in
                let name = "model.layers.\(l).\(rel)", d = dims[rel]!
                return FakeQuantWeight(name: name, outFeatures: d.0, inFeatures: d.1, mode: weights[name], params: params,
                                       zeros: zeros[name] ?? [], groups: groups[name] ?? [])
            }
        }
        let n = rows
        let quantizedInputs = !ActivationQuantizer.isIdentity(activations)
        tapes = (0..<config.numHiddenLayers).map { _ in
            LayerTape(rows: n, dim: config.hiddenSize, qDim: config.qDim, kvDim: config.kvDim, hidden: config.intermediateSize,
                      probs: batch * config.numAttentionHeads * sequenceLength * sequenceLength, quantizedInputs: quantizedInputs)
        }
        func alloc(_ c: Int) -> UnsafeMutablePointer<T> {
            let p = UnsafeMutablePointer<T>.allocate(capacity: max(1, c)); p.initialize(repeating: 0, count: max(1, c)); return p
        }
        xFinal = alloc(n * dim); rFinal = alloc(n); xf = alloc(n * dim); logits = alloc(n * vocab)
        quantizedHeadInput = ActivationQuantizer.quantizesInput(activations, key: "lm_head")
        headInput = quantizedHeadInput ? alloc(n * dim) : xf
        dx = alloc(n * dim); dxb = alloc(n * dim); dq = alloc(n * qDim); dk = alloc(n * kvDim); dv = alloc(n * kvDim)
        datt = alloc(n * qDim); dgate = alloc(n * hidden); dup = alloc(n * hidden); dh = alloc(n * hidden); tmpDim = alloc(n * dim)
        let largest = max(vocab * dim, max(hidden * dim, max(qDim * dim, kvDim * dim)))
        dEffective = alloc(largest)
    }

    deinit {
        for p in [xFinal, rFinal, xf, logits, dx, dxb, dq, dk, dv, datt, dgate, dup, dh, tmpDim, dEffective] { p.deallocate() }
        if quantizedHeadInput { headInput.deallocate() }
    }

    // MARK: forward

    /// Runs the model on `tokens` ([batch, sequenceLength], row-major); logits land in `logits` [rows, vocab].
    func forward(tokens: [Int32]) {
        // TrainableLlama.loss checked the count and the ids.
        self.tokens = tokens
        for layer in linears { for l in layer { l.refresh(params, threads: threads) } }
        let x = UnsafeMutablePointer<T>.allocate(capacity: rows * dim)
        defer { x.deallocate() }
        let emb = params.value("model.embed_tokens.weight")
        for (i, t) in tokens.enumerated() { (x + i * dim).update(from: emb + Int(t) * dim, count: dim) }
        for l in 0..<config.numHiddenLayers { layerForward(l, x) }
        xFinal.update(from: x, count: rows * dim)
        rmsNorm(x, params.value("model.norm.weight"), out: xf, inverseRMS: rFinal)
        if quantizedHeadInput {
            ActivationQuantizer.forward(activations, key: "lm_head", x: xf, rows: rows, cols: dim, out: headInput, threads: threads)
        }
        T.productNT(headInput, m: rows, k: dim, params.value(headName), n: vocab, out: logits, accumulate: false, threads: threads)
        ActivationQuantizer.output(activations, key: "lm_head", logits, rows: rows, cols: vocab, threads: threads)
    }

    /// out = x W_effᵀ for linear i of layer l, then the output's int8 round trip where the activations quantize it.
    private func linear(_ l: Int, _ i: Int, _ x: UnsafePointer<T>, _ out: UnsafeMutablePointer<T>) {
        let w = linears[l][i]
        T.productNT(x, m: rows, k: w.inFeatures, w.effective, n: w.outFeatures, out: out, accumulate: false, threads: threads)
        ActivationQuantizer.output(activations, key: w.name, out, rows: rows, cols: w.outFeatures, threads: threads)
    }

    private func layerForward(_ l: Int, _ x: UnsafeMutablePointer<T>) {
        let t = tapes[l], p = "model.layers.\(l)."
        t.xIn.update(from: x, count: rows * dim)
        rmsNorm(x, params.value(p + "input_layernorm.weight"), out: t.xb, inverseRMS: t.r1)
        ActivationQuantizer.forward(activations, key: p + "self_attn.q_proj", x: t.xb, rows: rows, cols: dim, out: t.xbq, threads: threads)
        linear(l, 0, t.xbq, t.q); linear(l, 1, t.xbq, t.k); linear(l, 2, t.xbq, t.v)
        rope(t.q, heads: heads, inverse: false)
        rope(t.k, heads: kvHeads, inverse: false)
        attentionForward(t)
        ActivationQuantizer.forward(activations, key: p + "self_attn.o_proj", x: t.att, rows: rows, cols: qDim, out: t.attq, threads: threads)
        linear(l, 3, t.attq, tmpDim)
        add(x, tmpDim, rows * dim)
        t.xMid.update(from: x, count: rows * dim)
        rmsNorm(x, params.value(p + "post_attention_layernorm.weight"), out: t.xb2, inverseRMS: t.r2)
        ActivationQuantizer.forward(activations, key: p + "mlp.gate_proj", x: t.xb2, rows: rows, cols: dim, out: t.xb2q, threads: threads)
        linear(l, 4, t.xb2q, t.gate); linear(l, 5, t.xb2q, t.up)
        let g = SendablePointer(t.gate), u = SendablePointer(t.up), h = SendablePointer(t.h)
        Parallel.forRanges(rows * hidden, threads: threads, minPerThread: 1 << 13) { r in
            for i in r { let a = g[i]; h[i] = a / (1 + T.exponential(-a)) * u[i] }
        }
        rotateDownInput(t.h, transposed: false)
        ActivationQuantizer.forward(activations, key: p + "mlp.down_proj", x: t.h, rows: rows, cols: hidden, out: t.hq, threads: threads)
        linear(l, 6, t.hq, tmpDim)
        add(x, tmpDim, rows * dim)
    }

    // MARK: backward

    /// Gradients of every parameter (accumulated into `params.grads`, which the caller zeroes) from the gradient of
    /// the loss with respect to the logits of the last forward.
    func backward(dLogits: UnsafePointer<T>) {
        // Head: dW += dLogitsᵀ xf; d xf = dLogits W.
        T.productTN(dLogits, m: rows, n: vocab, headInput, k: dim, out: dEffective, accumulate: false, threads: threads)
        add(params.grad(headName), dEffective, vocab * dim)
        T.productNN(dLogits, m: rows, k: vocab, params.value(headName), n: dim, out: dxb, accumulate: false, threads: threads)
        ActivationQuantizer.backward(activations, key: "lm_head", x: xf, grad: dxb, count: rows * dim, threads: threads)
        dx.update(repeating: 0, count: rows * dim)
        rmsNormBackward(dy: dxb, x: xFinal, inverseRMS: rFinal, weight: params.value("model.norm.weight"),
                        dWeight: params.grad("model.norm.weight"), dx: dx)
        for l in stride(from: config.numHiddenLayers - 1, through: 0, by: -1) { layerBackward(l) }
        let demb = params.grad("model.embed_tokens.weight")
        for (i, t) in tokens.enumerated() { add(demb + Int(t) * dim, dx + i * dim, dim) }
    }

    /// dInput (+)= dOut · W_eff and W's gradient from dOutᵀ · input, for linear i of layer l.
    private func linearBackward(_ l: Int, _ i: Int, dOut: UnsafePointer<T>, input: UnsafePointer<T>,
                                dInput: UnsafeMutablePointer<T>, accumulate: Bool) {
        let w = linears[l][i]
        T.productNN(dOut, m: rows, k: w.outFeatures, w.effective, n: w.inFeatures, out: dInput, accumulate: accumulate, threads: threads)
        T.productTN(dOut, m: rows, n: w.outFeatures, input, k: w.inFeatures, out: dEffective, accumulate: false, threads: threads)
        w.backward(dEffective, params, threads: threads)
    }

    /// x [rows, hidden] <- x T (forward) or x Tᵀ (backward) on rotated checkpoints; nothing otherwise. Float's
    /// forward runs the engine's fast transform (the same Float arithmetic as inference); the rest is a dense product.
    private func rotateDownInput(_ x: UnsafeMutablePointer<T>, transposed: Bool) {
        guard let hadamard else { return }
        if !transposed, T.self == Float.self {
            let xf = UnsafeMutableRawPointer(x).assumingMemoryBound(to: Float.self)
            // The order has a factorization: the config's validation and the init both checked it.
            try? Hadamard.transform(xf, rows: rows, n: hidden, threads: threads)
            return
        }
        let tmp = UnsafeMutablePointer<T>.allocate(capacity: rows * hidden)
        defer { tmp.deallocate() }
        hadamard.withUnsafeBufferPointer { h in
            if transposed {
                T.productNT(x, m: rows, k: hidden, h.baseAddress!, n: hidden, out: tmp, accumulate: false, threads: threads)
            } else {
                T.productNN(x, m: rows, k: hidden, h.baseAddress!, n: hidden, out: tmp, accumulate: false, threads: threads)
            }
        }
        x.update(from: tmp, count: rows * hidden)
    }

    private func layerBackward(_ l: Int) {
        let t = tapes[l], p = "model.layers.\(l)."
        // MLP: x_out = x_mid + down(act(silu(gate) * up)).
        linearBackward(l, 6, dOut: dx, input: t.hq, dInput: dh, accumulate: false)
        ActivationQuantizer.backward(activations, key: p + "mlp.down_proj", x: t.h, grad: dh, count: rows * hidden, threads: threads)
        rotateDownInput(dh, transposed: true)
        let g = SendablePointer(t.gate), u = SendablePointer(t.up), dhp = SendablePointer(dh)
        let dg = SendablePointer(dgate), du = SendablePointer(dup)
        Parallel.forRanges(rows * hidden, threads: threads, minPerThread: 1 << 13) { r in
            for i in r {
                let a = g[i], sig = 1 / (1 + T.exponential(-a))
                du[i] = dhp[i] * a * sig
                dg[i] = dhp[i] * u[i] * sig * (1 + a * (1 - sig))
            }
        }
        linearBackward(l, 4, dOut: dgate, input: t.xb2q, dInput: dxb, accumulate: false)
        linearBackward(l, 5, dOut: dup, input: t.xb2q, dInput: dxb, accumulate: true)
        ActivationQuantizer.backward(activations, key: p + "mlp.gate_proj", x: t.xb2, grad: dxb, count: rows * dim, threads: threads)
        rmsNormBackward(dy: dxb, x: t.xMid, inverseRMS: t.r2, weight: params.value(p + "post_attention_layernorm.weight"),
                        dWeight: params.grad(p + "post_attention_layernorm.weight"), dx: dx)
        // Attention: x_mid = x_in + o(act(attention(rope(q), rope(k), v))).
        linearBackward(l, 3, dOut: dx, input: t.attq, dInput: datt, accumulate: false)
        ActivationQuantizer.backward(activations, key: p + "self_attn.o_proj", x: t.att, grad: datt, count: rows * qDim, threads: threads)
        attentionBackward(t)
        rope(dq, heads: heads, inverse: true)
        rope(dk, heads: kvHeads, inverse: true)
        linearBackward(l, 0, dOut: dq, input: t.xbq, dInput: dxb, accumulate: false)
        linearBackward(l, 1, dOut: dk, input: t.xbq, dInput: dxb, accumulate: true)
        linearBackward(l, 2, dOut: dv, input: t.xbq, dInput: dxb, accumulate: true)
        ActivationQuantizer.backward(activations, key: p + "self_attn.q_proj", x: t.xb, grad: dxb, count: rows * dim, threads: threads)
        rmsNormBackward(dy: dxb, x: t.xIn, inverseRMS: t.r1, weight: params.value(p + "input_layernorm.weight"),
                        dWeight: params.grad(p + "input_layernorm.weight"), dx: dx)
    }

    // MARK: pieces

    /// The buffer as Float (only called when T is Float).
    @inline(__always)
    private func f(_ p: UnsafeMutablePointer<T>) -> UnsafeMutablePointer<Float> {
        UnsafeMutableRawPointer(p).assumingMemoryBound(to: Float.self)
    }

    private func add(_ x: UnsafeMutablePointer<T>, _ y: UnsafePointer<T>, _ count: Int) {
        let a = SendablePointer(x), b = SendablePointer(y)
        Parallel.forRanges(count, threads: threads, minPerThread: 1 << 14) { r in for i in r { a[i] += b[i] } }
    }

    /// out = x / rms(x) * weight per row; keeps 1 / rms per row.
    private func rmsNorm(_ x: UnsafePointer<T>, _ weight: UnsafePointer<T>, out: UnsafeMutablePointer<T>,
                         inverseRMS: UnsafeMutablePointer<T>) {
        let (dim, eps) = (self.dim, self.eps)
        let xs = SendablePointer(x), w = SendablePointer(weight), o = SendablePointer(out), ir = SendablePointer(inverseRMS)
        Parallel.forRanges(rows, threads: threads, minPerThread: 16) { range in
            for r in range {
                var ss = 0.0
                for j in 0..<dim { let v = Double(xs[r * dim + j]); ss += v * v }
                let inv = T(1 / (ss / Double(dim) + eps).squareRoot())
                ir[r] = inv
                for j in 0..<dim { o[r * dim + j] = xs[r * dim + j] * inv * w[j] }
            }
        }
    }

    /// dx += ∂(x / rms(x) * w)/∂x · dy; dWeight += Σ_rows dy x / rms. Row ranges are fixed per thread count and
    /// their partial weight gradients added in order, so a run repeats bit for bit.
    private func rmsNormBackward(dy: UnsafePointer<T>, x: UnsafePointer<T>, inverseRMS: UnsafePointer<T>,
                                 weight: UnsafePointer<T>, dWeight: UnsafeMutablePointer<T>, dx: UnsafeMutablePointer<T>) {
        let (dim, rows) = (self.dim, self.rows)
        let parts = max(1, min(threads, rows / 16))
        let partial = UnsafeMutablePointer<Double>.allocate(capacity: parts * dim)
        partial.initialize(repeating: 0, count: parts * dim)
        defer { partial.deallocate() }
        let g = SendablePointer(dy), xs = SendablePointer(x), ir = SendablePointer(inverseRMS), w = SendablePointer(weight)
        let out = SendablePointer(dx), pw = SendablePointer(partial)
        Parallel.forRanges(parts, threads: parts) { range in
            for part in range {
                let lo = rows * part / parts, hi = rows * (part + 1) / parts
                let acc = pw.base + part * dim
                for r in lo..<hi {
                    let inv = ir[r]
                    var c = 0.0
                    for j in 0..<dim { c += Double(g[r * dim + j] * w[j]) * Double(xs[r * dim + j]) }
                    let k = T(c / Double(dim)) * inv * inv * inv
                    for j in 0..<dim {
                        let xv = xs[r * dim + j], gv = g[r * dim + j]
                        acc[j] += Double(gv * xv * inv)
                        out[r * dim + j] += inv * gv * w[j] - xv * k
                    }
                }
            }
        }
        for part in 0..<parts { for j in 0..<dim { dWeight[j] += T(partial[part * dim + j]) } }
    }

    /// Rotates each head's pairs (i, i + headDim/2) by the position's angles (inverse: by minus them, the
    /// transpose, which is the backward of the rotation).
    private func rope(_ x: UnsafeMutablePointer<T>, heads: Int, inverse: Bool) {
        let half = headDim / 2, hd = headDim, width = heads * headDim, len = sequenceLength
        let c = cosTable, s = sinTable, p = SendablePointer(x)
        Parallel.forRanges(rows, threads: threads, minPerThread: 32) { range in
            for r in range {
                let pos = r % len
                for h in 0..<heads {
                    let a = p.base + r * width + h * hd, b = a + half
                    for i in 0..<half {
                        let cv = c[pos * half + i], sv = inverse ? -s[pos * half + i] : s[pos * half + i]
                        let xa = a[i], xb = b[i]
                        a[i] = xa * cv - xb * sv
                        b[i] = xa * sv + xb * cv
                    }
                }
            }
        }
    }

    private var attentionShape: CausalAttentionShape {
        CausalAttentionShape(batch: batch, length: sequenceLength, heads: heads, kvHeads: kvHeads, headDim: headDim)
    }

    /// Causal grouped-query attention of every sequence; keeps the probabilities [batch, heads, T, T]. Float runs
    /// the SIMD kernel; the loop below is its scalar twin (Double, the gradient checks).
    private func attentionForward(_ t: LayerTape) {
        if T.self == Float.self {
            Kernels.causalAttentionForward(attentionShape, q: f(t.q), k: f(t.k), v: f(t.v), probs: f(t.probs), out: f(t.att),
                                           threads: threads)
            return
        }
        let (len, hd, qDim, kvDim, heads, group) = (sequenceLength, headDim, qDim, kvDim, heads, heads / kvHeads)
        let scale = T(1 / Double(hd).squareRoot())
        let q = SendablePointer(t.q), k = SendablePointer(t.k), v = SendablePointer(t.v)
        let probs = SendablePointer(t.probs), out = SendablePointer(t.att)
        Parallel.forEach(batch * heads, threads: threads) { item in
            let b = item / heads, h = item % heads, kh = h / group
            for i in 0..<len {
                let qi = q.base + (b * len + i) * qDim + h * hd
                let pr = probs.base + ((b * heads + h) * len + i) * len
                var mx = -T.infinity
                for j in 0...i {
                    let kj = k.base + (b * len + j) * kvDim + kh * hd
                    var d = T(0)
                    for e in 0..<hd { d += qi[e] * kj[e] }
                    pr[j] = d * scale
                    mx = max(mx, pr[j])
                }
                var sum = T(0)
                for j in 0...i { pr[j] = T.exponential(pr[j] - mx); sum += pr[j] }
                let inv = 1 / sum
                let o = out.base + (b * len + i) * qDim + h * hd
                for e in 0..<hd { o[e] = 0 }
                for j in 0...i {
                    pr[j] *= inv
                    let vj = v.base + (b * len + j) * kvDim + kh * hd, pj = pr[j]
                    for e in 0..<hd { o[e] += pj * vj[e] }
                }
                for j in (i + 1)..<len { pr[j] = 0 }
            }
        }
    }

    /// dq, dk, dv from d(attention output) in `datt`. One work item per (sequence, kv head) so that the query heads
    /// sharing a kv head add into its dk, dv in a fixed order.
    private func attentionBackward(_ t: LayerTape) {
        if T.self == Float.self {
            Kernels.causalAttentionBackward(attentionShape, q: f(t.q), k: f(t.k), v: f(t.v), probs: f(t.probs), dOut: f(datt),
                                            dq: f(dq), dk: f(dk), dv: f(dv), threads: threads)
            return
        }
        let (len, hd, qDim, kvDim, heads, group) = (sequenceLength, headDim, qDim, kvDim, heads, heads / kvHeads)
        let scale = T(1 / Double(hd).squareRoot())
        let q = SendablePointer(t.q), k = SendablePointer(t.k), v = SendablePointer(t.v), probs = SendablePointer(t.probs)
        let dOut = SendablePointer(datt), dQ = SendablePointer(dq), dK = SendablePointer(dk), dV = SendablePointer(dv)
        let kvh = kvHeads
        Parallel.forEach(batch * kvh, threads: threads) { item in
            let b = item / kvh, kh = item % kvh
            for j in 0..<len {
                let o = (b * len + j) * kvDim + kh * hd
                for e in 0..<hd { dK[o + e] = 0; dV[o + e] = 0 }
            }
            let dp = UnsafeMutablePointer<T>.allocate(capacity: len)
            defer { dp.deallocate() }
            for h in (kh * group)..<((kh + 1) * group) {
                for i in 0..<len {
                    let pr = probs.base + ((b * heads + h) * len + i) * len
                    let go = dOut.base + (b * len + i) * qDim + h * hd
                    var dot = T(0)
                    for j in 0...i {
                        let vj = v.base + (b * len + j) * kvDim + kh * hd
                        var d = T(0)
                        for e in 0..<hd { d += go[e] * vj[e] }
                        dp[j] = d
                        dot += pr[j] * d
                    }
                    let qi = q.base + (b * len + i) * qDim + h * hd, dqi = dQ.base + (b * len + i) * qDim + h * hd
                    for e in 0..<hd { dqi[e] = 0 }
                    for j in 0...i {
                        let pj = pr[j], ds = pj * (dp[j] - dot) * scale
                        let kj = k.base + (b * len + j) * kvDim + kh * hd
                        let dkj = dK.base + (b * len + j) * kvDim + kh * hd, dvj = dV.base + (b * len + j) * kvDim + kh * hd
                        for e in 0..<hd {
                            dqi[e] += ds * kj[e]
                            dkj[e] += ds * qi[e]
                            dvj[e] += pj * go[e]
                        }
                    }
                }
            }
        }
    }
}
