import Foundation
import Models
import Quantization
import TensorCore
import Testing
@testable import Training

/// AdamW, clipping and the schedule against torch.optim.AdamW + clip_grad_norm_ + LambdaLR (Tools/adamw_reference.py,
/// float32): every value after each of 7 steps, some clipped, through warmup and cosine decay, to 2e-6 relative
/// (float32 rounding of a few operations in another order).
@Suite struct OptimizerTests {
    struct Fixture: Decodable {
        struct Step: Decodable { let gradients: [String: [Float]]; let gradient_norm: Double; let values: [String: [Float]] }
        let settings: [String: Double]
        let shapes: [String: [Int]]
        let initial: [String: [Float]]
        let steps: [Step]
    }

    @Test func adamWMatchesPyTorch() throws {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/adamw/adamw.json")
        let f = try JSONDecoder().decode(Fixture.self, from: Data(contentsOf: url))
        let s = f.settings
        var settings = OptimizerSettings(learningRate: s["learning_rate"]!, scaleLearningRate: s["scale_learning_rate"]!,
                                         warmupSteps: Int(s["warmup_steps"]!), totalSteps: Int(s["total_steps"]!))
        settings.beta1 = s["beta1"]!; settings.beta2 = s["beta2"]!; settings.epsilon = s["epsilon"]!
        settings.weightDecay = s["weight_decay"]!; settings.minRatio = s["min_ratio"]!; settings.clipNorm = s["clip_norm"]!
        let names = ["matrix", "vector", "scales"]
        let kinds: [ParameterSet<Float>.Kind] = [.matrix, .vector, .scales]
        let p = ParameterSet<Float>(names.indices.map { (names[$0], f.shapes[names[$0]]!, kinds[$0], true) })
        for n in names { try p.set(n, f.initial[n]!) }
        let opt = AdamW(settings: settings, parameterCount: p.count)
        var worst: Float = 0
        for (t, step) in f.steps.enumerated() {
            for n in names { step.gradients[n]!.withUnsafeBufferPointer { p.grad(n).update(from: $0.baseAddress!, count: $0.count) } }
            let (norm, _) = opt.update(p, threads: 2)
            #expect(abs(norm - step.gradient_norm) <= 1e-5 * step.gradient_norm, "step \(t + 1): gradient norm \(norm)")
            for n in names {
                for (a, b) in zip(p.array(n), step.values[n]!) {
                    let rel = abs(a - b) / max(abs(b), 1e-3)
                    worst = max(worst, rel)
                    #expect(rel <= 2e-6, "step \(t + 1) \(n): \(a) vs PyTorch \(b)")
                }
            }
        }
    }

    @Test func scheduleWarmsUpThenDecaysToTheFloor() {
        var s = OptimizerSettings(learningRate: 1, scaleLearningRate: 1, warmupSteps: 4, totalSteps: 14)
        s.minRatio = 0.1
        #expect(s.schedule(step: 1) == 0.25)
        #expect(s.schedule(step: 4) == 1)
        #expect(abs(s.schedule(step: 9) - 0.55) < 1e-12)   // halfway down the cosine: 0.1 + 0.9 / 2
        #expect(abs(s.schedule(step: 14) - 0.1) < 1e-12)
    }
}

/// The training loop on the shipped stories260K: repeatable bit for bit, a resumed run equal to an uninterrupted
/// one, a state written for another recipe refused.
@Suite struct FineTunerTests {
    static let modelPath = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../Models/stories260K/stories260K.bin").standardized.path

