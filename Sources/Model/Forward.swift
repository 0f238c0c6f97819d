import Kernels

/// A Llama model in memory: its blueprint and its weights — one slab of f32 weights (what the
/// learner trains and every f32 forward reads), or, for the engine's compact precisions, packed
/// bf16/q8 linear weights with f32 embedding table and norms (`inference(from:precision:)`).
public final class LlamaModel: @unchecked Sendable {
    public let config: LlamaConfig
    /// The precision of the linear layers' products.
    public let precision: EnginePrecision
    /// The f32 weights; nil for a compact model, which keeps none.
    public let f32Weights: ParameterSet?
    /// The compact model's storage (nil for f32).
    let store: CompactStore?
    /// What `forward` reads.
    let tensors: ForwardTensors
    /// Seconds `inference(from:precision:)` took to make this model (0 otherwise).
    public internal(set) var packSeconds: Double = 0

    public init(weights: ParameterSet) {
        self.config = weights.config
        self.precision = .f32
        self.f32Weights = weights
        self.store = nil
        self.tensors = ForwardTensors(f32: weights)
    }

    init(compact store: CompactStore, config: LlamaConfig) {
        self.config = config
        self.precision = store.precision
        self.f32Weights = nil
        self.store = store
        self.tensors = store.tensors(config)
    }

    /// The f32 weights of an f32 model (every model the loaders, the learner and the checkpoints
    /// handle). A compact model has none: reading this is a programming error (it traps).
    public var weights: ParameterSet {
        guard let w = f32Weights else { preconditionFailure("a \(precision) inference model keeps no f32 weights") }
        return w
    }

    /// Total number of parameters (the tied output head counted once).
    public var parameterCount: Int { f32Weights?.count ?? ParameterLayout(config: config).totalCount }

    /// Bytes of weights this model holds: the f32 slab, or the packed matrices plus the f32
    /// embedding table and norms.
    public var weightBytes: Int { store?.bytes ?? parameterCount * MemoryLayout<Float>.size }
}

/// One sequence's share of a `ForwardBatch`: `count` consecutive tokens of the batch starting at
/// `tokenStart`, at positions `startPos ..< startPos + count` of the sequence. `slot` names the
/// sequence in the KV store.
public struct BatchSequence: Sendable, Equatable {
    public var tokenStart: Int
    public var count: Int
    public var startPos: Int
    public var slot: Int
    public init(tokenStart: Int, count: Int, startPos: Int, slot: Int) {
        self.tokenStart = tokenStart; self.count = count; self.startPos = startPos; self.slot = slot
    }
}

/// The input of one forward pass: the new tokens of many sequences laid end to end, so every linear
/// layer is one matrix product over all of them (prefill chunks and single-token decodes mixed).
public struct ForwardBatch: Sendable {
    /// (T) token ids, sequence after sequence.
    public var tokens: [Int32]
    public var sequences: [BatchSequence]
    /// Indices into `tokens` whose next-token logits are wanted, in the order the rows come out.
    public var logitRows: [Int32]

    public init(tokens: [Int32] = [], sequences: [BatchSequence] = [], logitRows: [Int32] = []) {
        self.tokens = tokens; self.sequences = sequences; self.logitRows = logitRows
    }

    /// Appends `tokens` of sequence `slot` starting at position `startPos`; when `logits` is
    /// `.last` only the last token's logits are requested, `.all` every token's, `.none` none.
    public mutating func append(_ toks: [Int32], startPos: Int, slot: Int, logits: LogitRequest) {
        let start = tokens.count
        tokens.append(contentsOf: toks)
        sequences.append(BatchSequence(tokenStart: start, count: toks.count, startPos: startPos, slot: slot))
        switch logits {
        case .none: break
        case .last: if !toks.isEmpty { logitRows.append(Int32(start + toks.count - 1)) }
        case .all: logitRows.append(contentsOf: (start..<start + toks.count).map { Int32($0) })
        }
    }

    public enum LogitRequest: Sendable { case none, last, all }
}

