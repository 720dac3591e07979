import Foundation
import Kernels
import TensorCore

/// What `--save-logits` stores per scored token, so a later run can compute SPECS.md "Quantized vs base
/// statistics" without the base model.
///
/// Encodings:
/// - `f16-logprobs` (vocab <= 4096, e.g. tok512): the full log-softmax row as Float16, plus the target's
///   log-prob and the argmax exactly. Float16 keeps 11 significant bits: each log-prob carries a relative error
///   <= 2^-11, so a token's KLD term p * (lp_b - lp_q) is off by at most ~|lp_b| * p * 4.9e-4; summed that is
///   <= 4.9e-4 x the base entropy per token, and rounding errors of both signs mostly cancel in the mean. Base
///   rows are renormalised after decoding.
/// - `topk` (larger vocabularies): the k = 64 largest base log-probs (Float32) with their ids plus the
///   remaining mass 1 - sum(top-k p). KLD is then computed over k + 1 buckets (top-k tokens and "the rest"),
///   which by the log-sum inequality is a LOWER bound of the full-vocabulary KLD; the gap is the divergence
///   inside the tail bucket, small when the top-k hold nearly all the mass.
/// - `llamacpp-u16`: a base written by llama.cpp's `llama-perplexity --kl-divergence-base` (read, never written).
///   Per scored token: two Float32 (scale, min_log_prob) then one UInt16 u per vocabulary entry, log p_base =
///   scale * u + min_log_prob (u = 0 where the logit is more than 16 below the maximum). Statistics against it
///   follow llama.cpp's own arithmetic (no renormalisation, terms with log p_base <= -16 skipped), so they equal
///   what `llama-perplexity --kl-divergence` prints for the same two models.
public enum LogitsEncoding: String, Codable, Sendable {
    case f16LogProbs = "f16-logprobs", topK = "topk", llamacppU16 = "llamacpp-u16"
}

public struct LogitsFileHeader: Codable, Sendable, Equatable {
    public var schema_version: Int = 1
    public var corpus_sha256: String
    public var tokenizer: String
    public var `protocol`: String
    public var ctx: Int
    public var stride: Int?
    public var model: String
    public var vocab: Int
    public var encoding: LogitsEncoding
    public var top_k: Int?
    public var tokens_scored: Int
    public var nll_sum: Double
    /// "llama.cpp" for a base llama-perplexity wrote; nil for QuantKit's own.
    public var source: String?
}

/// Collects scored rows of a base run and writes the zstd-compressed logits file. Rows go to an unlinked spool
/// file as they come (the header, first in the file, needs the final count and NLL sum), and `write` streams
/// header + rows through one zstd frame into place: memory stays flat whatever the number of scored tokens.
public final class LogitsWriter {
    public let vocab: Int
    public let encoding: LogitsEncoding
    public let topK: Int
    private let spoolDirectory: String
    private var spool: Int32 = -1
    private var pending = Data()
    private var bodyBytes = 0
    private var count = 0
    private var nllSum: Double = 0
    private var lp: [Double]
    private var order: [Int]
    /// Rows buffered in memory before they go to the spool.
    public let bufferBytes: Int

    /// `spoolDirectory`: where the rows wait until `write` (default: the temporary directory); the destination's
    /// directory keeps them on the disk that will hold the file. `bufferBytes`: rows held before each spool write.
    public init(vocab: Int, topK: Int = 64, maxFullVocab: Int = 4096, spoolDirectory: String? = nil, bufferBytes: Int = 1 << 20) {
        self.vocab = vocab
        self.bufferBytes = max(1, bufferBytes)
        encoding = vocab <= maxFullVocab ? .f16LogProbs : .topK
        self.topK = min(topK, vocab)
        self.spoolDirectory = spoolDirectory ?? NSTemporaryDirectory()
        lp = [Double](repeating: 0, count: vocab)
        order = Array(0..<vocab)
    }

    deinit { if spool >= 0 { close(spool) } }

    private func append<T>(_ v: T) { withUnsafeBytes(of: v) { pending.append(contentsOf: $0) } }

