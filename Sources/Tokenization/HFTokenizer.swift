import Foundation

/// A Hugging Face tokenizer.json pipeline: added tokens split out first, then normalizer -> pre-tokenizer ->
/// model (BPE or WordPiece) -> post-processor; decoder for the way back. Behaviour follows the Rust
/// `tokenizers` crate (the reference the fixtures come from). Truncation and padding in the file are ignored:
/// callers truncate (SPECS.md: sentence-transformers overrides them anyway).
public struct HFTokenizer: Tokenizer {
    /// How far past a vocabulary's size its ids may reach (gaps in the numbering); beyond that an id is refused.
    static let idSlack = 1 << 16
    public let name: String
    let normalizer: HFNormalizer?
    let preTokenizer: HFPreTokenizer?
    let model: HFModel
    let prefixIds: [Int]
    let suffixIds: [Int]
    let decoder: HFDecoder?
    let added: AddedVocabulary
    let idToToken: [String?]
    let specialIds: Set<Int>
    public let bosId: Int?
    public let eosId: Int?
    public let padId: Int?

    public var vocabSize: Int { idToToken.count }
    public var addsBOS: Bool { bosId != nil && prefixIds.first == bosId }

    public init(data: Data, fileName: String, name: String? = nil) throws {
        let displayName = name ?? "tokenizer.json:" + fileName
        let ctx = JSONContext(file: fileName)
        let rootAny: Any
        do { rootAny = try JSONSerialization.jsonObject(with: data) } catch {
            throw TokenizerError(.malformed, file: fileName, "not valid JSON (\(error.localizedDescription))")
        }
        guard let root = rootAny as? [String: Any] else { throw ctx.bad("top level is not a JSON object") }
        try self.init(root: root, fileName: fileName, name: displayName)
    }

