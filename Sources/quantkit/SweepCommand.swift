import ArgumentParser
import Evaluation
import Foundation
import TensorCore

extension SweepScheduler: ExpressibleByArgument {}

/// `quantkit sweep`: a grid of quantization methods x bits x group sizes, each quantized on the same calibration
/// and evaluated with the same protocol on the same held-out text, in one table and one study report. With
/// --emit it writes the same work as scheduler jobs instead; the jobs' tasks come back here with --plan.
struct SweepCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sweep",
        abstract: "Quantize and evaluate a grid of methods x bits x group sizes; print one table and write the study report.",
        discussion: """
        On a cluster: --emit slurm DIR (or --emit k8s DIR) writes DIR/plan.json, one job array per stage (the float
        base, then the variants, then the report) and DIR/submit.sh, which submits them chained with afterok. Each
        array task runs `quantkit sweep --plan DIR/plan.json --stage K --task I`. Outputs go to --output, which must
        be a directory every node sees; a task whose outputs exist does nothing, so a failed array is resubmitted
        as it is. --eval-shards S splits every variant's evaluation into S tasks, merged by the report stage.
        """)

    @Option(help: "The float model: a Llama-family HF directory or a llama2.c .bin.") var model: String?
    @Option(help: "Tokenizer (default: the model's own).") var tokenizer: String?
    @Option(help: "Calibration text (default: Corpora/scifact/corpus.jsonl.zst).") var calibration: String?
    @Option(help: "Held-out evaluation text (must not overlap the calibration text).") var eval: String?
    @Option(help: "Comma-separated method specs: a method (gptq, rtn, awq, hqq) with optional +awq, +rotate, +mse, +actorder, +gptaq, +finetune (quantization-aware fine-tuning from that result).")
    var methods: String = "rtn,gptq,awq,gptq+awq,rtn+rotate,gptq+rotate+mse"
    @Option(help: "Comma-separated bit widths (8-bit points are per channel).") var bits: String = "8,4"
    @Option(name: .customLong("group-sizes"), help: "Comma-separated group sizes for the points below 8 bits (-1 per channel).")
    var groupSizes: String = "32"
    @Option(help: "Comma-separated shapes of smaller students to distil from the float model, LAYERSxHIDDEN (e.g. 2x100): f16 points sized per teacher weight.")
    var students: String?
    @Option(name: .customLong("finetune-steps"), help: "Optimizer steps of each +finetune point and student.") var finetuneSteps: Int = 200
    @Option(help: "Context length (window) in tokens.") var ctx: Int = 256
    @Option(name: .customLong("protocol"), help: "llamacpp | gptq | strided") var protocolKind: PerplexityProtocol = .llamacpp
    @Option(name: .customLong("max-chunks"), help: "Evaluate at most this many windows.") var maxChunks: Int?
    @Option(help: "Calibration windows.") var samples: Int = 128
    @Option(help: "Tokens per calibration window.") var seqlen: Int = 512
    @Option(help: "Seed of the calibration windows.") var seed: UInt64 = 0
    @Option(help: "Output directory: checkpoints, per-variant results, report.html, report.md (shared by every node with --emit).")
    var output: String?
    @Option(help: "Write the sweep's JSON result here.") var json: String?
    @Option(help: "Worker threads.") var threads: Int?

    @Option(name: .customLong("emit"), parsing: .upToNextOption, help: "SCHEDULER DIR: write the sweep as jobs for slurm or k8s into DIR instead of running it.")
    var emit: [String] = []
    @Option(name: .customLong("eval-shards"), help: "With --emit: split each variant's evaluation into this many tasks.") var evalShards: Int = 1
    @Option(name: .customLong("task-cpus"), help: "With --emit: CPUs per task (and its --threads).") var taskCPUs: Int = 1
    @Option(name: .customLong("task-memory"), help: "With --emit: memory per task, e.g. 8G.") var taskMemory: String?
    @Option(name: .customLong("task-time"), help: "With --emit slurm: time limit per task, e.g. 02:00:00.") var taskTime: String?
    @Option(help: "With --emit slurm: the partition.") var partition: String?
    @Option(name: .customLong("k8s-image"), help: "With --emit k8s: the image holding quantkit.") var k8sImage: String = "quantkit:latest"
    @Option(name: .customLong("k8s-volume-claim"), help: "With --emit k8s: the PersistentVolumeClaim mounted at the shared directory.")
    var k8sVolumeClaim: String = "quantkit-shared"

    @Option(help: "Run one task of an emitted plan (plan.json).") var plan: String?
    @Option(help: "With --plan: the stage.") var stage: Int?
    @Option(help: "With --plan: the task's index in its stage (the array task id).") var task: Int?

    func run() throws {
        try runReportingErrors {
            if let plan {
                try runTask(plan)
                return
            }
            guard let model, let eval, let output else {
                throw QuantKitError(.input, "sweep needs --model, --eval and --output (or --plan FILE --stage K --task I)")
            }
            let o = try options(model: model, eval: eval, output: output)
            if !emit.isEmpty {
                try emitJobs(o)
                return
            }
            if evalShards != 1 { throw QuantKitError(.input, "--eval-shards applies to --emit (one machine evaluates each variant in one pass)") }
            Console.resumeHint = "run the same command again to resume: the float base and every finished variant in \(output) are kept"
            let report = try SweepRun.run(o, progress: Console.progress)
            print(report.table)
            print("study report: \(report.report)")
            if let json { try ResultEnvelope(kind: "sweep").write(report, to: json) }
        }
    }

    func options(model: String, eval: String, output: String) throws -> SweepRunOptions {
        func list<T>(_ s: String, _ flag: String, _ parse: (String) -> T?) throws -> [T] {
            try s.split(separator: ",").map { f in
                let t = f.trimmingCharacters(in: .whitespaces)
                guard let v = parse(t) else { throw QuantKitError(.input, "--\(flag): '\(t)' is not valid") }
                return v
            }
        }
        var o = SweepRunOptions(model: model, corpus: eval,
                                evaluation: PerplexityOptions(protocolKind: protocolKind, ctx: ctx, maxChunks: maxChunks),
                                output: output)
        o.tokenizer = tokenizer
        o.calibration = calibration
        o.methods = try list(methods, "methods") { $0.isEmpty ? nil : $0 }
        o.bits = try list(bits, "bits") { Int($0) }
        o.groupSizes = try list(groupSizes, "group-sizes") { Int($0) }
        o.students = try students.map { try list($0, "students") { $0.isEmpty ? nil : $0 } } ?? []
        guard finetuneSteps > 0 else { throw QuantKitError(.input, "--finetune-steps must be positive (got \(finetuneSteps))") }
        o.fineTuneSteps = finetuneSteps
        o.samples = samples
        o.seqlen = seqlen
        o.seed = seed
        o.threads = threads
        return o
    }

    func emitJobs(_ opts: SweepRunOptions) throws {
        guard emit.count == 2, let scheduler = SweepScheduler(rawValue: emit[0]) else {
            throw QuantKitError(.input, "--emit: expected SCHEDULER DIR with SCHEDULER one of \(SweepScheduler.allCases.map(\.rawValue).joined(separator: ", ")), got '\(emit.joined(separator: " "))'")
        }
        let cwd = FileManager.default.currentDirectoryPath
        var o = opts.absolutePaths(in: cwd)
        o.threads = taskCPUs
        let plan = try SweepRun.plan(o, evalShards: evalShards)
        let exe = URL(fileURLWithPath: CommandLine.arguments[0].contains("/") ? CommandLine.arguments[0] : (Bundle.main.executablePath ?? "quantkit"))
        var s = SweepJobSettings(executable: SweepEmitter.absolute(exe.path, in: cwd), workingDirectory: cwd,
                                 sharedDirectory: o.output)
        s.cpusPerTask = taskCPUs
        s.memory = taskMemory
        s.time = taskTime
        s.partition = partition
        s.image = k8sImage
        s.volumeClaim = k8sVolumeClaim
        let files = try SweepEmitter.emit(plan, scheduler: scheduler, settings: s, to: emit[1])
        print("sweep plan: \(plan.variants.count) variants, stages " + plan.stages.map { String($0.count) }.joined(separator: " + ") + " tasks")
        for f in files { print("wrote \(f)") }
        print("submit with: bash \(files.last!)")
    }

    func runTask(_ path: String) throws {
        guard model == nil, eval == nil, output == nil, emit.isEmpty else {
            throw QuantKitError(.input, "--plan runs a task of an emitted plan; the grid comes from the plan, not --model/--eval/--output/--emit")
        }
        guard let stage, let task else { throw QuantKitError(.input, "--plan needs --stage K and --task I (the array task id)") }
        let plan = try SweepPlan.read(path)
        let t = try plan.task(stage: stage, index: task)
        FileHandle.standardError.write(Data("sweep task \(t) (stage \(stage), task \(task))\n".utf8))
        if let report = try SweepExecutor(plan: plan, progress: Console.progress).execute(t) {
            print(report.table)
            print("study report: \(report.report)")
            if let json { try ResultEnvelope(kind: "sweep").write(report, to: json) }
        }
    }
}
