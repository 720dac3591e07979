import ArgumentParser
import Datasets
import Evaluation
import Foundation
import Models
import TensorCore

/// `quantkit bench rag`: encoder throughput (tokens/s, GFLOP/s of linear + attention) on SciFact passages,
/// float and quantized, and exact top-k search time over the corpus.
struct RagBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rag", abstract: "BERT encoder tokens/s and GFLOP/s on SciFact; top-k search time.")
    @Option(help: "Embedding model directory (default: the pinned all-MiniLM-L6-v2).") var embedder: String?
    @Option(help: "BEIR dataset directory.") var dataset: String = "Corpora/scifact"
    @Option(help: "Passages to encode (the first N of the corpus).") var docs: Int = 256
    @Option(parsing: .singleValue, help: "Also time these quantized embedders (e.g. rtn-int8, rtn-int4-g32).") var embedderQuantized: [String] = []
    @Option(help: "Repetitions (the median is reported).") var repeats: Int = 3
    @Option(help: "Worker threads.") var threads: Int?

    func run() throws {
        try runReportingErrors {
            let th = threads ?? Parallel.defaultThreads
            let ds = try Datasets.loadBEIR(ShippedData.path(dataset), split: "test")
            let dir = try RagEmbedders.resolveDirectory(embedder, embedderOverride: Console.embedderOverride)
            let texts = ds.corpus.prefix(docs).map(\.embeddingText)
            let (peak, _) = KernelBench.fmaPeak(threads: th, reps: 5)
            print(String(format: "FMA peak: %.1f GFLOP/s on %d threads (measured now)", peak, th))
            for spec in [nil] + embedderQuantized.map(Optional.some) {
                let e = try RagEmbedders.load(directory: dir, quantized: spec)
                // Time the linear layers on their own: the same kernels, wrapped.
                var timed: [TimedLinear] = []
                for i in 0..<e.encoder.model.layerCount {
                    for name in e.encoder.model.linearGroups(layer: i).joined() {
                        guard let l = e.encoder.model.linear(named: name) else { continue }
                        let t = TimedLinear(l)
                        try e.encoder.model.setLinear(t, named: name)
                        timed.append(t)
                    }
                }
                let ids = try texts.map { try e.tokenize(BertSentenceEncoder.stripPythonWhitespace($0)) }
                var rows: [(Double, Double, BertSentenceEncoder.Stats)] = []
                for _ in 0..<max(1, repeats) {
                    var st = BertSentenceEncoder.Stats()
                    for t in timed { t.seconds = 0 }
                    _ = try e.encoder.encode(ids: ids, threads: th, stats: &st)
                    rows.append((st.seconds, timed.reduce(0) { $0 + $1.seconds }, st))
                }
                rows.sort { $0.0 < $1.0 }
                let (sec, linSec, st) = rows[rows.count / 2]
                let linFlops = 2 * Double(st.linearMACs)
                let allG = (linFlops + 2 * Double(st.attentionMACs)) / sec / 1e9
                print(String(format: "encode %@: %d passages, %d tokens (%d truncated), median %.2f s: %.0f tokens/s, %.1f GFLOP/s overall (linear FLOPs / total time %.1f = %.0f%% of peak), %d threads",
                             e.name, st.texts, st.tokens, st.truncated, sec, Double(st.tokens) / sec, allG,
                             linFlops / sec / 1e9, 100 * linFlops / sec / 1e9 / peak, th))
                print(String(format: "  linear layers: %.2f s of %.2f s (%.0f%%), %.1f GFLOP/s = %.0f%% of peak",
                             linSec, sec, 100 * linSec / sec, linFlops / linSec / 1e9, 100 * linFlops / linSec / 1e9 / peak))
            }
            // Search: 300 queries x whole corpus (random unit vectors; the time does not depend on the values).
            var rng = SystemRandomNumberGenerator()
            let dim = 384, nd = ds.corpus.count, nq = ds.queries.count
            func unit(_ n: Int) -> [Float] {
                var v = (0..<(n * dim)).map { _ in Float.random(in: -1...1, using: &rng) }
                for r in 0..<n {
                    var s: Float = 0
                    for c in 0..<dim { s += v[r * dim + c] * v[r * dim + c] }
                    for c in 0..<dim { v[r * dim + c] /= s.squareRoot() }
                }
                return v
            }
            let corpus = unit(nd), queries = unit(nq)
            var times: [Double] = []
            for _ in 0..<max(1, repeats) {
                let t0 = Date()
                _ = DenseSearch.topK(queries: queries, corpus: corpus, dim: dim, docIDs: ds.corpus.map(\.id), k: 100, threads: th)
                times.append(Date().timeIntervalSince(t0))
            }
            times.sort()
            print(String(format: "search: %d queries x %d documents x %d dims, top-100: median %.1f ms", nq, nd, dim, times[times.count / 2] * 1000))
        }
    }
}

/// A linear layer that adds its forward wall time to `seconds` (the bench's linear-layer share).
final class TimedLinear: LinearLayer, @unchecked Sendable {
    let inner: any LinearLayer
    var seconds = 0.0
    var inFeatures: Int { inner.inFeatures }
    var outFeatures: Int { inner.outFeatures }
    init(_ inner: any LinearLayer) { self.inner = inner }
    func forward(_ x: UnsafePointer<Float>, rows: Int, out: UnsafeMutablePointer<Float>, threads: Int) {
        let t0 = KernelBench.now()
        inner.forward(x, rows: rows, out: out, threads: threads)
        seconds += KernelBench.now() - t0
    }
}
