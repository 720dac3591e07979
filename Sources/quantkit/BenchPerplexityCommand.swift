import ArgumentParser
import Evaluation
import Kernels
import Foundation
import Models
import Quantization
import TensorCore

/// `quantkit bench perplexity`: llamacpp-protocol tokens/s on seeded random llama2.c-shaped models.
struct BenchPerplexityCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "perplexity",
        abstract: "Perplexity throughput (tokens/s) on seeded random models; run from a release build.")
    @Option(help: "Model shapes: small (dim 512, 8 layers, vocab 512), 110m (dim 768, 12 layers, vocab 32000), or both.")
    var shape: String = "small"
    @Option(help: "Comma-separated context lengths.") var ctx: String = "128,512"
    @Option(help: "Comma-separated weight types: f32, f16, bf16, or wB[gG] for round-to-nearest symmetric B-bit weights (group G, per output channel without g) run on the W8A16/W4A16 kernels, e.g. w8,w4g32,w4g128; a trailing a8 (w4g32a8) runs 4-bit weights as W4A8 with int8 activations per 32 inputs, as llama.cpp runs Q4_0.")
    var dtype: String = "f32,f16"
    @Option(help: "Comma-separated tokens per forward pass: batch / ctx chunks run side by side (as llama.cpp's -b); a batch equal to ctx runs one chunk per pass, as the peer figures were measured.")
    var batch: String = "\(PerplexityOptions.defaultBatchTokens)"
    @Option(help: "Chunks per measurement.") var chunks: Int = 4
    @Option(help: "Repetitions (the median is reported).") var repeats: Int = 3
    @Option(help: "Worker threads.") var threads: Int?
    @Option(help: "Write a JSON result here.") var json: String?
    @Option(help: "Measure this model (HF or GPTQ directory, or a GGUF file under llama.cpp's activation contract) instead of the random shapes; --dtype and --shape are ignored. Peak RSS then covers loading and evaluating this model only.")
    var model: String?

    struct Shape { let name: String; let dim, hidden, layers, heads, kvHeads, vocab, seq: Int }
    static let shapes = [Shape(name: "small", dim: 512, hidden: 1536, layers: 8, heads: 8, kvHeads: 8, vocab: 512, seq: 1024),
                         Shape(name: "110m", dim: 768, hidden: 2048, layers: 12, heads: 12, kvHeads: 12, vocab: 32000, seq: 1024)]

    /// Seeded random weights (uniform, scaled like an init), norms 1; stored in `dtype`.
    static func randomModel(_ s: Shape, dtype: DType, seed: UInt64) throws -> LlamaModel {
        let cfg = LlamaConfig(hiddenSize: s.dim, intermediateSize: s.hidden, numHiddenLayers: s.layers, numAttentionHeads: s.heads,
                              numKeyValueHeads: s.kvHeads, rmsNormEps: 1e-5, vocabSize: s.vocab, maxPositionEmbeddings: s.seq,
                              tieWordEmbeddings: true)
        var rng = SplitMix64(seed: seed)
        func matrix(_ r: Int, _ c: Int) -> Tensor {
            let t = Tensor(zeros: .f32, shape: [r, c])
            let p = t.mutableRaw.assumingMemoryBound(to: Float.self)
            let scale = 1 / Float(c).squareRoot()
            for i in 0..<(r * c) { p[i] = rng.signedUnitFloat() * scale }
            return t.converted(to: dtype)
        }
        func ones(_ n: Int) -> Tensor { Tensor(shape: [n], floats: [Float](repeating: 1, count: n)) }
        var t: [String: Tensor] = ["model.embed_tokens.weight": matrix(s.vocab, s.dim), "model.norm.weight": ones(s.dim)]
        for l in 0..<s.layers {
            let p = "model.layers.\(l)."
            t[p + "input_layernorm.weight"] = ones(s.dim); t[p + "post_attention_layernorm.weight"] = ones(s.dim)
            t[p + "self_attn.q_proj.weight"] = matrix(cfg.qDim, s.dim); t[p + "self_attn.k_proj.weight"] = matrix(cfg.kvDim, s.dim)
            t[p + "self_attn.v_proj.weight"] = matrix(cfg.kvDim, s.dim); t[p + "self_attn.o_proj.weight"] = matrix(s.dim, cfg.qDim)
            t[p + "mlp.gate_proj.weight"] = matrix(s.hidden, s.dim); t[p + "mlp.up_proj.weight"] = matrix(s.hidden, s.dim)
            t[p + "mlp.down_proj.weight"] = matrix(s.dim, s.hidden)
        }
        return try LlamaModel(config: cfg, source: TensorDictionary(t), name: "random-\(s.name)-\(dtype.rawValue)")
    }

    /// A weight type to benchmark: a float dtype, or RTN-quantized weights ("w4g32": 4 bits, groups of 32; a
    /// trailing "a8" runs them as W4A8 with int8 activations).
    struct WeightKind {
        let label: String
        let dtype: DType
        let scheme: QuantScheme?
        let int8Activations: Bool
        init(_ s: String) throws {
            label = s
            int8Activations = s.hasSuffix("a8")
            if let d = ["f32": DType.f32, "f16": .f16, "bf16": .bf16][s] {
                dtype = d; scheme = nil; return
            }
            let parts = s.dropFirst().dropLast(int8Activations ? 2 : 0).split(separator: "g", omittingEmptySubsequences: false)
            guard s.hasPrefix("w"), (1...2).contains(parts.count), let bits = Int(parts[0]),
                  let group = parts.count == 2 ? Int(parts[1]) : QuantScheme.perChannel,
                  !int8Activations || bits <= 4 else {
                throw QuantKitError(.input, "--dtype: bad value '\(s)' (f32, f16, bf16, wB[gG] such as w8, w4g32, or w4gGa8)")
            }
            dtype = .f32
            do { scheme = try QuantScheme(bits: bits, symmetric: true, groupSize: group) } catch let e as QuantKitError {
                throw QuantKitError(.input, "--dtype \(s): \(e.message)")
            }
        }
    }

    /// Replaces every block linear by its RTN-quantized QuantizedLinear (codes packed as in a GPTQ checkpoint).
    static func quantizeLinears(_ model: LlamaModel, scheme: QuantScheme) throws {
        for b in model.blocks {
            for group in b.linearGroups {
                for name in group {
                    guard let dense = b.linear(named: name) as? DenseLinear else { continue }
                    let q = try RTN.quantize(dense.weight.floats(), outFeatures: dense.outFeatures,
                                             inFeatures: dense.inFeatures, scheme: scheme, name: name)
                    try b.setLinear(try QuantizedLinear(q, name: name), named: name)
                }
            }
        }
    }

    static func cpuSeconds() -> Double {
        var ru = rusage()
        getrusage(Int32(RUSAGE_SELF.rawValue), &ru)
        return Double(ru.ru_utime.tv_sec) + Double(ru.ru_utime.tv_usec) / 1e6 + Double(ru.ru_stime.tv_sec) + Double(ru.ru_stime.tv_usec) / 1e6
    }

    func run() throws {
        try runReportingErrors {
            let wanted = shape == "both" ? Self.shapes : Self.shapes.filter { $0.name == shape }
            guard !wanted.isEmpty else { throw QuantKitError(.input, "--shape must be small, 110m or both") }
            let ctxs = try ctx.split(separator: ",").map { s -> Int in
                guard let v = Int(s), v >= 4 else { throw QuantKitError(.input, "--ctx: bad value '\(s)'") }
                return v
            }
            let batches = try batch.split(separator: ",").map { s -> Int in
                guard let v = Int(s), v >= 1 else { throw QuantKitError(.input, "--batch: bad value '\(s)'") }
                return v
            }
            let dtypes = try dtype.split(separator: ",").map { try WeightKind(String($0)) }
            var rows: [[String: Any]] = []
            print("shape  dtype  ctx  tokens/s(median, wall)  runs  threads  tokens/CPU-s x threads(median)  batch")
            var cases: [(shape: String, kind: String, vocab: Int, make: () throws -> LlamaModel)] = []
            if let path = model {
                cases = [(path, GGUFFile.isGGUF(path) ? "gguf" : GPTQCheckpoint.isGPTQ(path) ? "gptq" : "float", 0, { try ModelLoading.loadModel(path) })]
            } else {
                for s in wanted {
                    for d in dtypes {
                        cases.append((s.name, d.label, s.vocab, {
                            let m = try Self.randomModel(s, dtype: d.dtype, seed: 42)
                            if let scheme = d.scheme { try Self.quantizeLinears(m, scheme: scheme) }
                            if d.int8Activations {
                                let (w4a8, quantized) = m.useInt8Activations()
                                guard w4a8 == quantized else {
                                    throw QuantKitError(.input, "--dtype \(d.label): only \(w4a8) of \(quantized) layers can run as W4A8 (input size and groups must be multiples of 32)")
                                }
                            }
                            return m
                        }))
                    }
                }
            }
            for (shapeName, kind, knownVocab, make) in cases {
                let model = try make()
                let vocab = knownVocab > 0 ? knownVocab : model.config.vocabSize
                if let t = threads { model.threads = max(1, t) }
                for (c, b) in ctxs.flatMap({ c in batches.map { (c, $0) } }) {
                    var rng = SplitMix64(seed: 7)
                    let n = c * max(chunks, 2)
                    let toks = (0..<n).map { _ in Int32(rng.index(vocab)) }
                    var rates: [Double] = [], cpuRates: [Double] = []
                    for _ in 0..<max(1, repeats) {
                        let cpu0 = Self.cpuSeconds()
                        let r = try Perplexity.evaluate(model: model, tokens: toks, addsBOS: true, bosId: 1,
                                                        options: PerplexityOptions(ctx: c, maxChunks: chunks, batchTokens: b))
                        let cpu = Self.cpuSeconds() - cpu0
                        rates.append(Double(r.chunks * c) / r.seconds)
                        // On a shared machine wall time includes waiting for a core; tokens per CPU-second
                        // x threads estimates the rate with the threads' cores to itself.
                        cpuRates.append(Double(r.chunks * c) / max(cpu, 1e-9) * Double(model.threads))
                    }
                    rates.sort(); cpuRates.sort()
                    let med = rates[rates.count / 2], cmed = cpuRates[cpuRates.count / 2]
                    print(String(format: "%@  %@  %d  %.1f  %@  %d  %.1f  %d", shapeName, kind, c, med,
                                 rates.map { String(format: "%.0f", $0) }.joined(separator: "/"), model.threads, cmed, b))
                    rows.append(["shape": shapeName, "dtype": kind, "ctx": c, "tokens_per_s": med, "runs": rates,
                                 "threads": model.threads, "tokens_per_cpu_s_x_threads": cmed, "batch_tokens": b])
                }
            }
            var ru = rusage()
            getrusage(Int32(RUSAGE_SELF.rawValue), &ru)
            let rssMiB = Double(ru.ru_maxrss) / 1024
            print(String(format: "peak RSS %.1f MiB; integer kernels on %@", rssMiB, CPUFeatures.integerKernelISA))
            if let j = json {
                let obj: [String: Any] = ["benchmark": "perplexity", "results": rows, "peak_rss_mib": rssMiB,
                                          "integer_kernels": CPUFeatures.integerKernelISA, "timings": [String: Double]()]
                try ResultEnvelope(kind: "bench_perplexity").write(obj, to: j)
            }
        }
    }
}
