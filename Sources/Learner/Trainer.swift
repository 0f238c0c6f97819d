import Foundation
import Model

/// Options of a training run. Defaults are the SELM paper's recipe where it has one.
public struct TrainingOptions: Sendable, Codable, Equatable {
    public var loss = LossConfig()
    /// Peak learning rate (paper: 5e-7 for 7–8B models; small models usually want more, e.g. 1e-5).
    public var learningRate: Double = 5e-7
    public var warmupRatio: Double = 0.1
    public var schedule: LRSchedule.Kind = .cosine
    /// Pairs per micro-batch.
    public var batchSize: Int = 4
    /// Micro-batches per optimizer step.
    public var gradAccum: Int = 1
    public var epochs: Int = 1
    /// Global gradient-norm clip (transformers' default 1.0); 0 = off.
    public var maxGradNorm: Double = 1.0
    public var weightDecay: Double = 0
    /// Refresh the reference policy to the current policy every N optimizer steps (SELM's iteration
    /// boundary); 0 = never (frozen).
    public var refRefreshSteps: Int = 0
    public var seed: UInt64 = 42

    public init() {}

    public func validate() throws {
        func bad(_ n: String, _ r: String) -> LearnerError { .badOption(name: n, reason: r) }
        if !(loss.beta > 0 && loss.beta.isFinite) { throw bad("beta", "must be > 0") }
        if !(loss.alpha >= 0 && loss.alpha.isFinite) { throw bad("alpha", "must be ≥ 0") }
        if !(learningRate >= 0 && learningRate.isFinite) { throw bad("lr", "must be ≥ 0") }
        if !(warmupRatio >= 0 && warmupRatio <= 1) { throw bad("warmup-ratio", "must be in [0, 1]") }
        if batchSize < 1 { throw bad("batch-size", "must be ≥ 1") }
        if gradAccum < 1 { throw bad("grad-accum", "must be ≥ 1") }
        if epochs < 1 { throw bad("epochs", "must be ≥ 1") }
        if !(maxGradNorm >= 0) { throw bad("max-grad-norm", "must be ≥ 0") }
        if !(weightDecay >= 0) { throw bad("weight-decay", "must be ≥ 0") }
        if refRefreshSteps < 0 { throw bad("ref-refresh-steps", "must be ≥ 0") }
    }
}

/// The reference policy π_ref and a cache of reference log-probabilities per row. The cache is
/// keyed by a caller-chosen row key and emptied whenever the reference changes.
public final class ReferencePolicy {
    public enum Kind: String, Sendable, Codable {
        /// A frozen copy of the policy's starting weights.
        case initial
        /// A separate checkpoint (`--ref`).
        case external
    }
    public let kind: Kind
    public private(set) var model: LlamaModel
    /// Bumped at every refresh.
    public private(set) var generation = 0
    private let scorer: SequenceScorer
    private var cache: [UInt64: PairRefLogps] = [:]

    public struct PairRefLogps: Sendable, Equatable {
        public var chosen: Double, rejected: Double, response: Double?
    }

    public init(model: LlamaModel, kind: Kind) {
        self.model = model
        self.kind = kind
        scorer = SequenceScorer(model: model, training: false)
    }

    /// Forgets the cached log-probs (the reference is unchanged). A checkpoint calls it: a run resumed
    /// from a checkpoint starts with nothing cached, and the forward's results depend in the last
    /// bits on how rows are batched (OpenBLAS's kernels for the batch's shape), so the run that goes
    /// on past the checkpoint must recompute exactly where the resumed one will.
    public func clearCache() { cache.removeAll() }

    /// Replaces the reference weights with a copy of `weights` (SELM's iteration boundary).
    public func refresh(from weights: ParameterSet) {
        model.weights.data.update(from: weights.data, count: weights.count)
        generation += 1
        cache.removeAll()
    }

    public var cachedRows: Int { cache.count }

    /// The number format of the reference forward's products (the trainer's `precision`). A change
    /// empties the cache (its log-probs were computed in the other format).
    public var products: MatmulPrecision {
        get { scorer.products }
        set { if newValue != scorer.products { scorer.products = newValue; cache.removeAll() } }
    }

    func setGeneration(_ g: Int) { generation = g }

    /// Reference log-probs of each pair, computed once per key and cached until the next refresh.
    public func logps(_ pairs: [PreferencePair], keys: [UInt64]) throws -> [PairRefLogps] {
        var missing: [Int] = []
        for (i, k) in keys.enumerated() where cache[k] == nil { missing.append(i) }
        if !missing.isEmpty {
            var seqs: [(prompt: [Int32], response: [Int32])] = []
            for i in missing {
                let p = pairs[i]
                seqs.append((p.prompt, p.chosen)); seqs.append((p.prompt, p.rejected))
                if let r = p.reference { seqs.append((p.prompt, r)) }
            }
            let s = try scorer.score(seqs)
            var j = 0
            for i in missing {
                let hasRef = pairs[i].reference != nil
                cache[keys[i]] = PairRefLogps(chosen: s[j], rejected: s[j + 1], response: hasRef ? s[j + 2] : nil)
                j += hasRef ? 3 : 2
            }
        }
        return keys.map { cache[$0]! }
    }
}

/// What one optimizer step did.
public struct StepReport: Sendable {
    public var step: Int
    /// TRL / SELM metric names, plus `grad_norm` and `learning_rate`.
    public var metrics: [String: Double]
    /// False when a non-finite loss or gradient made the step a no-op.
    public var applied: Bool
    /// Policy tokens processed (forward + backward).
    public var tokens: Int
    public var seconds: Double
}

