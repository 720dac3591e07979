import Foundation
import TensorCore

/// libFuzzer entry points for every parser a user can feed (Tools/fuzz.sh TARGET SECONDS builds and runs them).
/// One executable holds every target; QUANTKIT_FUZZ_TARGET picks one. An input must make the parser either return
/// or throw: a trap, an ASan report, a leak-free hang past libFuzzer's timeout or an allocation past -rss_limit_mb
/// is a finding.
struct FuzzTarget: Sendable {
    let name: String
    /// What the seed files are; shown by `Tools/fuzz.sh --list`.
    let summary: String
    let run: @Sendable (Data, Scratch) throws -> Void
}

/// A per-process folder on tmpfs where path-based parsers read their input, as they would a user's file.
final class Scratch: @unchecked Sendable {
    let dir: String
    init() {
        let root = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
        dir = "\(root)/quantkit-fuzz-\(getpid())"
        try? FileManager.default.removeItem(atPath: dir)
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }
    /// Writes `data` to `name` inside the scratch folder (making subfolders) and returns its path.
    @discardableResult
    func file(_ name: String, _ data: Data) -> String {
        let p = "\(dir)/\(name)"
        let parent = (p as NSString).deletingLastPathComponent
        if parent != dir { try? FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true) }
        _ = FileManager.default.createFile(atPath: p, contents: data)
        return p
    }
    /// A fresh empty subfolder.
    func folder(_ name: String) -> String {
        let p = "\(dir)/\(name)"
        try? FileManager.default.removeItem(atPath: p)
        try? FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true)
        return p
    }
}

/// Splits one fuzz input into `count` parts at the separator line "\n#--\n", so one input can stand for a folder of
/// files (a BEIR dataset, a checkpoint directory); missing parts are empty.
func parts(_ data: Data, _ count: Int) -> [Data] {
    let sep = Data("\n#--\n".utf8)
    var out: [Data] = []
    var rest = data[...]
    while out.count < count - 1, let r = rest.range(of: sep) {
        out.append(Data(rest[rest.startIndex..<r.lowerBound]))
        rest = rest[r.upperBound...]
    }
    out.append(Data(rest))
    while out.count < count { out.append(Data()) }
    return out
}

nonisolated(unsafe) private var selected: FuzzTarget?
nonisolated(unsafe) private var scratch: Scratch?
/// QUANTKIT_FUZZ_VERBOSE=1 prints each input's refusal: how to check that the seeds load (Tools/fuzz.sh --seeds).
nonisolated(unsafe) private var verbose = false

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    let name = ProcessInfo.processInfo.environment["QUANTKIT_FUZZ_TARGET"] ?? ""
    guard let t = fuzzTargets.first(where: { $0.name == name }) else {
        let names = fuzzTargets.map(\.name).joined(separator: ", ")
        FileHandle.standardError.write(Data("quantkit-fuzz: set QUANTKIT_FUZZ_TARGET to one of: \(names)\n".utf8))
        exit(2)
    }
    selected = t
    scratch = Scratch()
    verbose = ProcessInfo.processInfo.environment["QUANTKIT_FUZZ_VERBOSE"] == "1"
    // The parsers' own worker pools stay at one thread: libFuzzer runs one input at a time.
    setenv("QUANTKIT_THREADS", "1", 1)
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ bytes: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let t = selected, let s = scratch else { return 0 }
    let data = size == 0 || bytes == nil ? Data() : Data(bytes: bytes!, count: size)
    // Throwing is the correct answer to a bad file; only traps and memory errors are findings.
    do {
        try t.run(data, s)
        if verbose { FileHandle.standardError.write(Data("quantkit-fuzz: accepted\n".utf8)) }
    } catch {
        if verbose { FileHandle.standardError.write(Data("quantkit-fuzz: refused: \(error)\n".utf8)) }
        // Every refusal must say something: an empty message would leave the user with no line to act on.
        if "\(error)".isEmpty { fatalError("empty error message from \(t.name)") }
    }
    return 0
}
