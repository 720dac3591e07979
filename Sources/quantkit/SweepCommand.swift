import ArgumentParser
import Evaluation
import Foundation
import TensorCore

/// `quantkit sweep`: a grid of quantization methods x bits x group sizes, each quantized on the same calibration
/// and evaluated with the same protocol on the same held-out text, in one table and one study report.
struct SweepCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sweep",
        abstract: "Quantize and evaluate a grid of methods x bits x group sizes; print one table and write the study report.")

    @Option(help: "The float model: a Llama-family HF directory or a llama2.c .bin.") var model: String
    @Option(help: "Tokenizer (default: the model's own).") var tokenizer: String?
    @Option(help: "Calibration text (default: Corpora/scifact/corpus.jsonl.zst).") var calibration: String?
    @Option(help: "Held-out evaluation text (must not overlap the calibration text).") var eval: String
    @Option(help: "Comma-separated method specs: a method (gptq, rtn, awq, hqq) with optional +awq, +rotate, +mse, +actorder, +gptaq.")
    var methods: String = "rtn,gptq,awq,gptq+awq,rtn+rotate,gptq+rotate+mse"
    @Option(help: "Comma-separated bit widths (8-bit points are per channel).") var bits: String = "8,4"
    @Option(name: .customLong("group-sizes"), help: "Comma-separated group sizes for the points below 8 bits (-1 per channel).")
    var groupSizes: String = "32"
    @Option(help: "Context length (window) in tokens.") var ctx: Int = 256
    @Option(name: .customLong("protocol"), help: "llamacpp | gptq | strided") var protocolKind: PerplexityProtocol = .llamacpp
    @Option(name: .customLong("max-chunks"), help: "Evaluate at most this many windows.") var maxChunks: Int?
    @Option(help: "Calibration windows.") var samples: Int = 128
    @Option(help: "Tokens per calibration window.") var seqlen: Int = 512
    @Option(help: "Seed of the calibration windows.") var seed: UInt64 = 0
    @Option(help: "Output directory: checkpoints, per-variant results, report.html, report.md.") var output: String
    @Option(help: "Write the sweep's JSON result here.") var json: String?
    @Option(help: "Worker threads.") var threads: Int?

    func run() throws {
        try runReportingErrors {
            func list<T>(_ s: String, _ flag: String, _ parse: (String) -> T?) throws -> [T] {
                try s.split(separator: ",").map { f in
                    let t = f.trimmingCharacters(in: .whitespaces)
                    guard let v = parse(t) else { throw QuantKitError(.input, "--\(flag): '\(t)' is not valid") }
                    return v
                }
            }
            var o = SweepRunOptions(model: model, corpus: eval,
                                    evaluation: PerplexityOptions(protocolKind: protocolKind, ctx: ctx, maxChunks: maxChunks),
                                    output: output)
            o.tokenizer = tokenizer
            o.calibration = calibration
            o.methods = try list(methods, "methods") { $0.isEmpty ? nil : $0 }
            o.bits = try list(bits, "bits") { Int($0) }
            o.groupSizes = try list(groupSizes, "group-sizes") { Int($0) }
            o.samples = samples
            o.seqlen = seqlen
            o.seed = seed
            o.threads = threads
            let report = try SweepRun.run(o, progress: Console.progress)
            print(report.table)
            print("study report: \(report.report)")
            if let json { try ResultEnvelope(kind: "sweep").write(report, to: json) }
        }
    }
}
