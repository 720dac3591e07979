import ArgumentParser
import Evaluation
import Foundation
import Models
import Quantization
import TensorCore

/// GPTQ wall time per layer shape: Hessian accumulation (calibration tokens fed in windows, as the model-level
/// pass does) and the quantization sweep, on random weights/activations. Compare with
/// `python3 Tools/reference_gptq.py bench` (the numpy reference) on the same shapes.
struct BenchGPTQCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "gptq", abstract: "Time GPTQ on layer shapes (OUTxIN).")
    @Option(parsing: .upToNextOption, help: "Layer shapes OUTxIN.") var shapes: [String] = ["768x768", "2048x768", "768x2048"]
    @Option(help: "Calibration tokens.") var tokens = 128 * 512
    @Option(help: "Tokens per calibration window (one Hessian update each).") var seqlen = 512
    @Option(help: "Bits.") var bits = 4
    @Option(parsing: .unconditional, help: "Group size (-1 per channel).") var groupSize = 128
    @Flag(help: "act-order") var actOrder = false
    @Flag(help: "Time only the Hessian accumulation (skip the quantization sweep).") var hessianOnly = false
    @Option(help: "Repetitions (median reported).") var repeats = 3
    @Option(help: "Write results as JSON here.") var json: String?
    @Option(help: "Quantize a whole seeded random model of this shape (small or 110m, as `bench perplexity`) with GPTQ on random calibration windows (--samples x --seqlen) instead of timing single layers.")
    var modelShape: String?
    @Option(help: "Calibration windows for --model-shape.") var samples = 128
    @Option(help: "With --model-shape: also write the quantized model here (GPTQ checkpoint, no tokenizer), e.g. for `bench perplexity --model`.")
    var output: String?

    /// The library's scheme check, with the flag named.
    func scheme() throws -> QuantScheme {
        do { return try QuantScheme(bits: bits, symmetric: false, groupSize: groupSize) } catch let e as QuantKitError {
            throw QuantKitError(.input, "--bits \(bits) / --group-size \(groupSize): \(e.message)")
        }
    }

    func run() throws {
        try runReportingErrors {
            if let modelShape { return try runModel(shapeName: modelShape) }
            var rows: [[String: Any]] = []
            for s in shapes {
                let parts = s.split(separator: "x").compactMap { Int($0) }
                guard parts.count == 2, parts[0] > 0, parts[1] > 0 else { throw QuantKitError(.input, "--shapes: '\(s)' is not OUTxIN") }
                let (out, inF) = (parts[0], parts[1])
                var rng = SystemRandomNumberGenerator()
                let w = (0..<(out * inF)).map { _ in Float.random(in: -0.05...0.05, using: &rng) }
                let x = (0..<(seqlen * inF)).map { _ in Float.random(in: -1...1, using: &rng) }
                var hTimes: [Double] = [], qTimes: [Double] = [], hCPU: [Double] = [], qCPU: [Double] = []
                var loss = 0.0
                for _ in 0..<repeats {
                    let t0 = Date(), c0 = cpuSeconds()
                    let acc = HessianAccumulator(columns: inF)
                    var done = 0
                    while done < tokens {
                        let n = min(seqlen, tokens - done)
                        try x.withUnsafeBufferPointer { try acc.add($0.baseAddress!, count: n, samples: 1) }
                        done += n
                    }
                    let h = acc.hessian()
                    let t1 = Date(), c1 = cpuSeconds()
                    if hessianOnly {
                        hTimes.append(t1.timeIntervalSince(t0)); hCPU.append(c1 - c0); qTimes.append(0); qCPU.append(0)
                        continue
                    }
                    let cfg = GPTQConfig(scheme: try scheme(), actOrder: actOrder)
                    let r = try GPTQ.quantize(weight: w, outFeatures: out, inFeatures: inF, hessian: h, config: cfg)
                    let t2 = Date(), c2 = cpuSeconds()
                    hTimes.append(t1.timeIntervalSince(t0)); qTimes.append(t2.timeIntervalSince(t1)); loss = r.loss
                    hCPU.append(c1 - c0); qCPU.append(c2 - c1)
                }
                hTimes.sort(); qTimes.sort(); hCPU.sort(); qCPU.sort()
                let hm = hTimes[hTimes.count / 2], qm = qTimes[qTimes.count / 2]
                let hc = hCPU[hCPU.count / 2], qc = qCPU[qCPU.count / 2]
                // Upper-triangle SYRK flops: 2 per (token, i <= j) pair.
                let gflops = 2 * Double(tokens) * Double(inF) * Double(inF + 1) / 2 / hm / 1e9
                print(String(format: "gptq %@: %d tokens  hessian %.3f s (cpu %.3f s, %.1f GFLOP/s)  quantize %.3f s (cpu %.3f s)  total %.3f s  (threads %d, median of %d)",
                             s, tokens, hm, hc, gflops, qm, qc, hm + qm, Parallel.defaultThreads, repeats))
                rows.append(["shape": s, "tokens": tokens, "hessian_s": hm, "gptq_s": qm, "total_s": hm + qm, "hessian_cpu_s": hc, "hessian_gflops": gflops,
                             "gptq_cpu_s": qc, "loss": loss])
            }
            if let json {
                let o: [String: Any] = ["benchmark": "gptq", "bits": bits, "group_size": groupSize,
                                        "act_order": actOrder, "threads": Parallel.defaultThreads, "results": rows]
                try ResultEnvelope(kind: "bench_gptq").write(o, to: json)
            }
        }
    }
}

