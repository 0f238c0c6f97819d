import Foundation
import Wire
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Every `selm serve` flag that is accepted takes effect: one test per flag that had none, each on a
/// real `selm serve` of the tiny chat model, asserting where the effect shows (the learning rate of
/// each step in its version event, Status, /metrics, the replies). Flags of `selm train` that mean
/// nothing online are refused with a reason (`--seed`; `--schedule cosine` and `--warmup-ratio`
/// without `--total-steps`).
final class ServeFlagTests: XCTestCase {
    static var tinyChat: String { ServerProcess.root.appendingPathComponent("Tests/ModelTests/Fixtures/tiny-chat").path }

    /// Row `i`: a distinct prompt, the same chosen / rejected ids.
    func row(_ i: Int) -> PreferenceRow {
        PreferenceRow(prompt: .ids([1, UInt32(10 + i)]), chosen: .ids([20, 2]), rejected: .ids([21, 22, 2]))
    }

    /// Starts a learner with `args` (one row per step, peak LR 1e-3, a version per step), submits
    /// `steps` rows and returns the version events of those steps (their metrics hold
    /// `learning_rate`, the rate the step used).
    func stepEvents(_ args: [String], steps: Int) throws -> [VersionEvent] {
        let dir = try temporaryDirectory()
        let server = try ServerProcess(model: Self.tinyChat, dataDir: dir + "/data", metrics: true,
                                       args: ["--batch-size", "1", "--max-wait-seconds", "0", "--lr", "1e-3", "--publish-every", "1",
                                              "--checkpoint-every", "0"] + args)
        addTeardownBlock { server.stop() }
        let watcher = try server.client()
        _ = try watcher.hello()
        guard case .versionEvent = try watcher.call(1, .subscribeVersions(SubscribeVersions())) else { throw TestError("subscribe") }
        let c = try server.client()
        _ = try c.hello()
        guard case .preferenceAck = try c.call(2, .submitPreferences(SubmitPreferences(rows: (0..<steps).map(row)))) else {
            throw TestError("submit")
        }
        var events: [VersionEvent] = []
        while events.count < steps {
            guard case .versionEvent(let v) = try watcher.receive(1) else { throw TestError("version event") }
            events.append(v)
        }
        XCTAssertEqual(events.map(\.learnerStep), (1...UInt64(steps)).map { $0 })
        return events
    }

    func rates(_ events: [VersionEvent]) -> [Double] { events.map { $0.metrics["learning_rate"] ?? .nan } }

    func assertRates(_ got: [Double], _ expected: [Double], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(got.count, expected.count, "\(got)", file: file, line: line)
        for (g, e) in zip(got, expected) { XCTAssertEqual(g, e, accuracy: 1e-12, "\(got) vs \(expected)", file: file, line: line) }
    }

    /// --warmup-steps 2: the rate climbs 0, ½, 1 × --lr (transformers' linear warm-up), then stays.
    func testWarmupStepsWarmsUpTheRate() throws {
        assertRates(rates(try stepEvents(["--warmup-steps", "2"], steps: 3)), [0, 5e-4, 1e-3])
    }

    /// --warmup-ratio is a share of --total-steps online: 0.5 × 4 = 2 warm-up steps.
    func testWarmupRatioIsAShareOfTotalSteps() throws {
        assertRates(rates(try stepEvents(["--total-steps", "4", "--warmup-ratio", "0.5", "--schedule", "constant"], steps: 3)),
                    [0, 5e-4, 1e-3])
    }

    /// --total-steps with --schedule cosine (the default with a horizon) decays the rate along a
    /// cosine over 4 steps; --schedule constant keeps it.
    func testTotalStepsAndScheduleShapeTheRate() throws {
        let cosine = rates(try stepEvents(["--total-steps", "4"], steps: 3))
        assertRates(cosine, [1e-3, 1e-3 * 0.5 * (1 + cos(Double.pi / 4)), 5e-4])
        assertRates(rates(try stepEvents(["--total-steps", "4", "--schedule", "constant"], steps: 3)), [1e-3, 1e-3, 1e-3])
    }

    /// --loss ipo: the first step (policy = reference, so every log-ratio is 0) has IPO's loss
    /// (0 − 1/(2β))² = 2500 at β 0.01, where sigmoid has ln 2.
    func testLossChoosesTheObjective() throws {
        let ipo = try stepEvents(["--loss", "ipo", "--beta", "0.01", "--alpha", "0"], steps: 1)
        XCTAssertEqual(ipo[0].metrics["loss"] ?? .nan, 2500, accuracy: 1e-3)
        let sigmoid = try stepEvents(["--alpha", "0"], steps: 1)
        XCTAssertEqual(sigmoid[0].metrics["loss"] ?? .nan, log(2), accuracy: 1e-6)
    }

