import Foundation
import Kernels

/// How to pick each next token. Validated by `validate()`; every error names the field.
public struct SamplerSettings: Sendable, Equatable, Codable {
    /// 0 = greedy (argmax); otherwise logits are divided by it.
    public var temperature: Float = 1.0
    /// Keep only the k most likely tokens; 0 = off.
    public var topK: Int = 0
    /// Keep the smallest set of most likely tokens whose probability reaches p (tokens tied with the
    /// least likely of them stay too); 1 = off.
    public var topP: Float = 1.0
    /// Drop tokens whose probability is below minP × the top probability; 0 = off.
    public var minP: Float = 0.0
    /// Divide positive (multiply negative) logits of tokens already in prompt or output; 1 = off.
    public var repetitionPenalty: Float = 1.0
    /// Subtract from the logit of every token already generated; 0 = off.
    public var presencePenalty: Float = 0.0
    /// Subtract count × this from the logit of every token already generated; 0 = off.
    public var frequencyPenalty: Float = 0.0
    /// With a seed, a sample's tokens depend only on (seed, sample index, version, prompt).
    public var seed: UInt64? = nil
    /// Maximum number of new tokens.
    public var maxTokens: Int = 256

    public init() {}

    /// Throws `SamplingError.invalid` naming the first bad field.
    public func validate() throws {
        func bad(_ f: String, _ r: String) -> SamplingError { .invalid(field: f, reason: r) }
        if !(temperature >= 0) || !temperature.isFinite { throw bad("temperature", "must be ≥ 0, got \(temperature)") }
        if topK < 0 { throw bad("top_k", "must be ≥ 0 (0 = off), got \(topK)") }
        if !(topP > 0 && topP <= 1) { throw bad("top_p", "must be in (0, 1], got \(topP)") }
        if !(minP >= 0 && minP <= 1) { throw bad("min_p", "must be in [0, 1], got \(minP)") }
        if !(repetitionPenalty > 0) || !repetitionPenalty.isFinite { throw bad("repetition_penalty", "must be > 0, got \(repetitionPenalty)") }
        if !presencePenalty.isFinite { throw bad("presence_penalty", "must be finite") }
        if !frequencyPenalty.isFinite { throw bad("frequency_penalty", "must be finite") }
        if maxTokens < 1 { throw bad("max_tokens", "must be ≥ 1, got \(maxTokens)") }
    }
}

public enum SamplingError: Error, CustomStringConvertible, Equatable {
    /// A sampling parameter is out of range.
    case invalid(field: String, reason: String)
    public var description: String {
        switch self { case let .invalid(f, r): return "\(f): \(r)" }
    }
}

/// SplitMix64 (Steele, Lea and Flood): a tiny seeded generator. It seeds `RandomSource`, and the
/// project's other reproducible choices use it (`selm train`'s data order, `selm-bench`'s load mix).
public struct SplitMix64: RandomNumberGenerator, Sendable {
    public var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// A small, fast, seedable generator (xoshiro256**), seeded through SplitMix64.
public struct RandomSource: Sendable {
    private var s: (UInt64, UInt64, UInt64, UInt64)

    public init(seed: UInt64) {
        var seeder = SplitMix64(seed: seed)
        s = (seeder.next(), seeder.next(), seeder.next(), seeder.next())
    }

    /// Derives an independent stream from several values (e.g. seed, sample index, version).
    public init(mixing parts: [UInt64]) {
        var h: UInt64 = 0x243F_6A88_85A3_08D3
        for p in parts { h = (h ^ p) &* 0x100_0000_01B3; h ^= h >> 29 }
        self.init(seed: h)
    }

    public mutating func next() -> UInt64 {
        let result = ((s.1 &* 5) << 7 | (s.1 &* 5) >> 57) &* 9
        let t = s.1 << 17
        s.2 ^= s.0; s.3 ^= s.1; s.1 ^= s.2; s.0 ^= s.3
        s.2 ^= t
        s.3 = (s.3 << 45) | (s.3 >> 19)
        return result
    }

