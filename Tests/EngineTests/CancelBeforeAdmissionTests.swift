import Foundation
import XCTest
@testable import Engine
import Model

/// A request cancelled before the engine admitted it ends like any cancelled request: every sample
/// reported (`cancelled`, no tokens, its prompt's length), then `.done` whose prompt tokens are the
/// sum over those samples (the server relies on this: it has no cancelled-before-start path of its
/// own, it submits and cancels).
final class CancelBeforeAdmissionTests: XCTestCase {
    func testNeverAdmittedSamplesCountTheirPromptTokensInDone() throws {
        let model = try Fixtures.tiny()
        var config = EngineConfig()
        config.kvCacheMB = 1
        let engine = try GenerationEngine(model: model, tokenizer: Fixtures.tinyTokenizer, config: config)
        let prompts: [[Int32]] = [[5, 6, 7], [8, 9, 10, 11, 12]]
        let id = try engine.submit(GenerationRequest(prompts: prompts, maxTokens: 4, n: 3))
        XCTAssertTrue(engine.cancel(id), "cancelled while still in the inbox")
        let out = engine.runUntilIdle()[id]
        let samples = try XCTUnwrap(out?.ordered)
        XCTAssertEqual(samples.count, 6)
        for s in samples {
            XCTAssertEqual(s.finishReason, .cancelled)
            XCTAssertEqual(s.tokens, [])
            XCTAssertEqual(s.promptTokens, prompts[s.promptIndex].count)
            XCTAssertEqual(s.version, engine.currentVersion)
        }
        let done = try XCTUnwrap(out?.done)
        XCTAssertTrue(done.cancelled)
        XCTAssertEqual(done.samples, 6)
        XCTAssertEqual(done.completionTokens, 0)
        XCTAssertEqual(done.promptTokens, samples.reduce(0) { $0 + $1.promptTokens }, "prompt tokens are summed over samples")
    }
}