    /// Builds the pipeline from a parsed tokenizer.json object (or one assembled from GGUF metadata).
    init(root: [String: Any], fileName: String, name: String) throws {
        self.name = name
        let ctx = JSONContext(file: fileName)
        guard let modelJSON = root["model"] as? [String: Any] else { throw ctx.bad("missing \"model\" object") }
        model = try HFModel(modelJSON, ctx)
        normalizer = try (root["normalizer"]).flatMap { $0 is NSNull ? nil : try HFNormalizer($0, ctx) }
        preTokenizer = try (root["pre_tokenizer"]).flatMap { $0 is NSNull ? nil : try HFPreTokenizer($0, ctx) }
        decoder = try (root["decoder"]).flatMap { $0 is NSNull ? nil : try HFDecoder($0, ctx) }

        var table = model.idToToken
        var tokens: [AddedToken] = []
        let addedList = (root["added_tokens"] as? [Any]) ?? []
        let idLimit = table.count + addedList.count + HFTokenizer.idSlack
        for (k, item) in addedList.enumerated() {
            guard let d = item as? [String: Any], let content = d["content"] as? String, let id = ctx.int(d["id"]) else {
                throw ctx.bad("added_tokens[\(k)] needs \"id\" and \"content\"")
            }
            guard id >= 0, id < idLimit else {
                throw ctx.bad("added_tokens[\(k)] ('\(content)') has id \(id), outside 0...\(idLimit - 1) for a vocabulary of \(table.count)")
            }
            let t = AddedToken(id: id, content: content.scalars, special: d["special"] as? Bool ?? false,
                               singleWord: d["single_word"] as? Bool ?? false, lstrip: d["lstrip"] as? Bool ?? false,
                               rstrip: d["rstrip"] as? Bool ?? false, normalized: d["normalized"] as? Bool ?? true)
            tokens.append(t)
            if id >= table.count { table += Array(repeating: nil, count: id + 1 - table.count) }
            table[id] = content
        }
        // Normalized added tokens are matched on normalized text, so their content is normalized too.
        let norm = normalizer
        tokens = tokens.map { t in
            var t = t
            if t.normalized, let norm { t.matchContent = norm.apply(t.content) } else { t.matchContent = t.content }
            return t
        }
        added = AddedVocabulary(tokens)
        idToToken = table
        specialIds = Set(tokens.filter { $0.special }.map { $0.id })

        (prefixIds, suffixIds) = try (root["post_processor"]).flatMap { $0 is NSNull ? nil : try postProcessorIds($0, ctx) } ?? ([], [])
        if let bad = (prefixIds + suffixIds).first(where: { $0 < 0 || $0 >= table.count }) {
            throw ctx.bad("post_processor names special token id \(bad), outside the vocabulary (0...\(table.count - 1))")
        }
        func idOf(_ names: [String]) -> Int? {
            for n in names { if let t = tokens.first(where: { $0.content.string == n }) { return t.id } }
            return nil
        }
        bosId = idOf(["<s>", "<|begin_of_text|>", "<bos>", "[CLS]"])
        eosId = idOf(["</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "[SEP]"])
        padId = idOf(["<pad>", "[PAD]", "<|pad|>"])
    }

    public func token(for id: Int) -> String? { id >= 0 && id < idToToken.count ? idToToken[id] : nil }

    public func encode(_ text: String, addSpecialTokens: Bool) -> [Int] {
        var cache = makeCache()
        return encode(text, addSpecialTokens: addSpecialTokens, cache: &cache)
    }

    public func decode(_ ids: [Int], skipSpecialTokens: Bool) -> String {
        var tokens: [String] = []
        for id in ids {
            guard id >= 0 && id < idToToken.count, let t = idToToken[id] else { continue }
            if skipSpecialTokens && specialIds.contains(id) { continue }
            tokens.append(t)
        }
        guard let decoder else { return tokens.joined(separator: " ") }
        return decoder.decode(tokens).joined()
    }
}

extension HFTokenizer: CachingEncoder {
    func makeCache() -> ModelCache { ModelCache() }

    func encode(_ text: String, addSpecialTokens: Bool, cache: inout ModelCache) -> [Int] {
        var out: [Int] = []
        out.reserveCapacity(text.utf8.count / 3 + 4)
        if addSpecialTokens { out += prefixIds }
        let scalars = text.scalars
        // 1. Added tokens matched on the raw text (non-normalized ones), 2. on each normalized remainder.
        var atStart = true
        added.split(scalars, normalizedPass: false) { segment, tokenId in
            if let tokenId { out.append(tokenId); atStart = false; return }
            let normalized = normalizer?.apply(segment) ?? segment
            added.split(normalized, normalizedPass: true) { seg, tid in
                if let tid { out.append(tid); atStart = false; return }
                var pieces = [Piece(s: seg, atStart: atStart)]
                atStart = false
                if let preTokenizer { pieces = preTokenizer.apply(pieces) }
                for p in pieces where !p.s.isEmpty { model.tokenize(p.s, cache: &cache, into: &out) }
            }
        }
        if addSpecialTokens { out += suffixIds }
        return out
    }
}

/// Reading helpers that name the file in errors.
struct JSONContext {
    let file: String
    func bad(_ s: String) -> TokenizerError { TokenizerError(.malformed, file: file, s) }
    func unsupported(_ s: String) -> TokenizerError { TokenizerError(.unsupported, file: file, s) }
    func int(_ v: Any?) -> Int? {
        if let i = v as? Int { return i }
        return nil
    }
    func type(_ v: Any, _ what: String) throws -> (String, [String: Any]) {
        guard let d = v as? [String: Any] else { throw bad("\(what) is not an object") }
        guard let t = d["type"] as? String else { throw bad("\(what) has no \"type\"") }
        return (t, d)
    }
}

// MARK: - Added tokens

struct AddedToken {
    let id: Int
    let content: [Unicode.Scalar]
    let special: Bool
    let singleWord: Bool
    let lstrip: Bool
    let rstrip: Bool
    let normalized: Bool
    var matchContent: [Unicode.Scalar] = []
}

/// Finds added tokens leftmost-longest (as the aho-corasick matcher of `tokenizers` does) and splits around them.
struct AddedVocabulary {
    let raw: [AddedToken]         // normalized == false: matched on the original text
    let normalized: [AddedToken]  // normalized == true: matched (normalized) on normalized text
    let firstScalars: Set<UInt32>

    init(_ tokens: [AddedToken]) {
        raw = tokens.filter { !$0.normalized && !$0.content.isEmpty }
        normalized = tokens.filter { $0.normalized && !$0.matchContent.isEmpty }
        firstScalars = Set((raw.map { $0.content } + normalized.map { $0.matchContent }).map { $0[0].value })
    }

    func split(_ s: [Unicode.Scalar], normalizedPass: Bool, _ emit: ([Unicode.Scalar], Int?) -> Void) {
        let list = normalizedPass ? normalized : raw
        if list.isEmpty || s.isEmpty { emit(s, nil); return }
        var last = 0, i = 0
        let n = s.count
        while i < n {
            guard firstScalars.contains(s[i].value) else { i += 1; continue }
            var best: AddedToken? = nil
            for t in list {
                let c = normalizedPass ? t.matchContent : t.content
                if c.count <= n - i && (best == nil || c.count > (normalizedPass ? best!.matchContent : best!.content).count),
                   s[i..<(i + c.count)].elementsEqual(c) {
                    if t.singleWord {
                        let before = i == 0 || !UChar.isWord(s[i - 1])
                        let after = i + c.count == n || !UChar.isWord(s[i + c.count])
                        if !(before && after) { continue }
                    }
                    best = t
                }
            }
            guard let t = best else { i += 1; continue }
            var start = i, end = i + (normalizedPass ? t.matchContent : t.content).count
            if t.lstrip { while start > last && UChar.isWhitespace(s[start - 1]) { start -= 1 } }
            if t.rstrip { while end < n && UChar.isWhitespace(s[end]) { end += 1 } }
            if start > last { emit(Array(s[last..<start]), nil) }
            emit([], t.id)
            last = end; i = end
        }
        if last < n { emit(Array(s[last..<n]), nil) }
    }
}

// MARK: - Post-processor

func postProcessorIds(_ v: Any, _ ctx: JSONContext) throws -> ([Int], [Int]) {
    let (type, d) = try ctx.type(v, "post_processor")
    func pairId(_ key: String) throws -> Int {
        guard let a = d[key] as? [Any], a.count == 2, let id = ctx.int(a[1]) else {
            throw ctx.bad("post_processor \(type): \"\(key)\" must be [token, id]")
        }
        return id
    }
    switch type {
    case "ByteLevel": return ([], [])
    case "BertProcessing", "RobertaProcessing": return ([try pairId("cls")], [try pairId("sep")])
    case "TemplateProcessing":
        guard let single = d["single"] as? [Any] else { throw ctx.bad("TemplateProcessing has no \"single\" template") }
        let specials = d["special_tokens"] as? [String: Any] ?? [:]
        var pre: [Int] = [], post: [Int] = [], seenA = false
        for item in single {
            guard let o = item as? [String: Any] else { throw ctx.bad("TemplateProcessing: bad template item") }
            if o["Sequence"] != nil { seenA = true; continue }
            guard let st = o["SpecialToken"] as? [String: Any], let name = st["id"] as? String else {
                throw ctx.unsupported("unsupported TemplateProcessing item \(o.keys.sorted())")
            }
            guard let sp = specials[name] as? [String: Any], let ids = sp["ids"] as? [Any] else {
                throw ctx.bad("TemplateProcessing: special token '\(name)' not in special_tokens")
            }
            let list = try ids.map { x -> Int in guard let i = ctx.int(x) else { throw ctx.bad("TemplateProcessing: bad id") }; return i }
            if seenA { post += list } else { pre += list }
        }
        return (pre, post)
    case "Sequence":
        var pre: [Int] = [], post: [Int] = []
        for p in (d["processors"] as? [Any]) ?? [] { let (a, b) = try postProcessorIds(p, ctx); pre += a; post += b }
        return (pre, post)
    default: throw ctx.unsupported("unsupported post_processor type '\(type)'")
    }
}
