import Foundation

// MARK: - Normalizers

indirect enum HFNormalizer {
    case sequence([HFNormalizer])
    case nfc, nfkc, nfd, nfkd, lowercase, stripAccents
    case bert(cleanText: Bool, chineseChars: Bool, stripAccents: Bool, lowercase: Bool)
    case prepend([Unicode.Scalar])
    case replace([Unicode.Scalar], [Unicode.Scalar])

    init(_ v: Any, _ ctx: JSONContext) throws {
        let (type, d) = try ctx.type(v, "normalizer")
        switch type {
        case "Sequence":
            guard let list = d["normalizers"] as? [Any] else { throw ctx.bad("normalizer Sequence has no \"normalizers\"") }
            self = .sequence(try list.map { try HFNormalizer($0, ctx) })
        case "NFC": self = .nfc
        case "NFKC": self = .nfkc
        case "NFD": self = .nfd
        case "NFKD": self = .nfkd
        case "Lowercase": self = .lowercase
        case "StripAccents": self = .stripAccents
        case "BertNormalizer":
            let lower = d["lowercase"] as? Bool ?? true
            self = .bert(cleanText: d["clean_text"] as? Bool ?? true, chineseChars: d["handle_chinese_chars"] as? Bool ?? true,
                         stripAccents: (d["strip_accents"] as? Bool) ?? lower, lowercase: lower)
        case "Prepend":
            guard let p = d["prepend"] as? String else { throw ctx.bad("normalizer Prepend has no \"prepend\"") }
            self = .prepend(p.scalars)
        case "Replace":
            let (pattern, content) = try replaceArgs(d, ctx, "normalizer")
            self = .replace(pattern, content)
        default: throw ctx.unsupported("unsupported normalizer type '\(type)'")
        }
    }

    func apply(_ s: [Unicode.Scalar]) -> [Unicode.Scalar] {
        switch self {
        case .sequence(let list): return list.reduce(s) { $1.apply($0) }
        case .nfc: return unicodeForm(s) { $0.precomposedStringWithCanonicalMapping }
        case .nfkc: return unicodeForm(s) { $0.precomposedStringWithCompatibilityMapping }
        case .nfd: return unicodeForm(s) { $0.decomposedStringWithCanonicalMapping }
        case .nfkd: return unicodeForm(s) { $0.decomposedStringWithCompatibilityMapping }
        case .lowercase: return lowercased(s)
        case .stripAccents: return s.filter { !UChar.isNonspacingMark($0) }
        case .prepend(let p): return s.isEmpty ? s : p + s
        case .replace(let pattern, let content): return replaceAll(s, pattern, content)
        case .bert(let clean, let chinese, let strip, let lower):
            var out: [Unicode.Scalar] = []
            out.reserveCapacity(s.count)
            for c in s {
                if clean {
                    if c.value == 0 || c.value == 0xFFFD { continue }
                    if c != "\t" && c != "\n" && c != "\r" && UChar.isOther(c) { continue }
                    if c == "\t" || c == "\n" || c == "\r" || UChar.isWhitespace(c) { out.append(" "); continue }
                }
                if chinese && c.value >= 0x3400 && UChar.isChineseChar(c) {
                    out.append(" "); out.append(c); out.append(" "); continue
                }
                out.append(c)
            }
            if strip {
                out = unicodeForm(out) { $0.decomposedStringWithCanonicalMapping }.filter { !UChar.isNonspacingMark($0) }
            }
            return lower ? lowercased(out) : out
        }
    }
}

func replaceArgs(_ d: [String: Any], _ ctx: JSONContext, _ what: String) throws -> ([Unicode.Scalar], [Unicode.Scalar]) {
    guard let p = d["pattern"] as? [String: Any] else { throw ctx.bad("\(what) Replace has no \"pattern\"") }
    guard let content = d["content"] as? String else { throw ctx.bad("\(what) Replace has no \"content\"") }
    if p["Regex"] != nil { throw ctx.unsupported("unsupported \(what) Replace with a Regex pattern") }
    guard let s = p["String"] as? String, !s.isEmpty else { throw ctx.bad("\(what) Replace: bad pattern") }
    return (s.scalars, content.scalars)
}

