import Foundation
import Kernels

/// The number format the forward pass's linear layers (q, k, v, o, gate, up, down, the output head)
/// compute in. Embeddings and norms are always f32.
///
/// - `f32`: the weights themselves, products through OpenBLAS (`matmul_forward`): bit-for-bit the
///   learner's forward.
/// - `bf16`: bfloat16 weights (round to nearest even), activations rounded to bf16, f32
///   accumulation (`ck_linear`, AVX-512 BF16 where the CPU has it). 2 bytes per weight.
/// - `q8`: 8-bit blocks of 32 weights with one float16 scale (GGUF Q8_0-like), activations
///   quantised the same way per block, exact integer block sums (AVX-512 VNNI where the CPU has
///   it). 1.0625 bytes per weight.
/// - `q4`: 4-bit blocks of 32 weights with a float16 scale and a float16 minimum (GGUF Q4_1-like),
///   activations quantised as for q8, exact integer block sums (AVX-512 VNNI `vpdpbusd` on the
///   nibbles where the CPU has it). 0.625 bytes per weight; the output head stays q8 (`headFormat`).
///   The choice for memory-bound batch-1 decoding, with a larger deviation from f32 than q8 on
///   weights that were not Q4_1 already.
///
/// Sources/Kernels/include/compact.h states the formats and the error bound of each product.
public enum EnginePrecision: String, Sendable, CaseIterable, CustomStringConvertible {
    case f32, bf16, q8, q4

    /// The serving default: the fastest precision whose log-prob deviation from f32 is small
    /// (README "Precision contract"). bf16: on SmolLM2 it rolls out the compute-bound 32 × (64 + 128)
    /// job as fast as q8 with a sixth of q8's deviation (mean |Δ log-prob| 0.012 against 0.067 per
    /// token; greedy 8/16 against 2/16 identical over 64 tokens); q8 and q4 win memory-bound batch-1
    /// decoding (bf16 108, q8 156, q4 222 tokens/s on the benchmark machine).
    public static let servingDefault: EnginePrecision = .bf16

    public var description: String { rawValue }

    /// The compact format (`CK_BF16`, `CK_Q8`), nil for f32.
    var compactFormat: Int32? {
        switch self {
        case .f32: return nil
        case .bf16: return Int32(CK_BF16)
        case .q8: return Int32(CK_Q8)
        case .q4: return Int32(CK_Q4)
        }
    }

    /// The output head's format when it differs from `compactFormat`: q4 keeps the head (the tied
    /// embedding table on SmolLM2: 49152×576, a fifth of the weights) in q8, as llama.cpp's Q4_1
    /// files keep it in Q8_0 — in 4 bits it alone quadruples q4's log-prob deviation (SmolLM2: mean
    /// |Δ log-prob| 0.28 against 0.07 per token).
    var headFormat: Int32? { self == .q4 ? Int32(CK_Q8) : nil }

    /// The relative error bound of one product term in this format, against the largest magnitude
    /// it rounds with: both operands are rounded — to bf16 (2 × 2^-9 = 2^-8 of the term), or to
    /// 8-bit blocks (2 × half a step of 1/127 of the block's largest magnitude = 1/127), or to 4-bit
    /// blocks (half a step of (max − min)/15 ≤ 2/15 of the largest magnitude, 1/15, plus the 8-bit
    /// activation's 1/254). 0 for f32.
    /// Tests bound the log-prob deviation from f32 by a multiple of it.
    public var productRelativeError: Double {
        switch self {
        case .f32: return 0
        case .bf16: return 1.0 / 256
        case .q8: return 1.0 / 127
        case .q4: return 1.0 / 15 + 1.0 / 254
        }
    }
}

/// One linear layer's weight, N outputs × K inputs (PyTorch's nn.Linear layout): rows of f32 inside
/// a `ParameterSet` (products through OpenBLAS, `matmul_forward`) or a packed compact copy
/// (`compact_linear_forward`, the project's bf16 / 8-bit kernels). The forward pass calls `apply`
/// for every linear layer and never looks at which it is.
public struct LinearWeight: @unchecked Sendable {
    public enum Storage {
        case f32(UnsafePointer<Float>)
        case compact(UnsafePointer<ck_weights>)
    }
    public let storage: Storage
    public let N: Int
    public let K: Int

