import Foundation

/// Quantization error of one tensor against its float original (SPECS.md "Quantization error per tensor").
public struct TensorError: Sendable, Codable, Equatable {
    public let mse: Double
    public let cosine: Double
    /// 10 log10(sum ref^2 / sum (ref - q)^2), dB (+inf when exact).
    public let sqnrDB: Double
    /// 10 log10(peak^2 / MSE) with peak = max |ref|, dB (+inf when exact).
    public let psnrDB: Double

    public static let definitions = [
        "mse": "mean (ref - q)^2",
        "cosine": "sum ref*q / (|ref| |q|)",
        "sqnr_db": "10 log10(sum ref^2 / sum (ref - q)^2)",
        "psnr_db": "10 log10(max|ref|^2 / MSE)",
    ]

    public init(mse: Double, cosine: Double, sqnrDB: Double, psnrDB: Double) {
        self.mse = mse
        self.cosine = cosine
        self.sqnrDB = sqnrDB
        self.psnrDB = psnrDB
    }

    /// Accumulated in Float64.
    public init(reference: [Float], quantized: [Float]) {
        precondition(reference.count == quantized.count, "tensor length mismatch")
        var se = 0.0, rr = 0.0, qq = 0.0, rq = 0.0, peak = 0.0
        for i in reference.indices {
            let r = Double(reference[i]), q = Double(quantized[i]), d = r - q
            se += d * d; rr += r * r; qq += q * q; rq += r * q; peak = max(peak, abs(r))
        }
        let n = Double(max(reference.count, 1))
        mse = se / n
        cosine = (rr > 0 && qq > 0) ? rq / (rr.squareRoot() * qq.squareRoot()) : (rr == qq ? 1 : 0)
        sqnrDB = se > 0 ? 10 * log10(rr / se) : .infinity
        psnrDB = se > 0 ? 10 * log10(peak * peak / mse) : .infinity
    }

    /// JSON-safe dictionary (infinities as strings).
    public var json: [String: Any] {
        func f(_ x: Double) -> Any { x.isFinite ? x : (x > 0 ? "inf" : "-inf") }
        return ["mse": f(mse), "cosine": f(cosine), "sqnr_db": f(sqnrDB), "psnr_db": f(psnrDB)]
    }
}
