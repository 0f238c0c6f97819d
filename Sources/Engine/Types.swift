import Model
import Foundation

/// Identifies one submitted generation or score request; unique within a `GenerationEngine`.
public struct RequestID: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let raw: UInt64
    public init(_ raw: UInt64) { self.raw = raw }
    public static func < (a: RequestID, b: RequestID) -> Bool { a.raw < b.raw }
    public var description: String { "#\(raw)" }
}

/// Sizes and policies of an engine, fixed at creation.
public struct EngineConfig: Sendable, Equatable {
    /// Size of the paged KV pool (keys and values of every layer), in MiB.
    public var kvCacheMB: Double = 512
    /// Tokens per KV block.
    public var blockSize: Int = 16
    /// Token budget of one step: decodes (one token each) plus prefill chunks.
    public var maxTokensPerStep: Int = 512
    /// Tokens of a step while sequences are decoding (chunked prefill): decodes run first (all of
    /// them, up to `maxTokensPerStep`), then prefill chunks of admitted prompts (and re-prefills),
    /// in admission order, fill the step up to this many tokens — at least a quarter of it however
    /// many decode (within what `maxTokensPerStep` leaves), so admission goes on. So no decoding
    /// sequence waits behind more than one step of this size of other requests' prefill: on
    /// SmolLM2-135M (f32) with 32 sequences decoding, a 96-token step costs about twice a
    /// decode-only step (a 512-token one: 5–9 times). Smaller: lower inter-token latency while
    /// prompts are admitted beside decoding sequences, but they are admitted over more steps.
    ///
    /// A step with nothing to decode admits a wave instead: the prompts pending then prefill all
    /// but their last token in steps of up to `maxTokensPerStep`, and their last tokens run
    /// together once they fit in one step, so the wave's sequences get their first tokens in the
    /// same step and decode together (nobody decodes while a wave prefills, so nobody waits
    /// behind it); prompts arriving meanwhile wait for the wave to end, then join by chunks.
    /// Score requests are not chunked (one forward each, within what `maxTokensPerStep` leaves).
    public var decodingStepTokens: Int = 96
    /// Weight versions alive at once (the current one included), ≥ 1; each holds a full copy of
    /// the weights. A publication is always installed at the next step and new requests bind to
    /// it (admission never waits for a version); when that makes more than this many live, other
    /// versions are retired, the cheapest to give up first: fewest requests pinned to it, then
    /// fewest tokens to re-prefill, then the oldest. Their unfinished sequences move to the new
    /// version with `recompute` semantics (re-prefill prompt + generated tokens; the sample
    /// reports first and last version), requests pinned to them with `requireVersion` end with
    /// `EngineError.versionRetired`, score requests already queued on them still run. With 1,
    /// every publication moves all running sequences.
    public var maxLiveVersions: Int = 3
    /// Largest `n` accepted (at most 64).
    public var maxN: Int = 64
    /// `max_tokens` of a request that does not set it (capped to what the context leaves).
    public var defaultMaxTokens: Int = 256
    /// Reuse full prompt blocks across requests, keyed by (version, token prefix).
    public var prefixCache: Bool = true
    /// The n samples of a prompt prefill it once and share its blocks. Off only to test that
    /// sharing changes nothing.
    public var sharePromptAcrossSamples: Bool = true
    /// Threads that sample the tokens of one step in parallel (each sample's draw is independent
    /// of the others, so results do not depend on it). 1 keeps all work on the step thread.
    public var samplingThreads: Int = min(2, ProcessInfo.processInfo.activeProcessorCount)
    /// A publication's compact copy is made in slices of this many seconds of packing, with a
    /// pause between them while requests are running (`PackPacing`) that lasts until the engine
    /// step the slice overlapped has completed: each engine step loses at most one slice to the
    /// publisher instead of running at half speed for the whole packing. 0 = pack in one pass. The
    /// f32 copy is not paced.
    public var publishPackSlice: Double = 0.004
    /// The shortest pause between two slices of a paced publication, seconds.
    public var publishPackPause: Double = 0.004
    /// The longest pause (a step longer than this does not hold the publication up further), seconds.
    public var publishPackMaxPause: Double = 0.1
    /// What the KV cache holds keys and values in; nil = `KVCachePrecision.default(for:)` of the
    /// engine's precision (f32 for the f32 engine, f16 for the compact ones).
    public var kvCachePrecision: KVCachePrecision? = nil

