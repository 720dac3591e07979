import Foundation

/// Progress lines on stderr: "label  done/total  rate unit/s  ETA  extra". A terminal gets one line
/// rewritten in place; a pipe gets a line at most every `interval` seconds.
public final class ProgressReporter: @unchecked Sendable {
    private let label: String
    private let total: Int
    private let unit: String
    private let start = Date()
    private var lastPrint = Date.distantPast
    private let interval: TimeInterval
    private let isTTY = isatty(2) != 0
    private let enabled: Bool
    private let lock = NSLock()

    public init(_ label: String, total: Int, unit: String = "items", interval: TimeInterval = 2.0,
                enabled: Bool = ProcessInfo.processInfo.environment["QUANTKIT_QUIET"] == nil) {
        self.label = label
        self.total = total
        self.unit = unit
        self.interval = interval
        self.enabled = enabled
    }

    /// `done` items of `total`; `units` is the work measure the rate is computed on (tokens, say).
    public func update(done: Int, units: Int? = nil, extra: String = "") {
        guard enabled else { return }
        lock.lock(); defer { lock.unlock() }
        let now = Date()
        let finished = done >= total
        guard finished || now.timeIntervalSince(lastPrint) >= (isTTY ? 0.2 : interval) else { return }
        lastPrint = now
        let elapsed = now.timeIntervalSince(start)
        let rate = elapsed > 0 ? Double(units ?? done) / elapsed : 0
        let eta = done > 0 ? elapsed * Double(total - done) / Double(done) : 0
        let line = String(format: "%@ %d/%d  %.1f %@/s  ETA %@  %@", label, done, total, rate, unit,
                          ProgressReporter.clock(eta), extra)
        FileHandle.standardError.write(((isTTY ? "\r\u{1B}[K" : "") + line + (isTTY && !finished ? "" : "\n")).data(using: .utf8)!)
    }

    static func clock(_ s: Double) -> String {
        let t = Int(s.rounded())
        return t >= 3600 ? String(format: "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60) : String(format: "%d:%02d", t / 60, t % 60)
    }
}

public func logInfo(_ message: String) {
    FileHandle.standardError.write((message + "\n").data(using: .utf8)!)
}
