import Foundation

/// What a long library run tells its caller while it works. Library code never writes to stderr: it sends these
/// events to the observer it was given, and the CLI renders them (rate, ETA, throttling) or ignores them.
public enum ProgressEvent: Sendable, Equatable {
    /// `done` of `total` items of `task` (0: the task starts); `units` is the work measure a rate is computed on (tokens, say),
    /// `unit` its name, `detail` a short running figure ("ppl 12.3456", a layer name).
    case advanced(task: String, done: Int, total: Int, units: Int?, unit: String, detail: String)
    /// A line the user should read: a warning or a note on what the run decided.
    case note(String)
}

/// Receives a run's progress events; called from the run's own thread or, for parallel work, from several.
public protocol ProgressObserver: Sendable {
    func handle(_ event: ProgressEvent)
}

extension ProgressObserver {
    public func note(_ message: String) { handle(.note(message)) }

    /// A counter for one task of `total` items, reporting to this observer; announces the task (done 0) so the
    /// observer's clock starts now.
    public func task(_ name: String, total: Int, unit: String = "items") -> ProgressTask {
        let t = ProgressTask(observer: self, name: name, total: total, unit: unit)
        t.update(done: 0)
        return t
    }
}

/// Ignores every event: the default for library calls and tests.
public struct NoProgress: ProgressObserver {
    public init() {}
    public func handle(_ event: ProgressEvent) {}
}

/// One task's progress: items done of a fixed total.
public struct ProgressTask: Sendable {
    public let observer: any ProgressObserver
    public let name: String
    public let total: Int
    public let unit: String

    public func update(done: Int, units: Int? = nil, detail: String = "") {
        observer.handle(.advanced(task: name, done: done, total: total, units: units, unit: unit, detail: detail))
    }
}
