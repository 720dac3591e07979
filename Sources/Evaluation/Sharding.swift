import Foundation
import TensorCore

/// Which slice of an evaluation one process runs: shard `index` of `count`, 0-based like SLURM_ARRAY_TASK_ID
/// and Kubernetes' JOB_COMPLETION_INDEX. The items (windows, documents, queries, modules) split into `count`
/// contiguous runs in order, whose sizes differ by at most one.
public struct Shard: Codable, Sendable, Equatable, CustomStringConvertible {
    public static let maxCount = 1_000_000
    public let index: Int
    public let count: Int

    public init(index: Int, count: Int) throws {
        guard count >= 1, count <= Shard.maxCount else {
            throw QuantKitError(.input, "--shard \(index)/\(count): the shard count must be 1...\(Shard.maxCount)")
        }
        guard index >= 0, index < count else {
            throw QuantKitError(.input, "--shard \(index)/\(count): the index must be 0...\(count - 1) (0-based, as SLURM_ARRAY_TASK_ID)")
        }
        self.index = index
        self.count = count
    }

    /// "i/N".
    public init(parsing s: String) throws {
        let parts = s.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let i = Int(parts[0].trimmingCharacters(in: .whitespaces)),
              let n = Int(parts[1].trimmingCharacters(in: .whitespaces)) else {
            throw QuantKitError(.input, "--shard '\(s)': expected INDEX/COUNT with a 0-based index, e.g. 0/3")
        }
        try self.init(index: i, count: n)
    }

    public var description: String { "\(index)/\(count)" }

    /// This shard's items among `total`.
    public func range(of total: Int, unit: String) throws -> Range<Int> {
        guard count <= total else {
            throw QuantKitError(.input, "--shard \(self): the run has only \(total) \(unit), so at most \(total) shards")
        }
        return (index * total / count)..<((index + 1) * total / count)
    }

    private enum CodingKeys: String, CodingKey { case index, count }
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        try self.init(index: try c.decode(Int.self, forKey: .index), count: try c.decode(Int.self, forKey: .count))
    }
}

/// An array stored bit for bit in JSON: its little-endian bytes, base64. Partial results carry their per-item
/// figures this way, so a merge adds exactly the numbers the shards computed (a decimal round trip through a
/// JSON parser may not be exact).
public struct PackedArray<Element: BitwiseCopyable & Sendable>: Codable, Sendable {
    public var values: [Element]
    public init(_ values: [Element]) { self.values = values }

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        let text = try c.decode(String.self)
        let stride = MemoryLayout<Element>.stride
        guard let d = Data(base64Encoded: text), d.count % stride == 0 else {
            throw DecodingError.dataCorrupted(.init(codingPath: c.codingPath, debugDescription: "not a packed array of \(stride)-byte values"))
        }
        let n = d.count / stride
        values = [Element](unsafeUninitializedCapacity: n) { buf, count in
            d.withUnsafeBytes { src in UnsafeMutableRawBufferPointer(buf).copyMemory(from: src) }
            count = n
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(values.withUnsafeBytes { Data($0) }.base64EncodedString())
    }
}

/// A Double stored by its bit pattern (hex), exact through any JSON parser.
public struct ExactDouble: Codable, Sendable, Equatable {
    public var value: Double
    public init(_ v: Double) { value = v }
    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        guard let bits = UInt64(try c.decode(String.self), radix: 16) else {
            throw DecodingError.dataCorrupted(.init(codingPath: c.codingPath, debugDescription: "not a hex Double bit pattern"))
        }
        value = Double(bitPattern: bits)
    }
    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(String(value.bitPattern, radix: 16))
    }
}

/// The items one shard covered: first ..< first + count of total.
public struct ShardItems: Codable, Sendable, Equatable {
    public var unit: String
    public var first: Int
    public var count: Int
    public var total: Int
}

/// What every partial result says about itself: which run it belongs to (`provenance`: the model and data by
/// SHA-256, the protocol and every option that changes a figure), which shard it is and what it covered.
public struct PartialHeader: Codable, Sendable {
    /// The layout of the `body`; a merge reads only its own.
    public static let currentFormat = 1
    /// The kind of result the merge produces ("perplexity", "rag_retrieval", "rag_answers", "layers").
    public var partialOf: String
    public var format: Int
    public var toolVersion: String
    public var shard: Shard
    public var provenance: [String: String]
    public var items: ShardItems

    enum CodingKeys: String, CodingKey {
        case partialOf = "partial_of", format = "partial_format", toolVersion = "quantkit_version", shard, provenance, items
    }

    public init(partialOf: String, shard: Shard, provenance: [String: String], items: ShardItems) {
        self.partialOf = partialOf
        format = PartialHeader.currentFormat
        toolVersion = ResultEnvelope.toolVersion
        self.shard = shard
        self.provenance = provenance
        self.items = items
    }
}

/// A partial result file: the header and the kind's body (`kind: partial` in the result envelope).
public struct PartialResult<Body: Codable & Sendable>: Codable, Sendable {
    public var header: PartialHeader
    public var body: Body

