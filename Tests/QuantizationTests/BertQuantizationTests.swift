import Foundation
import Datasets
import Models
import TensorCore
import TestSupport
import XCTest
@testable import Quantization

/// GPTQ / RTN of the real all-MiniLM-L6-v2 embedder (installed by Tools/setup.sh), calibrated on SciFact corpus
/// passages and evaluated on held-out SciFact queries (never seen in calibration): GPTQ INT4 g32 stays closer to
/// the float embeddings than RTN INT4 g32, INT8 per-channel stays within a stated cosine bound, and the written
/// directory reads back to the very same embeddings.
final class BertQuantizationTests: XCTestCase {
    static let samples = 24, seqlen = 128, queries = 64

    func minilm() throws -> String {
        guard let dir = EmbedderLocator.findMiniLM() else { throw QuantKitError(.io, "all-MiniLM-L6-v2 not found: run Tools/setup.sh") }
        return dir
    }

    /// Calibration token sequences: SciFact corpus passages (title + text), seeded draw, truncated to seqlen.
    func calibration(_ dir: String) throws -> [[Int32]] {
        let path = Repo.path("Corpora/scifact/corpus.jsonl.zst")
        let (passages, _) = try EmbedderCalibration.passages(path)
        return try EmbedderCalibration.sequences(passages: passages, samples: Self.samples, seqlen: Self.seqlen, seed: 0, source: path,
                                                 tokenize: try EmbedderTokenizer.load(directory: dir))
    }

    /// Token ids of the first SciFact queries (held out: calibration reads only the corpus).
    func heldOut(_ dir: String) throws -> [[Int32]] {
        let tok = try EmbedderTokenizer.load(directory: dir)
        let text = try readText(Repo.path("Corpora/scifact/queries.jsonl.zst"))
        return try text.split(separator: "\n").prefix(Self.queries).map { line in
            let o = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            return try tok(BertSentenceEncoder.stripPythonWhitespace(o["text"] as! String))
        }
    }

    func embed(_ model: BertModel, _ dir: String, _ ids: [[Int32]]) throws -> [Float] {
        var st = BertSentenceEncoder.Stats()
        let pooling = try SentencePoolingConfig.load(directory: dir, config: model.config)
        return try BertSentenceEncoder(model: model, pooling: pooling).encode(ids: ids, threads: 2, stats: &st)
    }

    /// Mean cosine between rows of two [n, 384] sets of unit vectors.
    func meanCosine(_ a: [Float], _ b: [Float]) -> Double {
        let d = 384, n = a.count / d
        var s = 0.0
        for i in 0..<n { for c in 0..<d { s += Double(a[i * d + c]) * Double(b[i * d + c]) } }
        return s / Double(n)
    }

    func quantized(_ dir: String, _ method: QuantMethod, _ scheme: QuantScheme, actOrder: Bool = false,
                   calib: [[Int32]]) throws -> (BertModel, ModelQuantizer.Result, ModelQuantizationOptions) {
        let model = try BertModel(directory: dir)
        let opts = ModelQuantizationOptions(method: method, scheme: scheme, actOrder: actOrder)
        let r = try ModelQuantizer.quantize(bert: model, sequences: method == .gptq ? calib : [], options: opts, threads: 2)
        return (model, r, opts)
    }

