import Foundation
import TensorCore

/// The tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata, behaving as llama.cpp's (src/llama-vocab.cpp;
/// behaviour read there, not code). The engines are the repo's own: `SentencePieceTokenizer` for
/// `tokenizer.ggml.model = "llama"`, `HFTokenizer`'s byte-level BPE for `"gpt2"`.
///
/// llama.cpp's SPM tokenizer (llm_tokenizer_spm) prepends one space when `tokenizer.ggml.add_space_prefix` (default
/// true), turns every ' ' into U+2581 and merges by piece score with <0xNN> byte fallback. It does NOT collapse runs
/// of spaces or strip leading/trailing ones: a sentencepiece model with `remove_extra_whitespaces` (on by default)
/// encodes "a  b" differently. Llama-2's own model has it off, so there both agree.
///
/// As llama.cpp's `llama_tokenize(..., parse_special: false)`: control and unknown pieces written in the text are
/// plain text, user-defined pieces are always split out first (and the text after one gets the space prefix again).
/// Decoding is llama.cpp's `llama_detokenize` (`skipSpecialTokens` = remove_special, otherwise unparse_special).
public enum GGUFVocabulary {
    public static func tokenizer(_ file: GGUFFile) throws -> any Tokenizer {
        let r = MetaReader(file: file)
        let model = try file.require("tokenizer.ggml.model", "a string", \.string)
        switch model {
        case "llama": return try spm(r)
        case "gpt2": return try bpe(r)
        default:
            throw r.error("tokenizer.ggml.model", "'\(model)' is not supported (only \"llama\" SPM and \"gpt2\" BPE)")
        }
    }

    private static func spm(_ r: MetaReader) throws -> any Tokenizer {
        let tokens = try r.tokens()
        let n = tokens.count
        let scoresKey = "tokenizer.ggml.scores"
        let scores = try r.file.require(scoresKey, "an array of numbers", \.doubles)
        guard scores.count == n else { throw r.error(scoresKey, "has \(scores.count) entries but tokenizer.ggml.tokens has \(n)") }
        let types = try r.types(n)
        // llama.cpp's SPM defaults: BOS 1, EOS 2, unknown 0, add BOS, no EOS, space prefix.
        let meta = try GGUFTokenMeta(r, tokens: tokens, types: types, defaults: (1, 2, 0), addBOS: true,
                                     addSpacePrefix: true, cleanSpaces: false)
        let v = SPVocabulary(pieces: tokens, scores: scores.map { Float($0) }, types: types, unkId: meta.unk ?? 0,
                             bosId: meta.bos, eosId: meta.eos, padId: meta.pad, byteFallback: true,
                             addDummyPrefix: meta.addSpacePrefix, removeExtraWhitespaces: false,
                             escapeWhitespaces: true, unkSurface: "\u{2585}", llamaCpp: true)
        let inner = try r.converting { try SentencePieceTokenizer(v, fileName: r.file.path, name: "") }
        return GGUFSPMTokenizer(name: "gguf-spm:" + r.baseName, inner: inner, meta: meta)
    }

