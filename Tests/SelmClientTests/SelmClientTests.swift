import Foundation
import XCTest
@testable import SelmClient

/// The Swift client against a real `selm serve` on real sockets.
final class SelmClientTests: XCTestCase {
    nonisolated(unsafe) static var shared: ServeProcess?

    /// One server for the tests that do not disturb it (started on first use, stopped after the
    /// class). It runs no learner, so its version never changes under a test: results of two calls
    /// are comparable. Tests that need the learner start a server of their own.
    func server() throws -> ServeProcess {
        if let s = Self.shared { return s }
        let s = try ServeProcess(args: ["--no-learner"])
        Self.shared = s
        return s
    }

    override class func tearDown() {
        shared?.shutdown()
        shared = nil
        super.tearDown()
    }

    func client(unix: Bool = false) throws -> SelmClient {
        let c = try server().client(unix: unix)
        addTeardownBlock { c.close() }
        return c
    }

    static let question = "What is the capital of France? Answer in one word."

    // MARK: Hello, endpoints, life cycle

    func testHelloDescribesTheModel() throws {
        let h = try client().hello
        XCTAssertEqual(h.protocolVersion, 1)
        XCTAssertTrue(h.modelPath.hasSuffix(".gguf"), h.modelPath)
        XCTAssertFalse(h.modelName.isEmpty)
        XCTAssertEqual(h.vocabSize, 49152)
        XCTAssertGreaterThanOrEqual(h.contextLength, 2048)
        XCTAssertFalse(h.chatTemplate.isEmpty)
        XCTAssertEqual(h.maxFrameBytes, 16 << 20)
    }

    func testTCPAndUnixSocketServeTheSame() throws {
        let tcp = try client(), unix = try client(unix: true)
        XCTAssertEqual(try tcp.tokenize("Hello world"), [19556, 905])
        XCTAssertEqual(try unix.tokenize("Hello world"), [19556, 905])
        XCTAssertEqual(tcp.hello.modelName, unix.hello.modelName)
    }

    func testClosedClientRefusesCalls() throws {
        let c = try server().client()
        c.close()
        c.close()  // twice is fine
        XCTAssertTrue(c.isClosed)
        XCTAssertThrowsError(try c.status()) { e in
            guard case .connectionClosed = e as? SelmClientError else { return XCTFail("\(e)") }
        }
    }

    // MARK: Tokenizer

    func testTokenizeAndDetokenize() throws {
        let c = try client()
        let ids = try c.tokenize("Hello world")
        XCTAssertEqual(ids, [19556, 905])
        XCTAssertEqual(try c.detokenize(ids), "Hello world")
        let chat = try c.tokenize("Hi", chat: true)
        XCTAssertEqual(try c.tokenize(TokenizeRequest(input: .messages([ChatMessage(role: "user", content: "Hi")]))), chat)
        XCTAssertEqual(try c.tokenize("<|im_start|>", addSpecial: true).count, 1)
        assertServerError(.outOfRange, field: "ids[1]") { try c.detokenize([1, 100_000_000]) }
        XCTAssertEqual(try c.detokenize([19556]), "Hello")  // the connection carries on
    }

    // MARK: Generation

    func testGenerateGreedy() throws {
        let c = try client()
        let samples = try c.generate(GenerateRequest(prompts: [.text(Self.question)], chat: true,
                                                     sampling: SamplingParams(temperature: 0, maxTokens: 12)))
        XCTAssertEqual(samples.count, 1)
        let s = try XCTUnwrap(samples.first)
        XCTAssertEqual(s.tokenIDs.count, Int(s.completionTokens))
        XCTAssertEqual(s.logprobs.count, s.tokenIDs.count)
        XCTAssertTrue((1...12).contains(s.tokenIDs.count))
        XCTAssertTrue([.eos, .length].contains(s.finishReason), "\(s.finishReason)")
        XCTAssertEqual(s.version, try c.status().policyVersion)
        XCTAssertEqual(s.firstVersion, s.version)
        XCTAssertTrue(s.text.contains("Paris"), s.text)
    }

    func testGenerateManyPromptsAndSamples() throws {
        let c = try client()
        let ids = try c.tokenize("The sky is")
        let r = GenerateRequest(prompts: [.text("Once upon a time"), .ids(ids), .messages([ChatMessage(role: "user", content: "Say hi.")])],
                                sampling: SamplingParams(temperature: 0.8, seed: 7, maxTokens: 4), n: 2)
        let samples = try c.generate(r)
        XCTAssertEqual(samples.map { [$0.promptIndex, $0.sampleIndex] }, [[0, 0], [0, 1], [1, 0], [1, 1], [2, 0], [2, 1]])
        guard samples.count == 6 else { return }
        XCTAssertEqual(samples[2].promptTokens, UInt32(ids.count))
        var pinned = r
        pinned.requireVersion = samples[0].version
        let again = try c.generate(pinned)
        XCTAssertEqual(Set((samples + again).map(\.version)), [samples[0].version])
        XCTAssertEqual(again.map(\.tokenIDs), samples.map(\.tokenIDs), "same seed, same weights, same samples")
    }