/// Where attention finds the keys and values of earlier positions. The forward pass hands each
/// sequence's new (post-RoPE) key and value rows to `attend`, which stores them and returns
/// contiguous keys and values for positions `0 ..< startPos + count`.
public protocol KVStore: AnyObject {
    /// - newK, newV: (count, kvDim) rows for positions startPos ..< startPos + count.
    /// - Returns: (k, v) each (startPos + count, stride) with head g at column g * headDim.
    func attend(layer: Int, slot: Int, startPos: Int, count: Int,
                newK: UnsafePointer<Float>, newV: UnsafePointer<Float>)
        -> (k: UnsafePointer<Float>, v: UnsafePointer<Float>, stride: Int)

    /// Stores the batch's new key and value rows of `layer` (`k`, `v`: (tokens, kvDim)) and writes
    /// the attention output of every sequence to `out` ((tokens, qDim)) from the post-RoPE queries
    /// `q` ((tokens, qDim)). The default calls `attend` and `attention_forward` per sequence
    /// (`attendContiguous`); a store may do it all at once over its own layout.
    func attention(layer: Int, batch: ForwardBatch, q: UnsafePointer<Float>, k: UnsafePointer<Float>,
                   v: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, acts: Activations)
}

extension KVStore {
    public func attention(layer: Int, batch: ForwardBatch, q: UnsafePointer<Float>, k: UnsafePointer<Float>,
                          v: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, acts: Activations) {
        attendContiguous(layer: layer, batch: batch, sequences: batch.sequences.indices, q: q, k: k, v: v, out: out, acts: acts)
    }

    /// Attention for `sequences` of the batch through `attend` (contiguous f32 keys and values) and
    /// `attention_forward`: each sequence's rows in order, products through OpenBLAS.
    public func attendContiguous(layer: Int, batch: ForwardBatch, sequences: some Sequence<Int>,
                                 q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                 out: UnsafeMutablePointer<Float>, acts: Activations) {
        let c = acts.config
        for i in sequences {
            let s = batch.sequences[i], t0 = s.tokenStart
            let (K, V, stride) = attend(layer: layer, slot: s.slot, startPos: s.startPos, count: s.count,
                                        newK: k + t0 * c.kvDim, newV: v + t0 * c.kvDim)
            attention_forward(out + t0 * c.qDim, acts.layers[layer].probs + acts.probOffsets[i], q + t0 * c.qDim, K, V,
                              Int32(s.count), Int32(s.startPos), Int32(c.nHeads), Int32(c.nKVHeads), Int32(c.headDim),
                              Int32(c.qDim), Int32(stride), Int32(c.qDim), acts.scratch)
        }
    }
}

/// The simplest KV store: per slot, one contiguous (layer, capacity, kvDim) region for K and for V.
/// Good for a single generation or a fixed set of sequences; the engine's paged cache replaces it for
/// serving.
public final class ContiguousKVStore: KVStore, @unchecked Sendable {
    public let config: LlamaConfig
    public let slots: Int
    public let capacity: Int
    private let k: UnsafeMutablePointer<Float>  // (slots, layers, capacity, kvDim)
    private let v: UnsafeMutablePointer<Float>

    public init(config: LlamaConfig, slots: Int, capacity: Int) {
        self.config = config; self.slots = slots; self.capacity = capacity
        let n = slots * config.nLayers * capacity * config.kvDim
        k = .allocate(capacity: max(n, 1)); v = .allocate(capacity: max(n, 1))
    }
    deinit { k.deallocate(); v.deallocate() }

    public func attend(layer: Int, slot: Int, startPos: Int, count: Int,
                       newK: UnsafePointer<Float>, newV: UnsafePointer<Float>)
        -> (k: UnsafePointer<Float>, v: UnsafePointer<Float>, stride: Int) {
        precondition(startPos + count <= capacity, "KV store capacity \(capacity) exceeded")
        let kv = config.kvDim
        let base = ((slot * config.nLayers + layer) * capacity) * kv
        (k + base + startPos * kv).update(from: newK, count: count * kv)
        (v + base + startPos * kv).update(from: newV, count: count * kv)
        return (UnsafePointer(k + base), UnsafePointer(v + base), kv)
    }
}

/// Activations of one forward pass (llama2.c's RunState). For inference one set of per-layer
/// buffers is reused by every layer; with `keepForBackward` every layer keeps its own of what the
/// backward reads — except the two norm outputs and SwiGLU's output, which all layers share and the
/// backward recomputes, bit for bit, from what is kept (`recomputedInBackward`). Buffers grow on
/// demand and are reused across calls.
public final class Activations: @unchecked Sendable {
    public let config: LlamaConfig
    public let keepForBackward: Bool

