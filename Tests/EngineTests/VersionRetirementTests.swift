import Foundation
import XCTest
@testable import Engine
import Model
import Tokenizer

/// Issue 10, "Generation admission stalls": a publication is installed at the next step whatever
/// runs, new requests bind to it at once, and the live-version limit is kept by retiring the
/// oldest version (its sequences move to the newest, pinned requests end with `versionRetired`).
/// On the tiny fixture model (context 64), stepping by hand: every assertion is about the order of
/// events, none about time.
final class VersionRetirementTests: XCTestCase {
    let tok = Fixtures.tinyTokenizer

    func config(_ model: LlamaModel, blocks: Int = 1024, _ f: (inout EngineConfig) -> Void = { _ in }) -> EngineConfig {
        var c = EngineConfig()
        c.blockSize = 4
        c.kvCacheMB = Double(blocks * PagedKVCache.bytesPerBlock(config: model.config, blockSize: 4)) / 1_048_576
        f(&c)
        return c
    }

    func prompt(_ n: Int, _ salt: Int = 0) -> [Int32] { (0..<n).map { Int32(3 + ($0 * 7 + salt * 13) % 94) } }

    func request(_ prompt: [Int32], maxTokens: Int, _ f: (inout GenerationRequest) -> Void = { _ in }) -> GenerationRequest {
        var p = SamplerSettings()
        p.temperature = 0
        var r = GenerationRequest(prompt: prompt, params: p, maxTokens: maxTokens)
        r.ignoreEOS = true
        r.stream = true
        f(&r)
        return r
    }

    /// Greedy continuation of `prompt` under `model`, without the engine.
    func reference(_ model: LlamaModel, _ prompt: [Int32], _ maxTokens: Int) throws -> [Int32] {
        var p = SamplerSettings()
        p.temperature = 0
        p.maxTokens = maxTokens
        return try SingleSequenceGenerator(model: model).generate(prompt: prompt, params: p, stopTokens: []).ids
    }

    /// One step, then the invariants that hold after every step: a publication never stays
    /// pending, and no more than `limit` versions are live.
    func step(_ engine: GenerationEngine, limit: Int, into outcomes: inout [RequestID: Outcome],
              file: StaticString = #filePath, line: UInt = #line) {
        engine.step()
        engine.collect(into: &outcomes)
        let s = engine.status()
        XCTAssertNil(s.pendingVersion, "a publication is installed at the next step", file: file, line: line)
        XCTAssertLessThanOrEqual(s.liveVersions.count, limit, "live versions \(s.liveVersions)", file: file, line: line)
        XCTAssertEqual(s.liveVersions.last, s.currentVersion, file: file, line: line)
    }

    /// The reported defect: long generations run on versions 1 and 2, version 3 is published, and a
    /// 4-token request sent after it is admitted on version 3 and finishes while both long ones
    /// are still generating (before: it waited for them to end). Default configuration.
    func testShortRequestFinishesWhileLongOnesRunOnTwoOlderVersions() throws {
        let model = try Fixtures.tiny()
        let engine = try GenerationEngine(model: model, tokenizer: tok, config: config(model))
        let limit = engine.config.maxLiveVersions
        var out: [RequestID: Outcome] = [:]
        let long1 = try engine.submit(request(prompt(8, 1), maxTokens: 50))
        step(engine, limit: limit, into: &out)
        try engine.publish(weights: Fixtures.perturbed(model, seed: 2), version: 2)
        let long2 = try engine.submit(request(prompt(8, 2), maxTokens: 50))
        step(engine, limit: limit, into: &out)
        try engine.publish(weights: Fixtures.perturbed(model, seed: 3), version: 3)
        let short = try engine.submit(request(prompt(5, 3), maxTokens: 4))
        var steps = 0
        while out[short]?.done == nil && steps < 200 {
            step(engine, limit: limit, into: &out)
            steps += 1
        }
        XCTAssertNotNil(out[short]?.done, "the short request finished")
        XCTAssertEqual(out[short]?.samples.first?.version, 3, "bound to the newest version")
        XCTAssertLessThanOrEqual(steps, 4, "admitted at the first step after its submission")
        XCTAssertNil(out[long1]?.done, "long generation on version 1 still running")
        XCTAssertNil(out[long2]?.done, "long generation on version 2 still running")
        XCTAssertLessThan(out[long1]?.chunks.count ?? 0, 50)
        XCTAssertLessThan(out[long2]?.chunks.count ?? 0, 50)
        XCTAssertEqual(engine.status().liveVersions, [1, 2, 3])

        while engine.step().hasWork { engine.collect(into: &out) }
        engine.collect(into: &out)
        XCTAssertEqual(out[long1]?.samples.map(\.version), [1], "within the limit nothing moves")
        XCTAssertEqual(out[long2]?.samples.map(\.version), [2])
        XCTAssertEqual(out[long1]?.samples.first?.tokens.count, 50)
        XCTAssertEqual(engine.status().liveVersions, [3])
    }

