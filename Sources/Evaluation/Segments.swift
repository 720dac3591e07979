import Foundation
import TensorCore

// Per-segment analysis: where does the quantized model lose? Pure functions over per-token (perplexity/KLD),
// per-query (retrieval) and per-question (answers) values; every breakdown is sorted worst first.

/// One segment's base and quantized figure. For perplexity segments `base`/`quantized` are perplexities
/// (exp of the mean NLL over the segment's tokens); for retrieval/answers they are mean metric values.
public struct SegmentDelta: Sendable, Equatable, Encodable {
    public var group: String
    public var segment: String
    public var count: Int
    public var base: Double
    public var quantized: Double
    public var higherIsBetter: Bool
    /// Mean KLD over the segment's tokens when known.
    public var kldMean: Double?
    /// The compared run this segment belongs to (set by `Comparison.segments` when several runs are compared).
    public var run: String?

    public init(group: String, segment: String, count: Int, base: Double, quantized: Double, higherIsBetter: Bool,
                kldMean: Double? = nil) {
        self.group = group; self.segment = segment; self.count = count; self.base = base; self.quantized = quantized
        self.higherIsBetter = higherIsBetter; self.kldMean = kldMean
    }

    public var delta: Double { quantized - base }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(group, forKey: .group)
        try c.encode(segment, forKey: .segment)
        try c.encode(count, forKey: .count)
        try c.encode(base, forKey: .base)
        try c.encode(quantized, forKey: .quantized)
        try c.encode(relativeLoss, forKey: .relativeLoss)
        try c.encode(higherIsBetter, forKey: .higherIsBetter)
        try c.encodeIfPresent(kldMean, forKey: .kldMean)
        try c.encodeIfPresent(run, forKey: .run)
    }

    /// The form result files carry in their `segments` arrays (what `quantkit compare` reads back).
    public var json: [String: Any] {
        var o: [String: Any] = ["group": group, "segment": segment, "count": count, "base": base, "quantized": quantized,
                                "relative_loss": relativeLoss, "higher_is_better": higherIsBetter]
        if let k = kldMean { o["kld_mean"] = k }
        if let r = run { o["run"] = r }
        return o
    }

    enum CodingKeys: String, CodingKey {
        case group, segment, count, base, quantized, relativeLoss = "relative_loss", higherIsBetter = "higher_is_better"
        case kldMean = "kld_mean", run
    }
    /// Relative loss: positive = worse. ppl: q/b - 1; higher-is-better metrics: (b - q)/b. A zero base with a
    /// drop counts as a total loss (1) so such segments still sort first.
    public var relativeLoss: Double {
        if higherIsBetter {
            if base == 0 { return quantized < 0 ? 1 : (quantized > 0 ? -1 : 0) }
            return (base - quantized) / abs(base)
        }
        return base == 0 ? 0 : quantized / base - 1
    }
}

/// Per-token input from a perplexity run (the perplexity command provides it, one record per scored token, in
/// the same order for the base and the quantized run).
public struct SegmentToken: Sendable, Equatable {
    /// Index of the predicted (target) token in the tokenized text.
    public var tokenIndex: Int
    /// Position of the predicting token inside its window/chunk (0-based).
    public var windowPosition: Int
    /// The target token id.
    public var tokenId: Int32
    /// UTF-8 byte offset in the evaluated text of the target token (to map tokens to documents). The perplexity
    /// command locates tokens at line resolution (`Segments.locateLines`): the offset of the start of the line
    /// holding the token, which is exact for documents, since documents start at line starts.
    public var byteOffset: Int
    /// Negative log-likelihood of the target token (natural log).
    public var nll: Double
    /// KL(base || quantized) at this position, when computed (quantized side only).
    public var kld: Double?

