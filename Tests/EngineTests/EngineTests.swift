import Foundation
import XCTest
@testable import Engine
import Model
import Tokenizer

/// Scheduling, the KV pool, versions, cancellation, validation and threads, on the tiny 2-layer
/// fixture model (vocabulary 97, context 64) where a small model suffices.
final class EngineTests: XCTestCase {
    let tok = Fixtures.tinyTokenizer

    /// Bytes of one tiny-model block of `bs` tokens, in MB (to size pools in blocks).
    func poolMB(blocks: Int, model: LlamaModel, blockSize bs: Int) -> Double {
        Double(blocks * PagedKVCache.bytesPerBlock(config: model.config, blockSize: bs)) / 1_048_576
    }

    func config(_ model: LlamaModel, blocks: Int = 256, blockSize: Int = 4, _ f: (inout EngineConfig) -> Void = { _ in }) -> EngineConfig {
        var c = EngineConfig()
        c.blockSize = blockSize
        c.kvCacheMB = poolMB(blocks: blocks, model: model, blockSize: blockSize)
        f(&c)
        return c
    }

    var greedy: SamplerSettings {
        var p = SamplerSettings()
        p.temperature = 0
        return p
    }

    func prompt(_ n: Int, _ salt: Int = 0) -> [Int32] { (0..<n).map { Int32(3 + ($0 * 7 + salt * 13) % 94) } }

    /// `SingleSequenceGenerator` (greedy, no stop tokens) for reference.
    func reference(_ model: LlamaModel, _ prompt: [Int32], _ maxTokens: Int) throws -> SingleSequenceGenerator.Output {
        var p = greedy
        p.maxTokens = maxTokens
        return try SingleSequenceGenerator(model: model).generate(prompt: prompt, params: p, stopTokens: [])
    }

    func request(_ prompt: [Int32], maxTokens: Int, n: Int = 1, _ f: (inout GenerationRequest) -> Void = { _ in }) -> GenerationRequest {
        var r = GenerationRequest(prompt: prompt, params: greedy, maxTokens: maxTokens, n: n)
        r.ignoreEOS = true
        f(&r)
        return r
    }

    /// The sampling rule on a known distribution: weights 1, 0.5, 0.25, 0.25 (probabilities 1/2,
    /// 1/4, 1/8, 1/8). top-p keeps the fewest most likely tokens reaching p (ties at the edge
    /// included), min-p drops those below min-p × the best, top-k keeps k; draws follow the kept
    /// probabilities.
    func testSamplingRuleOnAKnownDistribution() {
        let logits: [Float] = [log(4), log(2), 0, 0]
        func draws(_ f: (inout SamplerSettings) -> Void) -> [Int] {
            var p = SamplerSettings()
            f(&p)
            var s = Sampler(params: p, rng: RandomSource(seed: 9))
            var counts = [0, 0, 0, 0]
            for _ in 0..<4000 { counts[Int(logits.withUnsafeBufferPointer { s.sample($0.baseAddress!, vocab: 4) })] += 1 }
            return counts
        }
        XCTAssertEqual(draws { $0.topP = 0.5 }, [4000, 0, 0, 0])
        let two = draws { $0.topP = 0.7 }
        XCTAssertEqual(two[2] + two[3], 0)
        XCTAssertEqual(Double(two[0]) / Double(two[1]), 2, accuracy: 0.25)
        XCTAssertTrue(draws { $0.topP = 0.8 }.allSatisfy { $0 > 300 }, "ties at the edge are kept")
        XCTAssertEqual(draws { $0.minP = 0.3 }.suffix(2), [0, 0])
        XCTAssertEqual(draws { $0.topK = 1 }, [4000, 0, 0, 0])
        let all = draws { _ in }
        XCTAssertEqual(Double(all[0]) / 4000, 0.5, accuracy: 0.03)
        XCTAssertEqual(Double(all[3]) / 4000, 0.125, accuracy: 0.02)
        XCTAssertEqual(draws { $0.temperature = 0 }, [4000, 0, 0, 0])
    }

