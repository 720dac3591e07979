import Foundation
import Datasets
import Models
import NPU
import Quantization
import TensorCore
import Training

/// `quantkit finetune`: quantization-aware fine-tuning with distillation from the float model (METHODS.md
/// section 7). Starts from a post-training result (a quantized checkpoint, or one made here with `quantize`'s
/// settings) or from the float weights, trains against the same quantizer the checkpoint stores, and writes an
/// ordinary checkpoint that every command reads, with the recipe recorded in it.
public struct FineTuneRunOptions: Sendable {
    /// How the trained weights are quantized.
    public enum Target: String, Sendable, CaseIterable {
        /// The grouped integer codes of a GPTQ-layout checkpoint (from --init, or made with --method).
        case checkpoint
        /// The simulated NPU's per-channel int8 weights (written as float; the NPU quantizes them when it loads).
        case npu
        /// No weight quantization (activations may still be fake-quantized).
        case float
    }

    /// The float model: the teacher, and the student's architecture.
    public var model: String
    public var output: String
    /// A quantized checkpoint to start from (its dequantized codes become the latent weights).
    public var initCheckpoint: String?
    /// Quantize settings to make the starting checkpoint here (used when initCheckpoint is nil and target is .checkpoint).
    public var quantize: QuantizeRunOptions?
    public var target: Target = .checkpoint
    /// Rotate the float start of --target npu|float first (as `quantize --rotate`, seed 0): the student trains in
    /// the rotated basis and the output stays rotated. (A start made with --method rotates through `quantize`.)
    public var rotate = false
    /// "none", "int8" (the NPU's static per-tensor int8 inputs) or "w4a8" (per-32 blocks, as W4A8 runs).
    public var activations = "none"
    /// The NPU settings file `perplexity --backend npu --npu-config` will use (--target npu --activations int8):
    /// training calibrates and rounds as that NPU does (its calibration method, int16_outputs). nil: the defaults.
    public var npuConfig: String?
    public var trainScales = false
    /// Train the tensors that stay float too (embedding, norms, head); default: only the quantized linears (and
    /// their scales), so the float parts keep the float model's values.
    public var trainFloatTensors = false
    /// Distil a smaller float student instead ("LAYERSxHIDDEN", StudentShape.parse); needs --target float.
    public var student: String?
    /// Matrices' dtype of a float output (npu, float and student targets); nil keeps float32.
    public var outputDType: DType?
    public var calibration: String?
    /// Windows the float teacher samples itself (data-free, as LLM-QAT), added to the `samples` text windows: half
    /// the default training set, which keeps training near the model's own domain (BENCHMARKS.md, "Fine-tuning").
    public var teacherSamples = 128
    /// Sampling temperature of the teacher's windows.
    public var temperature = 1.0
    /// Keep the teacher's logits of each window after their first use when they fit FineTuner.teacherCacheLimit
    /// (exact, so the run is the same; faster from the second epoch on).
    public var cacheTeacher = true
    /// Distil from the teacher's top k tokens per position plus the rest, kept per window (FineTuneRecipe.teacherTopK);
    /// nil: the full logits.
    public var teacherTopK: Int?
    public var tokenizer: String?
    /// Training windows drawn from the calibration text (or sampled from the teacher).
    public var samples = 128
    public var sequenceLength = 256
    public var seed: UInt64 = 0
    public var steps = 200
    public var batch = 8
    public var learningRate = 3e-4
    /// The CLI's default peak learning rate: 1e-4 for the NPU target, where 3e-4 gave a worse in-domain perplexity
    /// than 1e-4 at every seed, rotated or not (BENCHMARKS.md, "The NPU's W8A8, fine-tuned from a rotated start").
    public static func defaultLearningRate(for target: Target) -> Double { target == .npu ? 1e-4 : 3e-4 }
    public var scaleLearningRate = 1e-5
    public var warmupSteps = 10
    public var minLearningRateRatio = 0.0
    public var weightDecay = 0.0
    public var clipNorm = 1.0
    public var kdWeight = 1.0
    public var ceWeight = 0.0
    /// Save the training state every N steps (0: only at the end of an interrupted run's last completed step).
    public var checkpointEvery = 50
    /// Where the state is saved (default: OUTPUT.finetune-state.safetensors).
    public var statePath: String?
    public var resume = false
    /// Held-out text for the before/after validation loss; refused when it overlaps the training text.
    public var validation: String?
    public var validationWindows = 16
    public var threads: Int?

    public init(model: String, output: String) { self.model = model; self.output = output }

