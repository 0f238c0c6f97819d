import Foundation
import Kernels
import Model
import Tokenizer

// The scheduler: llama.cpp server's slots and `update_slots()`, over a paged KV cache and several
// live weight versions. Tasks come in through the engine's inbox, results go out as events.
//
// Thread: everything here runs on whichever thread calls `GenerationEngine.step()` (the engine thread, or the
// owner's compute thread), one step at a time.

/// Where a sample is in its life (llama.cpp's slot states).
enum SampleState {
    /// A sample other than the first of a shared prompt: waits for the first to prefill the prompt,
    /// then shares its full blocks and copies its partial last block.
    case waitingForPrompt
    /// Holds KV blocks; `context[computed...]` still has to run (many tokens: prefill, one: decode).
    case running
    /// Lost its blocks at a weight swap (`recompute`, or its version was retired): waits to be
    /// re-admitted, then re-prefills prompt + generated tokens under the new version.
    case waitingForBlocks
    case finished
}

/// A submitted generation request.
final class RequestState {
    let id: RequestID
    let request: GenerationRequest
    let maxTokens: Int
    let stopTokens: Set<Int32>
    let seed: UInt64
    /// The bound version (set at submission for `requireVersion`, else at admission; moved to the
    /// current version at a swap with `recompute` or when its own is retired).
    var snapshot: WeightSnapshot?
    var groups: [PromptGroup] = []
    var unfinishedSamples: Int
    var cancelled = false
    var firstTokenSent = false
    var promptTokens = 0
    var completionTokens = 0

    init(id: RequestID, request: GenerationRequest, maxTokens: Int, stopTokens: Set<Int32>, seed: UInt64,
         snapshot: WeightSnapshot?) {
        self.id = id; self.request = request; self.maxTokens = maxTokens; self.stopTokens = stopTokens
        self.seed = seed; self.snapshot = snapshot
        unfinishedSamples = request.prompts.count * request.n
    }
}

/// One prompt of a request and its n samples (created at admission).
final class PromptGroup {
    unowned let request: RequestState
    let promptIndex: Int
    let prompt: [Int32]
    var samples: [Sample] = []

    init(request: RequestState, promptIndex: Int, prompt: [Int32]) {
        self.request = request; self.promptIndex = promptIndex; self.prompt = prompt
    }
}

/// One sample: a sequence in the KV cache, its sampler and its output so far (llama.cpp's slot).
final class Sample {
    unowned let group: PromptGroup
    let index: Int
    var state: SampleState
    /// Slot in the paged KV cache, or -1.
    var kvSlot = -1
    /// (computed + pending) prompt + generated tokens.
    var context: [Int32]
    /// Positions whose keys and values are stored.
    var computed = 0
    var generated: [Int32] = []
    var logprobs: [Float] = []
    var top: [[TokenLogprob]] = []
    var sampler: Sampler
    var text: TextAssembler
    var version: UInt64
    let firstVersion: UInt64
    /// Samples waiting for this one to prefill the shared prompt.
    var forks: [Sample] = []
    /// A fork's own blocks, allocated at admission, put in its table when the prompt is ready.
    var ownedBlocks: [Int32] = []
    /// Prompt blocks in (or taken from) the prefix cache, and the entry of the last one.
    var cachedBlocks = 0
    var cacheParent: UInt64 = 0
    /// Prefilling in the current admission wave (see `runModel`).
    var inWave = false

    init(group: PromptGroup, index: Int, state: SampleState, sampler: Sampler, text: TextAssembler, version: UInt64) {
        self.group = group; self.index = index; self.state = state; self.context = group.prompt
        self.sampler = sampler; self.text = text; self.version = version; self.firstVersion = version
    }

    var request: RequestState { group.request }
}

/// A submitted score request.
final class ScoreTask {
    let id: RequestID
    let request: ScoringRequest
    var snapshot: WeightSnapshot?
    init(id: RequestID, request: ScoringRequest, snapshot: WeightSnapshot?) {
        self.id = id; self.request = request; self.snapshot = snapshot
    }
}