    /// Per-layer views (all layers share one set unless keepForBackward).
    public struct Layer {
        public var x: UnsafeMutablePointer<Float>       // (T, dim)     layer input (residual stream)
        public var xn: UnsafeMutablePointer<Float>      // (T, dim)     input_layernorm output (shared: recomputed in the backward)
        public var rstd1: UnsafeMutablePointer<Float>   // (T)
        public var q: UnsafeMutablePointer<Float>       // (T, qDim)    after RoPE
        public var k: UnsafeMutablePointer<Float>       // (T, kvDim)   after RoPE
        public var v: UnsafeMutablePointer<Float>       // (T, kvDim)
        public var att: UnsafeMutablePointer<Float>     // (T, qDim)    attention output before o_proj
        public var lse: UnsafeMutablePointer<Float>     // (T, nH)      log-sum-exp of each query row's scores (no KV store)
        public var probs: UnsafeMutablePointer<Float>   // attention scratch of the KV-store path (all layers share it)
        public var xmid: UnsafeMutablePointer<Float>    // (T, dim)     residual after attention
        public var xn2: UnsafeMutablePointer<Float>     // (T, dim)     post_attention_layernorm output (shared: recomputed)
        public var rstd2: UnsafeMutablePointer<Float>   // (T)
        public var gate: UnsafeMutablePointer<Float>    // (T, hidden)
        public var up: UnsafeMutablePointer<Float>      // (T, hidden)
        public var h: UnsafeMutablePointer<Float>       // (T, hidden)  silu(gate) * up (shared: recomputed)
    }

    public private(set) var layers: [Layer] = []
    public private(set) var xOut: UnsafeMutablePointer<Float>! = nil   // (T, dim)  output of the last layer
    public private(set) var xf: UnsafeMutablePointer<Float>! = nil     // (R, dim)  last-layer rows whose logits are wanted
    public private(set) var rstdF: UnsafeMutablePointer<Float>! = nil  // (R)
    public private(set) var xnF: UnsafeMutablePointer<Float>! = nil    // (R, dim)  final norm output
    public private(set) var logits: UnsafeMutablePointer<Float>! = nil // (R, vocab)
    public private(set) var ropeCos: UnsafeMutablePointer<Float>! = nil // (T, headDim/2)
    public private(set) var ropeSin: UnsafeMutablePointer<Float>! = nil // (T, headDim/2)
    public private(set) var scratch: UnsafeMutablePointer<Float>! = nil // attention scratch
    /// Offset of each sequence's probabilities inside `Layer.probs` (0: the sequences of a KV-store
    /// forward run one after the other and share it).
    public private(set) var probOffsets: [Int] = []
    /// First token and token count of each sequence of the last batch (attention_forward_batch).
    public private(set) var seqStart: [Int32] = []
    public private(set) var seqCount: [Int32] = []
    /// Token count, logit row count of the last forward.
    public private(set) var tokenCount = 0
    public private(set) var rowCount = 0

    private var slab: UnsafeMutablePointer<Float>? = nil
    private var slabCount = 0
    private var shape = (T: -1, R: -1, probs: -1, scratch: -1)

    public init(config: LlamaConfig, keepForBackward: Bool = false) {
        self.config = config
        self.keepForBackward = keepForBackward
    }
    deinit { slab?.deallocate() }

    /// Total floats held.
    public var allocatedFloats: Int { slabCount }

