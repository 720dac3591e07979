import Foundation
import Models
import TensorCore

/// One linear module as the driver hands it to a per-layer algorithm.
public struct LayerwiseLayer {
    public let name: String
    /// The module as it runs now (float, unless an earlier method replaced it).
    public let layer: any LinearLayer
    /// Where "<name>.weight" and "<name>.bias" are stored.
    public let weights: any WeightSource
    /// Hessian of the module's inputs over the calibration batches, taken with the earlier groups already
    /// replaced (nil when the algorithm needs none).
    public let hessian: HessianAccumulator?
    public let threads: Int
    /// GPTAQ's D of the module's inputs: the float model's inputs against those of `hessian`, same batches (nil when
    /// the algorithm needs no float inputs).
    public var asymmetry: AsymmetryAccumulator? = nil
}

/// A per-layer method the layer-wise driver runs on each selected linear module (GPTQ / RTN quantization:
/// `LayerQuantizer`).
public protocol LayerwiseAlgorithm {
    /// What the run reports per module.
    associatedtype Output
    /// Whether `process` reads the input Hessian: calibration passes run only then.
    var needsHessian: Bool { get }
    /// Whether `process` also reads the asymmetry of its inputs against the float model's (GPTAQ): the driver then
    /// needs a float twin of the model.
    var needsFloatInputs: Bool { get }
    /// Whether module `name` is processed (false: it stays as it is). Asked for every module before any work,
    /// so a module the method cannot take fails the run up front.
    func selects(_ name: String, layer: any LinearLayer) throws -> Bool
    /// The layer to swap in for one module, and its report.
    func process(_ module: LayerwiseLayer) throws -> (replacement: any LinearLayer, output: Output)
}

extension LayerwiseAlgorithm {
    public var needsFloatInputs: Bool { false }
}

/// The layer-wise calibration driver: walks the blocks of a `LayerwiseModel` in order; inside a block it takes
/// the true-sequential groups one at a time, collects the Hessians of the group's inputs (one capture pass over
/// the calibration batches, stopping after the group's last module), runs the algorithm on each selected module
/// and swaps the result in; then the block, with all its replacements, runs on the batches and its outputs are
/// the next block's inputs.
///
/// Float inputs (GPTAQ): `floatTwin`, a second model of the same architecture and float weights that is never
/// modified, walks the same calibration batches block by block. Before each batch's capture pass the twin runs the
/// block on its own batch up to the group's last module and its inputs of the group are copied; the capture pass then
/// accumulates D from the pairs (same windows, same positions: rows correspond one to one). After the block both
/// advance, the twin through its float block.
public enum LayerwiseDriver {
    /// Returns each processed module's output in processing order. Progress: task `task`, one item per module,
    /// the module name as detail.
    public static func run<Model: LayerwiseModel, Algorithm: LayerwiseAlgorithm>(
        _ model: Model, floatTwin: Model? = nil, calibration: [[Int32]], algorithm: Algorithm, trueSequential: Bool = true,
        task: String = "quantize", progress: any ProgressObserver = NoProgress()
    ) throws -> [(name: String, output: Algorithm.Output)] {
        let twin = algorithm.needsFloatInputs ? floatTwin : nil
        if algorithm.needsFloatInputs {
            guard let twin else { throw QuantKitError(.input, "\(task): the method needs the float model's inputs, but no float twin of the model was given") }
            guard twin !== model else { throw QuantKitError(.input, "\(task): the float twin must be a separate copy of the model") }
            guard algorithm.needsHessian else { throw QuantKitError(.config, "\(task): float inputs are only collected with Hessians") }
            guard twin.blockCount == model.blockCount,
                  (0..<model.blockCount).allSatisfy({ twin.linearGroups(block: $0) == model.linearGroups(block: $0) }) else {
                throw QuantKitError(.input, "\(task): the float twin's blocks and modules differ from the model's")
            }
        }
        var selected: Set<String> = []
        for i in 0..<model.blockCount {
            for name in model.linearGroups(block: i).joined() {
                guard let layer = model.linear(named: name) else { continue }
                if try algorithm.selects(name, layer: layer) { selected.insert(name) }
            }
        }
        var batches = algorithm.needsHessian ? try model.embed(calibration: calibration) : []
        var floatBatches = try twin?.embed(calibration: calibration) ?? []
        let total = (0..<model.blockCount).reduce(0) { $0 + model.linearGroups(block: $1).joined().count }
        let counter = progress.task(task, total: total, unit: "layers")
        var done = 0
        var outputs: [(name: String, output: Algorithm.Output)] = []
        for i in 0..<model.blockCount {
            let groups = trueSequential ? model.linearGroups(block: i) : [model.linearGroups(block: i).flatMap { $0 }]
            for group in groups {
                let names = group.filter { selected.contains($0) }
                done += group.count - names.count
                guard !names.isEmpty else { continue }
                var observer: HessianObserver?
                if algorithm.needsHessian {
                    let o = HessianObserver(names)
                    let capture = twin.map { _ in InputCapture(names) }
                    o.floatInputs = capture
                    // The group's inputs are all observed once its last module ran; the rest of the block is skipped.
                    for b in batches.indices {
                        if let twin, let capture {
                            capture.reset()
                            twin.runBlock(i, on: &floatBatches[b], observer: capture, stopAfter: group.last)
                        }
                        o.reset()
                        o.samplesPerCall = model.samples(in: batches[b])
                        model.runBlock(i, on: &batches[b], observer: o, stopAfter: group.last)
                        if let e = o.error { throw e }
                    }
                    o.floatInputs = nil
                    observer = o
                }
                for name in names {
                    let module = LayerwiseLayer(name: name, layer: model.linear(named: name)!, weights: model.weights,
                                                hessian: observer?.hessian(name), threads: model.threads,
                                                asymmetry: observer?.asymmetry(name))
                    let (replacement, output) = try algorithm.process(module)
                    try model.setLinear(replacement, named: name)
                    // The module's working set (float copy, Hessian work, the replaced layer) is freed: give it back,
                    // so the run holds one layer's working set at a time.
                    HeapMemory.returnFreed()
                    outputs.append((name, output))
                    done += 1
                    counter.update(done: done, detail: name)
                }
            }
            if algorithm.needsHessian {
                for b in batches.indices { model.runBlock(i, on: &batches[b], observer: nil, stopAfter: nil) }
            }
            if let twin { for b in floatBatches.indices { twin.runBlock(i, on: &floatBatches[b], observer: nil, stopAfter: nil) } }
        }
        return outputs
    }
}
