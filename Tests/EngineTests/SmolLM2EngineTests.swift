import Foundation
import XCTest
@testable import Engine
import Learner
import Model
import Tokenizer

/// The engine on the real SmolLM2-135M-Instruct model: agreement with `SingleSequenceGenerator`
/// (what `selm generate` runs), full-sequence logits (`selm logits`), the learner's scorer and
/// transformers' greedy output; batching, sharing and publishing leave samples unchanged.
final class SmolLM2EngineTests: XCTestCase {
    func config(_ f: (inout EngineConfig) -> Void = { _ in }) -> EngineConfig {
        var c = EngineConfig()
        c.kvCacheMB = 192
        f(&c)
        return c
    }

    var greedy: SamplerSettings {
        var p = SamplerSettings()
        p.temperature = 0
        return p
    }

    func seeded(_ seed: UInt64, temperature: Float = 0.9, topP: Float = 0.95) -> SamplerSettings {
        var p = SamplerSettings()
        p.temperature = temperature
        p.topP = topP
        p.seed = seed
        return p
    }

    func assertSame(_ a: FinishedSample?, _ b: FinishedSample?, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        guard let a, let b else { return XCTFail("\(what): missing result", file: file, line: line) }
        XCTAssertEqual(a.tokens, b.tokens, what, file: file, line: line)
        XCTAssertEqual(a.text, b.text, what, file: file, line: line)
        XCTAssertEqual(a.finishReason, b.finishReason, what, file: file, line: line)
        XCTAssertEqual(a.logprobs.count, b.logprobs.count, what, file: file, line: line)
        for (x, y) in zip(a.logprobs, b.logprobs) { XCTAssertEqual(x, y, accuracy: 1e-4, what, file: file, line: line) }
    }

    /// Greedy output equals `SingleSequenceGenerator` for the same prompt, alone and among 32
    /// concurrent sequences of other lengths admitted at different steps; it also equals the
    /// transformers reference and the chat prompt equals transformers' `apply_chat_template`.
    func testGreedyMatchesSingleSequenceGeneratorAloneAndAmong32() throws {
        let smol = try Fixtures.smol()
        let fixture = try JSONSerialization.jsonObject(with: Data(contentsOf: Fixtures.packageRoot
            .appendingPathComponent("Tests/ModelTests/Fixtures/smollm2.greedy.json"))) as! [[String: Any]]
        let expectedPrompt = (fixture[0]["prompt_ids"] as! [NSNumber]).map { $0.int32Value }
        let transformersOutput = (fixture[0]["output_ids"] as! [NSNumber]).map { $0.int32Value }

        let engine = try GenerationEngine(model: smol.model, tokenizer: smol.tokenizer, template: smol.template, config: config())
        let prompt = try engine.encode(text: fixture[0]["prompt"] as! String, chat: true)
        XCTAssertEqual(prompt, expectedPrompt, "chat prompt differs from transformers' apply_chat_template")
        let maxTokens = 12
        var ref = greedy
        ref.maxTokens = maxTokens
        let expected = try SingleSequenceGenerator(model: smol.model)
            .generate(prompt: prompt, params: ref, stopTokens: Set(engine.defaultStopTokens))
        XCTAssertEqual(expected.ids, transformersOutput)

        // Alone.
        let alone = try engine.submit(GenerationRequest(prompt: prompt, params: greedy, maxTokens: maxTokens))
        let o1 = engine.runUntilIdle()
        XCTAssertEqual(o1[alone]?.samples.first?.tokens, expected.ids)
        XCTAssertEqual(o1[alone]?.samples.first?.finishReason, .eos)
        XCTAssertEqual(o1[alone]?.samples.first?.text, "The capital of France is Paris.")

        // Among 32, on a fresh engine (no prefix cache from the run above), admitted mid-flight.
        let busy = try GenerationEngine(model: smol.model, tokenizer: smol.tokenizer, template: smol.template,
                              config: config { $0.maxTokensPerStep = 256 })
        var ids: [RequestID] = []
        var outcomes: [RequestID: Outcome] = [:]
        var target: RequestID?
        for i in 0..<31 {
            let other = try busy.encode(text: String(repeating: "Tell me about the number \(i). ", count: 1 + i % 6), chat: true)
            ids.append(try busy.submit(GenerationRequest(prompt: other, params: greedy, maxTokens: 4 + i % 9)))
            if i == 12 { target = try busy.submit(GenerationRequest(prompt: prompt, params: greedy, maxTokens: maxTokens)) }
            if i % 4 == 3 { busy.step(); busy.collect(into: &outcomes) }
        }
        XCTAssertGreaterThan(busy.status().runningSequences, 8)
        busy.runUntilIdle(into: &outcomes)
        let got = outcomes[target!]!.samples[0]
        XCTAssertEqual(got.tokens, expected.ids)
        for (a, b) in zip(got.logprobs, expected.logprobs) { XCTAssertEqual(a, b, accuracy: 1e-4) }
        XCTAssertEqual(outcomes.values.filter { $0.done != nil }.count, 32)
        // Every other request is also what it would be alone (spot-check two of other lengths).
        for i in [3, 22] {
            let other = try busy.encode(text: String(repeating: "Tell me about the number \(i). ", count: 1 + i % 6), chat: true)
            var p = greedy
            p.maxTokens = 4 + i % 9
            let alone = try SingleSequenceGenerator(model: smol.model).generate(prompt: other, params: p, stopTokens: Set(busy.defaultStopTokens))
            XCTAssertEqual(outcomes[ids[i]]?.samples.first?.tokens, alone.ids, "request \(i)")
        }
        XCTAssertEqual(busy.status().kvBlocksUsed, 0)
    }