    /// With limit 2, publishing a third version while versions 1 and 2 have running sequences
    /// retires one: version 1, whose sequence has fewer computed positions to re-prefill (13, against
    /// 30). Its
    /// sequence is re-prefilled under version 3 and continues there (its tokens before the move are
    /// version 1's greedy continuation, after it version 3's greedy continuation of everything so
    /// far), reporting first version 1 and version 3; version 2's sequence is untouched; a short
    /// request finishes meanwhile.
    func testRetiringAVersionMovesItsSequencesToTheNewest() throws {
        let model = try Fixtures.tiny()
        let v2 = LlamaModel(weights: Fixtures.perturbed(model, eps: 0.5, seed: 2))
        let v3 = LlamaModel(weights: Fixtures.perturbed(model, eps: 0.5, seed: 3))
        let engine = try GenerationEngine(model: model, tokenizer: tok, config: config(model) { $0.maxLiveVersions = 2 })
        var out: [RequestID: Outcome] = [:]
        let p1 = prompt(8, 1), p2 = prompt(30, 2)
        let old = try engine.submit(request(p1, maxTokens: 40))
        for _ in 0..<5 { step(engine, limit: 2, into: &out) }
        try engine.publish(weights: v2.weights.copy(), version: 2)
        let mid = try engine.submit(request(p2, maxTokens: 30))
        step(engine, limit: 2, into: &out)
        XCTAssertEqual(engine.status().liveVersions, [1, 2])
        try engine.publish(weights: v3.weights.copy(), version: 3)
        let short = try engine.submit(request(prompt(5, 3), maxTokens: 4))
        step(engine, limit: 2, into: &out)
        XCTAssertEqual(engine.status().liveVersions, [2, 3], "version 1 was retired")
        while out[short]?.done == nil && engine.step().hasWork { engine.collect(into: &out); XCTAssertLessThanOrEqual(engine.status().liveVersions.count, 2) }
        engine.collect(into: &out)
        XCTAssertEqual(out[short]?.samples.first?.version, 3)
        XCTAssertNil(out[old]?.done, "the moved sequence is still running")
        XCTAssertNil(out[mid]?.done)
        while engine.step().hasWork { engine.collect(into: &out); XCTAssertLessThanOrEqual(engine.status().liveVersions.count, 2) }
        engine.collect(into: &out)

        let moved = try XCTUnwrap(out[old]?.samples.first)
        XCTAssertEqual(moved.firstVersion, 1)
        XCTAssertEqual(moved.version, 3)
        XCTAssertEqual(moved.finishReason, .length)
        XCTAssertEqual(moved.tokens.count, 40)
        let k = out[old]!.chunks.filter { $0.version == 1 }.count
        XCTAssertEqual(k, 6, "one token per step on version 1 before the move")
        XCTAssertEqual(out[old]!.chunks.filter { $0.version == 3 }.count, 40 - k, "the rest on version 3, none on 2")
        XCTAssertEqual(Array(moved.tokens[..<k]), Array(try reference(model, p1, k)))
        XCTAssertEqual(Array(moved.tokens[k...]), try reference(v3, p1 + moved.tokens[..<k], 40 - k))

        let stayed = try XCTUnwrap(out[mid]?.samples.first)
        XCTAssertEqual(stayed.firstVersion, 2)
        XCTAssertEqual(stayed.version, 2)
        XCTAssertEqual(stayed.tokens, try reference(v2, p2, 30))
        XCTAssertEqual(engine.status().liveVersions, [3])
    }

