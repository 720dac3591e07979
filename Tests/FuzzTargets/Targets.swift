import Foundation
import TensorCore
import Tokenization
import Datasets
import Models
import Evaluation

/// One fuzz target: a parser a user can feed, run on one input. The input must make it either return or throw: a
/// trap, an ASan report, a hang past libFuzzer's timeout or an allocation past its limit is a finding.
public struct FuzzTarget: Sendable {
    public let name: String
    /// What the seed files are; shown by `Tools/fuzz.sh --list`.
    public let summary: String
    public let run: @Sendable (Data, Scratch) throws -> Void

    /// Runs one input: nil when it is accepted, else the refusal's message. A refusal is one non-empty line (the
    /// user sees nothing else); anything else is a finding, reported as a trap like a crash.
    public func outcome(_ data: Data, _ scratch: Scratch) -> String? {
        do {
            try run(data, scratch)
            return nil
        } catch {
            let message = "\(error)"
            precondition(!message.isEmpty && !message.contains("\n"), "\(name): a refusal that is not one line: '\(message)'")
            return message
        }
    }
}

/// A per-process folder on tmpfs where path-based parsers read their input, as they would a user's file.
public final class Scratch: @unchecked Sendable {
    public let dir: String
    public init() {
        let root = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
        dir = "\(root)/quantkit-fuzz-\(getpid())"
        try? FileManager.default.removeItem(atPath: dir)
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: dir) }
    /// Writes `data` to `name` inside the scratch folder (making subfolders) and returns its path.
    @discardableResult
    func file(_ name: String, _ data: Data) -> String {
        let p = "\(dir)/\(name)"
        let parent = (p as NSString).deletingLastPathComponent
        if parent != dir { try? FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true) }
        _ = FileManager.default.createFile(atPath: p, contents: data)
        return p
    }
    /// A fresh empty subfolder.
    func folder(_ name: String) -> String {
        let p = "\(dir)/\(name)"
        try? FileManager.default.removeItem(atPath: p)
        try? FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true)
        return p
    }
}

/// Splits one fuzz input into `count` parts at the separator line "\n#--\n", so one input can stand for a folder of
/// files (a BEIR dataset, a checkpoint directory); missing parts are empty.
func parts(_ data: Data, _ count: Int) -> [Data] {
    let sep = Data("\n#--\n".utf8)
    var out: [Data] = []
    var rest = data[...]
    while out.count < count - 1, let r = rest.range(of: sep) {
        out.append(Data(rest[rest.startIndex..<r.lowerBound]))
        rest = rest[r.upperBound...]
    }
    out.append(Data(rest))
    while out.count < count { out.append(Data()) }
    return out
}

/// A model that loaded must also run: a shape the loader let through but the kernels cannot take is a finding.
private func exercise(_ model: LlamaModel) throws {
    let n = min(3, model.config.maxPositionEmbeddings)
    let tokens = (0..<n).map { Int32($0 % max(1, model.config.vocabSize)) }
    _ = try model.logits(tokens)
}

/// A tokenizer that loaded must encode and decode, and every id it emits must index an embedding table of its
/// vocabulary size (a vocabulary may have holes, as Hugging Face's allows).
private func exercise(_ tok: any Tokenizer) {
    let ids = tok.encode(" Hello  wörld\n\t日本 <s> 123 ", addSpecialTokens: true)
    _ = tok.decode(ids, skipSpecialTokens: false)
    _ = tok.decode(Array(0..<min(tok.vocabSize, 64)), skipSpecialTokens: true)
    for id in ids { precondition(id >= 0 && id < tok.vocabSize, "encode produced id \(id) outside 0..<\(tok.vocabSize)") }
}

/// Runs both readers of one file format; throws (the first one's error) only when both refuse.
private func eitherAccepts(_ a: () throws -> Void, _ b: () throws -> Void) throws {
    let first = Result { try a() }
    let second = Result { try b() }
    if case .failure(let error) = first, case .failure = second { throw error }
}

