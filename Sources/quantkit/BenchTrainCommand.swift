import ArgumentParser
import Evaluation
import Foundation
import TensorCore

/// `quantkit bench train`: fine-tuning throughput (tokens per second) and peak memory at a given shape; the peer
/// is Tools/bench_train_pytorch.py (PyTorch eager on the CPU), run in the same minutes by Tools/bench_train.sh.
struct BenchTrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Training tokens per second of the fine-tuning loop (teacher forward, student forward + backward, AdamW) on random weights.")
    @Option(help: "small (stories260K: dim 64, 5 layers), engine (dim 512, hidden 1536, 8 layers) or vocab32k (stories15M: dim 288, 6 layers, 32,000-token vocabulary).") var shape: String = "small"
    @Option(help: "Sequences per step.") var batch: Int = 8
    @Option(help: "Tokens per sequence.") var seqlen: Int = 256
    @Option(help: "Timed steps.") var steps: Int = 10
    @Option(help: "Untimed steps first.") var warmup: Int = 2
    @Option(help: "none, or int4g32 (symmetric int4 groups of 32 with learned scales).") var quant: String = "none"
    @Option(name: .customLong("teacher-top-k"), help: "Distil from the teacher's top K per position, kept per window (the warmup steps fill the cache).") var teacherTopK: Int?
    @Flag(name: .customLong("no-teacher"), help: "Cross-entropy without the teacher's forward: what a cache of its logits could save at most.") var noTeacher = false
    @Option(help: "Worker threads.") var threads: Int = 2
    @Option(help: "Write a JSON result here.") var json: String?

    func run() throws {
        try runReportingErrors {
            guard let s = TrainingBenchOptions.shapes.first(where: { $0.name == shape }) else {
                throw QuantKitError(.input, "--shape must be small, engine or vocab32k (got \(shape))")
            }
            var o = TrainingBenchOptions(shape: s)
            o.batch = batch; o.sequenceLength = seqlen; o.steps = steps; o.warmup = warmup; o.quant = quant; o.threads = max(1, threads); o.teacher = !noTeacher; o.teacherTopK = teacherTopK
            let r = try TrainingBench.run(o, progress: Console.progress)
            let rss = Double(peakRSSKB()) / 1024
            print(String(format: "bench train %@ %@%@: %.1f tokens/s, %.1f ms/step (batch %d x %d, %d threads), peak RSS %.1f MiB",
                         r.shape, r.quant, r.teacherTopK.map { " teacher top-\($0)" } ?? (r.teacher ? "" : " no teacher"), r.tokensPerSecond, r.millisecondsPerStep, r.batch, r.sequenceLength, r.threads, rss))
            if let json {
                struct Out: Encodable { let bench: TrainingBenchReport; let peak_rss_mib: Double }
                try ResultEnvelope(kind: "bench-train").write(Out(bench: r, peak_rss_mib: rss), to: json)
            }
        }
    }
}
