import Foundation
import Wire
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Generation through the server on SmolLM2: streaming, many requests in flight answered out of
/// order, concurrent clients, cancel, disconnects (KV freed), scoring, bad generation input.
final class GenerationTests: XCTestCase {
    /// Everything one generation request produced, in arrival order.
    struct Outcome {
        var chunks: [GenerateChunk] = []
        var samples: [SampleResult] = []
        var done: GenerateDone?
        var error: ErrorReply?
    }

    /// Reads replies for `ids` until each has its GenerateDone (or Error); returns them and the
    /// order in which the requests finished.
    func collect(_ c: TestClient, _ ids: [UInt64]) throws -> ([UInt64: Outcome], [UInt64]) {
        var out: [UInt64: Outcome] = [:]
        var finished: [UInt64] = []
        while finished.count < ids.count {
            guard let e = try c.receiveAny() else { throw TestError("connection closed") }
            guard ids.contains(e.id) else { continue }
            switch e.body {
            case .generateChunk(let ch): out[e.id, default: Outcome()].chunks.append(ch)
            case .sampleResult(let s): out[e.id, default: Outcome()].samples.append(s)
            case .generateDone(let d): out[e.id, default: Outcome()].done = d; finished.append(e.id)
            case .error(let err): out[e.id, default: Outcome()].error = err; finished.append(e.id)
            default: throw TestError("unexpected \(e.body)")
            }
        }
        return (out, finished)
    }

    func status(_ c: TestClient) throws -> StatusReply {
        guard case .statusReply(let s) = try c.call(999_999, .status(StatusRequest())) else { throw TestError("status") }
        return s
    }

    func testStreamingOutOfOrderRepliesAndConcurrentClients() throws {
        try requireSmol()
        let dir = try temporaryDirectory()
        let server = try ServerProcess(model: ServerProcess.smol, dataDir: dir + "/data", metrics: true)
        let version = try server.client().hello().policyVersion
        let prompt = Prompt.text("Write a short poem about the sea.")
        let results = Locked([Int: [UInt64: Outcome]]())
        let orders = Locked([Int: [UInt64]]())
        let failures = Locked([String]())
        let srv = server
        parallel(4) { k in
            do {
                let c = try srv.client()
                _ = try c.hello()
                // Three requests in flight at once: long (streamed), short, medium with n = 3.
                try c.send(10, .generate(GenerateRequest(prompts: [prompt], chat: true, sampling: SamplingParams(temperature: 0, maxTokens: 24),
                                                         ignoreEOS: true, stream: true)))
                try c.send(11, .generate(GenerateRequest(prompts: [prompt], chat: true, sampling: SamplingParams(temperature: 0, maxTokens: 3),
                                                         ignoreEOS: true)))
                try c.send(12, .generate(GenerateRequest(prompts: [prompt, .ids([1, 2, 3, 4])], chat: true,
                                                         sampling: SamplingParams(temperature: 0.8, seed: UInt64(k), maxTokens: 8),
                                                         n: 3, ignoreEOS: true)))
                let (out, order) = try collect(c, [10, 11, 12])
                results.with { $0[k] = out }
                orders.with { $0[k] = order }
            } catch {
                failures.with { $0.append("\(error)") }
            }
        }
        XCTAssertEqual(failures.get, [])
        let all = results.get
        for k in 0..<4 {
            guard let out = all[k], let long = out[10], let short = out[11], let multi = out[12] else { return XCTFail("client \(k)") }
            XCTAssertNil(long.error); XCTAssertNil(short.error); XCTAssertNil(multi.error)
            // The short request finished before the long one it was sent after.
            let order = orders.get[k]!
            XCTAssertLessThan(order.firstIndex(of: 11)!, order.firstIndex(of: 10)!, "replies are not held back in request order")
            // Streaming: chunks add up to the sample; logprobs parallel to tokens.
            XCTAssertEqual(long.samples.count, 1)
            let s = long.samples[0]
            XCTAssertEqual(long.chunks.flatMap(\.tokenIDs), s.tokenIDs)
            XCTAssertEqual(long.chunks.map(\.textDelta).joined(), s.text)
            XCTAssertGreaterThan(long.chunks.count, 1, "tokens arrive in several chunks")
            XCTAssertEqual(s.tokenIDs.count, 24)
            XCTAssertEqual(s.logprobs.count, 24)
            XCTAssertTrue(s.logprobs.allSatisfy { $0 <= 0 && $0.isFinite })
            XCTAssertEqual(s.finishReason, .length)
            XCTAssertEqual(s.version, version)
            XCTAssertEqual(s.firstVersion, version)
            XCTAssertEqual(long.done?.samples, 1)
            XCTAssertEqual(long.done?.completionTokens, 24)
            XCTAssertTrue(short.chunks.isEmpty, "no chunks without stream")
            // Greedy: the short sample is the long one's prefix, and every client got the same text.
            XCTAssertEqual(short.samples[0].tokenIDs, Array(s.tokenIDs.prefix(3)))
            XCTAssertEqual(s.tokenIDs, all[0]![10]!.samples[0].tokenIDs, "greedy output depends on the batch")
            // n = 3 for two prompts: six samples, each (prompt, sample) once.
            XCTAssertEqual(multi.samples.count, 6)
            XCTAssertEqual(Set(multi.samples.map { "\($0.promptIndex)/\($0.sampleIndex)" }), ["0/0", "0/1", "0/2", "1/0", "1/1", "1/2"])
            XCTAssertEqual(multi.done?.samples, 6)
            XCTAssertEqual(multi.done?.completionTokens, 48)
            XCTAssertEqual(multi.samples.first { $0.promptIndex == 1 }?.promptTokens, 4)
        }
        let metrics = try server.scrapeMetrics()
        XCTAssertEqual(metricValue(metrics, "selm_requests_total{type=\"generate\",outcome=\"ok\"}"), 12)
        XCTAssertEqual(metricValue(metrics, "selm_generated_tokens_total"), 4 * (24 + 3 + 48))
        XCTAssertEqual(metricValue(metrics, "selm_time_to_first_token_seconds_count"), 12)
        XCTAssertEqual(server.stop(), 0, server.log)
    }

