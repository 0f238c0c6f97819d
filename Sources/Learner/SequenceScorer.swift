import Kernels
import Model

/// Computes sequence log-probabilities log π(response | prompt) — the sum of log p over the
/// response tokens only — for many (prompt, response) sequences at once, and backpropagates a
/// gradient with respect to those sums into the model's parameter gradients.
///
/// Sequences are packed end to end into one forward batch (no padding), and logits are computed
/// only at the positions that predict response tokens. Not thread-safe: one owner.
public final class SequenceScorer {
    public let model: LlamaModel
    public let training: Bool
    /// The number format of the linear layers' products in `score` and `backward`.
    public var products: MatmulPrecision = .f32
    private let acts: Activations
    private let scratch: BackwardScratch
    private var batch = ForwardBatch()
    private var targets: [Int32] = []
    private var rowSequence: [Int] = []
    private var lse: [Float] = []
    private var rowLogp: [Float] = []
    private var rowStart: [Int] = []

    /// With `training`, activations are kept so `backward` can run after `score`.
    public init(model: LlamaModel, training: Bool) {
        self.model = model
        self.training = training
        acts = Activations(config: model.config, keepForBackward: training)
        scratch = BackwardScratch(config: model.config)
    }

    /// Tokens in the last scored batch.
    public var tokenCount: Int { batch.tokens.count }

    /// Log π(response | prompt) for each sequence (summed in double precision).
    public func score(_ seqs: [(prompt: [Int32], response: [Int32])]) throws -> [Double] {
        batch = ForwardBatch()
        targets = []; rowSequence = []; rowStart = []
        for (i, s) in seqs.enumerated() {
            precondition(!s.prompt.isEmpty && !s.response.isEmpty, "empty prompt or response")
            // Input: prompt + response minus its last token; logits at positions P-1 ... P+R-2
            // predict the response tokens.
            let input = s.prompt + s.response.dropLast()
            let start = batch.tokens.count
            batch.append(input, startPos: 0, slot: i, logits: .none)
            rowStart.append(targets.count)
            for j in 0..<s.response.count {
                batch.logitRows.append(Int32(start + s.prompt.count - 1 + j))
                targets.append(s.response[j])
                rowSequence.append(i)
            }
        }
        let R = targets.count, V = model.config.vocabSize
        let logits = try model.forward(batch, kv: nil, acts: acts, products: products)
        lse = [Float](repeating: 0, count: R)
        rowLogp = [Float](repeating: 0, count: R)
        logprob_gather_forward(&rowLogp, &lse, logits, targets, Int32(R), Int32(V))
        var sums = [Double](repeating: 0, count: seqs.count)
        for r in 0..<R { sums[rowSequence[r]] += Double(rowLogp[r]) }
        return sums
    }

    /// Per-token log-probabilities of sequence `i` of the last `score` call.
    public func tokenLogprobs(_ i: Int) -> [Float] {
        let end = i + 1 < rowStart.count ? rowStart[i + 1] : rowLogp.count
        return Array(rowLogp[rowStart[i]..<end])
    }

    /// Adds to `grads` the gradient of L given dL/d(sequence log-prob) for each sequence of the last
    /// `score` call. Overwrites the logits of that call.
    public func backward(dSequence: [Double], into grads: ParameterSet) {
        precondition(training, "scorer was created without training")
        let R = targets.count, V = model.config.vocabSize
        let dRow = rowSequence.map { Float(dSequence[$0]) }
        let logits = acts.logits!
        logprob_gather_backward(logits, dRow, logits, lse, targets, Int32(R), Int32(V))
        model.backward(batch, acts: acts, dlogits: logits, grads: grads, scratch: scratch, products: products)
    }
}
