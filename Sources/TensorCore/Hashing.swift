import Crypto
import Foundation

public enum Digest {
    /// Lower-case hex SHA-256 of the exact bytes.
    public static func sha256(_ data: Data) -> String {
        SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
    }

    public static func sha256(_ bytes: UnsafeRawBufferPointer) -> String {
        SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
    }
}

extension Digest {
    /// SHA-256 of a file read in 16 MiB pieces (models can be larger than memory would like to map at once).
    public static func sha256(file path: String) throws -> String {
        guard let h = FileHandle(forReadingAtPath: path) else { throw QuantKitError(.io, "\(path): cannot read") }
        defer { try? h.close() }
        var hasher = SHA256()
        while true {
            let piece: Data
            do { piece = try h.read(upToCount: 16 << 20) ?? Data() } catch {
                throw QuantKitError(.io, "\(path): cannot read (\(error.localizedDescription))")
            }
            if piece.isEmpty { break }
            hasher.update(data: piece)
        }
        return hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }

    /// A model's identity: the SHA-256 of a file, or of a directory's regular files (their names and SHA-256s,
    /// sorted by name; sub-directories are not part of a checkpoint).
    public static func sha256(modelPath path: String) throws -> String {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { throw QuantKitError(.io, "\(path): no such file or directory") }
        guard isDir.boolValue else { return try sha256(file: path) }
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
        var listing = ""
        for n in names where !n.hasPrefix(".") {
            let p = (path as NSString).appendingPathComponent(n)
            var sub: ObjCBool = false
            guard FileManager.default.fileExists(atPath: p, isDirectory: &sub), !sub.boolValue else { continue }
            listing += "\(n)\t\(try sha256(file: p))\n"
        }
        return sha256(Data(listing.utf8))
    }
}
