/// The blueprint of a Llama-architecture model: sizes only, no weights.
public struct LlamaConfig: Equatable, Sendable, Codable {
    /// Residual stream width (`hidden_size`).
    public var dim: Int
    /// MLP inner width (`intermediate_size`).
    public var hiddenDim: Int
    public var nLayers: Int
    public var nHeads: Int
    public var nKVHeads: Int
    public var vocabSize: Int
    /// Maximum sequence length (`max_position_embeddings` / `llama.context_length`).
    public var contextLength: Int
    public var ropeTheta: Float
    public var rmsEps: Float
    /// Output head shares the token embedding matrix (`tie_word_embeddings`).
    public var tiedEmbeddings: Bool
    /// Per-head width; `dim / nHeads` unless the checkpoint says otherwise.
    public var headDim: Int

    public init(dim: Int, hiddenDim: Int, nLayers: Int, nHeads: Int, nKVHeads: Int, vocabSize: Int,
                contextLength: Int, ropeTheta: Float, rmsEps: Float, tiedEmbeddings: Bool, headDim: Int? = nil) {
        self.dim = dim; self.hiddenDim = hiddenDim; self.nLayers = nLayers; self.nHeads = nHeads
        self.nKVHeads = nKVHeads; self.vocabSize = vocabSize; self.contextLength = contextLength
        self.ropeTheta = ropeTheta; self.rmsEps = rmsEps; self.tiedEmbeddings = tiedEmbeddings
        self.headDim = headDim ?? (nHeads > 0 ? dim / nHeads : 0)
    }

    /// Width of the query projection output (`nHeads * headDim`).
    public var qDim: Int { nHeads * headDim }
    /// Width of each of the key and value projections (`nKVHeads * headDim`).
    public var kvDim: Int { nKVHeads * headDim }

    /// Checks the sizes are usable; `file` names where they came from.
    public func validate(file: String) throws {
        func bad(_ f: String, _ r: String) -> ModelError { .badField(file: file, field: f, reason: r) }
        for (name, v) in [("hidden_size", dim), ("intermediate_size", hiddenDim), ("num_hidden_layers", nLayers),
                          ("num_attention_heads", nHeads), ("num_key_value_heads", nKVHeads),
                          ("vocab_size", vocabSize), ("max_position_embeddings", contextLength), ("head_dim", headDim)] {
            if v <= 0 || v > 1 << 24 { throw bad(name, "must be a positive size, got \(v)") }
        }
        if nHeads % nKVHeads != 0 { throw bad("num_key_value_heads", "\(nKVHeads) does not divide num_attention_heads \(nHeads)") }
        if headDim % 2 != 0 { throw bad("head_dim", "must be even for rotary embeddings, got \(headDim)") }
        if headDim > 1024 { throw bad("head_dim", "at most 1024 supported, got \(headDim)") }
        if !(ropeTheta > 0) { throw bad("rope_theta", "must be positive, got \(ropeTheta)") }
        if !(rmsEps > 0) { throw bad("rms_norm_eps", "must be positive, got \(rmsEps)") }
    }
}

/// Where each parameter tensor lives inside one flat Float allocation. Weights, gradients and AdamW
/// moments all share this layout (llm.c style), so an optimiser step is one loop over the slab.
/// Tensor names are Hugging Face's (`model.layers.3.self_attn.q_proj.weight`), shapes are PyTorch's
/// (out_features, in_features).
public struct ParameterLayout: Sendable {
    public struct Entry: Sendable {
        public let name: String
        public let shape: [Int]
        public let offset: Int
        public var count: Int { shape.reduce(1, *) }
    }

    public let entries: [Entry]
    public let totalCount: Int
    private let index: [String: Int]

