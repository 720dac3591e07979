import Foundation

// GGUF, llama.cpp's single-file container (ggml's docs/gguf.md): little-endian header "GGUF", version (2 or 3),
// tensor count, metadata count; typed key/value metadata; tensor infos (name, dims innermost first, ggml type,
// offset into the data area); the data area starts at the first multiple of `general.alignment` (default 32)
// after the infos. Every count, length and offset is checked against the file before it is used.

/// ggml tensor types by their on-disk id. Sizes: elements per block and bytes per block (ggml's type traits).
public enum GGMLType: UInt32, Sendable, CaseIterable {
    case f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8, q8_1 = 9
    case q2_K = 10, q3_K = 11, q4_K = 12, q5_K = 13, q6_K = 14, q8_K = 15
    case iq2_xxs = 16, iq2_xs = 17, iq3_xxs = 18, iq1_s = 19, iq4_nl = 20, iq3_s = 21, iq2_s = 22, iq4_xs = 23
    case i8 = 24, i16 = 25, i32 = 26, i64 = 27, f64 = 28, iq1_m = 29, bf16 = 30, tq1_0 = 34, tq2_0 = 35, mxfp4 = 39

    /// llama.cpp's spelling (llama-quantize and gguf-py print these).
    public var name: String {
        switch self {
        case .f32: return "F32"
        case .f16: return "F16"
        case .bf16: return "BF16"
        case .f64: return "F64"
        case .i8: return "I8"
        case .i16: return "I16"
        case .i32: return "I32"
        case .i64: return "I64"
        case .mxfp4: return "MXFP4"
        default: return String(describing: self).uppercased()
        }
    }

    /// Elements per block.
    public var blockSize: Int {
        switch self {
        case .f32, .f16, .bf16, .f64, .i8, .i16, .i32, .i64: return 1
        case .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q8_1, .iq4_nl, .mxfp4: return 32
        default: return 256
        }
    }

    /// Bytes per block.
    public var blockBytes: Int {
        switch self {
        case .f32, .i32: return 4
        case .f16, .bf16, .i16: return 2
        case .f64, .i64: return 8
        case .i8: return 1
        case .q4_0: return 18
        case .q4_1: return 20
        case .q5_0: return 22
        case .q5_1: return 24
        case .q8_0: return 34
        case .q8_1: return 36
        case .q2_K: return 84
        case .q3_K: return 110
        case .q4_K: return 144
        case .q5_K: return 176
        case .q6_K: return 210
        case .q8_K: return 292
        case .iq2_xxs: return 66
        case .iq2_xs: return 74
        case .iq3_xxs: return 98
        case .iq1_s: return 50
        case .iq4_nl: return 18
        case .iq3_s: return 110
        case .iq2_s: return 82
        case .iq4_xs: return 136
        case .iq1_m: return 56
        case .tq1_0: return 54
        case .tq2_0: return 66
        case .mxfp4: return 17
        }
    }

    /// Bytes of one row of `elements` (a multiple of blockSize).
    public func rowBytes(_ elements: Int) -> Int { elements / blockSize * blockBytes }

    /// Storage bits per weight, scales included.
    public var bitsPerWeight: Double { Double(blockBytes * 8) / Double(blockSize) }

    /// Looks a type up by llama.cpp's name ("Q4_0", "q4_k", "F16"), case-insensitively.
    public init?(name: String) {
        guard let t = GGMLType.allCases.first(where: { $0.name.lowercased() == name.lowercased() }) else { return nil }
        self = t
    }
}

/// The value types of GGUF metadata, by their on-disk id.
public enum GGUFValueType: UInt32, Sendable {
    case uint8 = 0, int8 = 1, uint16 = 2, int16 = 3, uint32 = 4, int32 = 5, float32 = 6, bool = 7, string = 8
    case array = 9, uint64 = 10, int64 = 11, float64 = 12

    /// Fixed byte size; nil for string and array.
    var fixedSize: Int? {
        switch self {
        case .uint8, .int8, .bool: return 1
        case .uint16, .int16: return 2
        case .uint32, .int32, .float32: return 4
        case .uint64, .int64, .float64: return 8
        case .string, .array: return nil
        }
    }
}