    public init() {}
}

/// The element type of the paged KV cache.
public enum KVCachePrecision: String, Sendable, CaseIterable, CustomStringConvertible {
    /// Bit-for-bit the f32 engine's attention (OpenBLAS over contiguous or gathered rows).
    case f32
    /// IEEE half (saturating at ±65504): half the bytes per token, attention read in place from
    /// the blocks on both cores while decoding (`ck_paged_attention_f16`).
    case f16

    public var description: String { rawValue }
    /// Bytes per stored value.
    public var bytes: Int { self == .f32 ? 4 : 2 }
    /// The cache an engine in `precision` uses unless told otherwise: f32 keeps the f32 engine
    /// bit-for-bit as before; the compact engines, which already trade exactness for speed, halve
    /// the cache and its reads.
    public static func `default`(for precision: EnginePrecision) -> KVCachePrecision { precision == .f32 ? .f32 : .f16 }
}

/// One generation request: n samples for each of its prompts. The server tokenizes text and chat
/// before submitting (see `GenerationEngine.encode(text:chat:)`); the engine sees token ids only.
public struct GenerationRequest: Sendable {
    /// Token ids of each prompt (at least one prompt, none empty).
    public var prompts: [[Int32]]
    /// Temperature, top-k/p, min-p, penalties, seed. Its `maxTokens` is ignored: see `maxTokens`.
    public var params: SamplerSettings
    /// New tokens per sample at most; nil = `EngineConfig.defaultMaxTokens` capped to the context.
    /// Prompt + max tokens must fit in the context.
    public var maxTokens: Int?
    /// Samples per prompt, 1 ... 64 (`EngineConfig.maxN`).
    public var n: Int
    /// Generation stops when the text contains one of these; the text is cut before it.
    public var stop: [String]
    /// Tokens that end a sample besides EOS and the chat template's end-of-turn tokens (which stop
    /// unless `ignoreEOS`). A stop token is included in the sample's ids, not in its text.
    public var stopTokenIDs: [Int32]
    /// Do not stop at EOS and the template's end-of-turn tokens (`stopTokenIDs` still stop).
    public var ignoreEOS: Bool
    /// Alternatives per generated token, 0 ... 20, with their log-probabilities.
    public var topLogprobs: Int
    /// Emit a `.chunk` event for every generated token.
    public var stream: Bool
    /// At a weight swap, re-prefill this request's sequences under the new version and continue.
    public var recompute: Bool
    /// Run on exactly this weight version (it must be alive at submission); nil = the current
    /// version at admission.
    public var requireVersion: UInt64?

    public init(prompts: [[Int32]], params: SamplerSettings = SamplerSettings(), maxTokens: Int? = nil, n: Int = 1,
                stop: [String] = [], stopTokenIDs: [Int32] = [], ignoreEOS: Bool = false, topLogprobs: Int = 0,
                stream: Bool = false, recompute: Bool = false, requireVersion: UInt64? = nil) {
        self.prompts = prompts; self.params = params; self.maxTokens = maxTokens; self.n = n; self.stop = stop
        self.stopTokenIDs = stopTokenIDs; self.ignoreEOS = ignoreEOS; self.topLogprobs = topLogprobs
        self.stream = stream; self.recompute = recompute; self.requireVersion = requireVersion
    }

    /// One prompt.
    public init(prompt: [Int32], params: SamplerSettings = SamplerSettings(), maxTokens: Int? = nil, n: Int = 1) {
        self.init(prompts: [prompt], params: params, maxTokens: maxTokens, n: n)
    }
}

/// One (prompt, continuation) pair to score.
public struct ScoringItem: Sendable, Equatable {
    public var prompt: [Int32]
    public var continuation: [Int32]
    public init(prompt: [Int32], continuation: [Int32]) { self.prompt = prompt; self.continuation = continuation }
}

/// Log-probabilities of given continuations under one weight version.
public struct ScoringRequest: Sendable {
    public var items: [ScoringItem]
    /// A live version; nil = the current version when the engine runs it.
    public var version: UInt64?
    /// Alternatives per continuation token, 0 ... 20.
    public var topLogprobs: Int
    /// Also compute the entropy of the full next-token distribution at each continuation position.
    public var entropy: Bool
    public init(items: [ScoringItem], version: UInt64? = nil, topLogprobs: Int = 0, entropy: Bool = false) {
        self.items = items; self.version = version; self.topLogprobs = topLogprobs; self.entropy = entropy
    }
}