/// What the engine's inbox hands one step.
struct Inbox {
    var requests: [RequestState] = []
    var scores: [ScoreTask] = []
    var cancels: [RequestID] = []
    var cancelAll = false
    var isEmpty: Bool { requests.isEmpty && scores.isEmpty && cancels.isEmpty && !cancelAll }
}

final class Scheduler {
    let config: EngineConfig
    let modelConfig: LlamaConfig
    let tokenizer: Tokenizer
    let versions: VersionRegistry
    let cache: PagedKVCache
    private let acts: Activations

    /// Groups not yet admitted, in submission order.
    private var waiting: [PromptGroup] = []
    /// Admitted samples not yet finished, in admission order.
    private var active: [Sample] = []
    private var requests: [RequestID: RequestState] = [:]
    private var scores: [ScoreTask] = []
    /// Rotates which decodes go first when they exceed the token budget.
    private var decodeCursor = 0
    /// Events of the current step.
    private(set) var events: [EngineEvent] = []

    // Counters for `EngineStatus`.
    private(set) var tokensGenerated: UInt64 = 0
    private(set) var promptTokensComputed: UInt64 = 0
    private(set) var prefixHitTokens: UInt64 = 0
    private(set) var steps: UInt64 = 0
    private(set) var forwards: UInt64 = 0
    private(set) var stepSeconds = 0.0
    private(set) var forwardSeconds = 0.0
    private(set) var sampleSeconds = 0.0
    private var rateWindow: [(time: Double, tokens: UInt64)] = []

    init(config: EngineConfig, modelConfig: LlamaConfig, tokenizer: Tokenizer, versions: VersionRegistry, blockCount: Int,
         kvPrecision: KVCachePrecision) {
        self.config = config
        self.modelConfig = modelConfig
        self.tokenizer = tokenizer
        self.versions = versions
        cache = PagedKVCache(config: modelConfig, blockSize: config.blockSize, blockCount: blockCount, precision: kvPrecision)
        acts = Activations(config: modelConfig)
    }

    /// Whether anything is running, waiting or queued.
    var hasWork: Bool { !active.isEmpty || !waiting.isEmpty || !scores.isEmpty }
    var waitingGroupCount: Int { waiting.count }
    var runningRequestCount: Int { requests.values.filter { $0.groups.contains { !$0.samples.isEmpty } }.count }
    var runningSampleCount: Int { active.filter { $0.kvSlot >= 0 }.count }
    var waitingRequestCount: Int {
        requests.values.filter { !$0.groups.contains { !$0.samples.isEmpty } }.count + scores.count
    }

    /// KV blocks a group needs at most: prompt + max tokens (minus one: the last sampled token is
    /// never run) for its first sample, and past the prompt's full blocks for the others when they
    /// share it.
    static func worstCaseBlocks(promptCount P: Int, maxTokens M: Int, n: Int, blockSize bs: Int, share: Bool) -> Int {
        let total = (P + M - 1 + bs - 1) / bs
        return share && n > 1 ? total + (n - 1) * (total - P / bs) : n * total
    }

    private func emit(_ e: EngineEvent) { events.append(e) }

    // MARK: step

    /// One scheduler step: take the inbox, install a pending weight version (retiring versions
    /// beyond the live limit), admit, run one
    /// forward per live version with work (prefill chunks and decodes mixed), sample, retire.
    func step(_ inbox: Inbox) -> EngineStepReport {
        let t0 = DispatchTime.now().uptimeNanoseconds
        events = []
        intake(inbox)
        installPublication()
        admit()
        var report = runModel()
        runScores(&report)
        active.removeAll { $0.state == .finished }
        report.hasWork = hasWork
        let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9
        if report.tokens > 0 || !events.isEmpty {
            steps += 1
            stepSeconds += dt
        }
        return report
    }

