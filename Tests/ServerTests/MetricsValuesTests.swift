import Foundation
import Wire
import XCTest

/// `/metrics` after known traffic on a real `selm serve` (the tiny chat model): every counter equals
/// what the client sent and received — requests by type and outcome (no other series), completion
/// and prompt tokens, tokenizer bytes, preference rows, WAL records, frames and bytes both ways,
/// connections — and each histogram's count equals the number of requests it times. With the
/// learner, its step, loss, consumed sequence and version equal what Status and the version event say.
final class MetricsValuesTests: XCTestCase {
    static var tinyChat: String { ServerProcess.root.appendingPathComponent("Tests/ModelTests/Fixtures/tiny-chat").path }

    /// A client that tallies the frames and bytes it sends and receives.
    final class CountingClient {
        let c: TestClient
        var framesOut = 0, bytesOut = 0, framesIn = 0, bytesIn = 0
        init(_ c: TestClient) { self.c = c }

        func send(_ id: UInt64, _ body: ClientMessage) throws {
            let frame = try Frame.encode(Envelope(id: id, body: body))
            framesOut += 1
            bytesOut += frame.count
            try c.sendRaw(frame)
        }

        /// The next reply for `id`, counted (the server's encoder is deterministic, so re-encoding a
        /// reply gives the bytes that came over the socket).
        func receive(_ id: UInt64) throws -> ServerMessage {
            let m = try c.receive(id)
            framesIn += 1
            bytesIn += Frame.headerSize + Frame.encodeBody(Envelope(id: id, body: m)).count
            return m
        }

        func call(_ id: UInt64, _ body: ClientMessage) throws -> ServerMessage {
            try send(id, body)
            return try receive(id)
        }

        /// Replies of a generation up to its GenerateDone (or Error): (samples, done).
        func generation(_ id: UInt64) throws -> ([SampleResult], GenerateDone?) {
            var samples: [SampleResult] = []
            while true {
                switch try receive(id) {
                case .generateChunk: continue
                case .sampleResult(let s): samples.append(s)
                case .generateDone(let d): return (samples, d)
                case .error(let e): throw TestError("generate \(id): \(e.code) \(e.message)")
                default: throw TestError("generate \(id): unexpected reply")
                }
            }
        }
    }

    /// Every `selm_requests_total` series as "type/outcome" → count.
    func requestSeries(_ text: String) -> [String: Double] {
        var out: [String: Double] = [:]
        let prefix = "selm_requests_total{type=\""
        for line in text.split(separator: "\n") where line.hasPrefix(prefix) {
            let rest = line.dropFirst(prefix.count)
            guard let q = rest.firstIndex(of: "\""), let o = rest.range(of: "outcome=\""), let end = rest[o.upperBound...].firstIndex(of: "\""),
                  let space = rest.lastIndex(of: " "), let v = Double(rest[rest.index(after: space)...]) else { continue }
            out["\(rest[..<q])/\(rest[o.upperBound..<end])"] = v
        }
        return out
    }

