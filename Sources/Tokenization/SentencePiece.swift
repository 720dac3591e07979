import Foundation

/// A SentencePiece BPE model (.model protobuf), encoding exactly as the Python `sentencepiece` library does:
/// normalizer (identity rule only; remove_extra_whitespaces, add_dummy_prefix, escape_whitespaces), split into
/// characters, merge by highest piece score (leftmost on ties) over the whole text, byte fallback <0xNN>.
/// Sources: sentencepiece normalizer.cc, bpe_model.cc and sentencepiece_processor.cc (behaviour, not code).
public struct SentencePieceTokenizer: Tokenizer {
    enum PieceType: Int, Sendable { case normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6 }

    public let name: String
    let pieces: [String]
    let pieceBytes: [[UInt8]]
    let scores: [Float]
    let types: [PieceType]
    let unkId: Int
    public let bosId: Int?
    public let eosId: Int?
    public let padId: Int?
    let byteFallback: Bool
    let addDummyPrefix: Bool
    let removeExtraWhitespaces: Bool
    let escapeWhitespaces: Bool
    let unkSurface: String
    /// Id of each byte's <0xNN> piece.
    let byteIds: [Int32]
    /// Single-character symbols: ASCII table and the rest; ids >= pieces.count are characters that occur only
    /// inside longer pieces (so merges through them still happen, as in sentencepiece's string lookups).
    let asciiIds: [Int32]
    let charIds: [UInt32: Int32]
    let extraChars: [[UInt8]]
    let pairs: PairTable
    /// User-defined pieces, matched longest-first while splitting; they never merge.
    let userDefined: [[UInt8]]
    /// Symbol id of the (escaped) space, and whether words between spaces merge independently.
    let spaceSymbol: Int32
    let wordsIndependent: Bool
    /// Merge and split rules of llama.cpp's SPM session instead of sentencepiece's (see SPVocabulary).
    let llamaCpp: Bool

    public var vocabSize: Int { pieces.count }
    public var addsBOS: Bool { true }