    /// y (M×N) = x (M×K) · Wᵀ, or += with `accumulate`; f32 weights multiply in `products`.
    /// Thread: any (the weight is read only).
    @inline(__always)
    func apply(_ y: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, rows M: Int, accumulate: Bool,
               products: MatmulPrecision = .f32) {
        switch storage {
        case .f32(let w):
            products.forward(y, x, w, T: M, C: K, OC: N, accumulate: accumulate)
        case .compact(let w):
            compact_linear_forward(y, x, w, Int32(M), accumulate ? 1 : 0)
        }
    }
}

/// The linear weights of one decoder layer.
public struct LayerLinears: Sendable {
    public let wq, wk, wv, wo, wGate, wUp, wDown: LinearWeight
}

/// What the forward pass reads: f32 embedding table and norms, and a `LinearWeight` per linear
/// layer. For an f32 model every pointer is into its `ParameterSet`; for a compact model into a
/// `CompactStore` the model owns.
struct ForwardTensors: @unchecked Sendable {
    var tokenEmbedding: UnsafePointer<Float>
    var finalNorm: UnsafePointer<Float>
    var attnNorms: [UnsafePointer<Float>]
    var mlpNorms: [UnsafePointer<Float>]
    var linears: [LayerLinears]
    var lmHead: LinearWeight
}

extension ForwardTensors {
    /// Today's f32 forward: pointers into `w`.
    init(f32 w: ParameterSet) {
        let c = w.config
        func lin(_ p: UnsafeMutablePointer<Float>, _ n: Int, _ k: Int) -> LinearWeight {
            LinearWeight(storage: .f32(UnsafePointer(p)), N: n, K: k)
        }
        tokenEmbedding = UnsafePointer(w.tokenEmbedding)
        finalNorm = UnsafePointer(w.finalNorm)
        attnNorms = w.layers.map { UnsafePointer($0.attnNorm) }
        mlpNorms = w.layers.map { UnsafePointer($0.mlpNorm) }
        linears = w.layers.map { p in
            LayerLinears(wq: lin(p.wq, c.qDim, c.dim), wk: lin(p.wk, c.kvDim, c.dim), wv: lin(p.wv, c.kvDim, c.dim),
                         wo: lin(p.wo, c.dim, c.qDim), wGate: lin(p.wGate, c.hiddenDim, c.dim),
                         wUp: lin(p.wUp, c.hiddenDim, c.dim), wDown: lin(p.wDown, c.dim, c.hiddenDim))
        }
        lmHead = lin(w.lmHead, c.vocabSize, c.dim)
    }
}

/// The memory of a compact model: the packed linear weights (7 per layer, then the output head —
/// a packed copy of the embedding table when it is tied) and one f32 slab holding the embedding
/// table and the norms.
final class CompactMemory: @unchecked Sendable {
    let config: LlamaConfig
    let precision: EnginePrecision
    /// 7 × layers + 1 packed matrices.
    let mats: UnsafeMutablePointer<ck_weights>
    let matCount: Int
    /// f32: embedding (vocab × dim), final norm (dim), then per layer attention and MLP norms (dim each).
    let slab: UnsafeMutablePointer<Float>
    let slabCount: Int

    init(config c: LlamaConfig, precision: EnginePrecision, format: Int32) throws {
        self.config = c
        self.precision = precision
        let shapes = CompactStore.shapes(c)
        matCount = shapes.count
        mats = .allocate(capacity: matCount)
        var made = 0
        for (i, s) in shapes.enumerated() {
            let f = i == shapes.count - 1 ? precision.headFormat ?? format : format
            if ck_weights_alloc(mats + i, f, Int32(s.n), Int32(s.k)) != 0 {
                for j in 0..<made { ck_weights_free(mats + j) }
                mats.deallocate()
                throw ModelError.badInput(field: "engine_precision", reason: "cannot allocate \(precision) weights of \(s.n)×\(s.k)")
            }
            made += 1
        }
        slabCount = c.vocabSize * c.dim + (1 + 2 * c.nLayers) * c.dim
        slab = .allocate(capacity: slabCount)
    }

    deinit {
        for i in 0..<matCount { ck_weights_free(mats + i) }
        mats.deallocate()
        slab.deallocate()
    }
}

/// The memory of the last compact model released, kept for the next one of the same shape and
/// precision: publishing every second would otherwise map, fault in and zero ~250 MB each time
/// (about as long as the packing itself), and unmap as much when each version is released — on a
/// background thread, but on this 2-core machine the unmapping alone cost the engine 5.6–6.7 % of its
/// throughput and ~16 ms of p99 inter-token latency at one publication per second (bench-publish
/// `--recycle no`). A learner that publishes takes one (its next snapshot) for each version the engine
/// releases, so in steady state nothing is allocated or freed. Holds `capacity` (default 1).
/// Thread: any (one lock).
public enum CompactMemoryPool {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var spares: [CompactMemory] = []
    nonisolated(unsafe) private static var limit = 1
    nonisolated(unsafe) private static var counts = Counts()