/// NFC/NFD/NFKC/NFKD through Foundation, applied only to each non-ASCII run with the ASCII character before it:
/// ASCII is invariant under all four forms, never reorders (combining class 0) and only composes with the
/// marks that follow it, so the result equals normalizing the whole text.
func unicodeForm(_ s: [Unicode.Scalar], _ f: (String) -> String) -> [Unicode.Scalar] {
    guard let firstNonASCII = s.firstIndex(where: { $0.value >= 0x80 }) else { return s }
    var out: [Unicode.Scalar] = []
    out.reserveCapacity(s.count + 8)
    var i = 0
    while i < s.count {
        guard let j = (i == firstNonASCII ? i : s[i...].firstIndex(where: { $0.value >= 0x80 })) else {
            out += s[i...]; break
        }
        let start = j > i ? j - 1 : j        // include the ASCII starter before the run
        out += s[i..<start]
        var end = j
        while end < s.count && s[end].value >= 0x80 { end += 1 }
        out += f(Array(s[start..<end]).string).unicodeScalars
        i = end
    }
    return out
}

/// Per-character full lowercase mapping (Rust `char::to_lowercase`, no context rules such as final sigma).
func lowercased(_ s: [Unicode.Scalar]) -> [Unicode.Scalar] {
    var out: [Unicode.Scalar] = []
    out.reserveCapacity(s.count)
    for c in s {
        if c.value < 0x80 {
            out.append(c.value >= 0x41 && c.value <= 0x5A ? Unicode.Scalar(c.value + 32)! : c)
        } else {
            out.append(contentsOf: c.properties.lowercaseMapping.unicodeScalars)
        }
    }
    return out
}

func replaceAll(_ s: [Unicode.Scalar], _ pattern: [Unicode.Scalar], _ content: [Unicode.Scalar]) -> [Unicode.Scalar] {
    var out: [Unicode.Scalar] = []
    var i = 0
    let n = s.count, m = pattern.count
    while i < n {
        if s[i] == pattern[0] && i + m <= n && s[i..<(i + m)].elementsEqual(pattern) {
            out += content; i += m
        } else { out.append(s[i]); i += 1 }
    }
    return out
}

// MARK: - Pre-tokenizers

struct Piece {
    var s: [Unicode.Scalar]
    var atStart: Bool
}

enum SplitBehavior: String {
    case removed = "Removed", isolated = "Isolated", mergedWithPrevious = "MergedWithPrevious"
    case mergedWithNext = "MergedWithNext", contiguous = "Contiguous"
}

/// Splits `s` given its matches (ascending, non-overlapping), as `NormalizedString::split` does.
func splitPiece(_ p: Piece, matches: [Range<Int>], behavior: SplitBehavior, invert: Bool = false) -> [Piece] {
    var segs: [(Range<Int>, Bool)] = []
    var last = 0
    for m in matches where !m.isEmpty {
        if m.lowerBound > last { segs.append((last..<m.lowerBound, invert)) }
        segs.append((m, !invert)); last = m.upperBound
    }
    if last < p.s.count { segs.append((last..<p.s.count, invert)) }
    var out: [Range<Int>] = []
    switch behavior {
    case .removed: out = segs.filter { !$0.1 }.map { $0.0 }
    case .isolated: out = segs.map { $0.0 }
    case .mergedWithPrevious:
        var prevMatch = false
        for (r, isMatch) in segs {
            if isMatch && !prevMatch, let l = out.last { out[out.count - 1] = l.lowerBound..<r.upperBound } else { out.append(r) }
            prevMatch = isMatch
        }
    case .mergedWithNext:
        var nextMatch = false
        for (r, isMatch) in segs.reversed() {
            if isMatch && !nextMatch, let l = out.last { out[out.count - 1] = r.lowerBound..<l.upperBound } else { out.append(r) }
            nextMatch = isMatch
        }
        out.reverse()
    case .contiguous:
        var prevMatch = false
        for (r, isMatch) in segs {
            if isMatch == prevMatch, let l = out.last { out[out.count - 1] = l.lowerBound..<r.upperBound } else { out.append(r) }
            prevMatch = isMatch
        }
    }
    return out.map { Piece(s: Array(p.s[$0]), atStart: p.atStart && $0.lowerBound == 0) }
}

