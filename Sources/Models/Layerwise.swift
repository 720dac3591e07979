import Foundation
import Synchronization
import TensorCore

/// What the layer-wise calibration driver (Quantization's `LayerwiseDriver`) walks: a stack of blocks run one at
/// a time on calibration inputs, each block's linear modules in true-sequential groups that can be observed and
/// replaced. The Llama family (`LlamaLayerwise`) and BERT (`BertLayerwise`) implement it.
public protocol LayerwiseModel: AnyObject {
    /// Hidden states of some calibration sequences, as one block forward takes them.
    associatedtype Batch
    var blockCount: Int { get }
    /// Where the linear modules' stored weights come from ("<name>.weight", "<name>.bias").
    var weights: any WeightSource { get }
    var threads: Int { get }
    /// Full module names of block `i` in true-sequential groups: each group's inputs are known once the previous
    /// groups ran.
    func linearGroups(block i: Int) -> [[String]]
    func linear(named name: String) -> (any LinearLayer)?
    /// Replaces a linear module (same shape).
    func setLinear(_ layer: any LinearLayer, named name: String) throws
    /// The calibration sequences embedded: the hidden states entering block 0, in batches.
    func embed(calibration sequences: [[Int32]]) throws -> [Batch]
    /// Calibration samples a batch stands for (the reference's Hessian counts sequences).
    func samples(in batch: Batch) -> Int
    /// Runs block `i` on `batch`, `observer` seeing each linear module's input. With `stopAfter` (a full module
    /// name) the pass ends right after that module ran and the batch is left as it was; otherwise it then holds
    /// the block's outputs.
    func runBlock(_ i: Int, on batch: inout Batch, observer: (any LinearObserver)?, stopAfter: String?)
}

/// A Llama-family model walked block by block on independent sequences (positions from 0, no past), with the
/// scratch of one sequence allocated once (one per worker for concurrent passes).
public final class LlamaLayerwise: LayerwiseModel {
    public struct Batch {
        /// [rows, dim]
        public var hidden: [Float]
        public let rows: Int
    }

    /// What of a block a pass runs: `attention` leaves the batch holding the residual stream after attention
    /// (the MLP's input), `mlp` starts from it (LlamaBlock.forwardAttention, forwardMLP), so a search that varies
    /// only the MLP re-runs only that half.
    public enum BlockPart: Sendable { case whole, attention, mlp }

    /// The scratch of one sequence in flight: activations and the block's keys and values.
    final class Scratch {
        let state: RunState
        let keys: UnsafeMutablePointer<Float>
        let values: UnsafeMutablePointer<Float>

        init(model: LlamaModel, maxRows: Int) {
            state = model.makeState(maxRows: max(maxRows, 1))
            for r in 0..<maxRows { state.positions[r] = Int32(r) }
            keys = .allocate(capacity: max(maxRows, 1) * model.config.kvDim)
            values = .allocate(capacity: max(maxRows, 1) * model.config.kvDim)
        }

        deinit { keys.deallocate(); values.deallocate() }
    }

    public let model: LlamaModel
    public let maxRows: Int
    /// scratch[0] serves runBlock; concurrent passes use one per worker, made when first needed.
    private var scratch: [Scratch]
    private var state: RunState { scratch[0].state }

    /// maxRows: the longest sequence that will run.
    public init(model: LlamaModel, maxRows: Int) {
        self.model = model
        self.maxRows = maxRows
        scratch = [Scratch(model: model, maxRows: maxRows)]
    }

    public var blockCount: Int { model.blocks.count }
    public var weights: any WeightSource { model.source }
    public var threads: Int { model.threads }
    public func linearGroups(block i: Int) -> [[String]] { model.blocks[i].linearGroups }
    public func linear(named name: String) -> (any LinearLayer)? { block(of: name)?.linear(named: name) }

    public func setLinear(_ layer: any LinearLayer, named name: String) throws {
        guard let b = block(of: name), try b.setLinear(layer, named: name) else {
            throw QuantKitError(.input, "\(model.name): no linear module named '\(name)'")
        }
    }

    private func block(of name: String) -> LlamaBlock? { model.blocks.first { name.hasPrefix($0.prefix) } }

    public func embed(calibration sequences: [[Int32]]) throws -> [Batch] {
        try sequences.map { tokens in
            try model.validate(tokens: tokens)
            guard tokens.count <= model.config.maxPositionEmbeddings else {
                throw QuantKitError(.input, "--seqlen \(tokens.count) exceeds the model's context (\(model.config.maxPositionEmbeddings))")
            }
            guard tokens.count <= maxRows else {
                throw QuantKitError(.input, "sequence of \(tokens.count) tokens exceeds maxRows \(maxRows)")
            }
            var x = [Float](repeating: 0, count: tokens.count * model.config.hiddenSize)
            tokens.withUnsafeBufferPointer { t in x.withUnsafeMutableBufferPointer { model.embed(t, into: $0.baseAddress!) } }
            return Batch(hidden: x, rows: tokens.count)
        }
    }

    public func samples(in batch: Batch) -> Int { 1 }

    public func runBlock(_ i: Int, on batch: inout Batch, observer: (any LinearObserver)?, stopAfter: String?) {
        run(i, part: .whole, on: &batch, observer: observer, stopAfter: stopAfter, scratch: scratch[0], threads: model.threads)
    }