extension BenchGPTQCommand {
    /// Whole-model GPTQ (the `quantkit quantize` path: true-sequential groups, quantized outputs feeding the next
    /// block) on a seeded random llama2.c-shaped model: wall time, time per layer, peak RSS.
    func runModel(shapeName: String) throws {
        guard let shape = BenchPerplexityCommand.shapes.first(where: { $0.name == shapeName }) else {
            throw QuantKitError(.input, "--model-shape must be one of \(BenchPerplexityCommand.shapes.map(\.name).joined(separator: ", "))")
        }
        guard samples > 0, seqlen > 0, seqlen <= shape.seq else {
            throw QuantKitError(.input, "--samples must be positive and --seqlen in 1...\(shape.seq)")
        }
        let model = try BenchPerplexityCommand.randomModel(shape, dtype: .f32, seed: 42)
        var rng = SplitMix64(seed: 11)
        let windows = (0..<samples).map { _ in (0..<seqlen).map { _ in Int32(rng.index(shape.vocab)) } }
        let options = ModelQuantizationOptions(
            method: .gptq, scheme: try scheme(), actOrder: actOrder)
        let c0 = cpuSeconds()
        let r = try ModelQuantizer.quantize(model: model, windows: windows, options: options)
        let cpu = cpuSeconds() - c0
        var byShape: [String: [Double]] = [:]
        for rep in r.reports { byShape["\(rep.outFeatures)x\(rep.inFeatures)", default: []].append(rep.seconds) }
        var ru = rusage()
        getrusage(RUSAGE_SELF.rawValue, &ru)
        let rss = Double(ru.ru_maxrss) / 1024
        print(String(format: "gptq model %@: %d layers x %d linears, %d x %d calibration tokens, w%d g%d%@: total %.1f s wall (cpu %.1f s), peak RSS %.0f MiB",
                     shape.name, shape.layers, r.reports.count / max(1, shape.layers), samples, seqlen, bits, groupSize,
                     actOrder ? " act-order" : "", r.seconds, cpu, rss))
        print("per linear, by shape OUTxIN: median seconds of its quantization (damping, Cholesky, GPTQ sweep, packing); Hessian capture is in the total only")
        var rows: [[String: Any]] = []
        for (k, v) in byShape.sorted(by: { $0.key < $1.key }) {
            let m = v.sorted()[v.count / 2]
            print(String(format: "  %@  x%d  median %.3f s", k, v.count, m))
            rows.append(["shape": k, "count": v.count, "median_s": m])
        }
        if let output {
            try ModelQuantizer.write(model: model, result: r, options: options, to: output,
                                     metadata: ["method": "gptq", "calibration": "random token ids (bench gptq --model-shape)"],
                                     fingerprint: nil)
            print("wrote \(output)")
        }
        if let json {
            let o: [String: Any] = ["benchmark": "gptq-model", "model_shape": shape.name, "bits": bits,
                                    "group_size": groupSize, "act_order": actOrder, "samples": samples, "seqlen": seqlen,
                                    "threads": model.threads, "total_s": r.seconds, "cpu_s": cpu, "peak_rss_mib": rss,
                                    "per_layer": rows]
            try ResultEnvelope(kind: "bench_gptq").write(o, to: json)
        }
    }
}