    /// With a seed, a sample's tokens depend only on (seed, sample index, version, prompt): the same
    /// alone and batched with other requests admitted before and after it, and sample 0 of n = 3
    /// equals the only sample of n = 1.
    func testSeededSamplingSameAloneAndBatched() throws {
        let smol = try Fixtures.smol()
        let engine = try GenerationEngine(model: smol.model, tokenizer: smol.tokenizer, template: smol.template, config: config())
        let prompt = try engine.encode(text: "Write a haiku about the sea.", chat: true)
        let req = GenerationRequest(prompt: prompt, params: seeded(1234), maxTokens: 10, n: 3)
        let alone = try engine.submit(req)
        let single = try engine.submit(GenerationRequest(prompt: prompt, params: seeded(1234), maxTokens: 10, n: 1))
        let first = engine.runUntilIdle()
        let a = first[alone]!.ordered
        XCTAssertEqual(a.count, 3)
        XCTAssertGreaterThan(Set(a.map(\.tokens)).count, 1, "samples of one request must differ")
        assertSame(first[single]!.samples.first, a[0], "n = 1 vs sample 0 of n = 3")

        let busy = try GenerationEngine(model: smol.model, tokenizer: smol.tokenizer, template: smol.template,
                              config: config { $0.prefixCache = false })
        var outcomes: [RequestID: Outcome] = [:]
        for i in 0..<5 {
            let p = try busy.encode(text: "Name \(i + 2) colours of the rainbow.", chat: true)
            _ = try busy.submit(GenerationRequest(prompt: p, params: seeded(UInt64(i)), maxTokens: 6 + i, n: 2))
        }
        busy.step(); busy.step()
        let batched = try busy.submit(req)
        _ = try busy.submit(GenerationRequest(prompt: prompt, params: seeded(99), maxTokens: 8, n: 2))
        busy.runUntilIdle(into: &outcomes)
        let b = outcomes[batched]!.ordered
        for i in 0..<3 { assertSame(b[i], a[i], "sample \(i) batched vs alone") }
    }

