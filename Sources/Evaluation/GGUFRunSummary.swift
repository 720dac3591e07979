import Foundation
import Models
import TensorCore

/// The `gguf` object of a result: what a GGUF model stores and the activation contract it ran under.
public struct GGUFRunSummary: Codable, Sendable {
    /// "llamacpp" (inputs converted as llama.cpp's CPU backend does) or "float" (weight-only).
    public var activations: GGUFActivations
    /// Tensor count per stored type, e.g. {"Q4_K": 96, "Q6_K": 17, "F32": 65}.
    public var tensorTypes: [String: Int]
    /// Per linear weight type, the format its inputs were converted to ("q8_0", "q8_K", "f16", ... "f32": none).
    public var activationFormats: [String: String]
    /// general.file_type as llama.cpp numbers it (llama_ftype), when present.
    public var fileType: Int?

    enum CodingKeys: String, CodingKey {
        case activations, tensorTypes = "tensor_types", activationFormats = "activation_formats", fileType = "file_type"
    }

    /// nil when the model was not read from a GGUF file.
    public init?(model m: LlamaModel, path: String) throws {
        guard let (contract, formats) = GGUFLlama.describe(m) else { return nil }
        let file = try GGUFFile(path: path)
        activations = contract
        tensorTypes = file.typeCounts
        activationFormats = formats
        fileType = file.metadata["general.file_type"]?.int
    }

    /// The `activations` line of a report.
    public var activationsLabel: String {
        switch activations {
        case .float: return "float32 (weight-only: GGUF weights decoded, activations not converted)"
        case .llamacpp:
            let pairs = activationFormats.sorted { $0.key < $1.key }.map { "\($0.key) x \($0.value.uppercased())" }
            return "llama.cpp contract (" + pairs.joined(separator: ", ") + ")"
        }
    }
}
