import Foundation
import Models
import Quantization
import TensorCore
import TestSupport
import Testing
@testable import Evaluation
@testable import Training

/// `quantkit finetune` as a library run on the shipped stories260K, tiny recipes: the checkpoint it writes reads
/// back in the engine to the model training computed, the recipe is recorded, bad starts are refused.
@Suite struct FineTuneRunTests {
    static let model = Repo.path("Models/stories260K/stories260K.bin")

    static func options(_ dir: String) -> FineTuneRunOptions {
        var o = FineTuneRunOptions(model: model, output: dir + "/out")
        o.steps = 3; o.batch = 2; o.sequenceLength = 32; o.samples = 8; o.warmupSteps = 1; o.learningRate = 1e-3
        o.checkpointEvery = 0; o.threads = 2; o.teacherSamples = 4
        return o
    }

    /// Engine logits of a checkpoint on one sequence against the training graph started from that checkpoint.
    static func agreement(_ path: String, trainScales: Bool) throws -> (worst: Float, scale: Float) {
        let teacher = try LlamaModel.load(path: model)
        let start = try FineTuneRun.checkpointStart(path, teacher: teacher, trainScales: trainScales)
        let tokens: [Int32] = (0..<32).map { Int32(($0 * 37 + 11) % 512) }
        let student = try TrainableLlama<Float>(config: start.config ?? teacher.config, tensors: start.tensors, weightQuant: start.modes,
                                                scales: start.scales, zeros: start.zeros, groups: start.groups, batch: 1,
                                                sequenceLength: 32, threads: 2)
        _ = try student.loss(tokens: tokens, targets: nil, teacher: nil, weights: LossWeights(kd: 0, ce: 0), gradients: false)
        let trained = Array(UnsafeBufferPointer(start: student.logits, count: 32 * 512))
        let engine = try ModelLoading.loadModel(path).logits(tokens)
        return (maxAbsDiff(trained, engine), engine.map(abs).max()!)
    }

    @Test func trainedCheckpointReadsBackAsTrainedAndRecordsTheRecipe() throws {
        let dir = Repo.tempDirectory("finetune")
        var o = Self.options(dir)
        var q = QuantizeRunOptions(model: Self.model, output: dir + "/unused")
        q.method = .rtn; q.bits = 4; q.groupSize = 32
        o.quantize = q
        o.trainScales = true
        o.scaleLearningRate = 1e-4
        let r = try FineTuneRun.run(o)
        #expect(r.curve.count == 3 && r.curve.allSatisfy { $0.loss.isFinite && $0.loss > 0 })
        #expect(r.trainingTokens == 3 * 2 * 32)
        // Logits of the written checkpoint in the engine (W4 kernels) and in the training graph agree to float
        // rounding: the file holds the codes and scales training used.
        let (worst, scale) = try Self.agreement(o.output, trainScales: true)
        #expect(worst <= 1e-4 * scale, "engine vs training logits differ by \(worst) (largest logit \(scale))")
        let summary = try #require(try GPTQCheckpoint.quantizationSummary(o.output))
        #expect(summary.method == "rtn")
        let ft = try #require(summary.recovery?.fineTune)
        #expect(ft.steps == 3 && ft.tokens == 192 && ft.trainScales && ft.initialization == "quantize --method rtn")
        // A fine-tuned checkpoint is not a starting point.
        var again = Self.options(dir)
        again.output = dir + "/again"; again.initCheckpoint = o.output
        #expect(throws: QuantKitError.self) { try FineTuneRun.run(again) }
        #expect(!FileManager.default.fileExists(atPath: o.resolvedStatePath))
    }

