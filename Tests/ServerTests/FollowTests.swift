import Foundation
import Wire
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Scale-out without Ray: a learner (`selm serve --role learner`) and a rollout replica
/// (`--role rollout --follow`) as two real processes over loopback, on the tiny chat model. New
/// versions reach the replica under the learner's numbers with the learner's exact weights; a replica
/// killed with SIGKILL catches up to the newest version on restart; a corrupted chunk is refused.
/// Staleness: rows carrying old versions land in the histogram, `--max-staleness` drops them.
final class FollowTests: XCTestCase {
    static var tinyChat: String { ServerProcess.root.appendingPathComponent("Tests/ModelTests/Fixtures/tiny-chat").path }

    func connect(_ s: ServerProcess) throws -> TestClient {
        let c = try s.client()
        _ = try c.hello()
        return c
    }

    func status(_ c: TestClient) throws -> StatusReply {
        guard case .statusReply(let s) = try c.call(900_000 + UInt64.random(in: 0..<1000), .status(StatusRequest())) else { throw TestError("status") }
        return s
    }

    func waitFor(_ what: String, timeout: Double = 90, _ cond: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if try cond() { return }
            usleep(50_000)
        }
        throw TestError("timed out waiting for \(what)")
    }

    /// Publishes a perturbed copy of the model on the learner (RefreshWeights); returns its version.
    func publish(_ learner: ServerProcess, _ c: TestClient, seed: UInt64) throws -> UInt64 {
        let name = "perturbed-\(seed)"
        try PerturbedCheckpoint.write(from: Self.tinyChat, to: learner.dataDir + "/" + name, eps: 0.5, seed: seed)
        guard case .refreshWeightsReply(let r) = try c.call(1000 + seed, .refreshWeights(RefreshWeights(checkpoint: name))) else {
            throw TestError("RefreshWeights failed")
        }
        return r.version
    }

    /// Log-probs of a fixed continuation: equal on two servers only when their weights are.
    func score(_ c: TestClient) throws -> ScoreReply {
        let item = ScoreItem(prompt: .ids([1, 20, 21, 22]), continuation: .ids([30, 31, 32, 33]))
        guard case .scoreReply(let r) = try c.call(2000 + UInt64.random(in: 0..<1000), .score(ScoreRequest(items: [item]))) else {
            throw TestError("score")
        }
        return r
    }

    /// A greedy sample's version.
    func generatedVersion(_ c: TestClient) throws -> UInt64 {
        let id = 3000 + UInt64.random(in: 0..<1000)
        try c.send(id, .generate(GenerateRequest(prompts: [.ids([1, 20, 21])], sampling: SamplingParams(temperature: 0, maxTokens: 4))))
        var version: UInt64 = 0
        while true {
            switch try c.receive(id) {
            case .sampleResult(let s): version = s.version
            case .generateDone: return version
            case .error(let e): throw TestError("generate: \(e.message)")
            default: continue
            }
        }
    }

    func startFollower(_ data: String, learner: ServerProcess, env: [String: String] = [:]) throws -> ServerProcess {
        try ServerProcess(model: Self.tinyChat, dataDir: data,
                          args: ["--role", "rollout", "--follow", "127.0.0.1:\(learner.port)", "--follow-retry-seconds", "0.2"],
                          environment: env)
    }

    func testFollowerServesTheLearnersVersionsAndCatchesUpAfterKill9() throws {
        let dir = try temporaryDirectory()
        let learner = try ServerProcess(model: Self.tinyChat, dataDir: dir + "/learner", args: ["--role", "learner"])
        defer { _ = learner.stop() }
        let lc = try connect(learner)
        _ = try publish(learner, lc, seed: 1)  // the learner's numbers run ahead of a fresh replica's own
        let v1 = try publish(learner, lc, seed: 2)

        var follower = try startFollower(dir + "/follower", learner: learner)
        var fc = try connect(follower)
        // It starts on the learner's newest version, under the learner's number, with its weights.
        XCTAssertEqual(try status(fc).policyVersion, v1)
        XCTAssertEqual(try status(fc).role, "rollout")
        XCTAssertEqual(try status(fc).following, "127.0.0.1:\(learner.port)")
        XCTAssertEqual(try generatedVersion(fc), v1)
        XCTAssertEqual(try score(fc), try score(lc))

        // A publication on the learner reaches the replica.
        let before = try score(lc)
        let v2 = try publish(learner, lc, seed: 3)
        XCTAssertGreaterThan(v2, v1)
        try waitFor("version \(v2) on the replica") { try status(fc).policyVersion == v2 }
        XCTAssertEqual(try generatedVersion(fc), v2)
        let after = try score(lc)
        XCTAssertNotEqual(after.items[0].logprobs, before.items[0].logprobs, "the perturbed weights must score differently")
        XCTAssertEqual(try score(fc).items, after.items)

        // The replica's role refuses what belongs to the learner, naming its role.
        let pref = PreferenceRow(prompt: .ids([1, 2]), chosen: .ids([3]), rejected: .ids([4]))
        let refused = try fc.call(50, .submitPreferences(SubmitPreferences(rows: [pref])))
        assertError(refused, .failedPrecondition)
        XCTAssertTrue(errorOf(refused)?.message.contains("--role rollout") ?? false)
        assertError(try fc.call(51, .refreshWeights(RefreshWeights(checkpoint: "perturbed-1"))), .failedPrecondition)
        assertError(try fc.call(52, .fetchWeights(FetchWeights())), .failedPrecondition)

        // kill -9; meanwhile the learner publishes twice; the restarted replica starts on the newest.
        follower.kill9()
        _ = try publish(learner, lc, seed: 4)
        let v4 = try publish(learner, lc, seed: 5)
        follower = try startFollower(dir + "/follower", learner: learner)
        defer { _ = follower.stop() }
        fc = try connect(follower)
        XCTAssertEqual(try status(fc).policyVersion, v4)
        XCTAssertEqual(try generatedVersion(fc), v4)
        XCTAssertEqual(try score(fc).items, try score(lc).items)
        let ledger = try String(contentsOfFile: dir + "/follower/version", encoding: .utf8)
        XCTAssertEqual(ledger.trimmingCharacters(in: .whitespacesAndNewlines), "\(v4)")

        // And it keeps following after the restart.
        let v5 = try publish(learner, lc, seed: 6)
        try waitFor("version \(v5) on the restarted replica") { try status(fc).policyVersion == v5 }
        XCTAssertEqual(try score(fc).items, try score(lc).items)
    }

    /// The learner's second FetchWeights stream has a byte flipped in its first chunk (the test seam
    /// SELM_TEST_CORRUPT_FETCH): the replica refuses it, says so, fetches again, and never serves the
    /// damaged weights.
    func testCorruptedChunkIsRefused() throws {
        let dir = try temporaryDirectory()
        let learner = try ServerProcess(model: Self.tinyChat, dataDir: dir + "/learner", args: ["--role", "learner"],
                                        environment: ["SELM_TEST_CORRUPT_FETCH": "2"])
        defer { _ = learner.stop() }
        let lc = try connect(learner)
        let follower = try startFollower(dir + "/follower", learner: learner)
        defer { _ = follower.stop() }
        let fc = try connect(follower)
        let v = try publish(learner, lc, seed: 7)
        try waitFor("version \(v) on the replica") { try status(fc).policyVersion == v }
        XCTAssertTrue(follower.log.contains("CRC32C"), follower.log)
        XCTAssertTrue(follower.log.contains("refused"), follower.log)
        XCTAssertEqual(try score(fc).items, try score(lc).items, "the replica must serve the learner's exact weights")

        // FetchWeights on the learner directly: chunks in order, each matching its CRC, then the layout.
        let id: UInt64 = 77
        try lc.send(id, .fetchWeights(FetchWeights(version: v, chunkBytes: 4096)))
        var offset: UInt64 = 0, chunks: UInt32 = 0
        loop: while true {
            switch try lc.receive(id) {
            case .weightsChunk(let c):
                XCTAssertEqual(c.offset, offset)
                offset += UInt64(c.data.count)
                chunks += 1
            case .weightsDone(let d):
                XCTAssertEqual(d.version, v)
                XCTAssertEqual(d.dtype, "f32")
                XCTAssertEqual(d.totalBytes, offset)
                XCTAssertEqual(d.chunks, chunks)
                XCTAssertEqual(d.tensors.first?.name, "model.embed_tokens.weight")
                break loop
            case let other: throw TestError("unexpected \(other)")
            }
        }
        XCTAssertGreaterThan(chunks, 1)
        assertError(try lc.call(78, .fetchWeights(FetchWeights(version: v + 100))), .notFound, field: "version")
        assertError(try lc.call(79, .fetchWeights(FetchWeights(chunkBytes: 10))), .invalidArgument, field: "chunk_bytes")
    }

    func testStalenessHistogramAndMaxStaleness() throws {
        let dir = try temporaryDirectory()
        let server = try ServerProcess(model: Self.tinyChat, dataDir: dir + "/data", metrics: true, args: ["--no-learner", "--max-staleness", "1"])
        defer { _ = server.stop() }
        let c = try connect(server)
        for seed in 11...13 { _ = try publish(server, c, seed: UInt64(seed)) }
        let newest = try status(c).policyVersion
        XCTAssertGreaterThanOrEqual(newest, 4)
        XCTAssertEqual(try status(c).staleness, [], "no histogram before a row with a version")
        func row(_ version: UInt64?) -> PreferenceRow {
            PreferenceRow(prompt: .ids([1, 20, 21]), chosen: .ids([30, 2]), rejected: .ids([40, 2]), version: version)
        }
        // Staleness 0, 1, 2, 3 and one row without a version; K = 1 drops the two older ones.
        let rows = [row(newest), row(newest - 1), row(newest - 2), row(newest - 3), row(nil)]
        guard case .preferenceAck(let ack) = try c.call(10, .submitPreferences(SubmitPreferences(rows: rows))) else {
            throw TestError("SubmitPreferences failed")
        }
        XCTAssertEqual(ack.rows, 3)
        XCTAssertEqual(ack.staleRows, 2)
        let s = try status(c)
        XCTAssertEqual(s.staleRowsDropped, 2)
        XCTAssertEqual(s.staleness.map(\.le), [0, 1, 2, 4, 8, 16, 32, 64, UInt64.max])
        XCTAssertEqual(s.staleness.map(\.rows), [1, 1, 1, 1, 0, 0, 0, 0, 0])
        let metrics = try server.scrapeMetrics()
        XCTAssertEqual(metricValue(metrics, "selm_preference_staleness_versions_bucket{le=\"2\"}"), 3)
        XCTAssertEqual(metricValue(metrics, "selm_preference_staleness_versions_count"), 4)
        XCTAssertEqual(metricValue(metrics, "selm_preference_stale_rows_dropped_total"), 2)

        // A batch of only stale rows logs nothing; a version from the future is refused by name.
        guard case .preferenceAck(let none) = try c.call(11, .submitPreferences(SubmitPreferences(rows: [row(newest - 3)]))) else {
            throw TestError("SubmitPreferences failed")
        }
        XCTAssertEqual(none.rows, 0)
        XCTAssertEqual(none.staleRows, 1)
        assertError(try c.call(12, .submitPreferences(SubmitPreferences(rows: [row(newest), row(newest + 1)]))), .invalidArgument,
                    field: "rows[1].version")
    }
}
