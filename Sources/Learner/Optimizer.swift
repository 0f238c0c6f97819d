import Foundation
import Kernels
import Model

/// Learning-rate schedule: linear warm-up from 0, then cosine decay to 0 or constant — the values of
/// transformers' `get_cosine_schedule_with_warmup` / `get_constant_schedule_with_warmup`: optimizer
/// step k (0-based) uses lr · factor(k).
public struct LRSchedule: Sendable, Codable, Equatable {
    public enum Kind: String, Sendable, Codable { case cosine, constant }
    public var kind: Kind
    public var baseLR: Double
    public var warmupSteps: Int
    /// Total optimizer steps (the cosine's horizon).
    public var totalSteps: Int

    public init(kind: Kind, baseLR: Double, warmupSteps: Int, totalSteps: Int) {
        self.kind = kind; self.baseLR = baseLR; self.warmupSteps = warmupSteps; self.totalSteps = totalSteps
    }

    /// `warmupRatio` of `totalSteps`, rounded up as transformers does.
    public init(kind: Kind, baseLR: Double, warmupRatio: Double, totalSteps: Int) {
        self.init(kind: kind, baseLR: baseLR, warmupSteps: Int((warmupRatio * Double(totalSteps)).rounded(.up)),
                  totalSteps: totalSteps)
    }

    public func lr(at step: Int) -> Double {
        if step < warmupSteps { return baseLR * Double(step) / Double(max(1, warmupSteps)) }
        switch kind {
        case .constant: return baseLR
        case .cosine:
            let progress = Double(step - warmupSteps) / Double(max(1, totalSteps - warmupSteps))
            return baseLR * max(0, 0.5 * (1 + cos(Double.pi * progress)))
        }
    }
}

/// AdamW with PyTorch's semantics (`torch.optim.AdamW`: decoupled weight decay applied as
/// p ← p·(1 − lr·wd) before the Adam update, bias-corrected moments, eps added to the corrected
/// square root). Moments share the weights' layout. Weight decay skips the RMSNorm weights, as the
/// transformers Trainer does.
public final class AdamW: @unchecked Sendable {
    public var beta1: Float = 0.9
    public var beta2: Float = 0.999
    public var eps: Float = 1e-8
    public var weightDecay: Float
    /// Optimizer steps taken.
    public private(set) var step: Int = 0
    public let m: ParameterSet
    public let v: ParameterSet
    private let decayMask: [(offset: Int, count: Int, decay: Bool)]

    public init(config: LlamaConfig, weightDecay: Float = 0) {
        self.weightDecay = weightDecay
        m = ParameterSet(config: config)
        v = ParameterSet(config: config)
        decayMask = m.layout.entries.map { ($0.offset, $0.count, !$0.name.hasSuffix("norm.weight")) }
    }

    /// Restores the step count (moments are restored by writing into `m` and `v`).
    public func restore(step: Int) { self.step = step }

    /// One update of `params` with gradients `grads` · `gradScale` at learning rate `lr` (gradient
    /// clipping's factor is applied here, in the same pass: the bits of scaling `grads` first).
    /// With `snapshot` (made for `params`), the same pass fills it: each tensor is packed or copied
    /// into it right after its update (`adamw_update_rows`), so the engine's next version needs no
    /// packing pass of its own; the update's bits are the same either way.
    public func update(_ params: ParameterSet, grads: ParameterSet, lr: Float, gradScale: Float = 1,
                       snapshot: CompactSnapshot? = nil) {
        step += 1
        let b1 = beta1, b2 = beta2, eps = eps
        let bc1 = 1 - Float(pow(Double(b1), Double(step)))
        let bc2sqrt = Float(sqrt(1 - pow(Double(b2), Double(step))))
        let stepSize = lr / bc1
        let p = params.data, g = grads.data, m = self.m.data, v = self.v.data
        let t0 = DispatchTime.now().uptimeNanoseconds
        for seg in decayMask {
            let shrink: Float = seg.decay ? 1 - lr * weightDecay : 1
            let o = seg.offset
            if let snapshot {
                guard let t = snapshot.target(offset: o), t.rows * t.cols == seg.count else {
                    preconditionFailure("the snapshot was made for another layout")
                }
                let bad = adamw_update_rows(p + o, g + o, m + o, v + o, Int32(t.rows), Int32(t.cols), b1, b2, eps, shrink,
                                            stepSize, bc2sqrt, gradScale, t.packed, t.copy)
                precondition(bad >= 0, "adamw_update_rows refused the snapshot's matrix")
                snapshot.filled(offset: o, bad: bad)
            } else {
                adamw_update(p + o, g + o, m + o, v + o, seg.count, b1, b2, eps, shrink, stepSize, bc2sqrt, gradScale)
            }
        }
        snapshot?.seconds += Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9
    }
}

extension ParameterSet {
    /// The L2 norm of all values (double accumulation).
    public func globalNorm() -> Double {
        sum_squares(data, count).squareRoot()
    }

    /// Multiplies every value by `k`.
    public func scale(by k: Float) {
        let p = data
        for i in 0..<count { p[i] *= k }
    }

    /// True when every value is finite.
    public func allFinite() -> Bool {
        let p = data
        for i in 0..<count where !p[i].isFinite { return false }
        return true
    }
}