/// Every target, by name (Tools/fuzz.sh --list).
public let fuzzTargets: [FuzzTarget] = [
    FuzzTarget(name: "safetensors", summary: "a .safetensors file: header JSON, dtypes, shapes, offsets") { data, s in
        let f = try SafetensorsFile(path: s.file("model.safetensors", data))
        for name in f.names { _ = try f.tensor(name) }
    },
    FuzzTarget(name: "config", summary: "a Hugging Face config.json (Llama and BERT readers)") { data, s in
        let p = s.file("config.json", data)
        try eitherAccepts({ _ = try LlamaConfig.load(path: p) }, { _ = try BertConfig.load(p) })
    },
    FuzzTarget(name: "hf-checkpoint", summary: "config.json #-- model.safetensors: a whole Hugging Face checkpoint folder, loaded and run") { data, s in
        let p = parts(data, 2)
        let dir = s.folder("ckpt")
        s.file("ckpt/config.json", p[0])
        s.file("ckpt/model.safetensors", p[1])
        try exercise(try LlamaModel.load(path: dir))
    },
    FuzzTarget(name: "hf-tokenizer", summary: "a Hugging Face tokenizer.json (BPE, WordPiece, Unigram)") { data, _ in
        exercise(try HFTokenizer(data: data, fileName: "tokenizer.json"))
    },
    FuzzTarget(name: "sentencepiece", summary: "a SentencePiece tokenizer.model (protobuf)") { data, _ in
        exercise(try SentencePieceTokenizer(data: data, fileName: "tokenizer.model"))
    },
    FuzzTarget(name: "llama2c-tokenizer", summary: "a llama2.c tokenizer.bin") { data, _ in
        exercise(try Llama2cTokenizer(data: data, fileName: "tokenizer.bin"))
    },
    FuzzTarget(name: "llama2c-model", summary: "a llama2.c model .bin, loaded and run") { data, s in
        let p = s.file("model.bin", data)
        let (cfg, weights) = try Llama2C.load(path: p)
        try exercise(try LlamaModel(config: cfg, source: weights, name: p))
    },
    FuzzTarget(name: "gguf", summary: "a GGUF file: header, metadata, tensor infos, vocabulary, model (loaded and run)") { data, s in
        let p = s.file("model.gguf", data)
        let f = try GGUFFile(path: p)
        if let tok = try? GGUFVocabulary.tokenizer(f) { exercise(tok) }
        try exercise(try GGUFLlama.load(path: p))
    },
    FuzzTarget(name: "zstd", summary: "a zstd frame (compressed fixtures, .zst tokenizers and corpora)") { data, _ in
        _ = try Zstd.decompress(data)
    },
    FuzzTarget(name: "logits-base", summary: "a KLD base: QuantKit's zstd logits file or llama.cpp's --kl-divergence-base file") { data, s in
        let f = try LogitsFile(path: s.file("base.logits", data))
        let h = f.header
        try f.checkCompatible(corpusSHA256: h.corpus_sha256, tokenizer: h.tokenizer, protocolName: h.protocol,
                              ctx: h.ctx, stride: h.stride, vocab: h.vocab)
    },
    FuzzTarget(name: "result-json", summary: "a result JSON read by compare, study and merge (whole or partial)") { data, s in
        let p = s.file("result.json", data)
        try eitherAccepts({ _ = try ResultFile(data: data, path: p) }, { _ = try MergeRun.run([p]) })
    },
    FuzzTarget(name: "beir", summary: "corpus.jsonl #-- queries.jsonl #-- qrels/test.tsv: a BEIR dataset folder") { data, s in
        let p = parts(data, 3)
        let dir = s.folder("beir")
        s.file("beir/corpus.jsonl", p[0])
        s.file("beir/queries.jsonl", p[1])
        s.file("beir/qrels/test.tsv", p[2])
        _ = try Datasets.loadBEIR(dir)
    },
    FuzzTarget(name: "squad", summary: "a SQuAD v1.1 JSON file") { data, s in
        _ = try Datasets.loadSQuAD(s.file("squad.json", data))
    },
]