    public init(tokenIndex: Int, windowPosition: Int, tokenId: Int32, byteOffset: Int, nll: Double, kld: Double? = nil) {
        self.tokenIndex = tokenIndex; self.windowPosition = windowPosition; self.tokenId = tokenId
        self.byteOffset = byteOffset; self.nll = nll; self.kld = kld
    }
}

/// A named byte range of the evaluated text (a document, article or line range).
public struct DocumentSpan: Sendable, Equatable {
    public var name: String
    public var bytes: Range<Int>
    public init(name: String, bytes: Range<Int>) { self.name = name; self.bytes = bytes }
}

public enum Segments {
    /// WikiText article boundaries: an article starts at a line of the form ` = Title = ` (one '=' each side;
    /// ` = = Section = = ` lines are sections, not articles). Text before the first title is "(preamble)".
    public static func wikiTextDocuments(_ text: String) -> [DocumentSpan] {
        var starts: [(String, Int)] = []
        var offset = 0
        for line in utf8Lines(text) {
            if let title = wikiTitle(String(decoding: line, as: UTF8.self)) { starts.append((title, offset)) }
            offset += line.count + 1
        }
        let total = text.utf8.count
        var spans: [DocumentSpan] = []
        if let first = starts.first, first.1 > 0 { spans.append(DocumentSpan(name: "(preamble)", bytes: 0..<first.1)) }
        if starts.isEmpty { return [DocumentSpan(name: "(whole text)", bytes: 0..<total)] }
        for (i, st) in starts.enumerated() {
            let end = i + 1 < starts.count ? starts[i + 1].1 : total
            spans.append(DocumentSpan(name: st.0, bytes: st.1..<end))
        }
        return spans
    }

    /// Lines split on the byte 0x0A (a Swift Character treats "\r\n" as one, so String.split on "\n" would
    /// miss CRLF line ends); a trailing "\r" stays in the line.
    static func utf8Lines(_ text: String) -> [ArraySlice<UInt8>] {
        Array(text.utf8).split(separator: 0x0A, omittingEmptySubsequences: false)
    }

    /// The title when `line` matches `^ = [^=].* = $`.
    static func wikiTitle(_ line: String) -> String? {
        let l = line.hasSuffix("\r") ? String(line.dropLast()) : line
        guard l.hasPrefix(" = "), l.hasSuffix(" = "), l.count >= 7 else { return nil }
        let inner = l.dropFirst(3).dropLast(3)
        guard let c = inner.first, c != "=" else { return nil }
        return String(inner)
    }

    /// Generic documents: consecutive blocks of `linesPerDocument` lines ("lines a-b", 1-based).
    public static func lineRangeDocuments(_ text: String, linesPerDocument: Int) -> [DocumentSpan] {
        let n = max(1, linesPerDocument)
        var spans: [DocumentSpan] = []
        var offset = 0, start = 0, line = 0, startLine = 1
        for l in utf8Lines(text) {
            offset += l.count + 1
            line += 1
            if line % n == 0 {
                spans.append(DocumentSpan(name: "lines \(startLine)-\(line)", bytes: start..<min(offset, text.utf8.count)))
                start = min(offset, text.utf8.count); startLine = line + 1
            }
        }
        if start < text.utf8.count { spans.append(DocumentSpan(name: "lines \(startLine)-\(line)", bytes: start..<text.utf8.count)) }
        return spans
    }

    /// Validates that base and quantized token records describe the same tokens.
    static func checkAligned(_ base: [SegmentToken], _ quant: [SegmentToken]) throws {
        guard base.count == quant.count else {
            throw QuantKitError(.input, "per-token records differ in length: base \(base.count), quantized \(quant.count)")
        }
        for i in base.indices where base[i].tokenIndex != quant[i].tokenIndex || base[i].tokenId != quant[i].tokenId {
            throw QuantKitError(.input, "per-token record \(i) differs: base token \(base[i].tokenIndex)/\(base[i].tokenId), quantized \(quant[i].tokenIndex)/\(quant[i].tokenId)")
        }
    }