    private static func bpe(_ r: MetaReader) throws -> any Tokenizer {
        let tokens = try r.tokens()
        let n = tokens.count
        let types = try r.types(n)
        let preKey = "tokenizer.ggml.pre"
        let pre = try r.optional(preKey, "a string", \.string)
        // The HF pipeline has only the GPT-2 split regex; llama.cpp's "default" chains four other regexes.
        guard pre == "gpt-2" else {
            throw r.error(preKey, pre.map { "'\($0)' is not supported (only \"gpt-2\")" }
                          ?? "is missing (llama.cpp would use its \"default\" pre-tokenizer, which is not supported)")
        }
        let mergesKey = "tokenizer.ggml.merges"
        let merges = try r.file.require(mergesKey, "an array of strings", \.strings)
        var vocab: [String: Any] = [:]
        vocab.reserveCapacity(n)
        for (i, t) in tokens.enumerated() { vocab[t] = i }
        // The tokenizer.json model keys tokens by String, which merges canonically equivalent ones.
        guard vocab.count == n else {
            throw r.error("tokenizer.ggml.tokens", "has canonically equivalent tokens (e.g. precomposed and combining forms) that the BPE engine cannot keep apart")
        }
        var pairs: [Any] = []
        pairs.reserveCapacity(merges.count)
        for (k, m) in merges.enumerated() {
            // llama.cpp splits at the first space after the first byte.
            let u = Array(m.utf8)
            guard u.count > 2, let cut = u.dropFirst().firstIndex(of: 0x20) else {
                throw r.error(mergesKey, "entry \(k) '\(m)' is not \"left right\"")
            }
            let a = String(decoding: u[..<cut], as: UTF8.self), b = String(decoding: u[(cut + 1)...], as: UTF8.self)
            guard vocab[a] != nil, vocab[b] != nil, vocab[a + b] != nil else {
                throw r.error(mergesKey, "entry \(k) '\(m)' uses or makes a token missing from tokenizer.ggml.tokens")
            }
            pairs.append([a, b])
        }
        let root: [String: Any] = [
            "model": ["type": "BPE", "vocab": vocab, "merges": pairs] as [String: Any],
            "pre_tokenizer": ["type": "ByteLevel", "add_prefix_space": false, "use_regex": true] as [String: Any],
        ]
        // llama.cpp's BPE defaults: no BOS/EOS ids or adding, no space prefix, clean_up_tokenization_spaces on.
        let meta = try GGUFTokenMeta(r, tokens: tokens, types: types, defaults: (nil, nil, nil), addBOS: false,
                                     addSpacePrefix: false, cleanSpaces: true)
        let inner = try r.converting { try HFTokenizer(root: root, fileName: r.file.path, name: "") }
        return GGUFBPETokenizer(name: "gguf-bpe:" + r.baseName, inner: inner, meta: meta)
    }
}

/// Typed metadata reads whose errors name the file and the key, in one line.
struct MetaReader {
    let file: GGUFFile
    var baseName: String { (file.path as NSString).lastPathComponent }

    func error(_ key: String, _ detail: String) -> QuantKitError {
        QuantKitError(.format, "\(file.path): metadata key '\(key)' \(detail)")
    }

    func optional<T>(_ key: String, _ what: String, _ get: (GGUFValue) -> T?) throws -> T? {
        file.metadata[key] == nil ? nil : try file.require(key, what, get)
    }

    func tokens() throws -> [String] {
        let key = "tokenizer.ggml.tokens"
        let tokens = try file.require(key, "an array of strings", \.strings)
        guard !tokens.isEmpty else { throw error(key, "is empty") }
        var seen = Set<[UInt8]>()   // bytes: Swift's String equality would merge canonically equivalent tokens
        seen.reserveCapacity(tokens.count)
        // llama.cpp asserts on duplicates (its text -> id map would lose one).
        for (i, t) in tokens.enumerated() where !seen.insert(Array(t.utf8)).inserted {
            throw error(key, "has a duplicate token '\(t)' at index \(i)")
        }
        return tokens
    }

    /// ggml token types 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte; absent = all normal.
    func types(_ n: Int) throws -> [SentencePieceTokenizer.PieceType] {
        let key = "tokenizer.ggml.token_type"
        guard let raw = try optional(key, "an array of integers", \.ints) else { return Array(repeating: .normal, count: n) }
        guard raw.count == n else { throw error(key, "has \(raw.count) entries but tokenizer.ggml.tokens has \(n)") }
        return try raw.enumerated().map { i, t in
            guard let p = SentencePieceTokenizer.PieceType(rawValue: t) else { throw error(key, "entry \(i) is \(t), not a type 1...6") }
            return p
        }
    }

    /// The engines report malformed vocabularies as TokenizerError; GGUF callers get QuantKitError.
    func converting<T>(_ f: () throws -> T) throws -> T {
        do { return try f() } catch let e as TokenizerError { throw QuantKitError(.format, e.description) }
    }
}

/// Special ids and llama.cpp's add/strip flags, shared by both GGUF tokenizers.
struct GGUFTokenMeta: Sendable {
    let bos: Int?, eos: Int?, unk: Int?, pad: Int?
    let addBOS: Bool, addEOS: Bool, addSpacePrefix: Bool, cleanSpaces: Bool
    let pieces: [String]
    let types: [SentencePieceTokenizer.PieceType]
    /// User-defined pieces (bytes, id), longest first: llama.cpp splits them out of any text.
    let userDefined: [([UInt8], Int)]

