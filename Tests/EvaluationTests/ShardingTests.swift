import Evaluation
import Foundation
import Models
import Quantization
import TensorCore
import TestSupport
import XCTest

/// Sharded evaluation: N partial results merged must give the unsharded run's result, figure for figure (==,
/// not approximately: the merge adds the shards' per-item figures in the unsharded order), and a set of partials
/// that is not one complete run is refused with one line naming the file.
final class ShardingTests: XCTestCase {
    static let model = Repo.path("Models/stories260K/stories260K.bin")
    static let corpus = Repo.path("Corpora/wikitext-2-raw/wiki.test.raw.zst")

    /// A report's JSON without the keys that differ between any two runs (timings, date, command line).
    func figures<T: Encodable>(_ report: T, kind: String) throws -> NSDictionary {
        let data = try ResultEnvelope(kind: kind, command: ["test"], created: Date(timeIntervalSince1970: 0)).data(report)
        var d = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        d["timings"] = nil
        if var runs = d["runs"] as? [[String: Any]] {
            for i in runs.indices {
                runs[i]["timing_seconds"] = nil
                if var e = runs[i]["encoder"] as? [String: Any] {
                    for k in ["seconds", "tokens_per_second", "gflops"] { e[k] = nil }
                    runs[i]["encoder"] = e
                }
            }
            d["runs"] = runs
        }
        return d as NSDictionary
    }

    func expectError(_ body: () throws -> Void, mentioning parts: [String], file: StaticString = #filePath, line: UInt = #line) {
        do {
            try body()
            XCTFail("no error; expected one mentioning \(parts)", file: file, line: line)
        } catch {
            let m = "\(error)"
            XCTAssertFalse(m.contains("\n"), "one line: \(m)", file: file, line: line)
            for p in parts { XCTAssertTrue(m.contains(p), "'\(m)' should mention '\(p)'", file: file, line: line) }
        }
    }

    func testShardSyntaxAndRanges() throws {
        let s = try Shard(parsing: "1/3")
        XCTAssertEqual(s.index, 1)
        XCTAssertEqual(s.count, 3)
        // Contiguous, in order, sizes within one of each other, covering every item once.
        var covered: [Int] = []
        for i in 0..<3 { covered += Array(try Shard(index: i, count: 3).range(of: 10, unit: "windows")) }
        XCTAssertEqual(covered, Array(0..<10))
        XCTAssertEqual(try Shard(index: 2, count: 3).range(of: 10, unit: "windows"), 6..<10)
        expectError({ _ = try Shard(parsing: "3/3") }, mentioning: ["--shard 3/3", "0...2"])
        expectError({ _ = try Shard(parsing: "-1/3") }, mentioning: ["--shard -1/3"])
        expectError({ _ = try Shard(parsing: "0/0") }, mentioning: ["--shard 0/0", "count"])
        expectError({ _ = try Shard(parsing: "1") }, mentioning: ["--shard '1'", "INDEX/COUNT"])
        expectError({ _ = try Shard(parsing: "a/b") }, mentioning: ["--shard 'a/b'"])
        expectError({ _ = try Shard(parsing: "0/9999999999") }, mentioning: ["--shard", "1...1000000"])
        expectError({ _ = try Shard(index: 0, count: 11).range(of: 10, unit: "windows") }, mentioning: ["only 10 windows", "at most 10 shards"])
    }

    func testPackedValuesAreBitExact() throws {
        let doubles: [Double] = [0.1 + 0.2, -0.0, .leastNonzeroMagnitude, .greatestFiniteMagnitude, 0.9999835850592672, 1 / 3]
        let ints: [Int32] = [-1, 0, .max, .min]
        struct Box: Codable { var d: PackedArray<Double>; var i: PackedArray<Int32>; var x: ExactDouble }
        let data = try JSONEncoder().encode(Box(d: PackedArray(doubles), i: PackedArray(ints), x: ExactDouble(0.9999835850592672)))
        let back = try JSONDecoder().decode(Box.self, from: data)
        XCTAssertEqual(back.d.values.map(\.bitPattern), doubles.map(\.bitPattern))
        XCTAssertEqual(back.i.values, ints)
        XCTAssertEqual(back.x.value.bitPattern, 0.9999835850592672.bitPattern)
        XCTAssertThrowsError(try JSONDecoder().decode(PackedArray<Double>.self, from: Data("\"AAAA\"".utf8)))  // 3 bytes
    }

