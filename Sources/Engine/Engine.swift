import Foundation
import Model
import Tokenizer

/// The generation engine: continuous batching over a paged KV cache, sampling with log-probs,
/// version-bound samples and zero-pause weight publishing.
///
/// Tasks in, results out. `submit`, `score`, `cancel`, `publish`, `status` and `drainEvents` may be
/// called from any thread; they take a short lock and never wait for a running step. The work
/// happens in `step()`: either on the engine's own thread (`start()`), or on a compute thread of
/// the owner's that calls `step()` itself (e.g. interleaved with learner micro-steps) — not both.
/// Results are queued; after each step that produced any, the wake-up callback runs (on the step
/// thread) and the owner drains the queue with `drainEvents()`. Wake-ups may coalesce
/// (`uv_async_send`): drain everything each time.
///
/// ```
/// let engine = try GenerationEngine(model: model, tokenizer: tok, template: .chatml(defaultSystem: nil))
/// engine.setWakeup { uv_async_send(handle) }
/// engine.start()
/// let id = try engine.submit(GenerationRequest(prompt: ids))
/// ... on wake-up: for e in engine.drainEvents() { ... }
/// engine.publish(weights: newWeights, version: 2)   // from the learner
/// engine.stop()
/// ```
public final class GenerationEngine: @unchecked Sendable {
    /// Thread: immutable, any thread.
    public let config: EngineConfig
    /// Thread: immutable, any thread.
    public let modelConfig: LlamaConfig
    /// Thread: immutable, any thread.
    public let tokenizer: Tokenizer
    /// Thread: immutable, any thread.
    public let template: ChatTemplate?
    /// EOS and the template's end-of-turn tokens: every request stops at them unless `ignoreEOS`.
    /// Thread: immutable, any thread.
    public let defaultStopTokens: [Int32]
    /// Blocks in the KV pool. Thread: immutable, any thread.
    public let kvBlocksTotal: Int
    /// The precision the engine computes in: the initial model's (`LlamaModel.precision`); every
    /// publication is converted to it by `publish` on the publishing thread. Thread: immutable, any thread.
    public let precision: EnginePrecision
    /// What the KV cache holds keys and values in (`EngineConfig.kvCachePrecision` resolved).
    public let kvCachePrecision: KVCachePrecision
    /// Bytes of weights one snapshot holds (`LlamaModel.weightBytes`). Thread: immutable, any thread.
    public let snapshotBytes: Int

    /// Publication preparation times (guarded by `packLock`).
    private let packLock = NSLock()
    private var packs: (count: UInt64, last: Double, total: Double, snapshots: UInt64) = (0, 0, 0, 0)

    private let versions: VersionRegistry
    /// Guarded by `stepLock` (internal for tests).
    let scheduler: Scheduler
    private let stepLock = NSLock()

    /// Guards everything below it up to `outLock`.
    private let inboxCond = NSCondition()
    private var inbox = Inbox()
    /// A publication arrived: an idle engine thread wakes to install it.
    private var poked = false
    private var nextID: UInt64 = 1
    /// Requests submitted and not yet done.
    private var activeIDs: Set<RequestID> = []
    private var stopped = false
    private var stopRequested = false
    private var lastStatus: EngineStatus
    private var thread: Thread?
    private var threadDone: DispatchSemaphore?

    private let outLock = NSLock()
    private var outbox: [EngineEvent] = []
    private var wakeup: (@Sendable () -> Void)?

    /// Numbered publications not yet installed, oldest first (guarded by `outLock`): each is
    /// announced (`.published`) by the step that installs it or a later one — a publication
    /// replaced before any step installed it is announced with the one that replaced it.
    private var announcements: [Publication] = []

    /// Serialises numbered publications; guards `issuer`.
    private let publishLock = NSLock()
    private var issuer: @Sendable (UInt64) throws -> UInt64 = { $0 + 1 }