/// A token and its log-probability under the unmodified policy.
public struct TokenLogprob: Sendable, Equatable {
    public var id: Int32
    public var logprob: Float
    public init(id: Int32, logprob: Float) { self.id = id; self.logprob = logprob }
}

/// Newly generated tokens of one sample (streaming requests only).
public struct StreamChunk: Sendable {
    public var id: RequestID
    public var promptIndex: Int
    public var sampleIndex: Int
    /// The new tokens (one per step; empty in the closing chunk of a cancelled sample).
    public var tokens: [Int32]
    /// Text completed by these tokens: always whole UTF-8 characters; may lag behind the tokens by
    /// an unfinished character or a possible beginning of a stop string. The deltas of a sample
    /// concatenate to its final `FinishedSample.text`.
    public var textDelta: String
    /// log p of each token under the unmodified policy, parallel to `tokens`.
    public var logprobs: [Float]
    /// Alternatives per token (best first) when requested, else empty.
    public var topLogprobs: [[TokenLogprob]]
    /// Version that produced these tokens.
    public var version: UInt64
    /// `DispatchTime` uptime nanoseconds when the step that produced them ended.
    public var time: UInt64
}

/// The outcome of one sample.
public struct FinishedSample: Sendable {
    public var id: RequestID
    public var promptIndex: Int
    public var sampleIndex: Int
    /// Generated ids (a stop token that ended the sample is included; so is the token that
    /// completed a stop string).
    public var tokens: [Int32]
    /// Their text: stop tokens excluded, cut before a stop string.
    public var text: String
    /// log p of each token under the unmodified policy (log-softmax of the raw logits).
    public var logprobs: [Float]
    /// Alternatives per token when requested, else empty.
    public var topLogprobs: [[TokenLogprob]]
    public var finishReason: StopReason
    public var promptTokens: Int
    public var completionTokens: Int { tokens.count }
    /// The version that produced the last token (the only one, unless the request recomputes).
    public var version: UInt64
    /// The version the sample started under.
    public var firstVersion: UInt64
    public var time: UInt64
}

/// A request has produced all its results.
public struct RequestDone: Sendable {
    public var id: RequestID
    public var samples: Int
    public var promptTokens: Int
    public var completionTokens: Int
    public var cancelled: Bool
}

/// One scored continuation.
public struct ScoredContinuation: Sendable {
    public var tokens: [Int32]
    /// log p of each continuation token given everything before it.
    public var logprobs: [Float]
    /// Their sum (in double precision).
    public var totalLogprob: Double
    public var topLogprobs: [[TokenLogprob]]
    /// Entropy (nats) of softmax(logits) at each continuation position, when the request asked for
    /// it (`ScoringRequest.entropy`), else empty.
    public var entropies: [Float] = []
}

/// The answer to a `ScoringRequest`.
public struct ScoringResult: Sendable {
    public var id: RequestID
    public var version: UInt64
    public var items: [ScoredContinuation]
}

/// What leaves the engine, in order per request: `.firstToken` once, chunks (streaming requests),
/// one `.sample` per sample, then `.done`; or `.score`; or `.error` (then nothing more for that id).
public enum EngineEvent: Sendable {
    /// The request's first token exists (sent whether or not it streams; for time-to-first-token).
    /// `time` is `DispatchTime` uptime nanoseconds.
    case firstToken(RequestID, time: UInt64)
    case chunk(StreamChunk)
    case sample(FinishedSample)
    case done(RequestDone)
    case score(ScoringResult)
    case error(RequestID, EngineError)
    /// A weight set `publish(weights:learnerStep:metrics:)` numbered is installed (requests
    /// admitted from now on bind to it): the one announcement of a new version, belonging to no
    /// request, sent before any result of that version.
    case published(Publication)

    /// The request this event belongs to (nil for `.published`).
    public var requestID: RequestID? {
        switch self {
        case let .firstToken(id, _): return id
        case let .chunk(c): return c.id
        case let .sample(s): return s.id
        case let .done(d): return d.id
        case let .score(s): return s.id
        case let .error(id, _): return id
        case .published: return nil
        }
    }
}

