import Foundation
import TensorCore

/// What `quantkit merge` produced: the result the unsharded run would have written.
public enum MergedResult: Sendable {
    case perplexity(PerplexityReport)
    case retrieval(RetrievalReport)
    case answers(AnswersReport)
    case layers(LayersReport)
}

/// `quantkit merge`: partial results of one sharded run back into its result, every figure equal to the unsharded
/// run's (per-item figures concatenated in shard order, then summed in the unsharded order).
public enum MergeRun {
    public static func run(_ paths: [String]) throws -> MergedResult {
        let files = try ShardMerge.order(paths)
        switch files[0].header.partialOf {
        case "perplexity": return .perplexity(try PerplexityRun.merge(files))
        case "rag_retrieval": return .retrieval(try RetrievalRun.merge(files))
        case "rag_answers": return .answers(try AnswersRun.merge(files))
        case "layers": return .layers(try LayersRun.merge(files))
        case let other:
            throw QuantKitError(.unsupported, "\(files[0].path): partial \(other) results cannot be merged by this version")
        }
    }
}

extension PerplexityRun {
    /// The report of the whole run from its shards' measurements (ShardMerge.order checked and ordered them).
    static func merge(_ files: [(path: String, header: PartialHeader)]) throws -> PerplexityReport {
        var merged: PerplexityMeasurement?
        for f in files {
            let part = try PartialResult<PerplexityMeasurement>.read(f.path).body
            guard part.chunkTokens.count == f.header.items.count else {
                throw QuantKitError(.format, "\(f.path): holds \(part.chunkTokens.count) windows but says it covers \(f.header.items.count)")
            }
            guard var m = merged else { merged = part; continue }
            if part.placement?.documents != m.placement?.documents || part.placement?.rules != m.placement?.rules {
                throw QuantKitError(.input, "\(f.path): its segment documents or rules differ from \(files[0].path)'s (different --documents or text)")
            }
            m.append(part)
            merged = m
        }
        return try merged!.report()
    }
}
