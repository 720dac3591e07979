import Foundation
import TensorCore

/// A file's identity as evaluated: the sha256 of its exact (decompressed) bytes.
public struct SourceFile: Sendable, Codable, Equatable {
    public let path: String
    public let sha256: String
    public let bytes: Int
}

/// Readers for the evaluation corpora: plain text, JSONL, BEIR retrieval layout, SQuAD JSON. Every reader
/// accepts `.zst` files transparently and reports the sha256 of the bytes it read.
public enum Datasets {
    // MARK: plain text

    /// The whole file as UTF-8 text.
    public static func readPlainText(_ path: String) throws -> (text: String, source: SourceFile) {
        let (data, s) = try readUTF8(path)
        return (s, SourceFile(path: path, sha256: Digest.sha256(data), bytes: data.count))
    }

    /// The file's (decompressed) bytes and their UTF-8 text.
    static func readUTF8(_ path: String) throws -> (data: Data, text: String) {
        let data = try readMaybeCompressed(path)
        guard let s = String(data: data, encoding: .utf8) else {
            throw QuantKitError(.format, "\(path): not valid UTF-8 text")
        }
        return (data, s)
    }

    /// The file split on "\n" (a trailing "\r" is dropped from each line); the final empty line after a
    /// trailing newline is not returned.
    public static func readLines(_ path: String) throws -> (lines: [String], source: SourceFile) {
        let (text, source) = try readPlainText(path)
        // Split on the scalar "\n": Swift treats "\r\n" as one Character, so a Character split would miss it.
        var lines = text.unicodeScalars.split(separator: "\n", omittingEmptySubsequences: false).map { line -> String in
            String(String.UnicodeScalarView(line.last == "\r" ? line.dropLast() : line))
        }
        if lines.last == "" { lines.removeLast() }
        return (lines, source)
    }

    // MARK: JSONL

    /// Each non-blank line parsed as one JSON object; a line that is not a JSON object is an error naming its
    /// 1-based line number.
    public static func readJSONL(_ path: String) throws -> (objects: [[String: Any]], source: SourceFile) {
        let data = try readMaybeCompressed(path)
        var out: [[String: Any]] = []
        try jsonLines(data) { lineNo, value in
            guard let value else { throw QuantKitError(.format, "\(path): line \(lineNo): malformed JSON") }
            guard let dict = value as? [String: Any] else {
                throw QuantKitError(.format, "\(path): line \(lineNo): expected a JSON object")
            }
            out.append(dict)
        }
        return (out, SourceFile(path: path, sha256: Digest.sha256(data), bytes: data.count))
    }

    /// The one JSONL line walk: calls `body(lineNumber, value)` for every line that is not blank (spaces, tabs,
    /// "\r"), numbers 1-based and counting blank lines; `value` is the parsed JSON, nil where the line is not
    /// JSON. Callers word their own errors, so each keeps the message it has always given.
    static func jsonLines(_ data: Data, _ body: (Int, Any?) throws -> Void) throws {
        try data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
            var start = 0, lineNo = 0
            while start < raw.count {
                var end = start
                while end < raw.count && raw[end] != 0x0A { end += 1 }
                lineNo += 1
                let slice = UnsafeRawBufferPointer(rebasing: raw[start..<end])
                if !slice.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) {
                    try body(lineNo, try? JSONSerialization.jsonObject(with: Data(slice), options: []))
                }
                start = end + 1
            }
        }
    }

    /// `dir/name` or, when absent, `dir/name.zst`.
    public static func resolve(_ dir: String, _ name: String) throws -> String {
        let plain = (dir as NSString).appendingPathComponent(name)
        if FileManager.default.fileExists(atPath: plain) { return plain }
        if FileManager.default.fileExists(atPath: plain + ".zst") { return plain + ".zst" }
        throw QuantKitError(.io, "\(plain): no such file (nor \(name).zst)")
    }
}
