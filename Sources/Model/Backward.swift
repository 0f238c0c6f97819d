import Kernels

/// Scratch for the backward pass (llm.c's grads_acts), grown on demand and reused.
public final class BackwardScratch: @unchecked Sendable {
    let config: LlamaConfig
    private var slab: UnsafeMutablePointer<Float>?
    private var capacity = 0
    private(set) var dx: UnsafeMutablePointer<Float>! = nil     // (T, dim)   gradient of the residual stream
    private(set) var dxn: UnsafeMutablePointer<Float>! = nil    // (T, dim)   gradient of a norm output
    private(set) var dxf: UnsafeMutablePointer<Float>! = nil    // (R, dim)
    private(set) var dxnF: UnsafeMutablePointer<Float>! = nil   // (R, dim)
    private(set) var datt: UnsafeMutablePointer<Float>! = nil   // (T, qDim)
    private(set) var dq: UnsafeMutablePointer<Float>! = nil     // (T, qDim)
    private(set) var dk: UnsafeMutablePointer<Float>! = nil     // (T, kvDim)
    private(set) var dv: UnsafeMutablePointer<Float>! = nil     // (T, kvDim)
    private(set) var dh: UnsafeMutablePointer<Float>! = nil     // (T, hidden)
    private(set) var dgate: UnsafeMutablePointer<Float>! = nil  // (T, hidden)
    private(set) var dup: UnsafeMutablePointer<Float>! = nil    // (T, hidden)

    public init(config: LlamaConfig) { self.config = config }
    deinit { slab?.deallocate() }

    func prepare(T: Int, R: Int) {
        let c = config
        let need = T * (2 * c.dim + 2 * c.qDim + 2 * c.kvDim + 3 * c.hiddenDim) + 2 * R * c.dim
        if need > capacity {
            slab?.deallocate()
            slab = .allocate(capacity: need)
            capacity = need
        }
        var p = slab!
        func take(_ n: Int) -> UnsafeMutablePointer<Float> { defer { p += n }; return p }
        dx = take(T * c.dim); dxn = take(T * c.dim); dxf = take(R * c.dim); dxnF = take(R * c.dim)
        datt = take(T * c.qDim); dq = take(T * c.qDim); dk = take(T * c.kvDim); dv = take(T * c.kvDim)
        dh = take(T * c.hiddenDim); dgate = take(T * c.hiddenDim); dup = take(T * c.hiddenDim)
    }
}