    /// Groups token indices by key and makes one perplexity SegmentDelta per group, worst first.
    static func perplexityGroups(_ base: [SegmentToken], _ quant: [SegmentToken], group: String,
                                 key: (Int) -> String?) throws -> [SegmentDelta] {
        try checkAligned(base, quant)
        var acc: [String: (nb: Double, nq: Double, kld: Double, nk: Int, n: Int)] = [:]
        var order: [String] = []
        for i in base.indices {
            guard let k = key(i) else { continue }
            if acc[k] == nil { acc[k] = (0, 0, 0, 0, 0); order.append(k) }
            acc[k]!.nb += base[i].nll
            acc[k]!.nq += quant[i].nll
            if let d = quant[i].kld { acc[k]!.kld += d; acc[k]!.nk += 1 }
            acc[k]!.n += 1
        }
        let out = order.map { k -> SegmentDelta in
            let a = acc[k]!
            return SegmentDelta(group: group, segment: k, count: a.n, base: exp(a.nb / Double(a.n)),
                                quantized: exp(a.nq / Double(a.n)), higherIsBetter: false,
                                kldMean: a.nk > 0 ? a.kld / Double(a.nk) : nil)
        }
        return worstFirst(out)
    }

    /// Sorted by relative loss descending; ties by name for stable output.
    public static func worstFirst(_ s: [SegmentDelta]) -> [SegmentDelta] {
        s.sorted { ($0.relativeLoss, $1.segment) > ($1.relativeLoss, $0.segment) }
    }

    /// Perplexity deltas per document (tokens mapped by byte offset; tokens outside every span are dropped).
    public static func byDocument(base: [SegmentToken], quantized: [SegmentToken], documents: [DocumentSpan]) throws -> [SegmentDelta] {
        let name = documentNamer(documents)
        return try perplexityGroups(base, quantized, group: "document") { i in name(base[i].byteOffset) }
    }

    /// Maps a byte offset to the name of the document span holding it (nil outside every span).
    public static func documentNamer(_ documents: [DocumentSpan]) -> @Sendable (Int) -> String? {
        let sorted = documents.sorted { $0.bytes.lowerBound < $1.bytes.lowerBound }
        let starts = sorted.map(\.bytes.lowerBound)
        return { off in
            // Last span starting at or before off (binary search).
            var lo = 0, hi = starts.count
            while lo < hi { let m = (lo + hi) / 2; if starts[m] <= off { lo = m + 1 } else { hi = m } }
            guard lo > 0, sorted[lo - 1].bytes.contains(off) else { return nil }
            return sorted[lo - 1].name
        }
    }

    /// Perplexity deltas per bucket of window position: [0, w), [w, 2w), ...
    public static func byWindowPosition(base: [SegmentToken], quantized: [SegmentToken], bucketWidth: Int) throws -> [SegmentDelta] {
        guard bucketWidth > 0 else { throw QuantKitError(.input, "position bucket width must be positive, got \(bucketWidth)") }
        return try perplexityGroups(base, quantized, group: "window position") { i in
            let b = base[i].windowPosition / bucketWidth
            return "\(b * bucketWidth)-\((b + 1) * bucketWidth - 1)"
        }
    }

    /// Token frequency classes over the evaluated tokens: distinct target ids ranked by count (descending, then
    /// id ascending); the first 10% of ids (at least one) are "frequent", the last 50% "rare", the rest "mid".
    public static func frequencyClasses(_ tokenIds: [Int32]) -> [Int32: String] {
        var counts: [Int32: Int] = [:]
        for t in tokenIds { counts[t, default: 0] += 1 }
        let ranked = counts.sorted { ($0.value, $1.key) > ($1.value, $0.key) }.map(\.key)
        let n = ranked.count
        let top = max(1, Int((Double(n) * 0.1).rounded(.up)))
        let rareStart = max(top, n - Int((Double(n) * 0.5).rounded(.down)))
        var out: [Int32: String] = [:]
        for (r, t) in ranked.enumerated() { out[t] = r < top ? "frequent (top 10% of ids)" : (r >= rareStart ? "rare (bottom 50% of ids)" : "mid") }
        return out
    }

