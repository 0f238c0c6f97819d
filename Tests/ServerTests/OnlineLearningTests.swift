import Foundation
import XCTest
import Learner
import Model
import SelmClient

/// The online loop end to end on a tiny chat model: preferences over the socket become SELM steps,
/// new versions reach the engine while it generates, and a killed server resumes exactly.
final class OnlineLearningTests: XCTestCase {
    static var tinyChat: String { ServerProcess.root.appendingPathComponent("Tests/ModelTests/Fixtures/tiny-chat").path }

    func start(_ dir: String, _ args: [String]) throws -> (ServerProcess, SelmClient) {
        let server = try ServerProcess(model: Self.tinyChat, dataDir: dir, args: args)
        let client = try SelmClient(endpoint: .tcp(host: "127.0.0.1", port: UInt16(server.port)), timeout: 60)
        return (server, client)
    }

    /// Rows as token ids: prompt templated by the server's tokenizer, fixed responses ending in EOS.
    static func rows(_ client: SelmClient, count: Int, offset: Int = 0) throws -> [PreferenceRow] {
        try (0..<count).map { i in
            let prompt = try client.tokenize(.init(input: .messages([.init(role: "user", content: "question \(i + offset)")]), chat: true))
            return PreferenceRow(prompt: .ids(prompt), chosen: .ids([300, 301, 302, 2]), rejected: .ids([400, 401, 402, 2]),
                                 reference: .ids([500, 2]))
        }
    }

    func margin(_ client: SelmClient, version: UInt64) throws -> Double {
        let prompt = try client.tokenize(.init(input: .messages([.init(role: "user", content: "question 0")]), chat: true))
        let r = try client.score(ScoreRequest(items: [ScoreItem(prompt: .ids(prompt), continuation: .ids([300, 301, 302, 2])),
                                                      ScoreItem(prompt: .ids(prompt), continuation: .ids([400, 401, 402, 2]))],
                                              version: version))
        XCTAssertEqual(r.version, version)
        return r.items[0].totalLogprob - r.items[1].totalLogprob
    }