/// Matches of single characters satisfying `f`, one match per character.
func charMatches(_ s: [Unicode.Scalar], _ f: (Unicode.Scalar) -> Bool) -> [Range<Int>] {
    var m: [Range<Int>] = []
    for (i, c) in s.enumerated() where f(c) { m.append(i..<(i + 1)) }
    return m
}

let gpt2Pattern = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

indirect enum HFPreTokenizer {
    case sequence([HFPreTokenizer])
    case byteLevel(addPrefixSpace: Bool, useRegex: Bool)
    case metaspace(replacement: Unicode.Scalar, prepend: String, split: Bool)
    case bert, whitespace, whitespaceSplit
    case split(pattern: [Unicode.Scalar]?, gpt2: Bool, behavior: SplitBehavior, invert: Bool)
    case digits(individual: Bool)
    case punctuation(SplitBehavior)

    init(_ v: Any, _ ctx: JSONContext) throws {
        let (type, d) = try ctx.type(v, "pre_tokenizer")
        func behavior(_ def: SplitBehavior) throws -> SplitBehavior {
            guard let b = d["behavior"] else { return def }
            guard let s = b as? String, let r = SplitBehavior(rawValue: s) else {
                throw ctx.unsupported("unsupported pre_tokenizer \(type) behavior '\(b)'")
            }
            return r
        }
        switch type {
        case "Sequence":
            guard let list = d["pretokenizers"] as? [Any] else { throw ctx.bad("pre_tokenizer Sequence has no \"pretokenizers\"") }
            self = .sequence(try list.map { try HFPreTokenizer($0, ctx) })
        case "ByteLevel":
            self = .byteLevel(addPrefixSpace: d["add_prefix_space"] as? Bool ?? true, useRegex: d["use_regex"] as? Bool ?? true)
        case "Metaspace":
            let rep = (d["replacement"] as? String ?? "\u{2581}").scalars
            guard rep.count == 1 else { throw ctx.bad("Metaspace replacement must be one character") }
            var scheme = d["prepend_scheme"] as? String ?? "always"
            if d["prepend_scheme"] == nil, let a = d["add_prefix_space"] as? Bool { scheme = a ? "always" : "never" }
            guard ["always", "first", "never"].contains(scheme) else { throw ctx.unsupported("unsupported Metaspace prepend_scheme '\(scheme)'") }
            self = .metaspace(replacement: rep[0], prepend: scheme, split: d["split"] as? Bool ?? true)
        case "BertPreTokenizer": self = .bert
        case "Whitespace": self = .whitespace
        case "WhitespaceSplit": self = .whitespaceSplit
        case "Split":
            guard let p = d["pattern"] as? [String: Any] else { throw ctx.bad("pre_tokenizer Split has no \"pattern\"") }
            let invert = d["invert"] as? Bool ?? false
            if let r = p["Regex"] as? String {
                guard r == gpt2Pattern else { throw ctx.unsupported("unsupported pre_tokenizer Split regex '\(r)' (only the GPT-2 pattern)") }
                self = .split(pattern: nil, gpt2: true, behavior: try behavior(.isolated), invert: invert)
            } else if let s = p["String"] as? String, !s.isEmpty {
                self = .split(pattern: s.scalars, gpt2: false, behavior: try behavior(.isolated), invert: invert)
            } else { throw ctx.bad("pre_tokenizer Split: bad pattern") }
        case "Digits": self = .digits(individual: d["individual_digits"] as? Bool ?? false)
        case "Punctuation": self = .punctuation(try behavior(.isolated))
        default: throw ctx.unsupported("unsupported pre_tokenizer type '\(type)'")
        }
    }

    func apply(_ pieces: [Piece]) -> [Piece] {
        if case .sequence(let list) = self { return list.reduce(pieces) { $1.apply($0) } }
        var out: [Piece] = []
        for p in pieces { apply(p, &out) }
        return out
    }

    private func apply(_ p: Piece, _ out: inout [Piece]) {
        switch self {
        case .sequence: out += apply([p])
        case .byteLevel(let addPrefix, let useRegex):
            var s = p.s
            if addPrefix && s.first != " " { s.insert(" ", at: 0) }
            let table = ByteLevelMap.byteToScalar
            func mapped(_ r: Range<Int>) -> Piece {
                var m: [Unicode.Scalar] = []
                m.reserveCapacity(r.count)
                for i in r {
                    let c = s[i]
                    if c.value < 0x80 { m.append(table[Int(c.value)]) } else {
                        for b in UTF8.encode(c)! { m.append(table[Int(b)]) }
                    }
                }
                return Piece(s: m, atStart: p.atStart && r.lowerBound == 0)
            }
            if useRegex { gpt2Split(s) { out.append(mapped($0)) } } else { out.append(mapped(0..<s.count)) }
        case .metaspace(let rep, let scheme, let split):
            var s = p.s.map { $0 == " " ? rep : $0 }
            if (scheme == "always" || (scheme == "first" && p.atStart)) && s.first != rep { s.insert(rep, at: 0) }
            let q = Piece(s: s, atStart: p.atStart)
            if split { out += splitPiece(q, matches: charMatches(s) { $0 == rep }, behavior: .mergedWithNext) } else { out.append(q) }
        case .bert:
            for w in splitPiece(p, matches: charMatches(p.s, UChar.isWhitespace), behavior: .removed) {
                out += splitPiece(w, matches: charMatches(w.s, UChar.isPunctuation), behavior: .isolated)
            }
        case .whitespaceSplit:
            out += splitPiece(p, matches: charMatches(p.s, UChar.isWhitespace), behavior: .removed)
        case .whitespace:
            // \w+|[^\w\s]+ kept, whitespace dropped.
            var m: [Range<Int>] = []
            var i = 0
            let s = p.s
            while i < s.count {
                if UChar.isWhitespace(s[i]) { i += 1; continue }
                let word = UChar.isWord(s[i])
                var j = i + 1
                while j < s.count && !UChar.isWhitespace(s[j]) && UChar.isWord(s[j]) == word { j += 1 }
                m.append(i..<j); i = j
            }
            out += splitPiece(p, matches: m, behavior: .removed, invert: true)
        case .split(let pattern, let gpt2, let behavior, let invert):
            var m: [Range<Int>] = []
            if gpt2 { gpt2Split(p.s) { m.append($0) } } else if let pat = pattern {
                var i = 0
                while i + pat.count <= p.s.count {
                    if p.s[i..<(i + pat.count)].elementsEqual(pat) { m.append(i..<(i + pat.count)); i += pat.count } else { i += 1 }
                }
            }
            out += splitPiece(p, matches: m, behavior: behavior, invert: invert)
        case .digits(let individual):
            let m = charMatches(p.s) { $0.value >= 0x30 && $0.value <= 0x39 }
            out += splitPiece(p, matches: m, behavior: individual ? .isolated : .contiguous)
        case .punctuation(let b):
            out += splitPiece(p, matches: charMatches(p.s, UChar.isPunctuation), behavior: b)
        }
    }
}

