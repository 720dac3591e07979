import Foundation

/// llama2.c's tokenizer.bin (int32 max_token_length, then per token: float32 score, int32 length, bytes) with
/// llama2.c's `encode` (run.c): a dummy-prefix space token when the text is non-empty, one token per UTF-8
/// character (byte fallback: id = byte + 3), then merge the best-scoring adjacent pair, leftmost on ties.
/// It cannot express remove_extra_whitespaces, so on text with leading/trailing/repeated spaces it differs
/// from the model's own SentencePiece tokenizer (SPECS.md, "Tokenizer facts").
public struct Llama2cTokenizer: Tokenizer {
    public let name: String
    let pieces: [[UInt8]]
    let scores: [Float]
    let lookup: [[UInt8]: Int32]
    let pairs: PairTable
    let maxTokenLength: Int

    public var vocabSize: Int { pieces.count }
    public var bosId: Int? { 1 }     // llama2.c convention: 0 <unk>, 1 <s>, 2 </s>
    public var eosId: Int? { 2 }
    public var padId: Int? { nil }
    public var addsBOS: Bool { true }

    public init(data: Data, fileName: String, name: String? = nil) throws {
        self.name = name ?? "llama2c:" + fileName
        let b = [UInt8](data)
        func bad(_ s: String) -> TokenizerError { TokenizerError(.malformed, file: fileName, s) }
        func i32(_ o: Int) -> Int32 {
            Int32(bitPattern: UInt32(b[o]) | UInt32(b[o + 1]) << 8 | UInt32(b[o + 2]) << 16 | UInt32(b[o + 3]) << 24)
        }
        guard b.count >= 4 else { throw bad("truncated header (\(b.count) bytes, need 4)") }
        let maxLen = Int(i32(0))
        guard maxLen > 0 && maxLen < 1 << 16 else { throw bad("implausible max_token_length \(maxLen)") }
        var pieces: [[UInt8]] = [], scores: [Float] = []
        var o = 4
        while o < b.count {
            guard b.count - o >= 8 else { throw bad("truncated record of token \(pieces.count) at byte \(o)") }
            let score = Float(bitPattern: UInt32(bitPattern: i32(o)))
            let n = Int(i32(o + 4))
            o += 8
            guard n >= 0 && n <= maxLen else { throw bad("token \(pieces.count) has length \(n) (max_token_length \(maxLen))") }
            guard b.count - o >= n else { throw bad("truncated bytes of token \(pieces.count) at byte \(o)") }
            guard score.isFinite else { throw bad("token \(pieces.count) has a non-finite score") }
            pieces.append(Array(b[o..<(o + n)])); scores.append(score)
            o += n
        }
        guard pieces.count >= 259 else { throw bad("only \(pieces.count) tokens (need <unk>, <s>, </s> and 256 byte tokens)") }
        maxTokenLength = maxLen
        self.pieces = pieces; self.scores = scores
        var lookup: [[UInt8]: Int32] = [:]
        for (i, p) in pieces.enumerated() where lookup[p] == nil { lookup[p] = Int32(i) }
        self.lookup = lookup
        var pairs: [UInt64: PairInfo] = [:]
        for (i, p) in pieces.enumerated() where p.count >= 2 && lookup[p] == Int32(i) {
            for cut in 1..<p.count {
                guard let x = lookup[Array(p[..<cut])], let y = lookup[Array(p[cut...])] else { continue }
                pairs[pairKey(x, y)] = PairInfo(priority: scores[i], merged: Int32(i))
            }
        }
        self.pairs = PairTable(pairs, symbolCount: pieces.count)
    }

    public func token(for id: Int) -> String? {
        id >= 0 && id < pieces.count ? String(decoding: pieces[id], as: UTF8.self) : nil
    }

    public func encode(_ text: String, addSpecialTokens: Bool) -> [Int] {
        var ids: [Int32] = [], lens: [Int32] = []
        let u = Array(text.utf8)
        if !u.isEmpty, let sp = lookup[[0x20]] { ids.append(sp); lens.append(1) }
        var i = 0
        while i < u.count {
            let c = u[i]
            let n = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2
            let ch = Array(u[i..<min(u.count, i + n)])
            if let id = lookup[ch] { ids.append(id); lens.append(Int32(ch.count)) } else {
                for x in ch { ids.append(Int32(x) + 3); lens.append(1) }
            }
            i += n
        }
        var merger = BPEMerger()
        let out = merger.merge(ids: &ids, lengths: lens, pairs: pairs)
        return (addSpecialTokens ? [1] : []) + out.map { Int($0) }
    }

    /// As llama2.c's `decode`: a leading space is dropped from a piece that follows BOS (or starts the text);
    /// <0xNN> pieces are raw bytes; invalid UTF-8 becomes U+FFFD.
    public func decode(_ ids: [Int], skipSpecialTokens: Bool) -> String {
        var out: [UInt8] = []
        var prev = 1
        for id in ids {
            guard id >= 0 && id < pieces.count else { continue }
            if skipSpecialTokens && (id == 1 || id == 2) { prev = id; continue }
            var p = pieces[id][...]
            if prev == 1 && p.first == 0x20 { p = p.dropFirst() }
            if p.count == 6, p.starts(with: Array("<0x".utf8)), p.last == UInt8(ascii: ">"),
               let v = UInt8(String(decoding: p.dropFirst(3).prefix(2), as: UTF8.self), radix: 16) {
                out.append(v)
            } else { out.append(contentsOf: p) }
            prev = id
        }
        return String(decoding: out, as: UTF8.self)
    }
}
