import Foundation
import Models
import TensorCore

/// What a fine-tuning run did, recorded in its result and in the checkpoint it writes.
public struct FineTuneRecipe: Sendable, Equatable, Codable {
    public var steps: Int
    public var batch: Int
    public var sequenceLength: Int
    public var optimizer: OptimizerSettings
    public var loss: LossWeights
    public var seed: UInt64
    public var checkpointEvery: Int
    /// "none", "int8" (the NPU's static per-tensor int8) or "w4a8" (per-32 blocks).
    public var activations: String
    public var trainScales: Bool
    /// Whether the tensors that stay float (embedding, norms, head) train as well as the quantized linears.
    public var trainFloatTensors: Bool
    /// The quantizer the weights train against, e.g. "int4 sym g32", "npu int8 per-channel", "float".
    public var weights: String
    /// Where the latent weights started: a checkpoint path, or "float".
    public var initialization: String
    /// Windows the teacher sampled itself (after the text's), and their sampling temperature.
    public var teacherSamples = 0
    public var temperature = 1.0
    /// Whether the teacher's logits are kept per window after their first use (exact Float32, when they fit
    /// `FineTuner.teacherCacheLimit`) instead of recomputed every step.
    public var cacheTeacher = false
    /// Distil from the teacher's k most probable tokens per position plus the rest (TeacherTopK), kept per window
    /// after their first use; nil: the full logits. Held-out windows are always scored against the full logits.
    public var teacherTopK: Int?

    public init(steps: Int, batch: Int, sequenceLength: Int, optimizer: OptimizerSettings, loss: LossWeights, seed: UInt64,
                checkpointEvery: Int, activations: String, trainScales: Bool, trainFloatTensors: Bool, weights: String,
                initialization: String) {
        self.steps = steps; self.batch = batch; self.sequenceLength = sequenceLength; self.optimizer = optimizer
        self.loss = loss; self.seed = seed; self.checkpointEvery = checkpointEvery; self.activations = activations
        self.trainScales = trainScales; self.trainFloatTensors = trainFloatTensors; self.weights = weights
        self.initialization = initialization
    }
}

/// One optimizer step as the loss curve records it.
public struct StepRecord: Sendable, Equatable, Codable {
    public var step: Int
    public var loss: Double
    public var kl: Double
    public var ce: Double
    public var sameTop: Double
    public var gradientNorm: Double
    public var learningRate: Double
    public var seconds: Double
}

/// The training loop: batches drawn from the calibration windows in a seeded order, the teacher's logits (computed
/// by the float model, and kept per window after their first use when the recipe caches them), the student's loss and gradients, AdamW. Its state (parameters, moments, step,
/// loss curve) saves to one safetensors file.
public final class FineTuner {
    public let student: TrainableLlama<Float>
    public let teacher: LlamaModel?
    public let recipe: FineTuneRecipe
    public let optimizer: AdamW
    public private(set) var history: [StepRecord] = []
    private let windows: [[Int32]]
    private var order: (epoch: Int, permutation: [Int]) = (-1, [])
    private let teacherCache: KVCache?
    private let teacherState: RunState?
    /// The batch's teacher logits [batch * sequenceLength, vocab].
    private let teacherLogits: UnsafeMutablePointer<Float>?
    /// Per window, its logits once computed (recipe.cacheTeacher); nil entries are not computed yet.
    private var cachedLogits: [UnsafeMutablePointer<Float>?]
    /// recipe.teacherTopK: the batch's top-k targets, and per window its own once computed.
    private let batchTopK: CompactTeacher?
    private var cachedTopK: [CompactTeacher?]
    /// The most a teacher cache may hold (bytes): beyond it the run computes the logits every step.
    public static let teacherCacheLimit = 2 << 30

    /// Whether the logits of `windows` windows fit the cache limit.
    public static func teacherCacheFits(windows: Int, sequenceLength: Int, vocab: Int) -> Bool {
        windows * sequenceLength * vocab * MemoryLayout<Float>.size <= teacherCacheLimit
    }

    /// Whether the top-k targets of `windows` windows fit the cache limit.
    public static func topKCacheFits(windows: Int, sequenceLength: Int, k: Int) -> Bool {
        windows * sequenceLength * TeacherTopK.bytesPerPosition(k: k) <= teacherCacheLimit
    }

