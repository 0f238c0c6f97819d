import Foundation
import Wire
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// The log lines of real `selm serve` and `selm train` processes (swift-log, `SelmLogHandler`):
/// `TIME LEVEL LABEL: MESSAGE key=value…` with an ISO-8601 UTC time, filtered by `--log-level`;
/// one line per learner step with its fields, and a line when a checkpoint save starts and ends.
final class LogLineTests: XCTestCase {
    static var tinyChat: String { ServerProcess.root.appendingPathComponent("Tests/ModelTests/Fixtures/tiny-chat").path }
    static let linePattern = #"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z) (trace|debug|info|notice|warning|error|critical) (selm\.[a-z]+): (.+)$"#

    /// The log lines of `text` (deprecation notes and the like excluded: they precede logging).
    func logLines(_ text: String) -> [Substring] { text.split(separator: "\n").filter { !$0.hasPrefix("selm: ") } }

    /// `key=value` metadata of a line.
    func fields(_ line: Substring) -> [String: String] {
        var out: [String: String] = [:]
        for part in line.split(separator: " ") {
            guard let eq = part.firstIndex(of: "="), eq != part.startIndex else { continue }
            out[String(part[..<eq])] = String(part[part.index(after: eq)...])
        }
        return out
    }

    /// Every line of a server run is `TIME LEVEL selm.LABEL: message`, the time ISO-8601 UTC with
    /// milliseconds, and close to now.
    func testEveryLineHasTheFormatAndAnISO8601Time() throws {
        let dir = try temporaryDirectory()
        let before = Date()
        let server = try ServerProcess(model: Self.tinyChat, dataDir: dir + "/data", metrics: true, args: ["--no-learner"])
        XCTAssertEqual(server.stop(), 0, server.log)
        let lines = logLines(server.log)
        XCTAssertGreaterThanOrEqual(lines.count, 4, server.log)
        let parser = ISO8601DateFormatter()
        parser.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        let regex = try NSRegularExpression(pattern: Self.linePattern)
        for line in lines {
            let s = String(line)
            guard let m = regex.firstMatch(in: s, range: NSRange(s.startIndex..., in: s)) else {
                XCTFail("not a log line: \(s)"); continue
            }
            let time = String(s[Range(m.range(at: 1), in: s)!])
            let date = try XCTUnwrap(parser.date(from: time), time)
            XCTAssertLessThan(abs(date.timeIntervalSince(before)), 600, "\(time) is not now")
        }
        XCTAssertTrue(lines.contains { $0.contains(" info selm.serve: listening on tcp 127.0.0.1:") }, server.log)
    }

    /// --log-level filters: at debug every connection gets a line (level debug); at the default
    /// (info) none does and no debug line appears; --verbose (the old spelling) is --log-level debug
    /// and says it is deprecated.
    func testLogLevelFiltersServeLines() throws {
        for (args, wantDebug, deprecated) in [(["--log-level", "debug"], true, false), ([], false, false), (["--verbose"], true, true)] {
            let dir = try temporaryDirectory()
            let server = try ServerProcess(model: Self.tinyChat, dataDir: dir + "/data", args: ["--no-learner"] + args)
            let c = try server.client()
            _ = try c.hello()
            XCTAssertEqual(server.stop(), 0, server.log)
            let lines = logLines(server.log)
            let connection = lines.filter { $0.contains("selm.serve: connection 1 from 127.0.0.1") }
            XCTAssertEqual(connection.count, wantDebug ? 1 : 0, "\(args):\n\(server.log)")
            if wantDebug { XCTAssertTrue(connection[0].contains(" debug selm.serve: "), server.log) }
            if !wantDebug { XCTAssertFalse(lines.contains { $0.contains(" debug ") || $0.contains(" trace ") }, server.log) }
            XCTAssertEqual(server.log.contains("selm: warning: --verbose is deprecated; use --log-level debug"), deprecated, server.log)
        }
    }