    func testCountersEqualTheTrafficSent() throws {
        let dir = try temporaryDirectory()
        let server = try ServerProcess(model: Self.tinyChat, dataDir: dir + "/data", metrics: true, args: ["--no-learner"])
        let c = CountingClient(try server.client())
        guard case .helloReply(let hello) = try c.call(0, .hello(Hello(clientName: "metrics"))) else { return XCTFail("hello") }

        // k = 4 tokenize (3 texts, 1 chat), 2 detokenize.
        var tokenizerBytes = 0
        for (i, text) in ["hello world", "abc", "a somewhat longer text, with punctuation!"].enumerated() {
            guard case .tokenizeReply = try c.call(UInt64(10 + i), .tokenize(TokenizeRequest(input: .text(text)))) else { return XCTFail() }
            tokenizerBytes += text.utf8.count
        }
        let chat = [ChatMessage(role: "user", content: "hi there")]
        guard case .tokenizeReply = try c.call(13, .tokenize(TokenizeRequest(input: .messages(chat), chat: true))) else { return XCTFail() }
        tokenizerBytes += "user".utf8.count + "hi there".utf8.count
        for i in 0..<2 {
            guard case .detokenizeReply = try c.call(UInt64(20 + i), .detokenize(DetokenizeRequest(ids: [5, 6, 7]))) else { return XCTFail() }
        }

        // j = 3 generations with known token counts (ids prompts, ignore_eos, max_tokens): one
        // streamed, one with two prompts × n = 2.
        let gens: [(prompts: [[UInt32]], n: UInt32, maxTokens: UInt32, stream: Bool)] = [
            ([[1, 5, 9, 30]], 1, 7, false),
            ([[1, 8]], 1, 5, true),
            ([[1, 2, 3], [4, 5, 6, 7, 8]], 2, 3, false),
        ]
        var completion = 0, prompt = 0
        for (g, spec) in gens.enumerated() {
            let id = UInt64(30 + g)
            try c.send(id, .generate(GenerateRequest(prompts: spec.prompts.map { .ids($0) },
                                                     sampling: SamplingParams(temperature: 0.7, seed: 1, maxTokens: spec.maxTokens),
                                                     n: spec.n, ignoreEOS: true, stream: spec.stream)))
            let (samples, done) = try c.generation(id)
            XCTAssertEqual(samples.count, spec.prompts.count * Int(spec.n))
            XCTAssertTrue(samples.allSatisfy { $0.tokenIDs.count == Int(spec.maxTokens) })
            XCTAssertEqual(done?.completionTokens, UInt64(spec.prompts.count * Int(spec.n * spec.maxTokens)))
            completion += spec.prompts.count * Int(spec.n * spec.maxTokens)
            prompt += spec.prompts.reduce(0) { $0 + $1.count } * Int(spec.n)
        }
        // One refused generation, one refused preference batch.
        assertError(try c.call(40, .generate(GenerateRequest(prompts: [.ids([1])], sampling: SamplingParams(topP: 0)))),
                    .invalidArgument, field: "sampling.top_p")
        assertError(try c.call(41, .submitPreferences(SubmitPreferences(rows: [PreferenceRow(prompt: .ids([1]), chosen: .ids([]), rejected: .ids([3]))]))),
                    .invalidArgument)
        // Preference rows: batches of 3 and 2 rows (one WAL record each).
        for (b, rows) in [3, 2].enumerated() {
            let batch = (0..<rows).map { PreferenceRow(prompt: .ids([1, UInt32(10 + $0)]), chosen: .ids([20, 2]), rejected: .ids([21, 22, 2])) }
            guard case .preferenceAck(let ack) = try c.call(UInt64(50 + b), .submitPreferences(SubmitPreferences(rows: batch))) else { return XCTFail() }
            XCTAssertEqual(ack.rows, UInt32(rows))
            XCTAssertEqual(ack.lastSequence, UInt64(b + 1))
        }
        guard case .scoreReply = try c.call(60, .score(ScoreRequest(items: [ScoreItem(prompt: .ids([1, 2]), continuation: .ids([3, 4]))]))) else {
            return XCTFail()
        }
        guard case .statusReply = try c.call(61, .status(StatusRequest())) else { return XCTFail() }

        let text = try server.scrapeMetrics()
        XCTAssertEqual(requestSeries(text), [
            "hello/ok": 1, "tokenize/ok": 4, "detokenize/ok": 2, "generate/ok": 3, "generate/invalid_argument": 1,
            "submit_preferences/ok": 2, "submit_preferences/invalid_argument": 1, "score/ok": 1, "status/ok": 1,
        ], text)
        func value(_ series: String) -> Double? { metricValue(text, series) }
        XCTAssertEqual(value("selm_generated_tokens_total"), Double(completion))
        XCTAssertEqual(value("selm_prompt_tokens_total"), Double(prompt))
        XCTAssertEqual(completion, 7 + 5 + 12)
        XCTAssertEqual(prompt, 4 + 2 + 2 * 8)
        XCTAssertEqual(value("selm_tokenizer_input_bytes_total"), Double(tokenizerBytes))
        XCTAssertEqual(value("selm_preference_rows_total"), 5)
        XCTAssertEqual(value("selm_wal_last_sequence"), 2)
        XCTAssertEqual(value("selm_wal_consumed_sequence"), 0)
        XCTAssertEqual(value("selm_wal_records_pending"), 2)
        XCTAssertEqual(value("selm_wal_batches_unacknowledged"), 0)
        // Histograms: one observation per timed request, every one in the +Inf bucket.
        XCTAssertEqual(value("selm_time_to_first_token_seconds_count"), 3)
        XCTAssertEqual(value("selm_time_to_first_token_seconds_bucket{le=\"+Inf\"}"), 3)
        XCTAssertEqual(value("selm_preference_ack_seconds_count"), 2)
        XCTAssertEqual(value("selm_preference_ack_seconds_bucket{le=\"+Inf\"}"), 2)
        XCTAssertGreaterThan(value("selm_preference_ack_seconds_sum") ?? 0, 0)
        // Frames and bytes, both ways, as the client counted them.
        XCTAssertEqual(value("selm_frames_received_total"), Double(c.framesOut))
        XCTAssertEqual(value("selm_received_bytes_total"), Double(c.bytesOut))
        XCTAssertEqual(value("selm_frames_sent_total"), Double(c.framesIn))
        XCTAssertEqual(value("selm_sent_bytes_total"), Double(c.bytesIn))
        XCTAssertEqual(value("selm_connections_accepted_total"), 1)
        XCTAssertEqual(value("selm_connections"), 1)
        XCTAssertEqual(value("selm_kv_blocks_used"), 0)
        XCTAssertEqual(value("selm_running_sequences"), 0)
        XCTAssertEqual(value("selm_waiting_requests"), 0)
        XCTAssertEqual(value("selm_learner_steps_total"), 0)
        XCTAssertEqual(value("selm_policy_version"), Double(hello.policyVersion))
        XCTAssertEqual(server.stop(), 0, server.log)
    }