    /// windows: token sequences of sequenceLength + 1 (inputs, then the last target).
    public init(student: TrainableLlama<Float>, teacher: LlamaModel?, windows: [[Int32]], recipe: FineTuneRecipe) throws {
        guard !windows.isEmpty else { throw QuantKitError(.input, "fine-tuning needs at least one calibration window") }
        guard windows.allSatisfy({ $0.count == recipe.sequenceLength + 1 }) else {
            throw QuantKitError(.input, "calibration windows must hold \(recipe.sequenceLength + 1) tokens")
        }
        guard recipe.loss.kd == 0 || teacher != nil else { throw QuantKitError(.input, "distillation needs the float teacher") }
        self.student = student
        self.teacher = teacher
        self.recipe = recipe
        self.windows = windows
        optimizer = AdamW(settings: recipe.optimizer, parameterCount: student.parameters.count)
        if recipe.cacheTeacher, let t = teacher,
           !Self.teacherCacheFits(windows: windows.count, sequenceLength: recipe.sequenceLength, vocab: t.config.vocabSize) {
            throw QuantKitError(.input, "the teacher's logits of \(windows.count) windows exceed the \(Self.teacherCacheLimit >> 30) GiB cache; compute them every step")
        }
        if let k = recipe.teacherTopK, let t = teacher {
            guard k >= 1, k <= t.config.vocabSize else {
                throw QuantKitError(.input, "--teacher-top-k must be in 1...\(t.config.vocabSize) (got \(k))")
            }
            guard !recipe.cacheTeacher else { throw QuantKitError(.input, "--teacher-top-k keeps its own cache; the full-logit cache is off with it") }
            guard Self.topKCacheFits(windows: windows.count, sequenceLength: recipe.sequenceLength, k: k) else {
                throw QuantKitError(.input, "the teacher's top \(k) of \(windows.count) windows exceed the \(Self.teacherCacheLimit >> 30) GiB cache; lower --teacher-top-k")
            }
        }
        let rows = recipe.batch * recipe.sequenceLength
        teacherCache = teacher.map { $0.makeCache(capacity: rows) }
        teacherState = teacher.map { $0.makeState(maxRows: rows) }
        teacherLogits = teacher.map { .allocate(capacity: rows * $0.config.vocabSize) }
        cachedLogits = Array(repeating: nil, count: windows.count)
        batchTopK = teacher != nil ? recipe.teacherTopK.map { CompactTeacher(rows: rows, k: $0) } : nil
        cachedTopK = Array(repeating: nil, count: windows.count)
    }

    deinit {
        teacherLogits?.deallocate()
        for p in cachedLogits { p?.deallocate() }
    }

    public var step: Int { optimizer.step }

    /// The window indices of a step's batch (1-based step): a fresh seeded shuffle of all windows every epoch.
    public func batchIndices(step t: Int) -> [Int] {
        let n = windows.count
        return (0..<recipe.batch).map { b in
            let i = (t - 1) * recipe.batch + b
            let epoch = i / n
            if order.epoch != epoch {
                var rng = SplitMix64(seed: recipe.seed &+ UInt64(epoch) &* 0x9E37_79B9_7F4A_7C15)
                var p = Array(0..<n)
                for j in stride(from: n - 1, to: 0, by: -1) { p.swapAt(j, rng.index(j + 1)) }
                order = (epoch, p)
            }
            return order.permutation[i % n]
        }
    }

    /// The teacher's logits of a batch of windows into `teacherLogits`: kept windows from the cache, the others in
    /// one forward side by side (a window's logits do not depend on the windows beside it: every row of a product
    /// and every sequence's attention is computed on its own; `FineTunerTests.teacherCacheChangesNothing`).
    private func teacherLogits(for indices: [Int]?, inputs: [Int32]) -> UnsafePointer<Float>? {
        guard let teacher, let out = teacherLogits else { return nil }
        let len = recipe.sequenceLength, block = len * teacher.config.vocabSize
        var missing: [Int] = []
        for b in 0..<(inputs.count / len) {
            if recipe.cacheTeacher, let i = indices?[b], let kept = cachedLogits[i] {
                (out + b * block).update(from: kept, count: block)
            } else {
                missing.append(b)
            }
        }
        guard !missing.isEmpty else { return UnsafePointer(out) }
        let tokens = missing.flatMap { inputs[($0 * len)..<(($0 + 1) * len)] }
        let logits = teacher.forwardSequences(tokens, count: missing.count, cache: teacherCache!, state: teacherState!)
        for (j, b) in missing.enumerated() {
            (out + b * block).update(from: logits + j * block, count: block)
            if recipe.cacheTeacher, let i = indices?[b] {
                let kept = UnsafeMutablePointer<Float>.allocate(capacity: block)
                kept.update(from: logits + j * block, count: block)
                cachedLogits[i] = kept
            }
        }
        return UnsafePointer(out)
    }