    public init(data: Data, fileName: String, name: String? = nil) throws {
        let displayName = name ?? "sentencepiece:" + fileName
        func bad(_ s: String) -> TokenizerError { TokenizerError(.malformed, file: fileName, s) }
        func unsupported(_ s: String) -> TokenizerError { TokenizerError(.unsupported, file: fileName, s) }
        let bytes = [UInt8](data)
        var pieces: [String] = [], scores: [Float] = [], types: [PieceType] = []
        var modelType = 1, byteFallback = false, whitespaceSuffix = false
        var unkPiece = "<unk>", bosPiece = "<s>", eosPiece = "</s>", padPiece = "<pad>"
        var unkSurface = " \u{2047} "
        var addDummy = true, removeExtra = true, escape = true
        var charsmap = 0, ruleName = "", denormCharsmap = 0
        do {
            var r = ProtoReader(bytes[...])
            var sawTrainer = false
            while !r.atEnd {
                let (field, value) = try r.next()
                switch field {
                case 1:
                    guard let sub = value.data else { throw bad("model proto: field 1 (piece) is not a message") }
                    var p = ProtoReader(sub)
                    var piece: String? = nil, score: Float = 0, type = 1
                    while !p.atEnd {
                        let (f, v) = try p.next()
                        switch f {
                        case 1: guard let s = v.string else { throw bad("piece \(pieces.count): not UTF-8") }; piece = s
                        case 2: guard let s = v.float else { throw bad("piece \(pieces.count): score is not a float") }; score = s
                        case 3: guard let t = v.int else { throw bad("piece \(pieces.count): bad type") }; type = t
                        default: break
                        }
                    }
                    guard let piece, !piece.isEmpty else { throw bad("piece \(pieces.count) has no text") }
                    guard let t = PieceType(rawValue: type) else { throw bad("piece \(pieces.count) has unknown type \(type)") }
                    pieces.append(piece); scores.append(score); types.append(t)
                case 2:
                    guard let sub = value.data else { throw bad("trainer_spec is not a message") }
                    sawTrainer = true
                    var p = ProtoReader(sub)
                    while !p.atEnd {
                        let (f, v) = try p.next()
                        switch f {
                        case 3: modelType = v.int ?? modelType
                        case 24: whitespaceSuffix = v.bool ?? false
                        case 35: byteFallback = v.bool ?? false
                        case 44: unkSurface = v.string ?? unkSurface
                        case 45: unkPiece = v.string ?? unkPiece
                        case 46: bosPiece = v.string ?? bosPiece
                        case 47: eosPiece = v.string ?? eosPiece
                        case 48: padPiece = v.string ?? padPiece
                        default: break
                        }
                    }
                case 3:
                    guard let sub = value.data else { throw bad("normalizer_spec is not a message") }
                    var p = ProtoReader(sub)
                    while !p.atEnd {
                        let (f, v) = try p.next()
                        switch f {
                        case 1: ruleName = v.string ?? ""
                        case 2: charsmap = v.data?.count ?? 0
                        case 3: addDummy = v.bool ?? addDummy
                        case 4: removeExtra = v.bool ?? removeExtra
                        case 5: escape = v.bool ?? escape
                        default: break
                        }
                    }
                case 5:
                    guard let sub = value.data else { throw bad("denormalizer_spec is not a message") }
                    var p = ProtoReader(sub)
                    while !p.atEnd { let (f, v) = try p.next(); if f == 2 { denormCharsmap = v.data?.count ?? 0 } }
                default: break
                }
            }
            if pieces.isEmpty || !sawTrainer { throw bad("not a SentencePiece model (no pieces or no trainer_spec)") }
        } catch let e as ProtoReader.Failure {
            throw bad("not a SentencePiece model protobuf (\(e.message))")
        }
        guard modelType == 2 else {
            let names = [1: "UNIGRAM", 3: "WORD", 4: "CHAR"]
            throw unsupported("unsupported model_type \(names[modelType] ?? String(modelType)) (only BPE)")
        }
        if charsmap > 0 {
            throw unsupported("unsupported normalization rule '\(ruleName)' (precompiled charsmap; only identity)")
        }
        if denormCharsmap > 0 { throw unsupported("unsupported denormalizer (precompiled charsmap)") }
        if whitespaceSuffix { throw unsupported("unsupported treat_whitespace_as_suffix") }

        var lookup: [[UInt8]: Int] = [:]   // bytes: String keys would merge canonically equivalent pieces
        for (i, p) in pieces.enumerated() where lookup[Array(p.utf8)] == nil { lookup[Array(p.utf8)] = i }
        func special(_ piece: String, _ type: PieceType) -> Int? {
            if let i = lookup[Array(piece.utf8)], types[i] == type { return i }
            return nil
        }
        guard let unk = special(unkPiece, .unknown) else { throw bad("no unknown piece '\(unkPiece)'") }
        let vocab = SPVocabulary(pieces: pieces, scores: scores, types: types, unkId: unk,
                                 bosId: special(bosPiece, .control), eosId: special(eosPiece, .control),
                                 padId: special(padPiece, .control), byteFallback: byteFallback,
                                 addDummyPrefix: addDummy, removeExtraWhitespaces: removeExtra,
                                 escapeWhitespaces: escape, unkSurface: unkSurface, llamaCpp: false)
        try self.init(vocab, fileName: fileName, name: displayName)
    }