    /// Returned log-probs are log-softmax of the raw logits (not the tempered ones): they equal
    /// full-sequence logits (`selm logits`), the learner's `SequenceScorer` and the engine's own
    /// `score` within 1e-4 per token; top alternatives are sorted and consistent.
    func testLogprobsMatchFullSequenceLogitsAndLearnerScorer() throws {
        let smol = try Fixtures.smol()
        let engine = try GenerationEngine(model: smol.model, tokenizer: smol.tokenizer, template: smol.template, config: config())
        let prompt = try engine.encode(text: "Give me three facts about owls.", chat: true)
        var req = GenerationRequest(prompt: prompt, params: seeded(5, temperature: 0.6, topP: 1), maxTokens: 14, n: 2)
        req.topLogprobs = 5
        req.ignoreEOS = true
        let id = try engine.submit(req)
        let out = engine.runUntilIdle()[id]!.ordered
        let V = smol.model.config.vocabSize
        let scorer = SequenceScorer(model: smol.model, training: false)
        for s in out {
            XCTAssertEqual(s.tokens.count, 14)
            let logits = try fullLogits(smol.model, prompt + s.tokens)
            _ = try scorer.score([(prompt: prompt, response: s.tokens)])
            let learner = scorer.tokenLogprobs(0)
            var temperedDiffers = false
            for (j, t) in s.tokens.enumerated() {
                let row = Array(logits[(prompt.count - 1 + j) * V ..< (prompt.count + j) * V])
                let ref = row.withUnsafeBufferPointer { referenceLogprob($0.baseAddress!, vocab: V, token: t) }
                XCTAssertEqual(Double(s.logprobs[j]), ref, accuracy: 1e-4, "token \(j) vs full-sequence logits")
                XCTAssertEqual(s.logprobs[j], learner[j], accuracy: 1e-4, "token \(j) vs SequenceScorer")
                let tempered = row.map { $0 / 0.6 }.withUnsafeBufferPointer { referenceLogprob($0.baseAddress!, vocab: V, token: t) }
                if abs(tempered - ref) > 1e-3 { temperedDiffers = true }
                let top = s.topLogprobs[j]
                XCTAssertEqual(top.count, 5)
                XCTAssertEqual(top.map(\.logprob), top.map(\.logprob).sorted(by: >))
                let best = row.indices.max { row[$0] < row[$1] }!
                XCTAssertEqual(top[0].id, Int32(best))
                if let mine = top.first(where: { $0.id == t }) { XCTAssertEqual(mine.logprob, s.logprobs[j], accuracy: 1e-5) }
                XCTAssertGreaterThanOrEqual(top[0].logprob, s.logprobs[j] - 1e-6)
            }
            XCTAssertTrue(temperedDiffers, "the test must tell raw from tempered log-probs")
        }
        // The engine's scoring path agrees too.
        let sid = try engine.score(ScoringRequest(items: out.map { ScoringItem(prompt: prompt, continuation: $0.tokens) }, topLogprobs: 2))
        let scored = engine.runUntilIdle()[sid]!.score!
        XCTAssertEqual(scored.version, 1)
        for (i, s) in out.enumerated() {
            for (a, b) in zip(scored.items[i].logprobs, s.logprobs) { XCTAssertEqual(a, b, accuracy: 1e-4) }
            XCTAssertEqual(scored.items[i].totalLogprob, s.logprobs.reduce(0.0) { $0 + Double($1) }, accuracy: 1e-3)
            XCTAssertEqual(scored.items[i].topLogprobs.count, s.tokens.count)
        }
    }

