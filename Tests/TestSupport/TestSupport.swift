import Foundation
import TensorCore

/// Shared helpers for the test targets: repository paths and approximate comparisons.
public enum Repo {
    /// The package root, found from this source file's location.
    public static let root: URL = {
        var url = URL(fileURLWithPath: #filePath)
        while url.path != "/" {
            url.deleteLastPathComponent()
            if FileManager.default.fileExists(atPath: url.appendingPathComponent("Package.swift").path) { return url }
        }
        return URL(fileURLWithPath: FileManager.default.currentDirectoryPath)
    }()

    public static func path(_ relative: String) -> String { root.appendingPathComponent(relative).path }

    /// A fresh directory under the system temporary directory, removed when the test process exits
    /// (QUANTKIT_KEEP_TEST_FILES=1 keeps them for inspection).
    public static func tempDirectory(_ name: String = "qk") -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("\(name)-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        TemporaryDirectories.shared.add(dir.path)
        return dir.path
    }
}

/// Directories made by `Repo.tempDirectory`, deleted at exit.
final class TemporaryDirectories: @unchecked Sendable {
    static let shared = TemporaryDirectories()
    private let lock = NSLock()
    private var paths: [String] = []
    private var registered = false

    func add(_ path: String) {
        lock.lock()
        defer { lock.unlock() }
        paths.append(path)
        if !registered && ProcessInfo.processInfo.environment["QUANTKIT_KEEP_TEST_FILES"] != "1" {
            registered = true
            atexit { TemporaryDirectories.shared.removeAll() }
        }
    }

    func removeAll() {
        lock.lock()
        defer { lock.unlock() }
        for p in paths { try? FileManager.default.removeItem(atPath: p) }
        paths.removeAll()
    }
}

/// Max |a - b| over two equal-length arrays.
public func maxAbsDiff(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count, "length mismatch \(a.count) vs \(b.count)")
    var m: Float = 0
    for i in a.indices { m = max(m, abs(a[i] - b[i])) }
    return m
}

/// Test data from the seeded generator, so tests are reproducible.
extension SplitMix64 {
    public mutating func floats(_ n: Int, in range: ClosedRange<Float> = -1...1) -> [Float] {
        (0..<n).map { _ in Float.random(in: range, using: &self) }
    }
}
