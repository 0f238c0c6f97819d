import Foundation
import Model

/// The measurements of the precision contract (README "Precision contract"): how far a compact
/// engine precision's log-probs and greedy generations are from the f32 engine's. Used by
/// `selm-bench precision` (`make bench-precision`) and by EngineTests.PrecisionContractTests.
public enum PrecisionContract {
    /// The 16 chat prompts of the greedy-agreement figure (user messages).
    public static let chatPrompts: [String] = [
        "What is the capital of France?",
        "Write a haiku about the sea.",
        "Explain photosynthesis in two sentences.",
        "Give me three tips for learning a new language.",
        "What is 17 times 23?",
        "Describe a cat to someone who has never seen one.",
        "Why is the sky blue?",
        "Write a short thank-you note to a teacher.",
        "List the planets of the solar system in order.",
        "How do I boil an egg?",
        "What does a compiler do?",
        "Tell me a fun fact about octopuses.",
        "Summarise the story of Cinderella in one paragraph.",
        "What is the difference between weather and climate?",
        "Suggest a name for a small bakery.",
        "How many days are there in a leap year, and why?",
    ]

    /// log p(ids[i] | ids[..<i]) for i in 1 ..< ids.count under `model`, computed in chunks of
    /// `chunk` tokens over the engine's paged KV cache in the precision the engine would use with
    /// this model (`KVCachePrecision.default(for:)`; f16 for the compact precisions).
    /// Thread: any (the model is read only).
    public static func tokenLogProbs(_ model: LlamaModel, ids: [Int32], chunk: Int = 128) throws -> [Float] {
        let c = model.config
        precondition(ids.count >= 2 && ids.count <= c.contextLength, "1 < \(ids.count) ≤ context \(c.contextLength)")
        let (kv, slot) = PagedKVCache.single(config: c, capacity: ids.count, precision: .default(for: model.precision))
        let acts = Activations(config: c)
        var out: [Float] = []
        out.reserveCapacity(ids.count - 1)
        var start = 0
        while start < ids.count - 1 {
            let n = min(chunk, ids.count - 1 - start)
            var batch = ForwardBatch()
            batch.append(Array(ids[start..<start + n]), startPos: start, slot: slot, logits: .all)
            let logits = try model.forward(batch, kv: kv, acts: acts)
            for i in 0..<n {
                out.append(logProbability(of: ids[start + i + 1], logits: logits + i * c.vocabSize, vocab: c.vocabSize))
            }
            start += n
        }
        return out
    }

    /// `tokens` greedy tokens after each prompt (EOS and stop tokens ignored, so every sample has
    /// exactly `tokens`). Thread: any.
    public static func greedy(_ model: LlamaModel, prompts: [[Int32]], tokens: Int) throws -> [[Int32]] {
        var p = SamplerSettings()
        p.temperature = 0
        p.maxTokens = tokens
        let gen = SingleSequenceGenerator(model: model)
        return try prompts.map { try gen.generate(prompt: $0, params: p, stopTokens: []).ids }
    }

    /// |Δ log-prob| per token between two runs over the same text.
    public struct LogProbDeviation: Sendable {
        public var mean: Double
        public var max: Double
        public var tokens: Int

        public init(reference: [Float], other: [Float]) {
            precondition(reference.count == other.count && !reference.isEmpty)
            var sum = 0.0, mx = 0.0
            for (a, b) in zip(reference, other) {
                let d = abs(Double(a) - Double(b))
                sum += d
                mx = Swift.max(mx, d.isNaN ? .infinity : d)
            }
            mean = sum / Double(reference.count)
            max = mx
            tokens = reference.count
        }
    }

    /// Greedy agreement of two runs over the same prompts.
    public struct GreedyAgreement: Sendable {
        /// Share of prompts whose greedy tokens are identical.
        public var identical: Double
        /// Mean length of the common prefix of the two generations, tokens.
        public var meanPrefix: Double
        public var prompts: Int
        public var tokens: Int

        public init(reference: [[Int32]], other: [[Int32]]) {
            precondition(reference.count == other.count && !reference.isEmpty)
            var same = 0, prefix = 0
            for (a, b) in zip(reference, other) {
                if a == b { same += 1 }
                prefix += zip(a, b).prefix { $0 == $1 }.count
            }
            identical = Double(same) / Double(reference.count)
            meanPrefix = Double(prefix) / Double(reference.count)
            prompts = reference.count
            tokens = reference.map(\.count).max() ?? 0
        }
    }
}
