import Foundation
import TensorCore

/// Which scheduler `quantkit sweep --emit` writes jobs for.
public enum SweepScheduler: String, Sendable, CaseIterable {
    /// sbatch scripts, one job array per stage, chained with --dependency=afterok.
    case slurm
    /// Kubernetes Indexed Jobs, one per stage, applied in order by a script that waits for each.
    case k8s
}

/// What each emitted task asks of the scheduler, and where the QuantKit binary and the shared files are.
public struct SweepJobSettings: Sendable {
    /// The quantkit binary every task runs (absolute).
    public var executable: String
    /// The directory tasks run in (absolute), so relative paths in the plan resolve as they did here.
    public var workingDirectory: String
    public var cpusPerTask = 1
    /// Slurm's --mem / Kubernetes' memory request, e.g. "4G"; nil: the scheduler's default.
    public var memory: String?
    /// Slurm's --time, e.g. "01:00:00"; nil: the partition's default.
    public var time: String?
    public var partition: String?
    /// Kubernetes: the image holding the quantkit binary, and the claim mounted at the shared directory.
    public var image = "quantkit:latest"
    public var volumeClaim = "quantkit-shared"
    /// The directory all tasks share (the sweep's output lives in it); Kubernetes mounts the claim there.
    public var sharedDirectory: String

    public init(executable: String, workingDirectory: String, sharedDirectory: String) {
        self.executable = executable
        self.workingDirectory = workingDirectory
        self.sharedDirectory = sharedDirectory
    }
}

/// Writes a sweep plan and the scheduler files that run it: every stage one array of independent tasks
/// (SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX picks the task), each stage after the one before succeeded.
public enum SweepEmitter {
    /// Writes the plan and the job files into `directory`; returns the files written, the submit script last.
    @discardableResult
    public static func emit(_ plan: SweepPlan, scheduler: SweepScheduler, settings: SweepJobSettings, to directory: String) throws -> [String] {
        guard settings.cpusPerTask >= 1, settings.cpusPerTask <= 4096 else {
            throw QuantKitError(.input, "--task-cpus \(settings.cpusPerTask): use 1...4096")
        }
        for (flag, v) in [("--task-memory", settings.memory), ("--task-time", settings.time), ("--partition", settings.partition)] {
            if let v, v.isEmpty || v.contains(where: { $0.isWhitespace || $0 == "'" || $0 == "\"" }) {
                throw QuantKitError(.input, "\(flag) '\(v)': must be one word without quotes")
            }
        }
        let dir = absolute(directory, in: settings.workingDirectory)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let planPath = dir + "/plan.json"
        try plan.write(to: planPath)
        var written = [planPath]
        switch scheduler {
        case .slurm:
            try FileManager.default.createDirectory(atPath: dir + "/logs", withIntermediateDirectories: true)
            for (k, stage) in plan.stages.enumerated() {
                let path = dir + "/stage-\(k).sbatch"
                try writeScript(slurmStage(k, tasks: stage.count, plan: plan, planPath: planPath, logs: dir + "/logs", settings: settings), to: path)
                written.append(path)
            }
            let submit = dir + "/submit.sh"
            try writeScript(slurmSubmit(stages: plan.stages.count), to: submit)
            written.append(submit)
        case .k8s:
            // One claim holds both the outputs and the plan: it is mounted at their deepest common directory.
            var s = settings
            s.sharedDirectory = commonDirectory(settings.sharedDirectory, dir)
            guard s.sharedDirectory != "/" else {
                throw QuantKitError(.input, "--emit k8s \(directory): put DIR and --output under one shared directory (the volume claim is mounted there)")
            }
            let settings = s
            for (k, stage) in plan.stages.enumerated() {
                let path = dir + "/stage-\(k).yaml"
                try AtomicFile.write(Data(k8sStage(k, tasks: stage.count, plan: plan, planPath: planPath, settings: settings).utf8), to: path)
                written.append(path)
            }
            let submit = dir + "/submit-k8s.sh"
            try writeScript(k8sSubmit(stages: plan.stages.count), to: submit)
            written.append(submit)
        }
        return written
    }

    /// The deepest directory holding both absolute paths.
    static func commonDirectory(_ a: String, _ b: String) -> String {
        let pa = URL(fileURLWithPath: a).standardizedFileURL.pathComponents, pb = URL(fileURLWithPath: b).standardizedFileURL.pathComponents
        let common = zip(pa, pb).prefix { $0 == $1 }.map(\.0)
        return common.count <= 1 ? "/" : "/" + common.dropFirst().joined(separator: "/")
    }

    /// `path` made absolute against `cwd` (tasks run elsewhere).
    public static func absolute(_ path: String, in cwd: String) -> String {
        let p = path.hasPrefix("/") ? path : cwd + "/" + path
        return URL(fileURLWithPath: p).standardizedFileURL.path
    }