    func testGenerateStreamsChunksThenSamples() throws {
        let c = try client()
        let stream = try c.generateStream(GenerateRequest(prompts: [.text(Self.question)], chat: true,
                                                          sampling: SamplingParams(temperature: 0, maxTokens: 16), stream: true,
                                                          topLogprobs: 2))
        var chunks: [GenerateChunk] = [], samples: [SampleResult] = []
        while let e = try stream.next() {
            switch e {
            case .chunk(let ch): XCTAssertTrue(samples.isEmpty, "chunks come before their sample"); chunks.append(ch)
            case .sample(let s): samples.append(s)
            }
        }
        XCTAssertEqual(samples.count, 1)
        guard samples.count == 1 else { return }
        XCTAssertEqual(chunks.flatMap(\.tokenIDs), samples[0].tokenIDs)
        XCTAssertEqual(chunks.map(\.textDelta).joined(), samples[0].text)
        XCTAssertEqual(chunks.flatMap(\.topLogprobs).count, samples[0].tokenIDs.count)
        XCTAssertEqual(stream.done?.samples, 1)
        XCTAssertEqual(stream.done?.completionTokens, UInt64(samples[0].completionTokens))
        XCTAssertNil(try stream.next())
    }

    func testCancelARunningGeneration() throws {
        let c = try client()
        let stream = try c.generateStream(GenerateRequest(prompts: [.text("Count to one thousand:")],
                                                          sampling: SamplingParams(temperature: 0, maxTokens: 400),
                                                          ignoreEOS: true, stream: true))
        guard case .chunk = try stream.next() else { return XCTFail("expected a chunk first") }
        XCTAssertTrue(try stream.cancel())
        var last: SampleResult? = nil
        while let e = try stream.next() { if case .sample(let s) = e { last = s } }
        XCTAssertEqual(last?.finishReason, .cancelled)
        XCTAssertLessThan(last?.completionTokens ?? 400, 400)
        XCTAssertNotNil(stream.done)
        XCTAssertFalse(try c.cancel(stream.requestID))
    }

    func testBadParametersNameTheField() throws {
        let c = try client()
        let cases: [(GenerateRequest, String)] = [
            (GenerateRequest(prompts: [.text("Hi")], sampling: SamplingParams(topP: 1.5)), "sampling.top_p"),
            (GenerateRequest(prompts: [.text("Hi")], sampling: SamplingParams(temperature: -1)), "sampling.temperature"),
            (GenerateRequest(prompts: [.text("Hi")], sampling: SamplingParams(maxTokens: 0)), "sampling.max_tokens"),
            (GenerateRequest(prompts: [.text("Hi")], n: 65), "n"),
            (GenerateRequest(prompts: [.text("Hi")], topLogprobs: 21), "top_logprobs"),
            (GenerateRequest(prompts: []), "prompts"),
            (GenerateRequest(prompts: [.text("Hi")], stop: [""]), "stop[0]"),
            (GenerateRequest(prompts: [.text("ok"), .ids([])]), "prompts[1].ids"),
        ]
        for (request, field) in cases {
            assertServerError(.invalidArgument, field: field) { try c.generate(request) }
        }
        assertServerError(.invalidArgument, field: "items") { try c.score(ScoreRequest(items: [])) }
        assertServerError(.notFound, field: "checkpoint") { try c.refreshWeights(checkpoint: "no-such-checkpoint") }
        assertServerError(.invalidArgument, field: "checkpoint") { try c.refreshWeights(checkpoint: "../outside") }
        assertServerError(.invalidArgument, field: "name") { try c.saveCheckpoint(name: "/etc/x") }
        XCTAssertEqual(try c.tokenize("Hello world"), [19556, 905])  // the connection carries on
    }

    func testGenerateOnAVersionThatIsNotAlive() throws {
        let c = try client()
        assertServerError(.notFound, field: "require_version") {
            try c.generate(GenerateRequest(prompts: [.text("Hi")], sampling: SamplingParams(maxTokens: 2), requireVersion: 1_000_000_000))
        }
    }

    // MARK: Scoring