    public var resolvedStatePath: String { statePath ?? output + ".finetune-state.safetensors" }

    func validate() throws {
        let positive: [(String, Int)] = [("--steps", steps), ("--batch", batch), ("--seqlen", sequenceLength)]
        for (flag, v) in positive where v <= 0 { throw QuantKitError(.input, "\(flag) must be positive (got \(v))") }
        guard samples >= 0, teacherSamples >= 0, samples + teacherSamples > 0 else {
            throw QuantKitError(.input, "--samples and --teacher-samples must be >= 0 and not both 0 (got \(samples), \(teacherSamples))")
        }
        try UserLimits.checkCalibration(samples: samples + teacherSamples, seqlen: sequenceLength + 1)
        guard steps <= 1_000_000, batch <= 4096, batch * sequenceLength <= UserLimits.contextTokens * 16 else {
            throw QuantKitError(.input, "--steps, --batch or --seqlen is too large (steps <= 1,000,000, batch x seqlen <= \(UserLimits.contextTokens * 16))")
        }
        let rates: [(String, Double)] = [("--lr", learningRate), ("--scale-lr", scaleLearningRate), ("--weight-decay", weightDecay),
                                         ("--clip", clipNorm), ("--kd", kdWeight), ("--ce", ceWeight), ("--min-lr-ratio", minLearningRateRatio)]
        for (flag, v) in rates where !(v.isFinite && v >= 0) { throw QuantKitError(.input, "\(flag) must be a finite number >= 0 (got \(v))") }
        guard learningRate > 0 else { throw QuantKitError(.input, "--lr must be above 0") }
        guard kdWeight > 0 || ceWeight > 0 else { throw QuantKitError(.input, "--kd and --ce are both 0: nothing to train on") }
        guard warmupSteps >= 0, warmupSteps <= steps else { throw QuantKitError(.input, "--warmup must be in 0...--steps (got \(warmupSteps))") }
        guard checkpointEvery >= 0 else { throw QuantKitError(.input, "--checkpoint-every must be >= 0") }
        guard ["none", "int8", "w4a8"].contains(activations) else {
            throw QuantKitError(.input, "--activations must be none, int8 or w4a8 (got \(activations))")
        }
        if let k = teacherTopK, k < 1 { throw QuantKitError(.input, "--teacher-top-k must be at least 1 (got \(k))") }
        guard validationWindows > 0 else { throw QuantKitError(.input, "--validation-windows must be positive") }
        guard temperature.isFinite, temperature > 0, temperature <= 10 else {
            throw QuantKitError(.input, "--temperature must be in (0, 10] (got \(temperature))")
        }
        if target != .checkpoint && (initCheckpoint != nil || quantize != nil) {
            throw QuantKitError(.input, "--init and --method quantize into a checkpoint; --target \(target.rawValue) starts from the float weights")
        }
        if rotate && target == .checkpoint {
            throw QuantKitError(.input, "--rotate: with --init, rotate the checkpoint when quantizing it (quantize --rotate); with --method, set it there")
        }
        if rotate && student != nil {
            throw QuantKitError(.input, "--rotate with --student: distil the student first, then fine-tune it with --rotate")
        }
        if npuConfig != nil && !(target == .npu && activations == "int8") {
            throw QuantKitError(.input, "--npu-config sets the NPU's activation rounding for --target npu --activations int8")
        }
        if trainScales && target != .checkpoint { throw QuantKitError(.input, "--train-scales needs grouped weights (--init or --method)") }
        if student != nil && target != .float {
            throw QuantKitError(.input, "--student distils a float model: use --target float (quantize the student afterwards)")
        }
        if student != nil && activations == "int8" {
            throw QuantKitError(.input, "--student with --activations int8: the static int8 ranges are observed per teacher layer, not the "
                                + "student's; distil first, then fine-tune the student with --model STUDENT --target npu --activations int8")
        }
        if let d = outputDType, target == .checkpoint || ![.f32, .f16, .bf16].contains(d) {
            throw QuantKitError(.input, "--dtype \(d.rawValue.lowercased()): applies to float outputs (--target npu|float), as f32, f16 or bf16")
        }
    }
}