    /// A tiny-chat server (`args` added) whose learner takes one step on a full batch of two rows
    /// sent by `c`: the start version and the version event of that step, seen by `watcher`
    /// (subscribed to versions with request id 1).
    func oneLearnerStep(_ args: [String], lr: String) throws -> (server: ServerProcess, c: TestClient, watcher: TestClient,
                                                                  v0: VersionEvent, v1: VersionEvent) {
        let dir = try temporaryDirectory()
        let server = try ServerProcess(model: Self.tinyChat, dataDir: dir + "/data", metrics: true,
                                       args: args + ["--batch-size", "2", "--max-wait-seconds", "0", "--lr", lr, "--publish-every", "1",
                                                     "--checkpoint-every", "1000"])
        let watcher = try server.client()
        _ = try watcher.hello()
        guard case .versionEvent(let v0) = try watcher.call(1, .subscribeVersions(SubscribeVersions())) else { throw TestError("subscribe") }
        let c = try server.client()
        _ = try c.hello()
        let rows = (0..<2).map { PreferenceRow(prompt: .ids([1, UInt32(10 + $0)]), chosen: .ids([20, 2]), rejected: .ids([21, 22, 2])) }
        guard case .preferenceAck = try c.call(2, .submitPreferences(SubmitPreferences(rows: rows))) else { throw TestError("submit") }
        guard case .versionEvent(let v1) = try watcher.receive(1) else { throw TestError("version event") }
        return (server, c, watcher, v0, v1)
    }

    /// The learner's figures: one step on a full batch of two rows, then the metrics say what the
    /// version event and Status say.
    func testLearnerFiguresEqualWhatStatusAndTheVersionEventSay() throws {
        // The step publishes a version; its event carries the step's metrics.
        let (server, c, _, v0, v1) = try oneLearnerStep([], lr: "1e-3")
        XCTAssertEqual(v1.version, v0.version + 1)
        XCTAssertEqual(v1.learnerStep, 1)
        // The engine installs a published version at its next step: wait for Status to say so.
        var st = StatusReply()
        let deadline = Date().addingTimeInterval(60)
        repeat {
            guard case .statusReply(let s) = try c.call(3, .status(StatusRequest())) else { return XCTFail() }
            st = s
        } while st.policyVersion != v1.version && Date() < deadline && usleep(20_000) == 0
        XCTAssertEqual(st.policyVersion, v1.version)
        XCTAssertEqual(st.learnerStep, 1)
        XCTAssertEqual(st.walConsumedSequence, 1)
        let text = try server.scrapeMetrics()
        XCTAssertEqual(metricValue(text, "selm_learner_steps_total"), 1)
        let loss = try XCTUnwrap(v1.metrics["loss"])
        XCTAssertEqual(metricValue(text, "selm_learner_loss"), loss)
        XCTAssertEqual(metricValue(text, "selm_learner_metric{name=\"loss\"}"), loss)
        XCTAssertEqual(st.learnerMetrics["loss"], loss)
        XCTAssertEqual(metricValue(text, "selm_policy_version"), Double(v1.version))
        XCTAssertEqual(metricValue(text, "selm_wal_last_sequence"), 1)
        XCTAssertEqual(metricValue(text, "selm_wal_consumed_sequence"), 1)
        XCTAssertEqual(metricValue(text, "selm_wal_records_pending"), 0)
        XCTAssertEqual(metricValue(text, "selm_preference_rows_total"), 2)
        XCTAssertEqual(server.stop(), 0, server.log)
    }