    /// With limit 1, publishing version 2 retires version 1 whatever holds it. A request pinned to
    /// it with `requireVersion` cannot keep its contract: it ends with the typed `versionRetired`
    /// error (no samples, no done, its blocks freed), while the unpinned sequence on it moves on. A
    /// score request already queued on it still runs on it. Afterwards the version cannot be
    /// pinned any more (`versionNotAlive`, as before).
    func testPinnedRequestOnARetiredVersionEndsWithVersionRetired() throws {
        let model = try Fixtures.tiny()
        let engine = try GenerationEngine(model: model, tokenizer: tok, config: config(model) { $0.maxLiveVersions = 1 })
        var out: [RequestID: Outcome] = [:]
        let unpinned = try engine.submit(request(prompt(8, 1), maxTokens: 30))
        let pinned = try engine.submit(request(prompt(8, 2), maxTokens: 30) { $0.requireVersion = 1; $0.n = 2 })
        for _ in 0..<3 { step(engine, limit: 1, into: &out) }
        XCTAssertEqual(out[pinned]?.chunks.count, 6, "both pinned samples run on version 1")
        XCTAssertTrue(out[pinned]!.chunks.allSatisfy { $0.version == 1 })
        let p = prompt(6, 4)
        let score = try engine.score(ScoringRequest(items: [ScoringItem(prompt: p, continuation: [5, 6, 7])], version: 1))
        try engine.publish(weights: Fixtures.perturbed(model, seed: 2), version: 2)
        step(engine, limit: 1, into: &out)
        XCTAssertEqual(engine.status().liveVersions, [2])
        XCTAssertEqual(out[pinned]?.error, .versionRetired(field: "require_version", version: 1, limit: 1))
        XCTAssertEqual(out[pinned]?.samples.count, 0)
        XCTAssertNil(out[pinned]?.done)
        XCTAssertEqual(out[score]?.score?.version, 1, "a queued score runs on its (retired) version")
        XCTAssertThrowsError(try engine.submit(request(p, maxTokens: 4) { $0.requireVersion = 1 })) {
            guard case .versionNotAlive(let f, 1, let alive)? = $0 as? EngineError else { return XCTFail("\($0)") }
            XCTAssertEqual(f, "require_version")
            XCTAssertEqual(alive, [2])
        }
        XCTAssertThrowsError(try engine.score(ScoringRequest(items: [ScoringItem(prompt: p, continuation: [5])], version: 1)))
        while engine.step().hasWork {}
        engine.collect(into: &out)
        XCTAssertEqual(out[unpinned]?.samples.first?.version, 2)
        XCTAssertEqual(out[unpinned]?.samples.first?.firstVersion, 1)
        XCTAssertEqual(out[unpinned]?.samples.first?.tokens.count, 30)
        XCTAssertEqual(engine.status().kvBlocksUsed, 0, "the failed request freed its blocks")
        XCTAssertEqual(EngineError.versionRetired(field: "require_version", version: 1, limit: 1).description,
                       "require_version: weight version 1 was retired (live versions are limited to 1)")
    }

    /// The race the intake check covers: a submission pins a version (taking a hold) just before a
    /// step retires it, and reaches the scheduler one step later. Simulated white-box: a hold taken
    /// on version 1 directly, version 1 retired by publishing 2 (limit 1), then the pinned request
    /// handed to the scheduler. It must end with `versionRetired`, not run on the retired weights.
    func testRequestPinnedJustBeforeTheRetirementEndsWithVersionRetired() throws {
        let model = try Fixtures.tiny()
        let engine = try GenerationEngine(model: model, tokenizer: tok, config: config(model) { $0.maxLiveVersions = 1 })
        let held = try XCTUnwrap(engine.scheduler.versions.retain(version: 1))
        try engine.publish(weights: Fixtures.perturbed(model, seed: 2), version: 2)
        engine.step()
        XCTAssertEqual(engine.status().liveVersions, [2])
        let req = request(prompt(8), maxTokens: 4) { $0.requireVersion = 1 }
        let late = RequestState(id: RequestID(1000), request: req, maxTokens: 4, stopTokens: [], seed: 0, snapshot: held)
        _ = engine.scheduler.step(Inbox(requests: [late]))
        let errors = engine.scheduler.events.compactMap { e -> EngineError? in
            if case let .error(id, err) = e, id == RequestID(1000) { return err }
            return nil
        }
        XCTAssertEqual(errors, [.versionRetired(field: "require_version", version: 1, limit: 1)])
        XCTAssertFalse(engine.scheduler.hasWork)
        XCTAssertEqual(engine.status().liveVersions, [2])
    }

