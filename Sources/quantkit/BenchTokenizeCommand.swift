import Evaluation
import ArgumentParser
import Foundation
import TensorCore
import Tokenization

/// `quantkit bench tokenize`: encode throughput (MB/s) on WikiText-2 raw test for the shipped tokenizers,
/// single-threaded (whole text as one string, and a loop over lines) and multithreaded (line-batched),
/// beside the Python reference libraries measured in the same run (Tools/bench_tokenizers.py).
struct BenchTokenizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokenize", abstract: "Tokenizer encode throughput vs the Python tokenizers/sentencepiece libraries.")

    @Option(help: "Corpus to encode.")
    var corpus = "Corpora/wikitext-2-raw/wiki.test.raw.zst"
    @Option(help: "Timed repetitions per measurement (the median is reported).")
    var repeats = 5
    @Option(help: "Worker threads for the batched measurement.")
    var threads = Parallel.defaultThreads
    @Flag(help: "Skip the Python reference measurement.")
    var noPython = false
    @Option(help: "Write the JSON result (docs/RESULTS.md) to this path.")
    var json: String?

    static let tokenizers = [("gpt2", "Tokenizers/gpt2/tokenizer.json.zst"),
                             ("minilm", "Tokenizers/minilm/tokenizer.json.zst"),
                             ("tok512", "Tokenizers/tok512/tok512.model")]

    func run() throws {
        try runReportingErrors {
            let raw = try readMaybeCompressed(corpus)
            guard let text = String(data: raw, encoding: .utf8) else { throw QuantKitError(.input, "\(corpus): not UTF-8 text") }
            let lines = text.utf8.split(separator: 0x0A, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
            let mb = Double(raw.count) / 1e6
            func median(_ body: () -> Void) -> Double {
                var t: [Double] = []
                for _ in 0..<max(1, repeats) {
                    let s = DispatchTime.now().uptimeNanoseconds
                    body()
                    t.append(Double(DispatchTime.now().uptimeNanoseconds - s) / 1e9)
                }
                return t.sorted()[t.count / 2]
            }
            var results: [String: [String: Any]] = [:]
            for (name, path) in Self.tokenizers {
                let tok = try TokenizerLoader.load(data: try readMaybeCompressed(path), fileName: path)
                var count = 0
                let whole = median { count = tok.encode(text, addSpecialTokens: false).count }
                let single = median { _ = tok.encodeBatch(lines, threads: 1) }
                let multi = median { _ = tok.encodeBatch(lines, threads: threads) }
                results[name] = ["single_whole": mb / whole, "single_lines": mb / single, "multi_lines": mb / multi,
                                 "tokens": count]
                logInfo("\(name): measured")
            }
            var python: [String: Any]? = nil
            if !noPython {
                logInfo("running Tools/bench_tokenizers.py (Python tokenizers / sentencepiece) ...")
                python = runPython()
            }
            let pyResults = python?["results"] as? [String: [String: Any]] ?? [:]
            print(String(format: "WikiText-2 raw test: %.2f MB, %d lines, %d threads, median of %d (MB/s; ratio = QuantKit / Python)",
                         mb, lines.count, threads, repeats))
            print("tokenizer  mode          QuantKit   Python   ratio   tokens")
            for (name, _) in Self.tokenizers {
                let r = results[name]!
                for mode in ["single_whole", "single_lines", "multi_lines"] {
                    let q = r[mode] as! Double
                    let p = pyResults[name]?[mode] as? Double
                    func pad(_ s: String, _ n: Int, left: Bool = false) -> String {
                        let fill = String(repeating: " ", count: max(0, n - s.count))
                        return left ? fill + s : s + fill
                    }
                    print(pad(name, 10) + " " + pad(mode, 13) + pad(String(format: "%.2f", q), 9, left: true)
                          + pad(p.map { String(format: "%.2f", $0) } ?? "-", 9, left: true)
                          + pad(p.map { String(format: "%.2fx", q / $0) } ?? "-", 8, left: true) + "  \(r["tokens"] as! Int)")
                    if let pt = pyResults[name]?["tokens"] as? Int, pt != r["tokens"] as! Int {
                        print("  warning: token count differs from the Python library (\(pt))")
                    }
                }
            }
            if let json {
                var out: [String: Any] = ["corpus": corpus,
                                          "bytes": raw.count, "lines": lines.count, "threads": threads,
                                          "repeats": repeats, "unit": "MB/s", "quantkit": results]
                if let python { out["python"] = python }
                try ResultEnvelope(kind: "bench_tokenize").write(out, to: json)
            }
        }
    }

    private func runPython() -> [String: Any]? {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", "Tools/bench_tokenizers.py", "--repeats", String(repeats), "--threads", String(threads)]
        let pipe = Pipe()
        p.standardOutput = pipe
        do { try p.run() } catch { logInfo("python benchmark not run: \(error)"); return nil }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0, let o = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            logInfo("python benchmark failed (status \(p.terminationStatus)); is `pip install tokenizers sentencepiece` done?")
            return nil
        }
        return o
    }
}
