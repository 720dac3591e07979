import Foundation

/// A minimal protocol-buffers wire-format reader (varint, 64-bit, length-delimited, 32-bit), enough to read a
/// SentencePiece ModelProto without a protobuf dependency. Every read is bounds-checked: a truncated or garbage
/// file is an error, never a crash.
struct ProtoReader {
    enum Field {
        case varint(UInt64)
        case fixed64(UInt64)
        case bytes(ArraySlice<UInt8>)
        case fixed32(UInt32)
    }
    struct Failure: Error { let message: String }

    let bytes: ArraySlice<UInt8>
    var pos: Int

    init(_ bytes: ArraySlice<UInt8>) { self.bytes = bytes; pos = bytes.startIndex }

    var atEnd: Bool { pos >= bytes.endIndex }

    mutating func varint() throws -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard pos < bytes.endIndex else { throw Failure(message: "truncated varint at byte \(pos)") }
            let b = bytes[pos]; pos += 1
            if shift >= 64 { throw Failure(message: "varint too long at byte \(pos)") }
            result |= UInt64(b & 0x7f) << shift
            if b < 0x80 { return result }
            shift += 7
        }
    }

    /// Next (field number, value).
    mutating func next() throws -> (Int, Field) {
        let key = try varint()
        let number = Int(key >> 3)
        guard number > 0 else { throw Failure(message: "invalid field number 0 at byte \(pos)") }
        switch key & 7 {
        case 0: return (number, .varint(try varint()))
        case 1:
            guard bytes.endIndex - pos >= 8 else { throw Failure(message: "truncated 64-bit field \(number)") }
            var v: UInt64 = 0
            for k in 0..<8 { v |= UInt64(bytes[pos + k]) << (8 * UInt64(k)) }
            pos += 8
            return (number, .fixed64(v))
        case 2:
            let n = try varint()
            guard n <= UInt64(bytes.endIndex - pos) else {
                throw Failure(message: "length \(n) of field \(number) runs past the end")
            }
            let s = bytes[pos..<(pos + Int(n))]
            pos += Int(n)
            return (number, .bytes(s))
        case 5:
            guard bytes.endIndex - pos >= 4 else { throw Failure(message: "truncated 32-bit field \(number)") }
            var v: UInt32 = 0
            for k in 0..<4 { v |= UInt32(bytes[pos + k]) << (8 * UInt32(k)) }
            pos += 4
            return (number, .fixed32(v))
        default:
            throw Failure(message: "unsupported wire type \(key & 7) for field \(number)")
        }
    }
}

extension ProtoReader.Field {
    var int: Int? { if case .varint(let v) = self { return Int(truncatingIfNeeded: Int32(truncatingIfNeeded: v)) }; return nil }
    var bool: Bool? { if case .varint(let v) = self { return v != 0 }; return nil }
    var float: Float? { if case .fixed32(let v) = self { return Float(bitPattern: v) }; return nil }
    var data: ArraySlice<UInt8>? { if case .bytes(let s) = self { return s }; return nil }
    var string: String? { data.flatMap { String(validating: $0, as: UTF8.self) } }
}
