import Foundation
import TensorCore

// Per-segment analysis: where does the quantized model lose? Pure functions over per-token (perplexity/KLD),
// per-query (retrieval) and per-question (answers) values; every breakdown is sorted worst first.

/// One segment's base and quantized figure. For perplexity segments `base`/`quantized` are perplexities
/// (exp of the mean NLL over the segment's tokens); for retrieval/answers they are mean metric values.
public struct SegmentDelta: Sendable, Equatable {
    public var group: String
    public var segment: String
    public var count: Int
    public var base: Double
    public var quantized: Double
    public var higherIsBetter: Bool
    /// Mean KLD over the segment's tokens when known.
    public var kldMean: Double?

    public init(group: String, segment: String, count: Int, base: Double, quantized: Double, higherIsBetter: Bool,
                kldMean: Double? = nil) {
        self.group = group; self.segment = segment; self.count = count; self.base = base; self.quantized = quantized
        self.higherIsBetter = higherIsBetter; self.kldMean = kldMean
    }

    public var delta: Double { quantized - base }

    /// The form result files carry in their `segments` arrays (what `quantkit compare` reads back).
    public var json: [String: Any] {
        var o: [String: Any] = ["group": group, "segment": segment, "count": count, "base": base, "quantized": quantized,
                                "relative_loss": relativeLoss, "higher_is_better": higherIsBetter]
        if let k = kldMean { o["kld_mean"] = k }
        return o
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
    /// UTF-8 byte offset in the evaluated text where the target token starts (to map tokens to documents).
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
        let sorted = documents.sorted { $0.bytes.lowerBound < $1.bytes.lowerBound }
        let starts = sorted.map(\.bytes.lowerBound)
        return try perplexityGroups(base, quantized, group: "document") { i in
            let off = base[i].byteOffset
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

    /// Query length buckets by word count: edges [1, 6, 11, 21] give "1-5 words", "6-10 words", "11-20 words",
    /// "21+ words".
    public static func lengthBucket(words: Int, edges: [Int] = [1, 6, 11, 21]) -> String {
        var i = edges.count - 1
        while i > 0 && words < edges[i] { i -= 1 }
        if i == edges.count - 1 { return "\(edges[i])+ words" }
        return "\(edges[i])-\(edges[i + 1] - 1) words"
    }

    /// Retrieval per-query deltas by query length bucket (words separated by whitespace).
    public static func byQueryLength(_ queries: [(text: String, base: Double, quantized: Double)],
                                     edges: [Int] = [1, 6, 11, 21]) -> [SegmentDelta] {
        byLabel(queries.map { q in
            (lengthBucket(words: max(1, q.text.split(whereSeparator: \.isWhitespace).count), edges: edges), q.base, q.quantized)
        }, group: "query length")
    }

    /// A coarse answer type from the gold answer text (SQuAD-style): number, date, person/name (capitalized
    /// words), short phrase (1-3 words), long phrase.
    public static func answerType(_ answer: String) -> String {
        let a = answer.trimmingCharacters(in: .whitespacesAndNewlines)
        let words = a.split(whereSeparator: \.isWhitespace)
        let months = ["january", "february", "march", "april", "may", "june", "july", "august", "september",
                      "october", "november", "december"]
        if words.contains(where: { months.contains($0.lowercased().trimmingCharacters(in: .punctuationCharacters)) }) { return "date" }
        let digits = a.filter(\.isNumber).count
        if digits > 0 && digits * 2 >= a.filter { !$0.isWhitespace }.count { return "number" }
        if !words.isEmpty && words.count <= 4 && words.allSatisfy({ $0.first?.isUppercase ?? false }) { return "name" }
        return words.count <= 3 ? "short phrase" : "long phrase"
    }

    public static func byAnswerType(_ items: [(answer: String, base: Double, quantized: Double)]) -> [SegmentDelta] {
        byLabel(items.map { (answerType($0.answer), $0.base, $0.quantized) }, group: "answer type")
    }
}