    /// Runs `part` of block `i` on every batch, up to `workers` batches at a time, batch b seen by observers[b]
    /// (when given). Each batch runs on single-threaded kernels: a small model's block on one sequence is too little
    /// work to split, independent sequences are not. Each batch's results equal runBlock's bit for bit (kernels
    /// split rows, columns and heads, never a sum). With `stopAfter` the batches are left as they were.
    public func runConcurrently(_ i: Int, part: BlockPart = .whole, on batches: inout [Batch],
                                observers: [(any LinearObserver)?]? = nil, stopAfter: String?, workers: Int) {
        precondition(observers.map { $0.count == batches.count } ?? true, "one observer per batch")
        let n = max(1, min(workers, batches.count))
        while scratch.count < n { scratch.append(Scratch(model: model, maxRows: maxRows)) }
        let shared = UncheckedBox((walker: self, scratch: scratch, observers: observers))
        let next = Atomic<Int>(0)
        batches.withUnsafeMutableBufferPointer { buffer in
            let bp = SendablePointer(buffer.baseAddress!), count = buffer.count
            Parallel.forRanges(n, threads: n) { ids in
                let (walker, scratch, observers) = shared.value
                for w in ids {
                    // Batches taken dynamically: on a shared host one core often runs slower than the other.
                    while true {
                        let b = next.wrappingAdd(1, ordering: .relaxed).oldValue
                        if b >= count { break }
                        walker.run(i, part: part, on: &bp.base[b], observer: observers?[b] ?? nil, stopAfter: stopAfter,
                                   scratch: scratch[w], threads: 1)
                    }
                }
            }
        }
    }

    private func run(_ i: Int, part: BlockPart, on batch: inout Batch, observer: (any LinearObserver)?, stopAfter: String?,
                     scratch s: Scratch, threads: Int) {
        let block = model.blocks[i], n = batch.rows * model.config.hiddenSize
        let ctx = BlockContext(ops: model.ops, observer: observer, threads: threads,
                               stopAfter: stopAfter.map { String($0.dropFirst(block.prefix.count)) })
        s.state.x.update(from: batch.hidden, count: n)
        var stopped = stopAfter != nil
        switch part {
        case .whole:
            block.forward(s.state.x, rows: batch.rows, start: 0, keys: s.keys, values: s.values, state: s.state, context: ctx)
        case .attention:
            stopped = block.forwardAttention(s.state.x, rows: batch.rows, start: 0, keys: s.keys, values: s.values,
                                             state: s.state, context: ctx)
        case .mlp:
            block.forwardMLP(s.state.x, rows: batch.rows, state: s.state, context: ctx)
        }
        if !stopped { batch.hidden.withUnsafeMutableBufferPointer { $0.baseAddress!.update(from: s.state.x, count: n) } }
    }

    /// Final norm + head on a batch's hidden states (after the last block): logits [rows, vocab].
    public func logits(_ batch: Batch) -> [Float] {
        batch.hidden.withUnsafeBufferPointer { model.applyFinalNorm($0.baseAddress!, rows: batch.rows, out: state.xb) }
        model.lmHead.forward(state.xb, rows: batch.rows, out: state.logits, threads: model.threads)
        return Array(UnsafeBufferPointer(start: state.logits, count: batch.rows * model.config.vocabSize))
    }
}

/// A BERT encoder walked layer by layer. Calibration sequences are sorted by length and packed into batches of
/// about `batchTokens` tokens; packing is the padding mask (a token attends only inside its sequence) and no
/// padding row exists, so every observed input is a real token.
public final class BertLayerwise: LayerwiseModel {
    public struct Batch {
        /// [offsets.last, hidden]
        public var hidden: [Float]
        public let offsets: [Int]
    }

    public let model: BertModel
    public let threads: Int
    public let batchTokens: Int

    public init(model: BertModel, threads: Int = Parallel.defaultThreads, batchTokens: Int = 8192) {
        self.model = model
        self.threads = threads
        self.batchTokens = batchTokens
    }

    public var blockCount: Int { model.layerCount }
    public var weights: any WeightSource { model.source }
    public func linearGroups(block i: Int) -> [[String]] { model.linearGroups(layer: i) }
    public func linear(named name: String) -> (any LinearLayer)? { model.linear(named: name) }
    public func setLinear(_ layer: any LinearLayer, named name: String) throws { try model.setLinear(layer, named: name) }

    public func embed(calibration sequences: [[Int32]]) throws -> [Batch] {
        let order = sequences.indices.sorted { sequences[$0].count != sequences[$1].count ? sequences[$0].count > sequences[$1].count : $0 < $1 }
        var batches: [Batch] = []
        var i = 0
        while i < order.count {
            var batch: [[Int32]] = []
            var tokens = 0
            while i < order.count && (batch.isEmpty || tokens + sequences[order[i]].count <= batchTokens) {
                batch.append(sequences[order[i]]); tokens += sequences[order[i]].count; i += 1
            }
            let (x, offsets) = try model.embed(batch)
            batches.append(Batch(hidden: x, offsets: offsets))
        }
        return batches
    }

    public func samples(in batch: Batch) -> Int { batch.offsets.count - 1 }

    public func runBlock(_ i: Int, on batch: inout Batch, observer: (any LinearObserver)?, stopAfter: String?) {
        if stopAfter == nil {
            model.forwardLayer(i, x: &batch.hidden, offsets: batch.offsets, observer: observer, threads: threads)
        } else {
            // forwardLayer leaves x partly updated when it stops early: run on a copy.
            var x = batch.hidden
            model.forwardLayer(i, x: &x, offsets: batch.offsets, observer: observer, stopAfter: stopAfter, threads: threads)
        }
    }
}

/// Carries values that are not Sendable into a parallel closure whose workers touch disjoint parts of them.
private struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
