import ArgumentParser
import Evaluation
import Foundation
import TensorCore

/// `quantkit merge`: the partial results of a sharded run (`--shard i/N`) joined into the run's result.
struct MergeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "merge",
        abstract: "Join the partial results of a sharded run (--shard i/N) into the result the unsharded run writes.")

    @Argument(help: "Partial result files, one per shard, in any order.") var partials: [String]
    @Option(help: "Write the merged JSON result here.") var json: String

    func run() throws {
        try runReportingErrors {
            switch try MergeRun.run(partials) {
            case .perplexity(let r):
                print(PerplexityCommand.summary(r))
                try ResultEnvelope(kind: "perplexity", bitsPerWeight: r.bitsPerWeight).write(r, to: json)
            case .retrieval(let r):
                print(RagRetrievalCommand.summary(r))
                try ResultEnvelope(kind: "rag_retrieval").write(r, to: json)
            case .answers(let r):
                print(RagAnswersCommand.summary(r))
                try ResultEnvelope(kind: "rag_answers").write(r, to: json)
            case .layers(let r):
                print(LayersCommand.summary(r))
                try ResultEnvelope(kind: "layers", bitsPerWeight: r.bitsPerWeight).write(r, to: json)
            }
            FileHandle.standardError.write(Data("merged \(partials.count) shards into \(json)\n".utf8))
        }
    }
}