    /// Builds the encoder from a vocabulary read elsewhere (a .model protobuf or GGUF metadata).
    init(_ v: SPVocabulary, fileName: String, name: String) throws {
        func bad(_ s: String) -> TokenizerError { TokenizerError(.malformed, file: fileName, s) }
        self.name = name
        let pieces = v.pieces, scores = v.scores, types = v.types
        guard pieces.count == scores.count && pieces.count == types.count && !pieces.isEmpty else {
            throw bad("pieces, scores and types differ in length or are empty")
        }
        guard v.unkId >= 0 && v.unkId < pieces.count else { throw bad("unknown id \(v.unkId) out of range") }
        self.pieces = pieces; self.scores = scores; self.types = types
        self.pieceBytes = pieces.map { Array($0.utf8) }
        self.addDummyPrefix = v.addDummyPrefix; self.removeExtraWhitespaces = v.removeExtraWhitespaces
        self.escapeWhitespaces = v.escapeWhitespaces
        self.unkSurface = v.unkSurface
        self.llamaCpp = v.llamaCpp
        let escape = v.escapeWhitespaces
        // All pieces by bytes (sentencepiece and llama.cpp both reject duplicates; String keys would also merge
        // canonically equivalent pieces such as U+1F77 and U+03AF, both in Llama-2's vocabulary).
        var lookup: [[UInt8]: Int] = [:]
        var normal: [[UInt8]: Int] = [:]    // pieces merges may produce
        for (i, p) in pieces.enumerated() {
            if lookup[pieceBytes[i]] != nil { throw bad("duplicate piece '\(p)'") }
            lookup[pieceBytes[i]] = i
            // sentencepiece merges only into normal, user-defined and unused pieces; llama.cpp into any piece.
            if v.llamaCpp || types[i] == .normal || types[i] == .userDefined || types[i] == .unused { normal[pieceBytes[i]] = i }
        }
        unkId = v.unkId
        bosId = v.bosId; eosId = v.eosId; padId = v.padId
        var byteIds = [Int32](repeating: -1, count: 256)
        for b in 0..<256 {
            let p = String(format: "<0x%02X>", b)
            if let i = lookup[Array(p.utf8)], types[i] == .byte { byteIds[b] = Int32(i) }
        }
        // llama.cpp always falls back to <0xNN> pieces when the vocabulary has them all.
        let byteFallback = v.llamaCpp ? !byteIds.contains(-1) : v.byteFallback
        if byteFallback && byteIds.contains(-1) { throw bad("byte_fallback is on but some <0xNN> pieces are missing") }
        self.byteFallback = byteFallback
        self.byteIds = byteIds
        let allBytes = pieces.map { Array($0.utf8) }
        // llama.cpp splits user-defined pieces out before the encoder sees the text (GGUFVocabulary does that).
        userDefined = v.llamaCpp ? [] : pieces.indices.filter { types[$0] == .userDefined }.map { allBytes[$0] }
            .sorted { $0.count > $1.count }

        // Symbol ids: every mergeable piece keeps its id; characters that only occur inside pieces get ids after.
        var ascii = [Int32](repeating: -1, count: 128)
        var chars: [UInt32: Int32] = [:]
        var extra: [[UInt8]] = []
        for (bytes, i) in normal {
            let s = String(decoding: bytes, as: UTF8.self).unicodeScalars
            if s.count == 1 {
                let v = s.first!.value
                if v < 128 { ascii[Int(v)] = Int32(i) } else { chars[v] = Int32(i) }
            }
        }
        for (bytes, _) in normal {
            for sc in String(decoding: bytes, as: UTF8.self).unicodeScalars {
                let v = sc.value
                if (v < 128 && ascii[Int(v)] >= 0) || chars[v] != nil { continue }
                let id = Int32(pieces.count + extra.count)
                extra.append(Array(String(sc).utf8))
                if v < 128 { ascii[Int(v)] = id } else { chars[v] = id }
            }
        }
        asciiIds = ascii; charIds = chars; extraChars = extra
        // Pairs: each mergeable piece split into two halves that are each a piece or a single character.
        var symbolId: [[UInt8]: Int32] = [:]
        for (bytes, i) in normal { symbolId[bytes] = Int32(i) }
        for (k, bytes) in extra.enumerated() { symbolId[bytes] = Int32(pieces.count + k) }
        var pairs: [UInt64: PairInfo] = [:]
        for (bytes, i) in normal where v.llamaCpp || types[i] != .userDefined {
            for cut in 1..<max(1, bytes.count) where (bytes[cut] & 0xC0) != 0x80 {
                guard let a = symbolId[Array(bytes[..<cut])], let b = symbolId[Array(bytes[cut...])] else { continue }
                pairs[pairKey(a, b)] = PairInfo(priority: scores[i], merged: Int32(i))
            }
        }
        self.pairs = PairTable(pairs, symbolCount: pieces.count + extra.count)
        let spaceBytes: [UInt8] = escape ? [0xE2, 0x96, 0x81] : [0x20]
        let spaceSym = symbolId[spaceBytes] ?? -1
        spaceSymbol = spaceSym
        wordsIndependent = spaceSym >= 0 && !normal.keys.contains { p in
            p.count > spaceBytes.count && (1...(p.count - spaceBytes.count)).contains { p[$0..<($0 + spaceBytes.count)].elementsEqual(spaceBytes) }
        }
    }