    /// Which version is retired: the one cheapest to give up. Requests pinned to a version make it
    /// the most expensive (they would fail), then the tokens its sequences would re-prefill count.
    /// Limit 2: a long generation on version 1 keeps its version while the young sequence on
    /// version 2 moves when 3 is published; then, with a request pinned to version 3, publishing 4
    /// retires version 1 after all (its generation moves), sparing the pinned one.
    func testRetirementSparesPinnedRequestsThenLongGenerations() throws {
        let model = try Fixtures.tiny()
        let engine = try GenerationEngine(model: model, tokenizer: tok, config: config(model) { $0.maxLiveVersions = 2 })
        var out: [RequestID: Outcome] = [:]
        let long = try engine.submit(request(prompt(8, 1), maxTokens: 50))
        for _ in 0..<10 { step(engine, limit: 2, into: &out) }
        try engine.publish(weights: Fixtures.perturbedNorms(model, seed: 2), version: 2)
        let young = try engine.submit(request(prompt(8, 2), maxTokens: 40))
        step(engine, limit: 2, into: &out)
        try engine.publish(weights: Fixtures.perturbedNorms(model, seed: 3), version: 3)
        step(engine, limit: 2, into: &out)
        XCTAssertEqual(engine.status().liveVersions, [1, 3], "version 2 (8 computed positions, against 18) was retired")
        let pinned = try engine.submit(request(prompt(4, 3), maxTokens: 20) { $0.requireVersion = 3 })
        step(engine, limit: 2, into: &out)
        try engine.publish(weights: Fixtures.perturbedNorms(model, seed: 4), version: 4)
        step(engine, limit: 2, into: &out)
        XCTAssertEqual(engine.status().liveVersions, [3, 4], "version 1 was retired: version 3 holds a pinned request")
        while engine.step().hasWork { engine.collect(into: &out); XCTAssertLessThanOrEqual(engine.status().liveVersions.count, 2) }
        engine.collect(into: &out)
        XCTAssertEqual(out[long]?.samples.map { [$0.firstVersion, $0.version] }, [[1, 4]])
        XCTAssertEqual(out[young]?.samples.map { [$0.firstVersion, $0.version] }, [[2, 3]])
        XCTAssertNil(out[pinned]?.error)
        XCTAssertEqual(out[pinned]?.samples.map { [$0.firstVersion, $0.version] }, [[3, 3]])
        XCTAssertEqual(out[long]?.samples.first?.tokens.count, 50)
    }

    /// Publications every few steps under a stream of requests (some recomputing, some pinned, some
    /// n = 2), for limits 1, 2 and 3: after every step no publication is pending and no more than
    /// the limit are live; every unpinned request binds to the newest version published before it
    /// was sent; everything ends (pinned requests possibly with `versionRetired`) and the pool is
    /// empty.
    func testLiveVersionsNeverExceedTheLimitAndNothingWaits() throws {
        let model = try Fixtures.tiny()
        let weights = (2...12).map { Fixtures.perturbedNorms(model, seed: UInt64($0)) }
        for limit in 1...3 {
            let engine = try GenerationEngine(model: model, tokenizer: tok, config: config(model) { $0.maxLiveVersions = limit })
            var out: [RequestID: Outcome] = [:]
            var newestAtSubmit: [RequestID: UInt64] = [:]
            var pinned: Set<RequestID> = []
            var newest: UInt64 = 1
            for i in 0..<60 {
                if i % 5 == 4 && Int(newest) - 1 < weights.count {
                    newest += 1
                    try engine.publish(weights: weights[Int(newest) - 2].copy(), version: newest)
                }
                if i % 2 == 0 {
                    let pin = i % 6 == 2
                    let id = try engine.submit(request(prompt(4 + i % 7, i), maxTokens: 5 + (i * 7) % 26) {
                        $0.n = i % 4 == 0 ? 2 : 1
                        $0.recompute = !pin && i % 8 == 6
                        if pin { $0.requireVersion = engine.status().liveVersions.first }
                    })
                    if pin { pinned.insert(id) } else { newestAtSubmit[id] = newest }
                }
                step(engine, limit: limit, into: &out)
            }
            while engine.step().hasWork { engine.collect(into: &out) }
            engine.collect(into: &out)
            XCTAssertEqual(engine.status().liveVersions, [newest], "limit \(limit)")
            XCTAssertEqual(engine.status().kvBlocksUsed, 0, "limit \(limit)")
            for (id, v) in newestAtSubmit {
                let o = try XCTUnwrap(out[id], "limit \(limit)")
                XCTAssertNil(o.error, "limit \(limit)")
                XCTAssertNotNil(o.done, "limit \(limit)")
                for s in o.samples {
                    XCTAssertEqual(s.firstVersion, v, "limit \(limit): bound to the newest version at once")
                    XCTAssertGreaterThanOrEqual(s.version, s.firstVersion)
                }
            }
            for id in pinned {
                let o = try XCTUnwrap(out[id], "limit \(limit)")
                if let e = o.error {
                    guard case .versionRetired = e else { return XCTFail("limit \(limit): \(e)") }
                } else {
                    XCTAssertNotNil(o.done)
                    XCTAssertTrue(o.samples.allSatisfy { $0.version == $0.firstVersion })
                }
            }
        }
    }
}
