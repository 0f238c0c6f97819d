import Foundation
import Wire
import XCTest

/// `selm serve --engine-precision q8`: the engine serves from packed 8-bit weights, says so in its
/// metrics, and computes what `selm generate --engine-precision q8` computes offline — before and
/// after RefreshWeights (packed from the checkpoint's loaded f32 weights).
final class EnginePrecisionServerTests: XCTestCase {
    func greedy(_ c: TestClient, id: UInt64, _ text: String) throws -> SampleResult {
        let req = GenerateRequest(prompts: [.text(text)], chat: true, sampling: SamplingParams(temperature: 0, maxTokens: 8))
        try c.send(id, .generate(req))
        var sample: SampleResult?
        while true {
            switch try c.receive(id) {
            case .sampleResult(let s): sample = s
            case .generateDone: return try XCTUnwrap(sample)
            case .generateChunk: continue
            case let other: throw TestError("generate answered \(other)")
            }
        }
    }

    func testQ8ServerMatchesTheOfflineToolAndSaysItsPrecision() throws {
        try requireSmol()
        let dir = try temporaryDirectory()
        let data = dir + "/data"
        try FileManager.default.createDirectory(atPath: data + "/ck", withIntermediateDirectories: true)
        try PerturbedCheckpoint.write(from: ServerProcess.smol, to: data + "/ck/model.gguf")
        let text = "Name three colours."
        let old = try OfflineGreedy(model: ServerProcess.smol, chatPrompt: text, maxTokens: 8, precision: "q8")
        let new = try OfflineGreedy(model: data + "/ck/model.gguf", chatPrompt: text, maxTokens: 8, precision: "q8")
        let server = try ServerProcess(model: ServerProcess.smol, dataDir: data, metrics: true, args: ["--engine-precision", "q8"])
        XCTAssertTrue(server.log.contains("engine precision q8"), server.log)
        let metrics = try server.scrapeMetrics()
        XCTAssertTrue(metrics.contains("selm_engine_info{precision=\"q8\""), metrics)
        let c = try server.client()
        let hello = try c.hello()
        let v0 = hello.policyVersion
        XCTAssertEqual(hello.enginePrecision, "q8", "HelloReply says which precision the log-probs come from")
        guard case .statusReply(let status) = try c.call(9, .status(StatusRequest())) else { return XCTFail("status") }
        XCTAssertEqual(status.enginePrecision, "q8")

        let before = try greedy(c, id: 1, text)
        XCTAssertEqual(before.tokenIDs, old.ids, "the server's q8 engine answers as selm generate --engine-precision q8")
        XCTAssertLessThanOrEqual(maxAbsDifference(before.logprobs, old.logprobs), 1e-4)

        guard case .refreshWeightsReply(let reply) = try c.call(2, .refreshWeights(RefreshWeights(checkpoint: "ck"))) else { return XCTFail() }
        XCTAssertEqual(reply.version, v0 + 1)
        let after = try greedy(c, id: 3, text)
        XCTAssertEqual(after.version, v0 + 1)
        XCTAssertEqual(after.tokenIDs, new.ids, "after RefreshWeights: the checkpoint packed to q8")
        XCTAssertLessThanOrEqual(maxAbsDifference(after.logprobs, new.logprobs), 1e-4)
        let m2 = try server.scrapeMetrics()
        XCTAssertEqual(metricValue(m2, "selm_publish_packs_total"), 1, m2)
        XCTAssertGreaterThan(metricValue(m2, "selm_publish_pack_seconds") ?? 0, 0)
    }

    /// Without a learner the engine's bf16 copy is the only one kept (the f32 weights are freed) and
    /// still answers as the offline tool in bf16.
    func testBF16ServerWithoutLearnerMatchesTheOfflineTool() throws {
        try requireSmol()
        let dir = try temporaryDirectory()
        let text = "Name three colours."
        let offline = try OfflineGreedy(model: ServerProcess.smol, chatPrompt: text, maxTokens: 8, precision: "bf16")
        let server = try ServerProcess(model: ServerProcess.smol, dataDir: dir + "/data", metrics: true,
                                       args: ["--engine-precision", "bf16", "--no-learner"])
        XCTAssertTrue(try server.scrapeMetrics().contains("selm_engine_info{precision=\"bf16\""))
        let c = try server.client()
        XCTAssertEqual(try c.hello().enginePrecision, "bf16")
        let s = try greedy(c, id: 1, text)
        XCTAssertEqual(s.tokenIDs, offline.ids)
        XCTAssertLessThanOrEqual(maxAbsDifference(s.logprobs, offline.logprobs), 1e-4)
    }
}