    /// Cancel ends a generation with cancelled samples and frees its KV blocks; a client that
    /// disconnects mid-stream has its generations cancelled and their blocks freed too.
    func testCancelAndDisconnectFreeTheKVCache() throws {
        try requireSmol()
        let dir = try temporaryDirectory()
        let server = try ServerProcess(model: ServerProcess.smol, dataDir: dir + "/data")
        let watcher = try server.client()
        _ = try watcher.hello()
        let long = GenerateRequest(prompts: [.text("Count from one to one thousand.")], chat: true,
                                   sampling: SamplingParams(temperature: 0, maxTokens: 1000), ignoreEOS: true, stream: true)

        // Cancel.
        let a = try server.client()
        _ = try a.hello()
        try a.send(1, .generate(long))
        guard case .generateChunk = try a.receive(1) else { return XCTFail("no first chunk") }
        XCTAssertGreaterThan(try status(watcher).kvBlocksUsed, 0)
        guard case .cancelReply(let cr) = try a.call(2, .cancel(Cancel(targetID: 1))) else { return XCTFail() }
        XCTAssertTrue(cr.found)
        let (out, _) = try collect(a, [1])
        XCTAssertEqual(out[1]?.samples.map(\.finishReason), [.cancelled])
        XCTAssertLessThan(out[1]!.samples[0].tokenIDs.count, 1000)
        XCTAssertEqual(out[1]?.done?.samples, 1)
        guard case .cancelReply(let gone) = try a.call(3, .cancel(Cancel(targetID: 1))) else { return XCTFail() }
        XCTAssertFalse(gone.found, "a finished request cannot be cancelled")
        XCTAssertEqual(try status(watcher).kvBlocksUsed, 0, "cancelled sequences keep KV blocks")

        // Disconnect mid-stream, with 4 samples running.
        let b = try server.client()
        _ = try b.hello()
        var four = long
        four.n = 4
        try b.send(1, .generate(four))
        guard case .generateChunk = try b.receive(1) else { return XCTFail("no first chunk") }
        let busy = try status(watcher)
        XCTAssertEqual(busy.runningSequences, 4)
        XCTAssertGreaterThan(busy.kvBlocksUsed, 0)
        b.closeNow()
        let deadline = Date().addingTimeInterval(60)
        var st = try status(watcher)
        while (st.kvBlocksUsed > 0 || st.runningSequences > 0) && Date() < deadline {
            usleep(20_000)
            st = try status(watcher)
        }
        XCTAssertEqual(st.runningSequences, 0, "the disconnected client's sequences still run")
        XCTAssertEqual(st.kvBlocksUsed, 0, "the disconnected client's KV blocks were not freed")
        XCTAssertEqual(st.connections, 2)
        XCTAssertEqual(server.stop(), 0, server.log)
    }

