import Foundation
import TensorCore

/// Precomputed rotary-embedding cos/sin for positions 0..<maxPositions (Hugging Face rotate_half convention, as
/// `Reference.rope`): angles pos·frequencies[i] in Double, stored as Float. Build one per model and context.
public final class RopeTable: @unchecked Sendable {
    public let headDim: Int, maxPositions: Int
    /// The headDim/2 inverse frequencies (radians per position) the table was built from.
    public let frequencies: [Double]
    /// [maxPositions][headDim/2] each.
    let cosTable: UnsafeMutablePointer<Float>
    let sinTable: UnsafeMutablePointer<Float>

    public init(headDim: Int, frequencies: [Double], maxPositions: Int) {
        precondition(frequencies.count == headDim / 2, "RoPE needs headDim/2 frequencies")
        self.headDim = headDim; self.frequencies = frequencies; self.maxPositions = max(0, maxPositions)
        let half = headDim / 2
        let count = max(1, self.maxPositions * half)
        cosTable = .allocate(capacity: count); sinTable = .allocate(capacity: count)
        for p in 0..<self.maxPositions {
            for i in 0..<half {
                let a = Double(p) * frequencies[i]
                cosTable[p * half + i] = Float(cos(a)); sinTable[p * half + i] = Float(sin(a))
            }
        }
    }

    public convenience init(headDim: Int, theta: Float, maxPositions: Int) {
        self.init(headDim: headDim, frequencies: RopeTable.frequencies(headDim: headDim, theta: theta), maxPositions: maxPositions)
    }

    deinit { cosTable.deallocate(); sinTable.deallocate() }

    /// Unscaled RoPE: theta^(-2i/headDim), computed exactly as the reference does.
    public static func frequencies(headDim: Int, theta: Float) -> [Double] {
        (0..<(headDim / 2)).map { 1.0 / pow(Double(theta), Double(2 * $0) / Double(headDim)) }
    }
}

enum Rope {
    /// Rotates every head of one row with the given cos/sin (half entries each).
    @inline(__always)
    static func rotateRow(_ p: UnsafeMutablePointer<Float>, heads: Int, headDim: Int,
                          cos c: UnsafePointer<Float>, sin s: UnsafePointer<Float>) {
        let half = headDim / 2, h8 = half & ~7
        for h in 0..<heads {
            let a = p + h * headDim, b = a + half
            var i = 0
            while i < h8 {
                let x = loadU(a + i), y = loadU(b + i), cv = loadU(c + i), sv = loadU(s + i)
                // Unfused multiplies, as the reference computes them.
                storeU(x * cv - y * sv, a + i)
                storeU(x * sv + y * cv, b + i)
                i += 8
            }
            while i < half {
                let x = a[i], y = b[i]
                a[i] = x * c[i] - y * s[i]
                b[i] = x * s[i] + y * c[i]
                i += 1
            }
        }
    }

    static func apply(_ x: UnsafeMutablePointer<Float>, rows: Int, heads: Int, headDim: Int,
                      positions: UnsafePointer<Int32>, table: RopeTable?, frequencies freqs: [Double]) {
        let half = headDim / 2
        guard half > 0 else { return }
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: 2 * half)
        defer { scratch.deallocate() }
        for r in 0..<rows {
            let pos = Int(positions[r])
            let row = x + r * heads * headDim
            if let table, table.headDim == headDim, pos >= 0, pos < table.maxPositions {
                rotateRow(row, heads: heads, headDim: headDim, cos: table.cosTable + pos * half,
                          sin: table.sinTable + pos * half)
            } else {
                for i in 0..<half {
                    let a = Double(pos) * freqs[i]
                    scratch[i] = Float(cos(a)); scratch[half + i] = Float(sin(a))
                }
                rotateRow(row, heads: heads, headDim: headDim, cos: scratch, sin: scratch + half)
            }
        }
    }
}
