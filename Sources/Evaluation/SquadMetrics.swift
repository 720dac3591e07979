import Foundation

/// SQuAD v1.1 official evaluation (SPECS.md "Answer metrics"): normalisation, exact match and token F1,
/// following the behaviour of the official evaluate-v1.1.py (lower -> drop string.punctuation -> articles
/// a/an/the as whole words to a space -> whitespace collapse).
public enum SquadMetrics {
    /// Python's string.punctuation.
    static let punctuation = Set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~".unicodeScalars)

    /// Python str.split() whitespace (str.isspace): bidi WS/B/S or category Zs.
    static func isPythonSpace(_ u: Unicode.Scalar) -> Bool {
        switch u.value {
        case 0x09...0x0D, 0x1C...0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000:
            return true
        default: return false
        }
    }

    /// Python re `\w` for str patterns: alphanumeric (str.isalnum) or underscore.
    static func isWordChar(_ u: Unicode.Scalar) -> Bool {
        if u == "_" { return true }
        let p = u.properties
        switch p.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter,
             .decimalNumber, .letterNumber, .otherNumber:
            return true
        default:
            return false
        }
    }

    public static func normalize(_ s: String) -> String {
        // 1. lower, 2. remove punctuation
        let lowered = s.lowercased().unicodeScalars.filter { !punctuation.contains($0) }
        let u = Array(lowered)
        // 3. \b(a|an|the)\b -> " " (non-overlapping, left to right)
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(u.count)
        var i = 0
        let articles: [[Unicode.Scalar]] = [["t", "h", "e"], ["a", "n"], ["a"]]
        while i < u.count {
            let boundaryBefore = i == 0 || !isWordChar(u[i - 1])
            var matched = 0
            if boundaryBefore && isWordChar(u[i]) {
                for a in articles where i + a.count <= u.count && Array(u[i..<(i + a.count)]) == a {
                    let j = i + a.count
                    if j == u.count || !isWordChar(u[j]) { matched = a.count; break }
                }
            }
            if matched > 0 { out.append(" "); i += matched } else { out.append(u[i]); i += 1 }
        }
        // 4. ' '.join(text.split())
        return tokens(String(String.UnicodeScalarView(out))).joined(separator: " ")
    }

    /// Python str.split() with no argument.
    static func tokens(_ s: String) -> [String] {
        var toks: [String] = []
        var cur = String.UnicodeScalarView()
        for c in s.unicodeScalars {
            if isPythonSpace(c) {
                if !cur.isEmpty { toks.append(String(cur)); cur = String.UnicodeScalarView() }
            } else { cur.append(c) }
        }
        if !cur.isEmpty { toks.append(String(cur)) }
        return toks
    }

    public static func exactMatch(_ prediction: String, _ gold: String) -> Double {
        normalize(prediction) == normalize(gold) ? 1 : 0
    }

    /// Bag-of-tokens F1 of the normalised strings (v1.1: 0 when nothing is shared, including empty strings).
    public static func f1(_ prediction: String, _ gold: String) -> Double {
        let p = tokens(normalize(prediction)), g = tokens(normalize(gold))
        var counts: [String: Int] = [:]
        for t in g { counts[t, default: 0] += 1 }
        var same = 0
        for t in p { if let c = counts[t], c > 0 { same += 1; counts[t] = c - 1 } }
        if same == 0 { return 0 }
        let precision = Double(same) / Double(p.count), recall = Double(same) / Double(g.count)
        return 2 * precision * recall / (precision + recall)
    }

    /// Max over the gold answers, as the official script does (0 when there are no gold answers).
    public static func maxOver(_ golds: [String], _ metric: (String) -> Double) -> Double {
        golds.map(metric).max() ?? 0
    }

    public static func exactMatch(_ prediction: String, golds: [String]) -> Double {
        maxOver(golds) { exactMatch(prediction, $0) }
    }

    public static func f1(_ prediction: String, golds: [String]) -> Double {
        maxOver(golds) { f1(prediction, $0) }
    }
}