    /// Bad generation and scoring input: each refused with its code and field; the connection then
    /// serves a valid request.
    func testBadGenerationInputIsRefusedWithItsField() throws {
        try requireSmol()
        let dir = try temporaryDirectory()
        let server = try ServerProcess(model: ServerProcess.smol, dataDir: dir + "/data")
        let c = try server.client()
        let h = try c.hello()
        let ctx = Int(h.contextLength), vocab = h.vocabSize
        func gen(_ prompts: [Prompt] = [.ids([1, 2, 3])], sampling: SamplingParams = SamplingParams(maxTokens: 4), n: UInt32 = 1,
                 stopIDs: [UInt32] = [], version: UInt64? = nil) -> ClientMessage {
            .generate(GenerateRequest(prompts: prompts, sampling: sampling, n: n, stopTokenIDs: stopIDs, requireVersion: version))
        }
        assertError(try c.call(1, gen(sampling: SamplingParams(temperature: -1))), .invalidArgument, field: "sampling.temperature")
        assertError(try c.call(2, gen(sampling: SamplingParams(topP: 1.5))), .invalidArgument, field: "sampling.top_p")
        assertError(try c.call(3, gen(sampling: SamplingParams(minP: 2))), .invalidArgument, field: "sampling.min_p")
        assertError(try c.call(4, gen(sampling: SamplingParams(repetitionPenalty: 0))), .invalidArgument, field: "sampling.repetition_penalty")
        assertError(try c.call(5, gen(n: 65)), .invalidArgument, field: "n")
        assertError(try c.call(6, gen([])), .invalidArgument, field: "prompts")
        assertError(try c.call(7, gen([.ids([1, vocab, 2])])), .outOfRange, field: "prompts[0].ids[1]")
        assertError(try c.call(8, gen([.ids([1]), .ids([UInt32.max])])), .outOfRange, field: "prompts[1].ids[0]")
        assertError(try c.call(9, gen(stopIDs: [2, vocab + 5])), .outOfRange, field: "stop_token_ids[1]")
        assertError(try c.call(10, gen([.ids(Array(repeating: 1, count: ctx))])), .outOfRange, field: "prompts[0]")
        assertError(try c.call(11, gen([.ids(Array(repeating: 1, count: 100))], sampling: SamplingParams(maxTokens: UInt32(ctx)))),
                    .outOfRange, field: "sampling.max_tokens")
        assertError(try c.call(12, gen(version: 42)), .notFound)
        assertError(try c.call(13, .score(ScoreRequest(items: [ScoreItem(prompt: .ids([1]), continuation: .ids([vocab]))]))),
                    .outOfRange, field: "items[0].continuation.ids[0]")
        assertError(try c.call(14, .score(ScoreRequest(items: [ScoreItem(prompt: .ids(Array(repeating: 1, count: ctx)), continuation: .ids([1]))]))),
                    .outOfRange, field: "items[0]")
        // Still serving.
        try c.send(20, gen())
        let (out, _) = try collect(c, [20])
        XCTAssertNil(out[20]?.error)
        XCTAssertEqual(out[20]?.samples.first?.tokenIDs.count, 4)
        XCTAssertEqual(server.stop(), 0)
    }

    /// Score returns the log-probabilities the generation reported for the same tokens, at the
    /// engine's own agreement between its decode and scoring paths (1e-4 per token, EngineTests).
    func testScoreAgreesWithGeneration() throws {
        try requireSmol()
        let dir = try temporaryDirectory()
        let server = try ServerProcess(model: ServerProcess.smol, dataDir: dir + "/data")
        let c = try server.client()
        let version = try c.hello().policyVersion
        let prompt = Prompt.text("The capital of France is")
        try c.send(1, .generate(GenerateRequest(prompts: [prompt], sampling: SamplingParams(temperature: 0, maxTokens: 8), ignoreEOS: true)))
        let (out, _) = try collect(c, [1])
        let sample = try XCTUnwrap(out[1]?.samples.first)
        let r = try c.call(2, .score(ScoreRequest(items: [ScoreItem(prompt: prompt, continuation: .ids(sample.tokenIDs))], topLogprobs: 2)))
        guard case .scoreReply(let score) = r else { return XCTFail("\(r)") }
        XCTAssertEqual(score.version, version)
        XCTAssertEqual(score.items.count, 1)
        XCTAssertEqual(score.items[0].tokenIDs, sample.tokenIDs)
        let worst = maxAbsDifference(score.items[0].logprobs, sample.logprobs)
        print("score vs generation: worst per-token difference \(worst)")
        XCTAssertLessThanOrEqual(worst, 1e-4)
        XCTAssertEqual(score.items[0].totalLogprob, sample.logprobs.reduce(0) { $0 + Double($1) }, accuracy: 1e-4 * Double(sample.logprobs.count))
        XCTAssertEqual(score.items[0].topLogprobs.count, 8)
        XCTAssertEqual(score.items[0].topLogprobs[0].tokenIDs.first, sample.tokenIDs[0], "greedy picked the most likely token")
        XCTAssertEqual(server.stop(), 0)
    }