    /// The teacher's top-k targets of a batch of training windows into `batchTopK`: kept windows from the cache, the
    /// others from one forward side by side, selected and kept.
    private func teacherTopK(for indices: [Int], inputs: [Int32], into out: CompactTeacher) -> TeacherTopK {
        let len = recipe.sequenceLength
        var missing: [Int] = []
        for (b, i) in indices.enumerated() {
            if let kept = cachedTopK[i] { out.copy(from: kept, rows: 0..<len, to: b * len) } else { missing.append(b) }
        }
        if let teacher, !missing.isEmpty {
            let vocab = teacher.config.vocabSize
            let tokens = missing.flatMap { inputs[($0 * len)..<(($0 + 1) * len)] }
            let logits = teacher.forwardSequences(tokens, count: missing.count, cache: teacherCache!, state: teacherState!)
            let fresh = CompactTeacher(rows: missing.count * len, k: out.k)
            fresh.select(logits: logits, vocab: vocab, threads: student.threads)
            for (j, b) in missing.enumerated() {
                let kept = CompactTeacher(rows: len, k: out.k)
                kept.copy(from: fresh, rows: (j * len)..<((j + 1) * len), to: 0)
                cachedTopK[indices[b]] = kept
                out.copy(from: fresh, rows: (j * len)..<((j + 1) * len), to: b * len)
            }
        }
        return out.view
    }

    /// Inputs and next-token targets of a batch of windows, row-major.
    func batch(_ indices: [Int]) -> (inputs: [Int32], targets: [Int32]) {
        var inputs: [Int32] = [], targets: [Int32] = []
        inputs.reserveCapacity(indices.count * recipe.sequenceLength)
        targets.reserveCapacity(indices.count * recipe.sequenceLength)
        for i in indices { inputs += windows[i].dropLast(); targets += windows[i].dropFirst() }
        return (inputs, targets)
    }

    /// Loss (and gradients) of the student on a batch, the teacher's logits first. `indices`: the batch's training
    /// windows (nil for held-out windows, which are never cached).
    private func loss(inputs: [Int32], targets: [Int32], indices: [Int]?, gradients: Bool) throws -> LossValue {
        if recipe.loss.kd != 0, let indices, let batchTopK {
            let top = teacherTopK(for: indices, inputs: inputs, into: batchTopK)
            return try student.loss(tokens: inputs, targets: targets, teacher: nil, teacherTopK: top, weights: recipe.loss, gradients: gradients)
        }
        let t = recipe.loss.kd != 0 ? teacherLogits(for: indices, inputs: inputs) : nil
        return try student.loss(tokens: inputs, targets: targets, teacher: t, weights: recipe.loss, gradients: gradients)
    }

    /// One optimizer step on the next batch.
    @discardableResult
    public func runStep() throws -> StepRecord {
        let start = Date()
        let indices = batchIndices(step: optimizer.step + 1)
        let (inputs, targets) = batch(indices)
        let value = try loss(inputs: inputs, targets: targets, indices: indices, gradients: true)
        let (norm, rate) = optimizer.update(student.parameters, threads: student.threads)
        let r = StepRecord(step: optimizer.step, loss: value.total, kl: value.kl, ce: value.ce, sameTop: value.sameTop,
                           gradientNorm: norm, learningRate: rate * recipe.optimizer.learningRate,
                           seconds: Date().timeIntervalSince(start))
        history.append(r)
        return r
    }

    /// Mean loss over windows (batches of the training batch size; a short last batch is left out), no update.
    public func evaluate(_ held: [[Int32]]) throws -> LossValue {
        let b = recipe.batch
        guard held.count >= b else { throw QuantKitError(.input, "validation needs at least \(b) windows, got \(held.count)") }
        var sum = LossValue(total: 0, kl: 0, ce: 0, sameTop: 0)
        let batches = held.count / b
        for k in 0..<batches {
            var inputs: [Int32] = [], targets: [Int32] = []
            for w in held[(k * b)..<((k + 1) * b)] { inputs += w.dropLast(); targets += w.dropFirst() }
            let v = try loss(inputs: inputs, targets: targets, indices: nil, gradients: false)
            sum.total += v.total; sum.kl += v.kl; sum.ce += v.ce; sum.sameTop += v.sameTop
        }
        let n = Double(batches)
        return LossValue(total: sum.total / n, kl: sum.kl / n, ce: sum.ce / n, sameTop: sum.sameTop / n)
    }

