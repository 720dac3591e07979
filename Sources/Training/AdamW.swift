import Foundation
import TensorCore

/// The optimizer's settings and learning-rate schedule: linear warmup to the peak, then cosine decay to
/// `minRatio` times the peak at the last step.
public struct OptimizerSettings: Sendable, Equatable, Codable {
    public var learningRate: Double
    /// Peak rate of the learned quantization scales (LSQ), which move on another scale than weights.
    public var scaleLearningRate: Double
    public var beta1: Double = 0.9
    public var beta2: Double = 0.999
    public var epsilon: Double = 1e-8
    /// Decoupled weight decay (AdamW), on matrices only.
    public var weightDecay: Double = 0
    public var warmupSteps: Int
    public var totalSteps: Int
    public var minRatio: Double = 0
    /// Global gradient-norm clip (0: none).
    public var clipNorm: Double = 1

    public init(learningRate: Double, scaleLearningRate: Double, warmupSteps: Int, totalSteps: Int) {
        self.learningRate = learningRate; self.scaleLearningRate = scaleLearningRate
        self.warmupSteps = warmupSteps; self.totalSteps = totalSteps
    }

    /// The rate multiplier of step t (1-based): t / warmup during warmup, then half a cosine down to minRatio.
    public func schedule(step t: Int) -> Double {
        if warmupSteps > 0 && t <= warmupSteps { return Double(t) / Double(warmupSteps) }
        let span = max(1, totalSteps - warmupSteps)
        let progress = min(1, Double(t - warmupSteps) / Double(span))
        return minRatio + (1 - minRatio) * 0.5 * (1 + cos(Double.pi * progress))
    }
}

/// AdamW (Loshchilov & Hutter 2019) in PyTorch's formulation: p ← p (1 - lr·wd), then p ← p - (lr / (1 - β1^t))
/// m / (sqrt(v) / sqrt(1 - β2^t) + ε). Moments in Float. Elementwise over fixed ranges: repeatable bit for bit.
public final class AdamW {
    public let settings: OptimizerSettings
    public private(set) var step = 0
    let count: Int
    let m: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>

    public init(settings: OptimizerSettings, parameterCount: Int) {
        self.settings = settings
        count = parameterCount
        m = .allocate(capacity: max(1, count)); m.initialize(repeating: 0, count: max(1, count))
        v = .allocate(capacity: max(1, count)); v.initialize(repeating: 0, count: max(1, count))
    }

    deinit { m.deallocate(); v.deallocate() }

    public var firstMoment: UnsafeBufferPointer<Float> { UnsafeBufferPointer(start: m, count: count) }
    public var secondMoment: UnsafeBufferPointer<Float> { UnsafeBufferPointer(start: v, count: count) }

    /// Restores a saved state (moments and step).
    public func restore(step: Int, firstMoment: [Float], secondMoment: [Float]) throws {
        guard firstMoment.count == count, secondMoment.count == count else {
            throw QuantKitError(.format, "optimizer state holds \(firstMoment.count) values, the model \(count)")
        }
        self.step = step
        firstMoment.withUnsafeBufferPointer { m.update(from: $0.baseAddress!, count: count) }
        secondMoment.withUnsafeBufferPointer { v.update(from: $0.baseAddress!, count: count) }
    }

    /// L2 norm of the trainable gradients, summed in Double in the parameter order.
    public func gradientNorm(_ p: ParameterSet<Float>) -> Double {
        var s = 0.0
        for e in p.entries where e.trainable {
            for i in e.offset..<(e.offset + e.count) { let g = Double(p.grads[i]); s += g * g }
        }
        return s.squareRoot()
    }

    /// One update from the gradients in `p.grads`; returns (the gradient norm before clipping, the peak-relative
    /// rate multiplier used).
    @discardableResult
    public func update(_ p: ParameterSet<Float>, threads: Int) -> (gradientNorm: Double, rate: Double) {
        step += 1
        let norm = gradientNorm(p)
        let clip = settings.clipNorm > 0 && norm > settings.clipNorm ? Float(settings.clipNorm / (norm + 1e-6)) : 1
        let rate = settings.schedule(step: step)
        // 1 - β in Double, then rounded: Float(1) - Float(0.999) is 1.3e-5 off 0.001, which would scale v.
        let (b2, oneMinusB1, oneMinusB2) = (Float(settings.beta2), Float(1 - settings.beta1), Float(1 - settings.beta2))
        let bc1 = 1 - pow(settings.beta1, Double(step)), bc2Root = Float((1 - pow(settings.beta2, Double(step))).squareRoot())
        let eps = Float(settings.epsilon)
        let values = SendablePointer(p.values), grads = SendablePointer(p.grads), mp = SendablePointer(m), vp = SendablePointer(v)
        for e in p.entries where e.trainable {
            let peak = e.kind == .scales ? settings.scaleLearningRate : settings.learningRate
            let lr = peak * rate
            let stepSize = Float(lr / bc1)
            let decay = e.kind == .matrix ? Float(1 - lr * settings.weightDecay) : 1
            let isScale = e.kind == .scales
            let base = e.offset
            Parallel.forRanges(e.count, threads: threads, minPerThread: 1 << 14) { r in
                for j in r {
                    let i = base + j
                    let g = grads[i] * clip
                    let mi = mp[i] + oneMinusB1 * (g - mp[i])
                    let vi = b2 * vp[i] + oneMinusB2 * g * g
                    mp[i] = mi; vp[i] = vi
                    var x = values[i] * decay - stepSize * mi / (vi.squareRoot() / bc2Root + eps)
                    // A scale must stay positive (it divides the weights).
                    if isScale { x = max(x, 1e-8) }
                    values[i] = x
                }
            }
        }
        return (norm, rate)
    }
}
