import Foundation
import TensorCore

/// Calibration corpora read as text: plain text, a BEIR corpus `.jsonl` (documents with "title"/"text"), or a
/// SQuAD `.json` (every paragraph context). Zstd-compressed files are read transparently; the format follows the
/// name with any `.zst` dropped.
public enum CalibrationText {
    /// Running text for language-model calibration: documents as `BeirDocument.runningText`, or SQuAD contexts,
    /// joined by "\n\n" (an empty document is left out); plain text as it is.
    public static func load(_ path: String) throws -> String {
        let (_, raw) = try Datasets.readUTF8(path)
        switch format(path) {
        case .jsonl: return try Datasets.calibrationDocuments(raw, path: path).map(\.runningText).filter { !$0.isEmpty }.joined(separator: "\n\n")
        case .json: return try Datasets.squadContexts(Data(raw.utf8), path: path).joined(separator: "\n\n")
        case .text: return raw
        }
    }

    /// Passages for an encoder and the file's raw bytes (for the sha256): one per document (`embeddingText`, the
    /// text retrieval embeds), every SQuAD context, or each non-blank line of plain text. Empty passages are left
    /// out; whitespace is the encoder's to strip.
    public static func passages(_ path: String) throws -> (passages: [String], raw: Data) {
        let (data, text) = try Datasets.readUTF8(path)
        switch format(path) {
        case .jsonl: return (try Datasets.calibrationDocuments(text, path: path).map(\.embeddingText).filter { !$0.isEmpty }, data)
        case .json: return (try Datasets.squadContexts(Data(text.utf8), path: path), data)
        case .text: return (text.split(whereSeparator: \.isNewline).map(String.init), data)
        }
    }

    enum Format { case jsonl, json, text }

    static func format(_ path: String) -> Format {
        let base = path.hasSuffix(".zst") ? String(path.dropLast(4)) : path
        return base.hasSuffix(".jsonl") ? .jsonl : base.hasSuffix(".json") ? .json : .text
    }
}
