import ArgumentParser

/// `quantkit bench ...`: release-build benchmarks whose figures go into BENCHMARKS.md.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmarks (run them from a release build).",
        subcommands: [
            BenchSafetensorsCommand.self,
            BenchPerplexityCommand.self,
            BenchGPTQCommand.self,
            BenchQuantEvalCommand.self,
            BenchNpuCommand.self,
            BenchTokenizeCommand.self,
            BenchKernelsCommand.self,
            BenchTrainCommand.self,
            RagBenchCommand.self,
        ]
    )
}