    /// Paged KV (blocks of 4, gathers, chunked prefill with a budget of 8 tokens per step) gives
    /// the same tokens and log-probs as one contiguous cache, for many concurrent requests.
    func testPagedChunkedBatchingMatchesSingleSequence() throws {
        let model = try Fixtures.tiny()
        let engine = try GenerationEngine(model: model, tokenizer: tok, config: config(model) { $0.maxTokensPerStep = 8 })
        var expected: [RequestID: SingleSequenceGenerator.Output] = [:]
        for i in 0..<10 {
            let p = prompt(5 + 3 * i, i)
            let m = 40 - 3 * i
            expected[try engine.submit(request(p, maxTokens: m))] = try reference(model, p, m)
        }
        let out = engine.runUntilIdle()
        for (id, e) in expected {
            let s = out[id]!.samples[0]
            XCTAssertEqual(s.tokens, e.ids, "\(id)")
            for (a, b) in zip(s.logprobs, e.logprobs) { XCTAssertEqual(a, b, accuracy: 1e-4) }
            XCTAssertEqual(s.finishReason, .length)
        }
        XCTAssertGreaterThan(engine.status().steps, 40, "the 8-token budget spreads prefill over many steps")
        XCTAssertEqual(engine.status().kvBlocksUsed, 0)
    }

    /// When the pool is full, later requests wait in order and complete once blocks free up; a
    /// request that could never fit is refused at once.
    func testPoolExhaustionQueuesAndLaterCompletes() throws {
        let model = try Fixtures.tiny()
        // Each request: 10 + 20 - 1 positions = 8 blocks of 4; the pool holds 3 such requests.
        let engine = try GenerationEngine(model: model, tokenizer: tok, config: config(model, blocks: 24))
        XCTAssertEqual(engine.kvBlocksTotal, 24)
        var ids: [RequestID] = []
        var expected: [[Int32]] = []
        for i in 0..<7 {
            let p = prompt(10, i)
            ids.append(try engine.submit(request(p, maxTokens: 20)))
            expected.append(try reference(model, p, 20).ids)
        }
        var outcomes: [RequestID: Outcome] = [:]
        engine.step()
        engine.collect(into: &outcomes)
        var s = engine.status()
        XCTAssertEqual(s.runningSequences, 3)
        XCTAssertEqual(s.waitingRequests, 4)
        XCTAssertEqual(s.kvBlocksUsed, 24)
        // Admission keeps order: request 4 runs only once one of the first three finished.
        var order: [RequestID] = []
        var more = true
        while more {
            more = engine.step().hasWork
            for e in engine.drainEvents() {
                if case let .done(d) = e { order.append(d.id) }
                if case let .sample(x) = e { outcomes[x.id, default: Outcome()].samples.append(x) }
            }
        }
        XCTAssertEqual(order, ids, "same-length requests finish in admission order")
        for (i, id) in ids.enumerated() { XCTAssertEqual(outcomes[id]?.samples.first?.tokens, expected[i], "request \(i)") }
        s = engine.status()
        XCTAssertEqual(s.kvBlocksUsed, 0)
        XCTAssertEqual(s.runningSequences + s.waitingRequests, 0)

        // 4 samples × (prompt 10 + 50 tokens) cannot fit in 24 blocks even with the prompt shared.
        XCTAssertThrowsError(try engine.submit(request(prompt(10), maxTokens: 50, n: 4))) { e in
            guard case let .exceedsKVPool(field, needed, total, _)? = e as? EngineError else { return XCTFail("\(e)") }
            XCTAssertEqual(field, "sampling.max_tokens")
            XCTAssertEqual(total, 24)
            XCTAssertGreaterThan(needed, 24)
            XCTAssertTrue("\(e)".contains("max_tokens"))
        }
    }