    /// Compact models' memory since start: allocated fresh, reused from the pool, and freed (released
    /// while the pool was full). Process-wide.
    public struct Counts: Sendable, Equatable {
        public var allocated: UInt64 = 0
        public var reused: UInt64 = 0
        public var freed: UInt64 = 0
        public init() {}
    }

    public static var statistics: Counts { lock.withLock { counts } }

    /// Memory for a compact model of `c` in `precision`: a spare one of that shape, or fresh.
    static func memory(_ c: LlamaConfig, _ precision: EnginePrecision, format: Int32) throws -> CompactMemory {
        if let m = take(c, precision) { return m }
        let m = try CompactMemory(config: c, precision: precision, format: format)
        lock.withLock { counts.allocated += 1 }
        return m
    }

    /// How many released compact models are kept for reuse (default 1); lowering it frees the rest.
    public static var capacity: Int {
        get { lock.withLock { limit } }
        set {
            lock.lock()
            limit = max(0, newValue)
            let excess = spares.count > limit ? Array(spares[limit...]) : []
            spares = Array(spares.prefix(limit))
            counts.freed += UInt64(excess.count)
            lock.unlock()
            for m in excess { reap(m) }
        }
    }

    /// A spare of that shape (counted as reused), or nil.
    private static func take(_ c: LlamaConfig, _ p: EnginePrecision) -> CompactMemory? {
        lock.lock(); defer { lock.unlock() }
        guard let i = spares.lastIndex(where: { $0.config == c && $0.precision == p }) else { return nil }
        counts.reused += 1
        return spares.remove(at: i)
    }

    static func recycle(_ m: CompactMemory) {
        lock.lock()
        spares.append(m)
        let old = spares.count > limit ? spares.removeFirst() : nil
        if old != nil { counts.freed += 1 }
        lock.unlock()
        // The one displaced is unmapped on a background thread: a version is often released on the
        // engine's thread (retired between two steps), and unmapping ~250 MB takes milliseconds.
        if let old { reap(old) }
    }

    private static func reap(_ m: CompactMemory) { Reaper.shared.drop(m) }
}

/// One thread that drops what it is handed — at once or after a delay — so that freeing large
/// memory (unmapping hundreds of MB takes milliseconds) never runs on the engine's step thread.
/// Not libdispatch: a global-queue block submitted from the engine's thread, a plain pthread,
/// corrupted dispatch's continuation cache when its worker exited (AddressSanitizer, double free in
/// `_dispatch_cache_cleanup`). Thread: any.
public final class Reaper: @unchecked Sendable {
    public static let shared = Reaper()
    private let cond = NSCondition()
    private var items: [(due: Date, object: AnyObject)] = []

    private init() {
        let t = Thread { [self] in run() }
        t.name = "selm-reaper"
        t.start()
    }

    /// Drops `object` on the reaper's thread `after` seconds from now (in order of their times).
    public func drop(_ object: AnyObject, after: TimeInterval = 0) {
        cond.lock()
        items.append((Date().addingTimeInterval(after), object))
        cond.signal()
        cond.unlock()
    }

    private func run() {
        while true {
            cond.lock()
            var batch: [AnyObject] = []
            while batch.isEmpty {
                let now = Date()
                let due = items.filter { $0.due <= now }
                if !due.isEmpty {
                    items.removeAll { $0.due <= now }
                    batch = due.map(\.object)
                } else if let next = items.map(\.due).min() {
                    _ = cond.wait(until: next)
                } else {
                    cond.wait()
                }
            }
            cond.unlock()
            batch.removeAll()  // the last references: deinit (freeing) here
        }
    }
}

/// A compact model's storage: its memory (reused from the pool when one of the same shape was
/// released) and the forward pass's view of it. Returns the memory to the pool when freed.
final class CompactStore: @unchecked Sendable {
    let precision: EnginePrecision
    private let mem: CompactMemory
    var mats: UnsafeMutablePointer<ck_weights> { mem.mats }
    var matCount: Int { mem.matCount }
    var slab: UnsafeMutablePointer<Float> { mem.slab }
    var slabCount: Int { mem.slabCount }