    /// The n samples sharing one prefilled prompt (full blocks shared, partial block copied) and the
    /// prefix cache reusing blocks across requests give exactly the samples of a run that shares
    /// nothing.
    func testSharedPrefixAndUnsharedRunsGiveIdenticalSamples() throws {
        let smol = try Fixtures.smol()
        let shared = try GenerationEngine(model: smol.model, tokenizer: smol.tokenizer, template: smol.template, config: config())
        let unshared = try GenerationEngine(model: smol.model, tokenizer: smol.tokenizer, template: smol.template, config: config {
            $0.prefixCache = false
            $0.sharePromptAcrossSamples = false
        })
        let prompt = try shared.encode(text: "Describe a sunrise over the mountains in one sentence.", chat: true)
        XCTAssertNotEqual(prompt.count % 16, 0, "the partial-block copy must be exercised")
        let req = GenerationRequest(prompt: prompt, params: seeded(42), maxTokens: 8, n: 4)

        let a = try shared.submit(req)
        let sharedOut = shared.runUntilIdle()[a]!.ordered
        XCTAssertGreaterThan(shared.scheduler.cache.gathers, 0, "forks read shared blocks through a gather")
        let b = try unshared.submit(req)
        let unsharedOut = unshared.runUntilIdle()[b]!.ordered
        XCTAssertEqual(unshared.status().promptTokensComputed, UInt64(4 * prompt.count))
        XCTAssertEqual(shared.status().promptTokensComputed, UInt64(prompt.count), "the prompt is prefilled once")
        for i in 0..<4 { assertSame(sharedOut[i], unsharedOut[i], "sample \(i): shared vs unshared") }

        // Again through the prefix cache: full prompt blocks are reused, samples unchanged.
        let hits0 = shared.status().prefixCacheHitTokens
        let c = try shared.submit(req)
        let cachedOut = shared.runUntilIdle()[c]!.ordered
        XCTAssertEqual(shared.status().prefixCacheHitTokens - hits0, UInt64((prompt.count - 1) / 16 * 16))
        for i in 0..<4 { assertSame(cachedOut[i], unsharedOut[i], "sample \(i): prefix cache vs unshared") }
        XCTAssertEqual(shared.status().kvBlocksUsed, 0)
        XCTAssertGreaterThan(shared.status().kvBlocksCached, 0)
    }

    /// A publish during generation leaves in-flight samples identical to a run without it (and
    /// reporting version 1), while requests admitted after it get version 2; version 1 stays alive
    /// (scorable) until its last sequence finishes.
    func testPublishDuringGenerationKeepsInFlightSamples() throws {
        let smol = try Fixtures.smol()
        let prompt = try GenerationEngine(model: smol.model, tokenizer: smol.tokenizer, template: smol.template).encode(text: "Tell me a short story about a cat.", chat: true)
        let req = GenerationRequest(prompt: prompt, params: seeded(7), maxTokens: 12, n: 2)

        let quiet = try GenerationEngine(model: smol.model, tokenizer: smol.tokenizer, template: smol.template, config: config())
        let q = try quiet.submit(req)
        let reference = quiet.runUntilIdle()[q]!.ordered

        let v2 = Fixtures.perturbedNorms(smol.model)
        let engine = try GenerationEngine(model: smol.model, tokenizer: smol.tokenizer, template: smol.template, config: config())
        var outcomes: [RequestID: Outcome] = [:]
        let inFlight = try engine.submit(req)
        for _ in 0..<4 { engine.step() }
        try engine.publish(weights: v2.copy(), version: 2)
        XCTAssertEqual(engine.currentVersion, 1, "a publication takes effect between steps")
        engine.step()
        XCTAssertEqual(engine.currentVersion, 2)
        XCTAssertEqual(engine.status().liveVersions, [1, 2])
        let after = try engine.submit(req)
        let scoreOld = try engine.score(ScoringRequest(items: [ScoringItem(prompt: prompt, continuation: reference[0].tokens)], version: 1))
        engine.runUntilIdle(into: &outcomes)
        XCTAssertEqual(engine.status().liveVersions, [2], "version 1 is freed with its last sequence")

        let got = outcomes[inFlight]!.ordered
        for i in 0..<2 {
            assertSame(got[i], reference[i], "in-flight sample \(i)")
            XCTAssertEqual(got[i].version, 1)
            XCTAssertEqual(got[i].firstVersion, 1)
        }
        for (a, b) in zip(outcomes[scoreOld]!.score!.items[0].logprobs, reference[0].logprobs) { XCTAssertEqual(a, b, accuracy: 1e-4) }

        // The later request ran entirely on version 2: it equals a fresh engine serving version 2.
        let fresh = try GenerationEngine(model: LlamaModel(weights: v2), version: 2, tokenizer: smol.tokenizer, template: smol.template, config: config())
        let f = try fresh.submit(req)
        let expected = fresh.runUntilIdle()[f]!.ordered
        let newer = outcomes[after]!.ordered
        for i in 0..<2 {
            XCTAssertEqual(newer[i].version, 2)
            XCTAssertEqual(newer[i].firstVersion, 2)
            assertSame(newer[i], expected[i], "post-publish sample \(i)")
        }
        // And version 2 really is other weights.
        let n = min(newer[0].tokens.count, reference[0].tokens.count)
        XCTAssertTrue(newer[0].tokens != reference[0].tokens ||
                      zip(newer[0].logprobs.prefix(n), reference[0].logprobs.prefix(n)).contains { abs($0 - $1) > 1e-3 })
    }

