import ArgumentParser
import Foundation
import TensorCore

struct QuantKitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "quantkit",
        abstract: "Quantize transformer checkpoints (GPTQ, RTN; INT8/INT4) and measure what it costs.",
        subcommands: [
            InspectCommand.self,
            ConvertCommand.self,
            ExportCommand.self,
            GenerateCommand.self,
            PerplexityCommand.self,
            BenchCommand.self,
            CompareCommand.self,
            ReportCommand.self,
            TokenizeCommand.self,
            NpuCommand.self,
            LayersCommand.self,
            RagCommand.self,
            QuantizeCommand.self,
            FinetuneCommand.self,
            SweepCommand.self,
            MergeCommand.self,
        ]
    )
}

Console.applyEnvironment()
Console.handleInterrupts()
Console.runCommandLine(QuantKitCommand.self)
