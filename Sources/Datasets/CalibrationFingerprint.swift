import Foundation
import TensorCore

/// What the calibration text was: its SHA-256 and a sampled word 8-gram Bloom filter, so evaluation can
/// measure how much of its text the calibration saw (`overlap(with:)`) and refuse overlapping text.
/// Sampling keeps the n-grams whose hash is 0 mod 8, applied identically on both sides, so the overlap is
/// an unbiased estimate at 1/8 the size; false positives of the filter are about 0.2% (16 bits, 4 probes).
public struct CalibrationFingerprint: Codable, Sendable, Equatable {
    public static let n = 8
    static let sampleModulus: UInt64 = 8
    public let sha256: String
    public let ngramCount: Int
    public let bits: Int
    public let filter: [UInt64]

    public init(text: String, bytes: Data? = nil) {
        sha256 = Digest.sha256(bytes ?? Data(text.utf8))
        let hashes = CalibrationFingerprint.sampledHashes(text)
        ngramCount = hashes.count
        var m = 1024
        while m < hashes.count * 16 { m <<= 1 }
        bits = m
        var f = [UInt64](repeating: 0, count: m / 64)
        for h in hashes { for p in CalibrationFingerprint.probes(h, m) { f[p >> 6] |= 1 << UInt64(p & 63) } }
        filter = f
    }

    /// Fraction of `text`'s (sampled) word 8-grams present in the calibration text (0 when it has none).
    public func overlap(with text: String) -> Double {
        let hashes = CalibrationFingerprint.sampledHashes(text)
        guard !hashes.isEmpty else { return 0 }
        var hit = 0
        for h in hashes where CalibrationFingerprint.probes(h, bits).allSatisfy({ filter[$0 >> 6] & (1 << UInt64($0 & 63)) != 0 }) {
            hit += 1
        }
        return Double(hit) / Double(hashes.count)
    }

    /// The same fraction over several texts (e.g. retrieval queries), each text's n-grams taken on its own so no
    /// n-gram spans two texts: sampled n-grams seen in calibration / all sampled n-grams of the texts.
    public func overlap(withTexts texts: [String]) -> Double {
        var hit = 0, total = 0
        for t in texts {
            let hashes = CalibrationFingerprint.sampledHashes(t)
            total += hashes.count
            hit += hashes.filter { h in CalibrationFingerprint.probes(h, bits).allSatisfy { filter[$0 >> 6] & (1 << UInt64($0 & 63)) != 0 } }.count
        }
        return total > 0 ? Double(hit) / Double(total) : 0
    }

    static func probes(_ h: UInt64, _ m: Int) -> [Int] {
        let h2 = (h >> 33) | 1
        return (0..<4).map { Int((h &+ UInt64($0) &* h2) & UInt64(m - 1)) }
    }

    /// Lower-cased alphanumeric words; FNV-1a over each 8-word window; keep hash % 8 == 0.
    static func sampledHashes(_ text: String) -> [UInt64] {
        var words: [UInt64] = []
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        var inWord = false
        for u in text.lowercased().unicodeScalars {
            if CharacterSet.alphanumerics.contains(u) {
                h = (h ^ UInt64(u.value)) &* 0x100_0000_01b3
                inWord = true
            } else if inWord {
                words.append(h); h = 0xcbf2_9ce4_8422_2325; inWord = false
            }
        }
        if inWord { words.append(h) }
        guard words.count >= n else { return [] }
        var out: [UInt64] = []
        for i in 0...(words.count - n) {
            var g: UInt64 = 0x84222325cbf29ce4
            for j in 0..<n { g = (g ^ words[i + j]) &* 0x100_0000_01b3; g ^= g >> 29 }
            if g % sampleModulus == 0 { out.append(g) }
        }
        return out
    }

    public func write(to path: String) throws {
        try AtomicFile.write(try JSONEncoder().encode(self), to: path)
    }

    public static func read(_ path: String) throws -> CalibrationFingerprint {
        do { return try JSONDecoder().decode(CalibrationFingerprint.self, from: try readFile(path)) } catch let e as QuantKitError { throw e } catch {
            throw QuantKitError(.format, "\(path): not a calibration fingerprint (\(error))")
        }
    }

    /// The fingerprint stored beside a GPTQ checkpoint, if any.
    public static func read(checkpoint dir: String) throws -> CalibrationFingerprint? {
        let p = "\(dir)/calibration_fingerprint.json"
        return FileManager.default.fileExists(atPath: p) ? try read(p) : nil
    }
}
