import ArgumentParser
import Evaluation
import Foundation
import Quantization
import TensorCore

/// `quantkit finetune`: quantization-aware fine-tuning with distillation from the float model.
struct FinetuneCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "finetune",
        abstract: "Quantization-aware fine-tuning: distil the float model into a quantized one (from a post-training result, or the NPU's W8A8) and write an ordinary checkpoint.")

    @Option(help: "The float model (teacher): a Hugging Face directory or a llama2.c .bin.") var model: String
    @Option(name: .customLong("init"), help: "Start from this quantized (GPTQ-layout) checkpoint: its dequantized codes become the latent weights.") var initCheckpoint: String?
    @Option(help: "Or quantize the starting point here first with this method (as quantize --method: rtn, gptq, awq, hqq, ...).") var method: String?
    @Option(help: "Bits of the starting point made with --method.") var bits: Int = 4
    @Option(parsing: .unconditional, help: "Group size of the starting point made with --method (-1 per output channel).") var groupSize: Int = 32
    @Flag(help: "Act-order for the starting point made with --method gptq.") var actOrder = false
    @Flag(help: "Asymmetric starting point made with --method.") var asym = false
    @Flag(help: "Clipping search for the starting point made with --method.") var mse = false
    @Flag(help: "Rotate the starting point made with --method, or the float start of --target npu|float (as quantize --rotate); the student trains in the rotated basis and stays rotated.") var rotate = false
    @Option(help: "What the weights train against: checkpoint (grouped codes, from --init or --method), npu (the NPU's per-channel int8, written as float), float.") var target: String = "checkpoint"
    @Option(help: "Fake-quantize the linear layers' inputs: none, int8 (static per-tensor int8; with --target npu every point the NPU rounds, inputs and outputs, at the NPU's own calibrated ranges) or w4a8 (per-32 blocks).") var activations: String = "none"
    @Flag(help: "Train the quantization scales too (LSQ).") var trainScales = false
    @Flag(name: .customLong("train-float"), help: "Train the tensors that stay float too (embedding, norms, head); by default only the quantized linears train.") var trainFloat = false
    @Option(name: .customLong("npu-config"), help: "With --target npu --activations int8: the NPU settings (JSON) the model will run under (perplexity --backend npu --npu-config), so training calibrates and rounds as that NPU does, e.g. its int16_outputs.") var npuConfig: String?
    @Option(help: "Distil a smaller float student (with --target float): LAYERSxHIDDEN, e.g. 3x86 (evenly spaced teacher layers, the MLP cut to its most active channels); '-' keeps the teacher's value.") var student: String?
    @Option(help: "Matrices' dtype of a float output (--target npu|float): f32, f16 or bf16 (default f32).") var dtype: String?
    @Option(help: "Training text (default: the shipped SciFact abstracts).") var calibration: String?
    @Option(name: .customLong("teacher-samples"), help: "Add this many windows the float teacher samples itself from BOS (data-free, as LLM-QAT; 0: the text alone); --samples 0 trains on them alone.") var teacherSamples: Int = 128
    @Option(help: "Sampling temperature of --teacher-samples.") var temperature: Double = 1
    @Flag(name: .customLong("no-teacher-cache"), help: "Compute the teacher's logits every step instead of keeping each window's after its first use (kept only when they fit in 2 GiB).") var noTeacherCache = false
    @Option(name: .customLong("teacher-top-k"), help: "Distil from the teacher's K most probable tokens per position plus their remaining mass, kept per window (a few hundred bytes a position, for large vocabularies whose full logits do not fit the cache); default: the full logits.") var teacherTopK: Int?
    @Option(help: "Tokenizer for the training and validation text (default: the model's).") var tokenizer: String?
    @Option(help: "Training windows drawn from the text.") var samples: Int = 128
    @Option(help: "Tokens per training sequence.") var seqlen: Int = 256
    @Option(help: "Seed of the windows and their order: the same seed, machine and thread count repeat a run bit for bit.") var seed: UInt64 = 0
    @Option(help: "Optimizer steps.") var steps: Int = 200
    @Option(help: "Sequences per step.") var batch: Int = 8
    @Option(help: "Peak learning rate of the weights (AdamW); default 3e-4, 1e-4 with --target npu.") var lr: Double?
    @Option(name: .customLong("scale-lr"), help: "Peak learning rate of the scales (with --train-scales).") var scaleLr: Double = 1e-5
    @Option(help: "Linear warmup steps, then cosine decay.") var warmup: Int = 10
    @Option(name: .customLong("min-lr-ratio"), help: "Final learning rate as a share of the peak.") var minLrRatio: Double = 0
    @Option(name: .customLong("weight-decay"), help: "AdamW weight decay (matrices only).") var weightDecay: Double = 0
    @Option(help: "Clip the global gradient norm to this (0: off).") var clip: Double = 1
    @Option(help: "Weight of KL(teacher || student) per token.") var kd: Double = 1
    @Option(help: "Weight of next-token cross-entropy per token.") var ce: Double = 0
    @Option(name: .customLong("checkpoint-every"), help: "Save the training state every N steps (an interrupted run loses at most N).") var checkpointEvery: Int = 50
    @Option(help: "Where the training state is saved (default: OUTPUT.finetune-state.safetensors).") var state: String?
    @Flag(help: "Continue from the saved training state.") var resume = false
    @Option(help: "Held-out text for the before/after validation loss (refused when it overlaps the training text).") var validation: String?
    @Option(name: .customLong("validation-windows"), help: "Validation windows (of --seqlen + 1 tokens).") var validationWindows: Int = 16
    @Option(help: "Output directory (written atomically).") var output: String
    @Option(help: "Write a JSON result here.") var json: String?
    @Option(help: "Worker threads.") var threads: Int?

    func options() throws -> FineTuneRunOptions {
        var o = FineTuneRunOptions(model: model, output: output)
        guard let t = FineTuneRunOptions.Target(rawValue: target) else {
            throw QuantKitError(.input, "--target must be checkpoint, npu or float (got \(target))")
        }
        o.target = t
        o.initCheckpoint = initCheckpoint
        if let method {
            guard initCheckpoint == nil else { throw QuantKitError(.input, "--init and --method are exclusive") }
            guard let m = QuantMethod(rawValue: method.lowercased()) else {
                throw QuantKitError(.input, "--method must be one of \(QuantMethod.names) (got \(method))")
            }
            var q = QuantizeRunOptions(model: model, output: output)
            q.method = m; q.bits = bits; q.groupSize = groupSize; q.actOrder = actOrder; q.symmetric = !asym; q.mseSearch = mse
            q.rotate = rotate
            q.threads = threads
            o.quantize = q
        }
        if rotate && method == nil {
            guard t != .checkpoint else {
                throw QuantKitError(.input, "--rotate applies to the starting point made with --method or to --target npu|float (rotate a checkpoint with quantize --rotate, then --init it)")
            }
            o.rotate = true
        }
        o.activations = activations
        o.npuConfig = npuConfig
        o.trainScales = trainScales
        o.trainFloatTensors = trainFloat
        o.student = student
        if let dtype {
            guard let d = DType(rawValue: dtype.uppercased()) else { throw QuantKitError(.input, "--dtype must be f32, f16 or bf16 (got \(dtype))") }
            o.outputDType = d
        }
        o.calibration = calibration; o.tokenizer = tokenizer
        o.teacherSamples = teacherSamples; o.temperature = temperature; o.cacheTeacher = !noTeacherCache; o.teacherTopK = teacherTopK
        o.samples = samples; o.sequenceLength = seqlen; o.seed = seed
        o.steps = steps; o.batch = batch; o.learningRate = lr ?? FineTuneRunOptions.defaultLearningRate(for: t); o.scaleLearningRate = scaleLr; o.warmupSteps = warmup
        o.minLearningRateRatio = minLrRatio; o.weightDecay = weightDecay; o.clipNorm = clip; o.kdWeight = kd; o.ceWeight = ce
        o.checkpointEvery = checkpointEvery; o.statePath = state; o.resume = resume
        o.validation = validation; o.validationWindows = validationWindows
        o.threads = threads
        return o
    }

    func run() throws {
        try runReportingErrors {
            if let json { try AtomicFile.checkFileDestination(json) }
            let o = try options()
            Console.resumeHint = "the training state saved every \(checkpointEvery) steps is in \(o.resolvedStatePath): run the same command with --resume to continue"
            let report = try FineTuneRun.run(o, progress: Console.progress)
            print(Self.summary(report))
            if let json { try ResultEnvelope(kind: "finetune").write(report, to: json) }
        }
    }

    static func summary(_ r: FineTuneReport) -> String {
        var lines: [String] = []
        let c = r.recipe
        lines.append("fine-tuned \(c.weights) (from \(c.initialization); activations \(c.activations)\(c.trainScales ? ", learned scales" : "")): \(c.steps) steps x \(c.batch) x \(c.sequenceLength) tokens, lr \(c.optimizer.learningRate), loss \(c.loss.kd) KL + \(c.loss.ce) CE")
        if let st = r.student {
            lines.append(String(format: "student: %d of %d teacher layers %@, MLP %d of %d channels; %d block weights, %.1f%% of the teacher's",
                                st.keptLayers.count, st.teacherLayers, st.keptLayers.description, st.intermediateSize,
                                st.teacherIntermediateSize, st.blockWeights, st.sizeRatio * 100))
        }
        let every = max(1, r.curve.count / 10)
        lines.append("step      loss        KL          CE          same-top   grad-norm   lr")
        for s in r.curve where s.step % every == 0 || s.step == 1 || s.step == r.curve.count {
            lines.append(String(format: "%5d  %10.6f  %10.6f  %10.6f  %8.2f%%  %10.4f  %.3e", s.step, s.loss, s.kl, s.ce, s.sameTop * 100,
                                s.gradientNorm, s.learningRate))
        }
        if let v = r.validation {
            lines.append(String(format: "validation (%@, %d windows, %d tokens): KL %.6f -> %.6f (%.1f%% recovered), CE %.5f -> %.5f, same-top %.2f%% -> %.2f%%",
                                v.file, v.windows, v.tokens, v.before.kl, v.after.kl, v.klRecovered * 100, v.before.ce, v.after.ce,
                                v.before.sameTop * 100, v.after.sameTop * 100))
        }
        lines.append(String(format: "%d training tokens at %.0f tokens/s; %.1f s in all%@", r.trainingTokens, r.tokensPerSecond, r.seconds,
                            r.resumedFromStep > 0 ? " (resumed at step \(r.resumedFromStep))" : ""))
        lines.append("wrote \(r.output)")
        return lines.joined(separator: "\n")
    }
}