    /// Scoring a generated continuation gives the log-probs the generation reported, at the
    /// engine's own agreement (1e-4 per token, EngineTests), on the same version.
    func testScoreMatchesGeneration() throws {
        let c = try client()
        let prompt = try c.tokenize(Self.question, chat: true)
        let s = try XCTUnwrap(c.generate(GenerateRequest(prompts: [.ids(prompt)], sampling: SamplingParams(temperature: 0, maxTokens: 8))).first)
        let reply = try c.score(ScoreRequest(items: [ScoreItem(prompt: .ids(prompt), continuation: .ids(s.tokenIDs))], version: s.version))
        XCTAssertEqual(reply.version, s.version)
        let item = try XCTUnwrap(reply.items.first)
        XCTAssertEqual(item.tokenIDs, s.tokenIDs)
        let worst = zip(item.logprobs, s.logprobs).map { abs($0 - $1) }.max() ?? 0
        print("score vs generation: worst per-token difference \(worst)")
        XCTAssertLessThanOrEqual(worst, 1e-4)
        XCTAssertEqual(item.totalLogprob, item.logprobs.reduce(0) { $0 + Double($1) }, accuracy: 1e-4)
    }

    // MARK: Preferences and operations

    func testSubmitPreferences() throws {
        let c = try client()
        let rows = [
            PreferenceRow(prompt: .text("What is 2+2?"), chosen: .text("4"), rejected: .text("5"), reference: .text("four")),
            PreferenceRow(prompt: .ids([1, 2, 3]), chosen: .ids([4, 5]), rejected: .ids([6]), weight: 2, source: "swift-test"),
        ]
        let ack = try c.submitPreferences(rows, chat: true)
        XCTAssertEqual(ack.rows, 2)
        XCTAssertGreaterThanOrEqual(ack.lastSequence, ack.firstSequence)
        let again = try c.submitPreferences(Array(rows.prefix(1)))
        XCTAssertGreaterThan(again.firstSequence, ack.lastSequence)
        XCTAssertGreaterThanOrEqual(try c.status().walLastSequence, again.lastSequence)
        assertServerError(.invalidArgument, field: "rows[0].chosen.text") {
            try c.submitPreferences([PreferenceRow(prompt: .text("p"), chosen: .text(""), rejected: .text("r"))])
        }
        assertServerError(.invalidArgument, field: "rows") { try c.submitPreferences([]) }
    }

    func testStatus() throws {
        let c = try client()
        let s = try c.status()
        XCTAssertGreaterThanOrEqual(s.connections, 1)
        XCTAssertGreaterThan(s.uptimeSeconds, 0)
        XCTAssertGreaterThanOrEqual(s.liveVersions, 1)
        XCTAssertLessThanOrEqual(s.walConsumedSequence, s.walLastSequence)
    }

    func testSubscriptionRunsBesideOtherCalls() throws {
        let c = try client()
        let sub = try c.subscribeVersions()
        let first = try XCTUnwrap(sub.next(timeout: 30))
        XCTAssertLessThanOrEqual(first.version, try c.status().policyVersion)
        XCTAssertGreaterThan(first.unixTime, 1.6e9)
        XCTAssertEqual(try c.tokenize("Hello world"), [19556, 905])
        XCTAssertNil(try sub.next(timeout: 0.2), "nothing is published on this server: only the current version comes")
        XCTAssertFalse(sub.isClosed)
        // Closing from another thread wakes a reader blocked in next().
        let ended = expectation(description: "next() returns nil")
        let box = UncheckedBox(sub)
        Thread {
            if (try? box.value.next()) == .some(nil) { ended.fulfill() }
        }.start()
        try waitUntilBlocked(sub)
        sub.close()
        wait(for: [ended], timeout: 10)
        XCTAssertTrue(sub.isClosed)
        XCTAssertEqual(try c.tokenize("ok").isEmpty, false)
    }

    func testManyCallsInFlightFromManyThreads() throws {
        let c = try client()
        let failures = Shared<[String]>([])
        DispatchQueue.concurrentPerform(iterations: 16) { i in
            do {
                let text = "number \(i)"
                let back = try c.detokenize(try c.tokenize(text))
                if back != text { failures.with { $0.append("\(i): \(back)") } }
            } catch { failures.with { $0.append("\(i): \(error)") } }
        }
        XCTAssertEqual(failures.get, [])
    }

    func testCloseEndsWaitingCalls() throws {
        let c = try server().client()
        let sub = try c.subscribeVersions()
        _ = try sub.next(timeout: 30)
        let got = Shared<SelmClientError?>(nil)
        let done = expectation(description: "waiting call ended")
        let box = UncheckedBox(sub)
        Thread {
            do { _ = try box.value.next(timeout: 60) } catch let e as SelmClientError { got.with { $0 = e } } catch {}
            done.fulfill()
        }.start()
        try waitUntilBlocked(sub)
        c.close()
        wait(for: [done], timeout: 10)
        guard case .connectionClosed = got.get else { return XCTFail("\(String(describing: got.get))") }
    }