    /// Cancelling everything at any point (waiting, mid-prefill, decoding, sharing a prompt) ends
    /// every sample with `cancelled`, emits `done`, and leaves no block in use.
    func testCancelEverythingEmptiesThePool() throws {
        let model = try Fixtures.tiny()
        let engine = try GenerationEngine(model: model, tokenizer: tok, config: config(model, blocks: 40) { $0.maxTokensPerStep = 12 })
        var ids: [RequestID] = []
        for i in 0..<6 {
            ids.append(try engine.submit(request(prompt(9 + 4 * i, i), maxTokens: 30, n: 1 + i % 3) { $0.stream = i % 2 == 0 }))
        }
        var outcomes: [RequestID: Outcome] = [:]
        for _ in 0..<3 { engine.step() }
        engine.collect(into: &outcomes)
        var s = engine.status()
        XCTAssertGreaterThan(s.kvBlocksUsed, 0)
        XCTAssertGreaterThan(s.waitingRequests, 0, "some requests still wait for blocks")
        let late = try engine.submit(request(prompt(7), maxTokens: 5))  // still in the inbox
        ids.append(late)
        let scoring = try engine.score(ScoringRequest(items: [ScoringItem(prompt: prompt(5), continuation: [4, 5])]))
        for id in ids + [scoring] { XCTAssertTrue(engine.cancel(id)) }
        engine.step()
        engine.collect(into: &outcomes)
        XCTAssertEqual(outcomes[scoring]?.error, .cancelled)
        XCTAssertNil(outcomes[late]?.firstToken, "never ran")
        XCTAssertNotNil(outcomes[ids[0]]?.firstToken)
        s = engine.status()
        XCTAssertEqual(s.kvBlocksUsed, 0)
        XCTAssertEqual(s.runningSequences, 0)
        XCTAssertEqual(s.waitingRequests, 0)
        XCTAssertEqual(s.kvBlocksCached + engine.scheduler.cache.freeCount, s.kvBlocksTotal)
        XCTAssertFalse(engine.step().hasWork)
        for (i, id) in ids.enumerated() {
            let o = outcomes[id]!
            let n = i < 6 ? 1 + i % 3 : 1
            XCTAssertEqual(o.samples.count, n, "request \(i)")
            XCTAssertTrue(o.samples.allSatisfy { $0.finishReason == .cancelled }, "request \(i)")
            XCTAssertEqual(o.done?.cancelled, true)
            for smp in o.samples where !o.chunks.isEmpty {
                let streamed = o.chunks.filter { $0.sampleIndex == smp.sampleIndex }
                XCTAssertEqual(streamed.map(\.textDelta).joined(), smp.text)
                XCTAssertEqual(streamed.flatMap(\.tokens), smp.tokens)
            }
        }
        XCTAssertFalse(engine.cancel(ids[0]), "a finished request is unknown to cancel")
        XCTAssertFalse(engine.cancel(RequestID(9999)))
    }

    /// Invalid parameters are refused at submission with errors that name the field.
    func testInvalidParametersAreRefusedNamingTheField() throws {
        let model = try Fixtures.tiny()
        let engine = try GenerationEngine(model: model, tokenizer: tok, config: config(model, blocks: 40))
        let ok = request(prompt(10), maxTokens: 8)
        var cases: [(String, (inout GenerationRequest) -> Void)] = [
            ("sampling.temperature", { $0.params.temperature = -0.5 }),
            ("sampling.top_p", { $0.params.topP = 0 }),
            ("sampling.top_p", { $0.params.topP = 1.5 }),
            ("sampling.top_k", { $0.params.topK = -1 }),
            ("sampling.min_p", { $0.params.minP = 2 }),
            ("n", { $0.n = 0 }),
            ("n", { $0.n = 65 }),
            ("prompts[0].ids[2]", { $0.prompts[0][2] = 97 }),
            ("prompts[1].ids[0]", { $0.prompts.append([-1, 5]) }),
            ("prompts[0]", { $0.prompts[0] = [] }),
            ("prompts[0]", { $0.prompts[0] = Array(repeating: 5, count: 64) }),  // fills the context
            ("prompts", { $0.prompts = [] }),
            ("sampling.max_tokens", { $0.maxTokens = 0 }),
            ("sampling.max_tokens", { $0.maxTokens = 60 }),  // 10 + 60 > context 64
            ("top_logprobs", { $0.topLogprobs = 21 }),
            ("stop[1]", { $0.stop = ["x", ""] }),
            ("stop_token_ids[0]", { $0.stopTokenIDs = [500] }),
            ("require_version", { $0.requireVersion = 9 }),
            ("recompute", { $0.recompute = true; $0.requireVersion = 1 }),
            ("sampling.max_tokens", { $0.maxTokens = 50; $0.n = 3 }), // 15 + 2 × 13 blocks exceed the 40-block pool
        ]
        cases.append(("sampling.repetition_penalty", { $0.params.repetitionPenalty = 0 }))
        for (fieldName, mutate) in cases {
            var r = ok
            mutate(&r)
            XCTAssertThrowsError(try engine.submit(r), fieldName) { e in
                XCTAssertEqual(field(of: e), fieldName, "\(e)")
                XCTAssertTrue("\(e)".contains(fieldName), "\(e)")
            }
        }
        XCTAssertNoThrow(try engine.submit(ok))
        XCTAssertThrowsError(try engine.score(ScoringRequest(items: [ScoringItem(prompt: [5], continuation: [])]))) {
            XCTAssertEqual(field(of: $0), "items[0].continuation")
        }
        XCTAssertThrowsError(try engine.score(ScoringRequest(items: [ScoringItem(prompt: [5], continuation: [7])], version: 4))) {
            XCTAssertEqual(field(of: $0), "version")
        }
        XCTAssertThrowsError(try engine.publish(weights: model.weights.copy(), version: 1)) {
            XCTAssertEqual($0 as? EngineError, .staleVersion(version: 1, newest: 1))
        }
        var other = model.config
        other.nLayers = 1
        XCTAssertThrowsError(try engine.publish(weights: ParameterSet(config: other), version: 2)) {
            guard case .incompatibleWeights? = $0 as? EngineError else { return XCTFail("\($0)") }
        }
        XCTAssertThrowsError(try engine.encode(text: "hi", chat: true)) { XCTAssertEqual($0 as? EngineError, .noChatTemplate) }
        var bad = EngineConfig()
        bad.kvCacheMB = 0.000001
        XCTAssertThrowsError(try GenerationEngine(model: model, tokenizer: tok, config: bad)) {
            guard case .invalidConfig(field: "kv_cache_mb", _)? = $0 as? EngineError else { return XCTFail("\($0)") }
        }
    }