    /// llamacpp protocol with KLD, percentiles, same-top and per-segment deltas: 3 shards merged against the
    /// unsharded run; then every way a set of partials can be wrong.
    func testPerplexityShardsMergeToTheUnshardedRun() throws {
        let dir = Repo.tempDirectory("shards")
        var q = QuantizeRunOptions(model: Self.model, output: dir + "/rtn4")
        q.method = .rtn
        q.bits = 4
        q.groupSize = 32
        _ = try QuantizeRun.run(q)
        var base = PerplexityRunOptions(model: Self.model, corpus: Self.corpus, evaluation: PerplexityOptions(ctx: 128, maxChunks: 10))
        base.saveLogits = dir + "/float.logits.zst"
        _ = try PerplexityRun.run(base)

        var o = PerplexityRunOptions(model: dir + "/rtn4", corpus: Self.corpus, evaluation: PerplexityOptions(ctx: 128, maxChunks: 10))
        o.kldBase = dir + "/float.logits.zst"
        let whole = try PerplexityRun.run(o)
        XCTAssertNotNil(whole.kld)
        XCTAssertFalse(whole.segments?.isEmpty ?? true)
        var parts: [String] = []
        for i in 0..<3 {
            o.shard = try Shard(index: i, count: 3)
            let p = try PerplexityRun.runShard(o)
            XCTAssertEqual(p.header.items.total, 10)
            parts.append(dir + "/part\(i).json")
            try p.write(to: parts[i])
        }
        guard case .perplexity(let merged) = try MergeRun.run([parts[2], parts[0], parts[1]]) else { return XCTFail("not a perplexity merge") }
        XCTAssertEqual(merged.ppl.bitPattern, whole.ppl.bitPattern)
        XCTAssertEqual(merged.kld?.kld_percentiles, whole.kld?.kld_percentiles)
        XCTAssertEqual(merged.segments, whole.segments)
        XCTAssertEqual(try figures(merged, kind: "perplexity"), try figures(whole, kind: "perplexity"))

        // Not one complete run: refused, naming the file.
        expectError({ _ = try MergeRun.run([parts[0], parts[2]]) }, mentioning: ["shard 1 of 3 missing"])
        expectError({ _ = try MergeRun.run([parts[0], parts[1], parts[1], parts[2]]) }, mentioning: [parts[1], "given twice"])
        func tampered(_ name: String, _ edit: (inout [String: Any]) -> Void) throws -> String {
            var d = try JSONSerialization.jsonObject(with: readFile(parts[1])) as! [String: Any]
            edit(&d)
            let path = dir + "/" + name
            try JSONSerialization.data(withJSONObject: d).write(to: URL(fileURLWithPath: path))
            return path
        }
        let otherCtx = try tampered("ctx.json") { d in
            var h = d["partial"] as! [String: Any]; var p = h["provenance"] as! [String: Any]
            p["ctx"] = "256"; h["provenance"] = p; d["partial"] = h
        }
        expectError({ _ = try MergeRun.run([parts[0], otherCtx, parts[2]]) }, mentioning: [otherCtx, "different run", "ctx 256 vs 128"])
        let oldVersion = try tampered("old.json") { d in
            var h = d["partial"] as! [String: Any]; h["quantkit_version"] = "0.0.1"; d["partial"] = h
        }
        expectError({ _ = try MergeRun.run([parts[0], oldVersion, parts[2]]) }, mentioning: [oldVersion, "QuantKit 0.0.1", "rerun that shard"])
        let wholeJSON = dir + "/whole.json"
        try ResultEnvelope(kind: "perplexity").write(whole, to: wholeJSON)
        expectError({ _ = try MergeRun.run([parts[0], wholeJSON]) }, mentioning: [wholeJSON, "not a partial result"])
        var o2 = o
        o2.shard = try Shard(index: 0, count: 2)
        let half = dir + "/half.json"
        try PerplexityRun.runShard(o2).write(to: half)
        expectError({ _ = try MergeRun.run([parts[0], half, parts[2]]) }, mentioning: [half, "of 3"])
        let truncated = dir + "/truncated.json"
        try readFile(parts[1]).prefix(500).write(to: URL(fileURLWithPath: truncated))
        expectError({ _ = try MergeRun.run([parts[0], truncated, parts[2]]) }, mentioning: [truncated])

        // Options no shard can honour.
        o.saveTokens = dir + "/t.tsv"
        expectError({ _ = try PerplexityRun.runShard(o) }, mentioning: ["--save-tokens", "--shard"])
        o.saveTokens = nil
        o.shard = try Shard(index: 0, count: 11)
        expectError({ _ = try PerplexityRun.runShard(o) }, mentioning: ["only 10 windows"])
    }