    public func add(_ row: ScoredRow) throws {
        logSoftmax(row.logits, vocab: vocab, into: &lp)
        var am = 0
        for i in 1..<vocab where lp[i] > lp[am] { am = i }
        append(UInt32(row.target).littleEndian)
        append(Float(lp[Int(row.target)]).bitPattern.littleEndian)
        append(UInt32(am).littleEndian)
        nllSum -= lp[Int(row.target)]
        count += 1
        switch encoding {
        case .llamacppU16:
            preconditionFailure("llama.cpp's base format is read, never written")  // init picks f16 or top-k
        case .f16LogProbs:
            for i in 0..<vocab { append(Float16(Float(max(lp[i], -60000))).bitPattern.littleEndian) }
        case .topK:
            // Partial selection of the k largest (k is small).
            order.withUnsafeMutableBufferPointer { o in
                for i in 0..<vocab { o[i] = i }
                for j in 0..<topK {
                    var best = j
                    for i in (j + 1)..<vocab where lp[o[i]] > lp[o[best]] { best = i }
                    o.swapAt(j, best)
                }
            }
            var mass: Double = 0
            for j in 0..<topK { mass += exp(lp[order[j]]) }
            append(Float(max(0, 1 - mass)).bitPattern.littleEndian)
            for j in 0..<topK { append(UInt32(order[j]).littleEndian); append(Float(lp[order[j]]).bitPattern.littleEndian) }
        }
        if pending.count >= bufferBytes { try flush() }
    }

    /// Moves the buffered rows to the spool file, made (and unlinked at once, so no interruption leaves it
    /// behind) on first use.
    private func flush() throws {
        guard !pending.isEmpty else { return }
        if spool < 0 {
            let path = (spoolDirectory as NSString).appendingPathComponent(".quantkit-logits-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
            spool = open(path, O_RDWR | O_CREAT | O_EXCL, 0o600)
            guard spool >= 0 else {
                throw QuantKitError(.io, "\(path): cannot write the logits spool (\(String(cString: strerror(errno))))")
            }
            unlink(path)
        }
        try pending.withUnsafeBytes { b in
            var done = 0
            while done < b.count {
                let n = Glibc.write(spool, b.baseAddress! + done, b.count - done)
                guard n > 0 else { throw QuantKitError(.io, "logits spool in \(spoolDirectory): write failed (\(String(cString: strerror(errno))))") }
                done += n
            }
        }
        bodyBytes += pending.count
        pending.removeAll(keepingCapacity: true)
    }

    public func write(to path: String, corpusSHA256: String, tokenizer: String, protocolName: String, ctx: Int,
                      stride: Int?, model: String) throws {
        try flush()
        let header = LogitsFileHeader(corpus_sha256: corpusSHA256, tokenizer: tokenizer, protocol: protocolName, ctx: ctx,
                                      stride: stride, model: model, vocab: vocab, encoding: encoding,
                                      top_k: encoding == .topK ? topK : nil, tokens_scored: count, nll_sum: nllSum)
        let enc = JSONEncoder(); enc.outputFormatting = [.sortedKeys]
        let json = try enc.encode(header)
        var prefix = Data("QKLOGITS".utf8)
        var n = UInt32(json.count).littleEndian
        prefix.append(Data(bytes: &n, count: 4))
        prefix.append(json)
        let (spool, total) = (spool, bodyBytes)
        try AtomicFile.write(to: path) { handle in
            let z = try ZstdFileWriter(handle: handle, level: 3, pledgedSize: prefix.count + total)
            try z.write(prefix)
            var buffer = [UInt8](repeating: 0, count: 1 << 20)
            var offset = 0
            while offset < total {
                let got = buffer.withUnsafeMutableBytes { pread(spool, $0.baseAddress!, min($0.count, total - offset), off_t(offset)) }
                guard got > 0 else { throw QuantKitError(.io, "\(path): reading the logits spool back failed") }
                try buffer.withUnsafeBytes { try z.write(UnsafeRawBufferPointer(rebasing: $0.prefix(got))) }
                offset += got
            }
            try z.finish()
        }
    }
}

/// Log-softmax of a Float row in Double (max subtraction; Kernels.logSoftmax, vectorised).
func logSoftmax(_ x: UnsafePointer<Float>, vocab: Int, into out: inout [Double]) {
    out.withUnsafeMutableBufferPointer { Kernels.logSoftmax(x, count: vocab, into: $0.baseAddress!) }
}

/// A base logits file, decompressed in memory.
public final class LogitsFile {
    public let header: LogitsFileHeader
    private let data: Data
    private let bodyStart: Int
    public let rowBytes: Int

