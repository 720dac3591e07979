import Foundation
import Models
import Quantization
import TensorCore
import Training

/// `quantkit bench train`: training tokens per second of the fine-tuning loop at a given shape, on seeded random
/// weights and tokens. One step is what Tools/bench_train_pytorch.py times for PyTorch: the teacher's forward
/// (no gradients), the student's forward and backward with the KL loss, gradient clipping and AdamW.
public struct TrainingBenchOptions: Sendable {
    public struct Shape: Sendable {
        public var name: String
        public var dim: Int, hidden: Int, layers: Int, heads: Int, kvHeads: Int, vocab: Int
        public var tied: Bool
    }
    /// stories260K's shape, the engine benchmark's (BenchPerplexity "small"), and stories15M's (llama2.c; Llama 2's
    /// 32,000-token vocabulary, whose full teacher logits do not fit the cache).
    public static let shapes = [
        Shape(name: "small", dim: 64, hidden: 172, layers: 5, heads: 8, kvHeads: 4, vocab: 512, tied: true),
        Shape(name: "engine", dim: 512, hidden: 1536, layers: 8, heads: 8, kvHeads: 8, vocab: 512, tied: false),
        Shape(name: "vocab32k", dim: 288, hidden: 768, layers: 6, heads: 6, kvHeads: 6, vocab: 32000, tied: true),
    ]
    public var shape: Shape
    public var batch = 8
    public var sequenceLength = 256
    public var steps = 10
    public var warmup = 2
    /// "none" or "int4g32" (symmetric int4, groups of 32, learned scales).
    public var quant = "none"
    /// Without the teacher: next-token cross-entropy instead of KL, no teacher forward. The difference to a
    /// normal step is the most a cache of the teacher's logits could save.
    public var teacher = true
    /// Distil from the teacher's top k kept per window (FineTuneRecipe.teacherTopK); the warmup steps fill the
    /// cache, so the timed steps are a later epoch's.
    public var teacherTopK: Int?
    public var threads = 2
    public init(shape: Shape) { self.shape = shape }
}

public struct TrainingBenchReport: Codable, Sendable {
    public var shape: String
    public var quant: String
    public var batch: Int
    public var sequenceLength: Int
    public var steps: Int
    public var threads: Int
    public var teacher: Bool
    public var teacherTopK: Int?
    public var tokensPerSecond: Double
    public var millisecondsPerStep: Double
    enum CodingKeys: String, CodingKey {
        case shape, quant, batch, steps, threads, teacher, teacherTopK = "teacher_top_k", sequenceLength = "sequence_length"
        case tokensPerSecond = "tokens_per_second"
        case millisecondsPerStep = "ms_per_step"
    }
}

public enum TrainingBench {
    public static func run(_ o: TrainingBenchOptions, progress: any ProgressObserver = NoProgress()) throws -> TrainingBenchReport {
        guard ["none", "int4g32"].contains(o.quant) else { throw QuantKitError(.input, "--quant must be none or int4g32 (got \(o.quant))") }
        guard o.steps > 0, o.warmup >= 0, o.batch > 0, o.sequenceLength > 1 else {
            throw QuantKitError(.input, "--steps, --batch and --seqlen must be positive")
        }
        let s = o.shape
        let json = """
        {"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":\(s.dim),"intermediate_size":\(s.hidden),
         "num_hidden_layers":\(s.layers),"num_attention_heads":\(s.heads),"num_key_value_heads":\(s.kvHeads),"vocab_size":\(s.vocab),
         "rms_norm_eps":1e-5,"rope_theta":10000.0,"tie_word_embeddings":\(s.tied),"max_position_embeddings":\(max(2048, o.sequenceLength))}
        """
        let config = try JSONDecoder().decode(LlamaConfig.self, from: Data(json.utf8))
        var rng = SplitMix64(seed: 1)
        var tensors: [String: [Float]] = [:], source: [String: Tensor] = [:]
        for name in HFExport.tensorNames(config) {
            let shape = TrainableLlama<Float>.shape(of: name, config)
            let norm = name.hasSuffix("norm.weight")
            let v: [Float] = (0..<shape.reduce(1, *)).map { _ in norm ? 1 : 0.04 * rng.signedUnitFloat() }
            tensors[name] = v
            source[name] = Tensor(shape: shape, floats: v)
        }
        let teacher = try LlamaModel(config: config, source: TensorDictionary(source), name: "bench")
        teacher.threads = o.threads
        var modes: [String: WeightFakeQuant] = [:], scales: [String: [Float]] = [:], zeros: [String: [Float]] = [:]
        var groups: [String: [Int32]] = [:]
        if o.quant == "int4g32" {
            let scheme = try QuantScheme(bits: 4, symmetric: true, groupSize: 32)
            for m in FineTuneRun.modules(config) {
                let shape = TrainableLlama<Float>.shape(of: m + ".weight", config)
                let st = try QuantizerStart.roundToNearest(tensors[m + ".weight"]!, outFeatures: shape[0], inFeatures: shape[1],
                                                           scheme: scheme, name: m)
                modes[m] = .grouped(bits: 4, symmetric: true, learnScales: true)
                scales[m] = st.scales; zeros[m] = st.zeros; groups[m] = st.groups
            }
        }
        let student = try TrainableLlama<Float>(config: config, tensors: tensors, weightQuant: modes, scales: scales, zeros: zeros,
                                                groups: groups, batch: o.batch, sequenceLength: o.sequenceLength, threads: o.threads)
        // With a top-k cache the warmup must have seen every window.
        let count = o.teacherTopK != nil ? o.batch * max(1, o.warmup) : max(o.batch, 16)
        let windows = (0..<count).map { _ in (0...o.sequenceLength).map { _ in Int32(rng.index(s.vocab)) } }
        let total = o.steps + o.warmup
        let recipe = FineTuneRecipe(steps: total, batch: o.batch, sequenceLength: o.sequenceLength,
                                    optimizer: OptimizerSettings(learningRate: 1e-4, scaleLearningRate: 1e-5, warmupSteps: 0, totalSteps: total),
                                    loss: o.teacher ? LossWeights(kd: 1, ce: 0) : LossWeights(kd: 0, ce: 1), seed: 0, checkpointEvery: 0, activations: "none",
                                    trainScales: o.quant != "none", trainFloatTensors: true, weights: o.quant, initialization: "random")
        var r = recipe
        r.teacherTopK = o.teacher ? o.teacherTopK : nil
        let tuner = try FineTuner(student: student, teacher: o.teacher ? teacher : nil, windows: windows, recipe: r)
        let task = progress.task("bench train \(s.name) \(o.quant)", total: total, unit: "tokens")
        var timed = 0.0
        for i in 1...total {
            let r = try tuner.runStep()
            if i > o.warmup { timed += r.seconds }
            task.update(done: i, units: i * o.batch * o.sequenceLength)
        }
        return TrainingBenchReport(shape: s.name, quant: o.quant, batch: o.batch, sequenceLength: o.sequenceLength, steps: o.steps,
                                   threads: o.threads, teacher: o.teacher, teacherTopK: r.teacherTopK, tokensPerSecond: Double(o.steps * o.batch * o.sequenceLength) / timed,
                                   millisecondsPerStep: timed / Double(o.steps) * 1000)
    }
}
