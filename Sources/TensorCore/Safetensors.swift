import Foundation

/// Why a safetensors file was rejected. Every case names the file, and the tensor where there is one.
public enum SafetensorsError: Error, CustomStringConvertible, Equatable, Sendable {
    case truncated(file: String, detail: String)
    case headerTooLarge(file: String, headerLength: UInt64, fileSize: Int)
    case badJSON(file: String, detail: String)
    case unknownDType(file: String, tensor: String, dtype: String)
    case badEntry(file: String, tensor: String, detail: String)
    case offsetsOutOfRange(file: String, tensor: String, end: Int, dataSize: Int)
    case sizeMismatch(file: String, tensor: String, expected: Int, actual: Int)
    case overlap(file: String, first: String, second: String)
    case missingTensor(file: String, tensor: String)
    case badIndex(file: String, detail: String)

    public var description: String { OneLine.text(rawDescription) }

    private var rawDescription: String {
        switch self {
        case let .truncated(f, d): return "\(f): truncated safetensors file (\(d))"
        case let .headerTooLarge(f, n, s): return "\(f): header length \(n) exceeds what the file holds (\(s) bytes)"
        case let .badJSON(f, d): return "\(f): safetensors header is not valid JSON (\(d))"
        case let .unknownDType(f, t, d): return "\(f): tensor '\(t)' has unknown dtype '\(d)'"
        case let .badEntry(f, t, d): return "\(f): tensor '\(t)': \(d)"
        case let .offsetsOutOfRange(f, t, e, s): return "\(f): tensor '\(t)' ends at byte \(e), past the data area (\(s) bytes)"
        case let .sizeMismatch(f, t, e, a): return "\(f): tensor '\(t)' occupies \(a) bytes but dtype x shape needs \(e)"
        case let .overlap(f, a, b): return "\(f): tensors '\(a)' and '\(b)' overlap"
        case let .missingTensor(f, t): return "\(f): no tensor named '\(t)'"
        case let .badIndex(f, d): return "\(f): bad shard index (\(d))"
        }
    }
}

public struct TensorInfo: Sendable, Equatable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    public let dataRange: Range<Int>  // relative to the data area
}

/// One safetensors file, mmapped. Tensors are zero-copy views into the mapping.
public final class SafetensorsFile: @unchecked Sendable {
    public static let maxHeaderBytes: UInt64 = 100 * 1024 * 1024

    public let path: String
    public let metadata: [String: String]
    public let infos: [String: TensorInfo]
    public let names: [String]  // in file order
    private let file: MappedFile
    private let dataStart: Int

    public init(path: String) throws {
        self.path = path
        let file = try MappedFile(path: path)
        self.file = file
        guard file.size >= 8 else {
            throw SafetensorsError.truncated(file: path, detail: "\(file.size) bytes, the 8-byte header length is missing")
        }
        let n = file.base.loadUnaligned(as: UInt64.self).littleEndian
        guard n <= UInt64(file.size - 8), n <= SafetensorsFile.maxHeaderBytes else {
            throw SafetensorsError.headerTooLarge(file: path, headerLength: n, fileSize: file.size)
        }
        let headerData = Data(bytes: file.base + 8, count: Int(n))
        dataStart = 8 + Int(n)
        let dataSize = file.size - dataStart
        let json: Any
        do { json = try JSONSerialization.jsonObject(with: headerData) } catch {
            throw SafetensorsError.badJSON(file: path, detail: "\(error.localizedDescription)")
        }
        guard let dict = json as? [String: Any] else {
            throw SafetensorsError.badJSON(file: path, detail: "top level is not an object")
        }
        var meta: [String: String] = [:]
        var infos: [String: TensorInfo] = [:]
        for (name, value) in dict {
            if name == "__metadata__" {
                guard let m = value as? [String: Any] else {
                    throw SafetensorsError.badJSON(file: path, detail: "__metadata__ is not an object")
                }
                for (k, v) in m {
                    guard let s = v as? String else {
                        throw SafetensorsError.badJSON(file: path, detail: "__metadata__ value for '\(k)' is not a string")
                    }
                    meta[k] = s
                }
                continue
            }
            guard let entry = value as? [String: Any] else {
                throw SafetensorsError.badEntry(file: path, tensor: name, detail: "entry is not an object")
            }
            guard let dtypeName = entry["dtype"] as? String else {
                throw SafetensorsError.badEntry(file: path, tensor: name, detail: "missing dtype")
            }
            guard let dtype = DType(rawValue: dtypeName) else {
                throw SafetensorsError.unknownDType(file: path, tensor: name, dtype: dtypeName)
            }
            guard let shapeAny = entry["shape"] as? [Any], let shape = SafetensorsFile.ints(shapeAny), shape.allSatisfy({ $0 >= 0 }) else {
                throw SafetensorsError.badEntry(file: path, tensor: name, detail: "shape is not a list of non-negative integers")
            }
            guard let offAny = entry["data_offsets"] as? [Any], let offs = SafetensorsFile.ints(offAny), offs.count == 2,
                  offs[0] >= 0, offs[0] <= offs[1] else {
                throw SafetensorsError.badEntry(file: path, tensor: name, detail: "data_offsets must be [begin, end] with 0 <= begin <= end")
            }
            guard offs[1] <= dataSize else {
                throw SafetensorsError.offsetsOutOfRange(file: path, tensor: name, end: offs[1], dataSize: dataSize)
            }
            var count = 1
            for d in shape {
                let (p, o) = count.multipliedReportingOverflow(by: d)
                guard !o else { throw SafetensorsError.badEntry(file: path, tensor: name, detail: "shape overflows") }
                count = p
            }
            let expected = count * dtype.byteSize
            guard expected == offs[1] - offs[0] else {
                throw SafetensorsError.sizeMismatch(file: path, tensor: name, expected: expected, actual: offs[1] - offs[0])
            }
            infos[name] = TensorInfo(name: name, dtype: dtype, shape: shape, dataRange: offs[0]..<offs[1])
        }
        let ordered = infos.values.sorted { ($0.dataRange.lowerBound, $0.name) < ($1.dataRange.lowerBound, $1.name) }
        for (a, b) in zip(ordered, ordered.dropFirst()) where b.dataRange.lowerBound < a.dataRange.upperBound && !a.dataRange.isEmpty && !b.dataRange.isEmpty {
            throw SafetensorsError.overlap(file: path, first: a.name, second: b.name)
        }
        self.metadata = meta
        self.infos = infos
        self.names = ordered.map(\.name)
    }