    public static func byTokenFrequency(base: [SegmentToken], quantized: [SegmentToken]) throws -> [SegmentDelta] {
        let classes = frequencyClasses(base.map(\.tokenId))
        return try perplexityGroups(base, quantized, group: "token frequency") { classes[base[$0].tokenId] }
    }

    /// Per-item values (queries, questions) with a bucket label: mean base and quantized per bucket, worst first.
    public static func byLabel(_ items: [(label: String, base: Double, quantized: Double)], group: String,
                               higherIsBetter: Bool = true) -> [SegmentDelta] {
        var acc: [String: (b: Double, q: Double, n: Int)] = [:]
        for it in items {
            let a = acc[it.label] ?? (0, 0, 0)
            acc[it.label] = (a.b + it.base, a.q + it.quantized, a.n + 1)
        }
        return worstFirst(acc.map { k, a in
            SegmentDelta(group: group, segment: k, count: a.n, base: a.b / Double(a.n), quantized: a.q / Double(a.n),
                         higherIsBetter: higherIsBetter)
        })
    }

    /// Query length buckets by whitespace word count, the one definition every report uses (the retrieval JSON's
    /// segments, compare's buckets for files without them).
    public static let queryLengthBuckets = ["1-8 words", "9-16 words", "17+ words"]

    public static func queryLengthBucket(_ text: String) -> String {
        switch text.split(whereSeparator: \.isWhitespace).count {
        case ..<9: return queryLengthBuckets[0]
        case 9..<17: return queryLengthBuckets[1]
        default: return queryLengthBuckets[2]
        }
    }

    /// Retrieval per-query deltas by query length bucket.
    public static func byQueryLength(_ queries: [(text: String, base: Double, quantized: Double)]) -> [SegmentDelta] {
        byLabel(queries.map { (queryLengthBucket($0.text), $0.base, $0.quantized) }, group: "query length")
    }
}

// MARK: the perplexity command's breakdown

/// How the evaluated text is cut into documents for the per-document breakdown.
/// - `wikitext`: articles start at lines ` = Title = ` (a single '=' level heading; `wikiTextDocuments`).
/// - `paragraphs`: documents are separated by blank lines (lines holding only whitespace); each is named
///   "paragraph K (lines A-B)", 1-based. Runs of blank lines separate once; blank lines belong to the document
///   before them.
/// - `lines(N)`: consecutive blocks of N lines ("lines A-B").
/// - `auto`: `wikitext` when the text has at least two article headings, else `paragraphs` when that gives at
///   least two documents, else `lines(100)`.
public enum DocumentRule: Sendable, Equatable, CustomStringConvertible {
    case auto, wikitext, paragraphs, lines(Int)

    /// Parses the `--documents` value: auto | wikitext | paragraphs | lines:N.
    public init(parsing s: String) throws {
        let v = s.lowercased().trimmingCharacters(in: .whitespaces)
        switch v {
        case "auto": self = .auto
        case "wikitext": self = .wikitext
        case "paragraphs": self = .paragraphs
        default:
            if v.hasPrefix("lines:"), let n = Int(v.dropFirst(6)), n > 0 { self = .lines(n); return }
            throw QuantKitError(.input, "--documents: expected auto, wikitext, paragraphs or lines:N (N > 0), got \"\(s)\"")
        }
    }

    public var description: String {
        switch self {
        case .auto: return "auto"
        case .wikitext: return "wikitext"
        case .paragraphs: return "paragraphs"
        case .lines(let n): return "lines:\(n)"
        }
    }
}