    /// The metrics of the second step (the first step's update shows in them), with `args`; rows
    /// carry a reference response so SELM's optimism term (--alpha) has a gradient.
    func secondStepMetrics(_ args: [String]) throws -> [String: Double] {
        let dir = try temporaryDirectory()
        let server = try ServerProcess(model: Self.tinyChat, dataDir: dir + "/data",
                                       args: ["--batch-size", "1", "--max-wait-seconds", "0", "--lr", "1e-2", "--publish-every", "1",
                                              "--checkpoint-every", "0"] + args)
        defer { server.stop() }
        let watcher = try server.client()
        _ = try watcher.hello()
        guard case .versionEvent = try watcher.call(1, .subscribeVersions(SubscribeVersions())) else { throw TestError("subscribe") }
        let c = try server.client()
        _ = try c.hello()
        var rows = [row(0), row(0)]
        for i in rows.indices { rows[i].reference = .ids([23, 2]) }
        guard case .preferenceAck = try c.call(2, .submitPreferences(SubmitPreferences(rows: rows))) else { throw TestError("submit") }
        var last: VersionEvent?
        for _ in 0..<2 {
            guard case .versionEvent(let v) = try watcher.receive(1) else { throw TestError("version event") }
            last = v
        }
        return last?.metrics ?? [:]
    }

    /// --alpha, --weight-decay and --max-grad-norm change the first update (training is
    /// deterministic, so the second step's policy log-probs move only through them): each against
    /// the same run without it (α 0, no decay, no clipping).
    func testAlphaWeightDecayAndGradClipChangeTheUpdate() throws {
        let base = ["--alpha", "0", "--weight-decay", "0", "--max-grad-norm", "0"]
        let plain = try secondStepMetrics(base)
        let again = try secondStepMetrics(base)
        XCTAssertEqual(plain["logps/chosen"], again["logps/chosen"], "training is deterministic")
        for (flag, value) in [("--alpha", "1"), ("--weight-decay", "10"), ("--max-grad-norm", "1e-12")] {
            var args = base
            args[args.firstIndex(of: flag)! + 1] = value
            let m = try secondStepMetrics(args)
            XCTAssertNotEqual(m["logps/chosen"], plain["logps/chosen"], "\(flag) \(value) changed nothing")
        }
    }

    /// --grad-accum 2 with --batch-size 1: one optimizer step takes two rows.
    func testGradAccumTakesMicroBatchesPerStep() throws {
        let dir = try temporaryDirectory()
        let server = try ServerProcess(model: Self.tinyChat, dataDir: dir + "/data",
                                       args: ["--batch-size", "1", "--grad-accum", "2", "--max-wait-seconds", "0", "--checkpoint-every", "0"])
        defer { server.stop() }
        let watcher = try server.client()
        _ = try watcher.hello()
        guard case .versionEvent = try watcher.call(1, .subscribeVersions(SubscribeVersions())) else { return XCTFail() }
        let c = try server.client()
        _ = try c.hello()
        guard case .preferenceAck = try c.call(2, .submitPreferences(SubmitPreferences(rows: (0..<4).map(row)))) else { return XCTFail() }
        var steps: [UInt64] = []
        for _ in 0..<2 {
            guard case .versionEvent(let v) = try watcher.receive(1) else { return XCTFail() }
            steps.append(v.learnerStep)
        }
        XCTAssertEqual(steps, [1, 2])  // 4 rows, 2 per step
        var st = StatusReply()
        let deadline = Date().addingTimeInterval(60)
        repeat {
            guard case .statusReply(let s) = try c.call(3, .status(StatusRequest())) else { return XCTFail() }
            st = s
        } while st.learnerStep < 2 && Date() < deadline && usleep(20_000) == 0
        XCTAssertEqual(st.learnerStep, 2)
        XCTAssertEqual(st.learnerMetrics["pending_rows"], 0)
    }

    /// --kv-cache-mb sizes the paged KV cache: 4 MB holds four times the blocks of 1 MB (Status and
    /// /metrics say the same).
    func testKVCacheMBSizesTheCache() throws {
        var blocks: [Int] = []
        for mb in [1, 4] {
            let dir = try temporaryDirectory()
            let server = try ServerProcess(model: Self.tinyChat, dataDir: dir + "/data", metrics: true,
                                           args: ["--no-learner", "--kv-cache-mb", "\(mb)"])
            let c = try server.client()
            _ = try c.hello()
            guard case .statusReply(let s) = try c.call(1, .status(StatusRequest())) else { return XCTFail() }
            XCTAssertEqual(metricValue(try server.scrapeMetrics(), "selm_kv_blocks_total"), Double(s.kvBlocksTotal))
            blocks.append(Int(s.kvBlocksTotal))
            XCTAssertEqual(server.stop(), 0, server.log)
        }
        XCTAssertGreaterThan(blocks[0], 0)
        XCTAssertTrue((4 * blocks[0] ... 4 * blocks[0] + 3).contains(blocks[1]), "\(blocks)")
    }