    /// With `recompute`, a swap re-prefills the request's sequences (prompt + generated) under the
    /// new version: tokens before it are version 1's greedy continuation, tokens after it version
    /// 2's greedy continuation of everything so far; first and last version are reported. A request
    /// without it finishes on version 1, which is then freed.
    func testRecomputeMovesToTheNewVersionAndReportsBoth() throws {
        let model = try Fixtures.tiny()
        let v2 = LlamaModel(weights: Fixtures.perturbed(model, eps: 0.5))
        let engine = try GenerationEngine(model: model, tokenizer: tok, config: config(model))
        let p = prompt(8, 3)
        let moving = try engine.submit(request(p, maxTokens: 20, n: 2) { $0.recompute = true; $0.stream = true })
        let staying = try engine.submit(request(p, maxTokens: 20))
        for _ in 0..<6 { engine.step() }
        try engine.publish(weights: v2.weights.copy(), version: 2)
        var outcomes: [RequestID: Outcome] = [:]
        engine.runUntilIdle(into: &outcomes)
        XCTAssertEqual(engine.status().liveVersions, [2])

        let ref1 = try reference(model, p, 20)
        let st = outcomes[staying]!.samples[0]
        XCTAssertEqual(st.tokens, ref1.ids)
        XCTAssertEqual(st.version, 1)
        XCTAssertEqual(st.firstVersion, 1)

        for s in outcomes[moving]!.ordered {
            XCTAssertEqual(s.firstVersion, 1)
            XCTAssertEqual(s.version, 2)
            let chunks = outcomes[moving]!.chunks.filter { $0.sampleIndex == s.sampleIndex }
            let k = chunks.filter { $0.version == 1 }.count
            XCTAssertEqual(k, 6, "one token per step before the swap")
            XCTAssertEqual(Array(s.tokens[..<k]), Array(ref1.ids[..<k]))
            let cont = try reference(v2, p + s.tokens[..<k], 20 - k)
            XCTAssertEqual(Array(s.tokens[k...]), cont.ids, "sample \(s.sampleIndex) continues greedily under version 2")
            for (a, b) in zip(s.logprobs[k...], cont.logprobs) { XCTAssertEqual(a, b, accuracy: 1e-4) }
            XCTAssertNotEqual(Array(s.tokens[k...]), Array(ref1.ids[k...]), "version 2 must change the continuation")
        }
    }

