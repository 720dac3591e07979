import Evaluation
import ArgumentParser
import Foundation
import Models
import TensorCore

struct ConvertCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "convert", abstract: "Convert a llama2.c checkpoint into a Hugging Face directory.")
    @Option(name: .customLong("llama2c"), help: "llama2.c legacy .bin checkpoint.") var llama2c: String
    @Option(help: "Tokenizer file to copy into the output (tok512.bin / tok512.model / tokenizer.json).") var tokenizer: String?
    @Option(help: "Output directory (written atomically).") var output: String
    @Option(help: "Matrix dtype: f32, f16 or bf16.") var dtype: String = "f32"
    @Option(help: "Write a JSON result here.") var json: String?

    func run() throws {
        try runReportingErrors {
            guard let dt = ["f32": DType.f32, "f16": .f16, "bf16": .bf16][dtype.lowercased()] else {
                throw QuantKitError(.input, "--dtype must be f32, f16 or bf16 (got \(dtype))")
            }
            let (cfg, weights) = try Llama2C.load(path: llama2c)
            _ = try LlamaModel(config: cfg, source: weights, name: llama2c)  // verify before writing
            var copies: [(from: String, name: String)] = []
            if let t = tokenizer {
                guard FileManager.default.fileExists(atPath: t) else { throw QuantKitError(.io, "\(t): no such file") }
                let ext = (t as NSString).pathExtension
                let name = ext == "model" ? "tokenizer.model" : ext == "bin" ? "tokenizer.bin" : ext == "json" ? "tokenizer.json" : (t as NSString).lastPathComponent
                copies.append((t, name))
            }
            try HFExport.write(config: cfg, source: weights, dtype: dt, to: output, copyFiles: copies)
            print("wrote \(output): config.json, model.safetensors (\(dt.rawValue))" + (copies.isEmpty ? "" : ", \(copies[0].name)"))
            if let j = json {
                let obj: [String: Any] = ["input": llama2c, "output": output, "dtype": dt.rawValue,
                                          "tokenizer": tokenizer ?? NSNull(), "timings": [String: Double]()]
                try ResultEnvelope(kind: "convert").write(obj, to: j)
            }
        }
    }
}
