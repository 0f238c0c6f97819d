import Foundation
import XCTest
@testable import Engine
import Model

/// Latency under admission (issue 13): while sequences decode, other requests' prefill runs in
/// chunks that fill a step up to `decodingStepTokens` (at least a quarter of it), never the whole
/// `maxTokensPerStep`; a step with nothing to decode prefills up to `maxTokensPerStep`. Counted
/// per step from `EngineStepReport` (tokens, not time), on the tiny fixture model.
final class ChunkedPrefillTests: XCTestCase {
    let tok = Fixtures.tinyTokenizer

    func config(_ model: LlamaModel, maxTokensPerStep: Int, decodingStepTokens: Int) -> EngineConfig {
        var c = EngineConfig()
        c.blockSize = 4
        c.kvCacheMB = Double(512 * PagedKVCache.bytesPerBlock(config: model.config, blockSize: 4)) / 1_048_576
        c.maxTokensPerStep = maxTokensPerStep
        c.decodingStepTokens = decodingStepTokens
        c.prefixCache = false
        return c
    }

    /// Distinct prompts (no shared prefix).
    func prompt(_ n: Int, _ salt: Int) -> [Int32] { (0..<n).map { Int32(3 + ($0 * 7 + salt * 13 + salt * salt) % 94) } }

    func greedy(_ p: [Int32], _ maxTokens: Int) -> GenerationRequest {
        var r = GenerationRequest(prompt: p, maxTokens: maxTokens)
        r.params.temperature = 0
        r.ignoreEOS = true
        return r
    }

    /// Steps until idle, returning each step's report.
    func run(_ engine: GenerationEngine, into outcomes: inout [RequestID: Outcome], until stop: (EngineStepReport) -> Bool = { !$0.hasWork }) -> [EngineStepReport] {
        var steps: [EngineStepReport] = []
        repeat {
            steps.append(engine.step())
            engine.collect(into: &outcomes)
        } while !stop(steps.last!) && steps.count < 1000
        return steps
    }

    /// Greedy tokens of `prompt` alone (one contiguous cache, one prefill).
    func reference(_ model: LlamaModel, _ prompt: [Int32], _ maxTokens: Int) throws -> [Int32] {
        var p = SamplerSettings()
        p.temperature = 0
        p.maxTokens = maxTokens
        return try SingleSequenceGenerator(model: model).generate(prompt: prompt, params: p, stopTokens: []).ids
    }

    /// 4 sequences decode; then 24 requests arrive (16 prompts of 3 tokens, then 8 of 30; 30 new
    /// tokens each). Budget 64 per step, 16 per step while decoding: every step's prefill is
    /// exactly what the policy allows — with D decodes, min(max(16 − D, 4), 64 − D, what is
    /// left) — so no decoding sequence waits behind a long prefill, admission never stops (20
    /// decode soon: the quarter floor runs), and the tokens are those of each prompt run alone.
    func testPrefillWhileDecodingIsChunkedToTheDecodingStepBudget() throws {
        let model = try Fixtures.tiny()
        let maxStep = 64, target = 16
        let engine = try GenerationEngine(model: model, tokenizer: tok,
                                          config: config(model, maxTokensPerStep: maxStep, decodingStepTokens: target))
        var outcomes: [RequestID: Outcome] = [:]
        for i in 0..<4 { _ = try engine.submit(greedy(prompt(3, 100 + i), 50)) }
        _ = run(engine, into: &outcomes) { $0.decodeTokens == 4 }
        let prompts = (0..<24).map { prompt($0 < 16 ? 3 : 30, $0) }
        let ids = try prompts.map { try engine.submit(greedy($0, 30)) }
        var left = prompts.reduce(0) { $0 + $1.count }
        let steps = run(engine, into: &outcomes)
        XCTAssertFalse(steps.last!.hasWork)

        var sawFloor = false
        for (k, s) in steps.enumerated() where left > 0 {
            XCTAssertEqual(s.tokens, s.decodeTokens + s.prefillTokens, "step \(k): no scoring here")
            XCTAssertGreaterThan(s.decodeTokens, 0, "step \(k): sequences decode throughout the burst's admission")
            let allowed = min(max(target - s.decodeTokens, target / 4), maxStep - s.decodeTokens)
            XCTAssertEqual(s.prefillTokens, min(allowed, left),
                           "step \(k): \(s.decodeTokens) decodes beside \(s.prefillTokens) prefill tokens (\(left) left to prefill)")
            if s.decodeTokens >= target && s.prefillTokens > 0 { sawFloor = true }
            left -= s.prefillTokens
        }
        XCTAssertEqual(left, 0)
        XCTAssertTrue(sawFloor, "prefill went on while more sequences decoded than the decoding-step budget")
        for (p, id) in zip(prompts, ids) {
            XCTAssertEqual(outcomes[id]?.samples.first?.tokens, try reference(model, p, 30))
        }
    }