    /// Creates an engine serving `model` as `version`.
    /// - Parameters:
    ///   - template: the chat template for `encode(text:chat:)` and the default stop tokens.
    /// - Throws: `EngineError.invalidConfig` for a block size < 1, a pool smaller than one block, a
    ///   token budget < 1, `maxLiveVersions` < 1, `maxN` outside 1 ... 64, `defaultMaxTokens` < 1.
    /// Thread: any.
    public init(model: LlamaModel, version: UInt64 = 1, tokenizer: Tokenizer, template: ChatTemplate? = nil,
                config: EngineConfig = EngineConfig()) throws {
        func bad(_ f: String, _ r: String) -> EngineError { .invalidConfig(field: f, reason: r) }
        let c = model.config
        guard config.blockSize >= 1 && config.blockSize <= c.contextLength else {
            throw bad("block_size", "must be in 1 ... \(c.contextLength), got \(config.blockSize)")
        }
        let kvPrecision = config.kvCachePrecision ?? .default(for: model.precision)
        let blockBytes = PagedKVCache.bytesPerBlock(config: c, blockSize: config.blockSize, precision: kvPrecision)
        let blocks = config.kvCacheMB.isFinite ? Int(config.kvCacheMB * 1_048_576 / Double(blockBytes)) : 0
        guard blocks >= 1 else {
            throw bad("kv_cache_mb", "\(config.kvCacheMB) MB holds no block of \(blockBytes) bytes")
        }
        guard config.maxTokensPerStep >= 1 else { throw bad("max_tokens_per_step", "must be ≥ 1, got \(config.maxTokensPerStep)") }
        guard config.decodingStepTokens >= 1 else { throw bad("decoding_step_tokens", "must be ≥ 1, got \(config.decodingStepTokens)") }
        guard config.maxLiveVersions >= 1 else { throw bad("max_live_versions", "must be ≥ 1, got \(config.maxLiveVersions)") }
        guard (1...64).contains(config.maxN) else { throw bad("max_n", "must be in 1 ... 64, got \(config.maxN)") }
        guard config.defaultMaxTokens >= 1 else { throw bad("default_max_tokens", "must be ≥ 1, got \(config.defaultMaxTokens)") }

        self.config = config
        self.modelConfig = c
        self.tokenizer = tokenizer
        self.template = template
        var stops: [Int32] = []
        if let eos = tokenizer.eosId { stops.append(eos) }
        for t in template?.stopTokens ?? [] {
            if let id = tokenizer.id(of: t), !stops.contains(id) { stops.append(id) }
        }
        defaultStopTokens = stops.filter { $0 >= 0 && Int($0) < c.vocabSize }
        kvBlocksTotal = blocks
        precision = model.precision
        snapshotBytes = model.weightBytes
        versions = VersionRegistry(model: model, version: version, maxLive: config.maxLiveVersions)
        self.kvCachePrecision = kvPrecision
        scheduler = Scheduler(config: config, modelConfig: c, tokenizer: tokenizer, versions: versions, blockCount: blocks,
                              kvPrecision: kvPrecision)
        lastStatus = EngineStatus(
            currentVersion: version, pendingVersion: nil, liveVersions: [version], waitingRequests: 0, runningRequests: 0,
            runningSequences: 0, kvBlocksUsed: 0, kvBlocksCached: 0, kvBlocksTotal: blocks, blockSize: config.blockSize,
            tokensGenerated: 0, promptTokensComputed: 0, prefixCacheHitTokens: 0, tokensPerSecond: 0, steps: 0,
            forwards: 0, stepSeconds: 0, forwardSeconds: 0, kvSeconds: 0, sampleSeconds: 0)
    }

    // MARK: tasks in

