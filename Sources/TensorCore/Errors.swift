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
        self.message = message
    }

    public var description: String { message }
}

extension QuantKitError: LocalizedError {
    public var errorDescription: String? { message }
}
