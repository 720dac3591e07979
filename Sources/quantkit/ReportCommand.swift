import ArgumentParser
import Evaluation
import Foundation
import TensorCore

/// `quantkit report RESULT.json...`: one study's results of every kind in one HTML page and one Markdown file.
struct ReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "One study report from result files of any kinds: the recommended variant, every comparison, one HTML page and one Markdown file.",
        discussion: """
        The files are grouped by kind (perplexity, retrieval, answers; layer results feed the language-model \
        kinds' advice and the sensitivity chart) and compared as `quantkit compare` does. Baseline of each kind: \
        the run of --baseline FILE if that file is of this kind; else the 16-bit float run (bits per weight 16, \
        no quantization settings) when one is given, with float runs of more bits shown as references (FP32 -> \
        FP16); else the first float run. The headline recommends, per model (language model; embedder), the \
        variant with the fewest bits per weight that ships on every kind it was measured on, or, when none \
        ships, the closest one and what to try next.
        """)

    @OptionGroup var inputs: ComparisonInputs




    @Option(help: "Write the self-contained HTML page here.")
    var html: String?

    @Option(name: .customLong("markdown"), help: "Write the Markdown report here; '-' prints it.")
    var markdown: String?

    @Option(help: "Write the report (recommendations, variants, every comparison) as JSON.")
    var json: String?

    @Option(help: "Page title.")
    var title: String = "QuantKit study report"



    func run() throws {
        try runReportingErrors {
            let (t, files) = try inputs.load()
            let study = try Study.build(files: files, thresholds: t, baseline: inputs.baseline, resamples: inputs.resamples, seed: inputs.seed)
            print(study.summary(), terminator: "")
            if let path = html {
                try AtomicFile.write(Data(HTMLReport.render(study, title: title).utf8), to: path)
                print("HTML report: \(path)")
            }
            if let path = markdown {
                let md = MarkdownReport.render(study)
                if path == "-" { print(md) } else {
                    try AtomicFile.write(Data(md.utf8), to: path)
                    print("Markdown report: \(path)")
                }
            }
            if let path = json {
                try ResultEnvelope(kind: "report").write(study, to: path)
                print("JSON: \(path)")
            }
        }
    }
}