    /// Validates a generation request and queues it; it is admitted by a later step.
    /// - Returns: the id its events carry.
    /// - Throws: `EngineError.invalidRequest` naming the field (temperature < 0, top_p outside
    ///   (0, 1], n outside [1, 64], an empty prompt, ...), `.outOfRange` (a token id outside the
    ///   vocabulary, a prompt that fills the context, prompt + max_tokens beyond it),
    ///   `.exceedsKVPool` when it could never fit, `.versionNotAlive` for a `requireVersion` no
    ///   longer held, `.stopped`.
    /// Thread: any; never waits for a running step.
    public func submit(_ req: GenerationRequest) throws -> RequestID {
        let (maxTokens, stopTokens) = try validate(req)
        return try enqueue(pinning: req.requireVersion, field: "require_version") { id, pinned in
            inbox.requests.append(RequestState(id: id, request: req, maxTokens: maxTokens, stopTokens: stopTokens,
                                               seed: req.params.seed ?? UInt64.random(in: 0...UInt64.max), snapshot: pinned))
        }
    }

    /// Pins `version` when one is named (`field` is the request field that named it), gives the
    /// request a fresh id and lets `add` put it in the inbox, then wakes the engine thread.
    /// Thread: any; holds the inbox lock only while `add` runs.
    private func enqueue(pinning version: UInt64?, field: String,
                         _ add: (RequestID, WeightSnapshot?) -> Void) throws -> RequestID {
        var pinned: WeightSnapshot?
        if let v = version {
            guard let s = versions.retain(version: v) else {
                throw EngineError.versionNotAlive(field: field, version: v, alive: versions.liveVersions)
            }
            pinned = s
        }
        inboxCond.lock()
        defer { inboxCond.unlock() }
        guard !stopped else {
            if let pinned { versions.release(pinned) }
            throw EngineError.stopped
        }
        let id = RequestID(nextID)
        nextID += 1
        activeIDs.insert(id)
        add(id, pinned)
        inboxCond.signal()
        return id
    }

    /// Tokenizes `texts` (through the chat template when `chat`) and submits them as one request.
    /// Thread: any.
    public func submit(texts: [String], chat: Bool, params: SamplerSettings = SamplerSettings(), maxTokens: Int? = nil,
                       n: Int = 1, stop: [String] = [], stream: Bool = false) throws -> RequestID {
        let prompts = try texts.map { try encode(text: $0, chat: chat) }
        return try submit(GenerationRequest(prompts: prompts, params: params, maxTokens: maxTokens, n: n, stop: stop, stream: stream))
    }

    /// Token ids of a prompt: with `chat`, `text` as one user message through the chat template
    /// (ending with the assistant turn's opening); otherwise the text itself (the rules of
    /// `PromptResponseEncoder`, which this calls).
    /// - Throws: `EngineError.noChatTemplate` for `chat` without a template;
    ///   `EngineError.invalidRequest` (field `chat`) with the template's own message when it
    ///   refuses the conversation or fails to render.
    /// Thread: any.
    public func encode(text: String, chat: Bool) throws -> [Int32] {
        do { return try encoder.prompt(text: text, chat: chat) } catch { throw Self.chatError(error) }
    }

    /// Token ids of a conversation rendered by the chat template, ending with the assistant turn's
    /// opening. Thread: any.
    public func encode(messages: [ChatTurn]) throws -> [Int32] {
        do { return try encoder.chat(messages) } catch { throw Self.chatError(error) }
    }

    /// An encoder error as the engine reports it: a missing template is `noChatTemplate`, anything
    /// else (the template raised, or is not valid Jinja) keeps its message.
    static func chatError(_ error: Error) -> EngineError {
        if case TokenizerError.noChatTemplate? = error as? TokenizerError { return .noChatTemplate }
        return .invalidRequest(field: "chat", reason: "\(error)")
    }

    /// The text → token ids rules shared with the server and the learner.
    private var encoder: PromptResponseEncoder { PromptResponseEncoder(tokenizer: tokenizer, template: template) }