    public func token(for id: Int) -> String? { id >= 0 && id < pieces.count ? pieces[id] : nil }

    /// The normalized text split into initial symbols (ids, byte lengths, frozen flags).
    func initialSymbols(_ text: String) -> (ids: [Int32], lengths: [Int32], frozen: [Bool]?) {
        var ids: [Int32] = [], lens: [Int32] = []
        var frozen: [Bool]? = userDefined.isEmpty ? nil : []
        let utf8 = Array(text.utf8)
        ids.reserveCapacity(utf8.count + 1); lens.reserveCapacity(utf8.count + 1)
        let spaceBytes: [UInt8] = escapeWhitespaces ? [0xE2, 0x96, 0x81] : [0x20]
        let spaceId = symbol(for: spaceBytes[...])
        var i = 0
        if removeExtraWhitespaces { while i < utf8.count && utf8[i] == 0x20 { i += 1 } }
        if i == utf8.count { return ([], [], nil) }
        if addDummyPrefix {
            ids.append(spaceId); lens.append(Int32(spaceBytes.count)); frozen?.append(false)
        }
        var prevSpace = removeExtraWhitespaces
        utf8.withUnsafeBufferPointer { u in
            while i < u.count {
                let b = u[i]
                if b == 0x20 {
                    if !(prevSpace && removeExtraWhitespaces) {
                        ids.append(spaceId); lens.append(Int32(spaceBytes.count)); frozen?.append(false)
                    }
                    prevSpace = true
                    i += 1
                    continue
                }
                prevSpace = false
                if !userDefined.isEmpty, let m = userDefined.first(where: { p in
                    p.count <= u.count - i && p.indices.allSatisfy { u[i + $0] == p[$0] }
                }) {
                    ids.append(symbol(for: m[...])); lens.append(Int32(m.count)); frozen?.append(true)
                    i += m.count
                    continue
                }
                let n = b < 0x80 ? 1 : b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : 2
                if n == 1 {
                    let id = asciiIds[Int(b)]
                    ids.append(id >= 0 ? id : -(Int32(i) + 2))
                } else {
                    var v = UInt32(b) & (n == 2 ? 0x1F : n == 3 ? 0x0F : 0x07)
                    for k in 1..<n { v = v << 6 | UInt32(u[i + k] & 0x3F) }
                    ids.append(charIds[v] ?? -(Int32(i) + 2))   // unknown: -(offset + 2) keeps the bytes findable
                }
                lens.append(Int32(n)); frozen?.append(false)
                i += n
            }
        }
        if removeExtraWhitespaces {
            while let last = ids.last, last == spaceId, ids.count > 0 { ids.removeLast(); lens.removeLast(); frozen?.removeLast() }
        }
        return (ids, lens, frozen)
    }

    private func symbol(for bytes: ArraySlice<UInt8>) -> Int32 {
        let s = String(decoding: bytes, as: UTF8.self).unicodeScalars
        if s.count == 1 {
            let v = s.first!.value
            if v < 128 { return asciiIds[Int(v)] }
            if let id = charIds[v] { return id }
        }
        if let i = pieceBytes.firstIndex(where: { $0[...] == bytes }) { return Int32(i) }
        return -1
    }