    /// Prefix-cache entries are keyed by version: after a publication the same prompt hits nothing
    /// and its samples equal a fresh engine's on the new weights; under the same version it hits.
    func testPrefixCacheIsKeyedByVersion() throws {
        let model = try Fixtures.tiny()
        let v2 = Fixtures.perturbed(model, eps: 0.5)
        let engine = try GenerationEngine(model: model, tokenizer: tok, config: config(model))
        let p = prompt(23, 5)
        let r = request(p, maxTokens: 10, n: 3) { $0.params = SamplerSettings(); $0.params.seed = 17 }
        let a = try engine.submit(r)
        let first = engine.runUntilIdle()[a]!.ordered
        let b = try engine.submit(r)
        let second = engine.runUntilIdle()[b]!.ordered
        XCTAssertEqual(engine.status().prefixCacheHitTokens, 20, "5 full blocks of 4 (the last prompt token is recomputed)")
        XCTAssertEqual(first.map(\.tokens), second.map(\.tokens))

        try engine.publish(weights: v2.copy(), version: 2)
        let c = try engine.submit(r)
        let third = engine.runUntilIdle()[c]!.ordered
        XCTAssertEqual(engine.status().prefixCacheHitTokens, 20, "no hit across versions")
        let fresh = try GenerationEngine(model: LlamaModel(weights: v2), version: 2, tokenizer: tok, config: config(model))
        let d = try fresh.submit(r)
        let expected = fresh.runUntilIdle()[d]!.ordered
        XCTAssertEqual(third.map(\.tokens), expected.map(\.tokens))
        for (x, y) in zip(third, expected) { for (u, v) in zip(x.logprobs, y.logprobs) { XCTAssertEqual(u, v, accuracy: 1e-4) } }
        XCTAssertTrue(third.allSatisfy { $0.version == 2 })
    }

    /// Evicting least-recently-used cache blocks when the pool runs short.
    func testPrefixCacheEvictsWhenBlocksAreShort() throws {
        let model = try Fixtures.tiny()
        let engine = try GenerationEngine(model: model, tokenizer: tok, config: config(model, blocks: 16))
        for i in 0..<6 {
            let id = try engine.submit(request(prompt(17, i), maxTokens: 8))
            let o = engine.runUntilIdle()[id]!
            XCTAssertEqual(o.samples[0].tokens, try reference(model, prompt(17, i), 8).ids)
            XCTAssertEqual(engine.status().kvBlocksUsed, 0)
            XCTAssertLessThanOrEqual(engine.status().kvBlocksCached, 16)
        }
        XCTAssertGreaterThan(engine.status().kvBlocksCached, 0)
        // The most recent prompt is still cached; the first was evicted.
        let hits = engine.status().prefixCacheHitTokens
        _ = try engine.submit(request(prompt(17, 5), maxTokens: 8))
        _ = engine.runUntilIdle()
        XCTAssertEqual(engine.status().prefixCacheHitTokens - hits, 16)
        let hits2 = engine.status().prefixCacheHitTokens
        _ = try engine.submit(request(prompt(17, 0), maxTokens: 8))
        _ = engine.runUntilIdle()
        XCTAssertEqual(engine.status().prefixCacheHitTokens, hits2)
    }

    /// At most `maxLiveVersions` versions are alive: a publication beyond it is still installed at
    /// the next step (admission never waits) and retires the version cheapest to give up (here the
    /// younger sequence's), which moves to the new one; a newer publication replaces one not
    /// installed yet.
    func testLiveVersionLimitRetiresTheCheapestVersion() throws {
        let model = try Fixtures.tiny()
        let engine = try GenerationEngine(model: model, tokenizer: tok, config: config(model) { $0.maxLiveVersions = 2 })
        let a = try engine.submit(request(prompt(8), maxTokens: 30))
        for _ in 0..<10 { engine.step() }
        try engine.publish(weights: Fixtures.perturbed(model, seed: 2), version: 2)
        let b = try engine.submit(request(prompt(8), maxTokens: 10))
        engine.step()
        XCTAssertEqual(engine.status().liveVersions, [1, 2])
        try engine.publish(weights: Fixtures.perturbed(model, seed: 3), version: 3)
        try engine.publish(weights: Fixtures.perturbed(model, seed: 4), version: 4)
        XCTAssertEqual(engine.status().pendingVersion, 4, "version 4 replaced the pending version 3")
        let c = try engine.submit(request(prompt(8), maxTokens: 4))
        engine.step()
        var s = engine.status()
        XCTAssertEqual(s.currentVersion, 4)
        XCTAssertNil(s.pendingVersion)
        XCTAssertEqual(s.liveVersions, [1, 4], "version 2 (8 computed positions, against 18) was retired")
        XCTAssertEqual(s.waitingRequests, 0, "admission does not wait for a version")
        var outcomes: [RequestID: Outcome] = [:]
        engine.runUntilIdle(into: &outcomes)
        XCTAssertEqual(outcomes[a]!.samples[0].version, 1, "the long generation keeps its version")
        XCTAssertEqual(outcomes[b]!.samples[0].version, 4, "moved off the retired version")
        XCTAssertEqual(outcomes[b]!.samples[0].firstVersion, 2)
        XCTAssertEqual(outcomes[b]!.samples[0].tokens.count, 10)
        XCTAssertEqual(outcomes[c]!.samples[0].version, 4)
        s = engine.status()
        XCTAssertEqual(s.currentVersion, 4)
        XCTAssertEqual(s.liveVersions, [4])
        XCTAssertNil(s.pendingVersion)
    }