    /// For a llama.cpp base: the target token of every scored row.
    private let llamacppTargets: [Int32]?

    public init(path: String) throws {
        let raw = try readFile(path)
        if raw.prefix(8) == Data("_logits_".utf8) {
            (header, bodyStart, rowBytes, llamacppTargets) = try Self.llamacppLayout(raw, path: path)
            data = raw
            return
        }
        llamacppTargets = nil
        let d: Data
        do { d = try Zstd.decompress(raw, source: path) } catch { throw QuantKitError(.format, "\(path): not a QuantKit logits file nor a llama.cpp --kl-divergence-base file (\(error))") }
        guard d.count >= 12, d.prefix(8) == Data("QKLOGITS".utf8) else {
            throw QuantKitError(.format, "\(path): not a QuantKit logits file (bad magic)")
        }
        let n = Int(d.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: 8, as: UInt32.self)) })
        guard d.count >= 12 + n, let h = try? JSONDecoder().decode(LogitsFileHeader.self, from: d.subdata(in: 12..<(12 + n))) else {
            throw QuantKitError(.format, "\(path): logits file header is damaged")
        }
        header = h
        data = d
        bodyStart = 12 + n
        rowBytes = h.encoding == .f16LogProbs ? 12 + 2 * h.vocab : 16 + 8 * (h.top_k ?? 0)
        guard d.count - bodyStart == rowBytes * h.tokens_scored else {
            throw QuantKitError(.format, "\(path): logits file holds \(d.count - bodyStart) bytes of rows, header implies \(rowBytes * h.tokens_scored)")
        }
        guard h.nll_sum.isFinite else { throw QuantKitError(.format, "\(path): logits file header nll_sum is \(h.nll_sum), not a finite number") }
        try Self.checkFinite(d, bodyStart: bodyStart, rowBytes: rowBytes, header: h, path: path)
    }

    /// Refuses a QuantKit base holding a NaN or an infinity in any stored log-prob, naming the row: KLD statistics
    /// against it would be NaN or silently 0.
    private static func checkFinite(_ d: Data, bodyStart: Int, rowBytes: Int, header h: LogitsFileHeader, path: String) throws {
        var bad: (row: Int, what: String)? = nil
        d.withUnsafeBytes { b in
            func f32(_ o: Int) -> Float { Float(bitPattern: UInt32(littleEndian: b.loadUnaligned(fromByteOffset: o, as: UInt32.self))) }
            rows: for i in 0..<h.tokens_scored {
                let r = bodyStart + i * rowBytes
                if !f32(r + 4).isFinite { bad = (i, "target log-prob"); break }
                switch h.encoding {
                case .f16LogProbs:
                    for v in 0..<h.vocab {
                        let bits = UInt16(littleEndian: b.loadUnaligned(fromByteOffset: r + 12 + 2 * v, as: UInt16.self))
                        if bits & 0x7C00 == 0x7C00 { bad = (i, "log-prob of token \(v)"); break rows }
                    }
                case .topK:
                    if !f32(r + 12).isFinite { bad = (i, "remaining mass"); break rows }
                    for j in 0..<(h.top_k ?? 0) where !f32(r + 20 + 8 * j).isFinite { bad = (i, "top-k log-prob \(j)"); break rows }
                case .llamacppU16:
                    break
                }
            }
        }
        if let bad { throw QuantKitError(.format, "\(path): scored row \(bad.row) holds a non-finite \(bad.what) (NaN or Inf); the base is damaged") }
    }

    /// llama-perplexity's base file (tools/perplexity/perplexity.cpp): "_logits_", UInt32 n_ctx, Int32 n_vocab,
    /// Int32 n_chunk, Int32 tokens[n_ctx * n_chunk], then per chunk its n_ctx - 1 - n_ctx/2 scored rows of
    /// 2 * ((n_vocab + 1) / 2) + 4 UInt16 each.
    private static func llamacppLayout(_ d: Data, path: String) throws -> (LogitsFileHeader, Int, Int, [Int32]) {
        guard d.count >= 20 else { throw QuantKitError(.format, "\(path): truncated llama.cpp logits file (\(d.count) bytes)") }
        func i32(_ o: Int) -> Int { Int(d.withUnsafeBytes { Int32(littleEndian: $0.loadUnaligned(fromByteOffset: o, as: Int32.self)) }) }
        let ctx = i32(8), vocab = i32(12), chunks = i32(16)
        guard ctx >= 2, ctx <= 1 << 20, vocab > 0, vocab <= 1 << 22, chunks > 0, chunks <= 1 << 24 else {
            throw QuantKitError(.format, "\(path): llama.cpp logits file header is implausible (n_ctx \(ctx), n_vocab \(vocab), n_chunk \(chunks))")
        }
        let first = ctx / 2, perChunk = ctx - 1 - first
        let nv = 2 * ((vocab + 1) / 2) + 4
        let bodyStart = 20 + 4 * ctx * chunks
        let rows = perChunk * chunks
        guard d.count == bodyStart + rows * nv * 2 else {
            throw QuantKitError(.format, "\(path): llama.cpp logits file has \(d.count) bytes; n_ctx \(ctx), n_vocab \(vocab) and \(chunks) chunks need \(bodyStart + rows * nv * 2)")
        }
        var targets = [Int32](repeating: 0, count: rows)
        var nllSum = 0.0
        var badRow: Int? = nil
        d.withUnsafeBytes { b in
            for c in 0..<chunks {
                for j in 0..<perChunk {
                    let t = b.loadUnaligned(fromByteOffset: 20 + 4 * (c * ctx + first + j + 1), as: Int32.self)
                    let row = c * perChunk + j
                    targets[row] = Int32(littleEndian: t)
                    let r = bodyStart + row * nv * 2
                    let scale = Float(bitPattern: UInt32(littleEndian: b.loadUnaligned(fromByteOffset: r, as: UInt32.self)))
                    let minLP = Float(bitPattern: UInt32(littleEndian: b.loadUnaligned(fromByteOffset: r + 4, as: UInt32.self)))
                    if badRow == nil && !(scale.isFinite && minLP.isFinite) { badRow = row }
                    let tt = Int(targets[row])
                    let u = tt >= 0 && tt < vocab ? UInt16(littleEndian: b.loadUnaligned(fromByteOffset: r + 8 + 2 * tt, as: UInt16.self)) : 0
                    nllSum += Double(-(scale * Float(u) + minLP))
                }
            }
        }
        if let bad = badRow {
            throw QuantKitError(.format, "\(path): scored row \(bad) has a non-finite scale or minimum log-prob (NaN or Inf); the base is damaged")
        }
        if let bad = targets.firstIndex(where: { $0 < 0 || Int($0) >= vocab }) {
            throw QuantKitError(.format, "\(path): token \(targets[bad]) of scored row \(bad) is outside the vocabulary of \(vocab)")
        }
        let header = LogitsFileHeader(corpus_sha256: "", tokenizer: "", protocol: "llamacpp", ctx: ctx, stride: nil,
                                      model: path, vocab: vocab, encoding: .llamacppU16, top_k: nil, tokens_scored: rows,
                                      nll_sum: nllSum, source: "llama.cpp")
        return (header, bodyStart, nv * 2, targets)
    }

    /// Refuses a base made from different text, tokenizer, protocol, context or window layout.
    public func checkCompatible(corpusSHA256: String, tokenizer: String, protocolName: String, ctx: Int, stride: Int?, vocab: Int) throws {
        var diffs: [String] = []
        // llama.cpp's base records neither text nor tokenizer: its token ids are checked row by row instead.
        let own = header.source == nil
        if own && header.corpus_sha256 != corpusSHA256 { diffs.append("corpus sha256 \(header.corpus_sha256.prefix(12))... vs \(corpusSHA256.prefix(12))...") }
        // Tokenizer labels are "name@sha256-prefix": the same file under another name is the same tokenizer.
        func contentId(_ s: String) -> String { s.split(separator: "@").last.map(String.init) ?? s }
        if own && contentId(header.tokenizer) != contentId(tokenizer) { diffs.append("tokenizer '\(header.tokenizer)' vs '\(tokenizer)'") }
        if header.protocol != protocolName { diffs.append("protocol \(header.protocol) vs \(protocolName)") }
        if header.ctx != ctx { diffs.append("ctx \(header.ctx) vs \(ctx)") }
        if header.stride != stride { diffs.append("stride \(header.stride.map(String.init) ?? "none") vs \(stride.map(String.init) ?? "none")") }
        if header.vocab != vocab { diffs.append("vocab \(header.vocab) vs \(vocab)") }
        if !diffs.isEmpty {
            throw QuantKitError(.input, "--kld-base was made from a different evaluation: " + diffs.joined(separator: "; "))
        }
    }

    /// The target of a llama.cpp base's row i (nil for QuantKit's own files, whose rows store it).
    func llamacppTarget(_ i: Int) -> Int? { llamacppTargets.map { Int($0[i]) } }

    func withRow<R>(_ i: Int, _ body: (UnsafeRawPointer) -> R) -> R {
        data.withUnsafeBytes { body($0.baseAddress! + bodyStart + i * rowBytes) }
    }
}