    /// Storage for a model of `c` in `precision` (contents undefined until `fill`).
    init(config c: LlamaConfig, precision: EnginePrecision) throws {
        guard let format = precision.compactFormat else { preconditionFailure("CompactStore needs a compact precision") }
        self.precision = precision
        mem = try CompactMemoryPool.memory(c, precision, format: format)
    }

    deinit { CompactMemoryPool.recycle(mem) }

    /// (N, K) of every packed matrix, in storage order: per layer q, k, v, o, gate, up, down; then the head.
    static func shapes(_ c: LlamaConfig) -> [(n: Int, k: Int)] {
        var s: [(n: Int, k: Int)] = []
        for _ in 0..<c.nLayers {
            s += [(c.qDim, c.dim), (c.kvDim, c.dim), (c.kvDim, c.dim), (c.dim, c.qDim),
                  (c.hiddenDim, c.dim), (c.hiddenDim, c.dim), (c.dim, c.hiddenDim)]
        }
        s.append((c.vocabSize, c.dim))
        return s
    }

    /// Bytes held (packed payloads and the f32 slab).
    var bytes: Int {
        var b = slabCount * MemoryLayout<Float>.size
        for i in 0..<matCount { b += ck_weights_bytes(mats[i].format, mats[i].N, mats[i].K) }
        return b
    }

    /// Where each tensor of `w` goes in this store, keyed by its offset in `w`'s layout: linear
    /// weights and the head packed (7 matrices per layer, then the head), the embedding table and
    /// the norms copied into the slab (embedding, final norm, then each layer's two norms: the
    /// order `tensors` reads), a tied embedding both. Covers every weight of `w` once.
    func targets(of w: ParameterSet) -> [Int: CompactSnapshot.Target] {
        let c = w.config
        var targets: [Int: CompactSnapshot.Target] = [:]
        func put(_ p: UnsafeMutablePointer<Float>, rows: Int, cols: Int, packed: Int?, copy: UnsafeMutablePointer<Float>?) {
            let key = p - w.data
            let old = targets[key]
            targets[key] = CompactSnapshot.Target(rows: rows, cols: cols, packed: packed.map { mats + $0 } ?? old?.packed,
                                                  copy: copy ?? old?.copy)
        }
        var o = slab
        put(w.tokenEmbedding, rows: c.vocabSize, cols: c.dim, packed: nil, copy: o); o += c.vocabSize * c.dim
        put(w.finalNorm, rows: 1, cols: c.dim, packed: nil, copy: o); o += c.dim
        for (l, p) in w.layers.enumerated() {
            put(p.attnNorm, rows: 1, cols: c.dim, packed: nil, copy: o); o += c.dim
            put(p.mlpNorm, rows: 1, cols: c.dim, packed: nil, copy: o); o += c.dim
            let b = 7 * l
            put(p.wq, rows: c.qDim, cols: c.dim, packed: b, copy: nil)
            put(p.wk, rows: c.kvDim, cols: c.dim, packed: b + 1, copy: nil)
            put(p.wv, rows: c.kvDim, cols: c.dim, packed: b + 2, copy: nil)
            put(p.wo, rows: c.dim, cols: c.qDim, packed: b + 3, copy: nil)
            put(p.wGate, rows: c.hiddenDim, cols: c.dim, packed: b + 4, copy: nil)
            put(p.wUp, rows: c.hiddenDim, cols: c.dim, packed: b + 5, copy: nil)
            put(p.wDown, rows: c.dim, cols: c.hiddenDim, packed: b + 6, copy: nil)
        }
        // The head: the embedding's own entry when tied.
        put(w.lmHead, rows: c.vocabSize, cols: c.dim, packed: 7 * c.nLayers, copy: nil)
        precondition(targets.values.reduce(0) { $0 + $1.rows * $1.cols } == w.count, "the store covers every weight once")
        return targets
    }

    /// Fills the store from f32 weights on the calling thread only: packs every linear weight, copies
    /// the embedding table and norms. Reads `w` during the call only. Returns the number of q8
    /// blocks that could not be represented (non-finite or out of range: their scale is NaN).
    func fill(from w: ParameterSet, pacing: PackPacing? = nil) -> Int {
        var bad = 0
        // Row ranges of at most `rows` (a multiple of every panel height), pacing between them.
        let rows = 2048
        for (offset, t) in targets(of: w).sorted(by: { $0.key < $1.key }) {
            let src = w.data + offset
            if let packed = t.packed {
                var r0 = 0
                while r0 < t.rows {
                    let r1 = min(t.rows, r0 + rows)
                    let r = ck_pack_f32(packed, src, t.cols, Int32(r0), Int32(r1))
                    precondition(r >= 0, "ck_pack_f32 refused a row range")
                    bad += r
                    r0 = r1
                    pacing?.tick()
                }
            }
            t.copy?.update(from: src, count: t.rows * t.cols)
        }
        return bad
    }