    public init(header: PartialHeader, body: Body) { self.header = header; self.body = body }

    enum CodingKeys: String, CodingKey { case header = "partial", body }

    public func write(to path: String) throws {
        try ResultEnvelope(kind: "partial").write(self, to: path)
    }

    public static func read(_ path: String) throws -> PartialResult<Body> {
        let data = try readFile(path)
        do { return try JSONDecoder().decode(PartialResult<Body>.self, from: data) } catch {
            throw QuantKitError(.format, "\(path): partial result is damaged (\(ShardMerge.describe(error)))")
        }
    }
}

/// Checks that partial results form one complete run, in shard order.
public enum ShardMerge {
    private struct Probe: Decodable {
        var kind: String?
        var partial: PartialHeader?
    }

    /// The header of a partial result file, with one clear line for anything else.
    public static func header(_ path: String) throws -> PartialHeader {
        let data = try readFile(path)
        let probe: Probe
        do { probe = try JSONDecoder().decode(Probe.self, from: data) } catch {
            throw QuantKitError(.format, "\(path): not a QuantKit partial result (\(describe(error)))")
        }
        guard probe.kind == "partial", let h = probe.partial else {
            throw QuantKitError(.input, "\(path): not a partial result (kind \(probe.kind.map { "\"\($0)\"" } ?? "missing")); merge reads the files that --shard runs write")
        }
        guard h.toolVersion == ResultEnvelope.toolVersion, h.format == PartialHeader.currentFormat else {
            throw QuantKitError(.input, "\(path): written by QuantKit \(h.toolVersion) (partial format \(h.format)); this is \(ResultEnvelope.toolVersion) (format \(PartialHeader.currentFormat)): rerun that shard with this version")
        }
        return h
    }

    /// The files ordered by shard index, after refusing a mix of runs, a duplicated or missing shard, or item
    /// ranges that do not tile the run.
    public static func order(_ paths: [String]) throws -> [(path: String, header: PartialHeader)] {
        guard !paths.isEmpty else { throw QuantKitError(.input, "merge: no partial results given") }
        let files = try paths.map { (path: $0, header: try header($0)) }
        let first = files[0]
        var byIndex: [Int: String] = [:]
        for f in files {
            let h = f.header
            if h.partialOf != first.header.partialOf {
                throw QuantKitError(.input, "\(f.path): a partial \(h.partialOf) result, but \(first.path) is a partial \(first.header.partialOf) result")
            }
            if h.shard.count != first.header.shard.count {
                throw QuantKitError(.input, "\(f.path): shard \(h.shard) of \(h.shard.count), but \(first.path) is one of \(first.header.shard.count)")
            }
            let keys = Set(h.provenance.keys).union(first.header.provenance.keys).sorted()
            if let k = keys.first(where: { h.provenance[$0] != first.header.provenance[$0] }) {
                throw QuantKitError(.input, "\(f.path): a shard of a different run than \(first.path): \(k) \(h.provenance[k] ?? "absent") vs \(first.header.provenance[k] ?? "absent")")
            }
            if let other = byIndex[h.shard.index] {
                throw QuantKitError(.input, "\(f.path): shard \(h.shard) is given twice (also \(other))")
            }
            byIndex[h.shard.index] = f.path
        }
        let n = first.header.shard.count
        let missing = (0..<n).filter { byIndex[$0] == nil }
        if !missing.isEmpty {
            throw QuantKitError(.input, "merge: shard\(missing.count > 1 ? "s" : "") \(missing.map(String.init).joined(separator: ", ")) of \(n) missing (0-based; given: \(byIndex.keys.sorted().map(String.init).joined(separator: ", ")))")
        }
        let ordered = files.sorted { $0.header.shard.index < $1.header.shard.index }
        var next = 0
        for f in ordered {
            let it = f.header.items
            guard it.first == next, it.total == first.header.items.total, it.unit == first.header.items.unit else {
                throw QuantKitError(.input, "\(f.path): covers \(it.unit) \(it.first)..<\(it.first + it.count) of \(it.total), but the shards before it end at \(next) of \(first.header.items.total)")
            }
            next += it.count
        }
        guard next == first.header.items.total else {
            throw QuantKitError(.input, "merge: the shards cover \(next) of \(first.header.items.total) \(first.header.items.unit)")
        }
        return ordered
    }

    /// A decoding error in one line.
    static func describe(_ error: Error) -> String {
        switch error {
        case DecodingError.dataCorrupted(let c), DecodingError.typeMismatch(_, let c), DecodingError.valueNotFound(_, let c):
            let path = c.codingPath.map(\.stringValue).joined(separator: ".")
            return (path.isEmpty ? "" : path + ": ") + c.debugDescription
        case DecodingError.keyNotFound(let k, let c):
            return "missing key \((c.codingPath + [k]).map(\.stringValue).joined(separator: "."))"
        default:
            return "\(error)"
        }
    }
}