    public init(config c: LlamaConfig) {
        var list: [Entry] = []
        var off = 0
        func add(_ name: String, _ shape: [Int]) {
            list.append(Entry(name: name, shape: shape, offset: off))
            off += shape.reduce(1, *)
        }
        add("model.embed_tokens.weight", [c.vocabSize, c.dim])
        for l in 0..<c.nLayers {
            let p = "model.layers.\(l)."
            add(p + "input_layernorm.weight", [c.dim])
            add(p + "self_attn.q_proj.weight", [c.qDim, c.dim])
            add(p + "self_attn.k_proj.weight", [c.kvDim, c.dim])
            add(p + "self_attn.v_proj.weight", [c.kvDim, c.dim])
            add(p + "self_attn.o_proj.weight", [c.dim, c.qDim])
            add(p + "post_attention_layernorm.weight", [c.dim])
            add(p + "mlp.gate_proj.weight", [c.hiddenDim, c.dim])
            add(p + "mlp.up_proj.weight", [c.hiddenDim, c.dim])
            add(p + "mlp.down_proj.weight", [c.dim, c.hiddenDim])
        }
        add("model.norm.weight", [c.dim])
        if !c.tiedEmbeddings { add("lm_head.weight", [c.vocabSize, c.dim]) }
        entries = list
        totalCount = off
        var idx: [String: Int] = [:]
        for (i, e) in list.enumerated() { idx[e.name] = i }
        index = idx
    }

    public func entry(_ name: String) -> Entry? { index[name].map { entries[$0] } }
}

/// Pointers to one layer's tensors inside a `ParameterSet` (weights, gradients or moments alike).
public struct LayerParams {
    public let attnNorm: UnsafeMutablePointer<Float>   // (dim)
    public let wq: UnsafeMutablePointer<Float>         // (qDim, dim)
    public let wk: UnsafeMutablePointer<Float>         // (kvDim, dim)
    public let wv: UnsafeMutablePointer<Float>         // (kvDim, dim)
    public let wo: UnsafeMutablePointer<Float>         // (dim, qDim)
    public let mlpNorm: UnsafeMutablePointer<Float>    // (dim)
    public let wGate: UnsafeMutablePointer<Float>      // (hiddenDim, dim)
    public let wUp: UnsafeMutablePointer<Float>        // (hiddenDim, dim)
    public let wDown: UnsafeMutablePointer<Float>      // (dim, hiddenDim)
}

/// One flat allocation holding every parameter of a model, with named views. Used for the weights,
/// for their gradients and for optimiser state. Not thread-safe: one owner at a time.
public final class ParameterSet: @unchecked Sendable {
    public let config: LlamaConfig
    public let layout: ParameterLayout
    /// (layout.totalCount) floats.
    public let data: UnsafeMutablePointer<Float>
    public let layers: [LayerParams]
    public let tokenEmbedding: UnsafeMutablePointer<Float>  // (vocab, dim)
    public let finalNorm: UnsafeMutablePointer<Float>       // (dim)
    /// The output head (vocab, dim): the token embedding itself when tied.
    public let lmHead: UnsafeMutablePointer<Float>

    /// A zero-filled set.
    public init(config: LlamaConfig) {
        self.config = config
        let layout = ParameterLayout(config: config)
        self.layout = layout
        let data = UnsafeMutablePointer<Float>.allocate(capacity: max(layout.totalCount, 1))
        data.initialize(repeating: 0, count: max(layout.totalCount, 1))
        self.data = data
        func p(_ n: String) -> UnsafeMutablePointer<Float> { data + layout.entry(n)!.offset }
        tokenEmbedding = p("model.embed_tokens.weight")
        finalNorm = p("model.norm.weight")
        lmHead = config.tiedEmbeddings ? tokenEmbedding : p("lm_head.weight")
        layers = (0..<config.nLayers).map { l in
            let s = "model.layers.\(l)."
            return LayerParams(
                attnNorm: p(s + "input_layernorm.weight"), wq: p(s + "self_attn.q_proj.weight"),
                wk: p(s + "self_attn.k_proj.weight"), wv: p(s + "self_attn.v_proj.weight"),
                wo: p(s + "self_attn.o_proj.weight"), mlpNorm: p(s + "post_attention_layernorm.weight"),
                wGate: p(s + "mlp.gate_proj.weight"), wUp: p(s + "mlp.up_proj.weight"),
                wDown: p(s + "mlp.down_proj.weight"))
        }
    }

    deinit { data.deallocate() }

    public var count: Int { layout.totalCount }

    /// The storage of a tensor by its Hugging Face name.
    public func tensor(_ name: String) -> UnsafeMutableBufferPointer<Float>? {
        guard let e = layout.entry(name) else { return nil }
        return UnsafeMutableBufferPointer(start: data + e.offset, count: e.count)
    }

    /// A deep copy (same config, same values).
    public func copy() -> ParameterSet {
        let c = ParameterSet(config: config)
        c.data.update(from: data, count: count)
        return c
    }

    /// Sets every value to zero.
    public func zero() { data.update(repeating: 0, count: count) }
}