/// One metadata value, keeping its stored type (a writer must give it back unchanged).
public indirect enum GGUFValue: Sendable, Equatable {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32)
    case uint64(UInt64), int64(Int64), float32(Float), float64(Double), bool(Bool), string(String)
    case array(GGUFValueType, [GGUFValue])

    public var type: GGUFValueType {
        switch self {
        case .uint8: return .uint8
        case .int8: return .int8
        case .uint16: return .uint16
        case .int16: return .int16
        case .uint32: return .uint32
        case .int32: return .int32
        case .uint64: return .uint64
        case .int64: return .int64
        case .float32: return .float32
        case .float64: return .float64
        case .bool: return .bool
        case .string: return .string
        case .array: return .array
        }
    }

    /// Any integer value (bools are not integers here); nil when it does not fit an Int.
    public var int: Int? {
        switch self {
        case let .uint8(v): return Int(v)
        case let .int8(v): return Int(v)
        case let .uint16(v): return Int(v)
        case let .int16(v): return Int(v)
        case let .uint32(v): return Int(v)
        case let .int32(v): return Int(v)
        case let .uint64(v): return Int(exactly: v)
        case let .int64(v): return Int(v)
        default: return nil
        }
    }

    /// Any numeric value as Double.
    public var double: Double? {
        switch self {
        case let .float32(v): return Double(v)
        case let .float64(v): return v
        default: return int.map(Double.init)
        }
    }

    /// The value's bytes as GGUF stores them (without the type tag).
    public func append(to out: inout Data) {
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        switch self {
        case let .uint8(x): put(x)
        case let .int8(x): put(x)
        case let .uint16(x): put(x)
        case let .int16(x): put(x)
        case let .uint32(x): put(x)
        case let .int32(x): put(x)
        case let .uint64(x): put(x)
        case let .int64(x): put(x)
        case let .float32(x): put(x.bitPattern)
        case let .float64(x): put(x.bitPattern)
        case let .bool(x): put(UInt8(x ? 1 : 0))
        case let .string(x): let b = Array(x.utf8); put(UInt64(b.count)); out.append(contentsOf: b)
        case let .array(t, items): put(t.rawValue); put(UInt64(items.count)); for i in items { i.append(to: &out) }
        }
    }

    public var bool: Bool? { if case let .bool(b) = self { return b } else { return nil } }
    public var string: String? { if case let .string(s) = self { return s } else { return nil } }
    public var array: [GGUFValue]? { if case let .array(_, a) = self { return a } else { return nil } }
    public var strings: [String]? { array?.compactMap(\.string).nilUnlessCount(array?.count) }
    public var doubles: [Double]? { array?.compactMap(\.double).nilUnlessCount(array?.count) }
    public var ints: [Int]? { array?.compactMap(\.int).nilUnlessCount(array?.count) }
}

extension GGUFValue: CustomStringConvertible {
    /// The value as text: numbers and strings plainly, an array as its length and element type.
    public var description: String {
        switch self {
        case let .string(x): return x
        case let .bool(x): return String(x)
        case let .float32(x): return String(x)
        case let .float64(x): return String(x)
        case let .array(t, items): return "[\(items.count) x \(t)]"
        default: return int.map(String.init) ?? "\(type)"
        }
    }
}

extension Array {
    fileprivate func nilUnlessCount(_ n: Int?) -> [Element]? { count == n ? self : nil }
}

/// One tensor's entry: `dims` as stored (innermost first, ggml's ne), `shape` row-major (outermost first).
public struct GGUFTensorInfo: Sendable, Equatable {
    public let name: String
    public let type: GGMLType
    public let dims: [Int]
    /// Offset into the data area.
    public let offset: Int
    public let byteCount: Int
    public var shape: [Int] { dims.reversed() }
    public var elementCount: Int { dims.reduce(1, *) }
    /// Elements per row (ne[0]) and the number of rows (the product of the other dims).
    public var rowLength: Int { dims.first ?? 1 }
    public var rowCount: Int { dims.dropFirst().reduce(1, *) }
}

/// One GGUF file, mmapped and validated; tensor data are views into the mapping.
public final class GGUFFile: @unchecked Sendable {
    public let path: String
    public let version: Int
    public let alignment: Int
    /// Keys in file order, and their values.
    public let keys: [String]
    public let metadata: [String: GGUFValue]
    /// Tensors in file order.
    public let tensors: [GGUFTensorInfo]
    public let tensorIndex: [String: Int]
    private let file: MappedFile
    public let dataStart: Int

