import Evaluation
import ArgumentParser
import Foundation
import Kernels
import Models
import NPU
import TensorCore

/// `quantkit bench npu`: the simulator's integer GEMM (int8 and packed int4 weights, fused requantization)
/// against the float GEMM (Kernels.matmulNT, f32 weights) on the same shapes: GOPS (2 ops per MAC) and ratio.
struct BenchNpuCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "npu", abstract: "Benchmark the NPU simulator's integer GEMM.")

    @Option(help: "Shapes as MxKxN, comma separated.")
    var shapes: String = "1x2048x2048,64x512x512,256x1024x1024"
    @Option(help: "Timed repetitions per kernel (the median is reported).")
    var reps: Int = 7
    @Option(help: "Worker threads (default: all cores).")
    var threads: Int = Parallel.defaultThreads
    @Option(help: "Write the figures as JSON here.")
    var json: String?
    @Option(help: "Also time whole forward passes (float vs NPU W8A8) of this model (llama2.c .bin or HF directory).")
    var model: String?
    @Option(help: "Token ids for --model (JSON array or {\"tokens\": [...]}); the first 128-token windows are timed.")
    var tokens: String?

    func validate() throws {
        guard reps >= 1 else { throw ValidationError("--reps must be >= 1") }
        guard threads >= 1 else { throw ValidationError("--threads must be >= 1") }
    }

    static func median(_ xs: [Double]) -> Double { let s = xs.sorted(); return s[s.count / 2] }

    static func time(reps: Int, _ body: () -> Void) -> Double {
        body()  // warm-up
        var t: [Double] = []
        for _ in 0..<reps {
            let start = DispatchTime.now().uptimeNanoseconds
            body()
            t.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
        }
        return median(t)
    }

    func run() throws {
        var rows: [[String: Any]] = []
        print("shape (MxKxN)      float GOPS   int8 GOPS  int8/float   int4 GOPS  int4/float   (threads \(threads))")
        for spec in shapes.split(separator: ",") {
            let dims = spec.split(separator: "x").compactMap { Int($0) }
            guard dims.count == 3, dims.allSatisfy({ $0 > 0 }) else {
                throw QuantKitError(.input, "--shapes: '\(spec)' is not MxKxN with positive integers")
            }
            let (m, k, n) = (dims[0], dims[1], dims[2])
            var rng = SystemRandomNumberGenerator()
            let xf = (0..<(m * k)).map { _ in Float.random(in: -1...1, using: &rng) }
            let wf = (0..<(n * k)).map { _ in Float.random(in: -1...1, using: &rng) }
            var yf = [Float](repeating: 0, count: m * n)
            let xq = (0..<(m * k)).map { _ in Int8.random(in: -128...127, using: &rng) }
            var yq = [Int8](repeating: 0, count: m * n)
            let w8 = try wf.withUnsafeBufferPointer { try NPUWeights(weight: .f32($0.baseAddress!), n: n, k: k, bits: 8, granularity: .perChannel) }
            let w4 = try wf.withUnsafeBufferPointer { try NPUWeights(weight: .f32($0.baseAddress!), n: n, k: k, bits: 4, granularity: .perChannel) }
            let mults = [Requant.Multiplier](repeating: Requant.quantizeMultiplier(0.001), count: n)
            let threads = self.threads
            let tf = xf.withUnsafeBufferPointer { xp in wf.withUnsafeBufferPointer { wp in yf.withUnsafeMutableBufferPointer { yp in
                Self.time(reps: reps) {
                    Kernels.matmulNT(x: xp.baseAddress!, m: m, k: k, weight: .f32(wp.baseAddress!), n: n, out: yp.baseAddress!, threads: threads)
                } } } }
            func timeInt(_ w: NPUWeights) -> Double {
                xq.withUnsafeBufferPointer { xp in mults.withUnsafeBufferPointer { mp in yq.withUnsafeMutableBufferPointer { yp in
                    Self.time(reps: reps) {
                        IntGemm.run(x: xp.baseAddress!, m: m, k: k, weights: w,
                                    output: .int8(yp.baseAddress!, zpX: 3, bias: nil, multipliers: mp.baseAddress!, zpOut: -5, rule: .default),
                                    threads: threads)
                    } } } }
            }
            let t8 = timeInt(w8), t4 = timeInt(w4)
            let ops = 2.0 * Double(m * k * n)
            let g = (ops / tf / 1e9, ops / t8 / 1e9, ops / t4 / 1e9)
            print(String(format: "%-18@ %10.2f  %10.2f  %10.2fx  %10.2f  %10.2fx", String(spec) as NSString,
                         g.0, g.1, g.1 / g.0, g.2, g.2 / g.0))
            rows.append(["shape": String(spec), "float_gops": g.0, "int8_gops": g.1, "int4_gops": g.2,
                         "int8_over_float": g.1 / g.0, "int4_over_float": g.2 / g.0,
                         "float_seconds": tf, "int8_seconds": t8, "int4_seconds": t4])
        }
        var modelRow: [String: Any] = [:]
        if let model {
            guard let tokens else { throw QuantKitError(.input, "--model needs --tokens") }
            let m = try ModelLoading.loadModel(model)
            let toks = try LayersRun.readTokens(tokens, model: model, tokenizer: nil, m: m)
            m.threads = threads
            let win = min(128, m.config.maxPositionEmbeddings)
            guard toks.count >= 2 * win else { throw QuantKitError(.input, "\(tokens): need at least \(2 * win) tokens") }
            let windows = (0..<(toks.count / win - 1)).map { Array(toks[($0 * win)..<(($0 + 1) * win)]) }
            let cache = m.makeCache(capacity: win), state = m.makeState(maxRows: win)
            func pass() { for w in windows { cache.reset(); m.forward(w, cache: cache, state: state) } }
            let tFloat = Self.time(reps: reps, pass)
            let sim = try NPUSimulator.calibrate(model: m, config: NPUConfig(), calibrationTokens: Array(toks.suffix(win)))
            try sim.apply(to: m)
            let tNPU = Self.time(reps: reps, pass)
            let n = Double(windows.count * win)
            print(String(format: "model %@: %d tokens in windows of %d: float %.1f tok/s, NPU W8A8 (fp16 ops) %.1f tok/s, NPU/float time %.2fx",
                         model as NSString, windows.count * win, win, n / tFloat, n / tNPU, tNPU / tFloat))
            modelRow = ["model": model, "tokens": windows.count * win, "float_tokens_per_second": n / tFloat,
                        "npu_tokens_per_second": n / tNPU, "npu_over_float_time": tNPU / tFloat]
        }
        if let json {
            let obj: [String: Any] = ["benchmark": "npu", "threads": threads, "reps": reps, "results": rows,
                                      "model": modelRow]
            try ResultEnvelope(kind: "bench_npu").write(obj, to: json)
        }
    }
}