    /// --max-requests-in-flight 1: a second request pipelined behind a running generation on the same
    /// connection is refused with RESOURCE_EXHAUSTED naming the limit; the first completes.
    func testMaxRequestsInFlightRefusesTheExcess() throws {
        let dir = try temporaryDirectory()
        let server = try ServerProcess(model: Self.tinyChat, dataDir: dir + "/data", args: ["--no-learner", "--max-requests-in-flight", "1"])
        defer { server.stop() }
        let c = try server.client()
        _ = try c.hello()
        let g = GenerateRequest(prompts: [.ids([1, 5])], sampling: SamplingParams(temperature: 0, maxTokens: 40), ignoreEOS: true)
        // Both frames in one write: the loop reads them together, before the first can finish.
        try c.sendRaw(try Frame.encode(Envelope(id: 1, body: .generate(g))) + Frame.encode(Envelope(id: 2, body: .generate(g))))
        guard case .error(let e) = try c.receive(2) else { return XCTFail("the second request was not refused") }
        XCTAssertEqual(e.code, .resourceExhausted)
        XCTAssertTrue(e.message.contains("1 requests in flight"), e.message)
        var done = false
        while !done {
            switch try c.receive(1) {
            case .generateDone: done = true
            case .error(let e): return XCTFail("generate: \(e.message)")
            default: continue
            }
        }
    }

    /// --compute-sharing shows in /metrics: split is no lock and one BLAS thread; fifo is the FIFO lock.
    func testComputeSharingIsApplied() throws {
        for (mode, label) in [("split", "none"), ("fifo", "fifo")] {
            let dir = try temporaryDirectory()
            let server = try ServerProcess(model: Self.tinyChat, dataDir: dir + "/data", metrics: true,
                                           args: ["--no-learner", "--compute-sharing", mode])
            let text = try server.scrapeMetrics()
            XCTAssertEqual(metricValue(text, "selm_compute_sharing_info{mode=\"\(label)\"}"), 1, text)
            if mode == "split" { XCTAssertEqual(metricValue(text, "selm_blas_threads"), 1, text) }
            XCTAssertEqual(server.stop(), 0, server.log)
        }
    }

    /// Flags `selm serve` cannot honour are refused before anything loads (usage error, exit 64),
    /// with the reason: --seed (nothing online is seeded by it), --warmup-ratio and --schedule cosine
    /// without --total-steps (no horizon), --warmup-ratio with --warmup-steps.
    func testFlagsWithoutAnOnlineMeaningAreRefused() throws {
        let dir = try temporaryDirectory()
        let cases: [([String], [String])] = [
            (["--seed", "7"], ["--seed", "its own seed"]),
            (["--warmup-ratio", "0.1"], ["--warmup-ratio", "--total-steps"]),
            (["--schedule", "cosine"], ["--schedule cosine", "--total-steps"]),
            (["--warmup-ratio", "0.1", "--warmup-steps", "3", "--total-steps", "10"], ["--warmup-ratio", "--warmup-steps"]),
        ]
        for (i, (args, mentions)) in cases.enumerated() {
            let (status, stderr) = try runBounded(["serve", "--model", Self.tinyChat, "--data-dir", dir + "/d\(i)", "--address", "127.0.0.1:0"] + args)
            XCTAssertEqual(status, 64, "\(args): exit \(status)\n\(stderr)")
            for m in mentions { XCTAssertTrue(stderr.contains(m), "\(args): the error names \(m):\n\(stderr)") }
        }
    }

    /// Runs `selm ARGS`; a process still running after 20 s (a server that accepted the flags) is
    /// stopped and reported with status -1.
    func runBounded(_ args: [String]) throws -> (Int32, String) {
        let p = Process()
        p.executableURL = ServerProcess.selm
        p.arguments = args
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        let deadline = Date().addingTimeInterval(20)
        while p.isRunning && Date() < deadline { usleep(20_000) }
        var status = Int32(-1)
        if p.isRunning { kill(p.processIdentifier, SIGKILL) }
        p.waitUntilExit()
        if p.terminationReason == .exit { status = p.terminationStatus }
        return (status, String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
    }
}