    /// Uniform in [0, 1).
    public mutating func nextUnit() -> Double { Double(next() >> 11) * 0x1.0p-53 }
}

/// Picks tokens from logits (llama2.c's Sampler): penalties, temperature, top-k, top-p, min-p.
/// One per sample; owns its random stream.
public struct Sampler: Sendable {
    public let params: SamplerSettings
    public var rng: RandomSource
    private var counts: [Int32: Int] = [:]       // generated-token counts (presence / frequency)
    private var seen: Set<Int32> = []            // prompt + generated tokens (repetition)

    public init(params: SamplerSettings, rng: RandomSource, prompt: [Int32] = []) {
        self.params = params
        self.rng = rng
        if params.repetitionPenalty != 1 { seen = Set(prompt) }
    }

    /// Records a token the sample produced (for the penalties).
    public mutating func accept(_ token: Int32) {
        counts[token, default: 0] += 1
        if params.repetitionPenalty != 1 { seen.insert(token) }
    }

    /// Chooses the next token. `logits` (vocab) is not modified.
    public mutating func sample(_ logits: UnsafePointer<Float>, vocab: Int) -> Int32 {
        sample(logits, vocab: vocab, uniform: nil)
    }

    /// Chooses the next token with the uniform draw `uniform` in [0, 1) instead of the next one of
    /// `rng` (nil: from `rng`; greedy sampling draws none). The seam through which tests feed the
    /// draws of an external reference.
    mutating func sample(_ logits: UnsafePointer<Float>, vocab: Int, uniform: Double?) -> Int32 {
        if params.temperature == 0 { return withPenalised(logits, vocab: vocab) { Self.argmax($0, vocab: vocab) } }
        let (w, kept) = withPenalised(logits, vocab: vocab) { candidateWeights($0, vocab: vocab) }
        let u = (uniform ?? rng.nextUnit()) * kept
        return w.withUnsafeBufferPointer { w in
            var acc: Double = 0
            for i in 0..<vocab where w[i] > 0 {
                acc += Double(w[i])
                if u < acc { return Int32(i) }
            }
            // Rounding left u at the very end: the last candidate.
            var last = vocab - 1
            while last > 0 && !(w[last] > 0) { last -= 1 }
            return Int32(last)
        }
    }

    /// The probabilities the next draw picks tokens with (vocab; 0 for dropped tokens; one-hot for
    /// greedy): penalties, temperature, top-k, top-p and min-p applied, as `sample` applies them.
    func distribution(_ logits: UnsafePointer<Float>, vocab: Int) -> [Double] {
        var out = [Double](repeating: 0, count: vocab)
        if params.temperature == 0 {
            out[Int(withPenalised(logits, vocab: vocab) { Self.argmax($0, vocab: vocab) })] = 1
            return out
        }
        let (w, kept) = withPenalised(logits, vocab: vocab) { candidateWeights($0, vocab: vocab) }
        for i in 0..<vocab { out[i] = Double(w[i]) / kept }
        return out
    }

    /// Calls `body` with the logits after the penalties (a copy when any applies): the repetition
    /// penalty divides positive (multiplies negative) logits of prompt and generated tokens, then
    /// presence + count × frequency is subtracted from the logits of generated tokens.
    private func withPenalised<R>(_ logits: UnsafePointer<Float>, vocab: Int, _ body: (UnsafePointer<Float>) -> R) -> R {
        let p = params
        guard p.repetitionPenalty != 1 || p.presencePenalty != 0 || p.frequencyPenalty != 0 else { return body(logits) }
        var adjusted = Array(UnsafeBufferPointer(start: logits, count: vocab))
        if p.repetitionPenalty != 1 {
            for t in seen {
                let x = adjusted[Int(t)]
                adjusted[Int(t)] = x > 0 ? x / p.repetitionPenalty : x * p.repetitionPenalty
            }
        }
        for (t, n) in counts {
            adjusted[Int(t)] -= p.presencePenalty + Float(n) * p.frequencyPenalty
        }
        return adjusted.withUnsafeBufferPointer { body($0.baseAddress!) }
    }

