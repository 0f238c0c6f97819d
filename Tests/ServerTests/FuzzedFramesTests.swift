import Foundation
import Tokenizer
import Wire
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// A real `selm serve` (the tiny chat model, frame limit 4096) under seeded random and mutated
/// frames, over several connections at once:
///
/// - **framed** connections send a Hello, then valid, mutated and random frame bodies behind correct
///   headers, pipelined, then a sentinel Status. Every reply must parse as an `Envelope`; every
///   `Error` must carry a real code (not unspecified, unrecognised or INTERNAL) and a message; every
///   request must be answered (one final reply per request, counted by the id the server can read —
///   the decoder's `requestID`, else 0); the server must not close the connection.
/// - **raw** connections send a Hello, then a byte stream whose headers are mutated too (the
///   decoder loses frame sync), then 4104 bytes of 0xFF (whatever state the decoder is in, an
///   oversize header follows). Every reply must parse and every error be well formed; the server
///   must close the connection, and only after a `FRAME_TOO_LARGE` error, its last reply.
///
/// Afterwards a new connection gets Status, Tokenize (equal to the tokenizer in-process) and a
/// greedy Generate answered, the process is alive, `/metrics` counts one `frame_too_large` drop per
/// raw connection and no other drop, and SIGTERM exits 0. `SELM_FUZZ_SEED` replays another seed.
final class FuzzedFramesTests: XCTestCase {
    static var tinyChat: String { ServerProcess.root.appendingPathComponent("Tests/ModelTests/Fixtures/tiny-chat").path }
    static let sentinelID: UInt64 = 0xFEED_FACE_CAFE_0001
    static let frameLimit = 4096

    func testFuzzedFramesGetWellFormedAnswersAndTheServerKeepsServing() throws {
        let seed = UInt64(ProcessInfo.processInfo.environment["SELM_FUZZ_SEED"] ?? "") ?? 20_261_202
        let dir = try temporaryDirectory()
        let server = try ServerProcess(model: Self.tinyChat, dataDir: dir + "/data", metrics: true,
                                       args: ["--max-frame-bytes", "\(Self.frameLimit)"])
        let seeds = try Self.seedBodies()
        let framedConnections = 6, rawConnections = 4
        let reports = Locked([Int: ConnectionReport]())
        let srv = server
        parallel(framedConnections + rawConnections) { k in
            var rng = SplitMix(seed: seed &+ UInt64(k) &* 0x9E37_79B9)
            let report: ConnectionReport
            do {
                report = k < framedConnections
                    ? try Self.runFramed(srv, seeds: seeds, frames: 400, rng: &rng)
                    : try Self.runRaw(srv, seeds: seeds, items: 100, rng: &rng)
            } catch {
                report = ConnectionReport(failures: ["connection \(k): \(error)"])
            }
            reports.with { $0[k] = report }
        }
        var kinds: [String: Int] = [:]
        for (k, r) in reports.get.sorted(by: { $0.key < $1.key }) {
            for f in r.failures.prefix(10) { XCTFail("seed \(seed), connection \(k) (\(k < framedConnections ? "framed" : "raw")): \(f)") }
            for (kind, n) in r.replyKinds { kinds[kind, default: 0] += n }
        }
        // The fuzz reaches the handlers, not only the decoder: successes and refusals of many kinds.
        print("seed \(seed): replies by kind \(kinds.sorted { $0.key < $1.key })")
        for kind in ["hello_reply", "status_reply", "tokenize_reply", "detokenize_reply", "generate_done", "score_reply",
                     "preference_ack", "cancel_reply", "version_event", "error.malformed", "error.unknownBody",
                     "error.invalidArgument", "error.frameTooLarge"] {
            XCTAssertGreaterThan(kinds[kind, default: 0], 0, "no \(kind) among \(kinds)")
        }

        // The sentinel: a new connection is served, the process is alive.
        XCTAssertTrue(server.process.isRunning, "selm serve died:\n\(server.log.suffix(3000))")
        let c = try server.client()
        _ = try c.hello()
        guard case .statusReply = try c.call(1, .status(StatusRequest())) else { return XCTFail("no Status reply") }
        guard case .tokenizeReply(let t) = try c.call(2, .tokenize(TokenizeRequest(input: .text("hello world")))) else {
            return XCTFail("no Tokenize reply")
        }
        let tok = try Tokenizer.load(huggingFaceDirectory: Self.tinyChat)
        XCTAssertEqual(t.ids, tok.encode("hello world", parseSpecial: false).map { UInt32($0) })
        try c.send(3, .generate(GenerateRequest(prompts: [.ids([1, 20, 21])], sampling: SamplingParams(temperature: 0, maxTokens: 5),
                                                ignoreEOS: true)))
        var done: GenerateDone?
        while done == nil {
            switch try c.receive(3) {
            case .generateDone(let d): done = d
            case .sampleResult(let s): XCTAssertEqual(s.tokenIDs.count, 5)
            case let other: return XCTFail("generate answered \(other)")
            }
        }
        XCTAssertEqual(done?.completionTokens, 5)
        let metrics = try server.scrapeMetrics()
        XCTAssertEqual(metricValue(metrics, "selm_connections_dropped_total{reason=\"frame_too_large\"}"), Double(rawConnections), metrics)
        for reason in ["output_cap", "auth_failed", "hello_timeout", "pre_auth_evicted", "too_many_connections"] {
            XCTAssertEqual(metricValue(metrics, "selm_connections_dropped_total{reason=\"\(reason)\"}"), 0, reason)
        }
        XCTAssertEqual(metricValue(metrics, "selm_requests_total{type=\"unknown\",outcome=\"internal\"}"), nil)
        XCTAssertTrue(server.process.isRunning)
        XCTAssertEqual(server.stop(), 0, server.log.suffix(3000).description)
    }