    /// Single-quoted for sh.
    static func quoted(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'" }

    static func taskCommand(_ stage: Int, plan: SweepPlan, planPath: String, settings: SweepJobSettings, indexVariable: String) -> String {
        var cmd = "\(quoted(settings.executable)) sweep --plan \(quoted(planPath)) --stage \(stage) --task \"${\(indexVariable)}\""
        if stage == plan.stages.count - 1 { cmd += " --json " + quoted(plan.options.output + "/sweep.json") }
        return cmd
    }

    static func stageName(_ k: Int, plan: SweepPlan) -> String {
        let names = plan.stages[k].map { $0.split(separator: ":").first.map(String.init) ?? $0 }
        return Set(names).count == 1 ? names[0] : "stage\(k)"
    }

    static func slurmStage(_ k: Int, tasks: Int, plan: SweepPlan, planPath: String, logs: String, settings s: SweepJobSettings) -> String {
        var lines = ["#!/usr/bin/env bash",
                     "# QuantKit sweep, stage \(k) of \(plan.stages.count): \(tasks) \(stageName(k, plan: plan)) task(s), one per array index.",
                     "#SBATCH --job-name=quantkit-\(stageName(k, plan: plan))",
                     "#SBATCH --array=0-\(tasks - 1)",
                     "#SBATCH --ntasks=1",
                     "#SBATCH --cpus-per-task=\(s.cpusPerTask)",
                     "#SBATCH --output=\(logs)/stage-\(k)-%A_%a.log"]
        if let m = s.memory { lines.append("#SBATCH --mem=\(m)") }
        if let t = s.time { lines.append("#SBATCH --time=\(t)") }
        if let p = s.partition { lines.append("#SBATCH --partition=\(p)") }
        lines += ["set -euo pipefail",
                  "cd \(quoted(s.workingDirectory))",
                  "exec " + taskCommand(k, plan: plan, planPath: planPath, settings: s, indexVariable: "SLURM_ARRAY_TASK_ID"),
                  ""]
        return lines.joined(separator: "\n")
    }

    static func slurmSubmit(stages: Int) -> String {
        """
        #!/usr/bin/env bash
        # Submits the sweep's stages as Slurm job arrays, each after the one before succeeded (afterok). Tasks that
        # already finished do nothing, so after a failure this script can simply be run again.
        set -euo pipefail
        cd "$(dirname "$0")"
        previous=""
        : > job-ids
        for k in $(seq 0 \(stages - 1)); do
          id=$(sbatch --parsable ${previous:+--dependency=afterok:$previous} "stage-$k.sbatch")
          id=${id%%;*}
          echo "stage $k: job $id"
          echo "$id" >> job-ids
          previous=$id
        done

        """
    }

    static func k8sStage(_ k: Int, tasks: Int, plan: SweepPlan, planPath: String, settings s: SweepJobSettings) -> String {
        let command = "exec " + taskCommand(k, plan: plan, planPath: planPath, settings: s, indexVariable: "JOB_COMPLETION_INDEX")
        var resources = "              cpu: \"\(s.cpusPerTask)\""
        if let m = s.memory { resources += "\n              memory: \"\(m.hasSuffix("G") || m.hasSuffix("M") ? m + "i" : m)\"" }
        return """
        # QuantKit sweep, stage \(k) of \(plan.stages.count): \(tasks) \(stageName(k, plan: plan)) task(s); JOB_COMPLETION_INDEX picks the task.
        apiVersion: batch/v1
        kind: Job
        metadata:
          name: quantkit-sweep-stage-\(k)
        spec:
          completionMode: Indexed
          completions: \(tasks)
          parallelism: \(tasks)
          backoffLimit: \(2 * tasks)
          template:
            spec:
              restartPolicy: Never
              containers:
              - name: quantkit
                image: \(yaml(s.image))
                workingDir: \(yaml(s.workingDirectory))
                command: ["/bin/sh", "-c", \(yaml(command))]
                resources:
                  requests:
        \(resources)
                volumeMounts:
                - name: shared
                  mountPath: \(yaml(s.sharedDirectory))
              volumes:
              - name: shared
                persistentVolumeClaim:
                  claimName: \(yaml(s.volumeClaim))

        """
    }

    static func k8sSubmit(stages: Int) -> String {
        """
        #!/usr/bin/env bash
        # Applies the sweep's stages as Kubernetes Indexed Jobs, each after the one before completed. Tasks that
        # already finished do nothing, so after a failure delete the failed job and run this script again.
        set -euo pipefail
        cd "$(dirname "$0")"
        for k in $(seq 0 \(stages - 1)); do
          kubectl apply -f "stage-$k.yaml"
          while true; do
            state=$(kubectl get "job/quantkit-sweep-stage-$k" -o jsonpath='{.status.conditions[?(@.status=="True")].type}')
            case "$state" in
              *Complete*) echo "stage $k complete"; break ;;
              *Failed*) echo "stage $k failed: kubectl logs job/quantkit-sweep-stage-$k" >&2; exit 1 ;;
            esac
            sleep 10
          done
        done

        """
    }

    /// A YAML double-quoted scalar (JSON string syntax, which YAML reads).
    static func yaml(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            default: out.unicodeScalars.append(u)
            }
        }
        return out + "\""
    }

    static func writeScript(_ text: String, to path: String) throws {
        try AtomicFile.write(Data(text.utf8), to: path)
        chmod(path, 0o755)
    }
}

extension SweepRunOptions {
    /// The same sweep with every path absolute, for tasks that start in another directory.
    public func absolutePaths(in cwd: String) -> SweepRunOptions {
        var o = self
        func abs(_ p: String) -> String { SweepEmitter.absolute(p, in: cwd) }
        o.model = abs(model)
        o.corpus = abs(corpus)
        o.output = abs(output)
        o.tokenizer = tokenizer.map(abs)
        o.calibration = calibration.map(abs)
        return o
    }
}