    init(_ r: MetaReader, tokens: [String], types: [SentencePieceTokenizer.PieceType], defaults: (Int?, Int?, Int?),
         addBOS: Bool, addSpacePrefix: Bool, cleanSpaces: Bool) throws {
        func id(_ key: String, _ def: Int?) throws -> Int? {
            guard let v = try r.optional(key, "an integer", \.int) ?? def else { return nil }
            guard v >= 0 && v < tokens.count else { throw r.error(key, "is \(v), outside the \(tokens.count) tokens") }
            return v
        }
        bos = try id("tokenizer.ggml.bos_token_id", defaults.0)
        eos = try id("tokenizer.ggml.eos_token_id", defaults.1)
        unk = try id("tokenizer.ggml.unknown_token_id", defaults.2)
        pad = try id("tokenizer.ggml.padding_token_id", nil)
        self.addBOS = try r.optional("tokenizer.ggml.add_bos_token", "a bool", \.bool) ?? addBOS
        addEOS = try r.optional("tokenizer.ggml.add_eos_token", "a bool", \.bool) ?? false
        self.addSpacePrefix = try r.optional("tokenizer.ggml.add_space_prefix", "a bool", \.bool) ?? addSpacePrefix
        self.cleanSpaces = cleanSpaces
        pieces = tokens
        self.types = types
        // Longest first, as llama.cpp's special-token cache (ties by id, for a fixed order).
        userDefined = types.indices.filter { types[$0] == .userDefined }
            .map { (Array(tokens[$0].utf8), $0) }
            .sorted { $0.0.count != $1.0.count ? $0.0.count > $1.0.count : $0.1 < $1.1 }
    }

    enum Fragment { case text(String), token(Int) }

    /// BOS (when asked and added), each text fragment through `encodeText` and each split-out piece as itself,
    /// then EOS (when asked and added).
    func encode(_ text: String, addSpecialTokens: Bool, encodeText: (String) -> [Int]) -> [Int] {
        var out: [Int] = []
        if addSpecialTokens && addBOS, let b = bos { out.append(b) }
        for f in partition(text) {
            switch f {
            case .text(let s): out += encodeText(s)
            case .token(let id): out.append(id)
            }
        }
        if addSpecialTokens && addEOS, let e = eos { out.append(e) }
        return out
    }

    /// The text split around user-defined pieces: each piece in turn (longest first) cuts every remaining text part.
    func partition(_ text: String) -> [Fragment] {
        let bytes = Array(text.utf8)
        if bytes.isEmpty { return [] }
        enum Part { case raw(Range<Int>), token(Int) }
        var parts: [Part] = [.raw(0..<bytes.count)]
        for (p, id) in userDefined where !p.isEmpty {
            var next: [Part] = []
            for part in parts {
                guard case .raw(let r) = part else { next.append(part); continue }
                var start = r.lowerBound, i = r.lowerBound
                while i + p.count <= r.upperBound {
                    if bytes[i] == p[0] && bytes[i..<(i + p.count)].elementsEqual(p) {
                        if i > start { next.append(.raw(start..<i)) }
                        next.append(.token(id))
                        i += p.count; start = i
                    } else { i += 1 }
                }
                if start < r.upperBound { next.append(.raw(start..<r.upperBound)) }
            }
            parts = next
        }
        return parts.map { part in
            switch part {
            case .raw(let r): return .text(String(decoding: bytes[r], as: UTF8.self))
            case .token(let id): return .token(id)
            }
        }
    }

