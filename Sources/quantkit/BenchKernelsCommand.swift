import Evaluation
import ArgumentParser
import Foundation
import Kernels
import TensorCore

/// `quantkit bench kernels`: FMA peak, GEMM/GEMV throughput for f32/f16/bf16 and quantized weights.
struct BenchKernelsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kernels",
        abstract: "Measure the FMA peak and GEMM/GEMV throughput (f32, f16, bf16, W8A16, W4A16, W4A8)."
    )

    @Option(help: "Worker threads.") var threads: Int = Parallel.defaultThreads
    @Option(help: "Repetitions per measurement (the median is reported).") var reps: Int = 5
    @Option(help: "Comma-separated GEMM shapes m x k x n, e.g. 128x512x512.")
    var shapes: String = "128x512x512,128x512x1536,128x1536x512,128x2048x2048,512x512x512,512x512x1536,512x1536x512,512x2048x2048"
    @Option(help: "Comma-separated GEMV shapes k x n.") var gemvShapes: String = "512x512,512x1536,2048x2048,768x32000"
    @Flag(help: "Skip the quantized kernels.") var noQuantized = false
    @Flag(help: "Also time the quantized kernels on row-major codes (QuantizedMatrix), the layout before panels.")
    var rowMajorQuantized = false
    @Option(help: "Write a JSON result here.") var json: String?

    func run() throws {
        guard threads > 0, reps > 0 else { throw ValidationError("--threads and --reps must be positive") }
        let gemm = try parseShapes(shapes, parts: 3, flag: "--shapes")
        let gemv = try parseShapes(gemvShapes, parts: 2, flag: "--gemv-shapes")
        var result: [String: Any] = ["threads": threads, "reps": reps,
                                     "machine": ProcessInfo.processInfo.hostName,
                                     "processors": ProcessInfo.processInfo.activeProcessorCount]

        // Wall-clock rates suffer when other processes share the cores; rates per CPU-second (user time of this
        // process) show the kernels' own efficiency. Both are reported.
        let (peak1, peakCPU) = KernelBench.fmaPeak(threads: 1, reps: reps)
        let (peak, _) = KernelBench.fmaPeak(threads: threads, reps: reps)
        print(String(format: "FMA peak: %.1f GFLOP/s wall on 1 thread, %.1f GFLOP/s wall on %d threads, %.1f GFLOP per CPU-second",
                     peak1, peak, threads, peakCPU))
        result["fma_peak_gflops_1thread"] = peak1
        result["fma_peak_gflops"] = peak
        result["fma_peak_gflops_per_cpu_second"] = peakCPU

        var rows: [[String: Any]] = []
        print("GEMM (out = x·wᵀ, weights pre-packed into panels as the model runs them), median of \(reps):")
        print("  m     k     n     weights  ms wall   GFLOP/s  %peak(wall)  GFLOP/cpu-s  %peak(cpu)")
        for s in gemm {
            let (m, k, n) = (s[0], s[1], s[2])
            var kinds = ["f32", "f16", "bf16"]
            if !noQuantized { kinds += ["w8g128", "w4g128", "w4g128a8"] + (rowMajorQuantized ? ["w8g128-rows", "w4g128-rows"] : []) }
            for kind in kinds {
                let (sec, cpu) = try KernelBench.timeMatmul(kind: kind, m: m, k: k, n: n, threads: threads, reps: reps)
                let flop = 2.0 * Double(m * k * n)
                let gf = flop / sec / 1e9, gfc = flop / cpu / 1e9
                print(String(format: "  %-5d %-5d %-5d %@ %-9.3f %-8.1f %-12.0f %-12.1f %.0f%%", m, k, n,
                             kind.padding(toLength: 8, withPad: " ", startingAt: 0) as NSString,
                             sec * 1e3, gf, 100 * gf / peak, gfc, 100 * gfc / peakCPU))
                rows.append(["m": m, "k": k, "n": n, "weights": kind, "seconds": sec, "gflops": gf,
                             "percent_of_peak": 100 * gf / peak, "cpu_seconds": cpu, "gflops_per_cpu_second": gfc,
                             "percent_of_peak_per_cpu_second": 100 * gfc / peakCPU])
            }
        }
        result["gemm"] = rows

        var vrows: [[String: Any]] = []
        print("GEMV (m = 1), median of \(reps):")
        print("  k     n      weights  us wall   GB/s wall  GFLOP/s wall  GB per cpu-s")
        for s in gemv {
            let (k, n) = (s[0], s[1])
            var kinds = ["f32", "f16", "bf16"]
            if !noQuantized { kinds += ["w8g128", "w4g128", "w4g128a8"] + (rowMajorQuantized ? ["w8g128-rows", "w4g128-rows"] : []) }
            for kind in kinds {
                let (sec, cpu) = try KernelBench.timeMatmul(kind: kind, m: 1, k: k, n: n, threads: threads, reps: reps)
                let bytes = KernelBench.weightBytes(kind: kind, k: k, n: n)
                let gbs = Double(bytes) / sec / 1e9
                let gf = 2.0 * Double(k * n) / sec / 1e9
                print(String(format: "  %-5d %-6d %@ %-9.1f %-10.1f %-13.1f %.1f", k, n,
                             kind.padding(toLength: 8, withPad: " ", startingAt: 0) as NSString, sec * 1e6, gbs, gf,
                             Double(bytes) / cpu / 1e9))
                vrows.append(["k": k, "n": n, "weights": kind, "seconds": sec, "weight_gb_per_s": gbs, "gflops": gf,
                              "cpu_seconds": cpu])
            }
        }
        result["gemv"] = vrows

        // Causal attention of a whole prefill window: 8 heads of 64 (the engine benchmark's shape).
        var arows: [[String: Any]] = []
        print("Attention prefill (8 heads x 64, causal), median of \(reps):")
        for tokens in [128, 512] {
            let sec = KernelBench.timeAttention(tokens: tokens, heads: 8, headDim: 64, threads: threads, reps: reps)
            let flop = 4.0 * 8 * 64 * Double(tokens) * Double(tokens + 1) / 2
            print(String(format: "  tokens %-4d %8.3f ms wall  %.1f GFLOP/s", tokens, sec * 1e3, flop / sec / 1e9))
            arows.append(["tokens": tokens, "heads": 8, "head_dim": 64, "seconds": sec, "gflops": flop / sec / 1e9])
        }
        // Sliding-window attention (Mistral / Qwen2): FLOPs counted over the visible keys only.
        for (tokens, window) in [(512, 64), (2048, 256)] {
            let sec = KernelBench.timeAttention(tokens: tokens, heads: 8, headDim: 64, window: window, threads: threads,
                                                reps: reps)
            var keys = 0.0
            for p in 0..<tokens { keys += Double(min(p + 1, window)) }
            let flop = 4.0 * 8 * 64 * keys
            print(String(format: "  tokens %-4d window %-4d %8.3f ms wall  %.1f GFLOP/s", tokens, window, sec * 1e3,
                         flop / sec / 1e9))
            arows.append(["tokens": tokens, "window": window, "heads": 8, "head_dim": 64, "seconds": sec,
                          "gflops": flop / sec / 1e9])
        }
        result["attention"] = arows

        if let json {
            try ResultEnvelope(kind: "bench_kernels").write(result, to: json)
        }
    }

    private func parseShapes(_ s: String, parts: Int, flag: String) throws -> [[Int]] {
        try s.split(separator: ",").map { item in
            let v = item.split(separator: "x").compactMap { Int($0) }
            guard v.count == parts, v.allSatisfy({ $0 > 0 }) else {
                throw ValidationError("\(flag): cannot read shape '\(item)' (expected \(parts) positive sizes joined by x)")
            }
            return v
        }
    }
}

