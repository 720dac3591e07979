import Foundation

/// Error of an approximation (a quantized tensor, a layer's NPU output) against its float reference, summed in
/// Float64 (SPECS.md "Quantization error per tensor").
public struct ErrorMetrics: Codable, Equatable, Sendable {
    public var count: Int
    public var mse: Double
    public var cosine: Double
    /// 10 log10(sum ref^2 / sum (ref - q)^2), dB (+inf when exact).
    public var sqnrDB: Double
    /// 10 log10(peak^2 / MSE) with peak = max |ref|, dB (+inf when exact).
    public var psnrDB: Double
    public var maxAbsError: Double

    enum CodingKeys: String, CodingKey {
        case count, mse, cosine, sqnrDB = "sqnr_db", psnrDB = "psnr_db", maxAbsError = "max_abs_error"
    }

    /// The definitions printed with the figures, writing the approximation as `q` (or e.g. "npu").
    public static func definitions(approximation q: String = "q") -> [String: String] {
        ["mse": "mean (ref - \(q))^2", "cosine": "sum ref*\(q) / (|ref| |\(q)|)",
         "sqnr_db": "10 log10(sum ref^2 / sum (ref - \(q))^2)", "psnr_db": "10 log10(max|ref|^2 / MSE)"]
    }

    public init(reference: UnsafePointer<Float>, approximation: UnsafePointer<Float>, count: Int) {
        var sums = ErrorAccumulator()
        sums.add(reference: reference, approximation: approximation, count: count)
        self = sums.metrics
    }

    public init(reference: [Float], approximation: [Float]) {
        precondition(reference.count == approximation.count, "tensor length mismatch")
        var sums = ErrorAccumulator()
        reference.withUnsafeBufferPointer { r in
            approximation.withUnsafeBufferPointer { a in
                if let rp = r.baseAddress, let ap = a.baseAddress { sums.add(reference: rp, approximation: ap, count: r.count) }
            }
        }
        self = sums.metrics
    }

    /// The figures as given (a partial result read back bit for bit).
    public init(count: Int, mse: Double, cosine: Double, sqnrDB: Double, psnrDB: Double, maxAbsError: Double) {
        self.count = count; self.mse = mse; self.cosine = cosine; self.sqnrDB = sqnrDB; self.psnrDB = psnrDB; self.maxAbsError = maxAbsError
    }

    init(_ s: ErrorAccumulator) {
        count = s.count
        mse = s.count > 0 ? s.se / Double(s.count) : 0
        cosine = s.rr > 0 && s.qq > 0 ? s.rq / (s.rr.squareRoot() * s.qq.squareRoot()) : (s.rr == s.qq ? 1 : 0)
        sqnrDB = s.se > 0 ? 10 * log10(s.rr / s.se) : .infinity
        psnrDB = mse > 0 ? 10 * log10(s.peak * s.peak / mse) : .infinity
        maxAbsError = s.maxAbs
    }

    /// The four figures as a JSON-safe dictionary (infinities as strings), as quantize reports write them.
    public var json: [String: Any] {
        func f(_ x: Double) -> Any { x.isFinite ? x : (x > 0 ? "inf" : "-inf") }
        return ["mse": f(mse), "cosine": f(cosine), "sqnr_db": f(sqnrDB), "psnr_db": f(psnrDB)]
    }
}

/// Running sums over many (reference, approximation) pairs, so the metrics of several calls equal those of the
/// concatenated tensors.
public struct ErrorAccumulator: Sendable {
    var se = 0.0, rr = 0.0, qq = 0.0, rq = 0.0, peak = 0.0, maxAbs = 0.0
    public private(set) var count = 0

    public init() {}

    public mutating func add(reference ref: UnsafePointer<Float>, approximation q: UnsafePointer<Float>, count n: Int) {
        for i in 0..<n {
            let r = Double(ref[i]), a = Double(q[i]), d = r - a
            se += d * d; rr += r * r; qq += a * a; rq += r * a
            peak = max(peak, abs(r)); maxAbs = max(maxAbs, abs(d))
        }
        count += n
    }

    public var metrics: ErrorMetrics { ErrorMetrics(self) }
}