/// The result of a fine-tuning run.
public struct FineTuneReport: Encodable, Sendable {
    public struct Validation: Encodable, Sendable {
        public var file: String
        public var windows: Int
        public var tokens: Int
        public var before: LossValue
        public var after: LossValue
        /// Share of the starting KL(teacher ‖ student) removed by training.
        public var klRecovered: Double
    }
    public var model: String
    public var output: String
    /// The quantized checkpoint it started from (--init); nil when it quantized its own start or began from float.
    public var initCheckpoint: String?
    public var recipe: FineTuneRecipe
    public var calibration: CalibrationRecord?
    /// A distilled student's shape against its teacher.
    public var student: RecoveryRecord.StudentSettings?
    public var validation: Validation?
    public var curve: [StepRecord]
    public var resumedFromStep: Int
    public var trainingTokens: Int
    public var tokensPerSecond: Double
    public var seconds: Double

    enum CodingKeys: String, CodingKey {
        case model, output, initCheckpoint = "init_checkpoint", recipe, calibration, student, validation, curve
        case resumedFromStep = "resumed_from_step", trainingTokens = "training_tokens"
        case tokensPerSecond = "tokens_per_second", seconds
    }
}

public enum FineTuneRun {
    public static func run(_ o: FineTuneRunOptions, progress: any ProgressObserver = NoProgress()) throws -> FineTuneReport {
        let t0 = Date()
        try o.validate()
        try AtomicFile.checkDirectoryDestination(o.output)
        try AtomicFile.checkFileDestination(o.resolvedStatePath)
        try ModelLoading.requireFloatModel(o.model, advice: "fine-tune against the float model it was made from (--init takes the quantized one)")
        let teacher = try LlamaModel.load(path: o.model)
        let threads = max(1, o.threads ?? Parallel.defaultThreads)
        teacher.threads = threads
        try TrainableLlama<Float>.checkTrainable(teacher.config, source: o.model)

        // Training windows (one token longer than the sequence: inputs, then the last target).
        var q = o.quantize ?? QuantizeRunOptions(model: o.model, output: o.output)
        q.model = o.model; q.calibration = o.calibration ?? q.calibration; q.tokenizer = o.tokenizer ?? q.tokenizer
        q.samples = o.samples; q.seqlen = o.sequenceLength + 1; q.seed = o.seed; q.preparedCalibration = nil
        let prepared = try trainingWindows(o, quantize: q, teacher: teacher, progress: progress)
        for w in prepared.windows { try teacher.validate(tokens: w) }

        // Held-out windows: the leakage guard first.
        var held: [[Int32]] = []
        var heldTokens = 0
        if let v = o.validation {
            let text = try CalibrationText.load(v)
            if let fp = prepared.fingerprint, fp.overlap(with: text) > 0.1 {
                throw QuantKitError(.input, String(format: "%@ overlaps the training text %@ (%.0f%% of its 8-grams); validate on other text",
                                                   v, prepared.record.file, fp.overlap(with: text) * 100))
            }
            let tok = try ModelLoading.loadTokenizer(try ModelLoading.tokenizerPath(model: o.model, explicit: o.tokenizer))
            let ids = tok.encode(text, addSpecialTokens: false).map { Int32($0) }
            let len = o.sequenceLength + 1
            let count = min(o.validationWindows, ids.count / len)
            guard count >= o.batch else {
                throw QuantKitError(.input, "\(v): \(ids.count) tokens make \(count) validation windows of \(len); need at least --batch \(o.batch)")
            }
            held = (0..<(count - count % o.batch)).map { Array(ids[($0 * len)..<(($0 + 1) * len)]) }
            for w in held { try teacher.validate(tokens: w) }
            heldTokens = held.count * o.sequenceLength
        }

        // The student: its starting weights and quantizers.
        let start = try studentStart(o, teacher: teacher, windows: prepared.windows, progress: progress)
        defer { if let d = start.temporaryDirectory { try? FileManager.default.removeItem(atPath: d) } }
        let activations = try activationQuantizers(o, start: start, teacher: teacher, windows: prepared.windows)
        let student = try TrainableLlama<Float>(config: start.config ?? teacher.config, tensors: start.tensors, weightQuant: start.modes,
                                                scales: start.scales, zeros: start.zeros, groups: start.groups,
                                                activations: activations, trainFloatTensors: o.trainFloatTensors || o.target == .float,
                                                batch: o.batch, sequenceLength: o.sequenceLength,
                                                threads: threads)
        var settings = OptimizerSettings(learningRate: o.learningRate, scaleLearningRate: o.scaleLearningRate,
                                         warmupSteps: o.warmupSteps, totalSteps: o.steps)
        settings.weightDecay = o.weightDecay; settings.clipNorm = o.clipNorm; settings.minRatio = o.minLearningRateRatio
        var recipe = FineTuneRecipe(steps: o.steps, batch: o.batch, sequenceLength: o.sequenceLength, optimizer: settings,
                                    loss: LossWeights(kd: o.kdWeight, ce: o.ceWeight), seed: o.seed,
                                    checkpointEvery: o.checkpointEvery, activations: activationsLabel(o, activations), trainScales: o.trainScales,
                                    trainFloatTensors: o.trainFloatTensors || o.target == .float,
                                    weights: start.label, initialization: start.initialization)
        recipe.teacherSamples = o.teacherSamples; recipe.temperature = o.temperature
        recipe.teacherTopK = o.teacherTopK
        recipe.cacheTeacher = o.cacheTeacher && o.teacherTopK == nil && FineTuner.teacherCacheFits(windows: prepared.windows.count, sequenceLength: o.sequenceLength,
                                                                           vocab: teacher.config.vocabSize)
        let tuner = try FineTuner(student: student, teacher: teacher, windows: prepared.windows, recipe: recipe)
        let state = o.resolvedStatePath
        if o.resume {
            guard FileManager.default.fileExists(atPath: state) else {
                throw QuantKitError(.input, "--resume: no saved state at \(state)")
            }
            try tuner.restore(from: state)
            progress.note("resuming from step \(tuner.step) of \(o.steps) (\(state))")
        } else if FileManager.default.fileExists(atPath: state) {
            throw QuantKitError(.input, "\(state) holds an earlier run's state: pass --resume to continue it, or remove it")
        }
        let resumedFrom = tuner.step

        let before = held.isEmpty ? nil : try tuner.evaluate(held)
        let task = progress.task("finetune", total: o.steps, unit: "tokens")
        let tokensPerStep = o.batch * o.sequenceLength
        var trainedSeconds = 0.0
        while tuner.step < o.steps {
            let r = try tuner.runStep()
            guard r.loss.isFinite, r.gradientNorm.isFinite else {
                throw QuantKitError(.numeric, "step \(r.step): the loss or gradient is not finite (loss \(r.loss)); lower --lr")
            }
            trainedSeconds += r.seconds
            task.update(done: r.step, units: (r.step - resumedFrom) * tokensPerStep,
                        detail: String(format: "loss %.5f kl %.5f lr %.2e", r.loss, r.kl, r.learningRate))
            if o.checkpointEvery > 0 && r.step % o.checkpointEvery == 0 && r.step < o.steps { try tuner.saveState(to: state) }
        }
        let after = held.isEmpty ? nil : try tuner.evaluate(held)

        try write(o, student: student, start: start, teacher: teacher, recipe: recipe, history: tuner.history,
                  fingerprint: prepared.fingerprint)
        try? FileManager.default.removeItem(atPath: state)
        let validation = before.flatMap { b in after.map { a in
            FineTuneReport.Validation(file: o.validation!, windows: held.count, tokens: heldTokens, before: b, after: a,
                                      klRecovered: b.kl > 0 ? (b.kl - a.kl) / b.kl : 0)
        } }
        let trained = (o.steps - resumedFrom) * tokensPerStep
        return FineTuneReport(model: o.model, output: o.output, initCheckpoint: o.initCheckpoint, recipe: recipe, calibration: prepared.record,
                              student: start.recovery.student, validation: validation,
                              curve: tuner.history, resumedFromStep: resumedFrom, trainingTokens: trained,
                              tokensPerSecond: trainedSeconds > 0 ? Double(trained) / trainedSeconds : 0,
                              seconds: Date().timeIntervalSince(t0))
    }