    private func intake(_ inbox: Inbox) {
        for r in inbox.requests {
            requests[r.id] = r
            for (i, p) in r.request.prompts.enumerated() {
                let g = PromptGroup(request: r, promptIndex: i, prompt: p)
                r.groups.append(g)
                waiting.append(g)
            }
            // Pinned while a step retired its version (submission raced with the retirement).
            if let snap = r.snapshot, versions.isRetired(snap) {
                fail(r, EngineError.versionRetired(field: "require_version", version: snap.version, limit: versions.maxLive))
            }
        }
        scores.append(contentsOf: inbox.scores)
        if inbox.cancelAll {
            for r in requests.values.sorted(by: { $0.id < $1.id }) { cancel(r) }
            for s in scores { emit(.error(s.id, .stopped)); if let snap = s.snapshot { versions.release(snap) } }
            scores.removeAll()
        }
        for id in inbox.cancels {
            if let r = requests[id] { cancel(r) }
            if let i = scores.firstIndex(where: { $0.id == id }) {
                let s = scores.remove(at: i)
                emit(.error(s.id, .cancelled))
                if let snap = s.snapshot { versions.release(snap) }
            }
        }
    }

    /// Ends every unfinished sample of `r` with `cancelled` and frees its blocks at once.
    private func cancel(_ r: RequestState) {
        guard !r.cancelled else { return }
        r.cancelled = true
        let groupIDs = Set(r.groups.map { ObjectIdentifier($0) })
        waiting.removeAll { groupIDs.contains(ObjectIdentifier($0)) }
        for g in r.groups {
            if g.samples.isEmpty {
                // Never admitted: report its samples as cancelled without tokens (their prompt
                // tokens count in `RequestDone.promptTokens`, which sums over samples).
                let version = r.snapshot?.version ?? versions.current.version
                r.promptTokens += g.prompt.count * r.request.n
                for i in 0..<r.request.n {
                    emit(.sample(FinishedSample(
                        id: r.id, promptIndex: g.promptIndex, sampleIndex: i, tokens: [], text: "", logprobs: [],
                        topLogprobs: [], finishReason: .cancelled, promptTokens: g.prompt.count, version: version,
                        firstVersion: version, time: 0)))
                    sampleDone(r)
                }
            } else {
                for s in g.samples where s.state != .finished { finish(s, .cancelled) }
            }
        }
    }

    // MARK: versions

    /// Installs a pending publication (always: admission never waits for a version) and moves
    /// `recompute` requests onto it. When that leaves more than `maxLiveVersions` live, other
    /// versions are retired, the cheapest first (fewest pinned requests, then fewest tokens to
    /// re-prefill, then the oldest): requests bound to them move to the new version the same way
    /// (their samples re-prefill prompt + generated tokens under it), and requests pinned to them
    /// with `requireVersion` end with `versionRetired`. Score tasks keep their snapshot until they
    /// have run.
    private func installPublication() {
        var recomputing: [RequestState] = []
        let installed = versions.installPending {
            var plan = VersionRegistry.InstallPlan()
            for r in requests.values.sorted(by: { $0.id < $1.id }) where !r.cancelled {
                guard let snap = r.snapshot else { continue }
                if r.request.recompute {
                    recomputing.append(r)
                    plan.moving.append(snap)
                    continue
                }
                var c = plan.cost[snap.version] ?? (0, 0)
                if r.request.requireVersion != nil { c.pinned += 1 }
                // What moving throws away: the KV positions computed so far (a sample already waiting to
                // re-prefill loses nothing).
                for g in r.groups { for s in g.samples where s.state != .finished { c.tokens += s.computed } }
                plan.cost[snap.version] = c
            }
            return plan
        }
        guard let (new, retired) = installed else { return }
        // Their holds passed to `new` inside the registry.
        for r in recomputing { rebind(r, to: new) }
        guard !retired.isEmpty else { return }
        let gone = Set(retired.map { ObjectIdentifier($0) })
        for r in requests.values.sorted(by: { $0.id < $1.id }) {
            guard let old = r.snapshot, gone.contains(ObjectIdentifier(old)) else { continue }
            if r.request.requireVersion != nil {
                fail(r, EngineError.versionRetired(field: "require_version", version: old.version, limit: versions.maxLive))
            } else {
                r.snapshot = versions.retainCurrent()
                versions.release(old)
                rebind(r, to: r.snapshot!)
            }
        }
    }