    public static func isGGUF(_ path: String) -> Bool {
        guard let h = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? h.close() }
        return (try? h.read(upToCount: 4)) == Data("GGUF".utf8)
    }

    public init(path: String) throws {
        self.path = path
        let file = try MappedFile(path: path)
        self.file = file
        var r = ByteReader(base: file.base, size: file.size, path: path)
        guard file.size >= 4, r.peekMagic() == "GGUF" else {
            throw QuantKitError(.format, "\(path): not a GGUF file (the first 4 bytes are not 'GGUF')")
        }
        r.offset = 4
        let version = try r.u32("version")
        guard version == 2 || version == 3 else {
            let swapped = version.byteSwapped
            let why = (swapped == 2 || swapped == 3) ? "a big-endian file, which QuantKit does not read" : "only versions 2 and 3 are read"
            throw QuantKitError(.format, "\(path): GGUF version \(version) (\(why))")
        }
        self.version = Int(version)
        let tensorCount = try r.u64("tensor count")
        let kvCount = try r.u64("metadata count")
        // Each key/value needs at least 12 bytes and each tensor info at least 24: counts past that are lies.
        guard kvCount <= UInt64(file.size / 12), tensorCount <= UInt64(file.size / 24) else {
            throw QuantKitError(.format, "\(path): header claims \(kvCount) metadata keys and \(tensorCount) tensors, more than a \(file.size)-byte file can hold")
        }
        var keys: [String] = [], meta: [String: GGUFValue] = [:]
        for i in 0..<Int(kvCount) {
            let key = try r.string("metadata key #\(i)")
            let typeId = try r.u32("type of '\(key)'")
            guard let type = GGUFValueType(rawValue: typeId) else {
                throw QuantKitError(.format, "\(path): metadata '\(key)' has unknown value type \(typeId)")
            }
            let value = try r.value(type, key: key, depth: 0)
            guard meta[key] == nil else { throw QuantKitError(.format, "\(path): metadata key '\(key)' appears twice") }
            keys.append(key)
            meta[key] = value
        }
        self.keys = keys
        metadata = meta
        var align = 32
        if let a = meta["general.alignment"] {
            guard let v = a.int, v > 0, v & (v - 1) == 0, v <= 1 << 20 else {
                throw QuantKitError(.format, "\(path): general.alignment must be a power of two, got \(a)")
            }
            align = v
        }
        alignment = align
        struct Raw { let name: String; let type: GGMLType; let dims: [Int]; let offset: UInt64 }
        var raws: [Raw] = []
        for i in 0..<Int(tensorCount) {
            let name = try r.string("name of tensor #\(i)")
            let nDims = try r.u32("dimension count of '\(name)'")
            guard (1...4).contains(nDims) else {
                throw QuantKitError(.format, "\(path): tensor '\(name)' has \(nDims) dimensions (1 to 4 allowed)")
            }
            var dims: [Int] = []
            for d in 0..<Int(nDims) {
                let v = try r.u64("dimension \(d) of '\(name)'")
                guard v <= UInt64(Int32.max) else {
                    throw QuantKitError(.format, "\(path): tensor '\(name)' dimension \(d) is \(v), past any real tensor")
                }
                dims.append(Int(v))
            }
            let typeId = try r.u32("type of '\(name)'")
            guard let type = GGMLType(rawValue: typeId) else {
                throw QuantKitError(.format, "\(path): tensor '\(name)' has unknown ggml type \(typeId)")
            }
            raws.append(Raw(name: name, type: type, dims: dims, offset: try r.u64("offset of '\(name)'")))
        }
        let start = (r.offset + align - 1) / align * align
        dataStart = start
        let dataSize = max(0, file.size - start)
        var infos: [GGUFTensorInfo] = [], index: [String: Int] = [:]
        for raw in raws {
            let (name, type, dims) = (raw.name, raw.type, raw.dims)
            guard index[name] == nil else { throw QuantKitError(.format, "\(path): tensor '\(name)' appears twice") }
            guard dims[0] % type.blockSize == 0 else {
                throw QuantKitError(.format, "\(path): tensor '\(name)' rows have \(dims[0]) elements, not a multiple of \(type.name)'s block of \(type.blockSize)")
            }
            var elements = 1
            for d in dims {
                let (p, o) = elements.multipliedReportingOverflow(by: d)
                guard !o, p <= Int(Int32.max) * 16 else {
                    throw QuantKitError(.format, "\(path): tensor '\(name)' has \(dims) elements, too many")
                }
                elements = p
            }
            let bytes = elements / type.blockSize * type.blockBytes
            guard raw.offset % UInt64(align) == 0 else {
                throw QuantKitError(.format, "\(path): tensor '\(name)' offset \(raw.offset) is not a multiple of the alignment \(align)")
            }
            guard raw.offset <= UInt64(dataSize), bytes <= dataSize - Int(raw.offset) else {
                // Offset and size are named apart: their sum can pass UInt64 in a lying file.
                throw QuantKitError(.format, "\(path): tensor '\(name)' (\(type.name) \(dims.reversed())) needs \(bytes) bytes at offset \(raw.offset) of the data area, which holds \(dataSize) (truncated file?)")
            }
            index[name] = infos.count
            infos.append(GGUFTensorInfo(name: name, type: type, dims: dims, offset: Int(raw.offset), byteCount: bytes))
        }
        let sorted = infos.filter { $0.byteCount > 0 }.sorted { $0.offset < $1.offset }
        for (a, b) in zip(sorted, sorted.dropFirst()) where a.offset + a.byteCount > b.offset {
            throw QuantKitError(.format, "\(path): tensors '\(a.name)' and '\(b.name)' overlap")
        }
        tensors = infos
        tensorIndex = index
    }

    public func info(_ name: String) -> GGUFTensorInfo? { tensorIndex[name].map { tensors[$0] } }

    /// SHA-256 of the metadata whose keys start with `prefix`, in key order (e.g. "tokenizer." identifies the
    /// vocabulary whatever the weights are).
    public func metadataDigest(prefix: String) -> String {
        var d = Data()
        for k in keys.sorted() where k.hasPrefix(prefix) {
            d.append(contentsOf: Array(k.utf8)); d.append(0)
            withUnsafeBytes(of: metadata[k]!.type.rawValue.littleEndian) { d.append(contentsOf: $0) }
            metadata[k]!.append(to: &d)
        }
        return Digest.sha256(d)
    }

    /// How many tensors of each type the file stores, by llama.cpp's type names.
    public var typeCounts: [String: Int] { tensors.reduce(into: [:]) { $0[$1.type.name, default: 0] += 1 } }

    /// The tensor's bytes inside the mapping (valid while this file lives).
    public func bytes(_ info: GGUFTensorInfo) -> UnsafeRawPointer { file.base + dataStart + info.offset }

    /// A zero-copy view of an F32/F16/BF16 tensor, shape row-major.
    public func floatTensor(_ name: String) throws -> Tensor {
        guard let i = info(name) else { throw QuantKitError(.format, "\(path): no tensor named '\(name)'") }
        let dtype: DType
        switch i.type {
        case .f32: dtype = .f32
        case .f16: dtype = .f16
        case .bf16: dtype = .bf16
        default: throw QuantKitError(.unsupported, "\(path): tensor '\(name)' is \(i.type.name), not a float type")
        }
        return Tensor(dtype: dtype, shape: i.shape,
                      storage: TensorStorage(mapping: file, offset: dataStart + i.offset, byteCount: i.byteCount))
    }

    /// A typed metadata lookup that names the key and the file when it is missing or of the wrong kind.
    public func require<T>(_ key: String, _ what: String, _ get: (GGUFValue) -> T?) throws -> T {
        guard let v = metadata[key] else { throw QuantKitError(.format, "\(path): metadata key '\(key)' is missing") }
        guard let t = get(v) else { throw QuantKitError(.format, "\(path): metadata key '\(key)' must be \(what), got \(v.type)") }
        return t
    }
}