    /// The forward pass's view of the store.
    func tensors(_ c: LlamaConfig) -> ForwardTensors {
        func lin(_ i: Int) -> LinearWeight {
            LinearWeight(storage: .compact(UnsafePointer(mats + i)), N: Int(mats[i].N), K: Int(mats[i].K))
        }
        let emb = UnsafePointer(slab)
        let fin = emb + c.vocabSize * c.dim
        let norms = fin + c.dim
        return ForwardTensors(
            tokenEmbedding: emb, finalNorm: fin,
            attnNorms: (0..<c.nLayers).map { norms + 2 * $0 * c.dim },
            mlpNorms: (0..<c.nLayers).map { norms + (2 * $0 + 1) * c.dim },
            linears: (0..<c.nLayers).map { l in
                let b = 7 * l
                return LayerLinears(wq: lin(b), wk: lin(b + 1), wv: lin(b + 2), wo: lin(b + 3),
                                    wGate: lin(b + 4), wUp: lin(b + 5), wDown: lin(b + 6))
            },
            lmHead: lin(7 * c.nLayers))
    }
}

/// How a publisher's packing yields the cores to a busy engine: it packs in slices of about
/// `slice` seconds and, while `busy()` says the engine has work, pauses between them with its compute
/// share released (`kernels_compute_exit`), so that under `adaptive` sharing only the steps
/// overlapping a slice run their products on one thread. A pause lasts at least `pause` seconds and,
/// given the engine's count of completed steps (`steps`), until the step that was running when the
/// slice ended has completed (at most `maxPause`): each engine step then overlaps at most one slice,
/// so a step loses at most about one slice to the publisher however short the steps are. Nil or
/// `slice` ≤ 0: one pass, no pauses. The packing's own time excludes the pauses.
public final class PackPacing: @unchecked Sendable {
    public let slice: Double
    public let pause: Double
    public let maxPause: Double
    public let busy: @Sendable () -> Bool
    public let steps: (@Sendable () -> UInt64)?
    private var sliceStart: UInt64 = 0
    /// Seconds paused so far (subtracted from the packing's own time), and how many pauses.
    public private(set) var paused: Double = 0
    public private(set) var pauses = 0
    /// The engine's completed-step count when each slice after a pause began (with `steps`).
    public private(set) var slicesAtStep: [UInt64] = []

    public init(slice: Double, pause: Double, maxPause: Double = 0.1, busy: @escaping @Sendable () -> Bool,
                steps: (@Sendable () -> UInt64)? = nil) {
        self.slice = slice; self.pause = pause; self.maxPause = max(pause, maxPause); self.busy = busy; self.steps = steps
    }

    func start() { sliceStart = DispatchTime.now().uptimeNanoseconds; paused = 0; pauses = 0; slicesAtStep = [] }

    /// Between two pieces of work: pauses when the slice is used up and the engine is busy.
    func tick() {
        guard slice > 0 else { return }
        let now = DispatchTime.now().uptimeNanoseconds
        guard Double(now - sliceStart) * 1e-9 >= slice else { return }
        if pause > 0 && busy() {
            let running = steps?()
            kernels_compute_exit()
            Thread.sleep(forTimeInterval: pause)
            if let running, let steps {
                // Until the step our slice overlapped is done: the next slice starts in a new step.
                while steps() == running && busy() && Double(DispatchTime.now().uptimeNanoseconds - now) * 1e-9 < maxPause {
                    Thread.sleep(forTimeInterval: 0.0003)
                }
                slicesAtStep.append(steps())
            }
            kernels_compute_enter()
            let after = DispatchTime.now().uptimeNanoseconds
            paused += Double(after - now) * 1e-9
            pauses += 1
            sliceStart = after
        } else {
            sliceStart = now
        }
    }
}