    func waitFor(_ what: String, timeout: Double = 60, _ cond: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if try cond() { return }
            usleep(50_000)
        }
        XCTFail("timed out waiting for \(what)")
        throw TestError("timed out waiting for \(what)")
    }

    /// Submitted preferences become learner steps and a new version whose chosen-over-rejected
    /// log-prob margin is higher than the starting version's; subscribers hear of it.
    func testPreferencesProduceANewVersionThatPrefersChosen() throws {
        let dir = try temporaryDirectory()
        let (server, client) = try start(dir, ["--lr", "5e-3", "--beta", "0.1", "--batch-size", "4", "--max-wait-seconds", "0"])
        defer { client.close(); server.stop() }
        let sub = try client.subscribeVersions()
        let first = try XCTUnwrap(sub.next(timeout: 10))
        XCTAssertEqual(first.version, 1)
        let before = try margin(client, version: 1)
        let ack = try client.submitPreferences(try Self.rows(client, count: 8))
        XCTAssertEqual(ack.rows, 8)
        var last = first
        while last.learnerStep < 2 { last = try XCTUnwrap(sub.next(timeout: 60), "no version event") }
        XCTAssertGreaterThan(last.version, 1)
        XCTAssertNotNil(last.metrics["rewards/margins"])
        XCTAssertNotNil(last.metrics["loss"])
        let after = try margin(client, version: last.version)
        XCTAssertGreaterThan(after, before + 0.5, "margin \(before) → \(after)")
        let status = try client.status()
        XCTAssertEqual(status.learnerStep, 2)
        XCTAssertEqual(status.walConsumedSequence, ack.lastSequence)
    }

    /// Many publishes while generation runs without a pause: every request completes, every sample
    /// reports the version that produced it (never one published after it finished), and versions
    /// advance under the running stream. A feeder sends one row (one learner step, one version) at a
    /// time, each once a sample of the version before came back, so every version is seen however
    /// fast or slow the machine is; the waits are failure bounds only.
    func testManyPublishesDuringContinuousGeneration() throws {
        let dir = try temporaryDirectory()
        let (server, client) = try start(dir, ["--lr", "1e-3", "--batch-size", "1", "--max-wait-seconds", "0"])
        defer { client.close(); server.stop() }
        let feeder = try SelmClient(endpoint: .tcp(host: "127.0.0.1", port: UInt16(server.port)), timeout: 60)
        defer { feeder.close() }
        let sub = try feeder.subscribeVersions()
        defer { sub.close() }
        let first = try XCTUnwrap(sub.next(timeout: 30)).version
        let seen = Locked(Set<UInt64>())
        let fed = Locked<[UInt64]>([])
        let feederDone = Locked(false)
        let feederErrors = Locked([String]())
        let t = Thread {
            do {
                func awaitSample(of v: UInt64) throws {
                    let deadline = Date().addingTimeInterval(120)
                    while !seen.with({ $0.contains(v) }) {
                        guard Date() < deadline else { throw TestError("no sample of version \(v) within 120 s") }
                        usleep(5_000)
                    }
                }
                try awaitSample(of: first)
                var last = first
                for i in 0..<4 {
                    _ = try feeder.submitPreferences(try OnlineLearningTests.rows(feeder, count: 1, offset: i))
                    var event = try sub.next(timeout: 120)
                    while let e = event, e.version <= last { event = try sub.next(timeout: 120) }
                    guard let v = event?.version else { throw TestError("no version after \(last) within 120 s") }
                    last = v
                    fed.with { $0.append(v) }
                    try awaitSample(of: v)
                }
            } catch {
                feederErrors.with { $0.append("\(error)") }
            }
            feederDone.with { $0 = true }
        }
        t.start()
        var requests = 0
        let deadline = Date().addingTimeInterval(300)  // a failure bound: the loop ends on events
        while !(feederDone.with { $0 } && requests >= 8) {
            guard Date() < deadline else { XCTFail("the feeder did not finish within 300 s"); break }
            let before = try client.status().policyVersion
            var sampling = Wire.SamplingParams()
            sampling.temperature = 1; sampling.maxTokens = 24; sampling.seed = UInt64(requests)
            let samples = try client.generate(GenerateRequest(prompts: [.text("hello"), .text("how are you")], chat: true,
                                                              sampling: sampling, n: 3, ignoreEOS: true))
            let after = try client.status().policyVersion
            XCTAssertEqual(samples.count, 6)
            for s in samples {
                XCTAssertEqual(s.completionTokens, 24, "no request is cut short")
                XCTAssertEqual(s.version, s.firstVersion)
                XCTAssertGreaterThanOrEqual(s.version, before)
                XCTAssertLessThanOrEqual(s.version, after)
                seen.with { _ = $0.insert(s.version) }
            }
            XCTAssertEqual(Set(samples.map(\.version)).count, 1, "one request, one version")
            requests += 1
        }
        XCTAssertEqual(feederErrors.get, [])
        XCTAssertEqual(fed.get.count, 4, "four rows, four versions")
        XCTAssertTrue(Set(fed.get).isSubset(of: seen.get), "versions seen: \(seen.get.sorted()), published: \(fed.get)")
        XCTAssertGreaterThanOrEqual(seen.get.count, 5, "the first version and the four published under the running stream")
    }

    /// `kill -9` mid-training, then a restart: the learner resumes from its last checkpoint and the
    /// log, and ends where an uninterrupted run on the same rows ends — every acknowledged row applied
    /// exactly once (a row applied twice or lost would change the step count or the weights).
    ///
    /// The interruption is arranged, not timed: the fault shim holds the learner inside its step-3
    /// checkpoint save (the fsync of that checkpoint's `trainer_state.json`), so when the server is
    /// killed the learner has consumed 2 of the 6 acknowledged records and the latest checkpoint is
    /// step 2.
    func testKillAndRestartAppliesEveryPreferenceExactlyOnce() throws {
        let args = ["--lr", "2e-3", "--beta", "0.1", "--batch-size", "2", "--max-wait-seconds", "0",
                    "--checkpoint-every", "1", "--ref-refresh-steps", "3"]
        /// Waits until the learner consumed record 6 and returns the step it took to get there (from
        /// the same Status, so a seventh step from a row trained twice would show as 7).
        func stepAtTheLastRecord(_ c: SelmClient, _ what: String) throws -> UInt64 {
            var step: UInt64 = 0
            try waitFor(what) {
                let st = try c.status()
                step = st.learnerStep
                return st.walConsumedSequence == 6
            }
            return step
        }
        // Uninterrupted run.
        let dirA = try temporaryDirectory()
        let (a, ca) = try start(dirA, args)
        let batches = try (0..<6).map { try Self.rows(ca, count: 2, offset: 10 * $0) }
        for b in batches { _ = try ca.submitPreferences(b) }
        XCTAssertEqual(try stepAtTheLastRecord(ca, "run A to train on every row"), 6)
        _ = try ca.saveCheckpoint(name: "end")
        ca.close(); a.stop()

        // Interrupted run: held in the step-3 checkpoint, kill -9, restart, let it finish.
        let dirB = try temporaryDirectory()
        let shim = try FaultShim(dir: try temporaryDirectory(), pattern: "*/checkpoints/step-3.partial-*/\(Checkpoint.stateFile)*",
                                 holdSync: 1)
        var b = try ServerProcess(model: Self.tinyChat, dataDir: dirB, args: args + ["--publish-every", "1"], environment: shim.environment)
        var cb = try SelmClient(endpoint: .tcp(host: "127.0.0.1", port: UInt16(b.port)), timeout: 60)
        for batch in batches { _ = try cb.submitPreferences(batch) }
        XCTAssertTrue(shim.waitForHold(timeout: 60), "the learner never reached its step-3 checkpoint:\n\(b.log)")
        let atKill = try cb.status()
        XCTAssertEqual(atKill.walLastSequence, 6)
        XCTAssertLessThan(atKill.walConsumedSequence, atKill.walLastSequence, "the learner had not consumed everything when killed")
        XCTAssertLessThan(atKill.learnerStep, 6)
        cb.close()
        b.kill9()

        let latest = try Checkpoint.loadState(from: dirB + "/checkpoints/step-2")
        XCTAssertEqual([latest.step, Int(latest.walSequence), latest.walRows], [2, 2, 0], "the checkpoint the restart resumes from")
        (b, cb) = try start(dirB, args + ["--publish-every", "1"])
        XCTAssertTrue(b.log.contains("learner consumed 2, 4 to replay"), b.log)
        XCTAssertTrue(b.log.contains("learner resumed from"), b.log)
        XCTAssertEqual(try stepAtTheLastRecord(cb, "run B to finish after the restart"), 6, "each row trained once: 12 rows, 6 steps of 2")
        XCTAssertFalse(try FileManager.default.contentsOfDirectory(atPath: dirB + "/checkpoints").contains { $0.contains(".partial-") },
                       "the interrupted save left nothing behind")
        _ = try cb.saveCheckpoint(name: "end")
        cb.close(); b.stop()
        let end = try Checkpoint.loadState(from: dirB + "/checkpoints/end")
        XCTAssertEqual([end.step, Int(end.walSequence), end.walRows], [6, 6, 0])

        let wa = try LlamaModel.load(huggingFaceDirectory: dirA + "/checkpoints/end")
        let wb = try LlamaModel.load(huggingFaceDirectory: dirB + "/checkpoints/end")
        var worst: Float = 0, moved: Float = 0
        let start = try LlamaModel.load(huggingFaceDirectory: Self.tinyChat)
        for i in 0..<wa.weights.count {
            worst = max(worst, abs(wa.weights.data[i] - wb.weights.data[i]))
            moved = max(moved, abs(wa.weights.data[i] - start.weights.data[i]))
        }
        XCTAssertLessThanOrEqual(worst, 1e-5, "the resumed run ends at the uninterrupted run's weights")
        XCTAssertGreaterThan(moved, 1e-3, "training changed the weights")
        _ = (a, ca)
    }
}
