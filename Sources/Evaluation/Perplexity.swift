import Foundation
import Kernels
import Models
import TensorCore

/// The perplexity protocols of SPECS.md "Perplexity". Figures from different protocols are never compared.
public enum PerplexityProtocol: String, Sendable, CaseIterable, Codable {
    case llamacpp, gptq, strided
}

public struct PerplexityOptions: Sendable, Codable {
    public var protocolKind: PerplexityProtocol
    public var ctx: Int
    /// Only for `strided` (default ctx / 2).
    public var stride: Int?
    public var maxChunks: Int?
    /// Tokens per forward pass: max(1, batchTokens / ctx) windows of equal length run side by side (llama.cpp's
    /// n_batch / n_ctx sequences). The figures are identical for any value; only the speed changes. Models whose
    /// layers are not row-independent (simulated NPU) always run one window at a time.
    public var batchTokens: Int
    public static let defaultBatchTokens = 512
    public init(protocolKind: PerplexityProtocol = .llamacpp, ctx: Int, stride: Int? = nil, maxChunks: Int? = nil,
                batchTokens: Int = PerplexityOptions.defaultBatchTokens) {
        self.protocolKind = protocolKind; self.ctx = ctx; self.stride = stride; self.maxChunks = maxChunks
        self.batchTokens = batchTokens
    }
    /// Windows per forward pass for this model.
    public func windowsPerPass(_ model: LlamaModel) -> Int {
        model.canBatchSequences ? max(1, batchTokens / max(ctx, 1)) : 1
    }
    public var effectiveStride: Int? { protocolKind == .strided ? (stride ?? max(1, ctx / 2)) : nil }

    /// Every size within its limit, naming the flag, before any is used.
    public func validate() throws {
        if stride != nil && protocolKind != .strided { throw QuantKitError(.input, "--stride applies to --protocol strided only") }
        try UserLimits.check(ctx, "--ctx", 2...UserLimits.contextTokens)
        if let s = stride { try UserLimits.check(s, "--stride", 1...ctx, "at most --ctx") }
        if let m = maxChunks, m <= 0 { throw QuantKitError(.input, "--max-chunks must be positive (got \(m))") }
        try UserLimits.check(batchTokens, "--batch", 1...UserLimits.heldTokens)
    }
}

/// One scored position: the logits row that predicts `target`. Row pointer valid only during the callback.
public struct ScoredRow {
    public let chunk: Int
    public let index: Int  // running index over all scored tokens
    /// Index of the target token in the evaluated token stream (BOS included when prepended).
    public let tokenIndex: Int
    /// Position, inside its window, of the row that predicts the target (0-based; the target sits at +1).
    public let windowPosition: Int
    public let target: Int32
    public let logits: UnsafePointer<Float>
    public let vocab: Int
    /// -log softmax(logits)[target], as added into the perplexity.
    public let nll: Double
}

public struct PerplexityResult: Sendable {
    public var protocolKind: PerplexityProtocol
    public var ctx: Int
    public var stride: Int?
    public var chunks: Int
    public var tokensScored: Int
    public var totalTokens: Int
    public var nllSum: Double
    public var nllSqSum: Double
    public var seconds: Double

    public var meanNLL: Double { nllSum / Double(max(tokensScored, 1)) }
    public var ppl: Double { exp(meanNLL) }
    /// SPECS.md: sqrt((E[nll^2] - E[nll]^2) / (count - 1)) * ppl
    public var pplError: Double {
        guard tokensScored > 1 else { return .nan }
        let m = meanNLL, m2 = nllSqSum / Double(tokensScored)
        return (max(m2 - m * m, 0) / Double(tokensScored - 1)).squareRoot() * ppl
    }
}

/// Negative log-likelihood of `target` under softmax(logits): max subtraction, Double exp and accumulation
/// (Kernels.negativeLogLikelihood, vectorised).
public func negativeLogLikelihood(_ logits: UnsafePointer<Float>, vocab: Int, target: Int) -> Double {
    Kernels.negativeLogLikelihood(logits, vocab: vocab, target: target)
}

public enum Perplexity {
    /// A window to run: tokens[begin..<end] (with the first optionally replaced by BOS), scoring targets at
    /// absolute indices scoreFrom..<end (each predicted by the previous row).
    struct Window { let begin: Int; let end: Int; let scoreFrom: Int; let replaceFirstWithBOS: Bool }