public struct KLDResult: Codable, Sendable {
    public var tokens: Int
    public var kld_mean: Double
    public var kld_stderr: Double
    public var kld_max: Double
    /// "99.9", "99", ..., "0.1" -> KLD at that percentile (linear interpolation between order statistics).
    public var kld_percentiles: [String: Double]
    public var rms_dp: Double
    public var same_top_percent: Double
    public var ppl_base: Double
    public var ppl_quant: Double
    public var ppl_ratio: Double
    public var ln_ppl_diff: Double
    public var q_error: Double
    public var encoding: String
    /// "llama.cpp" when the base was written by llama-perplexity --kl-divergence-base; absent for QuantKit's own.
    public var base_source: String? = nil
}

/// Per scored token, in scoring order, everything the KLD statistics and the per-segment deltas are made of, plus
/// the base file's totals: a run's accumulator fills it, a merge of shards concatenates it, and both turn it into
/// the same `KLDResult` through `statistics()`.
public struct KLDTokens: Codable, Sendable, Equatable {
    /// KL(base || this run) per token.
    public var kld: [Double] = []
    /// (p_this(target) - p_base(target))^2 per token.
    public var dpSquared: [Double] = []
    /// 1 where the base's and this run's most likely tokens agree.
    public var sameTop: [UInt8] = []
    /// -log p_base(target): the Float32 target log-prob every base-file row stores, whatever its encoding.
    public var baseNLL: [Double] = []
    /// This run's -log p(target) (Double log-softmax).
    public var runNLL: [Double] = []
    /// The base file's NLL sum and scored-token count (over the whole run, not one shard).
    public var baseNLLSum: Double
    public var baseTokens: Int
    public var encoding: LogitsEncoding
    public var baseSource: String?