// MARK: - Models

/// Per-thread memo of word -> ids (words repeat heavily in natural text).
struct ModelCache {
    var words: [[Unicode.Scalar]: [Int32]] = [:]
    var merger = BPEMerger()
}

enum HFModel {
    case bpe(BPEModel)
    case wordPiece(WordPieceModel)

    init(_ d: [String: Any], _ ctx: JSONContext) throws {
        let type = d["type"] as? String ?? (d["merges"] != nil ? "BPE" : d["max_input_chars_per_word"] != nil ? "WordPiece" : "")
        guard let vocabAny = d["vocab"] else { throw ctx.bad("model has no \"vocab\"") }
        guard let vocabDict = vocabAny as? [String: Any] else {
            if type == "Unigram" { throw ctx.unsupported("unsupported model type 'Unigram'") }
            throw ctx.bad("model \"vocab\" is not an object of token -> id")
        }
        var vocab: [[UInt8]: Int32] = [:]
        vocab.reserveCapacity(vocabDict.count)
        var maxId = -1
        for (k, v) in vocabDict {
            guard let id = ctx.int(v) else { throw ctx.bad("model vocab: token '\(k)' has no valid id") }
            // Ids index tables: a vocabulary of n tokens uses ids below n (gaps allowed, not terabytes of them).
            guard id >= 0, id < vocabDict.count + HFTokenizer.idSlack else {
                throw ctx.bad("model vocab: token '\(k)' has id \(id), outside 0...\(vocabDict.count + HFTokenizer.idSlack - 1) for a vocabulary of \(vocabDict.count)")
            }
            vocab[Array(k.utf8)] = Int32(id); maxId = max(maxId, id)
        }
        var table = [String?](repeating: nil, count: maxId + 1)
        for (k, v) in vocab { table[Int(v)] = String(decoding: k, as: UTF8.self) }
        switch type {
        case "BPE": self = .bpe(try BPEModel(d, vocab: vocab, idToToken: table, ctx))
        case "WordPiece": self = .wordPiece(try WordPieceModel(d, vocab: vocab, idToToken: table, ctx))
        default: throw ctx.unsupported("unsupported model type '\(type)'")
        }
    }

