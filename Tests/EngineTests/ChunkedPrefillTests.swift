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

    /// 24 requests (16 prompts of 3 tokens, then 8 of 30; 30 new tokens each) submitted at once,
    /// budget 64 per step, 16 per step while decoding: every step's prefill is exactly what the
    /// policy allows — min(64, what is left) with nothing decoding; with D decodes,
    /// min(max(16 − D, 4), 64 − D, what is left) — so no decoding sequence waits behind a long
    /// prefill, admission never stops (16 decode from the second step on: the quarter floor runs),
    /// and the tokens are those of a run that prefills whole 64-token steps.
    func testPrefillWhileDecodingIsChunkedToTheDecodingStepBudget() throws {
        let model = try Fixtures.tiny()
        let maxStep = 64, target = 16
        let prompts = (0..<24).map { prompt($0 < 16 ? 3 : 30, $0) }
        func submitAll(_ engine: GenerationEngine) throws -> [RequestID] {
            try prompts.map { p in
                var r = GenerationRequest(prompt: p, maxTokens: 30)
                r.params.temperature = 0
                r.ignoreEOS = true
                return try engine.submit(r)
            }
        }
        let engine = try GenerationEngine(model: model, tokenizer: tok,
                                          config: config(model, maxTokensPerStep: maxStep, decodingStepTokens: target))
        let ids = try submitAll(engine)
        var left = prompts.reduce(0) { $0 + $1.count }
        var outcomes: [RequestID: Outcome] = [:]
        var steps: [EngineStepReport] = []
        repeat {
            steps.append(engine.step())
            engine.collect(into: &outcomes)
        } while steps.last!.hasWork && steps.count < 1000
        XCTAssertFalse(steps.last!.hasWork)

        var sawFloor = false
        for (k, s) in steps.enumerated() {
            XCTAssertEqual(s.tokens, s.decodeTokens + s.prefillTokens, "step \(k): no scoring here")
            let allowed = s.decodeTokens == 0 ? maxStep : min(max(target - s.decodeTokens, target / 4), maxStep - s.decodeTokens)
            XCTAssertEqual(s.prefillTokens, min(allowed, left),
                           "step \(k): \(s.decodeTokens) decodes beside \(s.prefillTokens) prefill tokens (\(left) left to prefill)")
            if s.decodeTokens >= target && s.prefillTokens > 0 { sawFloor = true }
            left -= s.prefillTokens
        }
        XCTAssertEqual(left, 0)
        XCTAssertTrue(sawFloor, "prefill went on while more sequences decoded than the decoding-step budget")
        XCTAssertEqual(steps.first?.prefillTokens, maxStep, "nothing decodes in the first step: a whole step of prefill")

        // The same requests prefilled in whole 64-token steps give the same tokens and log-probs.
        let wide = try GenerationEngine(model: model, tokenizer: tok,
                                        config: config(model, maxTokensPerStep: maxStep, decodingStepTokens: maxStep))
        let wideIDs = try submitAll(wide)
        let wideOut = wide.runUntilIdle()
        for (a, b) in zip(ids, wideIDs) {
            let x = try XCTUnwrap(outcomes[a]?.samples.first), y = try XCTUnwrap(wideOut[b]?.samples.first)
            XCTAssertEqual(x.tokens.count, 30)
            XCTAssertEqual(x.tokens, y.tokens)
            for (p, q) in zip(x.logprobs, y.logprobs) { XCTAssertEqual(p, q, accuracy: 1e-4) }
        }
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