    /// The training windows: `samples` windows of the calibration text, then `teacherSamples` windows the teacher
    /// samples itself (TeacherSamples). The fingerprint is the calibration text's: the teacher's samples hold no text
    /// from outside the model (it starts from BOS alone), and generic phrases it writes ("Once upon a time, there
    /// was a little") would otherwise count as overlap with any text of its domain.
    static func trainingWindows(_ o: FineTuneRunOptions, quantize q: QuantizeRunOptions, teacher: LlamaModel,
                                progress: any ProgressObserver) throws -> PreparedCalibration {
        let text: PreparedCalibration? = o.samples > 0 ? try QuantizeRun.prepareCalibration(q) : nil
        guard o.teacherSamples > 0 else { return text! }
        let tok = try ModelLoading.loadTokenizer(try ModelLoading.tokenizerPath(model: o.model, explicit: o.tokenizer))
        guard let bos = tok.bosId else { throw QuantKitError(.input, "--teacher-samples: the tokenizer has no BOS token to start from") }
        let task = progress.task("teacher samples", total: o.teacherSamples, unit: "windows")
        let sampled = try TeacherSamples.generate(teacher: teacher, count: o.teacherSamples, length: o.sequenceLength + 1,
                                                  temperature: o.temperature, seed: o.seed, bos: Int32(bos),
                                                  eos: tok.eosId.map(Int32.init)) { task.update(done: $0) }
        var bytes = Data()
        for w in sampled { for t in w { withUnsafeBytes(of: t.littleEndian) { bytes.append(contentsOf: $0) } } }
        let record = text?.record ?? CalibrationRecord(
            file: String(format: "teacher samples (temperature %g)", o.temperature), sha256: Digest.sha256(bytes),
            tokens: sampled.count * (o.sequenceLength + 1), samples: 0, seqlen: o.sequenceLength + 1, seed: o.seed,
            fingerprint: nil)
        return PreparedCalibration(windows: (text?.windows ?? []) + sampled, record: record, fingerprint: text?.fingerprint)
    }

