import Foundation

public func readFile(_ path: String) throws -> Data {
    guard FileManager.default.fileExists(atPath: path) else { throw QuantKitError(.io, "\(path): no such file") }
    do { return try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped) } catch {
        throw QuantKitError(.io, "\(path): cannot read (\(error.localizedDescription))")
    }
}

/// Writes go to a temporary file beside the destination and are renamed into place only when complete, so an
/// interrupted run never leaves a partial output.
public enum AtomicFile {
    public static func write(to path: String, _ body: (FileHandle) throws -> Void) throws {
        let url = URL(fileURLWithPath: path)
        let dir = url.deletingLastPathComponent()
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let tmp = dir.appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        guard FileManager.default.createFile(atPath: tmp.path, contents: nil) else {
            throw QuantKitError(.io, "\(path): cannot create temporary file in \(dir.path)")
        }
        do {
            let handle = try FileHandle(forWritingTo: tmp)
            do { try body(handle); try handle.close() } catch { try? handle.close(); throw error }
            if rename(tmp.path, url.path) != 0 {
                throw QuantKitError(.io, "\(path): cannot rename temporary file into place (\(String(cString: strerror(errno))))")
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

    /// Builds a directory in a temporary sibling, then renames it into place (replacing an old one).
    public static func writeDirectory(to path: String, _ body: (String) throws -> Void) throws {
        let url = URL(fileURLWithPath: path)
        let tmp = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())")
        try? FileManager.default.removeItem(at: tmp)
        do {
            try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
            try body(tmp.path)
            if FileManager.default.fileExists(atPath: path) { try FileManager.default.removeItem(atPath: path) }
            try FileManager.default.moveItem(at: tmp, to: url)
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