    /// Queues log-probability scoring of continuations; the result comes as a `.score` event.
    /// - Throws: `EngineError.invalidRequest` naming the field (`items`, an empty `items[i].prompt`
    ///   or `items[i].continuation`, `top_logprobs`), `.outOfRange` (`items[i].continuation.ids[j]`
    ///   outside the vocabulary, `items[i]` whose prompt + continuation exceed the context),
    ///   `.versionNotAlive`, `.stopped`.
    /// Thread: any; never waits for a running step.
    public func score(_ req: ScoringRequest) throws -> RequestID {
        func bad(_ f: String, _ r: String) -> EngineError { .invalidRequest(field: f, reason: r) }
        let c = modelConfig
        guard !req.items.isEmpty else { throw bad("items", "at least one item is required") }
        guard (0...20).contains(req.topLogprobs) else { throw bad("top_logprobs", "must be in 0 ... 20, got \(req.topLogprobs)") }
        for (i, it) in req.items.enumerated() {
            guard !it.prompt.isEmpty else { throw bad("items[\(i)].prompt", "is empty") }
            guard !it.continuation.isEmpty else { throw bad("items[\(i)].continuation", "is empty") }
            try checkIDs(it.prompt, field: "items[\(i)].prompt.ids")
            try checkIDs(it.continuation, field: "items[\(i)].continuation.ids")
            guard it.prompt.count + it.continuation.count <= c.contextLength else {
                throw EngineError.outOfRange(field: "items[\(i)]", reason: "prompt + continuation is \(it.prompt.count + it.continuation.count) tokens, beyond the context length \(c.contextLength)")
            }
        }
        return try enqueue(pinning: req.version, field: "version") { id, pinned in
            inbox.scores.append(ScoreTask(id: id, request: req, snapshot: pinned))
        }
    }

    /// Cancels a request at any point: its sequences stop at the next step and free their blocks;
    /// unfinished samples end with `cancelled`. Returns false when the id is unknown or done.
    /// Thread: any; never waits for a running step.
    @discardableResult
    public func cancel(_ id: RequestID) -> Bool {
        inboxCond.lock()
        defer { inboxCond.unlock() }
        guard activeIDs.contains(id) else { return false }
        inbox.cancels.append(id)
        inboxCond.signal()
        return true
    }

    /// Hands the engine a new weight set under a number of the caller's own (tests, benchmarks; a
    /// server numbers through `publish(weights:learnerStep:metrics:)`, which calls this); returns
    /// at once and announces nothing. It becomes current at the next step —
    /// requests admitted from then on bind to it, running samples keep their version (or
    /// re-prefill under it with `recompute`). `weights` are read during the call only: the engine
    /// makes its snapshot from them here, on the calling thread — packed into its compact precision
    /// (bf16/q8: the f32 linear weights are not kept), or copied for f32 — so the caller may go on
    /// training them afterwards. A newer publication before that step replaces this one. When more than
    /// `maxLiveVersions` versions would then be live, others are retired (see
    /// `EngineConfig.maxLiveVersions`): admission never waits for a version.
    /// - Throws: `.staleVersion` unless `version` is newer than every earlier one,
    ///   `.incompatibleWeights` for another architecture.
    /// Thread: any; never waits for a running step.
    public func publish(weights: ParameterSet, version: UInt64) throws {
        let model = try prepare(weights)
        try versions.publish(model, version: version)
        poke()
    }

