import ArgumentParser
import Evaluation
import Foundation
import Kernels
import Models
import TensorCore

/// Everything the CLI says on stderr: progress lines rendered from the library's events, notes, one-line errors;
/// and the QUANTKIT_* environment variables mapped onto library settings (libraries never read the environment).
enum Console {
    static let environment = ProcessInfo.processInfo.environment

    /// The observer every run gets: "task  done/total  rate unit/s  ETA  detail" lines; QUANTKIT_QUIET silences them.
    static let progress = StderrProgress(enabled: environment["QUANTKIT_QUIET"] == nil)

    /// QUANTKIT_THREADS (worker count), QUANTKIT_SPIN_POOL=0 (GCD instead of the spinning pool),
    /// QUANTKIT_PREPACK=0 (no GEMM panel packing): applied before any command runs.
    static func applyEnvironment() {
        var threads: Int?
        if let raw = environment["QUANTKIT_THREADS"] {
            guard let n = Int(raw.trimmingCharacters(in: .whitespaces)), n > 0 else {
                FileHandle.standardError.write(Data("error: QUANTKIT_THREADS '\(raw)': expected a positive number of threads\n".utf8))
                exit(1)
            }
            if n > Parallel.maxThreads {
                logInfo("note: QUANTKIT_THREADS=\(n) is more than 4 x the \(Parallel.processorCount) cores; using \(Parallel.maxThreads)")
            }
            threads = n
        }
        Parallel.configure(threads: threads, spinPool: environment["QUANTKIT_SPIN_POOL"] != "0")
        // Default paths (Corpora/..., Models/...) resolve from any directory against the checkout holding this binary.
        ShippedData.root = Bundle.main.executablePath.flatMap { ShippedData.repositoryRoot(above: $0) }
        DenseLinear.prepackEnabled = environment["QUANTKIT_PREPACK"] != "0"
        CPUFeatures.avx512VNNI = environment["QUANTKIT_ISA"] != "avx2"
    }

    /// What an interrupted command tells the user about resuming (set by commands whose work can resume).
    nonisolated(unsafe) static var resumeHint: String?
    nonisolated(unsafe) private static var signalSources: [any DispatchSourceSignal] = []

    /// SIGINT / SIGTERM: remove the temporary outputs being written, say so (and how to resume), exit 128 + signal.
    static func handleInterrupts() {
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler {
                let removed = InFlightOutputs.removeAll()
                let name = sig == SIGINT ? "SIGINT" : "SIGTERM"
                logInfo("\ninterrupted (\(name)): removed \(removed) temporary output(s); no output was left half-written"
                        + (resumeHint.map { "; \($0)" } ?? ""))
                exit(128 + sig)
            }
            source.resume()
            signalSources.append(source)
        }
    }

    /// QUANTKIT_EMBEDDER, tried before the installed PyPI package.
    static var embedderOverride: String? { environment["QUANTKIT_EMBEDDER"] }

    /// $XDG_CACHE_HOME, else ~/.cache.
    static var cacheRoot: String { environment["XDG_CACHE_HOME"] ?? ((environment["HOME"] ?? NSTemporaryDirectory()) + "/.cache") }
}

/// One line on stderr.
func logInfo(_ message: String) {
    FileHandle.standardError.write(Data((message + "\n").utf8))
}

extension Console {
    /// Parses and runs the command line. A bad flag or argument gets one line naming it, with where to find the
    /// usage, and exit 64 (EX_USAGE); --help and --version print in full as usual.
    static func runCommandLine(_ root: any ParsableCommand.Type) -> Never {
        do {
            var command = try root.parseAsRoot()
            try command.run()
            exit(0)
        } catch {
            let code = root.exitCode(for: error)
            guard code != .success, !(error is ExitCode) else { root.exit(withError: error) }
            let message = root.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            logInfo("error: \(OneLine.text(message))" + (code == .validationFailure ? " (see '\(helpCommand())')" : ""))
            exit(code.rawValue)
        }
    }

    /// "quantkit perplexity --help", "quantkit npu report --help": the subcommand words the user typed.
    private static func helpCommand() -> String {
        var words = ["quantkit"]
        for arg in CommandLine.arguments.dropFirst().prefix(2) {
            guard !arg.hasPrefix("-"), words.count == 1 || ["npu", "rag", "bench"].contains(words[1]) else { break }
            words.append(arg)
        }
        return (words + ["--help"]).joined(separator: " ")
    }
}