/// Where the tokens of a whole-text tokenization lie in the text, at line resolution.
public struct TokenLines: Sendable, Equatable {
    /// Per token of the stream: the byte offset of the start of the line holding it (0 for leading special tokens).
    public var offsets: [Int]
    /// Lines whose separate tokenization matched the whole text's tokens at the expected place.
    public var exactLines: Int
    /// Lines where it did not: their tokens were placed by re-synchronising on the next line (approximate).
    public var approximateLines: Int
}

extension Segments {
    /// Documents of `text` under `rule`, and the rule actually applied (auto resolved).
    public static func documents(_ text: String, rule: DocumentRule) -> (spans: [DocumentSpan], rule: DocumentRule) {
        switch rule {
        case .wikitext: return (wikiTextDocuments(text), .wikitext)
        case .paragraphs: return (paragraphDocuments(text), .paragraphs)
        case .lines(let n): return (lineRangeDocuments(text, linesPerDocument: n), .lines(n))
        case .auto:
            let w = wikiTextDocuments(text)
            if w.filter({ $0.name != "(preamble)" && $0.name != "(whole text)" }).count >= 2 { return (w, .wikitext) }
            let p = paragraphDocuments(text)
            if p.count >= 2 { return (p, .paragraphs) }
            return (lineRangeDocuments(text, linesPerDocument: 100), .lines(100))
        }
    }

    /// Blank-line-separated documents (see `DocumentRule.paragraphs`).
    public static func paragraphDocuments(_ text: String) -> [DocumentSpan] {
        let total = text.utf8.count
        var spans: [DocumentSpan] = []
        var offset = 0, line = 0
        var start: (byte: Int, line: Int)? = nil   // current document's first non-blank line
        var lastContent = 0                         // last non-blank line of the current document
        var pendingEnd: Int? = nil                  // document ended at a blank line; closes at the next content
        for l in utf8Lines(text) {
            line += 1
            let blank = l.allSatisfy { $0 == 0x20 || $0 == 0x09 || $0 == 0x0D || $0 == 0x0B || $0 == 0x0C }
            if blank {
                if start != nil && pendingEnd == nil { pendingEnd = offset }
            } else {
                if let s = start, pendingEnd != nil {
                    spans.append(DocumentSpan(name: "paragraph \(spans.count + 1) (lines \(s.line)-\(lastContent))", bytes: s.byte..<offset))
                    start = nil; pendingEnd = nil
                }
                if start == nil { start = (spans.isEmpty ? 0 : offset, line) }
                lastContent = line
            }
            offset += l.count + 1
        }
        if let s = start {
            spans.append(DocumentSpan(name: "paragraph \(spans.count + 1) (lines \(s.line)-\(lastContent))", bytes: s.byte..<total))
        } else {
            spans.append(DocumentSpan(name: "(whole text)", bytes: 0..<total))
        }
        return spans
    }

