import Foundation
import Models
import TensorCore
import TestSupport
import Testing
@testable import Training

/// Cutting a student from stories260K (5 layers, MLP 172): which layers and channels it keeps, that the cut tensors
/// compute exactly the teacher with the dropped parts removed, and the channel scores against a direct computation.
@Suite struct StudentCutTests {
    static let model = Repo.path("Models/stories260K/stories260K.bin")

    static func teacher() throws -> (LlamaModel, [String: [Float]]) {
        let m = try LlamaModel.load(path: model)
        var t: [String: [Float]] = [:]
        for name in HFExport.tensorNames(m.config) { t[name] = try m.source.tensor(name).floats() }
        return (m, t)
    }

    static let windows: [[Int32]] = (0..<3).map { (w: Int) -> [Int32] in
        (0..<40).map { (i: Int) -> Int32 in Int32((i * 53 + w * 17 + 3) % 512) }
    }

    static func logits(_ c: LlamaConfig, _ tensors: [String: [Float]], _ tokens: [Int32]) throws -> [Float] {
        let m = try TrainableLlama<Float>(config: c, tensors: tensors, batch: 1, sequenceLength: tokens.count, threads: 2)
        _ = try m.loss(tokens: tokens, targets: nil, teacher: nil, weights: LossWeights(kd: 0, ce: 0), gradients: false)
        return Array(UnsafeBufferPointer(start: m.logits, count: tokens.count * c.vocabSize))
    }

    @Test func layersAreEvenlySpacedWithFirstAndLast() {
        #expect(StudentCut.layers(5, of: 5) == [0, 1, 2, 3, 4])
        #expect(StudentCut.layers(3, of: 5) == [0, 2, 4])
        #expect(StudentCut.layers(2, of: 5) == [0, 4])
        #expect(StudentCut.layers(4, of: 6) == [0, 2, 3, 5])
        #expect(StudentCut.layers(1, of: 5) == [0])
    }

    /// The scores equal mean |down_proj input| x column norm computed here from inputs recorded by a separate
    /// observer, in Double (1e-9 relative).
    @Test func channelScoresMatchADirectComputation() throws {
        let (m, t) = try Self.teacher()
        let scores = try StudentCut.channelImportance(teacher: m, windows: Self.windows)
        final class Recorder: LinearObserver {
            var inputs: [String: [Float]] = [:]
            func observe(module: String, input: UnsafePointer<Float>, inFeatures: Int, output: UnsafePointer<Float>, outFeatures: Int, rows: Int) {
                if module.hasSuffix("down_proj") { inputs[module, default: []] += UnsafeBufferPointer(start: input, count: rows * inFeatures) }
            }
        }
        let rec = Recorder()
        m.observer = rec
        for w in Self.windows { _ = try m.logits(w) }
        m.observer = nil
        let c = m.config, width = c.intermediateSize
        for l in [0, 3] {
            let x = rec.inputs["model.layers.\(l).mlp.down_proj"]!
            let down = t["model.layers.\(l).mlp.down_proj.weight"]!
            let rows = x.count / width
            #expect(rows == 120)
            for j in [0, 17, 171] {
                let mean = (0..<rows).reduce(0.0) { $0 + Double(abs(x[$1 * width + j])) } / Double(rows)
                let norm = (0..<c.hiddenSize).reduce(0.0) { $0 + pow(Double(down[$1 * width + j]), 2) }.squareRoot()
                let want = mean * norm
                #expect(abs(scores[l][j] - want) <= 1e-9 * want, "layer \(l) channel \(j): \(scores[l][j]) vs \(want)")
            }
        }
    }

    /// A 3 x 100 student computes what the teacher computes with layers 1 and 3 removed and, in each kept layer, the
    /// dropped channels' down_proj columns set to zero (the same function, built from the teacher's own tensors
    /// independently of the cut): logits agree to 1e-5 of the largest.
    @Test func cutStudentIsTheTeacherWithoutTheDroppedParts() throws {
        let (m, t) = try Self.teacher()
        let c = m.config
        let scores = try StudentCut.channelImportance(teacher: m, windows: Self.windows)
        let cut = try StudentCut.cut(teacher: c, tensors: t, shape: StudentShape(layers: 3, intermediateSize: 100), importance: scores)
        #expect(cut.keptLayers == [0, 2, 4])
        #expect(cut.config.numHiddenLayers == 3 && cut.config.intermediateSize == 100)
        // The kept channels are the 100 highest scores of each teacher layer.
        for (i, l) in cut.keptLayers.enumerated() {
            let threshold = scores[l].sorted(by: >)[99]
            #expect(cut.keptChannels[i].count == 100 && cut.keptChannels[i].allSatisfy { scores[l][$0] >= threshold })
        }
        var masked = c
        masked.numHiddenLayers = 3
        var tensors: [String: [Float]] = [:]
        for name in HFExport.tensorNames(masked) where !name.hasPrefix("model.layers.") { tensors[name] = t[name] }
        for (i, l) in cut.keptLayers.enumerated() {
            for name in HFExport.tensorNames(c) where name.hasPrefix("model.layers.\(l).") {
                tensors[name.replacingOccurrences(of: "model.layers.\(l).", with: "model.layers.\(i).")] = t[name]
            }
            let key = "model.layers.\(i).mlp.down_proj.weight"
            let keep = Set(cut.keptChannels[i])
            var down = tensors[key]!
            for r in 0..<c.hiddenSize { for j in 0..<c.intermediateSize where !keep.contains(j) { down[r * c.intermediateSize + j] = 0 } }
            tensors[key] = down
        }
        let tokens = Self.windows[0]
        let student = try Self.logits(cut.config, cut.tensors, tokens)
        let reference = try Self.logits(masked, tensors, tokens)
        let scale = reference.map(abs).max()!
        #expect(maxAbsDiff(student, reference) <= 1e-5 * scale)
        // The full shape is the teacher itself.
        let whole = try StudentCut.cut(teacher: c, tensors: t, shape: StudentShape(layers: 5, intermediateSize: 172), importance: scores)
        #expect(whole.tensors == t)
    }

    @Test func shapesParseAndBadOnesAreRefusedByName() throws {
        let c = try LlamaModel.load(path: Self.model).config
        #expect(try StudentShape.parse("3x86", teacher: c) == StudentShape(layers: 3, intermediateSize: 86))
        #expect(try StudentShape.parse("2x-", teacher: c) == StudentShape(layers: 2, intermediateSize: 172))
        #expect(try StudentShape.parse("-x64", teacher: c) == StudentShape(layers: 5, intermediateSize: 64))
        for bad in ["6x86", "0x86", "3x173", "3", "3x", "axb"] {
            #expect(throws: QuantKitError.self) { try StudentShape.parse(bad, teacher: c) }
        }
        // q and o are 64 x 64, k and v 32 x 64 (4 key-value heads of 8).
        #expect(StudentCut.blockLinearWeights(c) == 5 * (2 * 64 * 64 + 2 * 32 * 64 + 3 * 64 * 172))
    }
}