    // MARK: Connections

    struct ConnectionReport {
        var failures: [String] = []
        var replyKinds: [String: Int] = [:]
    }

    /// Reply checks shared by both kinds: parses (the caller's read), a real code and a message.
    static func check(_ e: Envelope<ServerMessage>, into r: inout ConnectionReport) {
        var kind = e.body.name
        if case .error(let err) = e.body {
            kind = "error.\(err.code)"
            switch err.code {
            case .unspecified, .unrecognized, .internal: r.failures.append("reply \(e.id): Error with code \(err.code): \(err.message)")
            default: break
            }
            if err.message.isEmpty { r.failures.append("reply \(e.id): Error \(err.code) without a message") }
        }
        r.replyKinds[kind, default: 0] += 1
    }

    /// Whether a reply is the final one of its request (a subscription's events count too: its
    /// first event answers it, later ones can only add).
    static func isFinal(_ m: ServerMessage) -> Bool {
        switch m {
        case .generateChunk, .sampleResult: return false
        default: return true
        }
    }

    static func runFramed(_ server: ServerProcess, seeds: [[UInt8]], frames: Int, rng: inout SplitMix) throws -> ConnectionReport {
        var r = ConnectionReport()
        let c = try server.client()
        _ = try c.hello()
        var expected: [UInt64: Int] = [:]   // id → requests the server will answer under that id
        var out: [UInt8] = []
        for _ in 0..<frames {
            let body = fuzzedBody(seeds, &rng)
            let id: UInt64
            do { id = try Frame.decodeClient(body).id } catch { id = error.requestID ?? 0 }
            expected[id, default: 0] += 1
            out += header(body.count) + body
        }
        out += try Frame.encode(Envelope(id: sentinelID, body: .status(StatusRequest())))
        expected[sentinelID, default: 0] += 1
        try c.sendRaw(out)
        var answered: [UInt64: Int] = [:]
        var missing = expected
        let deadline = Date().addingTimeInterval(180)
        while !missing.isEmpty {
            guard Date() < deadline else {
                r.failures.append("requests never answered (id: count): \(missing.prefix(8))")
                break
            }
            let e: Envelope<ServerMessage>?
            do { e = try c.receiveAny() } catch {
                r.failures.append("a reply does not parse, or none came for 30 s (\(error)); unanswered (id: requests): "
                                  + "\(missing.sorted { $0.key < $1.key }.prefix(8))")
                break
            }
            guard let e else {
                r.failures.append("the server closed a connection that sent only frames within the limit")
                break
            }
            check(e, into: &r)
            guard isFinal(e.body) else { continue }
            answered[e.id, default: 0] += 1
            if let n = missing[e.id] { missing[e.id] = n > 1 ? n - 1 : nil }
            if expected[e.id] == nil { r.failures.append("a reply to id \(e.id), which no request carried: \(e.body.name)") }
        }
        if answered[sentinelID] != 1 { r.failures.append("the sentinel Status was answered \(answered[sentinelID] ?? 0) times") }
        return r
    }