    static func windows(n: Int, options o: PerplexityOptions, addsBOS: Bool) throws -> [Window] {
        try o.validate()
        let ctx = o.ctx
        guard n >= 2 * ctx else {
            throw QuantKitError(.input, "corpus has \(n) tokens; at least 2 x ctx = \(2 * ctx) are needed")
        }
        let limit = o.maxChunks ?? Int.max
        guard limit > 0 else { throw QuantKitError(.input, "--max-chunks must be positive") }
        var out: [Window] = []
        switch o.protocolKind {
        case .llamacpp:
            // Score positions ctx/2 ... ctx-2 (each predicting the next token): targets ctx/2+1 ..< ctx.
            for c in 0..<min(n / ctx, limit) {
                out.append(Window(begin: c * ctx, end: (c + 1) * ctx, scoreFrom: c * ctx + ctx / 2 + 1, replaceFirstWithBOS: addsBOS))
            }
        case .gptq:
            for c in 0..<min(n / ctx, limit) {
                out.append(Window(begin: c * ctx, end: (c + 1) * ctx, scoreFrom: c * ctx + 1, replaceFirstWithBOS: false))
            }
        case .strided:
            let stride = o.effectiveStride!
            guard stride >= 1, stride <= ctx else { throw QuantKitError(.input, "--stride must be in 1...ctx (got \(stride))") }
            var prevEnd = 0, begin = 0
            while begin < n && out.count < limit {
                let end = min(begin + ctx, n)
                let trg = end - prevEnd
                // The window's first token has no prediction; HF's shifted labels skip it too.
                out.append(Window(begin: begin, end: end, scoreFrom: max(end - trg, begin + 1), replaceFirstWithBOS: false))
                prevEnd = end
                if end == n { break }
                begin += stride
            }
        }
        // A context too short for the protocol scores nothing (llamacpp scores targets ctx/2+1 ..< ctx of each
        // window: none at ctx 2): a perplexity over zero tokens would print 1.0.
        let scored = out.reduce(0) { $0 + max(0, $1.end - $1.scoreFrom) }
        guard scored > 0 else {
            let rule: String
            switch o.protocolKind {
            case .llamacpp: rule = "the llamacpp protocol scores positions ctx/2+1 ..< ctx of each window"
            case .gptq: rule = "the gptq protocol scores positions 1 ..< ctx of each window"
            case .strided: rule = "the strided protocol scores the tokens each window adds"
            }
            throw QuantKitError(.input, "--ctx \(ctx): no token would be scored (\(rule)); use a larger --ctx")
        }
        return out
    }

    /// How many windows a run over `n` tokens evaluates (throws on the same input errors as `evaluate`).
    public static func windowCount(n: Int, options: PerplexityOptions, addsBOS: Bool = true) throws -> Int {
        try windows(n: n, options: options, addsBOS: addsBOS).count
    }

