import Foundation
import Kernels
import TensorCore

/// Where weights come from: a checkpoint (safetensors), or tensors held in memory (llama2.c, tests).
public protocol WeightSource {
    func tensor(_ name: String) throws -> Tensor
    func contains(_ name: String) -> Bool
}

extension SafetensorsCheckpoint: WeightSource {}

/// In-memory weights by HF name.
public final class TensorDictionary: WeightSource, @unchecked Sendable {
    public private(set) var tensors: [String: Tensor]
    public let label: String
    public init(_ tensors: [String: Tensor], label: String = "weights") { self.tensors = tensors; self.label = label }
    public func tensor(_ name: String) throws -> Tensor {
        guard let t = tensors[name] else { throw QuantKitError(.format, "\(label): no tensor named '\(name)'") }
        return t
    }
    public func contains(_ name: String) -> Bool { tensors[name] != nil }
    public var names: [String] { tensors.keys.sorted() }
    public func set(_ name: String, _ t: Tensor) { tensors[name] = t }
}
