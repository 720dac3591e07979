import Foundation
import Kernels
import TensorCore

/// The number type a training graph runs in: Float on the fast kernels for real runs, Double on plain loops for
/// the finite-difference checks of the gradients. The graph's code is written once over this protocol.
public protocol TrainScalar: BinaryFloatingPoint, Sendable {
    /// out[m, n] = a[m, k] · b[n, k]ᵀ (+ out when accumulating).
    static func productNT(_ a: UnsafePointer<Self>, m: Int, k: Int, _ b: UnsafePointer<Self>, n: Int,
                          out: UnsafeMutablePointer<Self>, accumulate: Bool, threads: Int)
    /// out[m, n] = a[m, k] · b[k, n] (+ out when accumulating).
    static func productNN(_ a: UnsafePointer<Self>, m: Int, k: Int, _ b: UnsafePointer<Self>, n: Int,
                          out: UnsafeMutablePointer<Self>, accumulate: Bool, threads: Int)
    /// out[n, k] = a[m, n]ᵀ · b[m, k] (+ out when accumulating).
    static func productTN(_ a: UnsafePointer<Self>, m: Int, n: Int, _ b: UnsafePointer<Self>, k: Int,
                          out: UnsafeMutablePointer<Self>, accumulate: Bool, threads: Int)
    static func exponential(_ x: Self) -> Self
    static func logarithm(_ x: Self) -> Self
}

extension Float: TrainScalar {
    /// Runs a product into `out`, or into scratch then added to `out` when accumulating.
    private static func into(_ out: UnsafeMutablePointer<Float>, count: Int, accumulate: Bool, threads: Int,
                             _ body: (UnsafeMutablePointer<Float>) -> Void) {
        guard accumulate else { body(out); return }
        let tmp = UnsafeMutablePointer<Float>.allocate(capacity: max(1, count))
        defer { tmp.deallocate() }
        body(tmp)
        let o = SendablePointer(out), t = SendablePointer(tmp)
        Parallel.forRanges(count, threads: threads, minPerThread: 1 << 16) { r in
            Kernels.addInPlace(o.base + r.lowerBound, t.base + r.lowerBound, count: r.count)
        }
    }

    public static func productNT(_ a: UnsafePointer<Float>, m: Int, k: Int, _ b: UnsafePointer<Float>, n: Int,
                                 out: UnsafeMutablePointer<Float>, accumulate: Bool, threads: Int) {
        into(out, count: m * n, accumulate: accumulate, threads: threads) {
            Kernels.matmulNT(x: a, m: m, k: k, weight: .f32(b), n: n, out: $0, threads: threads)
        }
    }

    public static func productNN(_ a: UnsafePointer<Float>, m: Int, k: Int, _ b: UnsafePointer<Float>, n: Int,
                                 out: UnsafeMutablePointer<Float>, accumulate: Bool, threads: Int) {
        into(out, count: m * n, accumulate: accumulate, threads: threads) {
            Kernels.matmulNN(a: a, m: m, k: k, b: b, n: n, out: $0, threads: threads)
        }
    }

    public static func productTN(_ a: UnsafePointer<Float>, m: Int, n: Int, _ b: UnsafePointer<Float>, k: Int,
                                 out: UnsafeMutablePointer<Float>, accumulate: Bool, threads: Int) {
        into(out, count: n * k, accumulate: accumulate, threads: threads) {
            Kernels.matmulTN(a: a, m: m, n: n, b: b, k: k, out: $0, threads: threads)
        }
    }

    public static func exponential(_ x: Float) -> Float { Foundation.exp(x) }
    public static func logarithm(_ x: Float) -> Float { Foundation.log(x) }
}

/// Plain loops: Double runs only on the tiny models of the gradient checks.
extension Double: TrainScalar {
    public static func productNT(_ a: UnsafePointer<Double>, m: Int, k: Int, _ b: UnsafePointer<Double>, n: Int,
                                 out: UnsafeMutablePointer<Double>, accumulate: Bool, threads: Int) {
        for i in 0..<m {
            for j in 0..<n {
                var s = 0.0
                for t in 0..<k { s += a[i * k + t] * b[j * k + t] }
                out[i * n + j] = accumulate ? out[i * n + j] + s : s
            }
        }
    }

    public static func productNN(_ a: UnsafePointer<Double>, m: Int, k: Int, _ b: UnsafePointer<Double>, n: Int,
                                 out: UnsafeMutablePointer<Double>, accumulate: Bool, threads: Int) {
        for i in 0..<m {
            for j in 0..<n {
                var s = 0.0
                for t in 0..<k { s += a[i * k + t] * b[t * n + j] }
                out[i * n + j] = accumulate ? out[i * n + j] + s : s
            }
        }
    }

    public static func productTN(_ a: UnsafePointer<Double>, m: Int, n: Int, _ b: UnsafePointer<Double>, k: Int,
                                 out: UnsafeMutablePointer<Double>, accumulate: Bool, threads: Int) {
        for j in 0..<n {
            for t in 0..<k {
                var s = 0.0
                for i in 0..<m { s += a[i * n + j] * b[i * k + t] }
                out[j * k + t] = accumulate ? out[j * k + t] + s : s
            }
        }
    }

    public static func exponential(_ x: Double) -> Double { Foundation.exp(x) }
    public static func logarithm(_ x: Double) -> Double { Foundation.log(x) }
}