/// Runs SELM optimizer steps on a policy: reference log-probs (cached), policy forward + backward,
/// gradient accumulation, clipping, AdamW, reference refresh. Owns its copy of the weights; one
/// thread at a time.
public final class Trainer {
    public let policy: LlamaModel
    public let reference: ReferencePolicy
    public let options: TrainingOptions
    public let optimizer: AdamW
    public var schedule: LRSchedule
    public let grads: ParameterSet
    private let scorer: SequenceScorer
    /// Optimizer steps skipped because of a non-finite loss or gradient.
    public private(set) var skippedSteps = 0
    /// Whether `grads` may hold anything but zeros: `step` clears them at its end and skips
    /// clearing them again at its start unless a `microBatch` ran (or anyone else wrote them) since.
    private var gradsDirty = true
    public var step: Int { optimizer.step + skippedSteps }
    /// The number format of the large products of the policy's forward and backward and of the
    /// reference forward (`--precision`); master weights, gradients and AdamW state stay f32.
    /// Default f32; may change between steps.
    public var precision: MatmulPrecision {
        get { scorer.products }
        set { scorer.products = newValue; reference.products = newValue }
    }

    /// - Parameters:
    ///   - policy: trained in place.
    ///   - reference: nil = a frozen copy of the policy's current weights.
    public init(policy: LlamaModel, reference: LlamaModel?, options: TrainingOptions, schedule: LRSchedule) throws {
        try options.validate()
        if let r = reference, r.config != policy.config {
            throw LearnerError.badOption(name: "ref", reason: "the reference model's shape differs from the policy's")
        }
        self.policy = policy
        self.options = options
        self.schedule = schedule
        self.reference = ReferencePolicy(model: reference ?? LlamaModel(weights: policy.weights.copy()),
                                         kind: reference == nil ? .initial : .external)
        optimizer = AdamW(config: policy.config, weightDecay: Float(options.weightDecay))
        grads = ParameterSet(config: policy.config)
        scorer = SequenceScorer(model: policy, training: true)
    }

    /// Restores counters after loading a checkpoint.
    public func restore(optimizerSteps: Int, skipped: Int) {
        optimizer.restore(step: optimizerSteps)
        skippedSteps = skipped
    }

    /// Loss, metrics and (with `accumulateScale` ≠ 0) gradients of one micro-batch; the gradients of
    /// the mean loss times `accumulateScale` are ADDED to `grads`.
    public func microBatch(_ pairs: [PreferencePair], keys: [UInt64], accumulateScale: Double) throws -> (LossResult, tokens: Int) {
        let ref = try reference.logps(pairs, keys: keys)
        var seqs: [(prompt: [Int32], response: [Int32])] = []
        for p in pairs {
            seqs.append((p.prompt, p.chosen)); seqs.append((p.prompt, p.rejected))
            if let r = p.reference { seqs.append((p.prompt, r)) }
        }
        gradsDirty = true
        let s = try scorer.score(seqs)
        var logps: [PairLogps] = []
        var j = 0
        for (i, p) in pairs.enumerated() {
            let hasRef = p.reference != nil
            logps.append(PairLogps(chosen: s[j], rejected: s[j + 1], response: hasRef ? s[j + 2] : nil,
                                   refChosen: ref[i].chosen, refRejected: ref[i].rejected,
                                   refResponse: hasRef ? ref[i].response : nil, weight: Double(p.weight)))
            j += hasRef ? 3 : 2
        }
        let result = options.loss.evaluate(logps)
        if accumulateScale != 0 && result.loss.isFinite {
            var d: [Double] = []
            for (i, p) in pairs.enumerated() {
                d.append(result.dChosen[i] * accumulateScale); d.append(result.dRejected[i] * accumulateScale)
                if p.reference != nil { d.append(result.dResponse[i] * accumulateScale) }
            }
            scorer.backward(dSequence: d, into: grads)
        }
        return (result, scorer.tokenCount)
    }

    /// One optimizer step over `microBatches` (gradient accumulation). Keys identify rows for the
    /// reference cache. `snapshot` (made for `policy.weights`): the update fills it with the new
    /// weights in the engine's compact precision (`AdamW.update`); a skipped step leaves it incomplete.
    public func step(_ microBatches: [(pairs: [PreferencePair], keys: [UInt64])], snapshot: CompactSnapshot? = nil) throws -> StepReport {
        let t0 = Date()
        let k = 1.0 / Double(microBatches.count)
        if gradsDirty { grads.zero() }
        var sums: [String: Double] = [:]
        var tokens = 0
        var finite = true
        for mb in microBatches {
            let (r, n) = try microBatch(mb.pairs, keys: mb.keys, accumulateScale: k)
            tokens += n
            if !r.loss.isFinite { finite = false }
            for (name, v) in r.metrics { sums[name, default: 0] += v * k }
        }
        let stepIndex = step
        let lr = schedule.lr(at: optimizer.step)
        let norm = grads.globalNorm()
        if !norm.isFinite { finite = false }
        var metrics = sums
        metrics["grad_norm"] = norm
        metrics["learning_rate"] = lr
        if finite {
            // Clipping's factor goes into the update's pass over the gradients.
            let clip: Float = options.maxGradNorm > 0 && norm > options.maxGradNorm ? Float(options.maxGradNorm / (norm + 1e-6)) : 1
            optimizer.update(policy.weights, grads: grads, lr: Float(lr), gradScale: clip, snapshot: snapshot)
        } else {
            skippedSteps += 1
        }
        metrics["skipped_steps"] = Double(skippedSteps)
        grads.zero()
        gradsDirty = false
        if options.refRefreshSteps > 0 && finite && optimizer.step % options.refRefreshSteps == 0 {
            reference.refresh(from: policy.weights)
        }
        return StepReport(step: stepIndex + 1, metrics: metrics, applied: finite, tokens: tokens,
                          seconds: Date().timeIntervalSince(t0))
    }
}
