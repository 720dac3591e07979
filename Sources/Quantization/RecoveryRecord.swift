import Foundation

/// The accuracy-recovery methods applied to a quantized model and their parameters, as the checkpoint
/// (quantize_config.json, under "quantkit") and every result of it record them (`quantization.recovery`).
public struct RecoveryRecord: Codable, Sendable, Equatable {
    public struct AWQSettings: Codable, Sendable, Equatable {
        public var grid: Int
        public var clip: Bool
        /// "<block>.<group>" -> chosen exponent alpha (groups: qkv, v_o, gate_up, down).
        public var alphas: [String: Double]
        public init(grid: Int, clip: Bool, alphas: [String: Double]) { self.grid = grid; self.clip = clip; self.alphas = alphas }
    }
    public struct RotationSettings: Codable, Sendable, Equatable {
        /// Seed of the random signs (or of the random orthogonal matrix when no Hadamard fits the hidden size).
        public var seed: UInt64
        /// "hadamard" (randomized Hadamard) or "orthogonal" (random orthogonal from a Gaussian QR).
        public var residual: String
        /// Whether down_proj's input passes through a Hadamard transform at run time.
        public var onlineHadamard: Bool
        enum CodingKeys: String, CodingKey { case seed, residual, onlineHadamard = "online_hadamard" }
        public init(seed: UInt64, residual: String, onlineHadamard: Bool) {
            self.seed = seed; self.residual = residual; self.onlineHadamard = onlineHadamard
        }
    }
    public struct HQQSettings: Codable, Sendable, Equatable {
        public var iterations: Int
        public var p: Double
        public var beta0: Double
        public var kappa: Double
        enum CodingKeys: String, CodingKey { case iterations, p, beta0 = "beta0", kappa }
        public init(iterations: Int, p: Double, beta0: Double, kappa: Double) {
            self.iterations = iterations; self.p = p; self.beta0 = beta0; self.kappa = kappa
        }
    }
    public struct SparsitySettings: Codable, Sendable, Equatable {
        /// "unstructured" or "n:m" (e.g. "2:4").
        public var pattern: String
        /// Requested fraction of pruned weights (unstructured) or n/m.
        public var target: Double
        /// Nonzero fraction of the pruned layers' weights as written.
        public var density: Double
        public init(pattern: String, target: Double, density: Double) { self.pattern = pattern; self.target = target; self.density = density }
    }

    /// Quantization-aware fine-tuning with distillation (`quantkit finetune`); the full recipe and loss curve are
    /// in the checkpoint's "finetune" record.
    public struct FineTuneSettings: Codable, Sendable, Equatable {
        public var steps: Int
        public var tokens: Int
        public var learningRate: Double
        public var kd: Double
        public var ce: Double
        /// "none", "int8" or "w4a8".
        public var activations: String
        public var trainScales: Bool
        /// Where the latent weights started (a checkpoint path, a quantize method, or "float").
        public var initialization: String
        /// Mean training loss of the last steps (the last tenth, at least one).
        public var finalLoss: Double
        enum CodingKeys: String, CodingKey {
            case steps, tokens, learningRate = "learning_rate", kd, ce, activations, trainScales = "train_scales"
            case initialization, finalLoss = "final_loss"
        }
        public init(steps: Int, tokens: Int, learningRate: Double, kd: Double, ce: Double, activations: String,
                    trainScales: Bool, initialization: String, finalLoss: Double) {
            self.steps = steps; self.tokens = tokens; self.learningRate = learningRate; self.kd = kd; self.ce = ce
            self.activations = activations; self.trainScales = trainScales; self.initialization = initialization
            self.finalLoss = finalLoss
        }
    }

    /// A smaller student distilled from the teacher (`quantkit finetune --student`): which teacher layers and how
    /// many MLP channels it kept, and both models' block linear weights, so its size is stated against the teacher.
    public struct StudentSettings: Codable, Sendable, Equatable {
        public var teacherLayers: Int
        public var keptLayers: [Int]
        public var teacherIntermediateSize: Int
        public var intermediateSize: Int
        public var teacherBlockWeights: Int
        public var blockWeights: Int
        enum CodingKeys: String, CodingKey {
            case teacherLayers = "teacher_layers", keptLayers = "kept_layers", teacherIntermediateSize = "teacher_intermediate_size"
            case intermediateSize = "intermediate_size", teacherBlockWeights = "teacher_block_weights", blockWeights = "block_weights"
        }
        public init(teacherLayers: Int, keptLayers: [Int], teacherIntermediateSize: Int, intermediateSize: Int,
                    teacherBlockWeights: Int, blockWeights: Int) {
            self.teacherLayers = teacherLayers; self.keptLayers = keptLayers
            self.teacherIntermediateSize = teacherIntermediateSize; self.intermediateSize = intermediateSize
            self.teacherBlockWeights = teacherBlockWeights; self.blockWeights = blockWeights
        }
        /// Student block weights per teacher block weight.
        public var sizeRatio: Double { teacherBlockWeights > 0 ? Double(blockWeights) / Double(teacherBlockWeights) : 1 }
    }

    public var awq: AWQSettings?
    public var rotation: RotationSettings?
    public var hqq: HQQSettings?
    public var sparsity: SparsitySettings?
    /// GPTAQ (asymmetric calibration) with its alpha.
    public var gptaqAlpha: Double?
    /// SmoothQuant folded into the float model before quantization (for W8A8 runs such as a Q8_0 export), its alpha.
    public var smoothQuantAlpha: Double?
    public var fineTune: FineTuneSettings?
    public var student: StudentSettings?

    enum CodingKeys: String, CodingKey {
        case awq, rotation, hqq, sparsity, gptaqAlpha = "gptaq_alpha", smoothQuantAlpha = "smoothquant_alpha", fineTune = "finetune"
        case student
    }

    public init() {}

    public var isEmpty: Bool {
        awq == nil && rotation == nil && hqq == nil && sparsity == nil && gptaqAlpha == nil && smoothQuantAlpha == nil
            && fineTune == nil && student == nil
    }

    /// The record as a JSON object (for checkpoint metadata).
    public func jsonObject() throws -> [String: Any] {
        (try JSONSerialization.jsonObject(with: JSONEncoder().encode(self)) as? [String: Any]) ?? [:]
    }

    public init(jsonObject o: Any) throws {
        let data = try JSONSerialization.data(withJSONObject: o)
        self = try JSONDecoder().decode(RecoveryRecord.self, from: data)
    }
}