    func testGPTQInt4CloserToFloatThanRTNAndRoundTrip() throws {
        let dir = try minilm()
        let calib = try calibration(dir), held = try heldOut(dir)
        XCTAssertEqual(calib.count, Self.samples)
        XCTAssertTrue(calib.allSatisfy { $0.count <= Self.seqlen && $0.first == 101 && $0.last == 102 }, "[CLS] ... [SEP], truncated")
        let float = try embed(try BertModel(directory: dir), dir, held)
        let scheme = try QuantScheme(bits: 4, symmetric: true, groupSize: 32)
        let (gptq, gr, gopts) = try quantized(dir, .gptq, scheme, calib: calib)
        let (rtn, _, _) = try quantized(dir, .rtn, scheme, calib: calib)
        XCTAssertEqual(gr.layers.count, 36)
        XCTAssertEqual(gr.layers.prefix(6).map(\.0), BertModel.linearNames(gptq.config).prefix(6).map { $0 }, "true-sequential order")
        XCTAssertTrue(gr.reports.allSatisfy { ($0.gptqLoss ?? -1) >= 0 && $0.dampEscalations == 0 })
        let eg = try embed(gptq, dir, held), er = try embed(rtn, dir, held)
        let cg = meanCosine(eg, float), cr = meanCosine(er, float)
        print(String(format: "MiniLM int4 g32 sym, %d held-out SciFact queries: mean cosine to float GPTQ %.5f, RTN %.5f", held.count, cg, cr))
        XCTAssertGreaterThan(cg, cr, "GPTQ INT4 g32 must stay closer to the float embeddings than RTN INT4 g32")
        XCTAssertGreaterThan(cg, 0.95)

        // Write -> read (both the quantized backend and the directory as a complete embedder): identical embeddings.
        let out = Repo.tempDirectory("bertq") + "/minilm-gptq-int4"
        try ModelQuantizer.write(bert: gptq, result: gr, options: gopts, to: out, metadata: ["method": "gptq"],
                                 fingerprint: CalibrationFingerprint(text: "calibration"),
                                 copyFiles: try BertSentenceEncoder.companionFiles(directory: dir))
        for f in ["config.json", "quantize_config.json", "model.safetensors", "tokenizer.json", "modules.json", "1_Pooling/config.json",
                  "sentence_bert_config.json", "config_sentence_transformers.json", "calibration_fingerprint.json"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/" + f), "missing \(f)")
        }
        XCTAssertTrue(GPTQCheckpoint.isGPTQ(out))
        let back = try BertModel(directory: out, backend: try QuantizedLinearBackend(directory: out))
        XCTAssertEqual(try embed(back, out, held), eg, "write -> read gives the in-memory quantized model's embeddings")
        let enc = try BertSentenceEncoder(directory: out, backend: try QuantizedLinearBackend(directory: out))
        XCTAssertEqual(enc.pooling, try SentencePoolingConfig.load(directory: dir, config: back.config), "pooling files copied")
        // Float tensors are kept as stored (embeddings, LayerNorms, biases, pooler, position ids).
        let ck = try SafetensorsCheckpoint(path: out), src = try SafetensorsCheckpoint(path: dir)
        for n in src.names where !n.hasSuffix("dense.weight") && !n.hasSuffix("query.weight") && !n.hasSuffix("key.weight")
            && !n.hasSuffix("value.weight") {
            XCTAssertTrue(ck.contains(n), "float tensor \(n) kept")
        }
        XCTAssertFalse(ck.contains("encoder.layer.0.attention.self.query.weight"))
        XCTAssertEqual(try ck.tensor("encoder.layer.0.attention.self.query.qweight").shape, [384 * 4 / 32, 384])
    }

    func testInt8PerChannelCosineBound() throws {
        let dir = try minilm()
        let calib = try calibration(dir), held = try heldOut(dir)
        let float = try embed(try BertModel(directory: dir), dir, held)
        let scheme = try QuantScheme(bits: 8, symmetric: true, groupSize: QuantScheme.perChannel)
        for method in [QuantMethod.gptq, .rtn] {
            let (m, _, _) = try quantized(dir, method, scheme, calib: calib)
            let e = try embed(m, dir, held)
            let d = 384
            var minCos = 1.0
            for i in 0..<held.count { minCos = min(minCos, (0..<d).reduce(0.0) { $0 + Double(e[i * d + $1]) * Double(float[i * d + $1]) }) }
            print(String(format: "MiniLM int8 per-channel %@: mean cosine %.6f, min %.6f", method.rawValue, meanCosine(e, float), minCos))
            // Stated bound: every held-out query embedding within cosine 0.995 of float, mean above 0.999.
            XCTAssertGreaterThan(minCos, 0.995, "\(method) int8 per-channel")
            XCTAssertGreaterThan(meanCosine(e, float), 0.999, "\(method) int8 per-channel")
        }
    }