    /// The snapshot model of `weights` in the engine's precision, made on the calling thread (the
    /// publisher's, never the engine's): packed for bf16/q8, copied for f32. Reads `weights` during
    /// the call only. Times it (`EngineStatus.lastPublishPackSeconds`).
    private func prepare(_ weights: ParameterSet, snapshot: CompactSnapshot? = nil) throws -> LlamaModel {
        guard weights.config == modelConfig else {
            throw EngineError.incompatibleWeights(reason: "config \(weights.config) differs from the engine's \(modelConfig)")
        }
        if let snapshot, snapshot.precision == precision, snapshot.config == modelConfig, snapshot.isComplete {
            let model: LlamaModel
            do { model = try snapshot.model() } catch {
                throw EngineError.incompatibleWeights(reason: "cannot be served in \(precision): \(error)")
            }
            packLock.lock()
            packs.snapshots += 1
            packLock.unlock()
            return model
        }
        let model: LlamaModel
        let pacing = config.publishPackSlice > 0 && precision != .f32
            ? PackPacing(slice: config.publishPackSlice, pause: config.publishPackPause, maxPause: config.publishPackMaxPause,
                         busy: { [weak self] in self?.isBusy ?? false }, steps: { [weak self] in self?.completedSteps ?? 0 })
            : nil
        do { model = try LlamaModel.inference(from: weights, precision: precision, pacing: pacing) } catch {
            throw EngineError.incompatibleWeights(reason: "cannot be served in \(precision): \(error)")
        }
        packLock.lock()
        packs.count += 1
        packs.last = model.packSeconds
        packs.total += model.packSeconds
        packLock.unlock()
        return model
    }

    /// Storage for the compact model of the next publication of `weights`, for the learner's
    /// optimizer pass to fill (`AdamW.update(…, snapshot:)`); nil for an f32 engine (its
    /// snapshot is a copy) or when it cannot be allocated (the publication then packs as usual).
    /// Thread: any.
    public func makeSnapshot(of weights: ParameterSet) -> CompactSnapshot? {
        guard precision != .f32, weights.config == modelConfig else { return nil }
        return try? CompactSnapshot(of: weights, precision: precision)
    }

    /// Steps that did work so far (a publisher's packing paces itself by them).
    var completedSteps: UInt64 {
        inboxCond.lock(); defer { inboxCond.unlock() }
        return lastStatus.steps
    }

    /// Whether requests are admitted and unfinished (a publisher's packing yields to them).
    var isBusy: Bool {
        inboxCond.lock(); defer { inboxCond.unlock() }
        return !activeIDs.isEmpty
    }

    /// Sets how `publish(weights:learnerStep:metrics:)` numbers publications: given the newest
    /// version the engine holds, return the next one, recorded durably before returning (the
    /// server's `VersionLedger.issue(after:)`: a number is on disk before anyone sees it), or throw
    /// to refuse the publication. Default: one above the newest, recorded nowhere. Set it before
    /// the first publication. Thread: any.
    public func setVersionIssuer(_ issue: @escaping @Sendable (_ newest: UInt64) throws -> UInt64) {
        publishLock.lock(); issuer = issue; publishLock.unlock()
    }

    /// Publishes `weights` as the next version — the one place a version number is issued: a
    /// snapshot is made from `weights` on the calling thread (packed into the engine's precision, or
    /// copied for f32; they are read during the call only, so a learner hands over its live weights
    /// between two steps), the issuer numbers it (durably), it is queued for the next step, and that
    /// step announces the version (a `.published` event, through the wake-up) once it is installed.
    /// Publications are serialised, so numbers reach the engine in the order they are issued.
    /// `referenceVersion` (a learner's publication): the version whose weights were the learner's
    /// reference policy in the step that produced `weights`; the engine keeps it alive from now on,
    /// beside `maxLiveVersions`, until a later publication names another (`VersionRegistry.setReference`),
    /// so Score and Generate can name it; 0 keeps none, nil leaves the kept one as it is (a refresh).
    /// The announcement carries it (0 when it is not live, or nil).
    /// - Returns: the version.
    /// - Throws: `.incompatibleWeights` for another architecture (nothing issued), or what the
    ///   issuer throws (nothing published).
    /// Thread: any but the owner's event loop (the issuer fsyncs); never waits for a running step.
    @discardableResult
    /// `snapshot`: the learner's optimizer pass already made the compact model of `weights`
    /// (`AdamW.update(…, snapshot:)`, `makeSnapshot(of:)`): it is used as it is, with no packing
    /// here, when complete and of the engine's precision; otherwise `weights` are packed as usual.
    public func publish(weights: ParameterSet, snapshot: CompactSnapshot? = nil, learnerStep: UInt64 = 0,
                        metrics: [String: Double] = [:], referenceVersion: UInt64? = nil) throws -> UInt64 {
        let model = try prepare(weights, snapshot: snapshot)
        publishLock.lock(); defer { publishLock.unlock() }
        let version = try issuer(versions.newestVersion)
        var reference: UInt64 = 0
        if let r = referenceVersion { reference = versions.setReference(r) ? r : 0 }
        try versions.publish(model, version: version)
        outLock.lock()
        announcements.append(Publication(version: version, learnerStep: learnerStep, metrics: metrics, referenceVersion: reference))
        outLock.unlock()
        poke()
        return version
    }

