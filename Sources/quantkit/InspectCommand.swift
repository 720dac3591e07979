import Evaluation
import ArgumentParser
import Foundation
import Models
import TensorCore
import Tokenization

struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "inspect", abstract: "Show a checkpoint's tensors or a tokenizer's type.")
    @Argument(help: "A .safetensors file, a checkpoint directory, a llama2.c .bin, a GGUF file, or a tokenizer (tokenizer.json, .model, tokenizer .bin).")
    var path: String
    @Option(help: "Write the JSON result (docs/RESULTS.md) to this path.")
    var json: String?

    func run() throws {
        try runReportingErrors {
            var result: [String: Any] = ["path": path]
            if isTokenizerFile(path) {
                let tok = try TokenizerLoader.load(data: try readMaybeCompressed(path), fileName: path)
                print("tokenizer: \(tok.name)  type: \(type(of: tok))  vocabulary: \(tok.vocabSize)  adds BOS: \(tok.addsBOS)"
                      + "  bos: \(tok.bosId.map(String.init) ?? "-")  eos: \(tok.eosId.map(String.init) ?? "-")")
                result["tokenizer"] = ["name": tok.name, "type": "\(type(of: tok))", "vocab_size": tok.vocabSize, "adds_bos": tok.addsBOS]
            } else {
                var rows: [(String, String, [Int], Int)] = []
                if GGUFFile.isGGUF(path) {
                    let f = try GGUFFile(path: path)
                    let arch = f.metadata["general.architecture"]?.string ?? "?"
                    let vocab = f.metadata["tokenizer.ggml.tokens"]?.array?.count
                    print("GGUF v\(f.version): architecture \(arch), \(f.keys.count) metadata keys, alignment \(f.alignment)"
                          + (vocab.map { ", vocabulary \($0) (\(f.metadata["tokenizer.ggml.model"]?.string ?? "?"))" } ?? ""))
                    print("types: " + f.typeCounts.sorted { $0.key < $1.key }.map { "\($0.key) x\($0.value)" }.joined(separator: "  "))
                    // Scalars only: arrays (the vocabulary) would flood the output.
                    var meta: [String: String] = [:]
                    for k in f.keys where f.metadata[k]?.array == nil { meta[k] = "\(f.metadata[k]!)" }
                    result["metadata"] = meta
                    for t in f.tensors { rows.append((t.name, t.type.name, t.shape, t.byteCount)) }
                } else if path.hasSuffix(".bin") {
                    let header = try Llama2C.readHeader(try MappedFile(path: path))
                    let (config, weights) = try Llama2C.load(path: path)
                    print("llama2.c checkpoint: dim \(header.dim), hidden \(header.hiddenDim), layers \(header.nLayers), heads \(header.nHeads), "
                          + "kv heads \(header.nKVHeads), vocab \(header.vocabSize), seq \(header.seqLen), "
                          + (header.sharedClassifier ? "shared classifier" : "separate classifier"))
                    result["config"] = try JSONSerialization.jsonObject(with: JSONEncoder().encode(config))
                    for name in weights.names.sorted() {
                        let t = try weights.tensor(name)
                        rows.append((name, t.dtype.rawValue, t.shape, t.byteCount))
                    }
                } else {
                    let ckpt = try SafetensorsCheckpoint(path: path)
                    for name in ckpt.names {
                        let info = ckpt.info(name)!
                        rows.append((name, info.dtype.rawValue, info.shape, info.dataRange.count))
                    }
                    if !ckpt.metadata.isEmpty { result["metadata"] = ckpt.metadata }
                }
                var params = 0, bytes = 0
                for (name, dtype, shape, size) in rows {
                    params += shape.reduce(1, *)
                    bytes += size
                    print("\(name)  \(dtype)  \(shape)")
                }
                print("tensors: \(rows.count)  parameters: \(params)  bytes: \(bytes)")
                result["tensors"] = rows.map { ["name": $0.0, "dtype": $0.1, "shape": $0.2, "bytes": $0.3] as [String: Any] }
                result["parameters"] = params
                result["bytes"] = bytes
            }
            if let json {
                try ResultEnvelope(kind: "inspect").write(result, to: json)
            }
        }
    }

    private func isTokenizerFile(_ p: String) -> Bool {
        var base = (p as NSString).lastPathComponent
        if base.hasSuffix(".zst") { base.removeLast(4) }
        if base.hasSuffix(".json") || base.hasSuffix(".model") { return true }
        // A llama2.c tokenizer.bin starts with max_token_length and has no plausible model header.
        if base.hasSuffix(".bin"), let f = try? MappedFile(path: p) { return Llama2C.isTokenizerLayout(f) && (try? Llama2C.readHeader(f)) == nil }
        return false
    }
}
