import Foundation
import TensorCore

/// Every trainable tensor of a run in one contiguous buffer, with its gradient beside it (what the optimizer
/// walks), addressed by name.
public final class ParameterSet<T: TrainScalar> {
    /// What a tensor is, for the optimizer: weight decay applies to matrices only; scales may take their own rate.
    public enum Kind: String, Sendable { case matrix, vector, scales }
    public struct Entry: Sendable {
        public let name: String
        public let shape: [Int]
        public let offset: Int
        public let count: Int
        public let kind: Kind
        public let trainable: Bool
    }

    public private(set) var entries: [Entry] = []
    private var byName: [String: Int] = [:]
    public let count: Int
    public let values: UnsafeMutablePointer<T>
    public let grads: UnsafeMutablePointer<T>

    public init(_ specs: [(name: String, shape: [Int], kind: Kind, trainable: Bool)]) {
        var offset = 0
        for s in specs {
            let n = s.shape.reduce(1, *)
            byName[s.name] = entries.count
            entries.append(Entry(name: s.name, shape: s.shape, offset: offset, count: n, kind: s.kind, trainable: s.trainable))
            offset += n
        }
        count = offset
        values = .allocate(capacity: max(1, count)); values.initialize(repeating: 0, count: max(1, count))
        grads = .allocate(capacity: max(1, count)); grads.initialize(repeating: 0, count: max(1, count))
    }

    deinit { values.deallocate(); grads.deallocate() }

    public func entry(_ name: String) -> Entry? { byName[name].map { entries[$0] } }
    public func contains(_ name: String) -> Bool { byName[name] != nil }

    /// The values of a tensor (it must exist: names come from the layout that built the set).
    public func value(_ name: String) -> UnsafeMutablePointer<T> { values + entries[byName[name]!].offset }
    public func grad(_ name: String) -> UnsafeMutablePointer<T> { grads + entries[byName[name]!].offset }

    public func array(_ name: String) -> [T] {
        let e = entries[byName[name]!]
        return Array(UnsafeBufferPointer(start: values + e.offset, count: e.count))
    }

    public func set(_ name: String, _ v: [T]) throws {
        guard let i = byName[name] else { throw QuantKitError(.input, "no trainable tensor named \(name)") }
        let e = entries[i]
        guard v.count == e.count else { throw QuantKitError(.shape, "\(name): \(v.count) values for \(e.shape)") }
        v.withUnsafeBufferPointer { (values + e.offset).update(from: $0.baseAddress!, count: e.count) }
    }

    public func zeroGradients() { grads.update(repeating: 0, count: max(1, count)) }
}