    public func encode(_ text: String, addSpecialTokens: Bool) -> [Int] {
        var cache = SPCache()
        return encode(text, addSpecialTokens: addSpecialTokens, cache: &cache)
    }

    /// Merges the symbols. When no mergeable piece has the space symbol after its start, no merge can cross
    /// the boundary before a space symbol, so the words merge independently (same result, cached per word).
    private func mergeSymbols(_ ids: inout [Int32], _ lens: [Int32], _ frozen: [Bool]?, _ cache: inout SPCache,
                              _ onMerge: ((Int32, Int32, Int32) -> Void)?) -> [Int32] {
        guard wordsIndependent && frozen == nil && onMerge == nil else {
            return cache.merger.merge(ids: &ids, lengths: lens, frozen: frozen, pairs: pairs, onMerge: onMerge)
        }
        var out: [Int32] = []
        out.reserveCapacity(ids.count / 2)
        var start = 0
        while start < ids.count {
            var end = start + 1
            while end < ids.count && ids[end] != spaceSymbol { end += 1 }
            var word = Array(ids[start..<end])
            if let hit = cache.words[word] { out += hit } else {
                let key = word
                let merged = cache.merger.merge(ids: &word, lengths: Array(lens[start..<end]), pairs: pairs)
                // Unknown characters carry their text offset, so such words are not reusable.
                if !key.contains(where: { $0 < 0 }) {
                    if cache.words.count > 200_000 { cache.words.removeAll(keepingCapacity: true) }
                    cache.words[key] = merged
                }
                out += merged
            }
            start = end
        }
        return out
    }

    func encode(_ text: String, addSpecialTokens: Bool, cache: inout SPCache) -> [Int] {
        var (ids, lens, frozen) = initialSymbols(text)
        // Unknown characters carry -(byte offset + 2); keep their bytes for byte fallback.
        // sentencepiece splits unused pieces back into their parts; llama.cpp keeps them.
        let hasUnused = !llamaCpp && types.contains(.unused)
        var revMerge: [Int32: (Int32, Int32)] = [:]
        let onMerge: ((Int32, Int32, Int32) -> Void)? = hasUnused ? { a, b, m in revMerge[m] = (a, b) } : nil
        let utf8 = ids.contains(where: { $0 < -1 }) ? Array(text.utf8) : []
        let symbols = mergeSymbols(&ids, lens, frozen, &cache, onMerge)
        var out: [Int] = []
        out.reserveCapacity(symbols.count + 1)
        if addSpecialTokens, let b = bosId { out.append(b) }
        var prevUnk = false
        func emit(_ s: Int32) {
            if s >= 0 && Int(s) < pieces.count {
                if types[Int(s)] == .unused, let (a, b) = revMerge[s] { emit(a); emit(b); return }
                out.append(Int(s)); prevUnk = false
                return
            }
            // Unknown: a character absent from the vocabulary (or one only found inside pieces).
            let bytes: [UInt8]
            if s < -1 {
                let off = Int(-s - 2)
                let b0 = utf8[off]
                let n = b0 < 0x80 ? 1 : b0 >= 0xF0 ? 4 : b0 >= 0xE0 ? 3 : 2
                bytes = Array(utf8[off..<(off + n)])
            } else if s >= Int32(pieces.count) {
                bytes = extraChars[Int(s) - pieces.count]
            } else { bytes = [] }
            if byteFallback {
                for b in bytes { out.append(Int(byteIds[Int(b)])) }
                prevUnk = false
            } else {
                if !prevUnk { out.append(unkId) }   // runs of unknown pieces merge into one <unk>
                prevUnk = true
            }
        }
        for s in symbols { emit(s) }
        return out
    }

