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
        // Both engines compute in f32 (ServerProcess's default): the replica fetched f32.
        XCTAssertTrue(follower.log.contains("bytes of f32"), follower.log)

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
        var last: UInt64 = 0
        for seed in 11...13 { last = try publish(server, c, seed: UInt64(seed)) }
        // RefreshWeights answers before the engine installs the version at its next step.
        try waitFor("version \(last) installed") { try status(c).policyVersion == last }
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

    /// `FetchWeights(dtype: "bf16")`: the linear layers' weights as bfloat16 rounded to nearest even
    /// from the f32 stream's values (checked here with a rounding written in the test, not the
    /// kernels'), the embedding table and the norms byte for byte the f32 stream's; layout and sizes
    /// say so. An unknown dtype is refused by name. A replica whose engine computes in bf16 fetches
    /// bf16 and scores exactly as the learner's bf16 engine (which packed the f32 weights); one in
    /// f32 fetches f32 (and scores differently: the comparison is not vacuous).
    func testBF16TransferServesTheLearnersBF16EngineExactly() throws {
        let dir = try temporaryDirectory()
        let learner = try ServerProcess(model: Self.tinyChat, dataDir: dir + "/learner",
                                        args: ["--role", "learner", "--engine-precision", "bf16"])
        defer { _ = learner.stop() }
        let lc = try connect(learner)
        let v = try publish(learner, lc, seed: 21)

        func fetch(_ id: UInt64, _ dtype: String) throws -> ([UInt8], WeightsDone) {
            try lc.send(id, .fetchWeights(FetchWeights(version: v, chunkBytes: 4097, dtype: dtype)))  // odd: splits elements
            var bytes: [UInt8] = []
            while true {
                switch try lc.receive(id) {
                case .weightsChunk(let c):
                    XCTAssertEqual(c.offset, UInt64(bytes.count))
                    bytes += c.data
                case .weightsDone(let d): return (bytes, d)
                case let other: throw TestError("unexpected \(other)")
                }
            }
        }
        let (f32, f32Done) = try fetch(90, "")
        let (bf16, bf16Done) = try fetch(91, "bf16")
        XCTAssertEqual(f32Done.dtype, "f32")
        XCTAssertEqual(bf16Done.dtype, "bf16")
        XCTAssertEqual(f32Done.tensors.map(\.name), bf16Done.tensors.map(\.name))
        XCTAssertEqual(UInt64(f32.count), f32Done.totalBytes)
        XCTAssertEqual(UInt64(bf16.count), bf16Done.totalBytes)
        func f32At(_ t: TensorLayout, _ j: Int) -> UInt32 {
            let o = Int(t.offset) + 4 * j
            return UInt32(f32[o]) | UInt32(f32[o + 1]) << 8 | UInt32(f32[o + 2]) << 16 | UInt32(f32[o + 3]) << 24
        }
        var linearElements: UInt64 = 0, checked = 0
        for (t32, t16) in zip(f32Done.tensors, bf16Done.tensors) {
            XCTAssertEqual(t32.dtype, "f32")
            let linear = t32.shape.count == 2 && t32.name != "model.embed_tokens.weight"
            XCTAssertEqual(t16.dtype, linear ? "bf16" : "f32", t16.name)
            let count = Int(t32.shape.reduce(1, *))
            XCTAssertEqual(t16.length, UInt64(count * (linear ? 2 : 4)), t16.name)
            if linear {
                linearElements += UInt64(count)
                for j in 0..<count {
                    let x = f32At(t32, j)
                    let rounded = UInt16((x &+ 0x7FFF &+ ((x >> 16) & 1)) >> 16)  // nearest even (finite x)
                    let o = Int(t16.offset) + 2 * j
                    XCTAssertEqual(UInt16(bf16[o]) | UInt16(bf16[o + 1]) << 8, rounded, "\(t16.name)[\(j)]")
                    checked += 1
                }
            } else {
                XCTAssertEqual(Array(bf16[Int(t16.offset)..<Int(t16.offset + t16.length)]),
                               Array(f32[Int(t32.offset)..<Int(t32.offset + t32.length)]), t16.name)
            }
        }
        XCTAssertGreaterThan(checked, 0)
        XCTAssertEqual(bf16Done.totalBytes, f32Done.totalBytes - 2 * linearElements)
        assertError(try lc.call(92, .fetchWeights(FetchWeights(dtype: "f16"))), .invalidArgument, field: "dtype")

        func replica(_ name: String, _ precision: String) throws -> ServerProcess {
            try ServerProcess(model: Self.tinyChat, dataDir: dir + "/" + name,
                              args: ["--role", "rollout", "--follow", "127.0.0.1:\(learner.port)",
                                     "--follow-retry-seconds", "0.2", "--engine-precision", precision])
        }
        let bf16Replica = try replica("bf16", "bf16")
        defer { _ = bf16Replica.stop() }
        let f32Replica = try replica("f32", "f32")
        defer { _ = f32Replica.stop() }
        let bc = try connect(bf16Replica), fc = try connect(f32Replica)
        XCTAssertEqual(try status(bc).policyVersion, v)
        XCTAssertEqual(try status(fc).policyVersion, v)
        XCTAssertTrue(bf16Replica.log.contains("\(bf16Done.totalBytes) bytes of bf16"), bf16Replica.log)
        XCTAssertTrue(f32Replica.log.contains("\(f32Done.totalBytes) bytes of f32"), f32Replica.log)
        let learnerScores = try score(lc).items
        XCTAssertEqual(try score(bc).items, learnerScores)
        XCTAssertNotEqual(try score(fc).items.map(\.logprobs), learnerScores.map(\.logprobs))

        // And a publication after start: the bf16 replica follows it with the same exactness.
        let v2 = try publish(learner, lc, seed: 22)
        try waitFor("version \(v2) on the bf16 replica") { try status(bc).policyVersion == v2 }
        XCTAssertEqual(try score(bc).items, try score(lc).items)
    }
}