/// User + system CPU seconds of this process (all threads).
func cpuSeconds() -> Double {
    var u = rusage()
    getrusage(RUSAGE_SELF.rawValue, &u)
    return Double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + Double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6
}

/// Float vs quantized on one token stream (llama.cpp protocol): ppl, QError = ppl_q/ppl_base - 1, mean KLD
/// (full vocabulary, SPECS.md "Quantized vs base statistics") and same-top %. For the quantizer table in
/// BENCHMARKS.md; takes pre-tokenized ids (whitespace-separated) so it runs before a tokenizer is wired.
struct BenchQuantEvalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "quant-eval", abstract: "Float vs quantized: ppl, QError, KLD, same-top.")
    @Option(help: "Base (float) model.") var base: String
    @Option(parsing: .upToNextOption, help: "Quantized model directories (GPTQ layout).") var quantized: [String]
    @Option(help: "Token ids file (whitespace-separated) of the evaluation text.") var tokens: String
    @Option(help: "Context.") var ctx = 128
    @Option(help: "Chunks at most.") var maxChunks: Int?
    @Option(help: "BOS id replacing each chunk's first token (llama.cpp).") var bos: Int32 = 1
    @Option(help: "Write results as JSON here.") var json: String?

    static func loadModel(_ path: String) throws -> LlamaModel {
        try ModelLoading.loadModel(path)
    }

    static func logSoftmax(_ p: UnsafePointer<Float>, _ n: Int) -> [Double] {
        var mx = -Double.infinity
        for i in 0..<n { mx = max(mx, Double(p[i])) }
        var s = 0.0
        for i in 0..<n { s += exp(Double(p[i]) - mx) }
        let lse = mx + log(s)
        return (0..<n).map { Double(p[$0]) - lse }
    }

    func run() throws {
        try runReportingErrors {
            let s = try readText(tokens)
            var ids: [Int32] = []
            for f in s.split(whereSeparator: { " \n\t,".contains($0) }) {
                guard let v = Int32(f) else { throw QuantKitError(.format, "\(tokens): '\(f)' is not a token id") }
                ids.append(v)
            }
            let opts = PerplexityOptions(protocolKind: .llamacpp, ctx: ctx, maxChunks: maxChunks)
            let bm = try Self.loadModel(base)
            var baseRows: [[Double]] = []
            let br = try Perplexity.evaluate(model: bm, tokens: ids, addsBOS: true, bosId: bos, options: opts, onRow: { r in
                baseRows.append(Self.logSoftmax(r.logits, r.vocab))
            })
            print(String(format: "base %@: ppl %.4f over %d tokens", base, br.ppl, br.tokensScored))
            var out: [[String: Any]] = []
            for q in quantized {
                let qm = try Self.loadModel(q)
                var kld = 0.0, same = 0, n = 0
                let qr = try Perplexity.evaluate(model: qm, tokens: ids, addsBOS: true, bosId: bos, options: opts, onRow: { r in
                    let lq = Self.logSoftmax(r.logits, r.vocab), lb = baseRows[r.index]
                    var k = 0.0, ab = 0, aq = 0
                    for v in 0..<r.vocab {
                        k += exp(lb[v]) * (lb[v] - lq[v])
                        if lb[v] > lb[ab] { ab = v }
                        if lq[v] > lq[aq] { aq = v }
                    }
                    kld += k; n += 1; if ab == aq { same += 1 }
                })
                let qe = qr.ppl / br.ppl - 1
                print(String(format: "%@: ppl %.4f  QError %+.3f%%  mean KLD %.5f  same-top %.2f%%", q, qr.ppl, 100 * qe, kld / Double(n),
                             100 * Double(same) / Double(n)))
                out.append(["model": q, "ppl": qr.ppl, "qerror": qe, "mean_kld": kld / Double(n), "same_top": Double(same) / Double(n)])
            }
            if let json {
                let o: [String: Any] = ["benchmark": "quant-eval", "base": base, "base_ppl": br.ppl, "protocol": "llamacpp",
                                        "ctx": ctx, "tokens_scored": br.tokensScored, "results": out]
                try ResultEnvelope(kind: "bench_gptq").write(o, to: json)
            }
        }
    }
}
