import Foundation
import Synchronization

public func readFile(_ path: String) throws -> Data {
    guard FileManager.default.fileExists(atPath: path) else { throw QuantKitError(.io, "\(path): no such file") }
    do { return try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped) } catch {
        throw QuantKitError(.io, "\(path): cannot read (\(error.localizedDescription))")
    }
}

/// Writes go to a temporary file beside the destination and are renamed into place only when complete, so an
/// interrupted run never leaves a partial output. Every error names the destination the caller gave (never the
/// temporary file); an empty path, a directory, a device, a FIFO or a socket is refused before anything is
/// written (renaming over a device as root would replace it with a regular file).
public enum AtomicFile {
    /// What exists at `path` (following symbolic links): nil when nothing does.
    enum Existing { case regular, directory, other(String) }
    static func existing(_ path: String) -> Existing? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        switch st.st_mode & S_IFMT {
        case S_IFREG: return .regular
        case S_IFDIR: return .directory
        case S_IFCHR: return .other("a character device")
        case S_IFBLK: return .other("a block device")
        case S_IFIFO: return .other("a FIFO")
        case S_IFSOCK: return .other("a socket")
        default: return .other("not a regular file")
        }
    }

    /// Throws unless `path` may be written as a regular file: not empty, and nothing but a regular file there.
    public static func checkFileDestination(_ path: String) throws {
        guard !path.isEmpty else { throw QuantKitError(.input, "empty output path (an output flag was given \"\")") }
        switch existing(path) {
        case nil, .regular?: return
        case .directory?: throw QuantKitError(.io, "\(path): is a directory; give a file path")
        case .other(let what)?: throw QuantKitError(.io, "\(path): exists and is \(what), not a regular file; refusing to replace it")
        }
    }

    /// Throws unless `path` may be written as a directory: not empty, and nothing but a directory there.
    public static func checkDirectoryDestination(_ path: String) throws {
        guard !path.isEmpty else { throw QuantKitError(.input, "empty output path (an output flag was given \"\")") }
        switch existing(path) {
        case nil, .directory?: return
        case .regular?: throw QuantKitError(.io, "\(path): exists and is a file; refusing to replace it with a directory (remove it or choose another path)")
        case .other(let what)?: throw QuantKitError(.io, "\(path): exists and is \(what); refusing to replace it with a directory")
        }
    }

    /// `checkFileDestination` / `checkDirectoryDestination` with the flag that named the path in the message
    /// ("--json: empty path", "--output out.bin: exists and is a file; ...").
    public static func checkDestination(_ path: String, flag: String, directory: Bool) throws {
        guard !path.isEmpty else { throw QuantKitError(.input, "\(flag): empty path") }
        do { try directory ? checkDirectoryDestination(path) : checkFileDestination(path) } catch let e as QuantKitError {
            throw QuantKitError(e.kind, "\(flag) \(e.message)")
        }
    }

    static var lastError: String { String(cString: strerror(errno)) }

    public static func write(to path: String, _ body: (FileHandle) throws -> Void) throws {
        try checkFileDestination(path)
        let url = URL(fileURLWithPath: path)
        let dir = url.deletingLastPathComponent()
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let tmp = dir.appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        let fd = open(tmp.path, O_WRONLY | O_CREAT | O_EXCL, 0o644)
        guard fd >= 0 else {
            throw QuantKitError(.io, "\(path): cannot write (\(lastError) in directory \(dir.path))")
        }
        close(fd)
        InFlightOutputs.add(tmp.path)
        defer { InFlightOutputs.remove(tmp.path) }
        do {
            let handle: FileHandle
            do { handle = try FileHandle(forWritingTo: tmp) } catch {
                throw QuantKitError(.io, "\(path): cannot write (\(error.localizedDescription))")
            }
            do { try body(handle); try handle.close() } catch let e as QuantKitError { try? handle.close(); throw e } catch {
                try? handle.close()
                throw QuantKitError(.io, "\(path): cannot write (\(error.localizedDescription))")
            }
            // Re-checked just before the rename: a device or directory may have appeared meanwhile.
            try checkFileDestination(path)
            if rename(tmp.path, url.path) != 0 {
                throw QuantKitError(.io, "\(path): cannot write (\(lastError))")
            }
        } catch {
            try? FileManager.default.removeItem(at: tmp)
            throw error
        }
    }

    public static func write(_ data: Data, to path: String) throws {
        try write(to: path) { try $0.write(contentsOf: data) }
    }

    /// Writes `data` zstd-compressed when `path` ends in .zst.
    public static func writeMaybeCompressed(_ data: Data, to path: String, level: Int32 = 19) throws {
        try write(path.hasSuffix(".zst") ? try Zstd.compress(data, level: level) : data, to: path)
    }

    /// Builds a directory in a temporary sibling, then renames it into place (replacing an old directory, never
    /// a file: a regular file, a device or anything else at `path` is refused before `body` runs).
    public static func writeDirectory(to path: String, _ body: (String) throws -> Void) throws {
        try checkDirectoryDestination(path)
        let url = URL(fileURLWithPath: path)
        let tmp = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())")
        try? FileManager.default.removeItem(at: tmp)
        InFlightOutputs.add(tmp.path)
        defer { InFlightOutputs.remove(tmp.path) }
        func wrap<R>(_ what: String, _ f: () throws -> R) throws -> R {
            do { return try f() } catch let e as QuantKitError { throw e } catch {
                throw QuantKitError(.io, "\(path): cannot \(what) (\(error.localizedDescription))")
            }
        }
        do {
            try wrap("create the directory") { try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true) }
            try wrap("write the directory") { try body(tmp.path) }
            try checkDirectoryDestination(path)
            try wrap("replace the old directory") {
                if FileManager.default.fileExists(atPath: path) { try FileManager.default.removeItem(atPath: path) }
            }
            try wrap("move the directory into place") { try FileManager.default.moveItem(at: tmp, to: url) }
        } catch {
            try? FileManager.default.removeItem(at: tmp)
            throw error
        }
    }
}

/// Reads a file, transparently decompressing it when its name ends in .zst.
public func readMaybeCompressed(_ path: String) throws -> Data {
    let data = try readFile(path)
    return path.hasSuffix(".zst") ? try Zstd.decompress(data, source: path) : data
}

/// Reads a text file (zstd-transparent) that must be UTF-8.
public func readText(_ path: String) throws -> String {
    let data = try readMaybeCompressed(path)
    guard let s = String(data: data, encoding: .utf8) else {
        throw QuantKitError(.format, "\(path): not valid UTF-8 text")
    }
    return s
}

/// The temporary files and directories being written right now, so that an interrupted process (SIGINT, SIGTERM)
/// removes them before it exits: an output is then either complete or absent.
public enum InFlightOutputs {
    private static let paths = Mutex<Set<String>>([])

    static func add(_ path: String) { paths.withLock { _ = $0.insert(path) } }
    static func remove(_ path: String) { paths.withLock { _ = $0.remove(path) } }

    /// Removes every temporary output still being written; returns how many there were.
    public static func removeAll() -> Int {
        paths.withLock { set in
            for p in set { try? FileManager.default.removeItem(atPath: p) }
            defer { set.removeAll() }
            return set.count
        }
    }
}
