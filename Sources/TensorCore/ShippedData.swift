import Foundation

/// The repository's shipped data (Corpora/, Models/, Tokenizers/) behind the commands' default paths, found from
/// any working directory.
public enum ShippedData {
    /// The repository holding the running executable (set once by the CLI at start); nil: defaults are read
    /// relative to the working directory only.
    nonisolated(unsafe) public static var root: String?

    /// `relative` as given when it exists from the working directory, else the same path under `root` when that
    /// exists; otherwise as given, so the error names the default the user sees in --help.
    public static func path(_ relative: String) -> String {
        let fm = FileManager.default
        if fm.fileExists(atPath: relative) || relative.hasPrefix("/") { return relative }
        guard let root else { return relative }
        let candidate = URL(fileURLWithPath: root).appendingPathComponent(relative).path
        return fm.fileExists(atPath: candidate) ? candidate : relative
    }

    /// The nearest folder above `path` that holds Package.swift and Corpora/ (a QuantKit checkout).
    public static func repositoryRoot(above path: String) -> String? {
        var dir = URL(fileURLWithPath: path).standardizedFileURL.resolvingSymlinksInPath().deletingLastPathComponent()
        let fm = FileManager.default
        while true {
            if fm.fileExists(atPath: dir.appendingPathComponent("Package.swift").path),
               fm.fileExists(atPath: dir.appendingPathComponent("Corpora").path) { return dir.path }
            let up = dir.deletingLastPathComponent()
            if up.path == dir.path { return nil }
            dir = up
        }
    }
}
