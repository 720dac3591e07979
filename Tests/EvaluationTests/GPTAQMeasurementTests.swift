import Datasets
import Evaluation
import Foundation
import Models
import Quantization
import TensorCore
import TestSupport
import Tokenization
import XCTest

/// GPTQ against GPTAQ on stories260K, 4-bit g32 symmetric, calibrated as `quantkit quantize` does by default (SciFact
/// abstracts, 128 windows of 512 tokens, seed 0). Opt-in (QUANTKIT_MEASURE_GPTAQ=1): it prints figures and asserts
/// only that every variant ran. Per module: ||X~ W'^T - X W^T||^2 / ||X W^T||^2 over held-out windows (X~ = its inputs
/// in the quantized model, X = in the float model: the quantity GPTAQ targets); then the last block's hidden states,
/// the KL divergence of the next-token distributions from the float model's and the perplexity.
final class GPTAQMeasurementTests: XCTestCase {
    /// Every module's input and output of one block pass.
    final class Outputs: LinearObserver {
        var out: [String: [Float]] = [:]
        func observe(module: String, input: UnsafePointer<Float>, inFeatures: Int, output: UnsafePointer<Float>, outFeatures: Int, rows: Int) {
            out[module] = Array(UnsafeBufferPointer(start: output, count: rows * outFeatures))
        }
    }

    struct Figures {
        var moduleErr: [String: (err: Double, ref: Double)] = [:]
        var hiddenErr = 0.0, hiddenRef = 0.0, kl = 0.0, nll = 0.0, tokens = 0
    }

    /// Walks the float and the quantized model side by side over `windows`.
    func measure(float: LlamaModel, quantized: LlamaModel, windows: [[Int32]]) throws -> Figures {
        let maxRows = windows.map(\.count).max()!
        let f = LlamaLayerwise(model: float, maxRows: maxRows), q = LlamaLayerwise(model: quantized, maxRows: maxRows)
        var fb = try f.embed(calibration: windows), qb = try q.embed(calibration: windows)
        var fig = Figures()
        for i in 0..<float.blocks.count {
            for b in windows.indices {
                let of = Outputs(), oq = Outputs()
                f.runBlock(i, on: &fb[b], observer: of, stopAfter: nil)
                q.runBlock(i, on: &qb[b], observer: oq, stopAfter: nil)
                for (name, y) in of.out {
                    let yq = oq.out[name]!
                    var e = fig.moduleErr[name] ?? (0, 0)
                    for k in y.indices { let d = Double(yq[k] - y[k]); e.err += d * d; e.ref += Double(y[k]) * Double(y[k]) }
                    fig.moduleErr[name] = e
                }
            }
        }
        let vocab = float.config.vocabSize
        for b in windows.indices {
            for k in fb[b].hidden.indices {
                let d = Double(qb[b].hidden[k] - fb[b].hidden[k])
                fig.hiddenErr += d * d; fig.hiddenRef += Double(fb[b].hidden[k]) * Double(fb[b].hidden[k])
            }
            let lf = f.logits(fb[b]), lq = q.logits(qb[b])
            for t in 0..<fb[b].rows {
                let pf = logSoftmax(lf[(t * vocab)..<((t + 1) * vocab)]), pq = logSoftmax(lq[(t * vocab)..<((t + 1) * vocab)])
                fig.kl += zip(pf, pq).reduce(0) { $0 + exp($1.0) * ($1.0 - $1.1) }
                if t + 1 < fb[b].rows { fig.nll -= pq[Int(windows[b][t + 1])]; fig.tokens += 1 }
            }
        }
        return fig
    }

    func logSoftmax(_ x: ArraySlice<Float>) -> [Double] {
        let m = Double(x.max()!)
        let lse = m + log(x.reduce(0.0) { $0 + exp(Double($1) - m) })
        return x.map { Double($0) - lse }
    }

    func testGPTAQAgainstGPTQOnStories260K() throws {
        try XCTSkipUnless(ProcessInfo.processInfo.environment["QUANTKIT_MEASURE_GPTAQ"] == "1", "set QUANTKIT_MEASURE_GPTAQ=1")
        let modelPath = Repo.path("Models/stories260K/stories260K.bin")
        let t0 = Date()
        let tok = try ModelLoading.loadTokenizer(try ModelLoading.tokenizerPath(model: modelPath, explicit: nil))
        let calibText = try CalibrationText.load(Repo.path(QuantizeRunOptions.defaultCalibration))
        let calibTokens = tok.encode(calibText, addSpecialTokens: false).map { Int32($0) }
        let calib = try CalibrationWindows.sample(tokens: calibTokens, samples: 128, seqlen: 512, seed: 0)
        let wiki = tok.encode(try readText(Repo.path("Corpora/wikitext-2-raw/wiki.test.raw.zst")), addSpecialTokens: false).map { Int32($0) }
        let heldOut = try CalibrationWindows.sample(tokens: wiki, samples: 32, seqlen: 512, seed: 1)
        let float = try LlamaModel.load(path: modelPath)
        let tokenizing = Date().timeIntervalSince(t0)
        // The float model against itself: its perplexity (errors 0).
        var rows: [(String, Figures, Double)] = [("float", try measure(float: float, quantized: try LlamaModel.load(path: modelPath),
                                                                      windows: heldOut), 0)]
        for act in [false, true] {
            for alpha in [nil, 0.25, 0.5, 1.0] as [Double?] {
                let model = try LlamaModel.load(path: modelPath)
                var opts = ModelQuantizationOptions(method: .gptq, scheme: try QuantScheme(bits: 4, symmetric: true, groupSize: 32), actOrder: act)
                opts.gptaqAlpha = alpha
                let r = try ModelQuantizer.quantize(model: model, windows: calib, options: opts)
                XCTAssertEqual(r.layers.count, float.blocks.count * 7)
                let label = (alpha.map { "gptaq a=\($0)" } ?? "gptq") + (act ? " act" : "")
                rows.append((label, try measure(float: float, quantized: model, windows: heldOut), r.seconds))
            }
        }
        let names = rows[1].1.moduleErr.keys.sorted { a, b in
            let (ia, ib) = (a.split(separator: ".")[2], b.split(separator: ".")[2])
            return ia != ib ? Int(ia)! < Int(ib)! : a < b
        }
        var report = "stories260K, 4-bit g32 sym, SciFact 128 x 512 calibration, WikiText-2 32 x 512 held out "
        report += String(format: "(tokenizing %.1f s)\n", tokenizing)
        report += "| variant | mean module rel. err | last hidden rel. err | KL/token | ppl | quantize s |\n"
        for (label, f, s) in rows {
            let mean = names.map { f.moduleErr[$0]!.err / max(f.moduleErr[$0]!.ref, 1e-300) }.reduce(0, +) / Double(names.count)
            report += "| \(label) | " + String(format: "%.5f | %.5f | %.5f | %.3f | %.1f |\n", mean, f.hiddenErr / f.hiddenRef,
                                                f.kl / Double(32 * 512), exp(f.nll / Double(f.tokens)), s)
        }
        let plain = rows.dropFirst().filter { !$0.0.hasSuffix("act") }
        report += "per module (rel. err, no act-order): " + plain.map { $0.0 }.joined(separator: " / ") + "\n"
        for n in names {
            report += n + ": " + plain.map { String(format: "%.5f", $0.1.moduleErr[n]!.err / $0.1.moduleErr[n]!.ref) }.joined(separator: " / ") + "\n"
        }
        print(report)
    }
}