    /// Stop strings are matched on the detokenized text across token boundaries; the text is cut
    /// before the stop string, nothing past the cut is ever streamed, and the finish reason is
    /// `stop`.
    func testStopStringsCutAcrossTokenBoundaries() throws {
        let smol = try Fixtures.smol()
        let engine = try GenerationEngine(model: smol.model, tokenizer: smol.tokenizer, template: smol.template, config: config())
        let prompt = try engine.encode(text: "What is the capital of France?", chat: true)
        // Greedy: "The capital of France is Paris." — "ance is P" spans " France", " is", " Paris".
        func run(_ stop: [String]) throws -> Outcome {
            var r = GenerationRequest(prompt: prompt, params: greedy, maxTokens: 12)
            r.stop = stop
            r.stream = true
            let id = try engine.submit(r)
            return engine.runUntilIdle()[id]!
        }
        let full = try run([])
        XCTAssertEqual(full.samples[0].text, "The capital of France is Paris.")
        let ids = full.samples[0].tokens

        let o = try run(["ance is P"])
        let s = o.samples[0]
        XCTAssertEqual(s.text, "The capital of Fr")
        XCTAssertEqual(s.finishReason, .stop)
        // Ids end with the token that completed the stop string.
        let k = (1...ids.count).first { smol.tokenizer.decode(Array(ids[..<$0])).contains("ance is P") }!
        XCTAssertEqual(s.tokens, Array(ids[..<k]))
        XCTAssertEqual(o.chunks.map(\.textDelta).joined(), s.text)
        XCTAssertEqual(o.chunks.flatMap(\.tokens), s.tokens)

        // The earliest of several stop strings wins.
        let two = try run(["Paris", "capital of"])
        XCTAssertEqual(two.samples[0].text, "The ")
        XCTAssertEqual(two.chunks.map(\.textDelta).joined(), "The ")

        // A partial match that fails is released: full text, finish eos.
        let miss = try run(["France was"])
        XCTAssertEqual(miss.samples[0].text, "The capital of France is Paris.")
        XCTAssertEqual(miss.samples[0].finishReason, .eos)
        XCTAssertEqual(miss.chunks.map(\.textDelta).joined(), "The capital of France is Paris.")
    }

    /// The text assembler on real tokens: deltas are whole UTF-8 characters, a stop string split
    /// over several tokens (including inside a multi-byte character run) is found, and the deltas
    /// always concatenate to the final text.
    func testTextAssemblerOnMultibyteText() throws {
        let smol = try Fixtures.smol()
        let tok = smol.tokenizer
        let text = "Crème brûlée 😀 costs 5€, déjà vu! END of story"
        let ids = tok.encode(text)
        for (stops, expected) in [([String](), text), (["END"], "Crème brûlée 😀 costs 5€, déjà vu! "),
                                  (["lée 😀"], "Crème brû"), (["5€,"], "Crème brûlée 😀 costs "), (["zzz", "ûl"], "Crème br")] {
            var a = TextAssembler(decoder: tok.makeStreamDecoder(), stops: stops)
            var streamed = ""
            var stopped = false
            for t in ids {
                let (d, s) = a.append(t)
                XCTAssertFalse(d.unicodeScalars.contains("\u{FFFD}"), "delta split a character")
                streamed += d
                if s { stopped = true; break }
            }
            streamed += a.finish()
            XCTAssertEqual(a.text, expected, "stops \(stops)")
            XCTAssertEqual(streamed, expected, "stops \(stops)")
            XCTAssertEqual(stopped, !stops.isEmpty)
        }
    }
}