    /// Publishes `weights` under a number chosen elsewhere and announces it like a numbered
    /// publication (a `.published` event once installed): a rollout replica (`selm serve --follow`)
    /// serves each of its learner's versions under the learner's own number, so a sample's version
    /// means the same on every replica. `record` runs first, under the publication lock, with the
    /// version (the replica's `VersionLedger.record`, which fsyncs: the number is on disk before
    /// anyone sees it); what it throws refuses the publication.
    /// - Throws: `.staleVersion` unless `version` is above every version this engine has held,
    ///   `.incompatibleWeights` for another architecture, or what `record` throws.
    /// Thread: any but the owner's event loop; never waits for a running step.
    public func publish(weights: ParameterSet, version: UInt64, learnerStep: UInt64, metrics: [String: Double] = [:],
                        record: (UInt64) throws -> Void) throws {
        let model = try prepare(weights)
        publishLock.lock(); defer { publishLock.unlock() }
        let newest = versions.newestVersion
        guard version > newest else { throw EngineError.staleVersion(version: version, newest: newest) }
        try record(version)
        try versions.publish(model, version: version)
        outLock.lock()
        announcements.append(Publication(version: version, learnerStep: learnerStep, metrics: metrics))
        outLock.unlock()
        poke()
    }

    /// Wakes an idle engine thread to install a publication.
    private func poke() {
        inboxCond.lock()
        poked = true
        inboxCond.signal()
        inboxCond.unlock()
    }

    /// The version new requests bind to. Thread: any.
    public var currentVersion: UInt64 { versions.currentVersion }

    /// The version kept alive as the learner's reference (`publish(weights:learnerStep:metrics:referenceVersion:)`),
    /// 0 for none. Thread: any.
    public var referenceVersion: UInt64 { versions.referenceVersion }

    /// Keeps `version` alive as the learner's reference from now on (beside `maxLiveVersions`),
    /// letting go of the one kept before; 0 keeps none. False when `version` is not live (nothing
    /// kept). Thread: any.
    @discardableResult
    public func keepReference(version: UInt64) -> Bool { versions.setReference(version) }

    /// Counters and versions, as of the last step (versions and queue lengths live). Thread: any;
    /// never waits for a running step.
    public func status() -> EngineStatus {
        inboxCond.lock()
        var s = lastStatus
        s.waitingRequests += inbox.requests.count + inbox.scores.count
        inboxCond.unlock()
        s.currentVersion = versions.currentVersion
        s.pendingVersion = versions.pendingVersion
        s.liveVersions = versions.liveVersions
        s.precision = precision
        s.kvCachePrecision = kvCachePrecision
        s.snapshotBytes = snapshotBytes
        packLock.lock()
        (s.publishPacks, s.lastPublishPackSeconds, s.publishPackSecondsTotal, s.publishSnapshots) = (packs.count, packs.last, packs.total, packs.snapshots)
        packLock.unlock()
        s.compactMemory = CompactMemoryPool.statistics
        return s
    }

    // MARK: results out

    /// Sets the callback run (on the step thread) after each step that queued events. Keep it
    /// cheap and non-blocking (`uv_async_send`). Thread: any.
    public func setWakeup(_ f: @escaping @Sendable () -> Void) {
        outLock.lock(); wakeup = f; outLock.unlock()
    }