    /// Locates the tokens of `tokens[leading...]` (the whole text tokenized once, after `leading` special tokens
    /// such as BOS) in `text` at line resolution: every line (up to and including its "\n") is tokenized on its
    /// own with `encode` and matched, in order, against the whole-text tokens. Tokenizers that do not merge
    /// across a newline (SentencePiece, and byte-level BPE on most text) reproduce the whole-text tokens
    /// exactly; where a line does not match, the line's tokens end where the following lines' own tokens are
    /// found (at least 8 of them, searched within 16 tokens of the expected place, nearest first; a line may so
    /// get no token of its own), and the line counts as approximate.
    /// Lines are encoded in batches of 512 and only until the first `limit` tokens are placed (tokens past it
    /// keep offset 0).
    public static func locateLines(text: String, tokens: [Int32], leading: Int, limit: Int? = nil,
                                   encode: ([String]) -> [[Int]]) -> TokenLines {
        let bytes = Array(text.utf8)
        var starts: [Int] = []
        var ends: [Int] = []
        var s = 0
        while s < bytes.count {
            var e = s
            while e < bytes.count && bytes[e] != 0x0A { e += 1 }
            if e < bytes.count { e += 1 }  // keep the newline with its line
            starts.append(s); ends.append(e)
            s = e
        }
        var enc = [[Int]?](repeating: nil, count: starts.count)
        func line(_ i: Int) -> [Int] {
            if enc[i] == nil {
                let hi = min(i + 512, starts.count)
                let got = encode((i..<hi).map { String(decoding: bytes[starts[$0]..<ends[$0]], as: UTF8.self) })
                for (k, e) in got.enumerated() where i + k < hi { enc[i + k] = e }
            }
            return enc[i] ?? []
        }
        let n = tokens.count
        let stop = min(limit ?? n, n)
        var offsets = [Int](repeating: 0, count: n)
        var cursor = min(max(leading, 0), n)
        var exact = 0, approx = 0
        func matches(_ e: [Int], at p: Int) -> Bool {
            guard p >= 0, p + e.count <= n else { return false }
            for j in e.indices where Int(tokens[p + j]) != e[j] { return false }
            return true
        }
        var i = 0
        while i < starts.count && cursor < stop {
            let e = line(i)
            var end: Int
            if matches(e, at: cursor) {
                end = cursor + e.count
                exact += 1
            } else {
                approx += 1
                end = min(cursor + e.count, n)
                // Re-synchronise on the following lines: their own tokens, concatenated until at least 8 tokens
                // (or 8 lines, or the end of the text), must appear where this line ends.
                var probe: [Int] = []
                var j = i + 1
                while j < starts.count && j <= i + 8 && probe.count < 8 { probe += line(j); j += 1 }
                if !probe.isEmpty {
                    let expected = cursor + e.count
                    for d in 0...16 {
                        if expected - d >= cursor, matches(probe, at: expected - d) { end = expected - d; break }
                        if d > 0, matches(probe, at: expected + d) { end = expected + d; break }
                    }
                }
            }
            if i == starts.count - 1 { end = n }  // whatever is left belongs to the last line
            end = min(end, n)
            if end > cursor { for t in cursor..<end { offsets[t] = starts[i] } }
            cursor = max(cursor, end)
            i += 1
        }
        return TokenLines(offsets: offsets, exactLines: exact, approximateLines: approx)
    }

    /// Window-position bucket width for a run whose scored (predicting) positions span `minPosition...maxPosition`:
    /// the smallest power of two for which the buckets (aligned at multiples of the width) touching the span
    /// number at most 8.
    /// llamacpp at ctx 256 scores positions 128...254: width 16, buckets 128-143 ... 240-255.
    public static func positionBucketWidth(minPosition: Int, maxPosition: Int) -> Int {
        var w = 1
        while (max(maxPosition, minPosition) / w) - (minPosition / w) + 1 > 8 { w *= 2 }
        return w
    }

    /// The perplexity command's breakdown: per document, per window-position bucket and per token-frequency
    /// class (in that group order, each group worst first).
    public static func perplexityBreakdown(base: [SegmentToken], quantized: [SegmentToken], documents: [DocumentSpan],
                                           positionBucketWidth: Int) throws -> [SegmentDelta] {
        try byDocument(base: base, quantized: quantized, documents: documents)
            + byWindowPosition(base: base, quantized: quantized, bucketWidth: positionBucketWidth)
            + byTokenFrequency(base: base, quantized: quantized)
    }

    /// The `limit` worst segments of each group, groups in first-seen order.
    public static func worstPerGroup(_ segments: [SegmentDelta], limit: Int) -> [(group: String, segments: [SegmentDelta])] {
        var order: [String] = []
        var by: [String: [SegmentDelta]] = [:]
        for s in segments {
            if by[s.group] == nil { order.append(s.group) }
            by[s.group, default: []].append(s)
        }
        return order.map { g in (g, Array(worstFirst(by[g]!).prefix(limit))) }
    }
}