    /// The student's starting point.
    struct Start {
        var tensors: [String: [Float]] = [:]
        var modes: [String: WeightFakeQuant] = [:]
        var scales: [String: [Float]] = [:], zeros: [String: [Float]] = [:], groups: [String: [Int32]] = [:]
        var quantizeConfig: GPTQQuantizeConfig?
        /// The starting checkpoint's method and recovery record ("finetune" and empty from the float weights).
        var method = "finetune"
        var recovery = RecoveryRecord()
        var alreadyFineTuned = false
        /// A distilled student's own architecture (nil: the teacher's).
        var config: LlamaConfig?
        var label = "float"
        var initialization = "float"
        var temporaryDirectory: String?

        /// The starting weights as a model's weight source.
        func source() -> TensorDictionary {
            guard let c = config else { preconditionFailure("a start with its own config") }
            var out: [String: Tensor] = [:]
            for name in HFExport.tensorNames(c) { out[name] = Tensor(shape: TrainableLlama<Float>.shape(of: name, c), floats: tensors[name]!) }
            return TensorDictionary(out, label: label)
        }
    }

    static func modules(_ c: LlamaConfig) -> [String] {
        (0..<c.numHiddenLayers).flatMap { l in LlamaBlock.linearNames.map { "model.layers.\(l).\($0)" } }
    }