    // MARK: Servers of their own

    /// SaveCheckpoint after a learner step, then RefreshWeights back to it once the learner has
    /// moved on: the refresh publishes a new version that serves the checkpoint's weights — its
    /// greedy answer and log-probs equal what `selm generate` computes from the checkpoint offline,
    /// and differ from those of the version served before. (This server always runs a learner: an
    /// UNAVAILABLE reply to SaveCheckpoint is a failure.)
    func testSaveAndRefresh() throws {
        let s = try ServeProcess(args: ServeProcess.learnerArgs)
        defer { s.shutdown() }
        let c = try s.client()
        defer { c.close() }
        let sub = try c.subscribeVersions()
        defer { sub.close() }
        let start = try XCTUnwrap(sub.next(timeout: 30))
        _ = try c.submitPreferences([PreferenceRow(prompt: .text("What is 2+2?"), chosen: .text("4"), rejected: .text("5"))], chat: true)
        let v1 = try nextVersion(sub, after: start.version)
        XCTAssertEqual(v1.learnerStep, 1)
        let saved = try c.saveCheckpoint(name: "ckpt-swift")
        XCTAssertTrue(saved.path.hasSuffix("ckpt-swift"), saved.path)
        XCTAssertEqual(saved.learnerStep, 1)
        XCTAssertEqual(saved.version, v1.version)
        // The learner moves on: the served weights are no longer the checkpoint's.
        _ = try c.submitPreferences([PreferenceRow(prompt: .text("Name a colour."), chosen: .text("Red."), rejected: .text("Seven."))],
                                    chat: true)
        let v2 = try nextVersion(sub, after: v1.version)
        XCTAssertEqual(v2.learnerStep, 2)
        let expected = try OfflineGreedy(model: s.dataDir + "/" + saved.path, chatPrompt: Self.question, maxTokens: 8)
        func greedy(_ version: UInt64) throws -> SampleResult {
            try XCTUnwrap(c.generate(GenerateRequest(prompts: [.text(Self.question)], chat: true,
                                                     sampling: SamplingParams(temperature: 0, maxTokens: 8), requireVersion: version)).first)
        }
        let before = try greedy(v2.version)
        print("checkpoint (step 1) offline: \(expected.ids) \(expected.logprobs); served at step 2: \(before.tokenIDs) \(before.logprobs)")
        XCTAssertGreaterThan(logprobDistance(before, expected), 1e-3, "the learner's second step must change the served outputs")

        let version = try c.refreshWeights(checkpoint: saved.path)
        XCTAssertGreaterThan(version, v2.version)
        XCTAssertEqual(try nextVersion(sub, after: v2.version).version, version, "the push for the refreshed version")
        XCTAssertEqual(try c.status().policyVersion, version)
        let after = try greedy(version)
        XCTAssertEqual(after.version, version)
        XCTAssertEqual(after.tokenIDs, expected.ids, "the refreshed version does not serve the checkpoint's weights")
        XCTAssertLessThanOrEqual(logprobDistance(after, expected), 1e-4, "log-probs of the checkpoint's weights")
    }

    func testAuthentication() throws {
        let s = try ServeProcess(token: "s3cret")
        defer { s.shutdown() }
        // The server answers UNAUTHENTICATED and closes at once: the error must win over the close.
        for i in 0..<40 {
            let token: String? = i % 2 == 0 ? nil : "wrong"
            XCTAssertThrowsError(try s.client(unix: i % 4 < 2, token: .some(token))) { e in
                XCTAssertEqual((e as? SelmClientError)?.code, .unauthenticated, "\(e)")
            }
        }
        let c = try s.client(unix: true)
        defer { c.close() }
        XCTAssertEqual(try c.tokenize("Hello world"), [19556, 905])
        // The CLI reads the token from --auth-token-file.
        let r = try s.runClient("tokenize", ["--text", "Hello world"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "[19556,905]")
    }

    func testServerGoingAwayEndsWaitingCalls() throws {
        let s = try ServeProcess()
        defer { s.shutdown() }
        let c = try s.client()
        defer { c.close() }
        let sub = try c.subscribeVersions()
        _ = try sub.next(timeout: 30)
        XCTAssertEqual(s.stop(), 0)
        XCTAssertThrowsError(try sub.next(timeout: 30)) { e in
            guard case .connectionClosed = e as? SelmClientError else { return XCTFail("\(e)") }
        }
        XCTAssertThrowsError(try c.status())
    }
}

/// Hands a non-Sendable-checked value to another thread in a test.
struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
