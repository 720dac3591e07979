/// The stated limits of the sizes a user supplies on the command line. Each is checked where the size is first
/// used, before any arithmetic or allocation depends on it, with one line naming the flag; every limit is far
/// above what a run on one machine needs.
public enum UserLimits {
    /// Tokens of one window or sequence (--ctx, --seqlen, --window, --max-tokens ...).
    public static let contextTokens = 1 << 20
    /// Calibration windows (--samples).
    public static let samples = 1 << 16
    /// Tokens held at once by a batch or a calibration set (--batch, --samples x --seqlen, --npu-calibration-tokens).
    public static let heldTokens = 1 << 24
    /// Items of a list (--k, --top-k, --windows, --chunks).
    public static let items = 1 << 20

    /// Throws "FLAG VALUE: must be LO...HI (WHY)" unless `value` is in `range`.
    public static func check(_ value: Int, _ flag: String, _ range: ClosedRange<Int>, _ why: String = "") throws {
        guard range.contains(value) else {
            throw QuantKitError(.input, "\(flag) \(value): must be \(range.lowerBound)...\(range.upperBound)" + (why.isEmpty ? "" : " (\(why))"))
        }
    }

    /// Calibration windows of `seqlen` tokens, `samples` of them: each within its limit and the product too.
    public static func checkCalibration(samples: Int, seqlen: Int, minSeqlen: Int = 1) throws {
        try check(samples, "--samples", 1...UserLimits.samples)
        try check(seqlen, "--seqlen", minSeqlen...UserLimits.contextTokens)
        guard samples * seqlen <= heldTokens else {
            throw QuantKitError(.input, "--samples \(samples) x --seqlen \(seqlen) = \(samples * seqlen) calibration tokens: must be at most \(heldTokens)")
        }
    }
}
