import Foundation

/// Character classes over Unicode scalars, as the reference tokenizers define them.
enum UChar {
    @inline(__always) static func isLetter(_ s: Unicode.Scalar) -> Bool {
        if s.value < 0x80 { return (s.value | 0x20) >= 0x61 && (s.value | 0x20) <= 0x7A }
        switch s.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return true
        default: return false
        }
    }
    @inline(__always) static func isNumber(_ s: Unicode.Scalar) -> Bool {
        if s.value < 0x80 { return s.value >= 0x30 && s.value <= 0x39 }
        switch s.properties.generalCategory {
        case .decimalNumber, .letterNumber, .otherNumber: return true
        default: return false
        }
    }
    /// Unicode White_Space (regex \s, Rust char::is_whitespace).
    @inline(__always) static func isWhitespace(_ s: Unicode.Scalar) -> Bool {
        if s.value < 0x80 { return s.value == 0x20 || (s.value >= 0x09 && s.value <= 0x0D) }
        return s.properties.isWhitespace
    }
    /// BERT punctuation: ASCII punctuation or a Unicode P* character.
    static func isPunctuation(_ s: Unicode.Scalar) -> Bool {
        let v = s.value
        if v < 0x80 {
            return (v >= 33 && v <= 47) || (v >= 58 && v <= 64) || (v >= 91 && v <= 96) || (v >= 123 && v <= 126)
        }
        switch s.properties.generalCategory {
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation,
             .initialPunctuation, .finalPunctuation, .otherPunctuation: return true
        default: return false
        }
    }
    /// Rust char::is_control-like "other" categories used by BERT's clean_text (Cc, Cf, Cs, Co, Cn).
    static func isOther(_ s: Unicode.Scalar) -> Bool {
        switch s.properties.generalCategory {
        case .control, .format, .surrogate, .privateUse, .unassigned: return true
        default: return false
        }
    }
    static func isChineseChar(_ s: Unicode.Scalar) -> Bool {
        switch s.value {
        case 0x4E00...0x9FFF, 0x3400...0x4DBF, 0x20000...0x2A6DF, 0x2A700...0x2B73F, 0x2B740...0x2B81F,
             0x2B920...0x2CEAF, 0xF900...0xFAFF, 0x2F800...0x2FA1F: return true
        default: return false
        }
    }
    static func isNonspacingMark(_ s: Unicode.Scalar) -> Bool {
        s.value >= 0x300 && s.properties.generalCategory == .nonspacingMark
    }
    /// Regex \w (Unicode): alphabetic, marks, decimal digits, connector punctuation, join controls.
    static func isWord(_ s: Unicode.Scalar) -> Bool {
        if s.value < 0x80 {
            return isLetter(s) || isNumber(s) || s == "_"
        }
        let p = s.properties
        if p.isAlphabetic || p.isJoinControl { return true }
        switch p.generalCategory {
        case .nonspacingMark, .spacingMark, .enclosingMark, .decimalNumber, .connectorPunctuation: return true
        default: return false
        }
    }
}

/// The GPT-2 pre-tokenization regex, by hand over scalars:
/// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
/// Calls `emit` with each match range (the matches cover the whole input).
func gpt2Split(_ s: [Unicode.Scalar], _ emit: (Range<Int>) -> Void) {
    let n = s.count
    var i = 0
    @inline(__always) func kind(_ c: Unicode.Scalar) -> Int {   // 0 letter, 1 number, 2 space, 3 other
        if UChar.isLetter(c) { return 0 }
        if UChar.isNumber(c) { return 1 }
        if UChar.isWhitespace(c) { return 2 }
        return 3
    }
    while i < n {
        let c = s[i]
        // Contractions (case-sensitive, as in GPT-2).
        if c == "'" && i + 1 < n {
            let a = s[i + 1]
            if a == "s" || a == "t" || a == "m" || a == "d" { emit(i..<(i + 2)); i += 2; continue }
            if i + 2 < n {
                let b = s[i + 2]
                if (a == "r" && b == "e") || (a == "v" && b == "e") || (a == "l" && b == "l") {
                    emit(i..<(i + 3)); i += 3; continue
                }
            }
        }
        var start = i
        var k = kind(c)
        if c == " " && i + 1 < n {
            let k2 = kind(s[i + 1])
            if k2 != 2 { start = i + 1; k = k2 }
        }
        if k != 2 {
            var j = start + 1
            while j < n && kind(s[j]) == k { j += 1 }
            emit(i..<j); i = j; continue
        }
        // Whitespace run: \s+(?!\S) leaves the last space for the next word; else \s+.
        var j = i + 1
        while j < n && UChar.isWhitespace(s[j]) { j += 1 }
        if j < n && j - i > 1 { j -= 1 }
        emit(i..<j); i = j
    }
}

/// GPT-2's reversible byte <-> printable character map (bytes_to_unicode in OpenAI's encoder.py).
enum ByteLevelMap {
    static let byteToScalar: [Unicode.Scalar] = {
        var table = [Unicode.Scalar](repeating: " ", count: 256)
        var extra: UInt32 = 0
        for b in 0..<256 {
            let printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)
            if printable { table[b] = Unicode.Scalar(UInt32(b))! } else {
                table[b] = Unicode.Scalar(256 + extra)!; extra += 1
            }
        }
        return table
    }()
    static let scalarToByte: [UInt32: UInt8] = {
        var m: [UInt32: UInt8] = [:]
        for (b, s) in byteToScalar.enumerated() { m[s.value] = UInt8(b) }
        return m
    }()
}

extension Array where Element == Unicode.Scalar {
    var string: String { var s = String.UnicodeScalarView(); s.append(contentsOf: self); return String(s) }
    var utf8Bytes: [UInt8] {
        var out: [UInt8] = []; out.reserveCapacity(count)
        for s in self { out.append(contentsOf: UTF8.encode(s)!) }
        return out
    }
}

extension String {
    var scalars: [Unicode.Scalar] { Array(unicodeScalars) }
}