    /// `r` is now bound to `new` (its hold already taken): every unfinished admitted sample drops
    /// its blocks and waits to re-prefill prompt + generated tokens under `new` (`recompute`
    /// semantics; its `firstVersion` stays). Groups not admitted yet will admit under `new`.
    private func rebind(_ r: RequestState, to new: WeightSnapshot) {
        r.snapshot = new
        for g in r.groups {
            for s in g.samples where s.state != .finished {
                dropBlocks(s)
                s.forks = []
                s.state = .waitingForBlocks
                s.computed = 0
                s.cachedBlocks = 0
                s.cacheParent = 0
                s.version = new.version
            }
        }
    }

    /// Returns a sample's KV blocks to the pool.
    private func dropBlocks(_ s: Sample) {
        if s.kvSlot >= 0 { cache.closeSlot(s.kvSlot); s.kvSlot = -1 }
        if !s.ownedBlocks.isEmpty { cache.releaseBlocks(s.ownedBlocks); s.ownedBlocks = [] }
    }

    // MARK: admission

    /// Re-admits recomputing samples, then admits waiting prompt groups in order while their
    /// worst-case KV blocks fit; the first that does not fit stops admission (order is kept).
    /// Unbound groups bind to the current version, which a pending publication has already
    /// replaced (`installPublication` runs first), so nothing waits for a version.
    private func admit() {
        for s in active where s.state == .waitingForBlocks {
            guard readmit(s) else { return }
        }
        while let g = waiting.first {
            guard admit(g) else { return }
            waiting.removeFirst()
        }
    }

    private func cacheHits(version: UInt64, prompt: [Int32], limit: Int) -> [(entry: UInt64, block: Int32)] {
        guard config.prefixCache, limit > 0 else { return [] }
        return cache.lookup(version: version, prompt: prompt, maxBlocks: limit)
    }

    private func admit(_ g: PromptGroup) -> Bool {
        let r = g.request
        let snapshot = r.snapshot ?? versions.current
        let P = g.prompt.count, M = r.maxTokens, n = r.request.n, bs = cache.blockSize
        let total = cache.blocks(for: P + M - 1)
        let share = config.sharePromptAcrossSamples && n > 1
        // Leave at least one prompt token to run: its logits give the first sample.
        let hits = cacheHits(version: snapshot.version, prompt: g.prompt, limit: (P - 1) / bs)
        let hitBlocks = hits.map(\.block)
        let primaries = share ? 1 : n
        let need = primaries * (total - hits.count) + (share ? (n - 1) * (total - P / bs) : 0)
        guard need + cache.evictableAmong(hitBlocks) <= cache.availableCount else { return false }

        if r.snapshot == nil { r.snapshot = versions.retainCurrent() }
        let version = snapshot.version
        let promptHash = hashTokens(g.prompt)
        var primary: Sample?
        for i in 0..<n {
            let rng = RandomSource(mixing: [r.seed, UInt64(i), version, promptHash])
            var params = r.request.params
            params.maxTokens = M
            let s = Sample(group: g, index: i, state: .running,
                           sampler: Sampler(params: params, rng: rng, prompt: g.prompt),
                           text: TextAssembler(decoder: tokenizer.makeStreamDecoder(), stops: r.request.stop),
                           version: version)
            if share, let p = primary {
                s.state = .waitingForPrompt
                s.ownedBlocks = cache.allocate(total - P / bs)!
                p.forks.append(s)
            } else {
                cache.retainBlocks(hitBlocks)
                let owned = cache.allocate(total - hits.count)!
                s.kvSlot = cache.openSlot(hitBlocks + owned)
                s.computed = hits.count * bs
                s.cachedBlocks = hits.count
                s.cacheParent = hits.last?.entry ?? 0
                prefixHitTokens += UInt64(hits.count * bs)
                primary = s
            }
            g.samples.append(s)
            active.append(s)
        }
        r.promptTokens += P * n
        return true
    }