    /// With one live version every publication moves all running sequences at once, and a request
    /// pinned to the old version ends with `versionRetired` (nothing deadlocks, nothing waits).
    func testOneLiveVersionMovesEverythingAndEndsPinnedRequests() throws {
        let model = try Fixtures.tiny()
        let engine = try GenerationEngine(model: model, tokenizer: tok, config: config(model) { $0.maxLiveVersions = 1 })
        let a = try engine.submit(request(prompt(8), maxTokens: 6))
        engine.step()
        try engine.publish(weights: Fixtures.perturbed(model), version: 2)
        let c = try engine.submit(request(prompt(9), maxTokens: 4))
        let p = try engine.submit(request(prompt(10), maxTokens: 4) { $0.requireVersion = 1 })
        engine.step()
        XCTAssertNil(engine.status().pendingVersion)
        XCTAssertEqual(engine.status().liveVersions, [2])
        let out = engine.runUntilIdle(maxSteps: 200)
        XCTAssertEqual(out[a]?.samples.first?.version, 2)
        XCTAssertEqual(out[a]?.samples.first?.firstVersion, 1)
        XCTAssertEqual(out[p]?.error, .versionRetired(field: "require_version", version: 1, limit: 1))
        XCTAssertEqual(out[p]?.samples.count, 0)
        XCTAssertEqual(out[c]?.samples.first?.version, 2)
        XCTAssertEqual(engine.status().liveVersions, [2])
    }

    /// Penalties change which token is drawn, never the reported log-probs (always the raw
    /// policy's log-softmax).
    func testPenaltiesChangeTheDrawNotTheLogprobs() throws {
        let model = try Fixtures.tiny()
        let engine = try GenerationEngine(model: model, tokenizer: tok, config: config(model))
        let p = prompt(6, 2)
        let plain = try engine.submit(request(p, maxTokens: 24))
        let penalised = try engine.submit(request(p, maxTokens: 24) { $0.params.presencePenalty = 50 })
        let out = engine.runUntilIdle()
        let a = out[plain]!.samples[0], b = out[penalised]!.samples[0]
        XCTAssertLessThan(Set(a.tokens).count, a.tokens.count, "plain greedy repeats itself")
        XCTAssertEqual(Set(b.tokens).count, b.tokens.count, "presence penalty forbids repeats")
        let logits = try fullLogits(model, p + b.tokens)
        let V = model.config.vocabSize
        for (j, t) in b.tokens.enumerated() {
            let ref = logits.withUnsafeBufferPointer { referenceLogprob($0.baseAddress! + (p.count - 1 + j) * V, vocab: V, token: t) }
            XCTAssertEqual(Double(b.logprobs[j]), ref, accuracy: 1e-4)
        }
    }

    /// Sampling on several threads changes nothing: each sample owns its random stream.
    func testSamplingThreadsDoNotChangeSamples() throws {
        let model = try Fixtures.tiny()
        var outs: [[[Int32]]] = []
        for threads in [1, 3] {
            let engine = try GenerationEngine(model: model, tokenizer: tok, config: config(model) { $0.samplingThreads = threads })
            let id = try engine.submit(request(prompt(12), maxTokens: 16, n: 7) { $0.params = SamplerSettings(); $0.params.seed = 5 })
            outs.append(engine.runUntilIdle()[id]!.ordered.map(\.tokens))
        }
        XCTAssertEqual(outs[0], outs[1])
        XCTAssertGreaterThan(Set(outs[0]).count, 1)
    }