    /// Runs a protocol over `tokens` (the whole text tokenized once, BOS prepended when the tokenizer adds it).
    /// `onRow` sees every scored logits row (KLD capture/compare); `progress` sees windows done with the running ppl.
    /// With `windows`, only those windows (a shard) run; chunk and row indices stay those of the whole run.
    public static func evaluate(model: LlamaModel, tokens: [Int32], addsBOS: Bool, bosId: Int32, options: PerplexityOptions,
                                windows only: Range<Int>? = nil, progress: any ProgressObserver = NoProgress(),
                                onRow: ((ScoredRow) throws -> Void)? = nil) throws -> PerplexityResult {
        try model.validate(tokens: tokens)
        let all = try windows(n: tokens.count, options: options, addsBOS: addsBOS)
        let range = only ?? all.indices
        guard range.lowerBound >= 0, range.upperBound <= all.count else {
            throw QuantKitError(.input, "windows \(range) are outside the run's \(all.count)")
        }
        let wins = Array(all[range])
        let firstChunk = range.lowerBound
        let rowsBefore = all[..<range.lowerBound].reduce(0) { $0 + $1.end - $1.scoreFrom }
        let task = progress.task("perplexity", total: wins.count, unit: "tok")
        let vocab = model.config.vocabSize
        let ctx = options.ctx
        let perPass = min(options.windowsPerPass(model), max(wins.count, 1))
        let cache = model.makeCache(capacity: ctx * perPass)
        let state = model.makeState(maxRows: ctx * perPass)
        var res = PerplexityResult(protocolKind: options.protocolKind, ctx: ctx, stride: options.effectiveStride, chunks: 0,
                                   tokensScored: 0, totalTokens: tokens.count, nllSum: 0, nllSqSum: 0, seconds: 0)
        let t0 = Date()
        var wi = 0
        while wi < wins.count {
            // A pass: up to perPass consecutive windows sharing length and first scored row.
            let w0 = wins[wi]
            let length = w0.end - w0.begin, firstRow = w0.scoreFrom - 1 - w0.begin  // row predicting the first target
            var group = [w0]
            while group.count < perPass, wi + group.count < wins.count {
                let w = wins[wi + group.count]
                guard w.end - w.begin == length, w.scoreFrom - 1 - w.begin == firstRow else { break }
                group.append(w)
            }
            var batch: [Int32] = []
            batch.reserveCapacity(group.count * length)
            for w in group {
                var window = tokens[w.begin..<w.end]
                if w.replaceFirstWithBOS { window[w.begin] = bosId }
                batch.append(contentsOf: window)
            }
            let logits: UnsafeMutablePointer<Float>
            if group.count > 1 {
                logits = model.forwardSequences(batch, count: group.count, cache: cache, state: state, logitsFrom: firstRow)
            } else {
                cache.reset()
                logits = model.forward(batch, cache: cache, state: state, logitsFrom: firstRow)
            }
            // The pass's scored rows in visiting order, and their NLLs computed across threads: a
            // full-vocabulary log-sum-exp per row costs as much as a layer when the vocabulary is large (32,000
            // exps a row). Added up below in order, so the sums are the same as one thread's.
            var scoredRows: [(t: Int, offset: Int, target: Int32)] = []
            for (g, w) in group.enumerated() {
                for t in w.scoreFrom..<w.end {
                    scoredRows.append((t, (g * (length - firstRow) + t - 1 - w.begin - firstRow) * vocab,
                                       batch[g * length + t - w.begin]))
                }
            }
            let nlls = rowNLLs(logits: logits, rows: scoredRows.map { ($0.offset, Int($0.target)) }, vocab: vocab,
                               threads: model.threads)
            var next = 0
            for (g, w) in group.enumerated() {
                for _ in w.scoreFrom..<w.end {
                    let (t, offset, target) = scoredRows[next]
                    let nll = nlls[next]
                    next += 1
                    guard nll.isFinite else {
                        let row = UnsafeBufferPointer(start: logits + offset, count: vocab)
                        let what = row.contains(where: { !$0.isFinite }) ? "non-finite logits (NaN or Inf)" : "an infinite NLL"
                        throw QuantKitError(.numeric, "perplexity: the model produced \(what) at window \(firstChunk + wi + g) (token index \(t), window position \(t - 1 - w.begin)); no figure is reported")
                    }
                    if let cb = onRow { try cb(ScoredRow(chunk: firstChunk + wi + g, index: rowsBefore + res.tokensScored, tokenIndex: t,
                                                       windowPosition: t - 1 - w.begin, target: target,
                                                       logits: logits + offset, vocab: vocab, nll: nll)) }
                    res.nllSum += nll
                    res.nllSqSum += nll * nll
                    res.tokensScored += 1
                }
                res.chunks += 1
                task.update(done: wi + g + 1, units: (wi + g + 1) * ctx, detail: String(format: "ppl %.4f", res.ppl))
            }
            wi += group.count
        }
        res.seconds = Date().timeIntervalSince(t0)
        return res
    }

    /// NLL of each (logits offset, target) row, computed across threads.
    static func rowNLLs(logits: UnsafeMutablePointer<Float>, rows: [(offset: Int, target: Int)], vocab: Int,
                        threads: Int) -> [Double] {
        var out = [Double](repeating: 0, count: rows.count)
        let lp = SendablePointer(logits)
        let jobs = rows
        out.withUnsafeMutableBufferPointer { o in
            let op = SendablePointer(o.baseAddress!)
            Parallel.forRanges(jobs.count, threads: threads, minPerThread: max(1, 65_536 / max(1, vocab))) { r in
                for i in r { op.base[i] = negativeLogLikelihood(lp.base + jobs[i].offset, vocab: vocab, target: jobs[i].target) }
            }
        }
        return out
    }
}