    private func readmit(_ s: Sample) -> Bool {
        let r = s.request
        let P = s.group.prompt.count, bs = cache.blockSize
        let total = cache.blocks(for: P + r.maxTokens - 1)
        let hits = cacheHits(version: s.version, prompt: s.group.prompt, limit: min(P / bs, (s.context.count - 1) / bs))
        let hitBlocks = hits.map(\.block)
        guard total - hits.count + cache.evictableAmong(hitBlocks) <= cache.availableCount else { return false }
        cache.retainBlocks(hitBlocks)
        let owned = cache.allocate(total - hits.count)!
        s.kvSlot = cache.openSlot(hitBlocks + owned)
        s.computed = hits.count * bs
        s.cachedBlocks = hits.count
        s.cacheParent = hits.last?.entry ?? 0
        prefixHitTokens += UInt64(hits.count * bs)
        s.state = .running
        return true
    }

    // MARK: forward

    private struct VersionBatch {
        var snapshot: WeightSnapshot
        var batch = ForwardBatch()
        /// (sample, tokens run this step)
        var parts: [(Sample, Int)] = []
        /// Samples whose logits row comes out, in row order.
        var rows: [Sample] = []
        /// Parts that are single-token decodes.
        var decodes = 0
    }

    /// Prefill tokens a step may run beside `decodes` single-token decodes, `budget` tokens of
    /// `maxTokensPerStep` left: all of them when nothing decodes, else what fills the step up to
    /// `decodingStepTokens`, at least a quarter of that (so admission goes on however many decode).
    static func prefillAllowance(decodes: Int, budget: Int, decodingStepTokens: Int) -> Int {
        guard decodes > 0 else { return budget }
        let target = max(1, decodingStepTokens)
        return min(budget, max(target - decodes, (target + 3) / 4))
    }

    /// Builds one batch per version (decodes first, up to `maxTokensPerStep`; then prefill chunks
    /// in admission order, up to `prefillAllowance`), runs them, samples.
    private func runModel() -> EngineStepReport {
        var report = EngineStepReport(tokens: 0, generated: 0, forwards: 0, hasWork: false)
        var budget = max(1, config.maxTokensPerStep)
        var batches: [UInt64: VersionBatch] = [:]
        func add(_ s: Sample, _ n: Int, decode: Bool = false) {
            let snap = s.request.snapshot!
            var vb = batches[snap.version] ?? VersionBatch(snapshot: snap)
            let end = s.computed + n
            let last = end == s.context.count
            vb.batch.append(Array(s.context[s.computed..<end]), startPos: s.computed, slot: s.kvSlot,
                            logits: last ? .last : .none)
            vb.parts.append((s, n))
            if decode { vb.decodes += 1 }
            if last { vb.rows.append(s) }
            batches[snap.version] = vb
            budget -= n
        }
        let running = active.filter { $0.state == .running }
        // A decode: one sampled token to run (a prompt's last token is prefill).
        func isDecode(_ s: Sample) -> Bool { s.context.count - s.computed == 1 && !s.generated.isEmpty }
        let decodes = running.filter(isDecode)
        if decodes.count > budget {
            decodeCursor %= decodes.count
            let rotated = decodes[decodeCursor...] + decodes[..<decodeCursor]
            decodeCursor += budget
            for s in rotated.prefix(budget) { add(s, 1, decode: true) }
        } else {
            for s in decodes { add(s, 1, decode: true) }
        }
        var prefill = Scheduler.prefillAllowance(decodes: decodes.count, budget: budget,
                                                 decodingStepTokens: config.decodingStepTokens)
        let pending = running.filter { !isDecode($0) && $0.context.count > $0.computed }
        if decodes.isEmpty {
            // Nothing decodes: the prompts pending now form a wave (prompts admitted later wait for
            // it to end). Its prompts run all but their last token, a whole step at a time; their
            // last tokens run together once they all fit in the step, so the wave's sequences get
            // their first tokens in the same step and start decoding together — nobody decodes
            // while the wave prefills, and no sequence waits behind it.
            var wave = pending.filter(\.inWave)
            if wave.isEmpty {
                for s in pending { s.inWave = true }
                wave = pending
            }
            let total = wave.reduce(0) { $0 + $1.context.count - $1.computed }
            let holdLast = total > prefill && total > wave.count
            for s in wave {
                guard prefill > 0 else { break }
                let n = min(s.context.count - s.computed - (holdLast ? 1 : 0), prefill)
                guard n > 0 else { continue }
                add(s, n)
                prefill -= n
            }
        } else {
            for s in active where s.inWave { s.inWave = false }
            for s in pending {
                guard prefill > 0 else { break }
                let n = min(s.context.count - s.computed, prefill)
                add(s, n)
                prefill -= n
            }
        }

        for version in batches.keys.sorted() {
            let vb = batches[version]!
            let f0 = DispatchTime.now().uptimeNanoseconds
            let logits: UnsafeMutablePointer<Float>
            do {
                logits = try vb.snapshot.model.forward(vb.batch, kv: cache, acts: acts)
            } catch {
                forwardSeconds += Double(DispatchTime.now().uptimeNanoseconds - f0) * 1e-9
                for (s, _) in vb.parts where s.state != .finished { fail(s.request, .forwardFailed(reason: "\(error)")) }
                continue
            }
            forwardSeconds += Double(DispatchTime.now().uptimeNanoseconds - f0) * 1e-9
            forwards += 1
            report.forwards += 1
            report.tokens += vb.batch.tokens.count
            report.decodeTokens += vb.decodes
            report.prefillTokens += vb.batch.tokens.count - vb.decodes
            let s0 = DispatchTime.now().uptimeNanoseconds
            for (s, n) in vb.parts {
                if s.context.count - s.computed > 1 || s.generated.isEmpty { promptTokensComputed += UInt64(n) }
                s.computed += n
                registerPromptBlocks(s)
            }
            // Every sample drawing from this forward, with its logits row (a shared prompt's forks
            // draw from their primary's row).
            var work: [(sample: Sample, row: Int)] = []
            for (r, s) in vb.rows.enumerated() {
                if !s.forks.isEmpty { attachForks(of: s) }
                work.append((s, r))
                for f in s.forks { work.append((f, r)) }
                s.forks = []
            }
            let draws = drawAll(work, logits: logits)
            let now = DispatchTime.now().uptimeNanoseconds
            for (k, w) in work.enumerated() { record(w.sample, draws[k], time: now) }
            report.generated += work.count
            sampleSeconds += Double(DispatchTime.now().uptimeNanoseconds - s0) * 1e-9
        }
        tokensGenerated += UInt64(report.generated)
        return report
    }