/// Bounds-checked little-endian reads over the mapping.
private struct ByteReader {
    let base: UnsafeRawPointer
    let size: Int
    let path: String
    var offset = 0

    func peekMagic() -> String { String(decoding: UnsafeRawBufferPointer(start: base, count: min(4, size)), as: UTF8.self) }

    mutating func need(_ n: Int, _ what: String) throws {
        guard n >= 0, n <= size - offset else {
            throw QuantKitError(.format, "\(path): truncated GGUF file: \(what) needs \(n) bytes at offset \(offset), the file has \(size)")
        }
    }
    mutating func fixed<T: FixedWidthInteger>(_ t: T.Type, _ what: String) throws -> T {
        try need(MemoryLayout<T>.size, what)
        let v = T(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: T.self))
        offset += MemoryLayout<T>.size
        return v
    }
    mutating func u32(_ what: String) throws -> UInt32 { try fixed(UInt32.self, what) }
    mutating func u64(_ what: String) throws -> UInt64 { try fixed(UInt64.self, what) }
    mutating func string(_ what: String) throws -> String {
        let n = try u64("length of " + what)
        guard n <= UInt64(size - offset) else {
            throw QuantKitError(.format, "\(path): truncated GGUF file: \(what) claims \(n) bytes at offset \(offset), the file has \(size)")
        }
        let s = String(decoding: UnsafeRawBufferPointer(start: base + offset, count: Int(n)), as: UTF8.self)
        offset += Int(n)
        return s
    }
    mutating func value(_ type: GGUFValueType, key: String, depth: Int) throws -> GGUFValue {
        let what = "value of '\(key)'"
        switch type {
        case .uint8: return .uint8(try fixed(UInt8.self, what))
        case .int8: return .int8(try fixed(Int8.self, what))
        case .uint16: return .uint16(try fixed(UInt16.self, what))
        case .int16: return .int16(try fixed(Int16.self, what))
        case .uint32: return .uint32(try fixed(UInt32.self, what))
        case .int32: return .int32(try fixed(Int32.self, what))
        case .uint64: return .uint64(try fixed(UInt64.self, what))
        case .int64: return .int64(try fixed(Int64.self, what))
        case .float32: return .float32(Float(bitPattern: try fixed(UInt32.self, what)))
        case .float64: return .float64(Double(bitPattern: try fixed(UInt64.self, what)))
        case .bool:
            let b = try fixed(UInt8.self, what)
            guard b <= 1 else { throw QuantKitError(.format, "\(path): metadata '\(key)' is a bool stored as \(b)") }
            return .bool(b == 1)
        case .string: return .string(try string(what))
        case .array:
            guard depth == 0 else { throw QuantKitError(.format, "\(path): metadata '\(key)' nests arrays, which QuantKit does not read") }
            let et = try u32("element type of '\(key)'")
            guard let elementType = GGUFValueType(rawValue: et) else {
                throw QuantKitError(.format, "\(path): metadata '\(key)' has unknown array element type \(et)")
            }
            let n = try u64("length of '\(key)'")
            // Every element takes at least its fixed size (8 bytes for a string's length).
            let minSize = elementType.fixedSize ?? 8
            guard n <= UInt64((size - offset) / minSize) else {
                throw QuantKitError(.format, "\(path): truncated GGUF file: array '\(key)' claims \(n) elements at offset \(offset), the file has \(size) bytes")
            }
            var items: [GGUFValue] = []
            items.reserveCapacity(Int(n))
            for _ in 0..<Int(n) { items.append(try value(elementType, key: key, depth: depth + 1)) }
            return .array(elementType, items)
        }
    }
}