    enum CodingKeys: String, CodingKey {
        case kld, dpSquared = "dp_squared", sameTop = "same_top", baseNLL = "base_nll", runNLL = "run_nll"
        case baseNLLSum = "base_nll_sum", baseTokens = "base_tokens", encoding, baseSource = "base_source"
    }

    public init(base: LogitsFileHeader) {
        baseNLLSum = base.nll_sum; baseTokens = base.tokens_scored; encoding = base.encoding; baseSource = base.source
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        kld = try c.decode(PackedArray<Double>.self, forKey: .kld).values
        dpSquared = try c.decode(PackedArray<Double>.self, forKey: .dpSquared).values
        sameTop = try c.decode(PackedArray<UInt8>.self, forKey: .sameTop).values
        baseNLL = try c.decode(PackedArray<Double>.self, forKey: .baseNLL).values
        runNLL = try c.decode(PackedArray<Double>.self, forKey: .runNLL).values
        baseNLLSum = try c.decode(ExactDouble.self, forKey: .baseNLLSum).value
        baseTokens = try c.decode(Int.self, forKey: .baseTokens)
        encoding = try c.decode(LogitsEncoding.self, forKey: .encoding)
        baseSource = try c.decodeIfPresent(String.self, forKey: .baseSource)
        let n = kld.count
        guard [dpSquared.count, sameTop.count, baseNLL.count, runNLL.count].allSatisfy({ $0 == n }) else {
            throw DecodingError.dataCorrupted(.init(codingPath: c.codingPath, debugDescription: "per-token KLD arrays differ in length"))
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(PackedArray(kld), forKey: .kld)
        try c.encode(PackedArray(dpSquared), forKey: .dpSquared)
        try c.encode(PackedArray(sameTop), forKey: .sameTop)
        try c.encode(PackedArray(baseNLL), forKey: .baseNLL)
        try c.encode(PackedArray(runNLL), forKey: .runNLL)
        try c.encode(ExactDouble(baseNLLSum), forKey: .baseNLLSum)
        try c.encode(baseTokens, forKey: .baseTokens)
        try c.encode(encoding, forKey: .encoding)
        try c.encodeIfPresent(baseSource, forKey: .baseSource)
    }

    /// Appends the next tokens (a later shard's).
    public mutating func append(_ o: KLDTokens) {
        kld += o.kld; dpSquared += o.dpSquared; sameTop += o.sameTop; baseNLL += o.baseNLL; runNLL += o.runNLL
    }

    /// SPECS.md "Quantized vs base statistics" over every token; refuses a run that did not score all the base's.
    public func statistics() throws -> KLDResult {
        let n = kld.count
        guard n == baseTokens else {
            throw QuantKitError(.input, "--kld-base holds \(baseTokens) tokens; this run scored \(n)")
        }
        guard n > 1 else { throw QuantKitError(.input, "KLD needs at least two scored tokens") }
        // Sums run in scoring order, so a merge of shards adds exactly as one run does.
        var sum = 0.0, sq = 0.0, dp = 0.0, nllQ = 0.0, same = 0
        for i in 0..<n {
            sum += kld[i]; sq += kld[i] * kld[i]; dp += dpSquared[i]; nllQ += runNLL[i]; same += Int(sameTop[i])
        }
        let mean = sum / Double(n), m2 = sq / Double(n)
        let sorted = kld.sorted()
        var pct: [String: Double] = [:]
        for p in KLDAccumulator.percentiles {
            let pos = p / 100 * Double(n - 1)
            let lo = Int(pos.rounded(.down)), hi = min(lo + 1, n - 1)
            pct[p == 99.9 ? "99.9" : (p == 0.1 ? "0.1" : String(Int(p)))] = sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - Double(lo))
        }
        let lnB = baseNLLSum / Double(n), lnQ = nllQ / Double(n)
        return KLDResult(tokens: n, kld_mean: mean, kld_stderr: (max(m2 - mean * mean, 0) / Double(n - 1)).squareRoot(),
                         kld_max: sorted.last!, kld_percentiles: pct, rms_dp: (dp / Double(n)).squareRoot(),
                         same_top_percent: 100 * Double(same) / Double(n), ppl_base: exp(lnB), ppl_quant: exp(lnQ),
                         ppl_ratio: exp(lnQ - lnB), ln_ppl_diff: lnQ - lnB, q_error: exp(lnQ - lnB) - 1,
                         encoding: encoding.rawValue, base_source: baseSource)
    }
}