    // MARK: state

    static let stateFormat = "quantkit-finetune-state-1"

    /// Writes parameters, moments, step, recipe and loss curve to one file, atomically (an interrupted write leaves
    /// the previous state in place).
    public func saveState(to path: String) throws {
        let p = student.parameters
        var tensors: [(String, Tensor)] = []
        for e in p.entries {
            tensors.append(("param/" + e.name, Tensor(shape: e.shape, floats: p.array(e.name))))
        }
        tensors.append(("adam/m", Tensor(shape: [p.count], floats: Array(optimizer.firstMoment))))
        tensors.append(("adam/v", Tensor(shape: [p.count], floats: Array(optimizer.secondMoment))))
        let meta: [String: String] = [
            "format": Self.stateFormat, "step": String(optimizer.step),
            "recipe": String(decoding: try JSONEncoder().encode(recipe), as: UTF8.self),
            "history": String(decoding: try JSONEncoder().encode(history), as: UTF8.self),
        ]
        try SafetensorsWriter.write(tensors, metadata: meta, to: path)
    }

    /// Continues from a saved state; refuses one written for another recipe or model.
    public func restore(from path: String) throws {
        let f = try SafetensorsFile(path: path)
        guard f.metadata["format"] == Self.stateFormat, let stepText = f.metadata["step"], let step = Int(stepText),
              let recipeText = f.metadata["recipe"], let historyText = f.metadata["history"] else {
            throw QuantKitError(.format, "\(path): not a QuantKit fine-tuning state")
        }
        let saved: FineTuneRecipe, history: [StepRecord]
        do {
            saved = try JSONDecoder().decode(FineTuneRecipe.self, from: Data(recipeText.utf8))
            history = try JSONDecoder().decode([StepRecord].self, from: Data(historyText.utf8))
        } catch {
            throw QuantKitError(.format, "\(path): its recipe or loss curve is unreadable")
        }
        guard saved == recipe else {
            throw QuantKitError(.input, "\(path): was written by a run with another recipe; resume with the same flags")
        }
        guard step >= 0, step <= recipe.steps, history.count == step else {
            throw QuantKitError(.format, "\(path): step \(step) does not fit its recipe or loss curve")
        }
        let p = student.parameters
        for e in p.entries {
            let t = try f.tensor("param/" + e.name)
            guard t.shape == e.shape, t.dtype == .f32 else {
                throw QuantKitError(.format, "\(path): param/\(e.name) is \(t.dtype.rawValue) \(t.shape), expected f32 \(e.shape)")
            }
            let v = t.floats()
            guard v.allSatisfy(\.isFinite) else { throw QuantKitError(.numeric, "\(path): param/\(e.name) holds a non-finite value") }
            try p.set(e.name, v)
        }
        try optimizer.restore(step: step, firstMoment: try f.tensor("adam/m").floats(), secondMoment: try f.tensor("adam/v").floats())
        self.history = history
    }
}

/// Owned storage of top-k targets for `rows` positions (TeacherTopK is its view).
final class CompactTeacher {
    let rows: Int, k: Int
    let indices: UnsafeMutablePointer<Int32>, logProbs: UnsafeMutablePointer<Float>, rest: UnsafeMutablePointer<Float>

    init(rows: Int, k: Int) {
        self.rows = rows; self.k = k
        indices = .allocate(capacity: rows * k); logProbs = .allocate(capacity: rows * k); rest = .allocate(capacity: rows)
    }

    deinit { indices.deallocate(); logProbs.deallocate(); rest.deallocate() }

    var view: TeacherTopK { TeacherTopK(k: k, indices: indices, logProbs: logProbs, restLogProb: rest) }

    func select(logits: UnsafePointer<Float>, vocab: Int, threads: Int) {
        TeacherTopK.select(logits: logits, rows: rows, vocab: vocab, k: k, indices: indices, logProbs: logProbs, restLogProb: rest,
                           threads: threads)
    }

    /// Rows `range` of `other` to rows starting at `at` here.
    func copy(from other: CompactTeacher, rows range: Range<Int>, to at: Int) {
        (indices + at * k).update(from: other.indices + range.lowerBound * k, count: range.count * k)
        (logProbs + at * k).update(from: other.logProbs + range.lowerBound * k, count: range.count * k)
        (rest + at).update(from: other.rest + range.lowerBound, count: range.count)
    }
}