    /// `requireVersion` pins a live version from submission; scoring can name one too.
    func testRequireVersionAndScoringUnderANamedVersion() throws {
        let model = try Fixtures.tiny()
        let v2 = Fixtures.perturbed(model, eps: 0.5)
        let engine = try GenerationEngine(model: model, tokenizer: tok, config: config(model))
        let p = prompt(9)
        let ref = try reference(model, p, 6)
        try engine.publish(weights: v2, version: 2)
        let pinned = try engine.submit(request(p, maxTokens: 6) { $0.requireVersion = 1 })
        let score1 = try engine.score(ScoringRequest(items: [ScoringItem(prompt: p, continuation: ref.ids)], version: 1))
        let score2 = try engine.score(ScoringRequest(items: [ScoringItem(prompt: p, continuation: ref.ids)]))
        let out = engine.runUntilIdle()
        XCTAssertEqual(out[pinned]!.samples[0].tokens, ref.ids)
        XCTAssertEqual(out[pinned]!.samples[0].version, 1)
        XCTAssertEqual(out[score1]!.score!.version, 1)
        for (a, b) in zip(out[score1]!.score!.items[0].logprobs, ref.logprobs) { XCTAssertEqual(a, b, accuracy: 1e-4) }
        XCTAssertEqual(out[score2]!.score!.version, 2)
        XCTAssertNotEqual(out[score2]!.score!.items[0].logprobs, out[score1]!.score!.items[0].logprobs)
        XCTAssertEqual(engine.status().liveVersions, [2])
        XCTAssertThrowsError(try engine.submit(request(p, maxTokens: 6) { $0.requireVersion = 1 })) {
            XCTAssertEqual(field(of: $0), "require_version")
        }
    }

    /// The engine thread: submissions from many threads, wake-ups, draining, stop with and without
    /// finishing in-flight work, and submissions after stop refused.
    func testEngineThreadWakeupsAndStop() throws {
        let model = try Fixtures.tiny()
        let engine = try GenerationEngine(model: model, tokenizer: tok, config: config(model, blocks: 64))
        let wakeups = WakeCounter()
        let gate = WakeGate()
        engine.setWakeup { wakeups.hit(); gate.pass() }
        engine.start()
        let ids = Locked<[RequestID]>([])
        let requests = (0..<8).map { i in (0..<2).map { j in request(prompt(6 + i, j), maxTokens: 5 + j) } }
        DispatchQueue.concurrentPerform(iterations: 8) { i in
            for j in 0..<2 {
                let id = try! engine.submit(requests[i][j])
                ids.mutate { $0.append(id) }
            }
        }
        var done = Set<RequestID>()
        var outcomes: [RequestID: Outcome] = [:]
        let deadline = Date().addingTimeInterval(30)
        while done.count < 16 && Date() < deadline {
            _ = wakeups.wait(timeout: 1)
            engine.collect(into: &outcomes)
            done = Set(outcomes.compactMap { $0.value.done?.id })
        }
        XCTAssertEqual(done, Set(ids.value))
        XCTAssertGreaterThan(wakeups.count, 0)
        for id in ids.value {
            XCTAssertEqual(outcomes[id]?.samples.first?.finishReason, .length)
            XCTAssertLessThanOrEqual(outcomes[id]!.firstToken!, outcomes[id]!.samples[0].time)
        }

        // Stop cancels what is in flight. The tiny model could finish a request before stop() takes
        // effect, so the engine thread is held in the wake-up after the long request's first step (49
        // tokens still to go) until stop() has taken effect — seen as submit refusing with .stopped;
        // requests accepted meanwhile are queued, and cancelled by the stop too.
        gate.arm()
        let long = try engine.submit(request(prompt(8), maxTokens: 50))
        XCTAssertTrue(gate.waitUntilHeld(timeout: 60), "the engine thread never stepped the long request")
        let stopped = DispatchSemaphore(value: 0)
        let box = UncheckedEngine(engine)
        Thread { box.engine.stop(); stopped.signal() }.start()
        var queued: [RequestID] = []
        while true {
            do {
                queued.append(try engine.submit(request(prompt(5), maxTokens: 5)))
                usleep(1000)
            } catch {
                XCTAssertEqual(error as? EngineError, .stopped)
                break
            }
        }
        gate.open()
        XCTAssertEqual(stopped.wait(timeout: .now() + 60), .success, "stop() did not return")
        engine.collect(into: &outcomes)
        XCTAssertEqual(outcomes[long]?.samples.first?.finishReason, .cancelled)
        XCTAssertLessThan(outcomes[long]?.samples.first?.tokens.count ?? 50, 50)
        for id in queued { XCTAssertEqual(outcomes[id]?.samples.first?.finishReason, .cancelled, "queued \(id)") }
        XCTAssertThrowsError(try engine.submit(request(prompt(8), maxTokens: 5))) { XCTAssertEqual($0 as? EngineError, .stopped) }
        XCTAssertEqual(engine.status().kvBlocksUsed, 0)

        // Stop that finishes in-flight work.
        let second = try GenerationEngine(model: model, tokenizer: tok, config: config(model, blocks: 64))
        second.start()
        let r = try second.submit(request(prompt(8), maxTokens: 20))
        second.stop(finishInFlight: true)
        let o = second.runUntilIdle()[r]
        XCTAssertEqual(o?.samples.first?.finishReason, .length)
        XCTAssertEqual(o?.samples.first?.tokens.count, 20)
    }

