import ArgumentParser
import Evaluation
import Foundation
import TensorCore

/// `quantkit compare RESULT.json...`: deltas, intervals and the ship / improve / stay verdict.
struct CompareCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compare",
        abstract: "Compare result files of one kind (float baseline first) and decide: ship, improve or stay FP16.",
        discussion: """
        Baseline: the run of --baseline FILE; else the 16-bit float run (bits per weight 16, no quantization \
        settings) when one is given, float runs of more bits then shown as references (FP32 -> FP16); else the \
        first float run given (or a base named inside a quantized-vs-base file). Layer results \
        (quantkit layers, npu report, quantize) may be added: they rank modules for the 'improve' advice and feed \
        the sensitivity chart.
        """)

    @OptionGroup var inputs: ComparisonInputs




    @Option(help: "Write a self-contained HTML report with SVG charts.")
    var html: String?

    @Option(name: .customLong("markdown"), help: "Write a Markdown report (for a pull-request comment) to this file; '-' prints it.")
    var markdown: String?

    @Option(help: "Write the comparison as JSON.")
    var json: String?



    func run() throws {
        try runReportingErrors {
            let (t, files) = try inputs.load()
            let c = try Comparison.build(files: files, thresholds: t, resamples: inputs.resamples, seed: inputs.seed, baseline: inputs.baseline)
            print(c.table(), terminator: "")
            if let path = html {
                try HTMLReport.write(c, to: path)
                print("HTML report: \(path)")
            }
            if let path = markdown {
                let md = MarkdownReport.render(c)
                if path == "-" { print(md) } else {
                    try AtomicFile.write(Data(md.utf8), to: path)
                    print("Markdown report: \(path)")
                }
            }
            if let path = json {
                try ResultEnvelope(kind: "compare").write(c, to: path)
                print("JSON: \(path)")
            }
        }
    }
}

/// The inputs `compare` and `report` share: result files, the baseline, thresholds and the bootstrap.
struct ComparisonInputs: ParsableArguments {
    @Argument(help: "Result JSON files (perplexity, retrieval, answers; plus optional layers / npu report / quantize results).")
    var results: [String]

    @Option(help: "The result file whose run is the baseline of its kind (default: the FP16 run when present, else the first float run).")
    var baseline: String?

    @Option(help: "Relative-loss thresholds in percent: SHIP,STAY (below SHIP ship; up to STAY improve; above stay FP16).")
    var thresholds: String = "1,3"

    @Option(help: "Bootstrap resamples for the confidence intervals.")
    var resamples: Int = Bootstrap.defaultResamples

    @Option(help: "Bootstrap seed.")
    var seed: UInt64 = Bootstrap.defaultSeed

    /// The parsed thresholds and the result files read.
    func load() throws -> (thresholds: VerdictThresholds, files: [ResultFile]) {
        let t = try VerdictThresholds(parsing: thresholds)
        guard resamples >= 10 else { throw QuantKitError(.input, "--resamples must be at least 10, got \(resamples)") }
        return (t, try results.map { try ResultFile(path: $0) })
    }
}