/// A weight set the engine numbered (`GenerationEngine.publish(weights:learnerStep:metrics:)`).
public struct Publication: Sendable, Equatable {
    /// The version the weights serve as: issued by the engine's version issuer, on disk before
    /// this event exists.
    public var version: UInt64
    /// The learner step the weights come from (0: not from the learner — a RefreshWeights).
    public var learnerStep: UInt64
    /// The learner's metrics for that step (TRL names; empty for a refresh).
    public var metrics: [String: Double]
    /// The version whose weights were the learner's reference policy in that step (the engine
    /// keeps it alive as its reference version); 0 = none served as a version.
    public var referenceVersion: UInt64

    public init(version: UInt64, learnerStep: UInt64 = 0, metrics: [String: Double] = [:], referenceVersion: UInt64 = 0) {
        self.version = version
        self.learnerStep = learnerStep
        self.metrics = metrics
        self.referenceVersion = referenceVersion
    }
}

/// A snapshot of the engine's state.
public struct EngineStatus: Sendable {
    /// The version new requests bind to.
    public var currentVersion: UInt64
    /// A published version not installed yet (it is at the next step).
    public var pendingVersion: UInt64?
    /// Versions requests can bind or pin to (current included), ascending; at most
    /// `EngineConfig.maxLiveVersions`. (A retired version's weights stay in memory until the score
    /// requests already queued on it have run.)
    public var liveVersions: [UInt64]
    /// Requests (generation and score) not yet fully admitted.
    public var waitingRequests: Int
    /// Generation requests admitted and not finished.
    public var runningRequests: Int
    /// Sequences (samples) holding KV blocks.
    public var runningSequences: Int
    /// Blocks held by sequences.
    public var kvBlocksUsed: Int
    /// Blocks held only by the prefix cache (evictable).
    public var kvBlocksCached: Int
    public var kvBlocksTotal: Int
    public var blockSize: Int
    /// Tokens sampled since start.
    public var tokensGenerated: UInt64
    /// Prompt (and recompute) tokens run through the model since start.
    public var promptTokensComputed: UInt64
    /// Prompt tokens whose KV came from the prefix cache.
    public var prefixCacheHitTokens: UInt64
    /// Generated tokens per second over the last few seconds.
    public var tokensPerSecond: Double
    /// Steps that did work, and forward passes run by them.
    public var steps: UInt64
    public var forwards: UInt64
    /// Seconds spent in steps, in the model's forward passes, inside the KV store's `attend` (part
    /// of forward), and in sampling / log-probs / text (outside forward).
    public var stepSeconds: Double
    public var forwardSeconds: Double
    public var kvSeconds: Double
    public var sampleSeconds: Double
    /// The precision the engine serves in (every log-prob and score it returns is computed in it).
    public var precision: EnginePrecision = .f32
    /// What the KV cache holds keys and values in.
    public var kvCachePrecision: KVCachePrecision = .f32
    /// Bytes of weights one snapshot (version) holds in that precision.
    public var snapshotBytes: Int = 0
    /// Publications prepared (packed, or copied for f32) by `publish`, on the publishing thread;
    /// the seconds the last one took and all of them together.
    public var publishPacks: UInt64 = 0
    public var lastPublishPackSeconds: Double = 0
    public var publishPackSecondsTotal: Double = 0
    /// Publications whose compact model the learner's optimizer pass made (`CompactSnapshot`):
    /// nothing was packed for them on the publishing thread (not counted in `publishPacks`).
    public var publishSnapshots: UInt64 = 0
    /// Compact models' memory, process-wide (`CompactMemoryPool.statistics`): allocated fresh,
    /// reused from the last version released, freed. A learner publishing in steady state reuses:
    /// `freed` growing with publications means each one costs the engine an unmapping.
    public var compactMemory = CompactMemoryPool.Counts()
}

/// What one `step()` did.
public struct EngineStepReport: Sendable {
    /// Tokens run through the model (prefill + decode + scoring).
    public var tokens: Int
    /// Tokens sampled.
    public var generated: Int
    /// Of `tokens`: decode tokens (one per sequence that had one token to run) and prompt /
    /// recompute tokens (prefill chunks); scoring tokens are the rest.
    public var decodeTokens = 0
    public var prefillTokens = 0
    /// Forward passes (one per weight version with work, plus scoring).
    public var forwards: Int
    /// Whether work remains (running or admissible requests): call `step()` again.
    public var hasWork: Bool
}
