import ArgumentParser
import Evaluation
import Foundation
import Quantization
import TensorCore

struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Write a model as a llama.cpp GGUF: a float model as F32/F16/Q8_0/Q4_0, a GPTQ/RTN result (symmetric, groups of 32) as Q4_0/Q8_0 blocks holding its own codes.")
    @Option(help: "Model: HF directory, llama2.c .bin, GGUF, or a quantized (GPTQ-layout) directory.") var model: String
    @Option(help: "Output format (gguf).") var format: String = "gguf"
    @Option(help: "f32 | f16 | q8_0 | q4_0") var type: String
    @Option(help: "Tokenizer whose vocabulary goes into the file (default: the model's own; a SentencePiece .model or a GGUF).") var tokenizer: String?
    @Option(help: "Output file (written atomically).") var output: String
    @Option(help: "Write a JSON result here.") var json: String?

    func options() throws -> GGUFExportOptions {
        guard format.lowercased() == "gguf" else { throw QuantKitError(.input, "--format \(format): only gguf is written") }
        guard let t = GGMLType(name: type) else { throw QuantKitError(.input, "--type \(type): expected f32, f16, q8_0 or q4_0") }
        let o = GGUFExportOptions(model: model, output: output, type: t)
        try o.validate()
        return o
    }

    func run() throws {
        try runReportingErrors {
            let r = try ExportRun.run(try options(), tokenizer: tokenizer, progress: Console.progress)
            var lines = [
                "wrote        \(r.output)  (\(r.bytes) bytes)",
                "model        \(r.model)  (\(r.source))",
                "types        " + r.tensorTypes.sorted { $0.key < $1.key }.map { "\($0.key) x\($0.value)" }.joined(separator: "  "),
                String(format: "bits/weight  %.3f  (transformer blocks' linear layers)", r.blockBitsPerWeight),
            ]
            if let a = r.scaleRoundingMaxAbs, let rel = r.scaleRoundingMaxRelative {
                lines.append(String(format: "fp16 scales  largest weight change %.3g (%.3g of the largest |w|)", a, rel))
            }
            for f in r.fallbacks { lines.append("fallback     \(f.tensor) -> \(f.stored): \(f.reason)") }
            for n in r.notes { lines.append("note         \(n)") }
            print(lines.joined(separator: "\n"))
            if let j = json { try ResultEnvelope(kind: "export", bitsPerWeight: r.blockBitsPerWeight).write(r, to: j) }
        }
    }
}
