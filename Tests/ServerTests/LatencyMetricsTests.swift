import Foundation
import Wire
import XCTest

/// The latency and capacity figures of `/metrics` after known traffic on a real `selm serve`:
/// inter-token latency (one observation per finished sample of ≥ 2 tokens), end-to-end latency
/// (one per generation finished ok, socket and HTTP API alike), the KV cache's usage ratio, and the
/// learner's step time (which Status reports too).
final class LatencyMetricsTests: XCTestCase {
    static var tinyChat: String { ServerProcess.root.appendingPathComponent("Tests/ModelTests/Fixtures/tiny-chat").path }

    func testLatencyHistogramsCountWhatWasGenerated() throws {
        let dir = try temporaryDirectory()
        let server = try ServerProcess(model: Self.tinyChat, dataDir: dir + "/data", metrics: true,
                                       args: ["--no-learner", "--http", "127.0.0.1:0"])
        defer { server.stop() }
        let c = try server.client()
        _ = try c.hello()
        // Three socket generations: 2 prompts × n 2 × 5 tokens (4 samples timed), 1 token (none), 3 tokens (1).
        let specs: [(prompts: Int, n: UInt32, tokens: UInt32)] = [(2, 2, 5), (1, 1, 1), (1, 1, 3)]
        for (i, s) in specs.enumerated() {
            let id = UInt64(10 + i)
            try c.send(id, .generate(GenerateRequest(prompts: (0..<s.prompts).map { .ids([1, UInt32(5 + $0)]) },
                                                     sampling: SamplingParams(temperature: 0.7, seed: 1, maxTokens: s.tokens),
                                                     n: s.n, ignoreEOS: true)))
            while true {
                let m = try c.receive(id)
                if case .generateDone = m { break }
                if case .error(let e) = m { return XCTFail("generate: \(e.message)") }
            }
        }
        // One HTTP completion of 2 tokens: one more of each.
        let http = try RawHTTP(port: try server.httpPort())
        let reply = try http.exchange("POST", "/v1/completions", body: #"{"prompt": "ab", "max_tokens": 2, "temperature": 0, "ignore_eos": true}"#)
        XCTAssertEqual(reply.status, 200, String(decoding: reply.body, as: UTF8.self))
        // A refused generation is not an end-to-end observation.
        guard case .error = try c.call(20, .generate(GenerateRequest(prompts: [.ids([1])], sampling: SamplingParams(topP: 0)))) else {
            return XCTFail("top_p 0 accepted")
        }
        let text = try server.scrapeMetrics()
        func value(_ s: String) -> Double? { metricValue(text, s) }
        XCTAssertEqual(value("selm_inter_token_latency_seconds_count"), 4 + 0 + 1 + 1, text)
        XCTAssertEqual(value("selm_inter_token_latency_seconds_bucket{le=\"+Inf\"}"), 6)
        XCTAssertGreaterThan(value("selm_inter_token_latency_seconds_sum") ?? 0, 0)
        XCTAssertEqual(value("selm_e2e_request_latency_seconds_count"), 3 + 1, text)
        XCTAssertGreaterThan(value("selm_e2e_request_latency_seconds_sum") ?? 0, 0)
        // End to end covers first token to last: its sum is at least time to first token's.
        XCTAssertGreaterThanOrEqual(value("selm_e2e_request_latency_seconds_sum") ?? 0, value("selm_time_to_first_token_seconds_sum") ?? .infinity)
        // Idle: nothing holds KV blocks; the ratio is used / total.
        let used = try XCTUnwrap(value("selm_kv_blocks_used")), total = try XCTUnwrap(value("selm_kv_blocks_total"))
        XCTAssertGreaterThan(total, 0)
        XCTAssertEqual(value("selm_kv_cache_usage_ratio"), used / total, text)
    }

    func testLearnerStepTimeIsReported() throws {
        let dir = try temporaryDirectory()
        let server = try ServerProcess(model: Self.tinyChat, dataDir: dir + "/data", metrics: true,
                                       args: ["--batch-size", "2", "--max-wait-seconds", "0", "--checkpoint-every", "0"])
        defer { server.stop() }
        let c = try server.client()
        _ = try c.hello()
        XCTAssertEqual(metricValue(try server.scrapeMetrics(), "selm_learner_step_seconds"), 0)
        let rows = (0..<2).map { PreferenceRow(prompt: .ids([1, UInt32(10 + $0)]), chosen: .ids([20, 2]), rejected: .ids([21, 22, 2])) }
        guard case .preferenceAck = try c.call(1, .submitPreferences(SubmitPreferences(rows: rows))) else { return XCTFail() }
        var st = StatusReply()
        let deadline = Date().addingTimeInterval(60)
        repeat {
            guard case .statusReply(let s) = try c.call(2, .status(StatusRequest())) else { return XCTFail() }
            st = s
        } while st.learnerStep < 1 && Date() < deadline && usleep(20_000) == 0
        XCTAssertEqual(st.learnerStep, 1)
        let text = try server.scrapeMetrics()
        let seconds = try XCTUnwrap(metricValue(text, "selm_learner_step_seconds"), text)
        XCTAssertGreaterThan(seconds, 0)
        XCTAssertEqual(st.learnerMetrics["step_seconds"], seconds)
        XCTAssertEqual(metricValue(text, "selm_learner_step_seconds_total"), seconds, "one step: the total is that step's")
    }
}