    static func runRaw(_ server: ServerProcess, seeds: [[UInt8]], items: Int, rng: inout SplitMix) throws -> ConnectionReport {
        var r = ConnectionReport()
        let c = try server.client()
        _ = try c.hello()
        var out: [UInt8] = []
        for _ in 0..<items {
            switch rng.below(10) {
            case 0..<7:
                let body = fuzzedBody(seeds, &rng)
                out += header(body.count) + body
            case 7..<9:  // a frame whose header is damaged
                let body = fuzzedBody(seeds, &rng)
                var h = header(body.count)
                h[rng.below(4)] ^= UInt8(1) << UInt8(rng.below(8))
                out += h + body
            default:
                out += (0..<1 + rng.below(20)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            }
        }
        // At most `frameLimit` bytes complete a frame the decoder is inside; then an oversize header.
        out += [UInt8](repeating: 0xFF, count: frameLimit + 8)
        do { try c.sendRaw(out) } catch { /* the server may already have closed it (an oversize header) */ }
        var last: Envelope<ServerMessage>?
        var tooLarge = 0
        while true {
            let e: Envelope<ServerMessage>?
            do { e = try c.receiveAny() } catch {
                r.failures.append("a reply does not parse, or the connection stayed open: \(error)")
                return r
            }
            guard let e else { break }
            check(e, into: &r)
            if case .error(let err) = e.body, err.code == .frameTooLarge { tooLarge += 1 }
            last = e
        }
        guard case .error(let err)? = last?.body, err.code == .frameTooLarge, last?.id == 0 else {
            r.failures.append("closed by the server after \(last.map { "\($0.body)" } ?? "no reply"), not after FRAME_TOO_LARGE")
            return r
        }
        if tooLarge != 1 { r.failures.append("\(tooLarge) FRAME_TOO_LARGE errors on one connection") }
        return r
    }

    // MARK: Inputs

    static func header(_ n: Int) -> [UInt8] {
        let n = UInt32(n)
        return [UInt8(n >> 24), UInt8((n >> 16) & 0xFF), UInt8((n >> 8) & 0xFF), UInt8(n & 0xFF)]
    }

    /// A seed body as it is (20 %), mutated once or several times (65 %), or random bytes (15 %).
    static func fuzzedBody(_ seeds: [[UInt8]], _ rng: inout SplitMix) -> [UInt8] {
        let roll = rng.below(20)
        if roll < 3 { return (0..<rng.below(64)).map { _ in UInt8(truncatingIfNeeded: rng.next()) } }
        var b = seeds[rng.below(seeds.count)]
        if roll >= 7 { for _ in 0..<1 + rng.below(3) { b = mutate(b, &rng) } }
        return b
    }

    /// One random edit: flipped bits, a replaced byte, inserted random bytes or a deleted range.
    static func mutate(_ body: [UInt8], _ rng: inout SplitMix) -> [UInt8] {
        var m = body
        guard !m.isEmpty else { return [UInt8(truncatingIfNeeded: rng.next())] }
        switch rng.below(4) {
        case 0:
            for _ in 0..<1 + rng.below(3) { m[rng.below(m.count)] ^= UInt8(1) << UInt8(rng.below(8)) }
        case 1:
            m[rng.below(m.count)] = UInt8(truncatingIfNeeded: rng.next())
        case 2:
            m.insert(contentsOf: (0..<1 + rng.below(8)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }, at: rng.below(m.count + 1))
        default:
            let start = rng.below(m.count)
            m.removeSubrange(start..<min(m.count, start + 1 + rng.below(8)))
        }
        return m
    }

    /// Valid requests for the tiny chat model (vocabulary 97, context 64) of every type, plus every
    /// client frame of the Python-written fixture (Fuzz/corpus/wire/body-client-*).
    static func seedBodies() throws -> [[UInt8]] {
        let sampling = SamplingParams(temperature: 0.8, topK: 20, topP: 0.9, minP: 0.05, repetitionPenalty: 1.2,
                                      presencePenalty: 0.5, frequencyPenalty: 0.3, seed: 7, maxTokens: 6)
        let requests: [ClientMessage] = [
            .hello(Hello(clientName: "fuzz")),
            .status(StatusRequest()),
            .tokenize(TokenizeRequest(input: .text("hello world"))),
            .tokenize(TokenizeRequest(input: .messages([ChatMessage(role: "user", content: "hi")]), chat: true)),
            .detokenize(DetokenizeRequest(ids: [5, 6, 7, 40])),
            .generate(GenerateRequest(prompts: [.ids([1, 5, 9, 30])], sampling: SamplingParams(temperature: 0, maxTokens: 4))),
            .generate(GenerateRequest(prompts: [.text("hi"), .ids([3, 4])], sampling: sampling, n: 2, stop: ["a"],
                                      stopTokenIDs: [5], ignoreEOS: true, stream: true, topLogprobs: 3)),
            .generate(GenerateRequest(prompts: [.messages([ChatMessage(role: "user", content: "hey")])], chat: true,
                                      sampling: SamplingParams(maxTokens: 3), recompute: true)),
            .score(ScoreRequest(items: [ScoreItem(prompt: .ids([1, 2, 3]), continuation: .ids([4, 5])),
                                        ScoreItem(prompt: .text("ab"), continuation: .text("cd"))], topLogprobs: 2)),
            .submitPreferences(SubmitPreferences(rows: [
                PreferenceRow(prompt: .ids([1, 7, 8]), chosen: .ids([9, 2]), rejected: .ids([10, 11, 2])),
                PreferenceRow(prompt: .text("q"), chosen: .text("yes"), rejected: .text("no"), reference: .text("ok"), weight: 0.5),
            ])),
            .cancel(Cancel(targetID: 5)),
            .refreshWeights(RefreshWeights(checkpoint: "nope")),
            .saveCheckpoint(SaveCheckpoint(name: "fz")),
            .subscribeVersions(SubscribeVersions()),
        ]
        var seeds = requests.enumerated().map { Frame.encodeBody(Envelope(id: UInt64($0.offset + 1), body: $0.element)) }
        let corpus = ServerProcess.root.appendingPathComponent("Fuzz/corpus/wire").path
        for name in try FileManager.default.contentsOfDirectory(atPath: corpus).sorted() where name.hasPrefix("body-client-") {
            seeds.append(Array(try Data(contentsOf: URL(fileURLWithPath: corpus + "/" + name))))
        }
        XCTAssertGreaterThan(seeds.count, 25)
        return seeds
    }
}

/// SplitMix64, the seeded generator of the fuzzed inputs.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in 0 ..< n.
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}
