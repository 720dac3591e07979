import XCTest
import Kernels
import TensorCore
import TestSupport

/// Fast GEMM/GEMV against the scalar Double-accumulating reference. Inputs lie in [-1, 1], so a k-term dot product
/// is off by about sqrt(k)·1e-7 from float summation order; the tolerance is 1e-5·sqrt(k), and a wrong index or a
/// missed tile gives errors of order 0.1-10.
final class MatmulTests: XCTestCase {
    enum Kind: CaseIterable { case f32, f16, bf16 }

    func check(m: Int, k: Int, n: Int, kind: Kind, threads: Int, bias: Bool, seed: UInt64, prepacked: Bool = false,
               file: StaticString = #filePath, line: UInt = #line) {
        var rng = SplitMix64(seed: seed)
        let x = rng.floats(m * k)
        let w32 = rng.floats(n * k)
        let w16 = w32.map { Float16($0) }
        let wbf = w32.map { floatToBF16($0) }
        let b = rng.floats(n)
        var fast = [Float](repeating: .nan, count: m * n)
        var ref = [Float](repeating: .nan, count: m * n)
        w32.withUnsafeBufferPointer { p32 in
            w16.withUnsafeBufferPointer { p16 in
                wbf.withUnsafeBufferPointer { pbf in
                    let w: WeightRef
                    switch kind {
                    case .f32: w = .f32(p32.baseAddress!)
                    case .f16: w = .f16(p16.baseAddress!)
                    case .bf16: w = .bf16(pbf.baseAddress!)
                    }
                    b.withUnsafeBufferPointer { bp in
                        let bptr = bias ? bp.baseAddress : nil
                        if prepacked {
                            let packed = FloatPanels(w, n: n, k: k, threads: threads)
                            Kernels.matmulNT(x: x, m: m, k: k, weight: w, packed: packed, n: n, bias: bptr, out: &fast,
                                             threads: threads)
                        } else {
                            Kernels.matmulNT(x: x, m: m, k: k, weight: w, n: n, bias: bptr, out: &fast, threads: threads)
                        }
                        Reference.matmulNT(x: x, m: m, k: k, weight: w, n: n, bias: bptr, out: &ref)
                    }
                }
            }
        }
        let tol = 1e-5 * Float(k).squareRoot()
        let d = maxAbsDiff(fast, ref)
        XCTAssertLessThanOrEqual(d, tol, "m=\(m) k=\(k) n=\(n) \(kind) threads=\(threads) bias=\(bias) prepacked=\(prepacked)",
                                 file: file, line: line)
    }

    func testOddShapesAllDtypes() {
        var seed: UInt64 = 1
        for kind in Kind.allCases {
            for m in [1, 2, 3, 4, 5, 7, 17] {
                for (k, n) in [(1, 1), (7, 33), (33, 7), (172, 33), (513, 17), (8, 16), (24, 48)] {
                    for threads in [1, 2] {
                        check(m: m, k: k, n: n, kind: kind, threads: threads, bias: seed % 2 == 0, seed: seed)
                        seed += 1
                    }
                }
            }
        }
    }

    /// Shapes large enough to run threaded, cross k blocks (256), column blocks (256) and row blocks (72).
    func testBlockedAndThreaded() {
        var seed: UInt64 = 100
        for kind in Kind.allCases {
            for (m, k, n) in [(64, 513, 513), (100, 300, 40), (64, 513, 7), (3, 1025, 300), (1, 2048, 97),
                              (13, 257, 271), (150, 33, 1)] {
                for threads in [1, 2] {
                    check(m: m, k: k, n: n, kind: kind, threads: threads, bias: true, seed: seed)
                    seed += 1
                }
            }
        }
    }

    /// Weights packed once into GEMM panels (FloatPanels): odd shapes, short last panels, several k blocks.
    func testPrepackedPanels() {
        var seed: UInt64 = 500
        for kind in Kind.allCases {
            for (m, k, n) in [(4, 7, 33), (5, 1, 1), (7, 172, 17), (17, 513, 16), (64, 513, 513), (100, 300, 40),
                              (13, 257, 271), (150, 33, 1), (2, 65, 9)] {
                for threads in [1, 2] {
                    check(m: m, k: k, n: n, kind: kind, threads: threads, bias: seed % 2 == 0, seed: seed, prepacked: true)
                    seed += 1
                }
            }
        }
    }

    /// Every row count the strip plan splits differently (6-row strips, then 4+4, 4+3, 5, 1-3 rows at the end of
    /// each 72-row block), over column-split (n 33) and row-split (n 16: one panel, strips across threads) runs.
    func testEveryStripTail() {
        var seed: UInt64 = 900
        for m in Array(4...21) + [71, 73, 76, 79, 80, 127, 128, 131] {
            for n in [33, 16] {
                for prepacked in [false, true] {
                    check(m: m, k: 97, n: n, kind: .f32, threads: 2, bias: seed % 2 == 0, seed: seed, prepacked: prepacked)
                    seed += 1
                }
            }
        }
    }

    /// Packing reports every source row once, in order, in chunks; a packed row reads back as the row-major row
    /// widened the same way (the tied embedding's lookup), for each dtype and short last panels.
    func testPanelRowsAndPackedChunks() {
        var rng = SplitMix64(seed: 77)
        for (n, k) in [(1, 3), (17, 5), (1100, 9), (2049, 4)] {
            let w32 = rng.floats(n * k)
            let w16 = w32.map { Float16($0) }
            let wbf = w32.map { floatToBF16($0) }
            for kind in Kind.allCases {
                func run(_ ref: WeightRef, _ expected: (Int) -> Float) {
                    var seen: [Range<Int>] = []
                    let p = FloatPanels(ref, n: n, k: k, threads: 2) { seen.append($0) }
                    XCTAssertEqual(seen.first?.lowerBound, 0)
                    XCTAssertEqual(seen.last?.upperBound, n)
                    XCTAssertTrue(zip(seen, seen.dropFirst()).allSatisfy { $0.upperBound == $1.lowerBound }, "\(kind) \(n)")
                    var row = [Float](repeating: .nan, count: k)
                    for r in [0, n / 2, n - 1] {
                        row.withUnsafeMutableBufferPointer { p.copyRow(r, into: $0.baseAddress!) }
                        XCTAssertEqual(row.map(\.bitPattern), (0..<k).map { expected(r * k + $0).bitPattern }, "\(kind) \(n)x\(k) row \(r)")
                    }
                }
                switch kind {
                case .f32: w32.withUnsafeBufferPointer { b in run(.f32(b.baseAddress!)) { w32[$0] } }
                case .f16: w16.withUnsafeBufferPointer { b in run(.f16(b.baseAddress!)) { Float(w16[$0]) } }
                case .bf16: wbf.withUnsafeBufferPointer { b in run(.bf16(b.baseAddress!)) { bf16ToFloat(wbf[$0]) } }
                }
            }
        }
    }

    func testZeroK() {
        let b: [Float] = [1, 2, 3]
        var out = [Float](repeating: .nan, count: 6)
        let w: [Float] = [0]
        w.withUnsafeBufferPointer { wp in
            let x: [Float] = [0]
            Kernels.matmulNT(x: x, m: 2, k: 0, weight: .f32(wp.baseAddress!), n: 3, bias: b, out: &out)
        }
        XCTAssertEqual(out, [1, 2, 3, 1, 2, 3])
    }
}
