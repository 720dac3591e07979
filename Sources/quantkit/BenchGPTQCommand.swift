import ArgumentParser
import Foundation
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
    @Option(help: "Group size (-1 per channel).") var groupSize = 128
    @Flag(help: "act-order") var actOrder = false
    @Option(help: "Repetitions (median reported).") var repeats = 3
    @Option(help: "Write results as JSON here.") var json: String?

    func run() throws {
        try runReportingErrors {
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
                    let cfg = GPTQConfig(scheme: try QuantScheme(bits: bits, symmetric: false, groupSize: groupSize), actOrder: actOrder)
                    let r = try GPTQ.quantize(weight: w, outFeatures: out, inFeatures: inF, hessian: h, config: cfg)
                    let t2 = Date(), c2 = cpuSeconds()
                    hTimes.append(t1.timeIntervalSince(t0)); qTimes.append(t2.timeIntervalSince(t1)); loss = r.loss
                    hCPU.append(c1 - c0); qCPU.append(c2 - c1)
                }
                hTimes.sort(); qTimes.sort(); hCPU.sort(); qCPU.sort()
                let hm = hTimes[hTimes.count / 2], qm = qTimes[qTimes.count / 2]
                let hc = hCPU[hCPU.count / 2], qc = qCPU[qCPU.count / 2]
                print(String(format: "gptq %@: %d tokens  hessian %.3f s (cpu %.3f s)  quantize %.3f s (cpu %.3f s)  total %.3f s  (threads %d, median of %d)",
                             s, tokens, hm, hc, qm, qc, hm + qm, Parallel.defaultThreads, repeats))
                rows.append(["shape": s, "tokens": tokens, "hessian_s": hm, "gptq_s": qm, "total_s": hm + qm, "hessian_cpu_s": hc,
                             "gptq_cpu_s": qc, "loss": loss])
            }
            if let json {
                let o: [String: Any] = ["schema_version": 1, "benchmark": "gptq", "bits": bits, "group_size": groupSize,
                                        "act_order": actOrder, "threads": Parallel.defaultThreads, "results": rows]
                try AtomicFile.write(try JSONSerialization.data(withJSONObject: o, options: [.prettyPrinted, .sortedKeys]), to: json)
            }
        }
    }
}

/// User + system CPU seconds of this process (all threads).
func cpuSeconds() -> Double {
    var u = rusage()
    getrusage(RUSAGE_SELF.rawValue, &u)
    return Double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + Double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6
}