    static func studentStart(_ o: FineTuneRunOptions, teacher: LlamaModel, windows: [[Int32]],
                             progress: any ProgressObserver) throws -> Start {
        var s = Start()
        for name in HFExport.tensorNames(teacher.config) { s.tensors[name] = try teacher.source.tensor(name).floats() }
        switch o.target {
        case .float:
            if o.rotate { try rotateFloatStart(&s, teacher: teacher) }
            guard let text = o.student else { return s }
            return try smallerStudent(text, teacher: teacher, tensors: s.tensors, windows: windows, progress: progress)
        case .npu:
            for m in modules(teacher.config) { s.modes[m] = .npu(bits: 8) }
            s.label = "npu int8 per-channel"
            if o.rotate { try rotateFloatStart(&s, teacher: teacher) }
            return s
        case .checkpoint:
            break
        }
        var dir = o.initCheckpoint
        if dir == nil {
            guard var q = o.quantize else { throw QuantKitError(.input, "--init QUANTIZED or --method METHOD is required (or --target npu|float)") }
            let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("quantkit-finetune-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
            s.temporaryDirectory = tmp
            q.model = o.model; q.output = tmp + "/init"
            progress.note("quantizing the starting point (\(q.method.rawValue), \(q.bits) bits, group \(q.groupSize))")
            do { _ = try QuantizeRun.run(q, progress: progress) } catch { try? FileManager.default.removeItem(atPath: tmp); throw error }
            dir = q.output
        }
        var c: Start
        do { c = try checkpointStart(dir!, teacher: teacher, trainScales: o.trainScales) } catch {
            if let t = s.temporaryDirectory { try? FileManager.default.removeItem(atPath: t) }
            throw error
        }
        guard !c.alreadyFineTuned else {
            throw QuantKitError(.input, "--init \(dir!): already fine-tuned; start from its post-training result")
        }
        c.initialization = o.initCheckpoint ?? "quantize --method \(o.quantize!.method.rawValue)"
        c.temporaryDirectory = s.temporaryDirectory
        return c
    }

    /// The float start rotated as `quantize --rotate` does (seed 0): norms folded, head untied, online Hadamard
    /// before down_proj; the same function in another basis.
    static func rotateFloatStart(_ s: inout Start, teacher: LlamaModel) throws {
        let w = try LlamaFloatWeights(model: teacher)
        s.recovery.rotation = try Rotation.apply(to: w, seed: 0, threads: teacher.threads)
        s.config = w.config
        s.tensors = [:]
        for name in HFExport.tensorNames(w.config) { s.tensors[name] = w.values(name).map { Float($0) } }
        s.label += ", rotated"
        s.initialization = "float, rotated (seed 0)"
    }

    /// A smaller student cut from the teacher (StudentCut): evenly spaced layers, each MLP narrowed to the channels
    /// that contribute most on the first training windows.
    static func smallerStudent(_ text: String, teacher: LlamaModel, tensors: [String: [Float]], windows: [[Int32]],
                               progress: any ProgressObserver) throws -> Start {
        let c = teacher.config
        let shape = try StudentShape.parse(text, teacher: c)
        let importance = try StudentCut.channelImportance(teacher: teacher, windows: Array(windows.prefix(16)))
        let cut = try StudentCut.cut(teacher: c, tensors: tensors, shape: shape, importance: importance)
        progress.note("student \(shape.label): teacher layers \(cut.keptLayers), MLP \(c.intermediateSize) -> \(shape.intermediateSize) channels")
        var s = Start()
        s.tensors = cut.tensors
        s.config = cut.config
        s.method = "distill"
        s.recovery.student = .init(teacherLayers: c.numHiddenLayers, keptLayers: cut.keptLayers,
                                   teacherIntermediateSize: c.intermediateSize, intermediateSize: shape.intermediateSize,
                                   teacherBlockWeights: StudentCut.blockLinearWeights(c),
                                   blockWeights: StudentCut.blockLinearWeights(cut.config))
        s.label = "float student \(shape.label)"
        s.initialization = "teacher layers \(cut.keptLayers.map(String.init).joined(separator: ",")), \(shape.intermediateSize) of \(c.intermediateSize) MLP channels"
        return s
    }

    /// The student as a GPTQ-layout checkpoint holds it: latent weights = its dequantized codes, its scales, zero
    /// points and groups; embeddings, norms and head as stored.
    static func checkpointStart(_ path: String, teacher: LlamaModel, trainScales: Bool) throws -> Start {
        var s = Start()
        guard GPTQCheckpoint.isGPTQ(path) else {
            throw QuantKitError(.input, "--init \(path): not a GPTQ-layout checkpoint (quantize_config.json or config.json quantization_config)")
        }
        let (cfg, extra) = try GPTQCheckpoint.readConfig(path)
        if let summary = try GPTQCheckpoint.quantizationSummary(path) {
            s.method = summary.method
            s.recovery = summary.recovery ?? RecoveryRecord()
        }
        s.alreadyFineTuned = s.recovery.fineTune != nil || extra["finetune"] != nil
        let config = try LlamaConfig.load(path: path + "/config.json")
        // A rotated checkpoint computes the float model's function in another basis: its head is untied and its
        // down_proj input is rotated online. The student then trains in that basis, against the unrotated teacher.
        let rotated = config.downProjInputHadamard == true
        guard config.hiddenSize == teacher.config.hiddenSize, config.numHiddenLayers == teacher.config.numHiddenLayers,
              config.intermediateSize == teacher.config.intermediateSize, config.vocabSize == teacher.config.vocabSize,
              config.qDim == teacher.config.qDim, config.kvDim == teacher.config.kvDim,
              rotated || config.tieWordEmbeddings == teacher.config.tieWordEmbeddings else {
            throw QuantKitError(.input, "--init \(path): its architecture differs from the float model \(teacher.name)")
        }
        try TrainableLlama<Float>.checkTrainable(config, source: path)
        if rotated { s.config = config }
        let ckpt = try SafetensorsCheckpoint(path: path)
        for name in HFExport.tensorNames(teacher.config) { s.tensors[name] = try teacher.source.tensor(name).floats() }
        for name in HFExport.tensorNames(config) where !name.hasPrefix("model.layers.") || name.hasSuffix("norm.weight") {
            guard ckpt.contains(name) else { throw QuantKitError(.input, "--init \(path): \(name) is missing") }
            s.tensors[name] = try ckpt.tensor(name).floats()
        }
        for m in modules(config) {
            let (bits, group) = cfg.settings(for: m)
            let shape = TrainableLlama<Float>.shape(of: m + ".weight", config)
            let qw = try GPTQPacking.readLayer(ckpt, prefix: m, bits: bits, groupSize: group, inFeatures: shape[1],
                                               outFeatures: shape[0], symmetric: cfg.sym)
            s.tensors[m + ".weight"] = qw.dequantized()
            let st = QuantizerStart(qw)
            s.scales[m] = st.scales; s.zeros[m] = st.zeros; s.groups[m] = st.groups
            s.modes[m] = .grouped(bits: bits, symmetric: cfg.sym, learnScales: trainScales)
        }
        s.quantizeConfig = cfg
        s.label = "int\(cfg.bits) \(cfg.sym ? "sym" : "asym") \(cfg.groupSize > 0 ? "g\(cfg.groupSize)" : "per-channel")\(cfg.descAct ? " act-order" : "")"
        s.initialization = path
        return s
    }

    /// Per-tensor int8 parameters of every linear input, from the float teacher, or from a rotated start's own
    /// forward (its linears see rotated inputs, which the teacher never computes); W4A8's blocks need none.
    /// `--target npu`: the NPU's own calibration (`perplexity --backend npu`'s default: its settings, text and
    /// token count), inputs and outputs of every linear and the head, so training rounds where the NPU rounds.
    /// Otherwise: min/max on the first training windows (TFLite's range rule), inputs only.
    static func activationQuantizers(_ o: FineTuneRunOptions, start: Start, teacher: LlamaModel, windows: [[Int32]]) throws -> ActivationFakeQuant {
        switch o.activations {
        case "w4a8": return .w4a8
        case "int8":
            let model = try start.config?.downProjInputHadamard == true
                ? LlamaModel(config: start.config!, source: start.source(), name: "rotated start") : teacher
            model.threads = teacher.threads
            if o.target == .npu {
                let settings = NPUBackendSettings(configPath: o.npuConfig)
                let config = try settings.loadConfig()
                guard config.weightBits == 8, config.weightGranularity == .perChannel else {
                    throw QuantKitError(.unsupported, "\(o.npuConfig ?? "--npu-config"): --target npu trains for int8 per-channel weights; "
                                        + "weight_bits \(config.weightBits) \(config.weightGranularity.rawValue) is not trained for yet")
                }
                let tokenizer = try ModelLoading.loadTokenizer(try ModelLoading.tokenizerPath(model: o.model, explicit: o.tokenizer))
                let ids = try NPUModelSetup.calibrationIDs(tokenizer: tokenizer, settings: settings)
                let sim = try NPUSimulator.calibrate(model: model, config: config, calibrationTokens: ids)
                func params(_ p: Int8AffineParams) -> AffineInt8 { AffineInt8(scale: p.scale, zeroPoint: p.zeroPoint) }
                var outputs = sim.ranges.mapValues { params($0.output) }
                for (module, format) in sim.outputFormats {
                    switch format {
                    case .int16(let scale): outputs[module] = .int16Symmetric(scale: scale)
                    case .int8PerChannel(let scales):
                        let block = model.blocks.first { module.hasPrefix($0.prefix) }
                        let width = module == "lm_head" ? model.config.vocabSize
                            : block.flatMap { $0.linear(named: String(module.dropFirst($0.prefix.count)))?.outFeatures }
                        guard scales.count == width else {
                            throw QuantKitError(.shape, "\(module): \(scales.count) per-channel output scales for \(width ?? 0) outputs")
                        }
                        outputs[module] = .int8PerChannel(scales: scales)
                    }
                }
                return .int8Tensor(sim.ranges.mapValues { params($0.input) }, outputs: outputs)
            }
            let ranges = RangeObserver()
            model.observer = ranges
            defer { model.observer = nil }
            let n = min(windows.count, 16)
            let cache = model.makeCache(capacity: o.sequenceLength), state = model.makeState(maxRows: o.sequenceLength)
            for w in windows.prefix(n) { _ = model.forwardSequences(Array(w.dropLast()), count: 1, cache: cache, state: state) }
            return .int8Tensor(ranges.ranges.mapValues { AffineInt8.fromRange(min: $0.min, max: $0.max) })
        default: return .none
        }
    }

    /// The recipe's name for the activation rounding: --activations, and the int16 outputs an --npu-config keeps.
    static func activationsLabel(_ o: FineTuneRunOptions, _ quantizers: ActivationFakeQuant) -> String {
        guard case .int8Tensor(_, let outputs) = quantizers else { return o.activations }
        func names(_ include: (AffineInt8) -> Bool) -> String {
            Set(outputs.filter { include($0.value) }.keys.compactMap { $0.split(separator: ".").last.map(String.init) }).sorted()
                .joined(separator: ", ")
        }
        let int16 = names { $0.qmax > 127 }, perChannel = names { $0.channelScales != nil }
        return o.activations + (int16.isEmpty ? "" : " (int16 outputs: \(int16))") + (perChannel.isEmpty ? "" : " (per-channel outputs: \(perChannel))")
    }

    final class RangeObserver: LinearObserver {
        var ranges: [String: (min: Float, max: Float)] = [:]
        func observe(module: String, input: UnsafePointer<Float>, inFeatures: Int, output: UnsafePointer<Float>, outFeatures: Int, rows: Int) {
            var lo = ranges[module]?.min ?? .infinity, hi = ranges[module]?.max ?? -.infinity
            for i in 0..<(rows * inFeatures) { lo = min(lo, input[i]); hi = max(hi, input[i]) }
            ranges[module] = (lo, hi)
        }
    }

    /// Writes the trained model: a GPTQ-layout checkpoint of the trained codes and scales, or a float checkpoint
    /// (NPU or float targets) of the weights as training saw them; the recipe and loss curve in its record.
    static func write(_ o: FineTuneRunOptions, student: TrainableLlama<Float>, start: Start, teacher: LlamaModel,
                      recipe: FineTuneRecipe, history: [StepRecord], fingerprint: CalibrationFingerprint?) throws {
        let config = student.config
        let p = student.parameters
        // The starting checkpoint's method and recovery record carry over, with the fine-tuning added to it.
        var recovery = start.recovery
        let tail = history.suffix(max(1, history.count / 10))
        recovery.fineTune = .init(steps: recipe.steps, tokens: recipe.steps * recipe.batch * recipe.sequenceLength,
                                  learningRate: recipe.optimizer.learningRate, kd: recipe.loss.kd, ce: recipe.loss.ce,
                                  activations: recipe.activations, trainScales: recipe.trainScales,
                                  initialization: recipe.initialization,
                                  finalLoss: tail.map(\.loss).reduce(0, +) / Double(max(1, tail.count)))
        let record: [String: Any] = ["method": start.method, "tool": "quantkit", "recovery": try recovery.jsonObject(),
                                     "finetune": ["recipe": try JSONBridge.object(recipe), "curve": try JSONBridge.object(history)]]
        var files: [String: Data] = [:]
        if let fp = fingerprint { files["calibration_fingerprint.json"] = try JSONEncoder().encode(fp) }
        for f in QuantizeRun.tokenizerFiles(model: o.model, tokenizer: o.tokenizer) { files[f.name] = try readFile(f.from) }
        var floats: [(String, Tensor)] = []
        if let cfg = start.quantizeConfig {
            var layers: [(String, QuantizedWeight)] = []
            for m in modules(config) {
                guard case .grouped(let bits, let sym, _)? = student.weightQuant[m] else { continue }
                layers.append((m, TrainedCodes.quantized(student, module: m, bits: bits, symmetric: sym, groupSize: cfg.settings(for: m).groupSize)))
            }
            let quantized = Set(layers.map { $0.0 + ".weight" })
            for name in HFExport.tensorNames(config) where !quantized.contains(name) {
                floats.append((name, Tensor(shape: p.entry(name)!.shape, floats: p.array(name))))
            }
            var modelConfig = (try JSONSerialization.jsonObject(with: try config.jsonData()) as? [String: Any]) ?? [:]
            modelConfig["quantization_config"] = cfg.json()
            files["config.json"] = try JSONSerialization.data(withJSONObject: modelConfig, options: [.prettyPrinted, .sortedKeys])
            try GPTQCheckpoint.write(to: o.output, floatTensors: floats, layers: layers, config: cfg, metadata: record, files: files)
            return
        }
        var written = config
        if let d = o.outputDType { written.torchDtype = ["F32": "float32", "F16": "float16", "BF16": "bfloat16"][d.rawValue] }
        for name in HFExport.tensorNames(config) {
            let module = String(name.dropLast(".weight".count))
            let values = student.weightQuant[module] != nil ? student.effectiveWeight(module)! : p.array(name)
            let t = Tensor(shape: p.entry(name)!.shape, floats: values)
            floats.append((name, t.shape.count == 2 ? t.converted(to: o.outputDType ?? .f32) : t))
        }
        files["config.json"] = try written.jsonData()
        files[GPTQCheckpoint.floatRecordFile] = try JSONSerialization.data(withJSONObject: record, options: [.prettyPrinted, .sortedKeys])
        try AtomicFile.writeDirectory(to: o.output) { tmp in
            try SafetensorsWriter.write(floats, metadata: ["format": "pt"], to: tmp + "/model.safetensors")
            for (name, data) in files { try data.write(to: URL(fileURLWithPath: tmp + "/" + name)) }
        }
    }
}