    /// Strided windows (the last one shorter) without a base: 2 shards merged.
    func testStridedShardsMerge() throws {
        let dir = Repo.tempDirectory("shards")
        var o = PerplexityRunOptions(model: Self.model, corpus: Repo.path("Corpora/tinystories/tinystories_sample.txt.zst"),
                                     evaluation: PerplexityOptions(protocolKind: .strided, ctx: 96, stride: 40, maxChunks: 9))
        let whole = try PerplexityRun.run(o)
        var parts: [String] = []
        for i in 0..<2 {
            o.shard = try Shard(index: i, count: 2)
            parts.append(dir + "/p\(i).json")
            try PerplexityRun.runShard(o).write(to: parts[i])
        }
        guard case .perplexity(let merged) = try MergeRun.run(parts) else { return XCTFail("not a perplexity merge") }
        XCTAssertEqual(try figures(merged, kind: "perplexity"), try figures(whole, kind: "perplexity"))
        XCTAssertEqual(merged.pplError.bitPattern, whole.pplError.bitPattern)
    }

    /// A shard's rows carry the whole run's chunk, row and token indices.
    func testShardRowsKeepTheWholeRunsIndices() throws {
        let m = try LlamaModel.load(path: Self.model)
        var rng = SplitMix64(seed: 7)
        let tokens = (0..<2000).map { _ in Int32(rng.next() % 500) + 3 }
        let opts = PerplexityOptions(protocolKind: .strided, ctx: 64, stride: 40)
        func rows(_ windows: Range<Int>?) throws -> [[Int]] {
            var out: [[Int]] = []
            _ = try Perplexity.evaluate(model: m, tokens: tokens, addsBOS: true, bosId: 1, options: opts, windows: windows) { r in
                out.append([r.chunk, r.index, r.tokenIndex, r.windowPosition, Int(r.target), Int(r.nll.bitPattern >> 1)])
            }
            return out
        }
        let whole = try rows(nil)
        let n = try Perplexity.windowCount(n: tokens.count, options: opts)
        XCTAssertEqual(whole.map { $0[1] }, Array(0..<whole.count))
        XCTAssertEqual(try rows(0..<(n / 2)) + rows((n / 2)..<n), whole)
    }

    /// The corpus embedded in 3 slices, one search at the merge: every metric, per-query figure and comparison
    /// equal to the unsharded run's.
    func testRetrievalShardsMergeToTheUnshardedRun() throws {
        let dir = Repo.tempDirectory("shards")
        var o = RetrievalRunOptions(dataset: Repo.path("Corpora/scifact"))
        o.maxDocs = 30
        o.maxQueries = 8
        o.embedderQuantized = ["rtn-int4-g32"]
        o.threads = 2
        let whole = try RetrievalRun.run(o)
        var parts: [String] = []
        for i in 0..<3 {
            o.shard = try Shard(index: i, count: 3)
            parts.append(dir + "/r\(i).json")
            try RetrievalRun.runShard(o).write(to: parts[i])
        }
        guard case .retrieval(let merged) = try MergeRun.run(parts) else { return XCTFail("not a retrieval merge") }
        XCTAssertEqual(merged.runs.map { $0.scores.mean }, whole.runs.map { $0.scores.mean })
        XCTAssertEqual(try figures(merged, kind: "rag_retrieval"), try figures(whole, kind: "rag_retrieval"))
        o.shard = try Shard(index: 0, count: 2)
        let other = dir + "/other.json"
        try RetrievalRun.runShard(o).write(to: other)
        expectError({ _ = try MergeRun.run([parts[0], other]) }, mentioning: [other, "of 3"])
    }