    var idToToken: [String?] {
        switch self { case .bpe(let m): return m.idToToken; case .wordPiece(let m): return m.idToToken }
    }

    func tokenize(_ word: [Unicode.Scalar], cache: inout ModelCache, into out: inout [Int]) {
        if let hit = cache.words[word] { for x in hit { out.append(Int(x)) }; return }
        let ids: [Int32]
        switch self {
        case .bpe(let m): ids = m.tokenize(word, &cache.merger)
        case .wordPiece(let m): ids = m.tokenize(word)
        }
        if cache.words.count > 200_000 { cache.words.removeAll(keepingCapacity: true) }
        cache.words[word] = ids
        for x in ids { out.append(Int(x)) }
    }
}

struct BPEModel {
    let vocab: [[UInt8]: Int32]
    let idToToken: [String?]
    let pairs: PairTable
    let unk: Int32?
    let fuseUnk: Bool
    let byteFallback: Bool
    let ignoreMerges: Bool
    let prefix: [UInt8]
    let suffix: [UInt8]
    /// Ids of single scalars below 0x200 without prefix/suffix (covers the byte-level alphabet).
    let smallScalar: [Int32]
    let byteIds: [Int32]

    init(_ d: [String: Any], vocab: [[UInt8]: Int32], idToToken: [String?], _ ctx: JSONContext) throws {
        if let dropout = d["dropout"], !(dropout is NSNull) {
            throw ctx.unsupported("unsupported BPE dropout \(dropout) (only null)")
        }
        self.vocab = vocab; self.idToToken = idToToken
        prefix = Array(((d["continuing_subword_prefix"] as? String) ?? "").utf8)
        suffix = Array(((d["end_of_word_suffix"] as? String) ?? "").utf8)
        fuseUnk = d["fuse_unk"] as? Bool ?? false
        byteFallback = d["byte_fallback"] as? Bool ?? false
        ignoreMerges = d["ignore_merges"] as? Bool ?? false
        if let u = d["unk_token"] as? String {
            guard let id = vocab[Array(u.utf8)] else { throw ctx.bad("BPE unk_token '\(u)' is not in the vocab") }
            unk = id
        } else { unk = nil }
        guard let merges = d["merges"] as? [Any] else { throw ctx.bad("BPE model has no \"merges\"") }
        var pairs: [UInt64: PairInfo] = [:]
        pairs.reserveCapacity(merges.count)
        for (rank, m) in merges.enumerated() {
            let a: String, b: String
            if let s = m as? String {
                let parts = s.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false)
                guard parts.count == 2 else { throw ctx.bad("BPE merge \(rank) '\(s)' is not 'a b'") }
                a = String(parts[0]); b = String(parts[1])
            } else if let p = m as? [Any], p.count == 2, let x = p[0] as? String, let y = p[1] as? String {
                a = x; b = y
            } else { throw ctx.bad("BPE merge \(rank) is neither \"a b\" nor [a, b]") }
            let ab = Array(a.utf8), bb = Array(b.utf8)
            let merged = ab + (bb.starts(with: prefix) ? Array(bb.dropFirst(prefix.count)) : bb)
            guard let ia = vocab[ab], let ib = vocab[bb], let im = vocab[merged] else {
                throw ctx.bad("BPE merge \(rank) ('\(a)', '\(b)') uses a token missing from the vocab")
            }
            let key = pairKey(ia, ib)
            if pairs[key] == nil { pairs[key] = PairInfo(priority: -Float(rank), merged: im) }
        }
        self.pairs = PairTable(pairs, symbolCount: idToToken.count)
        var small = [Int32](repeating: -1, count: 0x200)
        for v in 0..<0x200 {
            if let s = Unicode.Scalar(UInt32(v)), let id = vocab[Array(String(s).utf8)] { small[v] = id }
        }
        smallScalar = small
        byteIds = (0..<256).map { vocab[Array(String(format: "<0x%02X>", $0).utf8)] ?? -1 }
    }

    func tokenize(_ word: [Unicode.Scalar], _ merger: inout BPEMerger) -> [Int32] {
        if ignoreMerges, let id = vocab[word.utf8Bytes] { return [id] }
        var ids: [Int32] = [], lens: [Int32] = []
        ids.reserveCapacity(word.count); lens.reserveCapacity(word.count)
        var pendingUnk = false
        let plain = prefix.isEmpty && suffix.isEmpty
        for (i, c) in word.enumerated() {
            var id: Int32 = -1
            if plain && c.value < 0x200 { id = smallScalar[Int(c.value)] } else {
                var key: [UInt8] = i > 0 ? prefix : []
                key += UTF8.encode(c)!
                if i == word.count - 1 { key += suffix }
                id = vocab[key] ?? -1
            }
            if id >= 0 {
                if pendingUnk, let u = unk { ids.append(u); lens.append(1) }
                pendingUnk = false
                ids.append(id); lens.append(1)
                continue
            }
            if byteFallback {
                let bytes = Array(UTF8.encode(c)!)
                if bytes.allSatisfy({ byteIds[Int($0)] >= 0 }) {
                    if pendingUnk, let u = unk { ids.append(u); lens.append(1) }
                    pendingUnk = false
                    for b in bytes { ids.append(byteIds[Int(b)]); lens.append(1) }
                    continue
                }
            }
            guard let u = unk else { continue }   // no unk token: the character is dropped, as in `tokenizers`
            if fuseUnk { pendingUnk = true } else { ids.append(u); lens.append(1) }
        }
        if pendingUnk, let u = unk { ids.append(u); lens.append(1) }
        return merger.merge(ids: &ids, lengths: lens, pairs: pairs)
    }
}