enum KernelBench {
    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }

    static func median(_ v: [Double]) -> Double { let s = v.sorted(); return s[s.count / 2] }

    /// User CPU seconds of this process (all threads).
    static func cpuTime() -> Double {
        var u = rusage()
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &u)
        return Double(u.ru_utime.tv_sec) + Double(u.ru_utime.tv_usec) * 1e-6
    }

    /// A tight loop of independent 8-lane FMAs (12 chains, enough to cover latency on both FMA pipes).
    /// (wall GFLOP/s, GFLOP per CPU-second), medians.
    static func fmaPeak(threads: Int, reps: Int) -> (Double, Double) {
        let iters = 50_000_000
        var times: [Double] = [], cpus: [Double] = []
        let sink = UnsafeMutablePointer<Float>.allocate(capacity: threads)
        defer { sink.deallocate() }
        let ss = SendablePointer(sink)
        for _ in 0..<reps {
            let t0 = now(), c0 = cpuTime()
            Parallel.forRanges(threads, threads: threads) { r in
                for t in r { ss[t] = fmaLoop(iters, seed: Float(t)) }
            }
            times.append(now() - t0); cpus.append(cpuTime() - c0)
        }
        let flops = Double(iters) * 12 * 16 * Double(threads)
        return (flops / median(times) / 1e9, flops / median(cpus) / 1e9)
    }

    @inline(never)
    static func fmaLoop(_ iters: Int, seed: Float) -> Float {
        let a = SIMD8<Float>(repeating: 0.999_999), b = SIMD8<Float>(repeating: 1e-7 + seed * 1e-9)
        var c0 = SIMD8<Float>(repeating: 1), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0
        var c6 = c0, c7 = c0, c8 = c0, c9 = c0, c10 = c0, c11 = c0
        for _ in 0..<iters {
            c0 = c0.addingProduct(a, b); c1 = c1.addingProduct(a, b); c2 = c2.addingProduct(a, b)
            c3 = c3.addingProduct(a, b); c4 = c4.addingProduct(a, b); c5 = c5.addingProduct(a, b)
            c6 = c6.addingProduct(a, b); c7 = c7.addingProduct(a, b); c8 = c8.addingProduct(a, b)
            c9 = c9.addingProduct(a, b); c10 = c10.addingProduct(a, b); c11 = c11.addingProduct(a, b)
        }
        return (c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 + c9 + c10 + c11).sum()
    }

    static func timeAttention(tokens: Int, heads: Int, headDim: Int, window: Int? = nil, threads: Int, reps: Int) -> Double {
        var rng = SystemRandomNumberGenerator()
        let q = (0..<(tokens * heads * headDim)).map { _ in Float.random(in: -1...1, using: &rng) }
        let kv = (0..<(tokens * heads * headDim)).map { _ in Float.random(in: -1...1, using: &rng) }
        var out = [Float](repeating: 0, count: tokens * heads * headDim)
        var times: [Double] = []
        for rep in 0...reps {
            let t0 = now()
            Kernels.attention(q: q, keys: kv, values: kv, tokens: tokens, start: 0, nHeads: heads, nKVHeads: heads,
                              headDim: headDim, window: window, out: &out, threads: threads)
            if rep > 0 { times.append(now() - t0) }
        }
        return median(times)
    }

    static func weightBytes(kind: String, k: Int, n: Int) -> Int {
        switch kind {
        case "f32": return 4 * k * n
        case "f16", "bf16": return 2 * k * n
        case "w8g128", "w8g128-rows": return k * n + 8 * n * ((k + 127) / 128)
        default: return k * n / 2 + 8 * n * ((k + 127) / 128)
        }
    }

    /// Median wall and CPU seconds of one out = x·wᵀ with the given weight kind.
    static func timeMatmul(kind: String, m: Int, k: Int, n: Int, threads: Int, reps: Int) throws -> (Double, Double) {
        var rng = SystemRandomNumberGenerator()
        let x = (0..<(m * k)).map { _ in Float.random(in: -1...1, using: &rng) }
        var out = [Float](repeating: 0, count: m * n)
        var times: [Double] = [], cpus: [Double] = []
        // Each sample repeats the call for at least 0.15 s so that CPU-time accounting (tick-sampled) averages out.
        func measure(_ body: () -> Void) {
            let w0 = now()
            body() // warm-up
            let once = max(1e-6, now() - w0)
            let calls = max(1, min(10_000, Int(0.15 / once)))
            for _ in 0..<reps {
                let t0 = now(), c0 = cpuTime()
                for _ in 0..<calls { body() }
                times.append((now() - t0) / Double(calls)); cpus.append((cpuTime() - c0) / Double(calls))
            }
        }
        switch kind {
        case "f32", "f16", "bf16":
            let w32 = (0..<(n * k)).map { _ in Float.random(in: -0.1...0.1, using: &rng) }
            let w16 = w32.map { Float16($0) }
            let wb = w32.map { floatToBF16($0) }
            w32.withUnsafeBufferPointer { p32 in
                w16.withUnsafeBufferPointer { p16 in
                    wb.withUnsafeBufferPointer { pb in
                        let w: WeightRef = kind == "f32" ? .f32(p32.baseAddress!)
                            : kind == "f16" ? .f16(p16.baseAddress!) : .bf16(pb.baseAddress!)
                        // The model's path: GEMMs on panels packed once (DenseLinear), GEMVs on the row-major weight.
                        let packed = FloatPanels(w, n: n, k: k, threads: threads)
                        x.withUnsafeBufferPointer { xp in
                            out.withUnsafeMutableBufferPointer { op in
                                measure {
                                    Kernels.matmulNT(x: xp.baseAddress!, m: m, k: k, weight: w, packed: packed, n: n,
                                                     out: op.baseAddress!, threads: threads)
                                }
                            }
                        }
                    }
                }
            }
        default:
            let bits = kind.hasPrefix("w8") ? 8 : 4
            // The model's path (QuantizedLinear): codes in GEMM panels for GEMM and GEMV alike; "-rows": row-major codes.
            let matrix = try KernelBench.randomQuantized(bits: bits, out: n, in: k, groupSize: 128, rng: &rng)
            let q = QuantizedPanels(matrix, threads: threads)
            // "a8": W4A8, int8 activations (k must be a multiple of 32).
            let a8 = kind.hasSuffix("a8") ? W4A8Panels(q) : nil
            if kind.hasSuffix("a8") && a8 == nil { throw QuantKitError(.input, "\(kind): k \(k) is not a multiple of 32") }
            x.withUnsafeBufferPointer { xp in
                out.withUnsafeMutableBufferPointer { op in
                    measure {
                        if let a8 {
                            Kernels.matmulW4A8(x: xp.baseAddress!, m: m, panels: a8, out: op.baseAddress!, threads: threads)
                        } else if kind.hasSuffix("-rows") {
                            Kernels.matmulQuantized(x: xp.baseAddress!, m: m, weight: matrix, out: op.baseAddress!, threads: threads)
                        } else {
                            Kernels.matmulQuantized(x: xp.baseAddress!, m: m, panels: q, out: op.baseAddress!, threads: threads)
                        }
                    }
                }
            }
        }
        return (median(times), max(1e-9, median(cpus)))
    }

    static func randomQuantized(bits: Int, out: Int, in k: Int, groupSize: Int,
                                rng: inout SystemRandomNumberGenerator) throws -> QuantizedMatrix {
        let g = (k + groupSize - 1) / groupSize
        let codes = (0..<(out * k)).map { _ in UInt8.random(in: 0...UInt8((1 << bits) - 1), using: &rng) }
        let scales = (0..<(out * g)).map { _ in Float.random(in: 0.001...0.01, using: &rng) }
        let zeros = (0..<(out * g)).map { _ in Float(Int.random(in: 0..<(1 << bits), using: &rng)) }
        return try QuantizedMatrix(bits: bits, outFeatures: out, inFeatures: k, groupSize: groupSize, codes: codes,
                                    scales: scales, zeros: zeros, inputPermutation: nil)
    }
}