    /// `selm train --log-level warning` prints none of the info lines (steps, saves); the default
    /// prints them; an unknown level is a usage error naming the flag.
    func testLogLevelFiltersTrainLines() throws {
        let dir = try temporaryDirectory()
        let data = dir + "/rows.jsonl"
        try (#"{"prompt_ids":[1,2],"chosen_ids":[3,4],"rejected_ids":[5,6]}"# + "\n").write(toFile: data, atomically: true, encoding: .utf8)
        let tiny = ServerProcess.tinyTied
        let quiet = try runSelmCLI(["train", "--model", tiny, "--data", data, "--out", dir + "/q", "--no-gguf", "--log-level", "warning"])
        XCTAssertEqual(quiet.status, 0, quiet.stderr)
        XCTAssertEqual(quiet.stderr, "", "nothing at warning and above happened")
        let loud = try runSelmCLI(["train", "--model", tiny, "--data", data, "--out", dir + "/l", "--no-gguf"])
        XCTAssertEqual(loud.status, 0, loud.stderr)
        XCTAssertTrue(loud.stderr.contains(" info selm.learner: step 1/1 "), loud.stderr)
        XCTAssertTrue(loud.stderr.contains(" info selm.learner: checkpoint saved "), loud.stderr)
        let bad = try runSelmCLI(["train", "--model", tiny, "--data", data, "--out", dir + "/b", "--log-level", "loud"])
        XCTAssertEqual(bad.status, 64, bad.stderr)
        XCTAssertTrue(bad.stderr.contains("--log-level"), bad.stderr)
    }

    /// The learner logs one line per step: step, loss, margin, accuracy, lr, grad_norm,
    /// tokens_per_second and the version it was published as (`none` between publications, with
    /// --publish-every 2); the values are the step's (as the version event carries them). A
    /// checkpoint save logs its start and its end with the bytes on disk and the seconds it took.
    func testStepLinesAndCheckpointLines() throws {
        let dir = try temporaryDirectory()
        let server = try ServerProcess(model: Self.tinyChat, dataDir: dir + "/data",
                                       args: ["--batch-size", "1", "--max-wait-seconds", "0", "--lr", "1e-3", "--publish-every", "2",
                                              "--checkpoint-every", "2"])
        defer { server.stop() }
        let watcher = try server.client()
        _ = try watcher.hello()
        guard case .versionEvent = try watcher.call(1, .subscribeVersions(SubscribeVersions())) else { return XCTFail() }
        let c = try server.client()
        _ = try c.hello()
        let rows = (0..<2).map { PreferenceRow(prompt: .ids([1, UInt32(10 + $0)]), chosen: .ids([20, 2]), rejected: .ids([21, 22, 2])) }
        guard case .preferenceAck = try c.call(2, .submitPreferences(SubmitPreferences(rows: rows))) else { return XCTFail() }
        guard case .versionEvent(let v) = try watcher.receive(1) else { return XCTFail() }
        XCTAssertEqual(v.learnerStep, 2)
        // The periodic checkpoint follows the version; wait for its end line.
        let deadline = Date().addingTimeInterval(60)
        while !server.log.contains("checkpoint saved") && Date() < deadline { usleep(20_000) }
        let lines = logLines(server.log)
        let steps = lines.filter { $0.contains(" info selm.learner: step ") }
        XCTAssertEqual(steps.count, 2, server.log)
        guard steps.count == 2 else { return }
        let f1 = fields(steps[0]), f2 = fields(steps[1])
        for key in ["step", "loss", "margin", "accuracy", "lr", "grad_norm", "tokens_per_second", "version"] {
            XCTAssertNotNil(f1[key], "step line lacks \(key): \(steps[0])")
        }
        XCTAssertEqual(f1["step"], "1")
        XCTAssertEqual(f1["version"], "none")
        XCTAssertEqual(f2["step"], "2")
        XCTAssertEqual(f2["version"], "\(v.version)")
        XCTAssertEqual(f2["loss"], String(format: "%.4f", v.metrics["loss"] ?? .nan))
        XCTAssertEqual(f2["margin"], String(format: "%.4f", v.metrics["rewards/margins"] ?? .nan))
        XCTAssertEqual(f2["accuracy"], String(format: "%.3f", v.metrics["rewards/accuracies"] ?? .nan))
        XCTAssertEqual(f2["lr"], String(format: "%.3e", v.metrics["learning_rate"] ?? .nan))
        XCTAssertGreaterThan(Double(f2["tokens_per_second"] ?? "") ?? 0, 0)
        let started = lines.filter { $0.contains(" info selm.learner: checkpoint save started ") }
        let saved = lines.filter { $0.contains(" info selm.learner: checkpoint saved ") }
        XCTAssertEqual(started.count, 1, server.log)
        XCTAssertEqual(saved.count, 1, server.log)
        guard let s = saved.first, let st = started.first else { return }
        let fs = fields(s)
        XCTAssertEqual(fields(st)["path"], fs["path"])
        XCTAssertTrue(fs["path"]?.hasSuffix("/checkpoints/step-2") ?? false, String(s))
        XCTAssertEqual(fs["step"], "2")
        XCTAssertGreaterThan(Int(fs["bytes"] ?? "") ?? 0, 0)
        XCTAssertNotNil(Double(fs["seconds"] ?? ""), String(s))
        // Start before end, and the step line of the published step before both.
        XCTAssertLessThan(lines.firstIndex(of: st)!, lines.firstIndex(of: s)!)
    }
}