    /// Takes every queued event, oldest first. Thread: any.
    public func drainEvents() -> [EngineEvent] {
        outLock.lock(); defer { outLock.unlock() }
        let out = outbox
        outbox = []
        return out
    }

    // MARK: running

    /// Runs one scheduler step: admits waiting requests, runs one forward per live weight version
    /// with work (prefill chunks and decodes of many sequences together), samples, retires finished
    /// sequences, queues events and calls the wake-up. Returns at once when there is nothing to do.
    /// Thread: the engine thread, or one compute thread of the owner's when `start()` is not used.
    /// Calls are serialised.
    @discardableResult
    public func step() -> EngineStepReport {
        stepLock.lock()
        defer { stepLock.unlock() }
        inboxCond.lock()
        let box = inbox
        inbox = Inbox()
        poked = false
        inboxCond.unlock()

        let report = scheduler.step(box)
        let events = scheduler.events
        let s = scheduler
        let status = EngineStatus(
            currentVersion: 0, pendingVersion: nil, liveVersions: [], waitingRequests: s.waitingRequestCount,
            runningRequests: s.runningRequestCount, runningSequences: s.runningSampleCount,
            kvBlocksUsed: s.cache.usedCount, kvBlocksCached: s.cache.evictableCount, kvBlocksTotal: kvBlocksTotal,
            blockSize: config.blockSize, tokensGenerated: s.tokensGenerated, promptTokensComputed: s.promptTokensComputed,
            prefixCacheHitTokens: s.prefixHitTokens, tokensPerSecond: s.tokensPerSecond(), steps: s.steps,
            forwards: s.forwards, stepSeconds: s.stepSeconds, forwardSeconds: s.forwardSeconds,
            kvSeconds: s.cache.attendSeconds, sampleSeconds: s.sampleSeconds)
        inboxCond.lock()
        lastStatus = status
        for e in events {
            switch e {
            case let .done(d): activeIDs.remove(d.id)
            case let .score(r): activeIDs.remove(r.id)
            case let .error(id, _): activeIDs.remove(id)
            default: break
            }
        }
        inboxCond.unlock()
        let installed = versions.currentVersion
        outLock.lock()
        // Versions this step installed are announced before any result they produced.
        let announced = announcements.prefix { $0.version <= installed }
        announcements.removeFirst(announced.count)
        if !announced.isEmpty || !events.isEmpty {
            outbox.append(contentsOf: announced.map { EngineEvent.published($0) })
            outbox.append(contentsOf: events)
            let w = wakeup
            outLock.unlock()
            w?()
        } else {
            outLock.unlock()
        }
        return report
    }

    /// Starts the engine thread, which steps while there is work and sleeps otherwise. The thread
    /// holds the engine until `stop()`. Thread: any.
    public func start() {
        inboxCond.lock()
        defer { inboxCond.unlock() }
        guard thread == nil, !stopped else { return }
        let done = DispatchSemaphore(value: 0)
        let t = Thread { [self] in
            self.run()
            done.signal()
        }
        t.name = "selm-engine"
        thread = t
        threadDone = done
        t.start()
    }

    private func run() {
        while true {
            let report = step()
            inboxCond.lock()
            if stopRequested && !report.hasWork && inbox.isEmpty {
                inboxCond.unlock()
                return
            }
            if report.hasWork {
                // Work that could not move this step (admission waiting for blocks) must not spin.
                if report.tokens == 0 && inbox.isEmpty && !poked { _ = inboxCond.wait(until: Date(timeIntervalSinceNow: 0.002)) }
            } else {
                while inbox.isEmpty && !poked && !stopRequested { inboxCond.wait() }
            }
            inboxCond.unlock()
        }
    }