    public func decode(_ ids: [Int], skipSpecialTokens: Bool) -> String {
        var text: [UInt8] = []
        var pendingBytes: [UInt8] = []
        var isBosWs = true, bosWsSeen = false
        func flushBytes() {
            var k = 0
            while k < pendingBytes.count {
                let n = validUTF8Length(pendingBytes, k)
                if n == 0 { text.append(contentsOf: [0xEF, 0xBF, 0xBD]); k += 1 } else {
                    text.append(contentsOf: pendingBytes[k..<(k + n)]); k += n
                }
            }
            pendingBytes.removeAll()
        }
        let ws: [UInt8] = [0xE2, 0x96, 0x81]
        for id in ids {
            guard id >= 0 && id < pieces.count else { continue }   // sentencepiece rejects these; we skip them
            let t = types[id]
            if t == .byte {
                pendingBytes.append(UInt8(pieces[id].dropFirst(3).prefix(2), radix: 16) ?? 0)
                continue
            }
            flushBytes()
            if bosWsSeen || !text.isEmpty { isBosWs = false }
            bosWsSeen = false
            switch t {
            case .control: continue
            case .unknown: text.append(contentsOf: Array(unkSurface.utf8)); continue
            default: break
            }
            var p = pieceBytes[id][...]
            if isBosWs && (addDummyPrefix || removeExtraWhitespaces) && p.starts(with: ws) {
                p = p.dropFirst(3)
                bosWsSeen = !removeExtraWhitespaces
            }
            var k = p.startIndex
            while k < p.endIndex {
                if p.endIndex - k >= 3 && p[k] == 0xE2 && p[k + 1] == 0x96 && p[k + 2] == 0x81 {
                    text.append(0x20); k += 3
                } else { text.append(p[k]); k += 1 }
            }
        }
        flushBytes()
        return String(decoding: text, as: UTF8.self)
    }
}

/// Length of the valid UTF-8 character starting at `k`, or 0 if the bytes there are not one (overlong,
/// surrogate, out of range or truncated): sentencepiece then emits U+FFFD and consumes one byte.
func validUTF8Length(_ b: [UInt8], _ k: Int) -> Int {
    let c = b[k]
    if c < 0x80 { return 1 }
    let n: Int, lo: UInt8, hi: UInt8
    switch c {
    case 0xC2...0xDF: n = 2; lo = 0x80; hi = 0xBF
    case 0xE0: n = 3; lo = 0xA0; hi = 0xBF
    case 0xE1...0xEC, 0xEE, 0xEF: n = 3; lo = 0x80; hi = 0xBF
    case 0xED: n = 3; lo = 0x80; hi = 0x9F
    case 0xF0: n = 4; lo = 0x90; hi = 0xBF
    case 0xF1...0xF3: n = 4; lo = 0x80; hi = 0xBF
    case 0xF4: n = 4; lo = 0x80; hi = 0x8F
    default: return 0
    }
    if k + n > b.count { return 0 }
    if b[k + 1] < lo || b[k + 1] > hi { return 0 }
    for j in 2..<max(2, n) where b[k + j] & 0xC0 != 0x80 { return 0 }
    return n
}

struct SPCache {
    var merger = BPEMerger()
    var words: [[Int32]: [Int32]] = [:]
}

extension SentencePieceTokenizer: CachingEncoder {
    func makeCache() -> SPCache { SPCache() }
}

/// A SentencePiece-style vocabulary and its normalizer options, however it was stored.
struct SPVocabulary {
    var pieces: [String]
    var scores: [Float]
    var types: [SentencePieceTokenizer.PieceType]
    var unkId: Int
    var bosId: Int?
    var eosId: Int?
    var padId: Int?
    var byteFallback: Bool
    var addDummyPrefix: Bool
    var removeExtraWhitespaces: Bool
    var escapeWhitespaces: Bool
    var unkSurface: String
    /// llama.cpp's SPM session (llm_tokenizer_spm): a merge may produce a piece of any type, unused pieces are
    /// kept, user-defined pieces are split out by the caller, and byte fallback is on when all <0xNN> exist.
    var llamaCpp: Bool
}