    /// RefreshWeights loads a checkpoint from the data directory into the engine as a new version:
    /// subscribers hear of it, new samples carry it, a request can pin it, and they come from the
    /// checkpoint's weights — a checkpoint unlike the served weights (the final norm perturbed),
    /// whose greedy answer and log-probs `selm generate` computes offline.
    func testRefreshWeightsPublishesANewVersionToTheEngine() throws {
        try requireSmol()
        let dir = try temporaryDirectory()
        let data = dir + "/data"
        try FileManager.default.createDirectory(atPath: data + "/ck", withIntermediateDirectories: true)
        try PerturbedCheckpoint.write(from: ServerProcess.smol, to: data + "/ck/model.gguf")
        let text = "Name three colours."
        let old = try OfflineGreedy(model: ServerProcess.smol, chatPrompt: text, maxTokens: 8)
        let new = try OfflineGreedy(model: data + "/ck/model.gguf", chatPrompt: text, maxTokens: 8)
        XCTAssertNotEqual(new.ids, old.ids, "the checkpoint must answer otherwise than the served weights")
        let server = try ServerProcess(model: ServerProcess.smol, dataDir: data)
        let c = try server.client()
        let v0 = try c.hello().policyVersion
        guard case .versionEvent(let first) = try c.call(1, .subscribeVersions(SubscribeVersions())) else { return XCTFail() }
        XCTAssertEqual(first.version, v0)
        let greedy = GenerateRequest(prompts: [.text(text)], chat: true, sampling: SamplingParams(temperature: 0, maxTokens: 8))
        try c.send(2, .generate(greedy))
        let (before, _) = try collect(c, [2])
        let b = try XCTUnwrap(before[2]?.samples.first)
        XCTAssertEqual(b.version, v0)
        XCTAssertEqual(b.tokenIDs, old.ids, "before the refresh: the served model's answer")
        XCTAssertLessThanOrEqual(maxAbsDifference(b.logprobs, old.logprobs), 1e-4)
        let r = try c.call(3, .refreshWeights(RefreshWeights(checkpoint: "ck")))
        guard case .refreshWeightsReply(let reply) = r else { return XCTFail("\(r)") }
        XCTAssertEqual(reply.version, v0 + 1)
        guard case .versionEvent(let pushed) = try c.receive(1) else { return XCTFail() }
        XCTAssertEqual(pushed.version, v0 + 1)
        XCTAssertEqual(pushed.learnerStep, 0)
        // Pinned to the new version and unpinned (new requests bind to it): the checkpoint's answer.
        var pinned = greedy
        pinned.requireVersion = v0 + 1
        try c.send(4, .generate(pinned))
        try c.send(5, .generate(greedy))
        let (after, _) = try collect(c, [4, 5])
        for id: UInt64 in [4, 5] {
            XCTAssertNil(after[id]?.error)
            let s = try XCTUnwrap(after[id]?.samples.first)
            XCTAssertEqual(s.version, v0 + 1)
            XCTAssertEqual(s.tokenIDs, new.ids, "request \(id): the refreshed version does not serve the checkpoint's weights")
            XCTAssertLessThanOrEqual(maxAbsDifference(s.logprobs, new.logprobs), 1e-4, "request \(id): log-probs of the checkpoint")
        }
        guard case .statusReply(let st) = try c.call(6, .status(StatusRequest())) else { return XCTFail() }
        XCTAssertEqual(st.policyVersion, v0 + 1)
        XCTAssertEqual(server.stop(), 0)
    }

    /// SIGTERM during a streamed generation: the client gets its cancelled sample and GenerateDone,
    /// then the connection closes, and the server exits 0.
    func testSigtermCancelsRunningGenerationsAndExitsZero() throws {
        try requireSmol()
        let dir = try temporaryDirectory()
        let server = try ServerProcess(model: ServerProcess.smol, dataDir: dir + "/data")
        let c = try server.client()
        _ = try c.hello()
        try c.send(1, .generate(GenerateRequest(prompts: [.text("Tell me a long story.")], chat: true,
                                                sampling: SamplingParams(temperature: 0, maxTokens: 1000), ignoreEOS: true, stream: true)))
        guard case .generateChunk = try c.receive(1) else { return XCTFail("no first chunk") }
        kill(server.pid, SIGTERM)
        let (out, _) = try collect(c, [1])
        XCTAssertEqual(out[1]?.samples.map(\.finishReason), [.cancelled])
        XCTAssertNotNil(out[1]?.done)
        XCTAssertTrue(c.waitForClose())
        XCTAssertEqual(server.stop(), 0, server.log)
    }
}

extension TestClient {
    /// Closes the socket at once (a client that goes away mid-stream).
    func closeNow() {
        shutdown(fd, Int32(SHUT_RDWR))
    }
}