    /// Stops taking work (later submissions throw `.stopped`) and ends what is in flight: cancelled
    /// (samples end with `cancelled`), or run to completion with `finishInFlight`. Returns when the
    /// engine thread has exited (or, without one, after stepping here until nothing is left).
    /// Thread: any but the step thread.
    public func stop(finishInFlight: Bool = false) {
        inboxCond.lock()
        stopped = true
        stopRequested = true
        if !finishInFlight { inbox.cancelAll = true }
        inboxCond.signal()
        let t = thread, done = threadDone
        thread = nil
        inboxCond.unlock()
        if t != nil {
            done?.wait()
        } else {
            while step().hasWork {}
        }
    }

    // MARK: validation

    private func checkIDs(_ ids: [Int32], field: String) throws {
        let V = Int32(modelConfig.vocabSize)
        for (j, t) in ids.enumerated() where t < 0 || t >= V {
            // A wire id of 2^31 or more arrives as a negative Int32: name it as it was sent.
            throw EngineError.outOfRange(field: "\(field)[\(j)]", reason: "token id \(UInt32(bitPattern: t)) is outside the vocabulary [0, \(V))")
        }
    }

    /// Checks every field; returns the effective max tokens and stop tokens.
    private func validate(_ req: GenerationRequest) throws -> (Int, Set<Int32>) {
        func bad(_ f: String, _ r: String) -> EngineError { .invalidRequest(field: f, reason: r) }
        let C = modelConfig.contextLength
        guard !req.prompts.isEmpty else { throw bad("prompts", "at least one prompt is required") }
        for (i, p) in req.prompts.enumerated() {
            guard !p.isEmpty else { throw bad("prompts[\(i)]", "is empty") }
            try checkIDs(p, field: "prompts[\(i)].ids")
            guard p.count < C else {
                throw EngineError.outOfRange(field: "prompts[\(i)]", reason: "the prompt has \(p.count) tokens and leaves no room in the context of \(C)")
            }
        }
        var params = req.params
        params.maxTokens = 1  // `maxTokens` is the request's own field
        do { try params.validate() } catch let SamplingError.invalid(field, reason) { throw bad("sampling." + field, reason) }
        let maxN = min(64, config.maxN)
        guard (1...maxN).contains(req.n) else { throw bad("n", "must be in [1, \(maxN)], got \(req.n)") }
        guard (0...20).contains(req.topLogprobs) else { throw bad("top_logprobs", "must be in [0, 20], got \(req.topLogprobs)") }
        for (i, s) in req.stop.enumerated() where s.isEmpty { throw bad("stop[\(i)]", "is empty") }
        try checkIDs(req.stopTokenIDs, field: "stop_token_ids")
        if req.recompute && req.requireVersion != nil {
            throw bad("recompute", "cannot be combined with require_version (a recomputing request moves to new versions)")
        }
        let longest = req.prompts.map(\.count).max()!
        let maxTokens: Int
        if let m = req.maxTokens {
            guard m >= 1 else { throw bad("sampling.max_tokens", "must be ≥ 1, got \(m)") }
            if let (i, p) = req.prompts.enumerated().first(where: { $0.element.count + m > C }) {
                throw EngineError.outOfRange(field: "sampling.max_tokens",
                                             reason: "prompts[\(i)] has \(p.count) tokens; with max_tokens \(m) that is \(p.count + m), beyond the context length \(C)")
            }
            maxTokens = m
        } else {
            maxTokens = min(config.defaultMaxTokens, C - longest)
        }
        let need = req.prompts.map {
            Scheduler.worstCaseBlocks(promptCount: $0.count, maxTokens: maxTokens, n: req.n, blockSize: config.blockSize,
                                      share: config.sharePromptAcrossSamples)
        }.max()!
        guard need <= kvBlocksTotal else {
            throw EngineError.exceedsKVPool(field: "sampling.max_tokens", blocksNeeded: need, blocksTotal: kvBlocksTotal, blockSize: config.blockSize)
        }
        var stops = Set(req.stopTokenIDs)
        if !req.ignoreEOS { stops.formUnion(defaultStopTokens) }
        return (maxTokens, stops)
    }
}
