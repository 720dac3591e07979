import Foundation

import FuzzTargets

/// libFuzzer's entry points: QUANTKIT_FUZZ_TARGET picks one of `fuzzTargets` (Tests/FuzzTargets), which the
/// ordinary test suite also runs over the committed seeds and every input that once crashed.
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
    let refusal = t.outcome(data, s)
    if verbose { FileHandle.standardError.write(Data("quantkit-fuzz: \(refusal.map { "refused: \($0)" } ?? "accepted")\n".utf8)) }
    return 0
}