extension LlamaModel {
    /// An inference model in `precision` made from `weights`, on the calling thread only: for f32 a
    /// copy of them (products bit-for-bit the learner's forward), for bf16/q8/q4 the packed linear
    /// weights plus f32 copies of the embedding table and the norms — no f32 linear weights are kept.
    /// Reads `weights` during the call only (the caller may go on changing them afterwards).
    /// `packSeconds` of the result is the time this took. Counts as compute for the cores' sharing
    /// (`kernels_compute_enter`).
    /// - Throws: `ModelError.badInput` when the compact storage cannot be allocated, or when q8
    ///   blocks hold a NaN/Inf or a value beyond float16 scales (`field: "weights"`).
    /// With `pacing`, a compact copy is made in slices that leave the cores to a busy engine
    /// (`PackPacing`); `packSeconds` then counts the packing only, not the pauses.
    public static func inference(from weights: ParameterSet, precision: EnginePrecision, pacing: PackPacing? = nil) throws -> LlamaModel {
        let t0 = DispatchTime.now().uptimeNanoseconds
        // Packing is compute on this thread (the publisher's: the learner's core): under adaptive
        // sharing the engine's products run on one thread meanwhile, as while the learner computes.
        kernels_compute_enter()
        defer { kernels_compute_exit() }
        guard precision != .f32 else {
            let m = LlamaModel(weights: weights.copy())
            m.packSeconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            return m
        }
        let store = try CompactStore(config: weights.config, precision: precision)
        pacing?.start()
        let bad = store.fill(from: weights, pacing: pacing)
        guard bad == 0 else {
            throw ModelError.badInput(field: "weights", reason: "\(bad) blocks of 32 weights are non-finite or beyond the \(precision) scale range")
        }
        let m = LlamaModel(compact: store, config: weights.config)
        m.packSeconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9 - (pacing?.paused ?? 0)
        return m
    }
}

/// An engine snapshot made by the learner's optimizer pass instead of a packing pass of its own:
/// `AdamW.update(_:grads:lr:gradScale:snapshot:)` packs (or copies) each tensor right after updating
/// it, while its rows are in cache, into a compact model of the engine's precision. Publishing the
/// result (`model()`) then costs the engine nothing but the swap. Made for one `ParameterSet`'s
/// layout (the learner's weights); its memory comes from the same pool as a publish's packing.
/// Thread: the learner's.
public final class CompactSnapshot: @unchecked Sendable {
    /// Where one tensor of the weights goes: packed into a compact matrix (linear weights, the
    /// output head), copied as f32 (the embedding table, the norms), or both (a tied embedding).
    public struct Target {
        public let rows: Int, cols: Int
        public let packed: UnsafeMutablePointer<ck_weights>?
        public let copy: UnsafeMutablePointer<Float>?
    }

    public let precision: EnginePrecision
    public let config: LlamaConfig
    private let store: CompactStore
    private let targets: [Int: Target]
    private var filled = Set<Int>()
    private var bad = 0
    /// Seconds of the optimizer passes that made it (the update and the packing together).
    public var seconds = 0.0

    /// Storage for a snapshot of `weights` (same layout) in `precision` (a compact one).
    /// - Throws: `ModelError.badInput` when it cannot be allocated.
    public init(of weights: ParameterSet, precision: EnginePrecision) throws {
        precondition(precision != .f32, "a CompactSnapshot is compact")
        let c = weights.config
        self.precision = precision
        config = c
        store = try CompactStore(config: c, precision: precision)
        targets = store.targets(of: weights)
    }

    /// Where the tensor at `offset` of the weights' layout goes (nil: no tensor starts there).
    public func target(offset: Int) -> Target? { targets[offset] }

    /// The tensor at `offset` is in place; `bad`: its q8/q4 blocks that could not be represented.
    public func filled(offset: Int, bad: Int) {
        filled.insert(offset)
        self.bad += bad
    }

    /// Whether every tensor is in place.
    public var isComplete: Bool { filled.count == targets.count }

    /// The inference model, once complete (its `packSeconds` is `seconds`).
    /// - Throws: `ModelError.badInput` when a tensor is missing, or when q8/q4 blocks hold a NaN/Inf
    ///   or a value beyond their scale range (`field: "weights"`).
    public func model() throws -> LlamaModel {
        guard isComplete else {
            throw ModelError.badInput(field: "weights", reason: "the snapshot holds \(filled.count) of \(targets.count) tensors")
        }
        guard bad == 0 else {
            throw ModelError.badInput(field: "weights", reason: "\(bad) blocks of 32 weights are non-finite or beyond the \(precision) scale range")
        }
        let m = LlamaModel(compact: store, config: config)
        m.packSeconds = seconds
        return m
    }
}
