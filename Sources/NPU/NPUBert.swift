import Foundation
import Kernels
import Models
import TensorCore

/// A BERT encoder's nonlinear hooks on the simulated NPU (NPUNonlinear in the configured mode, each hook call
/// counted once). Work is split into row ranges across threads; the numerics per row are the single-threaded ones.
/// - LayerNorm: fp16 unit (fp16 operands, fp32 sums) or the integer unit (int8 row, integer rsqrt).
/// - GELU (exact erf): fp16 unit, or a 256-entry table indexed by the producing layer's int8 output codes
///   (static: the intermediate.dense output parameters from calibration, as a TFLite LUT op after a quantized
///   FULLY_CONNECTED); a producer without calibration gets a per-call min/max table.
/// - Attention: Q.K^T and P.V on the fp16 unit (fp16 operands, exact products, fp32 accumulation, fp16 results),
///   the softmax between them per mode (fp16, or the 256-entry exp LUT).
/// - Residual adds: fp16 unit in both modes.
public struct NPUBertOps: BertNonlinearOps, @unchecked Sendable {
    public let npu: NPUNonlinear
    /// GELU tables keyed by the producing module (intermediate.dense), from its calibrated int8 output parameters.
    public let geluTables: [String: ActivationLUT]

    public init(npu: NPUNonlinear, ranges: [String: (input: Int8AffineParams, output: Int8AffineParams)] = [:]) {
        self.npu = npu
        var t: [String: ActivationLUT] = [:]
        for (name, r) in ranges where name.hasSuffix("intermediate.dense") {
            t[name] = ActivationLUT(function: .gelu, params: r.output)
        }
        geluTables = t
    }

    public func layerNorm(_ x: UnsafePointer<Float>, gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>, rows: Int, dim: Int,
                          eps: Float, out: UnsafeMutablePointer<Float>, threads: Int) {
        npu.counter.record("layer_norm", unit: npu.unit, elements: rows * dim)
        let xp = SendablePointer(x), gp = SendablePointer(gamma), bp = SendablePointer(beta), op = SendablePointer(out)
        let npu = self.npu
        Parallel.forRanges(rows, threads: threads, minPerThread: 16) { range in
            for r in range {
                npu.layerNormRow(xp.base + r * dim, gamma: gp.base, beta: bp.base, dim: dim, eps: eps, out: op.base + r * dim)
            }
        }
    }

    public func gelu(_ x: UnsafeMutablePointer<Float>, count: Int, producer: String, threads: Int) {
        npu.counter.record("gelu", unit: npu.unit, elements: count)
        let xp = SendablePointer(x)
        switch npu.mode {
        case .fp16:
            Parallel.forRanges(count, threads: threads, minPerThread: 4096) { range in
                for i in range { xp[i] = NPUNonlinear.gelu16(xp[i]) }
            }
        case .lut:
            let table = geluTables[producer] ?? ActivationLUT(function: .gelu, input: x, count: count)
            Parallel.forRanges(count, threads: threads, minPerThread: 4096) { range in
                for i in range { xp[i] = table.lookup(xp[i]) }
            }
        }
    }

    public func attention(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
                          offsets: [Int], heads: Int, headDim: Int, threads: Int) {
        let nSeq = offsets.count - 1, total = offsets.last ?? 0, stride = heads * headDim
        guard total > 0 else { return }
        var scores = 0, longest = 0
        for s in 0..<nSeq { let len = offsets[s + 1] - offsets[s]; scores += heads * len * len; longest = max(longest, len) }
        npu.counter.record("attention_matmul", unit: "fp16", elements: 2 * scores * headDim)
        npu.counter.record("softmax", unit: npu.unit, elements: scores)
        // The fp16 unit reads fp16 operands: round Q, K, V once.
        let n = total * stride
        let buf = UnsafeMutablePointer<Float>.allocate(capacity: 3 * n)
        defer { buf.deallocate() }
        for i in 0..<n { buf[i] = fp16(q[i]); buf[n + i] = fp16(k[i]); buf[2 * n + i] = fp16(v[i]) }
        let qp = SendablePointer(buf), kp = SendablePointer(buf + n), vp = SendablePointer(buf + 2 * n), op = SendablePointer(out)
        let scale = fp16(1 / Float(headDim).squareRoot())
        let mode = npu.mode, maxLen = longest
        Parallel.forEach(nSeq * heads, threads: threads) { task in
            let s = task / heads, hd = task % heads
            let start = offsets[s], len = offsets[s + 1] - start
            if len == 0 { return }
            withUnsafeTemporaryAllocation(of: Float.self, capacity: maxLen + headDim) { tmp in
                let p = tmp.baseAddress!, acc = tmp.baseAddress! + maxLen
                for i in 0..<len {
                    let qi = qp.base + (start + i) * stride + hd * headDim
                    for j in 0..<len {
                        let kj = kp.base + (start + j) * stride + hd * headDim
                        p[j] = fp16(fp16(Self.dot(qi, kj, headDim)) * scale)
                    }
                    if mode == .fp16 { NPUNonlinear.softmaxFP16Row(p, cols: len) } else { SoftmaxLUT.row(p, cols: len) }
                    for c in 0..<headDim { acc[c] = 0 }
                    for j in 0..<len { Self.axpy(p[j], vp.base + (start + j) * stride + hd * headDim, acc, headDim) }
                    let o = op.base + (start + i) * stride + hd * headDim
                    for c in 0..<headDim { o[c] = fp16(acc[c]) }
                }
            }
        }
    }