/// Prints an error as one line on stderr and exits 1, instead of a stack trace.
func runReportingErrors(_ body: () throws -> Void) throws {
    do { try body() } catch let e as ExitCode { throw e } catch {
        FileHandle.standardError.write(Data("error: \(OneLine.text("\(error)"))\n".utf8))
        throw ExitCode(1)
    }
}

/// Renders progress events on stderr: a terminal gets one line per task rewritten in place; a pipe gets a line at
/// most every `interval` seconds per task, and always the last. Notes print as they come.
final class StderrProgress: ProgressObserver, @unchecked Sendable {
    private struct TaskClock { var start: Date; var lastPrint: Date }
    private let enabled: Bool
    private let interval: TimeInterval
    private let isTTY = isatty(2) != 0
    private let lock = NSLock()
    private var clocks: [String: TaskClock] = [:]

    init(enabled: Bool, interval: TimeInterval = 2.0) {
        self.enabled = enabled
        self.interval = interval
    }

    func handle(_ event: ProgressEvent) {
        switch event {
        case .note(let message):
            logInfo(message)
        case let .advanced(task, done, total, units, unit, detail):
            guard enabled else { return }
            lock.lock(); defer { lock.unlock() }
            let now = Date()
            if done == 0 { clocks[task] = TaskClock(start: now, lastPrint: .distantPast); return }
            var clock = clocks[task] ?? TaskClock(start: now, lastPrint: .distantPast)
            let finished = done >= total
            defer { clocks[task] = finished ? nil : clock }
            guard finished || now.timeIntervalSince(clock.lastPrint) >= (isTTY ? 0.2 : interval) else { return }
            clock.lastPrint = now
            let elapsed = now.timeIntervalSince(clock.start)
            let rate = elapsed > 0 ? Double(units ?? done) / elapsed : 0
            let eta = done > 0 ? elapsed * Double(total - done) / Double(done) : 0
            let line = String(format: "%@ %d/%d  %.1f %@/s  ETA %@  %@", task, done, total, rate, unit, Self.clock(eta), detail)
            FileHandle.standardError.write(Data(((isTTY ? "\r\u{1B}[K" : "") + line + (isTTY && !finished ? "" : "\n")).utf8))
        }
    }

    static func clock(_ s: Double) -> String {
        let t = Int(s.rounded())
        return t >= 3600 ? String(format: "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60) : String(format: "%d:%02d", t / 60, t % 60)
    }
}

enum TextTable {
    /// Left-aligned columns separated by two spaces, trailing blanks trimmed.
    static func align(_ rows: [[String]]) -> String {
        var w = [Int](repeating: 0, count: rows.map(\.count).max() ?? 0)
        for r in rows { for (i, c) in r.enumerated() { w[i] = max(w[i], c.count) } }
        return rows.map { r in
            r.enumerated().map { i, c in c.padding(toLength: w[i], withPad: " ", startingAt: 0) }.joined(separator: "  ")
                .trimmingCharacters(in: .whitespaces)
        }.joined(separator: "\n")
    }
}

/// A library run's options, checked before the run starts.
protocol CheckedRunOptions { func validate() throws }
extension PerplexityRunOptions: CheckedRunOptions {}
extension LayersRunOptions: CheckedRunOptions {}
extension RetrievalRunOptions: CheckedRunOptions {}
extension AnswersRunOptions: CheckedRunOptions {}

/// A command whose flags become a library run's options: flag parsing applies the run's own checks, so a bad
/// combination is a usage error before anything loads.
protocol RunCommand: ParsableCommand {
    associatedtype Options: CheckedRunOptions
    func options() throws -> Options
}

extension RunCommand {
    func validate() throws {
        do { try options().validate() } catch let e as ValidationError { throw e } catch { throw ValidationError("\(error)") }
    }
}

/// A `--shard` run: writes the partial result to `--json` and prints one line, "shard i/N: UNIT a..<b of T, DETAIL;
/// partial result PATH"; `detail` describes what the shard did.
func writeShard<Body>(json: String?, _ shard: Shard, detail: (Body) -> String, _ run: () throws -> PartialResult<Body>) throws {
    guard let path = json else { throw QuantKitError(.input, "--shard needs --json PATH for the partial result") }
    let p = try run()
    try p.write(to: path)
    let it = p.header.items
    print("shard \(shard): \(it.unit) \(it.first)..<\(it.first + it.count) of \(it.total), \(detail(p.body)); partial result \(path) (quantkit merge joins the shards)")
}
