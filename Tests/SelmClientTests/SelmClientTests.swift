import Foundation
import XCTest
@testable import SelmClient

/// The Swift client against a real `selm serve` on real sockets.
final class SelmClientTests: XCTestCase {
    nonisolated(unsafe) static var shared: ServeProcess?

    /// One server for the tests that do not disturb it (started on first use, stopped after the class).
    func server() throws -> ServeProcess {
        if let s = Self.shared { return s }
        let s = try ServeProcess()
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
        XCTAssertLessThanOrEqual(s.version, try c.status().policyVersion)  // the learner may publish meanwhile
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
        let again = try c.generate(r)
        if Set((samples + again).map(\.version)).count == 1 {
            XCTAssertEqual(again.map(\.tokenIDs), samples.map(\.tokenIDs), "same seed, same weights, same samples")
        }
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

    func testScoreMatchesGeneration() throws {
        let c = try client()
        let prompt = try c.tokenize(Self.question, chat: true)
        // Both on one version, even if the learner publishes meanwhile (then the old one may be gone: retry).
        func attempt() throws -> (SampleResult, ScoreReply)? {
            let generated = try c.generate(GenerateRequest(prompts: [.ids(prompt)], sampling: SamplingParams(temperature: 0, maxTokens: 8)))
            guard let s = generated.first else { return nil }
            do {
                return (s, try c.score(ScoreRequest(items: [ScoreItem(prompt: .ids(prompt), continuation: .ids(s.tokenIDs))], version: s.version)))
            } catch {
                if error.code == .notFound { return nil }
                throw error
            }
        }
        var result: (SampleResult, ScoreReply)? = nil
        for _ in 0..<5 where result == nil { result = try attempt() }
        let (s, reply) = try XCTUnwrap(result)
        XCTAssertEqual(reply.version, s.version)
        let item = try XCTUnwrap(reply.items.first)
        XCTAssertEqual(item.tokenIDs, s.tokenIDs)
        for (a, b) in zip(item.logprobs, s.logprobs) { XCTAssertEqual(a, b, accuracy: 2e-2) }
        XCTAssertEqual(item.totalLogprob, item.logprobs.reduce(0) { $0 + Double($1) }, accuracy: 1e-3)
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
        if let later = try sub.next(timeout: 0.2) {  // nil: no new version meanwhile
            XCTAssertGreaterThan(later.version, first.version, "only a newly published version comes")
        }
        XCTAssertFalse(sub.isClosed)
        // Closing from another thread wakes a reader blocked in next().
        let ended = expectation(description: "next() returns nil")
        let box = UncheckedBox(sub)
        Thread {
            if (try? box.value.next()) == .some(nil) { ended.fulfill() }
        }.start()
        usleep(200_000)
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
        usleep(200_000)
        c.close()
        wait(for: [done], timeout: 10)
        guard case .connectionClosed = got.get else { return XCTFail("\(String(describing: got.get))") }
    }

    func testSaveAndRefresh() throws {
        let c = try client()
        let saved: SaveCheckpointReply
        do { saved = try c.saveCheckpoint(name: "ckpt-swift") } catch {
            if error.code == .unavailable { throw XCTSkip("the server runs no learner: \(error)") }
            throw error
        }
        XCTAssertTrue(saved.path.hasSuffix("ckpt-swift"), saved.path)
        let sub = try c.subscribeVersions()
        defer { sub.close() }
        let before = try XCTUnwrap(sub.next(timeout: 30))
        let version = try c.refreshWeights(checkpoint: saved.path)
        XCTAssertGreaterThan(version, saved.version)
        XCTAssertGreaterThan(version, before.version)
        // The push for the new version arrives on the subscription (after any the learner made).
        var event = try sub.next(timeout: 60)
        while let e = event, e.version < version { event = try sub.next(timeout: 60) }
        XCTAssertEqual(event?.version, version)
        XCTAssertGreaterThanOrEqual(try c.status().policyVersion, version)
    }

    // MARK: Servers of their own

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
        // The CLI reads the token from --token-file.
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