struct WordPieceModel {
    let vocab: [[UInt8]: Int32]
    let idToToken: [String?]
    let unk: Int32
    let prefix: [UInt8]
    let maxChars: Int

    init(_ d: [String: Any], vocab: [[UInt8]: Int32], idToToken: [String?], _ ctx: JSONContext) throws {
        self.vocab = vocab; self.idToToken = idToToken
        let u = d["unk_token"] as? String ?? "[UNK]"
        guard let id = vocab[Array(u.utf8)] else { throw ctx.bad("WordPiece unk_token '\(u)' is not in the vocab") }
        unk = id
        prefix = Array((d["continuing_subword_prefix"] as? String ?? "##").utf8)
        maxChars = ctx.int(d["max_input_chars_per_word"]) ?? 100
    }

    /// Greedy longest-match-first over the word (BERT's WordPiece); any unmatched remainder makes it [UNK].
    func tokenize(_ word: [Unicode.Scalar]) -> [Int32] {
        if word.count > maxChars { return [unk] }
        let bytes = word.utf8Bytes
        var offsets: [Int] = [0]   // byte offset of each scalar boundary
        for c in word { offsets.append(offsets.last! + UTF8.width(c)) }
        var out: [Int32] = []
        var start = 0
        var key: [UInt8] = []
        while start < word.count {
            var end = word.count
            var found: Int32 = -1
            while start < end {
                key.removeAll(keepingCapacity: true)
                if start > 0 { key += prefix }
                key += bytes[offsets[start]..<offsets[end]]
                if let id = vocab[key] { found = id; break }
                end -= 1
            }
            if found < 0 { return [unk] }
            out.append(found); start = end
        }
        return out
    }
}