    /// Lays out buffers for a batch; reuses the allocation when it is big enough.
    func prepare(_ batch: ForwardBatch) {
        let c = config
        let T = batch.tokens.count, R = batch.logitRows.count
        var probsMax = 0, scratchN = 0
        for s in batch.sequences {
            probsMax = max(probsMax, c.nHeads * s.count * (s.startPos + s.count))
            scratchN = max(scratchN, attention_scratch_floats(Int32(s.count), Int32(c.nHeads), Int32(c.headDim)))
        }
        probOffsets = batch.sequences.map { _ in 0 }
        seqStart = batch.sequences.map { Int32($0.tokenStart) }
        seqCount = batch.sequences.map { Int32($0.count) }
        tokenCount = T; rowCount = R
        if shape == (T, R, probsMax, scratchN) && slab != nil { return }
        shape = (T, R, probsMax, scratchN)

        // Per layer (each its own with keepForBackward): the activations the backward reads, and the
        // attention's log-sum-exp per query row (T · nH floats; its probabilities are recomputed).
        // The norm outputs xn, xn2 and SwiGLU's h are one set for all layers (recomputed in the
        // backward from x, xmid, the rstds, gate and up): 2·dim + hidden floats per token and layer
        // fewer, −495 MB on bench-learner's 1 536-token step.
        let perLayer = T * (2 * c.dim + 2 * c.qDim + 2 * c.kvDim + 2 * c.hiddenDim + 2 + c.nHeads)
        let shared = T * (2 * c.dim + c.hiddenDim)
        let nLayerSets = keepForBackward ? c.nLayers : 1
        let half = c.headDim / 2
        let total = nLayerSets * perLayer + shared + probsMax + T * c.dim + R * (2 * c.dim + 1 + c.vocabSize) + 2 * T * half + scratchN + 64
        if total > slabCount {
            slab?.deallocate()
            slab = .allocate(capacity: total)
            slabCount = total
        }
        var p = slab!
        func take(_ n: Int) -> UnsafeMutablePointer<Float> { defer { p += n }; return p }
        let probs = take(probsMax)
        let xn = take(T * c.dim), xn2 = take(T * c.dim), h = take(T * c.hiddenDim)
        var sets: [Layer] = []
        for _ in 0..<nLayerSets {
            sets.append(Layer(
                x: take(T * c.dim), xn: xn, rstd1: take(T), q: take(T * c.qDim),
                k: take(T * c.kvDim), v: take(T * c.kvDim), att: take(T * c.qDim), lse: take(T * c.nHeads), probs: probs,
                xmid: take(T * c.dim), xn2: xn2, rstd2: take(T), gate: take(T * c.hiddenDim),
                up: take(T * c.hiddenDim), h: h))
        }
        if keepForBackward {
            layers = sets
            xOut = take(T * c.dim)
        } else {
            // Inference: every layer reads and writes one residual buffer in place.
            var s = sets[0]
            s.xmid = s.x
            layers = Array(repeating: s, count: c.nLayers)
            xOut = s.x
            _ = take(T * c.dim)
        }
        xf = take(R * c.dim); rstdF = take(R); xnF = take(R * c.dim); logits = take(R * c.vocabSize)
        ropeCos = take(T * half); ropeSin = take(T * half)
        scratch = take(scratchN)
    }
}