    /// A rotated start (RTN INT4 g32 after the residual rotation, with the online Hadamard before down_proj; the
    /// head untied): the training graph computes the engine's logits of the start and of the trained checkpoint,
    /// and the output keeps the rotation.
    @Test func rotatedStartTrainsInItsOwnBasisAndStaysRotated() throws {
        let dir = Repo.tempDirectory("finetune-rotated")
        var q = QuantizeRunOptions(model: Self.model, output: dir + "/rotated")
        q.method = .rtn; q.bits = 4; q.groupSize = 32; q.rotate = true
        _ = try QuantizeRun.run(q)
        let before = try Self.agreement(q.output, trainScales: false)
        #expect(before.worst <= 1e-4 * before.scale, "rotated start: engine vs training logits differ by \(before.worst)")
        var o = Self.options(dir)
        o.initCheckpoint = q.output
        o.trainScales = true
        o.scaleLearningRate = 1e-4
        let r = try FineTuneRun.run(o)
        #expect(r.curve.count == 3 && r.curve.allSatisfy { $0.loss.isFinite && $0.loss > 0 })
        let config = try LlamaConfig.load(path: o.output + "/config.json")
        #expect(config.downProjInputHadamard == true && !config.tieWordEmbeddings)
        let after = try Self.agreement(o.output, trainScales: true)
        #expect(after.worst <= 1e-4 * after.scale, "trained rotated checkpoint: engine vs training logits differ by \(after.worst)")
        // Training moved the weights: the trained logits are not the start's.
        let tokens: [Int32] = (0..<32).map { Int32(($0 * 37 + 11) % 512) }
        let moved = maxAbsDiff(try ModelLoading.loadModel(q.output).logits(tokens), try ModelLoading.loadModel(o.output).logits(tokens))
        #expect(moved > 1e-3)
    }

    /// Static int8 ranges of a rotated start are observed on its own forward: layer 0's q_proj reads
    /// RMSNorm(embedding) of the rotated embedding (gain folded to 1), computed here directly from the checkpoint;
    /// the unrotated teacher's range for that input is another one.
    @Test func rotatedStartsObserveTheirOwnInt8Ranges() throws {
        let dir = Repo.tempDirectory("finetune-rotated-int8")
        var q = QuantizeRunOptions(model: Self.model, output: dir + "/rotated")
        q.method = .rtn; q.bits = 8; q.groupSize = -1; q.rotate = true
        _ = try QuantizeRun.run(q)
        let teacher = try LlamaModel.load(path: Self.model)
        var o = Self.options(dir)
        o.activations = "int8"
        let windows: [[Int32]] = (0..<3).map { (w: Int) -> [Int32] in
            (0..<33).map { (i: Int) -> Int32 in Int32((i * 37 + w * 101 + 11) % 512) }
        }
        let start = try FineTuneRun.checkpointStart(q.output, teacher: teacher, trainScales: false)
        guard case .int8Tensor(let ranges, _) = try FineTuneRun.activationQuantizers(o, start: start, teacher: teacher, windows: windows),
              case .int8Tensor(let teacherRanges, _) = try FineTuneRun.activationQuantizers(o, start: FineTuneRun.Start(), teacher: teacher, windows: windows)
        else { Issue.record("no int8 quantizers"); return }
        let ckpt = try SafetensorsCheckpoint(path: q.output)
        let embed = try ckpt.tensor("model.embed_tokens.weight").floats(), gain = try ckpt.tensor("model.layers.0.input_layernorm.weight").floats()
        let dim = teacher.config.hiddenSize
        var lo = Float.infinity, hi = -Float.infinity
        for w in windows {
            for t in w.dropLast() {
                let e = Array(embed[(Int(t) * dim)..<((Int(t) + 1) * dim)])
                let r = 1 / (e.reduce(0) { $0 + Double($1) * Double($1) } / Double(dim) + Double(teacher.config.rmsNormEps)).squareRoot()
                for j in 0..<dim { let x = Float(Double(e[j]) * r) * gain[j]; lo = min(lo, x); hi = max(hi, x) }
            }
        }
        let want = AffineInt8.fromRange(min: lo, max: hi)
        let got = try #require(ranges["model.layers.0.self_attn.q_proj"])
        #expect(abs(got.scale / want.scale - 1) < 1e-5 && abs(got.zeroPoint - want.zeroPoint) <= 1, "\(got) vs \(want)")
        let unrotated = try #require(teacherRanges["model.layers.0.self_attn.q_proj"])
        #expect(abs(unrotated.scale / want.scale - 1) > 0.05, "the teacher's range \(unrotated) should differ from the rotated one \(want)")
        #expect(ranges.keys.sorted() == teacherRanges.keys.sorted())
    }

