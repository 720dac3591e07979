import Foundation
import TensorCore
import Tokenization
import Datasets
import Models
import Evaluation

/// A model that loaded must also run: a shape the loader let through but the kernels cannot take is a finding.
private func exercise(_ model: LlamaModel) throws {
    let n = min(3, model.config.maxPositionEmbeddings)
    let tokens = (0..<n).map { Int32($0 % max(1, model.config.vocabSize)) }
    _ = try model.logits(tokens)
}

/// A tokenizer that loaded must encode and decode: ids it emits index its own vocabulary.
private func exercise(_ tok: any Tokenizer) {
    let ids = tok.encode(" Hello  wörld\n\t日本 <s> 123 ", addSpecialTokens: true)
    _ = tok.decode(ids, skipSpecialTokens: false)
    _ = tok.decode(Array(0..<min(tok.vocabSize, 64)), skipSpecialTokens: true)
    for id in ids { precondition(tok.token(for: id) != nil, "encode produced id \(id) outside the vocabulary") }
}

/// Runs both readers of one file format; throws (the first one's error) only when both refuse.
private func eitherAccepts(_ a: () throws -> Void, _ b: () throws -> Void) throws {
    let first = Result { try a() }
    let second = Result { try b() }
    if case .failure(let error) = first, case .failure = second { throw error }
}

let fuzzTargets: [FuzzTarget] = [
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
