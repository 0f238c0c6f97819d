import Model

/// Why a sample stopped.
public enum StopReason: String, Sendable, Codable {
    case eos, stop, length, cancelled
}

/// The logits of every position of `tokens` as the engine computes them for a prompt it prefills
/// in one chunk: through its paged KV cache in the KV precision it uses with this model. What
/// `selm logits` writes. Valid until the next use of `acts`. Thread: any (the model is read only).
public func engineLogits(_ model: LlamaModel, tokens: [Int32], acts: Activations) throws -> UnsafeMutablePointer<Float> {
    let (kv, slot) = PagedKVCache.single(config: model.config, capacity: tokens.count, precision: .default(for: model.precision))
    var batch = ForwardBatch()
    batch.append(tokens, startPos: 0, slot: slot, logits: .all)
    return try model.forward(batch, kv: kv, acts: acts)
}

/// One prompt, one sample, generated token by token. What `selm generate` runs; the scheduler
/// serves many of these at once. Its KV cache is the engine's, in the precision the engine uses
/// with this model unless told otherwise, so it computes what `selm serve` computes.
public final class SingleSequenceGenerator {
    public let model: LlamaModel
    public let kvCachePrecision: KVCachePrecision
    private let acts: Activations

    public init(model: LlamaModel, kvCachePrecision: KVCachePrecision? = nil) {
        self.model = model
        self.kvCachePrecision = kvCachePrecision ?? .default(for: model.precision)
        self.acts = Activations(config: model.config)
    }

    public struct Output: Sendable {
        public var ids: [Int32] = []
        /// log p of each generated token under the unmodified policy (log-softmax of raw logits).
        public var logprobs: [Float] = []
        public var finishReason: StopReason = .length
    }

    /// Prefills `prompt`, then samples until a stop token, `maxTokens`, the context end, or
    /// `onToken` returns false (finish reason `.stop`). The stop token itself is included in `ids`.
    public func generate(prompt: [Int32], params: SamplerSettings, stopTokens: Set<Int32>,
                         onToken: (Int32, Float) -> Bool = { _, _ in true }) throws -> Output {
        try params.validate()
        let c = model.config
        guard !prompt.isEmpty else { throw ModelError.badInput(field: "prompt", reason: "is empty") }
        guard prompt.count < c.contextLength else {
            throw ModelError.badInput(field: "prompt", reason: "\(prompt.count) tokens leave no room in the context of \(c.contextLength)")
        }
        let capacity = min(c.contextLength, prompt.count + params.maxTokens)
        let (kv, slot) = PagedKVCache.single(config: c, capacity: capacity, precision: kvCachePrecision)
        var sampler = Sampler(params: params, rng: RandomSource(mixing: [params.seed ?? UInt64.random(in: 0...UInt64.max), 0]),
                              prompt: prompt)
        var out = Output()
        var batch = ForwardBatch()
        batch.append(prompt, startPos: 0, slot: slot, logits: .last)
        var pos = prompt.count
        while true {
            let logits = try model.forward(batch, kv: kv, acts: acts)
            let tok = sampler.sample(logits, vocab: c.vocabSize)
            sampler.accept(tok)
            let lp = logProbability(of: tok, logits: logits, vocab: c.vocabSize)
            out.ids.append(tok); out.logprobs.append(lp)
            if stopTokens.contains(tok) { out.finishReason = .eos; break }
            if !onToken(tok, lp) { out.finishReason = .stop; break }
            if out.ids.count >= params.maxTokens || pos >= capacity { out.finishReason = .length; break }
            batch = ForwardBatch()
            batch.append([tok], startPos: pos, slot: slot, logits: .last)
            pos += 1
        }
        return out
    }
}