    public func residualAdd(_ x: UnsafeMutablePointer<Float>, _ delta: UnsafePointer<Float>, count: Int) {
        npu.residualAdd(x, delta, count: count)
    }

    /// fp32 accumulation of products of fp16 values (exact in fp32).
    @inline(__always) static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
        var s = SIMD8<Float>(repeating: 0)
        var i = 0
        while i + 8 <= n {
            s.addProduct(UnsafeRawPointer(a + i).loadUnaligned(as: SIMD8<Float>.self),
                         UnsafeRawPointer(b + i).loadUnaligned(as: SIMD8<Float>.self))
            i += 8
        }
        var r = s.sum()
        while i < n { r += a[i] * b[i]; i += 1 }
        return r
    }

    @inline(__always) static func axpy(_ alpha: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
        let a = SIMD8<Float>(repeating: alpha)
        var i = 0
        while i + 8 <= n {
            var yv = UnsafeRawPointer(y + i).loadUnaligned(as: SIMD8<Float>.self)
            yv.addProduct(a, UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self))
            UnsafeMutableRawPointer(y + i).storeBytes(of: yv, as: SIMD8<Float>.self)
            i += 8
        }
        while i < n { y[i] += alpha * x[i]; i += 1 }
    }
}

extension NPUSimulator {
    /// Runs the float sentence encoder over `texts` (token ids with [CLS]/[SEP]; truncated to max_seq_length as
    /// for embedding) and derives every linear module's int8 input/output parameters with the configured method.
    /// Pass corpus passages, never the evaluation queries. The encoder's model keeps its ops and observer.
    public static func calibrate(encoder: BertSentenceEncoder, config: NPUConfig, texts: [[Int32]],
                                 threads: Int = Parallel.defaultThreads, progress: any ProgressObserver = NoProgress()) throws -> NPUSimulator {
        let tokens = texts.reduce(0) { $0 + encoder.truncate($1).ids.count }
        guard tokens >= config.minCalibrationTokens else {
            throw QuantKitError(.input, "NPU calibration too small: \(tokens) tokens in \(texts.count) passages, at least "
                                + "\(config.minCalibrationTokens) needed (min_calibration_tokens in the NPU config)")
        }
        let model = encoder.model
        let obs = CalibrationObserver(capacity: config.calibration != .minMax ? 1 << 18 : 0)
        let savedObserver = model.observer, savedOps = model.ops
        model.observer = obs
        model.ops = BertFloatOps()
        defer { model.observer = savedObserver; model.ops = savedOps }
        var stats = BertSentenceEncoder.Stats()
        _ = try encoder.encode(ids: texts, threads: threads,
                               progress: progress.task("npu calibration", total: texts.count, unit: "tok"), stats: &stats)
        let sim = try NPUSimulator(config: config, observed: obs, calibrationTokens: tokens, observer: progress)
        sim.hostOps = ["embedding gather + position/type add", "pooling", "L2 normalisation"]
        return sim
    }

    /// The BERT nonlinear hooks on this simulator's NPU (GELU tables from the calibrated ranges).
    public var bertOps: NPUBertOps { NPUBertOps(npu: npu, ranges: ranges) }

    /// Loads the BERT model in `directory` with every calibrated linear on the NPU (others fall back, logged)
    /// and the nonlinear ops on the NPU.
    public func makeBert(directory: String) throws -> BertModel {
        let m = try BertModel(directory: directory, backend: backend)
        m.ops = bertOps
        return m
    }
}