    static func tuner(seed: UInt64 = 3, steps: Int = 4, lr: Double = 1e-3, cacheTeacher: Bool = false, teacherTopK: Int? = nil) throws -> FineTuner {
        let teacher = try LlamaModel.load(path: modelPath)
        teacher.threads = 2
        let c = teacher.config
        var tensors: [String: [Float]] = [:]
        for n in HFExport.tensorNames(c) { tensors[n] = try teacher.source.tensor(n).floats() }
        var modes: [String: WeightFakeQuant] = [:], scales: [String: [Float]] = [:], zeros: [String: [Float]] = [:]
        var groups: [String: [Int32]] = [:]
        let scheme = try QuantScheme(bits: 4, symmetric: true, groupSize: 32)
        for l in 0..<c.numHiddenLayers {
            for rel in LlamaBlock.linearNames {
                let m = "model.layers.\(l).\(rel)", shape = TrainableLlama<Float>.shape(of: m + ".weight", c)
                let st = try QuantizerStart.roundToNearest(tensors[m + ".weight"]!, outFeatures: shape[0], inFeatures: shape[1],
                                                           scheme: scheme, name: m)
                modes[m] = .grouped(bits: 4, symmetric: true, learnScales: true)
                scales[m] = st.scales; zeros[m] = st.zeros; groups[m] = st.groups
            }
        }
        let (batch, len) = (2, 32)
        let student = try TrainableLlama<Float>(config: c, tensors: tensors, weightQuant: modes, scales: scales, zeros: zeros,
                                                groups: groups, batch: batch, sequenceLength: len, threads: 2)
        var rng = SplitMix64(seed: 99)
        let windows = (0..<6).map { _ in (0...len).map { _ in Int32(rng.index(c.vocabSize)) } }
        let recipe = FineTuneRecipe(steps: steps, batch: batch, sequenceLength: len,
                                    optimizer: OptimizerSettings(learningRate: lr, scaleLearningRate: 1e-4, warmupSteps: 1, totalSteps: steps),
                                    loss: LossWeights(kd: 1, ce: 0.5), seed: seed, checkpointEvery: 2, activations: "none",
                                    trainScales: true, trainFloatTensors: true, weights: "int4 sym g32",
                                    initialization: "rtn")
        var r = recipe
        r.cacheTeacher = cacheTeacher
        r.teacherTopK = teacherTopK
        return try FineTuner(student: student, teacher: teacher, windows: windows, recipe: r)
    }

    static func values(_ t: FineTuner) -> [Float] { Array(UnsafeBufferPointer(start: t.student.parameters.values, count: t.student.parameters.count)) }

    @Test func repeatsBitForBitAndLearns() throws {
        let a = try Self.tuner(), b = try Self.tuner()
        let before = Self.values(a)
        for _ in 0..<4 { try a.runStep(); try b.runStep() }
        #expect(Self.values(a) == Self.values(b))
        #expect(a.history.map(\.loss) == b.history.map(\.loss))
        #expect(Self.values(a) != before)
        // Another seed draws other batches.
        let c = try Self.tuner(seed: 4)
        for _ in 0..<4 { try c.runStep() }
        #expect(c.history.map(\.loss) != a.history.map(\.loss))
    }

    /// Kept teacher logits are the ones computed every step: 8 steps (each of the 6 windows reused) give the same
    /// parameters and curve bit for bit, with or without the cache.
    @Test func teacherCacheChangesNothing() throws {
        let fresh = try Self.tuner(steps: 8), cached = try Self.tuner(steps: 8, cacheTeacher: true)
        for _ in 0..<8 { try fresh.runStep(); try cached.runStep() }
        #expect(Self.values(fresh) == Self.values(cached))
        #expect(fresh.history.map(\.loss) == cached.history.map(\.loss))
        #expect(FineTuner.teacherCacheFits(windows: 256, sequenceLength: 256, vocab: 512))
        #expect(!FineTuner.teacherCacheFits(windows: 256, sequenceLength: 256, vocab: 32000))
    }

    @Test func resumedRunEqualsUninterrupted() throws {
        let straight = try Self.tuner()
        for _ in 0..<4 { try straight.runStep() }
        let first = try Self.tuner()
        try first.runStep(); try first.runStep()
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("qk-state-\(UUID().uuidString).safetensors").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try first.saveState(to: path)
        let resumed = try Self.tuner()
        try resumed.restore(from: path)
        #expect(resumed.step == 2)
        try resumed.runStep(); try resumed.runStep()
        #expect(Self.values(resumed) == Self.values(straight))
        func curve(_ t: FineTuner) -> [[Double]] { t.history.map { [Double($0.step), $0.loss, $0.kl, $0.ce, $0.gradientNorm, $0.learningRate] } }
        #expect(curve(resumed) == curve(straight))
        // A state from another recipe is refused, by name.
        let other = try Self.tuner(lr: 5e-4)
        #expect(throws: QuantKitError.self) { try other.restore(from: path) }
    }
}