    static func argmax(_ x: UnsafePointer<Float>, vocab: Int) -> Int32 {
        var best = 0
        for i in 1..<vocab where x[i] > x[best] { best = i }
        return Int32(best)
    }

    /// The weights the draw walks (vocab): candidates are the top k (or all tokens) weighted
    /// exp((logit − max) / T); min-p and top-p each set a floor on that weight (top-p's: the largest
    /// weight w* such that the tokens weighing at least w* hold p of the mass); tokens below the
    /// floor weigh 0. The draw walks the tokens in id order. O(vocab): no sort of the vocabulary.
    /// Returns the weights and their sum (in double precision).
    private func candidateWeights(_ x: UnsafePointer<Float>, vocab: Int) -> (weights: [Float], kept: Double) {
        let p = params
        let mx = kernels_max(x, Int32(vocab))
        let invT = 1 / p.temperature
        var kept: Double = 0
        let weights = [Float](unsafeUninitializedCapacity: vocab) { w, initialized in
            // (vocab) candidate weights, 0 for tokens that are not candidates; the largest is 1.
            var sum: Double = 0
            if p.topK > 0 && p.topK < vocab {
                w.initialize(repeating: 0)
                for c in Self.best(p.topK, of: x, vocab: vocab) { w[Int(c.id)] = expf((c.w - mx) * invT) }
                for i in 0..<vocab { sum += Double(w[i]) }
            } else {
                sum = kernels_exp_sum(x, Int32(vocab), mx, invT, w.baseAddress)
            }
            initialized = vocab
            var floor: Float = .leastNonzeroMagnitude
            if p.minP > 0 { floor = max(floor, p.minP) }
            if p.topP < 1 { floor = max(floor, Self.topPFloor(UnsafeBufferPointer(w), above: floor, target: Double(p.topP) * sum)) }
            if floor > .leastNonzeroMagnitude {
                sum = 0
                for i in 0..<vocab {
                    if w[i] < floor { w[i] = 0 } else { sum += Double(w[i]) }
                }
            }
            kept = sum
        }
        return (weights, kept)
    }

    /// The k largest logits as (id, logit), larger first, ties to the lower id, by insertion into a
    /// short sorted list.
    static func best(_ k: Int, of x: UnsafePointer<Float>, vocab: Int) -> [(id: Int32, w: Float)] {
        var out: [(id: Int32, w: Float)] = []
        out.reserveCapacity(k + 1)
        for i in 0..<vocab {
            let v = x[i]
            if out.count == k && !(v > out[k - 1].w) { continue }
            var j = out.count
            while j > 0 && out[j - 1].w < v { j -= 1 }
            out.insert((Int32(i), v), at: j)
            if out.count > k { out.removeLast() }
        }
        return out
    }

    /// The largest weight w* ≥ `above` such that the weights ≥ w* sum to at least `target` (or
    /// `above` when even all weights ≥ it fall short). Weights in (0, 1] are bucketed by their
    /// float bits (monotonic for positive floats); only the bucket where the running mass crosses
    /// the target is sorted.
    static func topPFloor(_ w: UnsafeBufferPointer<Float>, above: Float, target: Double) -> Float {
        let shift: UInt32 = 17
        let buckets = Int(Float(1).bitPattern >> shift) + 1
        var mass = [Double](repeating: 0, count: buckets)  // (buckets) weight held by each bucket
        for v in w where v >= above { mass[Int(v.bitPattern >> shift)] += Double(v) }
        var acc: Double = 0
        var boundary = -1
        for b in stride(from: buckets - 1, through: 0, by: -1) {
            if acc + mass[b] >= target { boundary = b; break }
            acc += mass[b]
        }
        guard boundary >= 0 else { return above }
        var inBucket: [Float] = []
        for v in w where v >= above && Int(v.bitPattern >> shift) == boundary { inBucket.append(v) }
        inBucket.sort(by: >)
        for v in inBucket {
            acc += Double(v)
            if acc >= target { return v }
        }
        return inBucket.last ?? above
    }
}