    func testHessianSeesRealTokensOnly() throws {
        // Packed batches have no padding rows: the accumulated rows equal the calibration tokens.
        let dir = try minilm()
        let model = try BertModel(directory: dir)
        let seqs: [[Int32]] = [[101, 7592, 2088, 102], [101, 2023, 102], [101, 1037, 2146, 6251, 2007, 2062, 19204, 2015, 102]]
        let (x, offsets) = try model.embed(seqs)
        let o = HessianObserver(["encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.key",
                                "encoder.layer.0.output.dense"])
        o.samplesPerCall = seqs.count
        var h = x
        model.forwardLayer(0, x: &h, offsets: offsets, observer: o, threads: 2)
        XCTAssertEqual(o.hessian("encoder.layer.0.attention.self.query")?.rows, 16)
        XCTAssertEqual(o.hessian("encoder.layer.0.attention.self.query")?.samples, 3)
        XCTAssertTrue(o.hessian("encoder.layer.0.attention.self.key") === o.hessian("encoder.layer.0.attention.self.query"),
                      "query/key/value share one input and one Hessian")
        XCTAssertEqual(o.hessian("encoder.layer.0.output.dense")?.columns, 1536)
        // forwardLayer over all layers equals forward().
        var y = x
        for i in 0..<model.layerCount { model.forwardLayer(i, x: &y, offsets: offsets, threads: 2) }
        XCTAssertEqual(y, try model.forward(seqs, threads: 2).hidden)
    }

    /// Capture passes that stop after a group's last module observe exactly what a full pass observes up to there,
    /// and nothing after it.
    func testStopAfterObservesSameInputs() throws {
        final class Recorder: LinearObserver {
            var inputs: [String: [Float]] = [:]
            var order: [String] = []
            func observe(module: String, input: UnsafePointer<Float>, inFeatures: Int, output: UnsafePointer<Float>,
                         outFeatures: Int, rows: Int) {
                inputs[module] = Array(UnsafeBufferPointer(start: input, count: rows * inFeatures))
                order.append(module)
            }
        }
        let model = try BertModel(directory: try minilm())
        let (x, offsets) = try model.embed([[101, 7592, 2088, 102], [101, 2023, 2003, 1037, 3231, 102]])
        let full = Recorder()
        var h = x
        model.forwardLayer(1, x: &h, offsets: offsets, observer: full, threads: 2)
        XCTAssertEqual(full.order.count, 6)
        for group in model.linearGroups(layer: 1) {
            let part = Recorder()
            var y = x
            model.forwardLayer(1, x: &y, offsets: offsets, observer: part, stopAfter: group.last, threads: 2)
            XCTAssertEqual(part.order, Array(full.order.prefix(through: full.order.firstIndex(of: group.last!)!)))
            for name in group { XCTAssertEqual(part.inputs[name], full.inputs[name], name) }
        }
    }

    func testCalibrationPassages() throws {
        // Documents as retrieval embeds them (title + " " + text), then stripped as the encoder strips them.
        let tmp = Repo.tempDirectory("bertq-passages")
        try """
            {"_id": "d1", "title": "Alpha", "text": " first body "}
            {"_id": "d2", "text": "no title"}
            {"_id": "d3", "title": "Only title"}
            {"_id": "d4", "title": " ", "text": ""}

            """.write(toFile: tmp + "/corpus.jsonl", atomically: true, encoding: .utf8)
        XCTAssertEqual(try EmbedderCalibration.passages(tmp + "/corpus.jsonl").passages, ["Alpha  first body", "no title", "Only title"])
        try #"{"data": [{"paragraphs": [{"context": " Ctx one. ", "qas": []}, {"context": "\n"}, {"context": "Ctx two."}]}]}"#
            .write(toFile: tmp + "/squad.json", atomically: true, encoding: .utf8)
        XCTAssertEqual(try EmbedderCalibration.passages(tmp + "/squad.json").passages, ["Ctx one.", "Ctx two."])
    }