    /// Records the prompt's full blocks that are now computed in the prefix cache.
    private func registerPromptBlocks(_ s: Sample) {
        guard config.prefixCache else { return }
        let bs = cache.blockSize
        let prompt = s.group.prompt
        let table = cache.table(s.kvSlot)
        while s.cachedBlocks < prompt.count / bs && (s.cachedBlocks + 1) * bs <= s.computed {
            let j = s.cachedBlocks
            s.cacheParent = cache.register(version: s.version, parent: s.cacheParent,
                                           tokens: Array(prompt[j * bs..<(j + 1) * bs]), block: table[j])
            s.cachedBlocks += 1
        }
    }

    /// The shared prompt is ready: each fork takes the full prompt blocks and a copy of the partial
    /// last block.
    private func attachForks(of p: Sample) {
        let P = p.group.prompt.count, bs = cache.blockSize
        let table = cache.table(p.kvSlot)
        let full = Array(table[0..<P / bs])
        for f in p.forks {
            cache.retainBlocks(full)
            f.kvSlot = cache.openSlot(full + f.ownedBlocks)
            if P % bs != 0 { cache.copyRows(from: table[P / bs], to: f.ownedBlocks[0], rows: P % bs) }
            f.ownedBlocks = []
            f.computed = P
            f.state = .running
        }
    }

    /// A sampled token with its log-probability under the unmodified policy and the alternatives.
    struct Draw {
        var token: Int32 = 0
        var logprob: Float = 0
        var top: [TokenLogprob] = []
    }