    /// --target npu rounds where the simulated NPU rounds: every linear's input and output (the head's too) with the
    /// NPU's own calibrated ranges. Reference: the NPU simulator itself (integer GEMMs, fixed-point requantization,
    /// fp16 nonlinear unit) on the same tokens. Rounding codes flip between the two (fp16 against fp32 nonlinear
    /// ops), so the test compares distances from the float model: with the output round trips the training forward
    /// is as far from float as the NPU (within 30%); with inputs alone, what training saw before, it is not.
    @Test func npuTargetRoundsWhereTheNPURounds() throws {
        try roundsWhereTheNPURounds(npuConfig: nil)
    }

    /// The same with `--npu-config` keeping q_proj's and k_proj's outputs at int16, or at int8 with per-channel
    /// scales: training rounds those as the NPU calibrates them (the other 26 outputs stay per-tensor int8) and stays
    /// as far from float as that NPU.
    @Test(arguments: [#"{"int16_outputs": ["k_proj", "q_proj"]}"#, #"{"per_channel_outputs": ["k_proj", "q_proj"]}"#])
    func npuTargetRoundsAsTheConfiguredNPU(config: String) throws {
        let dir = Repo.tempDirectory("finetune-npu-config")
        let cfg = dir + "/npu.json"
        try Data(config.utf8).write(to: URL(fileURLWithPath: cfg))
        try roundsWhereTheNPURounds(npuConfig: cfg)
    }

    func roundsWhereTheNPURounds(npuConfig: String?) throws {
        let dir = Repo.tempDirectory("finetune-npu-points")
        var o = Self.options(dir)
        o.target = .npu; o.activations = "int8"; o.npuConfig = npuConfig
        let teacher = try LlamaModel.load(path: Self.model)
        let start = try FineTuneRun.studentStart(o, teacher: teacher, windows: [], progress: NoProgress())
        guard case .int8Tensor(let inputs, let outputs) = try FineTuneRun.activationQuantizers(o, start: start, teacher: teacher, windows: [])
        else { Issue.record("no int8 quantizers"); return }
        #expect(outputs.count == 7 * teacher.config.numHiddenLayers + 1 && outputs["lm_head"] != nil && inputs["lm_head"] != nil)
        let wide = outputs.filter {
            ($0.value.qmin == -32768 && $0.value.qmax == 32767 && $0.value.zeroPoint == 0)
                || [teacher.config.qDim, teacher.config.kvDim].contains($0.value.channelScales?.count ?? 0)
        }.keys
        #expect(wide.count == (npuConfig == nil ? 0 : 2 * teacher.config.numHiddenLayers))
        #expect(wide.allSatisfy { $0.hasSuffix("self_attn.q_proj") || $0.hasSuffix("self_attn.k_proj") })
        let tokenizer = try ModelLoading.loadTokenizer(try ModelLoading.tokenizerPath(model: Self.model, explicit: nil))
        let text = "Once upon a time, there was a little girl named Lily. She loved to play in the park with her big red ball. "
            + "One day, she saw a small dog under a tree. The dog was sad because it was lost."
        let tokens = Array(tokenizer.encode(text, addSpecialTokens: true).map { Int32($0) }.prefix(48))
        let n = tokens.count, vocab = teacher.config.vocabSize
        func trainingLogits(_ a: ActivationFakeQuant) throws -> [Float] {
            let m = try TrainableLlama<Float>(config: teacher.config, tensors: start.tensors, weightQuant: start.modes, activations: a,
                                              batch: 1, sequenceLength: n, threads: 2)
            _ = try m.loss(tokens: tokens, targets: nil, teacher: nil, weights: LossWeights(kd: 0, ce: 0), gradients: false)
            return Array(UnsafeBufferPointer(start: m.logits, count: n * vocab))
        }
        let full = try trainingLogits(.int8Tensor(inputs, outputs: outputs))
        let inputsOnly = try trainingLogits(.int8Tensor(inputs))
        let npuModel = try LlamaModel.load(path: Self.model)
        _ = try NPUModelSetup.apply(to: npuModel, tokenizer: tokenizer, settings: NPUBackendSettings(configPath: npuConfig), window: 256)
        let npu = try npuModel.logits(tokens)
        func meanKL(_ p: [Float], _ q: [Float]) -> Double {
            var total = 0.0
            for r in 0..<n {
                let a = p[(r * vocab)..<((r + 1) * vocab)].map(Double.init), b = q[(r * vocab)..<((r + 1) * vocab)].map(Double.init)
                let ma = a.max()!, mb = b.max()!
                let la = log(a.reduce(0) { $0 + exp($1 - ma) }) + ma, lb = log(b.reduce(0) { $0 + exp($1 - mb) }) + mb
                for j in 0..<vocab { total += exp(a[j] - la) * ((a[j] - la) - (b[j] - lb)) }
            }
            return total / Double(n)
        }
        let float = try teacher.logits(tokens)
        let npuKL = meanKL(float, npu), fullKL = meanKL(float, full), inputsKL = meanKL(float, inputsOnly)
        #expect(abs(fullKL / npuKL - 1) < 0.3, "KL(float || NPU) \(npuKL), KL(float || training) \(fullKL) (inputs only: \(inputsKL))")
        if npuConfig == nil { #expect(inputsKL < 0.7 * npuKL, "KL(float || NPU) \(npuKL), inputs only \(inputsKL)") }
    }

    /// --target npu --rotate: the float start rotated in-process trains against the NPU's int8 weights and int8
    /// activations and is written rotated (online Hadamard marked, head untied). With a learning rate of ~0 the
    /// written model is the rotated float model, whose logits are the teacher's.
    @Test func rotatedNPUTargetIsWrittenRotated() throws {
        let dir = Repo.tempDirectory("finetune-npu-rotated")
        var o = Self.options(dir)
        o.target = .npu; o.rotate = true; o.activations = "int8"; o.learningRate = 1e-30; o.steps = 1; o.warmupSteps = 0
        let r = try FineTuneRun.run(o)
        #expect(r.recipe.weights == "npu int8 per-channel, rotated")
        let m = try LlamaModel.load(path: o.output)
        #expect(m.config.downProjInputHadamard == true && !m.config.tieWordEmbeddings)
        #expect(try GPTQCheckpoint.quantizationSummary(o.output)?.recovery?.rotation?.onlineHadamard == true)
        let tokens: [Int32] = (0..<32).map { Int32(($0 * 37 + 11) % 512) }
        let want = try LlamaModel.load(path: Self.model).logits(tokens), got = try m.logits(tokens)
        // The NPU target writes weights on the int8 grid, so the function differs by int8 weight rounding only.
        let scale = want.map(abs).max()!
        #expect(maxAbsDiff(got, want) < 0.05 * scale && maxAbsDiff(got, want) > 0, "\(maxAbsDiff(got, want)) of \(scale)")
        var bad = Self.options(dir)
        bad.output = dir + "/bad"; bad.rotate = true; bad.initCheckpoint = dir + "/none"
        #expect(throws: QuantKitError.self) { try FineTuneRun.run(bad) }
    }

    /// A 2 x 86 student written as f16: a float checkpoint of the student's shape that the engine loads, with the
    /// cut recorded, and bits per weight counted per teacher weight: 16 x 2(64x192 + 3x64x86) / 5(64x192 + 3x64x172)
    /// (attention: q and o 64 x 64, k and v 32 x 64).
    @Test func distilledStudentIsAFloatCheckpointSizedAgainstItsTeacher() throws {
        let dir = Repo.tempDirectory("finetune-student")
        var o = Self.options(dir)
        o.target = .float; o.student = "2x86"; o.outputDType = .f16
        let r = try FineTuneRun.run(o)
        #expect(r.student?.keptLayers == [0, 4] && r.student?.intermediateSize == 86)
        let m = try LlamaModel.load(path: o.output)
        #expect(m.config.numHiddenLayers == 2 && m.config.intermediateSize == 86)
        #expect(try m.source.tensor("model.layers.1.mlp.down_proj.weight").dtype == .f16)
        let summary = try GPTQCheckpoint.quantizationSummary(o.output)
        #expect(summary?.method == "distill")
        let bpw = try #require(ModelLoading.blockLinearBitsPerWeight(m, summary: summary))
        let want = 16.0 * Double(2 * (64 * 192 + 3 * 64 * 86)) / Double(5 * (64 * 192 + 3 * 64 * 172))
        #expect(abs(bpw - want) < 1e-12, "\(bpw) vs \(want)")
        // A student needs --target float.
        var bad = Self.options(dir)
        bad.output = dir + "/bad"; bad.student = "2x86"; bad.target = .npu
        #expect(throws: QuantKitError.self) { try FineTuneRun.run(bad) }
        #expect(!FileManager.default.fileExists(atPath: bad.output))
    }

    /// The default training set: the text's windows, then the teacher's own samples (as TeacherSamples draws them
    /// for the run's seed); the leakage fingerprint stays the text's alone.
    @Test func teacherSamplesFollowTheTextWindows() throws {
        let dir = Repo.tempDirectory("finetune-mix")
        var o = Self.options(dir)
        o.samples = 2; o.teacherSamples = 3; o.seed = 5
        let teacher = try LlamaModel.load(path: Self.model)
        var q = QuantizeRunOptions(model: Self.model, output: o.output)
        q.samples = 2; q.seqlen = 33; q.seed = 5
        let mixed = try FineTuneRun.trainingWindows(o, quantize: q, teacher: teacher, progress: NoProgress())
        let text = try QuantizeRun.prepareCalibration(q)
        let sampled = try TeacherSamples.generate(teacher: teacher, count: 3, length: 33, temperature: 1, seed: 5, bos: 1, eos: 2)
        #expect(mixed.windows == text.windows + sampled)
        #expect(mixed.fingerprint == text.fingerprint && mixed.fingerprint != nil)
        o.samples = 0
        let alone = try FineTuneRun.trainingWindows(o, quantize: q, teacher: teacher, progress: NoProgress())
        #expect(alone.windows == sampled && alone.fingerprint == nil && alone.record.samples == 0)
    }

    @Test func npuTargetWritesWeightsOnTheInt8Grid() throws {
        let dir = Repo.tempDirectory("finetune-npu")
        var o = Self.options(dir)
        o.target = .npu; o.activations = "int8"
        _ = try FineTuneRun.run(o)
        let m = try LlamaModel.load(path: o.output)
        let w = try m.source.tensor("model.layers.0.mlp.up_proj.weight").floats()
        let cols = m.config.hiddenSize
        for r in 0..<4 {
            let row = Array(w[(r * cols)..<((r + 1) * cols)])
            let s = row.map(abs).max()! / 127
            for v in row { #expect(abs(v / s - (v / s).rounded()) < 1e-3, "row \(r): \(v) is not on the int8 grid of scale \(s)") }
        }
        #expect(try GPTQCheckpoint.quantizationSummary(o.output)?.recovery?.fineTune?.activations == "int8")
    }

    @Test func validationTextOverlappingTheTrainingTextIsRefused() throws {
        let dir = Repo.tempDirectory("finetune-leak")
        var o = Self.options(dir)
        o.target = .float
        o.calibration = Repo.path("Corpora/wikitext-2-raw/wiki.test.raw.zst")
        o.validation = Repo.path("Corpora/wikitext-2-raw/wiki.test.raw.zst")
        do {
            _ = try FineTuneRun.run(o)
            Issue.record("an overlapping validation text was accepted")
        } catch let e as QuantKitError {
            #expect(e.description.contains("overlaps the training text"), "\(e)")
        }
        #expect(!FileManager.default.fileExists(atPath: o.output))
    }

    @Test func stateFilesAreNeverSilentlyReusedOrInvented() throws {
        let dir = Repo.tempDirectory("finetune-state")
        var o = Self.options(dir)
        o.target = .float
        o.resume = true
        #expect(throws: QuantKitError.self) { try FineTuneRun.run(o) }   // nothing to resume
        o.resume = false
        try Data("x".utf8).write(to: URL(fileURLWithPath: o.resolvedStatePath))
        #expect(throws: QuantKitError.self) { try FineTuneRun.run(o) }   // an earlier run's state is in the way
        #expect(!FileManager.default.fileExists(atPath: o.output))
    }
}