extension LlamaModel {
    /// Backpropagates `dlogits` (R, vocab) — the gradient of the loss with respect to the logits the
    /// last `forward(batch, kv: nil, acts:)` returned — through the whole model, ADDING parameter
    /// gradients into `grads` (same layout as the weights). `acts` must have been created with
    /// `keepForBackward: true` and still hold that forward's activations. The reverse of `forward`,
    /// step for step.
    ///
    /// `products`: the number format of the linear layers' products (input and weight gradients),
    /// normally the one the forward ran in.
    public func backward(_ batch: ForwardBatch, acts: Activations, dlogits: UnsafePointer<Float>,
                         grads: ParameterSet, scratch: BackwardScratch, products: MatmulPrecision = .f32) {
        precondition(acts.keepForBackward, "backward needs activations kept by the forward pass")
        kernels_compute_enter()
        defer { kernels_compute_exit() }
        let c = config
        let w = weights
        let T = batch.tokens.count, R = batch.logitRows.count
        let dim = Int32(c.dim), qDim = Int32(c.qDim), kvDim = Int32(c.kvDim)
        let hd = Int32(c.headDim), nH = Int32(c.nHeads), nKV = Int32(c.nKVHeads), T32 = Int32(T)
        scratch.prepare(T: T, R: R)
        let s = scratch

        // Output head and final norm, for the rows that have logits.
        s.dxnF.update(repeating: 0, count: R * c.dim)
        products.backward(s.dxnF, grads.lmHead, dlogits, acts.xnF, w.lmHead, T: R, C: c.dim, OC: c.vocabSize)
        s.dxf.update(repeating: 0, count: R * c.dim)
        rmsnorm_backward(s.dxf, grads.finalNorm, s.dxnF, acts.xf, w.finalNorm, acts.rstdF, Int32(R), dim)
        s.dx.update(repeating: 0, count: T * c.dim)
        for (i, r) in batch.logitRows.enumerated() {
            let dst = s.dx + Int(r) * c.dim, src = s.dxf + i * c.dim
            for j in 0..<c.dim { dst[j] += src[j] }
        }

        for l in stride(from: c.nLayers - 1, through: 0, by: -1) {
            let a = acts.layers[l], p = w.layers[l], g = grads.layers[l]
            // MLP: x_{l+1} = xmid + down(silu(gate(xn2)) * up(xn2)),  xn2 = rmsnorm(xmid)
            // (h and xn2 are recomputed: every layer's forward wrote the same buffers; the same bits)
            swiglu_forward(a.h, a.gate, a.up, T * c.hiddenDim)
            s.dh.update(repeating: 0, count: T * c.hiddenDim)
            products.backward(s.dh, g.wDown, s.dx, a.h, p.wDown, T: T, C: c.hiddenDim, OC: c.dim)
            swiglu_backward(s.dgate, s.dup, s.dh, a.gate, a.up, T * c.hiddenDim)   // writes dgate, dup
            rmsnorm_apply(a.xn2, a.xmid, p.mlpNorm, a.rstd2, T32, dim)
            s.dxn.update(repeating: 0, count: T * c.dim)
            products.backward(s.dxn, g.wGate, s.dgate, a.xn2, p.wGate, T: T, C: c.dim, OC: c.hiddenDim)
            products.backward(s.dxn, g.wUp, s.dup, a.xn2, p.wUp, T: T, C: c.dim, OC: c.hiddenDim)
            rmsnorm_backward(s.dx, g.mlpNorm, s.dxn, a.xmid, p.mlpNorm, a.rstd2, T32, dim)  // dx is now d(xmid)

            // Attention: xmid = x + o(attention(rope(q(xn)), rope(k(xn)), v(xn))),  xn = rmsnorm(x)
            s.datt.update(repeating: 0, count: T * c.qDim)
            products.backward(s.datt, g.wo, s.dx, a.att, p.wo, T: T, C: c.qDim, OC: c.dim)
            s.dq.update(repeating: 0, count: T * c.qDim)
            s.dk.update(repeating: 0, count: T * c.kvDim)
            s.dv.update(repeating: 0, count: T * c.kvDim)
            attention_backward_batch(s.dq, s.dk, s.dv, s.datt, a.att, a.lse, a.q, a.k, a.v, acts.seqStart, acts.seqCount,
                                     Int32(acts.seqStart.count), nH, nKV, hd, qDim, kvDim, qDim)
            rope_backward(s.dq, acts.ropeCos, acts.ropeSin, T32, nH, hd, qDim)
            rope_backward(s.dk, acts.ropeCos, acts.ropeSin, T32, nKV, hd, kvDim)
            rmsnorm_apply(a.xn, a.x, p.attnNorm, a.rstd1, T32, dim)
            s.dxn.update(repeating: 0, count: T * c.dim)
            products.backward(s.dxn, g.wq, s.dq, a.xn, p.wq, T: T, C: c.dim, OC: c.qDim)
            products.backward(s.dxn, g.wk, s.dk, a.xn, p.wk, T: T, C: c.dim, OC: c.kvDim)
            products.backward(s.dxn, g.wv, s.dv, a.xn, p.wv, T: T, C: c.dim, OC: c.kvDim)
            rmsnorm_backward(s.dx, g.attnNorm, s.dxn, a.x, p.attnNorm, a.rstd1, T32, dim)  // dx is now d(x_l)
        }
        embedding_backward(grads.tokenEmbedding, s.dx, batch.tokens, T32, dim)
    }
}
