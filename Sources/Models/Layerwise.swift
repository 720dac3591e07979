import Foundation
import TensorCore

/// Runs a model one block at a time on independent sequences (positions 0..<rows, no past), the way GPTQ
/// walks a model: embed -> block 0 -> (quantize block 0, rerun it) -> block 1 -> ... -> final norm + lm_head.
public final class LayerwiseRunner {
    public let model: LlamaModel
    public let maxRows: Int
    private let state: RunState
    private let cache: KVCache

    public init(model: LlamaModel, maxRows: Int) {
        self.model = model
        self.maxRows = maxRows
        state = model.makeState(maxRows: maxRows)
        cache = model.makeCache(capacity: maxRows)
    }

    /// Hidden states [tokens.count, dim] entering block 0.
    public func embed(_ tokens: [Int32]) throws -> [Float] {
        try model.validate(tokens: tokens)
        guard tokens.count <= maxRows else { throw QuantKitError(.input, "sequence of \(tokens.count) tokens exceeds maxRows \(maxRows)") }
        var out = [Float](repeating: 0, count: tokens.count * model.config.hiddenSize)
        tokens.withUnsafeBufferPointer { t in out.withUnsafeMutableBufferPointer { model.embed(t, into: $0.baseAddress!) } }
        return out
    }

    /// Block `index` applied in place to `hidden` ([rows, dim]); the model's observer sees its linear layers.
    public func runBlock(_ index: Int, hidden: inout [Float], rows: Int) {
        precondition(rows <= maxRows && hidden.count == rows * model.config.hiddenSize, "hidden has the wrong size")
        for r in 0..<rows { state.positions[r] = Int32(r) }
        hidden.withUnsafeMutableBufferPointer { h in
            model.blocks[index].forward(h.baseAddress!, rows: rows, start: 0, keys: cache.keys[index], values: cache.values[index],
                                        state: state, context: model.context)
        }
    }

    /// Final norm + lm_head: logits [rows, vocab].
    public func logits(hidden: [Float], rows: Int) -> [Float] {
        hidden.withUnsafeBufferPointer { model.applyFinalNorm($0.baseAddress!, rows: rows, out: state.xb) }
        model.lmHead.forward(state.xb, rows: rows, out: state.logits, threads: model.threads)
        return Array(UnsafeBufferPointer(start: state.logits, count: rows * model.config.vocabSize))
    }
}