    /// llama.cpp's llama_detokenize: `piece` renders a normal piece; `skip` = remove_special (and not unparse_special).
    func detokenize(_ ids: [Int], skip: Bool, normal: (Int) -> [UInt8]) -> String {
        var ids = ids[...]
        var removeSpace = addSpacePrefix
        // A removed leading BOS keeps the space after it (llama.cpp's rule).
        if skip && addBOS, let b = bos, ids.first == b { removeSpace = false; ids = ids.dropFirst() }
        if skip && addEOS, let e = eos, ids.last == e { ids = ids.dropLast() }
        var out: [UInt8] = []
        for id in ids {
            guard id >= 0 && id < pieces.count else { continue }   // llama.cpp would abort; we skip
            var p: [UInt8]
            switch types[id] {
            case .unknown, .control: p = skip ? [] : Array(pieces[id].utf8)
            case .userDefined: p = Array(pieces[id].utf8)
            case .normal: p = normal(id)
            case .byte: p = [UInt8(String(pieces[id].dropFirst(3).prefix(2)), radix: 16) ?? 0]   // "<0xNN>"
            case .unused: p = []
            }
            if removeSpace && p.first == 0x20 { p.removeFirst() }
            removeSpace = false
            out += p
        }
        if cleanSpaces { out = GGUFTokenMeta.cleanUp(out) }
        return String(decoding: out, as: UTF8.self)
    }

    /// clean_up_tokenization_spaces as llama.cpp does it: " ?", " !", " .", " ," lose the space; a lone " ' "
    /// loses both spaces; " 's", " 'm", " 're", " 've" lose the space (" 't", " 'd", " 'll" keep it).
    static func cleanUp(_ t: [UInt8]) -> [UInt8] {
        let space: UInt8 = 0x20, quote: UInt8 = 0x27
        if t.count < 2 { return t }
        var a: [UInt8] = [t[0]]
        for i in 1..<t.count {
            let x = t[i]
            if t[i - 1] == space && (x == 0x3F || x == 0x21 || x == 0x2E || x == 0x2C) { a.removeLast() }
            a.append(x)
        }
        // The space after a lone quote is dropped and is no longer "the previous byte" of the next one.
        var b: [UInt8] = a.isEmpty ? [] : [a[0]]
        var src = a
        var i = 1
        while i < src.count {
            let x = src[i]
            if x == quote && i + 1 < src.count && src[i - 1] == space && src[i + 1] == space {
                b.removeLast()
                i += 1; src[i] = 0
            }
            b.append(x)
            i += 1
        }
        var c: [UInt8] = b.isEmpty ? [] : [b[0]]
        for i in 1..<max(1, b.count) {
            let x = b[i]
            if b[i - 1] == space && x == quote && i + 1 < b.count {
                let x1 = b[i + 1]
                if x1 == 0x73 || x1 == 0x6D { c.removeLast() }   // 's 'm
                else if i + 2 < b.count && ((x1 == 0x72 && b[i + 2] == 0x65) || (x1 == 0x76 && b[i + 2] == 0x65)) {
                    c.removeLast()   // 're 've
                }
            }
            c.append(x)
        }
        return c
    }
}

/// A tokenizer whose vocabulary size and special tokens come from GGUF metadata.
protocol GGUFMetaTokenizer: Tokenizer {
    var meta: GGUFTokenMeta { get }
}

extension GGUFMetaTokenizer {
    var vocabSize: Int { meta.pieces.count }
    var bosId: Int? { meta.bos }
    var eosId: Int? { meta.eos }
    var padId: Int? { meta.pad }
    var addsBOS: Bool { meta.addBOS && meta.bos != nil }
}

/// llama.cpp's SPM tokenizer over a GGUF vocabulary (see GGUFVocabulary).
struct GGUFSPMTokenizer: GGUFMetaTokenizer, CachingEncoder {
    let name: String
    let inner: SentencePieceTokenizer
    let meta: GGUFTokenMeta

    func token(for id: Int) -> String? { inner.token(for: id) }

    func makeCache() -> SPCache { SPCache() }
    func encode(_ text: String, addSpecialTokens: Bool) -> [Int] {
        var cache = makeCache()
        return encode(text, addSpecialTokens: addSpecialTokens, cache: &cache)
    }
    func encode(_ text: String, addSpecialTokens: Bool, cache: inout SPCache) -> [Int] {
        // Every text fragment gets the space prefix: it starts the text or follows a split-out piece.
        meta.encode(text, addSpecialTokens: addSpecialTokens) { inner.encode($0, addSpecialTokens: false, cache: &cache) }
    }