extension LlamaModel {
    /// Runs the model over a batch. Returns the logits of `batch.logitRows`, (R, vocab), valid until
    /// the next call with the same `acts`.
    ///
    /// With a `kv` store each sequence attends to its earlier positions held there (and its new keys
    /// and values are stored); without one every sequence must start at position 0 and attends only
    /// within the batch (full sequences, e.g. for training).
    ///
    /// `products`: the number format of the linear layers' products over f32 weights (the
    /// learner's `--precision`; a compact model's packed weights ignore it).
    @discardableResult
    public func forward(_ batch: ForwardBatch, kv: KVStore?, acts: Activations,
                        products: MatmulPrecision = .f32) throws -> UnsafeMutablePointer<Float> {
        let c = config
        let T = batch.tokens.count, R = batch.logitRows.count
        try validate(batch, hasKV: kv != nil)
        kernels_compute_enter()
        defer { kernels_compute_exit() }
        acts.prepare(batch)
        let w = tensors
        let dim = Int32(c.dim), hd = Int32(c.headDim), nH = Int32(c.nHeads), nKV = Int32(c.nKVHeads), T32 = Int32(T)
        let qDim = Int32(c.qDim), kvDim = Int32(c.kvDim)

        var positions = [Int32](repeating: 0, count: T)
        for s in batch.sequences { for i in 0..<s.count { positions[s.tokenStart + i] = Int32(s.startPos + i) } }
        rope_tables(acts.ropeCos, acts.ropeSin, positions, T32, hd, c.ropeTheta)
        embedding_forward(acts.layers[0].x, batch.tokens, w.tokenEmbedding, T32, dim)

        for l in 0..<c.nLayers {
            let a = acts.layers[l], p = w.linears[l]
            let xNext = l + 1 < c.nLayers ? acts.layers[l + 1].x : acts.xOut!
            rmsnorm_forward(a.xn, a.rstd1, a.x, w.attnNorms[l], T32, dim, c.rmsEps)
            p.wq.apply(a.q, a.xn, rows: T, accumulate: false, products: products)
            p.wk.apply(a.k, a.xn, rows: T, accumulate: false, products: products)
            p.wv.apply(a.v, a.xn, rows: T, accumulate: false, products: products)
            rope_forward(a.q, acts.ropeCos, acts.ropeSin, T32, nH, hd, qDim)
            rope_forward(a.k, acts.ropeCos, acts.ropeSin, T32, nKV, hd, kvDim)
            if let kv {
                kv.attention(layer: l, batch: batch, q: a.q, k: a.k, v: a.v, out: a.att, acts: acts)
            } else {
                // Every sequence from position 0 (validate): one fused task per (sequence, KV group,
                // chunk of query tokens), on both cores; the backward recomputes the probabilities from lse.
                attention_forward_batch(a.att, a.lse, a.q, a.k, a.v, acts.seqStart, acts.seqCount, Int32(acts.seqStart.count),
                                        nH, nKV, hd, qDim, kvDim, qDim)
            }
            if a.xmid != a.x { a.xmid.update(from: a.x, count: T * c.dim) }
            p.wo.apply(a.xmid, a.att, rows: T, accumulate: true, products: products)
            rmsnorm_forward(a.xn2, a.rstd2, a.xmid, w.mlpNorms[l], T32, dim, c.rmsEps)
            p.wGate.apply(a.gate, a.xn2, rows: T, accumulate: false, products: products)
            p.wUp.apply(a.up, a.xn2, rows: T, accumulate: false, products: products)
            swiglu_forward(a.h, a.gate, a.up, T * c.hiddenDim)
            if xNext != a.xmid { xNext.update(from: a.xmid, count: T * c.dim) }
            p.wDown.apply(xNext, a.h, rows: T, accumulate: true, products: products)
        }

        gather_rows(acts.xf, acts.xOut, batch.logitRows, Int32(R), dim)
        rmsnorm_forward(acts.xnF, acts.rstdF, acts.xf, w.finalNorm, Int32(R), dim, c.rmsEps)
        w.lmHead.apply(acts.logits, acts.xnF, rows: R, accumulate: false, products: products)
        return acts.logits
    }

    func validate(_ batch: ForwardBatch, hasKV: Bool) throws {
        let c = config
        let T = batch.tokens.count
        for (i, t) in batch.tokens.enumerated() where t < 0 || Int(t) >= c.vocabSize {
            throw ModelError.badInput(field: "tokens[\(i)]", reason: "token id \(t) is outside the vocabulary [0, \(c.vocabSize))")
        }
        var covered = 0
        for (i, s) in batch.sequences.enumerated() {
            guard s.tokenStart == covered, s.count > 0 else {
                throw ModelError.badInput(field: "sequences[\(i)]", reason: "sequences must cover the tokens in order without gaps or empty slices")
            }
            covered += s.count
            guard s.startPos >= 0, s.startPos + s.count <= c.contextLength else {
                throw ModelError.badInput(field: "sequences[\(i)]", reason: "positions \(s.startPos)..<\(s.startPos + s.count) exceed the context length \(c.contextLength)")
            }
            if !hasKV && s.startPos != 0 {
                throw ModelError.badInput(field: "sequences[\(i)]", reason: "without a KV store every sequence must start at position 0")
            }
        }
        guard covered == T else { throw ModelError.badInput(field: "sequences", reason: "cover \(covered) of \(T) tokens") }
        for (i, r) in batch.logitRows.enumerated() where r < 0 || Int(r) >= T {
            throw ModelError.badInput(field: "logitRows[\(i)]", reason: "row \(r) is outside the batch of \(T) tokens")
        }
    }
}

/// log p(token) under the softmax of `logits` (vocab), computed stably.
public func logProbability(of token: Int32, logits: UnsafePointer<Float>, vocab: Int) -> Float {
    kernels_log_prob(logits, Int32(vocab), token)
}