    /// Prompts that reach an idle engine form a wave: they prefill all but their last token in
    /// whole 64-token steps with nothing decoding, then their last tokens run together — all 24
    /// first tokens in the same step, and every later step decodes all 24 until they end (same
    /// length). Requests arriving during the wave wait for it. Tokens as each prompt alone.
    func testABurstOnAnIdleEngineStartsDecodingTogether() throws {
        let model = try Fixtures.tiny()
        let maxStep = 64
        let engine = try GenerationEngine(model: model, tokenizer: tok,
                                          config: config(model, maxTokensPerStep: maxStep, decodingStepTokens: 16))
        let prompts = (0..<24).map { prompt(3 + $0, $0) }  // 3 … 26 tokens, 348 in all
        let ids = try prompts.map { try engine.submit(greedy($0, 20)) }
        var outcomes: [RequestID: Outcome] = [:]
        var steps = [engine.step()]
        engine.collect(into: &outcomes)
        let late = try engine.submit(greedy(prompt(5, 99), 20))  // arrives during the wave
        steps += run(engine, into: &outcomes)

        let total = prompts.reduce(0) { $0 + $1.count }
        let waveSteps = (total + maxStep - 1) / maxStep  // 6: five of 64, one of 28
        for k in 0..<waveSteps {
            XCTAssertEqual(steps[k].decodeTokens, 0, "step \(k)")
            XCTAssertEqual(steps[k].prefillTokens, min(maxStep, total - k * maxStep), "step \(k)")
            XCTAssertEqual(steps[k].generated, k == waveSteps - 1 ? 24 : 0, "step \(k): first tokens only when the whole wave is prefilled")
        }
        XCTAssertEqual(steps[waveSteps].decodeTokens, 24)
        XCTAssertEqual(steps[waveSteps].prefillTokens, 4, "the late prompt, beside the wave's 24 decodes: the quarter floor")
        let firsts = Set(ids.map { outcomes[$0]?.firstToken })
        XCTAssertEqual(firsts.count, 1, "one step gave every first token")
        for (p, id) in zip(prompts, ids) {
            XCTAssertEqual(outcomes[id]?.samples.first?.tokens, try reference(model, p, 20))
        }
        XCTAssertEqual(outcomes[late]?.samples.first?.tokens, try reference(model, prompt(5, 99), 20))
    }

    /// `decodingStepTokens` must be ≥ 1, refused naming the field.
    func testDecodingStepTokensIsValidated() throws {
        let model = try Fixtures.tiny()
        XCTAssertThrowsError(try GenerationEngine(model: model, tokenizer: tok,
                                                  config: config(model, maxTokensPerStep: 64, decodingStepTokens: 0))) { e in
            guard case let .invalidConfig(field, _)? = e as? EngineError else { return XCTFail("\(e)") }
            XCTAssertEqual(field, "decoding_step_tokens")
        }
    }
}