    /// Samples the next token of each sample from its logits row, on `config.samplingThreads`
    /// threads (each sample's sampler is touched by one thread only; nothing else is shared).
    private func drawAll(_ work: [(sample: Sample, row: Int)], logits: UnsafeMutablePointer<Float>) -> [Draw] {
        let V = modelConfig.vocabSize
        var out = [Draw](repeating: Draw(), count: work.count)
        let threads = min(max(1, config.samplingThreads), work.count)
        out.withUnsafeMutableBufferPointer { buf in
            nonisolated(unsafe) let buf = buf
            nonisolated(unsafe) let work = work
            nonisolated(unsafe) let base = UnsafePointer(logits)
            let body: @Sendable (Int) -> Void = { part in
                for k in stride(from: part, to: work.count, by: threads) {
                    let s = work[k].sample
                    let row = base + work[k].row * V
                    let tok = s.sampler.sample(row, vocab: V)
                    s.sampler.accept(tok)
                    let lp = logProbability(of: tok, logits: row, vocab: V)
                    let k2 = s.request.request.topLogprobs
                    buf[k] = Draw(token: tok, logprob: lp,
                                  top: k2 > 0 ? topAlternatives(row, vocab: V, k: k2, lse: row[Int(tok)] - lp) : [])
                }
            }
            if threads == 1 { body(0) } else { DispatchQueue.concurrentPerform(iterations: threads, execute: body) }
        }
        return out
    }

    /// Records a drawn token, streams it, and ends the sample on a stop token, a stop string or max
    /// tokens.
    private func record(_ s: Sample, _ d: Draw, time: UInt64) {
        let r = s.request
        let tok = d.token, lp = d.logprob, top = d.top
        s.generated.append(tok)
        s.logprobs.append(lp)
        if r.request.topLogprobs > 0 { s.top.append(top) }
        s.context.append(tok)
        if !r.firstTokenSent {
            r.firstTokenSent = true
            emit(.firstToken(r.id, time: time))
        }
        var reason: StopReason?
        var delta: String
        if r.stopTokens.contains(tok) {
            reason = .eos
            delta = s.text.finish()
        } else {
            let (d, stopped) = s.text.append(tok)
            delta = d
            if stopped { reason = .stop } else if s.generated.count >= r.maxTokens { reason = .length }
            if reason != nil { delta += s.text.finish() }
        }
        if r.request.stream {
            emit(.chunk(StreamChunk(id: r.id, promptIndex: s.group.promptIndex, sampleIndex: s.index, tokens: [tok],
                                    textDelta: delta, logprobs: [lp], topLogprobs: r.request.topLogprobs > 0 ? [top] : [],
                                    version: s.version, time: time)))
        }
        if let reason { finish(s, reason, time: time) }
    }

    /// Ends a sample: frees its blocks at once, emits its result (and the request's `.done` after
    /// its last sample).
    private func finish(_ s: Sample, _ reason: StopReason, time: UInt64 = DispatchTime.now().uptimeNanoseconds) {
        let r = s.request
        if reason == .cancelled {
            let rest = s.text.finish()
            if r.request.stream && !rest.isEmpty {
                emit(.chunk(StreamChunk(id: r.id, promptIndex: s.group.promptIndex, sampleIndex: s.index, tokens: [],
                                        textDelta: rest, logprobs: [], topLogprobs: [], version: s.version, time: time)))
            }
        }
        dropBlocks(s)
        for f in s.forks where f.state != .finished { finish(f, reason == .cancelled ? .cancelled : reason, time: time) }
        s.forks = []
        s.state = .finished
        r.completionTokens += s.generated.count
        emit(.sample(FinishedSample(
            id: r.id, promptIndex: s.group.promptIndex, sampleIndex: s.index, tokens: s.generated, text: s.text.text,
            logprobs: s.logprobs, topLogprobs: s.top, finishReason: reason, promptTokens: s.group.prompt.count,
            version: s.version, firstVersion: s.firstVersion, time: time)))
        sampleDone(r)
    }

    private func sampleDone(_ r: RequestState) {
        r.unfinishedSamples -= 1
        guard r.unfinishedSamples == 0 else { return }
        emit(.done(RequestDone(id: r.id, samples: r.request.prompts.count * r.request.n, promptTokens: r.promptTokens,
                               completionTokens: r.completionTokens, cancelled: r.cancelled)))
        requests.removeValue(forKey: r.id)
        if let snap = r.snapshot { versions.release(snap) }
        r.snapshot = nil
    }