    func decode(_ ids: [Int], skipSpecialTokens: Bool) -> String {
        meta.detokenize(ids, skip: skipSpecialTokens) { id in
            // U+2581 back to ' '.
            var out: [UInt8] = []
            let p = inner.pieceBytes[id]
            var k = 0
            while k < p.count {
                if k + 2 < p.count && p[k] == 0xE2 && p[k + 1] == 0x96 && p[k + 2] == 0x81 { out.append(0x20); k += 3 } else {
                    out.append(p[k]); k += 1
                }
            }
            return out
        }
    }
}

/// llama.cpp's byte-level BPE tokenizer ("gpt2" model, "gpt-2" pre-tokenizer) over a GGUF vocabulary.
struct GGUFBPETokenizer: GGUFMetaTokenizer, CachingEncoder {
    let name: String
    let inner: HFTokenizer
    let meta: GGUFTokenMeta

    func token(for id: Int) -> String? { id >= 0 && id < meta.pieces.count ? meta.pieces[id] : nil }

    func makeCache() -> ModelCache { ModelCache() }
    func encode(_ text: String, addSpecialTokens: Bool) -> [Int] {
        var cache = makeCache()
        return encode(text, addSpecialTokens: addSpecialTokens, cache: &cache)
    }
    func encode(_ text: String, addSpecialTokens: Bool, cache: inout ModelCache) -> [Int] {
        meta.encode(text, addSpecialTokens: addSpecialTokens) { inner.encode($0, addSpecialTokens: false, cache: &cache) }
    }

    func decode(_ ids: [Int], skipSpecialTokens: Bool) -> String {
        meta.detokenize(ids, skip: skipSpecialTokens) { id in
            // Byte-level alphabet back to bytes; llama.cpp marks a character outside it as [UNK_BYTE_0x..].
            var out: [UInt8] = []
            let map = ByteLevelMap.scalarToByte
            for c in meta.pieces[id].unicodeScalars {
                if let b = map[c.value] { out.append(b); continue }
                out += Array("[UNK_BYTE_0x".utf8)
                for b in String(c).utf8 { out += Array(String(format: "%02x", b).utf8) }
                out += Array((meta.pieces[id] + "]").utf8)
            }
            return out
        }
    }
}

extension GGUFVocabulary {
    /// The `tokenizer.ggml.*` metadata llama.cpp reads for a SentencePiece model (tokens, scores, token types,
    /// special ids, BOS added, the space prefix). llama.cpp's tokenizer does not apply the model's
    /// `remove_extra_whitespaces`: `collapsesWhitespace` in the result tells the caller to warn about it.
    public static func metadata(for tokenizer: any Tokenizer) throws -> (entries: [(String, GGUFValue)], collapsesWhitespace: Bool) {
        guard let sp = tokenizer as? SentencePieceTokenizer else {
            throw QuantKitError(.unsupported, "tokenizer \(tokenizer.name): GGUF export writes SentencePiece vocabularies (a tokenizer.model) or copies a GGUF's own; pass --tokenizer with a SentencePiece .model")
        }
        var e: [(String, GGUFValue)] = [
            ("tokenizer.ggml.model", .string("llama")),
            ("tokenizer.ggml.tokens", .array(.string, sp.pieces.map { .string($0) })),
            ("tokenizer.ggml.scores", .array(.float32, sp.scores.map { .float32($0) })),
            ("tokenizer.ggml.token_type", .array(.int32, sp.types.map { .int32(Int32($0.rawValue)) })),
            ("tokenizer.ggml.unknown_token_id", .uint32(UInt32(sp.unkId))),
        ]
        if let b = sp.bosId { e.append(("tokenizer.ggml.bos_token_id", .uint32(UInt32(b)))) }
        if let x = sp.eosId { e.append(("tokenizer.ggml.eos_token_id", .uint32(UInt32(x)))) }
        if let p = sp.padId { e.append(("tokenizer.ggml.padding_token_id", .uint32(UInt32(p)))) }
        e += [("tokenizer.ggml.add_bos_token", .bool(sp.addsBOS)), ("tokenizer.ggml.add_eos_token", .bool(false)),
              ("tokenizer.ggml.add_space_prefix", .bool(sp.addDummyPrefix))]
        return (e, sp.removeExtraWhitespaces)
    }
}