/// Accumulates per-token statistics of a run against a base logits file.
public final class KLDAccumulator {
    public let base: LogitsFile
    /// The base row of this run's first scored token (non-zero for a shard).
    public let firstRow: Int
    public private(set) var tokens: KLDTokens
    private var lq: [Double]
    private var lb: [Double]
    public var baseNLL: [Double] { tokens.baseNLL }
    public var runNLL: [Double] { tokens.runNLL }
    public var tokenKLD: [Double] { tokens.kld }

    public init(base: LogitsFile, firstRow: Int = 0) {
        self.base = base
        self.firstRow = firstRow
        tokens = KLDTokens(base: base.header)
        lq = [Double](repeating: 0, count: base.header.vocab)
        lb = [Double](repeating: 0, count: base.header.vocab)
    }

    private func record(kld k: Double, dpSquared: Double, same: Bool, baseNLL: Double, runNLL: Double) {
        tokens.kld.append(k); tokens.dpSquared.append(dpSquared); tokens.sameTop.append(same ? 1 : 0)
        tokens.baseNLL.append(baseNLL); tokens.runNLL.append(runNLL)
    }

    public static let percentiles: [Double] = [99.9, 99, 95, 90, 50, 10, 5, 1, 0.1]

    public func add(_ row: ScoredRow) throws {
        let i = firstRow + tokens.kld.count
        let h = base.header
        guard i < h.tokens_scored else { throw QuantKitError(.input, "--kld-base holds \(h.tokens_scored) tokens; this run scores more") }
        guard row.vocab == h.vocab else { throw QuantKitError(.input, "--kld-base vocab \(h.vocab) differs from the model's \(row.vocab)") }
        logSoftmax(row.logits, vocab: row.vocab, into: &lq)
        let vocab = row.vocab
        var qArg = 0
        for v in 1..<vocab where lq[v] > lq[qArg] { qArg = v }
        if let target = base.llamacppTarget(i) {
            try addAgainstLlamacpp(row, target: target, qArg: qArg, index: i)
            return
        }
        var k: Double = 0
        var err: QuantKitError? = nil
        var nllB: Double = 0, dp2: Double = 0, same = false
        base.withRow(i) { p in
            let target = Int(UInt32(littleEndian: p.loadUnaligned(as: UInt32.self)))
            let lpT = Double(Float(bitPattern: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 4, as: UInt32.self))))
            let bArg = Int(UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
            if target != Int(row.target) {
                err = QuantKitError(.input, "--kld-base token \(i) is \(target) but this run scores \(row.target): different text or tokenization")
                return
            }
            nllB = -lpT
            dp2 = pow(exp(lq[target]) - exp(lpT), 2)
            same = bArg == qArg
            switch h.encoding {
            case .llamacppU16:
                break  // handled by addAgainstLlamacpp before reaching here
            case .f16LogProbs:
                let f = p + 12
                var s: Double = 0
                for v in 0..<vocab {
                    lb[v] = Double(Float(Float16(bitPattern: UInt16(littleEndian: f.loadUnaligned(fromByteOffset: 2 * v, as: UInt16.self)))))
                    s += exp(lb[v])
                }
                let norm = log(s)
                for v in 0..<vocab {
                    let l = lb[v] - norm
                    let pb = exp(l)
                    if pb > 0 { k += pb * (l - lq[v]) }
                }
            case .topK:
                let rest = Double(Float(bitPattern: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 12, as: UInt32.self))))
                var massQ: Double = 0
                for j in 0..<(h.top_k ?? 0) {
                    let id = Int(UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 16 + 8 * j, as: UInt32.self)))
                    let l = Double(Float(bitPattern: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 20 + 8 * j, as: UInt32.self))))
                    k += exp(l) * (l - lq[id])
                    massQ += exp(lq[id])
                }
                let restQ = max(1 - massQ, 1e-300)
                if rest > 0 { k += rest * (log(rest) - log(restQ)) }
            }
        }
        if let e = err { throw e }
        record(kld: max(k, 0), dpSquared: dp2, same: same, baseNLL: nllB, runNLL: -lq[Int(row.target)])
    }

    /// One row against a llama.cpp base, in llama.cpp's arithmetic (perplexity.cpp's log_softmax with a base):
    /// base log-probs scale * u + min, not renormalised, terms at or below -16 skipped; argmax ties to the first.
    private func addAgainstLlamacpp(_ row: ScoredRow, target: Int, qArg: Int, index i: Int) throws {
        guard target == Int(row.target) else {
            throw QuantKitError(.input, "--kld-base (llama.cpp) token \(i) is \(target) but this run scores \(row.target): different text, tokenization or context")
        }
        var k: Double = 0, nllB: Double = 0, bArg = 0
        base.withRow(i) { p in
            let scale = Float(bitPattern: UInt32(littleEndian: p.loadUnaligned(as: UInt32.self)))
            let minLP = Float(bitPattern: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
            var best = -Float.infinity
            for v in 0..<row.vocab {
                let l = scale * Float(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 8 + 2 * v, as: UInt16.self))) + minLP
                if v == 0 || l > best { best = l; bArg = v }
                if l > -16 { k += Double(exp(l)) * (Double(l) - lq[v]) }
                if v == target { nllB = -Double(l) }
            }
        }
        record(kld: k, dpSquared: pow(exp(lq[target]) - exp(-nllB), 2), same: bArg == qArg, baseNLL: nllB, runNLL: -lq[target])
    }

    public func result() throws -> KLDResult { try tokens.statistics() }
}
