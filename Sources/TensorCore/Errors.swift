import Foundation

/// An error caused by user-supplied input (a file, a flag, a corpus). The CLI prints `description` as one
/// line and exits non-zero; nothing a user supplies may trap.
public struct QuantKitError: Error, CustomStringConvertible, Equatable, Sendable {
    public enum Kind: String, Sendable {
        case io, format, shape, config, input, unsupported, numeric
    }
    public let kind: Kind
    public let message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = OneLine.text(message)
    }

    public var description: String { message }
}

extension QuantKitError: LocalizedError {
    public var errorDescription: String? { message }
}

/// Error text as one readable line: names and values read from a user's file (a tensor name, a key, a token) may
/// hold newlines, control bytes or megabytes of text, and an error message must still be the one line it promises.
public enum OneLine {
    /// The longest message kept whole; a longer one keeps its head and says how much was cut.
    public static let maxCharacters = 2000

    public static func text(_ s: String) -> String {
        let needsEscape = s.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F }
        guard needsEscape || s.count > maxCharacters else { return s }
        var out = ""
        for u in s.unicodeScalars {
            switch u {
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where u.value < 0x20 || u.value == 0x7F: out += "\\u{\(String(u.value, radix: 16))}"
            default: out.unicodeScalars.append(u)
            }
        }
        guard out.count > maxCharacters else { return out }
        return String(out.prefix(maxCharacters)) + "... (\(out.count - maxCharacters) more characters)"
    }
}