// MARK: - Decoders

indirect enum HFDecoder {
    case sequence([HFDecoder])
    case byteLevel
    case wordPiece(prefix: String, cleanup: Bool)
    case metaspace(replacement: Unicode.Scalar, prependFirst: Bool)
    case bpe(suffix: String)
    case byteFallback, fuse
    case strip(content: Unicode.Scalar, start: Int, stop: Int)
    case replace(String, String)

    init(_ v: Any, _ ctx: JSONContext) throws {
        let (type, d) = try ctx.type(v, "decoder")
        switch type {
        case "Sequence":
            guard let list = d["decoders"] as? [Any] else { throw ctx.bad("decoder Sequence has no \"decoders\"") }
            self = .sequence(try list.map { try HFDecoder($0, ctx) })
        case "ByteLevel": self = .byteLevel
        case "WordPiece": self = .wordPiece(prefix: d["prefix"] as? String ?? "##", cleanup: d["cleanup"] as? Bool ?? true)
        case "Metaspace":
            let rep = d["replacement"] as? String ?? "\u{2581}"
            guard rep.unicodeScalars.count == 1 else { throw ctx.bad("Metaspace replacement must be one character") }
            var scheme = d["prepend_scheme"] as? String ?? "always"
            if d["prepend_scheme"] == nil, let a = d["add_prefix_space"] as? Bool { scheme = a ? "always" : "never" }
            self = .metaspace(replacement: rep.unicodeScalars.first!, prependFirst: scheme != "never")
        case "BPEDecoder": self = .bpe(suffix: d["suffix"] as? String ?? "</w>")
        case "ByteFallback": self = .byteFallback
        case "Fuse": self = .fuse
        case "Strip":
            guard let c = d["content"] as? String, c.unicodeScalars.count == 1 else { throw ctx.bad("decoder Strip needs a one-character \"content\"") }
            self = .strip(content: c.unicodeScalars.first!, start: ctx.int(d["start"]) ?? 0, stop: ctx.int(d["stop"]) ?? 0)
        case "Replace":
            let (p, c) = try replaceArgs(d, ctx, "decoder")
            self = .replace(p.string, c.string)
        default: throw ctx.unsupported("unsupported decoder type '\(type)'")
        }
    }

    func decode(_ tokens: [String]) -> [String] {
        switch self {
        case .sequence(let list): return list.reduce(tokens) { $1.decode($0) }
        case .byteLevel:
            var bytes: [UInt8] = []
            let map = ByteLevelMap.scalarToByte
            for t in tokens {
                var mapped: [UInt8] = []
                var ok = true
                for c in t.unicodeScalars { if let b = map[c.value] { mapped.append(b) } else { ok = false; break } }
                bytes += ok ? mapped : Array(t.utf8)
            }
            return [String(decoding: bytes, as: UTF8.self)]
        case .wordPiece(let prefix, let cleanup):
            return tokens.enumerated().map { i, t in
                var t = t
                if i != 0 {
                    if t.utf8.starts(with: prefix.utf8) { t = String(decoding: t.utf8.dropFirst(prefix.utf8.count), as: UTF8.self) } else { t = " " + t }
                }
                return cleanup ? wordPieceCleanup(t) : t
            }
        case .metaspace(let rep, let prependFirst):
            return tokens.enumerated().map { i, t in
                var out = ""
                for c in t.unicodeScalars {
                    if c == rep { if !(i == 0 && prependFirst) { out.unicodeScalars.append(" ") } } else { out.unicodeScalars.append(c) }
                }
                return out
            }
        case .bpe(let suffix):
            return tokens.enumerated().map { i, t in replacingBytes(t, suffix, i == tokens.count - 1 ? "" : " ") }
        case .byteFallback:
            var out: [String] = []
            var pending: [UInt8] = []
            func flush() {
                if pending.isEmpty { return }
                if let s = String(validating: pending, as: UTF8.self) { out.append(s) } else {
                    out += Array(repeating: "\u{FFFD}", count: pending.count)
                }
                pending.removeAll()
            }
            for t in tokens {
                let u = Array(t.utf8)
                if u.count == 6 && u.starts(with: Array("<0x".utf8)) && u[5] == UInt8(ascii: ">"), let b = UInt8(String(decoding: u[3..<5], as: UTF8.self), radix: 16) {
                    pending.append(b)
                } else { flush(); out.append(t) }
            }
            flush()
            return out
        case .fuse: return [tokens.joined()]
        case .strip(let content, let start, let stop):
            return tokens.map { t in
                let chars = Array(t.unicodeScalars)
                var lo = 0, hi = chars.count
                while lo < start && lo < chars.count && chars[lo] == content { lo += 1 }
                var k = 0
                while k < stop && hi > lo && chars[hi - 1] == content { hi -= 1; k += 1 }
                return Array(chars[lo..<hi]).string
            }
        case .replace(let p, let c): return tokens.map { replacingBytes($0, p, c) }
        }
    }
}

/// The `cleanup` of the WordPiece decoder (tokenizers/src/decoders/wordpiece.rs), applied per token.
func wordPieceCleanup(_ s: String) -> String {
    if !s.contains(" ") { return s }
    var t = s
    for (a, b) in [(" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
                   (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")] {
        t = replacingBytes(t, a, b)
    }
    return t
}

/// Replaces every occurrence of `a` by `b`, comparing UTF-8 bytes (Rust `str::replace`; Foundation's search
/// would treat canonically equivalent sequences as equal and grapheme clusters as units).
func replacingBytes(_ s: String, _ a: String, _ b: String) -> String {
    let u = Array(s.utf8), p = Array(a.utf8), r = Array(b.utf8)
    if p.isEmpty || u.count < p.count { return s }
    var out: [UInt8] = []
    out.reserveCapacity(u.count)
    var i = 0
    while i < u.count {
        if u[i] == p[0] && i + p.count <= u.count && u[i..<(i + p.count)].elementsEqual(p) {
            out += r; i += p.count
        } else { out.append(u[i]); i += 1 }
    }
    return String(decoding: out, as: UTF8.self)
}