    /// Stop tokens: EOS ends a sample (finish `eos`, id kept, text not), unless `ignoreEOS`; extra
    /// stop ids stop too, even with `ignoreEOS`.
    func testStopTokensAndIgnoreEOS() throws {
        let model = try Fixtures.tiny()
        let engine = try GenerationEngine(model: model, tokenizer: tok, config: config(model))
        XCTAssertEqual(engine.defaultStopTokens, [2])
        // A prompt whose greedy continuation emits EOS (id 2) after a few tokens.
        var found: ([Int32], [Int32], Int)?
        for salt in 0..<200 {
            let p = prompt(8, salt)
            let ids = try reference(model, p, 30).ids
            if let e = ids.firstIndex(of: 2), e >= 2 { found = (p, ids, e); break }
        }
        guard let (p, ref, eos) = found else { return XCTFail("no prompt reaches EOS") }
        let a = try engine.submit(request(p, maxTokens: 30) { $0.ignoreEOS = false })
        let b = try engine.submit(request(p, maxTokens: 30))
        let stopAt = ref[1]
        let c = try engine.submit(request(p, maxTokens: 30) { $0.stopTokenIDs = [stopAt] })
        let out = engine.runUntilIdle()
        XCTAssertEqual(out[a]!.samples[0].tokens, Array(ref[...eos]))
        XCTAssertEqual(out[a]!.samples[0].finishReason, .eos)
        XCTAssertEqual(out[a]!.samples[0].text, tok.decode(Array(ref[..<eos])))
        XCTAssertEqual(out[b]!.samples[0].tokens, ref)
        XCTAssertEqual(out[b]!.samples[0].finishReason, .length)
        let first = ref.firstIndex(of: stopAt)!
        XCTAssertEqual(out[c]!.samples[0].tokens, Array(ref[...first]))
        XCTAssertEqual(out[c]!.samples[0].finishReason, .eos)
    }
}

/// Counts wake-ups and lets a test wait for one.
final class WakeCounter: @unchecked Sendable {
    private let lock = NSLock()
    private let sem = DispatchSemaphore(value: 0)
    private var n = 0
    func hit() { lock.lock(); n += 1; lock.unlock(); sem.signal() }
    var count: Int { lock.lock(); defer { lock.unlock() }; return n }
    func wait(timeout: Double) -> Bool { sem.wait(timeout: .now() + timeout) == .success }
}

/// Holds the engine thread in its wake-up callback: once armed, the next `pass()` blocks until
/// `open()` (so the engine cannot step meanwhile).
final class WakeGate: @unchecked Sendable {
    private let cond = NSCondition()
    private var armed = false, held = false, opened = false

    func arm() { cond.lock(); armed = true; opened = false; cond.unlock() }

    /// Called by the wake-up callback (engine thread).
    func pass() {
        cond.lock()
        defer { cond.unlock() }
        guard armed else { return }
        armed = false
        held = true
        cond.broadcast()
        while !opened { cond.wait() }
        held = false
    }

    /// True once the engine thread is held (false after `timeout` seconds, a failure bound).
    func waitUntilHeld(timeout: Double) -> Bool {
        cond.lock()
        defer { cond.unlock() }
        let deadline = Date(timeIntervalSinceNow: timeout)
        while !held { if !cond.wait(until: deadline) { break } }
        return held
    }

    func open() { cond.lock(); opened = true; cond.broadcast(); cond.unlock() }
}

/// Hands the engine to another test thread.
struct UncheckedEngine: @unchecked Sendable {
    let engine: GenerationEngine
    init(_ engine: GenerationEngine) { self.engine = engine }
}

final class Locked<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var v: T
    init(_ v: T) { self.v = v }
    var value: T { lock.lock(); defer { lock.unlock() }; return v }
    func mutate(_ f: (inout T) -> Void) { lock.lock(); f(&v); lock.unlock() }
}