    func testSweepPlanAndEmittedJobs() throws {
        let dir = Repo.tempDirectory("sweep-plan")
        var o = SweepRunOptions(model: Self.model, corpus: Self.corpus, evaluation: PerplexityOptions(ctx: 128, maxChunks: 6),
                                output: dir + "/out")
        o.methods = ["rtn", "gptq+mse"]
        o.bits = [4]
        let one = try SweepRun.plan(o, evalShards: 1)
        XCTAssertEqual(one.stages, [["base"], ["point:0", "point:1"], ["report"]])
        let plan = try SweepRun.plan(o, evalShards: 3)
        XCTAssertEqual(plan.stages.map(\.count), [1, 2, 6, 1])
        XCTAssertEqual(try plan.task(stage: 2, index: 4), .evaluate(1, shard: 1))
        XCTAssertEqual(try SweepTask(parsing: "evaluate:1:1"), .evaluate(1, shard: 1))
        expectError({ _ = try plan.task(stage: 2, index: 6) }, mentioning: ["--task 6", "0...5"])
        expectError({ _ = try plan.task(stage: 4, index: 0) }, mentioning: ["--stage 4", "0...3"])
        expectError({ _ = try SweepRun.plan(o, evalShards: 0) }, mentioning: ["--eval-shards 0"])
        expectError({ _ = try SweepRun.plan(o, evalShards: 7) }, mentioning: ["--eval-shards 7", "--max-chunks 6"])
        var bad = o
        bad.methods = ["gptq", "fancy"]
        expectError({ _ = try SweepRun.plan(bad, evalShards: 1) }, mentioning: ["'fancy'"])

        var s = SweepJobSettings(executable: "/opt/qk/quantkit", workingDirectory: "/home/u/work", sharedDirectory: dir + "/out")
        s.memory = "4G"
        s.partition = "cpu"
        let files = try SweepEmitter.emit(plan, scheduler: .slurm, settings: s, to: dir + "/slurm")
        XCTAssertEqual(files.map { ($0 as NSString).lastPathComponent },
                       ["plan.json", "stage-0.sbatch", "stage-1.sbatch", "stage-2.sbatch", "stage-3.sbatch", "submit.sh"])
        let stage2 = try String(contentsOfFile: dir + "/slurm/stage-2.sbatch", encoding: .utf8)
        for line in ["#SBATCH --array=0-5", "#SBATCH --mem=4G", "#SBATCH --partition=cpu", "cd '/home/u/work'",
                     "exec '/opt/qk/quantkit' sweep --plan '\(dir)/slurm/plan.json' --stage 2 --task \"${SLURM_ARRAY_TASK_ID}\""] {
            XCTAssertTrue(stage2.contains(line), "stage-2.sbatch lacks \(line):\n\(stage2)")
        }
        let last = try String(contentsOfFile: dir + "/slurm/stage-3.sbatch", encoding: .utf8)
        XCTAssertTrue(last.contains("--json '\(dir)/out/sweep.json'"))
        let submit = try String(contentsOfFile: dir + "/slurm/submit.sh", encoding: .utf8)
        XCTAssertTrue(submit.contains("--dependency=afterok:$previous"))
        XCTAssertEqual(try SweepPlan.read(dir + "/slurm/plan.json").stages, plan.stages)

        try SweepEmitter.emit(plan, scheduler: .k8s, settings: s, to: dir + "/k8s")
        let job = try String(contentsOfFile: dir + "/k8s/stage-2.yaml", encoding: .utf8)
        for line in ["completionMode: Indexed", "completions: 6", "${JOB_COMPLETION_INDEX}", "claimName: \"quantkit-shared\"",
                     "mountPath: \"\(dir)\"", "memory: \"4Gi\""] {
            XCTAssertTrue(job.contains(line), "stage-2.yaml lacks \(line):\n\(job)")
        }
        s.memory = "4 G"
        expectError({ try SweepEmitter.emit(plan, scheduler: .slurm, settings: s, to: dir + "/bad") }, mentioning: ["--task-memory '4 G'"])
    }
}