    /// `r` cannot go on (the model threw on a batch holding its sequences, or its pinned version
    /// was retired): report `error` and drop the request.
    private func fail(_ r: RequestState, _ error: EngineError) {
        guard requests[r.id] != nil else { return }
        let groupIDs = Set(r.groups.map { ObjectIdentifier($0) })
        waiting.removeAll { groupIDs.contains(ObjectIdentifier($0)) }
        for g in r.groups { for s in g.samples where s.state != .finished { dropBlocks(s); s.state = .finished } }
        emit(.error(r.id, error))
        requests.removeValue(forKey: r.id)
        r.cancelled = true
        if let snap = r.snapshot { versions.release(snap) }
        r.snapshot = nil
    }

    // MARK: scoring

    /// Runs queued score requests (at least one per step, more while the token budget lasts), each
    /// as one full-sequence forward without the KV cache.
    private func runScores(_ report: inout EngineStepReport) {
        var budget = max(1, config.maxTokensPerStep - report.tokens)
        while let task = scores.first {
            let tokens = task.request.items.reduce(0) { $0 + $1.prompt.count + $1.continuation.count - 1 }
            guard report.tokens == 0 || tokens <= budget else { break }
            scores.removeFirst()
            budget -= tokens
            report.tokens += tokens
            let snap = task.snapshot ?? versions.retainCurrent()
            defer { versions.release(snap) }
            do {
                let items = try score(task.request, model: snap.model, report: &report)
                emit(.score(ScoringResult(id: task.id, version: snap.version, items: items)))
            } catch {
                emit(.error(task.id, .forwardFailed(reason: "\(error)")))
            }
        }
    }

    private func score(_ req: ScoringRequest, model: LlamaModel, report: inout EngineStepReport) throws -> [ScoredContinuation] {
        let V = modelConfig.vocabSize
        var out: [ScoredContinuation] = []
        // Several items per forward, up to ~512 logits rows (each row is a vocabulary of floats).
        var i = 0
        while i < req.items.count {
            var batch = ForwardBatch()
            var spans: [(item: Int, row: Int)] = []
            var rows = 0
            while i < req.items.count && (spans.isEmpty || rows + req.items[i].continuation.count <= 512) {
                let it = req.items[i]
                let start = batch.tokens.count
                batch.append(it.prompt + it.continuation.dropLast(), startPos: 0, slot: spans.count, logits: .none)
                spans.append((i, rows))
                for j in 0..<it.continuation.count { batch.logitRows.append(Int32(start + it.prompt.count - 1 + j)) }
                rows += it.continuation.count
                i += 1
            }
            let f0 = DispatchTime.now().uptimeNanoseconds
            let logits = try model.forward(batch, kv: nil, acts: acts)
            forwardSeconds += Double(DispatchTime.now().uptimeNanoseconds - f0) * 1e-9
            forwards += 1
            report.forwards += 1
            for (item, row0) in spans {
                let cont = req.items[item].continuation
                var lps: [Float] = [], tops: [[TokenLogprob]] = [], ents: [Float] = [], total = 0.0
                for (j, t) in cont.enumerated() {
                    let row = UnsafePointer(logits + (row0 + j) * V)
                    let lp = logProbability(of: t, logits: row, vocab: V)
                    lps.append(lp)
                    total += Double(lp)
                    if req.topLogprobs > 0 {
                        tops.append(topAlternatives(row, vocab: V, k: req.topLogprobs, lse: row[Int(t)] - lp))
                    }
                    if req.entropy { ents.append(Float(kernels_entropy(row, Int32(V)))) }
                }
                out.append(ScoredContinuation(tokens: cont, logprobs: lps, totalLogprob: total, topLogprobs: tops, entropies: ents))
            }
        }
        return out
    }

    // MARK: status

    /// Generated tokens per second over the last few seconds.
    func tokensPerSecond() -> Double {
        let t = Double(DispatchTime.now().uptimeNanoseconds) * 1e-9
        rateWindow.append((t, tokensGenerated))
        rateWindow.removeAll { t - $0.time > 5 }
        guard let first = rateWindow.first, t - first.time > 0.05 else { return 0 }
        return Double(tokensGenerated - first.tokens) / (t - first.time)
    }
}