    /// With a compact engine the learner's optimizer pass makes the version's packed weights
    /// (issue 13: nothing is packed on publish): the metrics count it as a snapshot, not a pack, and
    /// the version scores bit for bit as the same weights packed by RefreshWeights from the
    /// checkpoint of that step.
    func testALearnerStepIsPublishedAsTheOptimizersSnapshot() throws {
        let (server, c, _, v0, v1) = try oneLearnerStep(["--engine-precision", "bf16"], lr: "1e-2")
        XCTAssertEqual(v1.learnerStep, 1)
        var text = try server.scrapeMetrics()
        XCTAssertEqual(metricValue(text, "selm_publish_snapshots_total"), 1, text)
        XCTAssertEqual(metricValue(text, "selm_publish_packs_total"), 0, text)

        func score(_ id: UInt64, _ version: UInt64) throws -> [Float] {
            let item = ScoreItem(prompt: .ids([1, 10, 11, 12]), continuation: .ids([20, 21, 22, 2]))
            guard case .scoreReply(let s) = try c.call(id, .score(ScoreRequest(items: [item], version: version))) else { throw TestError("score") }
            XCTAssertEqual(s.version, version)
            return s.items[0].logprobs
        }
        let fromSnapshot = try score(3, v1.version)
        XCTAssertNotEqual(fromSnapshot, try score(4, v0.version), "the step changed the weights")
        guard case .saveCheckpointReply(let saved) = try c.call(5, .saveCheckpoint(SaveCheckpoint(name: "one"))) else { return XCTFail() }
        XCTAssertEqual(saved.version, v1.version)
        guard case .refreshWeightsReply(let r) = try c.call(6, .refreshWeights(RefreshWeights(checkpoint: saved.path))) else { return XCTFail() }
        XCTAssertEqual(try score(7, r.version).map(\.bitPattern), fromSnapshot.map(\.bitPattern),
                       "the snapshot is what packing the step's weights gives")
        text = try server.scrapeMetrics()
        XCTAssertEqual(metricValue(text, "selm_publish_packs_total"), 1, text)
        XCTAssertEqual(server.stop(), 0, server.log)
    }

    /// Publishing every step reuses memory (issue 13): the learner fills each snapshot in the memory
    /// of the version the engine released last, so in steady state no compact model is allocated or
    /// freed — unmapping ~365 MB per publication cost the engine 5.6–6.7 % of its throughput here.
    /// Live at most: `maxLiveVersions` (3) + the reference version + the snapshot being filled.
    /// (Before compact models' memory was pooled, every version allocated its own and freed it.)
    func testALearnerPublishingEveryStepReusesTheMemoryOfReleasedVersions() throws {
        let (server, c, watcher, _, v1) = try oneLearnerStep(["--engine-precision", "bf16"], lr: "1e-3")
        let steps = 8
        var last = v1.version
        for i in 2...steps {
            // The next batch is sent once the engine has installed the last version (its event) and
            // the version it retired has been released (0.5 s later, on the reaper's thread), before
            // the learner asks for memory: as a learner whose steps take a second or more.
            Thread.sleep(forTimeInterval: 0.8)
            let rows = (0..<2).map { PreferenceRow(prompt: .ids([1, UInt32(10 + $0 + 2 * i)]), chosen: .ids([20, 2]), rejected: .ids([21, 22, 2])) }
            guard case .preferenceAck = try c.call(UInt64(10 + i), .submitPreferences(SubmitPreferences(rows: rows))) else { throw TestError("submit") }
            var event: VersionEvent
            repeat {
                guard case .versionEvent(let v) = try watcher.receive(1) else { throw TestError("version event") }
                event = v
            } while event.version == last
            XCTAssertEqual(event.learnerStep, UInt64(i))
            last = event.version
        }
        let text = try server.scrapeMetrics()
        XCTAssertEqual(metricValue(text, "selm_publish_snapshots_total"), Double(steps), text)
        let allocated = try XCTUnwrap(metricValue(text, "selm_compact_memory_total{event=\"allocated\"}"), text)
        let reused = try XCTUnwrap(metricValue(text, "selm_compact_memory_total{event=\"reused\"}"), text)
        XCTAssertEqual(metricValue(text, "selm_compact_memory_total{event=\"freed\"}"), 0, text)
        // The start model and one snapshot per step: all but the first few reuse memory.
        XCTAssertEqual(allocated + reused, Double(steps + 1), text)
        XCTAssertLessThanOrEqual(allocated, 3 + 1 + 1, text)
        XCTAssertEqual(server.stop(), 0, server.log)
    }
}
