/// SplitMix64 (Steele, Lea & Flood 2014), the one seeded generator: tiny, and reproducible in any language, so the
/// Python references (Tools/reference_bootstrap.py) draw the very same numbers.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    public private(set) var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// An index in 0..<n as `next() % n`, the draw the Python references make (modulo bias below 2^-40 for n < 2^24).
    public mutating func index(_ n: Int) -> Int { Int(next() % UInt64(n)) }

    /// Uniform in [-1, 1) on a 2^-23 grid, from the top 24 bits.
    public mutating func signedUnitFloat() -> Float { Float(next() >> 40) / Float(1 << 23) - 1 }
}