/// Writes a GGUF v3 file atomically (temporary file, then rename): metadata in the given order, then tensor
/// infos and data, each tensor at a multiple of the alignment (32).
public struct GGUFWriter {
    public struct Entry {
        public let name: String
        public let type: GGMLType
        /// Row-major shape (outermost first); written innermost first as ggml expects.
        public let shape: [Int]
        public let data: Data
        public init(name: String, type: GGMLType, shape: [Int], data: Data) {
            self.name = name; self.type = type; self.shape = shape; self.data = data
        }
    }
    public var metadata: [(String, GGUFValue)] = []
    public var tensors: [Entry] = []
    public let alignment = 32

    public init() {}

    public mutating func set(_ key: String, _ value: GGUFValue) {
        if let i = metadata.firstIndex(where: { $0.0 == key }) { metadata[i].1 = value } else { metadata.append((key, value)) }
    }

    /// Adds a tensor after checking that its bytes match its type and shape.
    public mutating func add(_ e: Entry) throws {
        guard let inner = e.shape.last, inner % e.type.blockSize == 0,
              e.data.count == e.shape.reduce(1, *) / e.type.blockSize * e.type.blockBytes else {
            throw QuantKitError(.shape, "GGUF export: tensor '\(e.name)' has \(e.data.count) bytes, which do not hold \(e.type.name) \(e.shape)")
        }
        tensors.append(e)
    }

    public func serialized() -> Data {
        var out = Data()
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        func putString(_ s: String) { let b = Array(s.utf8); put(UInt64(b.count)); out.append(contentsOf: b) }
        out.append(contentsOf: Array("GGUF".utf8))
        put(UInt32(3))
        put(UInt64(tensors.count))
        put(UInt64(metadata.count))
        for (k, v) in metadata { putString(k); put(v.type.rawValue); v.append(to: &out) }
        var offset = 0
        for t in tensors {
            putString(t.name)
            put(UInt32(t.shape.count))
            for d in t.shape.reversed() { put(UInt64(d)) }
            put(t.type.rawValue)
            put(UInt64(offset))
            offset += (t.data.count + alignment - 1) / alignment * alignment
        }
        func pad() { while out.count % alignment != 0 { out.append(0) } }
        pad()
        for t in tensors { out.append(t.data); pad() }
        return out
    }

    public func write(to path: String) throws { try AtomicFile.write(serialized(), to: path) }
}