    private static func ints(_ a: [Any]) -> [Int]? {
        var out: [Int] = []
        for v in a {
            guard let num = v as? NSNumber else { return nil }
            let d = num.doubleValue
            guard d >= -9.0e15, d <= 9.0e15, d == d.rounded() else { return nil }
            out.append(Int(d))
        }
        return out
    }

    /// Zero-copy tensor view.
    public func tensor(_ name: String) throws -> Tensor {
        guard let info = infos[name] else { throw SafetensorsError.missingTensor(file: path, tensor: name) }
        let storage = TensorStorage(mapping: file, offset: dataStart + info.dataRange.lowerBound, byteCount: info.dataRange.count)
        return Tensor(dtype: info.dtype, shape: info.shape, storage: storage)
    }
}

/// A checkpoint: a single .safetensors file, a directory holding model.safetensors, or a sharded directory
/// with model.safetensors.index.json.
public final class SafetensorsCheckpoint: @unchecked Sendable {
    public let files: [SafetensorsFile]
    private let owner: [String: Int]

    public init(path: String) throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw QuantKitError(.io, "\(path): no such file or directory")
        }
        var files: [SafetensorsFile] = []
        var owner: [String: Int] = [:]
        if !isDir.boolValue {
            files = [try SafetensorsFile(path: path)]
        } else {
            let dir = URL(fileURLWithPath: path)
            let index = dir.appendingPathComponent("model.safetensors.index.json").path
            if FileManager.default.fileExists(atPath: index) {
                let data = try readFile(index)
                guard let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                      let map = obj["weight_map"] as? [String: String] else {
                    throw SafetensorsError.badIndex(file: index, detail: "expected an object with a weight_map of name -> file")
                }
                var fileIndex: [String: Int] = [:]
                for shard in Set(map.values).sorted() {
                    fileIndex[shard] = files.count
                    files.append(try SafetensorsFile(path: dir.appendingPathComponent(shard).path))
                }
                for (name, shard) in map {
                    let f = files[fileIndex[shard]!]
                    guard f.infos[name] != nil else {
                        throw SafetensorsError.badIndex(file: index, detail: "'\(name)' is mapped to \(shard), which does not contain it")
                    }
                    owner[name] = fileIndex[shard]!
                }
            } else {
                let single = dir.appendingPathComponent("model.safetensors").path
                if FileManager.default.fileExists(atPath: single) {
                    files = [try SafetensorsFile(path: single)]
                } else {
                    let all = (try? FileManager.default.contentsOfDirectory(atPath: path))?.filter { $0.hasSuffix(".safetensors") }.sorted() ?? []
                    guard !all.isEmpty else { throw QuantKitError(.io, "\(path): no .safetensors files in directory") }
                    files = try all.map { try SafetensorsFile(path: dir.appendingPathComponent($0).path) }
                }
            }
        }
        if owner.isEmpty {
            for (i, f) in files.enumerated() { for n in f.names { owner[n] = i } }
        }
        self.files = files
        self.owner = owner
    }

    public var names: [String] { owner.keys.sorted() }
    public func info(_ name: String) -> TensorInfo? { owner[name].flatMap { files[$0].infos[name] } }
    public func contains(_ name: String) -> Bool { owner[name] != nil }
    /// The file holding tensor `name`.
    public func path(of name: String) -> String? { owner[name].map { files[$0].path } }
    public var metadata: [String: String] { files.reduce(into: [:]) { $0.merge($1.metadata) { a, _ in a } } }

    public func tensor(_ name: String) throws -> Tensor {
        guard let i = owner[name] else { throw SafetensorsError.missingTensor(file: files.first?.path ?? "checkpoint", tensor: name) }
        return try files[i].tensor(name)
    }
}

public enum SafetensorsWriter {
    /// Writes tensors (in the given order) and string metadata atomically: temporary file, then rename.
    public static func write(_ tensors: [(String, Tensor)], metadata: [String: String] = [:], to path: String) throws {
        var header: [String: Any] = [:]
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        var offset = 0
        for (name, t) in tensors {
            header[name] = ["dtype": t.dtype.rawValue, "shape": t.shape, "data_offsets": [offset, offset + t.byteCount]] as [String: Any]
            offset += t.byteCount
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while json.count % 8 != 0 { json.append(0x20) }  // pad with spaces so the data area is 8-aligned
        try AtomicFile.write(to: path) { handle in
            var len = UInt64(json.count).littleEndian
            try handle.write(contentsOf: Data(bytes: &len, count: 8))
            try handle.write(contentsOf: json)
            for (_, t) in tensors where t.byteCount > 0 {
                try handle.write(contentsOf: Data(bytesNoCopy: UnsafeMutableRawPointer(mutating: t.raw), count: t.byteCount, deallocator: .none))
            }
        }
    }
}