    func testCalibrationBadInput() throws {
        let tmp = Repo.tempDirectory("bertq-bad")
        try "first passage\n\nsecond passage\nthird\n".write(toFile: tmp + "/short.txt", atomically: true, encoding: .utf8)
        let (p, _) = try EmbedderCalibration.passages(tmp + "/short.txt")
        XCTAssertEqual(p, ["first passage", "second passage", "third"])
        XCTAssertThrowsError(try EmbedderCalibration.draw(count: p.count, samples: 8, seed: 0, source: tmp + "/short.txt")) {
            XCTAssertTrue("\($0)".contains("short.txt") && "\($0)".contains("3 passages") && "\($0)".contains("--samples 8"), "\($0)")
        }
        try "{\"_id\": \"1\", \"title\": \"T\", \"text\": \"a\"}\n\n{\"_id\": \"2\", \"text\": oops}\n".write(
            toFile: tmp + "/corpus.jsonl", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try EmbedderCalibration.passages(tmp + "/corpus.jsonl")) {
            XCTAssertTrue("\($0)".contains("corpus.jsonl: line 3"), "\($0)")
        }
        XCTAssertThrowsError(try EmbedderCalibration.sequences(passages: p, samples: 2, seqlen: 1, seed: 0, source: "x", tokenize: { _ in [1] })) {
            XCTAssertTrue("\($0)".contains("--seqlen"), "\($0)")
        }
        // Draws are reproducible, distinct and seed-dependent.
        let a = try EmbedderCalibration.draw(count: 100, samples: 10, seed: 3), b = try EmbedderCalibration.draw(count: 100, samples: 10, seed: 3)
        XCTAssertEqual(a, b)
        XCTAssertEqual(Set(a).count, 10)
        XCTAssertNotEqual(a, try EmbedderCalibration.draw(count: 100, samples: 10, seed: 4))
    }

    /// The Swift GPTQ on the inputs of a real BERT layer captured through the model's observer, against the numpy
    /// reference GPTQ on the same layer's inputs computed by the numpy BERT (Tools/reference_gptq.py bert).
    func testGPTQOnCapturedBertLayerMatchesNumpyReference() throws {
        let dir = try minilm()
        let tmp = Repo.tempDirectory("bertfix") + "/f.safetensors"
        try readMaybeCompressed(Repo.path("Tests/QuantizationTests/Fixtures/bert_l0_output_dense.safetensors.zst"))
            .write(to: URL(fileURLWithPath: tmp))
        let f = try SafetensorsFile(path: tmp)
        let m = f.metadata
        let name = m["module"]!
        let seqs = (try JSONSerialization.jsonObject(with: Data(m["ids"]!.utf8)) as! [[Int]]).map { $0.map(Int32.init) }
        let model = try BertModel(directory: dir)
        let (x, offsets) = try model.embed(seqs)
        let o = HessianObserver([name])
        o.samplesPerCall = seqs.count
        var h = x
        model.forwardLayer(0, x: &h, offsets: offsets, observer: o, threads: 2)
        let acc = try XCTUnwrap(o.hessian(name))
        XCTAssertEqual(acc.rows, Int(m["tokens"]!)!)
        XCTAssertEqual(acc.samples, Int(m["samples"]!)!)
        let H = acc.hessian()
        let trace = (0..<acc.columns).reduce(0.0) { $0 + H[$1 * acc.columns + $1] }, refTrace = Double(m["hdiag_sum"]!)!
        XCTAssertEqual(trace, refTrace, accuracy: 1e-5 * refTrace, "captured inputs (float32 model) vs numpy float64 inputs")
        let w = try model.source.tensor(name + ".weight")
        let cfg = GPTQConfig(scheme: try QuantScheme(bits: 4, symmetric: true, groupSize: 32), actOrder: true)
        let r = try GPTQ.quantize(weight: w.floats(), outFeatures: w.shape[0], inFeatures: w.shape[1], hessian: H, config: cfg, name: name)
        let codes = try f.tensor("codes")
        let ref = UnsafeBufferPointer(start: codes.pointer(as: UInt8.self), count: codes.count)
        let same = (0..<ref.count).filter { ref[$0] == r.weight.codes[$0] }.count
        let gSame = zip(try f.tensor("g_idx").int32s(), r.weight.gIdx).filter { $0 == $1 }.count
        let refLoss = Double(m["loss"]!)!
        print(String(format: "%@: identical codes %.5f, g_idx %d/%d, loss %.6g vs %.6g", name, Double(same) / Double(ref.count), gSame,
                     r.weight.gIdx.count, r.loss, refLoss))
        // The inputs come from two forward passes (float32 Swift, float64 numpy; Hessian traces agree to 1e-5), and
        // GPTQ feeds each rounding error along its row, so one flipped rounding near a tie moves a few later codes of
        // that row: measured 99.6% identical. On identical inputs the 99.9% criterion holds (GPTQTests fixtures).
        XCTAssertGreaterThanOrEqual(Double(same) / Double(ref.count), 0.995, "identical quantized integers")
        XCTAssertEqual(r.loss, refLoss, accuracy: 1e-3 * refLoss, "GPTQ loss")
        XCTAssertEqual(gSame, r.weight.gIdx.count, "act-order groups")
    }
}
