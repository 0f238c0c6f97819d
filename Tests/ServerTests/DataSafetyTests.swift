import Foundation
import Wire
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Data safety of `selm serve` on real files, with the real binary and the online learner on the
/// tiny chat model: checkpoint names cannot reach anything but `DATA/checkpoints/NAME`, weights with
/// NaN are never served, interrupted saves leave no garbage, checkpoints are pruned and saves check
/// free space, and version numbers never go back across a restart.
final class DataSafetyTests: XCTestCase {
    static var tinyChat: String { ServerProcess.root.appendingPathComponent("Tests/ModelTests/Fixtures/tiny-chat").path }
    let fm = FileManager.default

    func start(_ data: String, _ args: [String] = []) throws -> (ServerProcess, TestClient) {
        let server = try ServerProcess(model: Self.tinyChat, dataDir: data, args: args)
        let c = try server.client()
        _ = try c.hello()
        return (server, c)
    }

    func row(_ k: UInt32) -> PreferenceRow {
        PreferenceRow(prompt: .ids([1, 10 + k % 50, 11]), chosen: .ids([300, 301, 2]), rejected: .ids([400, 401, 2]))
    }

    func submit(_ c: TestClient, id: UInt64, _ k: UInt32) throws -> PreferenceAck {
        let r = try c.call(id, .submitPreferences(SubmitPreferences(rows: [row(k)])))
        guard case .preferenceAck(let a) = r else { throw TestError("SubmitPreferences answered \(r)") }
        return a
    }

    func status(_ c: TestClient) throws -> StatusReply {
        guard case .statusReply(let s) = try c.call(999_999, .status(StatusRequest())) else { throw TestError("status") }
        return s
    }

    func save(_ c: TestClient, id: UInt64, _ name: String) throws -> ServerMessage {
        try c.call(id, .saveCheckpoint(SaveCheckpoint(name: name)))
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

    func isDirectory(_ path: String) -> Bool {
        var d: ObjCBool = false
        return fm.fileExists(atPath: path, isDirectory: &d) && d.boolValue
    }

    // MARK: 1. Checkpoint names

    /// Every name either lands in `DATA/checkpoints/NAME` or is refused naming the field; the log,
    /// the `latest` pointer and a directory that is not a checkpoint are never touched; every
    /// acknowledged row is still there after a `kill -9` and restart.
    func testCheckpointNamesCannotReplaceAnythingButCheckpoints() throws {
        let data = try temporaryDirectory() + "/data"
        var (server, c) = try start(data, ["--checkpoint-every", "0", "--batch-size", "64", "--max-wait-seconds", "0"])
        for k in 0..<2 { _ = try submit(c, id: UInt64(k + 1), UInt32(k)) }
        try fm.createDirectory(atPath: data + "/checkpoints/notes", withIntermediateDirectories: true)
        try Data("mine".utf8).write(to: URL(fileURLWithPath: data + "/checkpoints/notes/todo.txt"))

        // Names of the server's own files are just checkpoint names in their folder.
        for (i, name) in ["preferences.wal", "checkpoints", "version", "good"].enumerated() {
            guard case .saveCheckpointReply(let s) = try save(c, id: UInt64(10 + i), name) else {
                return XCTFail("\(name) refused")
            }
            XCTAssertEqual(s.path, "checkpoints/" + name)
            XCTAssertTrue(fm.fileExists(atPath: data + "/checkpoints/\(name)/trainer_state.json"), name)
        }
        // The path a save replied is accepted back; an existing checkpoint is replaced.
        guard case .saveCheckpointReply(let again) = try save(c, id: 20, "checkpoints/good") else { return XCTFail() }
        XCTAssertEqual(again.path, "checkpoints/good")

        let refused = ["latest", "checkpoints/latest", "checkpoints/", "a/b", "../x", "checkpoints/../preferences.wal", "/etc/passwd",
                       ".hidden", "-rf", "a b", "x\u{01}", "caf\u{E9}", "tab\t", "line\n", "step-3.partial-99", "good.old-1",
                       "latest.tmp-7", "version.tmp-12", String(repeating: "x", count: 101), "notes", "checkpoints/notes", "."]
        for (i, name) in refused.enumerated() {
            let r = try save(c, id: UInt64(30 + i), name)
            guard let e = errorOf(r) else { continue }
            XCTAssertEqual(e.code, .invalidArgument, "\(String(reflecting: name)): \(e.message)")
            XCTAssertEqual(e.field, "name", String(reflecting: name))
        }
        XCTAssertEqual(try String(contentsOfFile: data + "/checkpoints/notes/todo.txt", encoding: .utf8), "mine")
        for k in 2..<4 { _ = try submit(c, id: UInt64(k + 1), UInt32(k)) }

        // The log and the resume pointer are what they were meant to be.
        var st = stat()
        XCTAssertEqual(lstat(data + "/preferences.wal", &st), 0)
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFREG, "preferences.wal is still the log file")
        XCTAssertEqual(lstat(data + "/checkpoints/latest", &st), 0)
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFREG, "checkpoints/latest is still the pointer file")
        XCTAssertEqual(try String(contentsOfFile: data + "/checkpoints/latest", encoding: .utf8), "good\n")
        let top = try fm.contentsOfDirectory(atPath: data).filter { !$0.hasPrefix(".") }.sorted()
        XCTAssertEqual(top, ["checkpoints", "preferences.wal", "version"], "nothing else was created in the data directory")

        server.kill9()
        (server, c) = try start(data, ["--checkpoint-every", "0", "--batch-size", "64", "--max-wait-seconds", "0"])
        XCTAssertTrue(server.log.contains("4 records (1…4)"), server.log)
        XCTAssertTrue(server.log.contains("learner resumed from"), server.log)
        XCTAssertEqual(try status(c).walLastSequence, 4, "every acknowledged row is in the log after the restart")
        XCTAssertEqual(server.stop(), 0)
    }

    // MARK: 6. NaN weights

    /// `model.safetensors` of `dir` with a NaN written into `tensor` at `index`.
    func poison(_ dir: String, tensor: String, index: Int) throws {
        let path = dir + "/model.safetensors"
        let fh = try XCTUnwrap(FileHandle(forUpdatingAtPath: path))
        defer { try? fh.close() }
        let n = Int(try XCTUnwrap(fh.readData(ofLength: 8)).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
        let header = try XCTUnwrap(JSONSerialization.jsonObject(with: fh.readData(ofLength: n)) as? [String: Any])
        let entry = try XCTUnwrap(header[tensor] as? [String: Any], "no tensor \(tensor)")
        XCTAssertEqual(entry["dtype"] as? String, "F32")
        let begin = try XCTUnwrap((entry["data_offsets"] as? [NSNumber])?.first).intValue
        fh.seek(toFileOffset: UInt64(8 + n + begin + 4 * index))
        fh.write(withUnsafeBytes(of: Float.nan.bitPattern.littleEndian) { Data($0) })
    }

    func greedy(_ c: TestClient, id: UInt64) throws -> [UInt32] {
        var sampling = SamplingParams()
        sampling.temperature = 0
        sampling.maxTokens = 8
        try c.send(id, .generate(GenerateRequest(prompts: [.ids([1, 20, 21, 22])], sampling: sampling, ignoreEOS: true)))
        var ids: [UInt32] = []
        while true {
            switch try c.receive(id) {
            case .sampleResult(let s): ids = s.tokenIDs
            case .generateDone: return ids
            case .generateChunk: continue
            case let other: throw TestError("generate answered \(other)")
            }
        }
    }

    func score(_ c: TestClient, id: UInt64) throws -> Double {
        let r = try c.call(id, .score(ScoreRequest(items: [ScoreItem(prompt: .ids([1, 20, 21]), continuation: .ids([300, 301]))])))
        guard case .scoreReply(let s) = r else { throw TestError("score answered \(r)") }
        return s.items[0].totalLogprob
    }

    /// RefreshWeights from a checkpoint with one NaN is refused naming the tensor; the served version
    /// and outputs are unchanged, the learner does not adopt it. `selm serve` refuses such weights as
    /// the checkpoint to resume from and as --model.
    func testNaNWeightsAreNeverServed() throws {
        let dir = try temporaryDirectory()
        let data = dir + "/data"
        let (server, c) = try start(data, ["--checkpoint-every", "0"])
        guard case .saveCheckpointReply(let base) = try save(c, id: 1, "base") else { return XCTFail() }
        try fm.copyItem(atPath: data + "/" + base.path, toPath: data + "/poisoned")
        let tensor = "model.layers.1.mlp.up_proj.weight"
        try poison(data + "/poisoned", tensor: tensor, index: 17)

        let v0 = try status(c).policyVersion
        let tokens0 = try greedy(c, id: 2)
        let score0 = try score(c, id: 3)
        let r = try c.call(4, .refreshWeights(RefreshWeights(checkpoint: "poisoned")))
        if let e = errorOf(r) {
            XCTAssertEqual(e.code, .invalidArgument, e.message)
            XCTAssertEqual(e.field, "checkpoint")
            XCTAssertTrue(e.message.contains("poisoned") && e.message.contains(tensor) && e.message.contains("17")
                          && e.message.contains("nan"), e.message)
        }
        XCTAssertEqual(try status(c).policyVersion, v0, "no version was published")
        XCTAssertEqual(try greedy(c, id: 5), tokens0)
        let score1 = try score(c, id: 6)
        XCTAssertTrue(score1.isFinite)
        XCTAssertEqual(score1, score0)
        guard case .saveCheckpointReply(let after) = try save(c, id: 7, "after") else { return XCTFail() }
        XCTAssertEqual(after.version, v0, "the learner still holds the served weights")
        XCTAssertEqual(server.stop(), 0)

        // As the checkpoint a restart resumes from: a clear error, nothing served.
        try fm.moveItem(atPath: data + "/poisoned", toPath: data + "/checkpoints/poisoned")
        try Data("poisoned\n".utf8).write(to: URL(fileURLWithPath: data + "/checkpoints/latest"))
        XCTAssertThrowsError(try ServerProcess(model: Self.tinyChat, dataDir: data)) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("cannot resume") && text.contains(tensor), text)
        }

        // As --model: a clear error, nothing served.
        let model = dir + "/poisoned-model"
        try fm.copyItem(atPath: Self.tinyChat, toPath: model)
        try poison(model, tensor: tensor, index: 17)
        XCTAssertThrowsError(try ServerProcess(model: model, dataDir: dir + "/data2")) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("--model") && text.contains(tensor) && text.contains("non-finite"), text)
        }
    }

    /// A learner whose weights turn non-finite (a learning rate that overflows Float) publishes
    /// nothing and saves no checkpoint of them; it counts the skipped publications.
    func testLearnerNeverPublishesNonFiniteWeights() throws {
        let data = try temporaryDirectory() + "/data"
        let (server, c) = try start(data, ["--lr", "1e39", "--batch-size", "1", "--max-wait-seconds", "0", "--checkpoint-every", "1"])
        _ = try submit(c, id: 1, 0)
        try waitFor("a learner step") { try status(c).learnerStep >= 1 }
        try waitFor("the skipped publication to be counted") { try status(c).learnerMetrics["skipped_publishes"] == 1 }
        XCTAssertEqual(try status(c).policyVersion, 1, "nothing was published")
        XCTAssertTrue(server.log.contains("not published, the weights hold"), server.log)
        XCTAssertTrue(server.log.contains("checkpoint step-1 skipped"), server.log)
        XCTAssertFalse(fm.fileExists(atPath: data + "/checkpoints/step-1"))
        XCTAssertEqual(server.stop(), 0)
    }

    // MARK: 8. Disk

    /// Leftovers of a save killed mid-way are removed at start (and logged with their size); a
    /// replaced checkpoint whose replacement was cut between the two renames comes back.
    func testInterruptedSaveLeftoversAreCleanedAtStart() throws {
        let data = try temporaryDirectory() + "/data"
        let ck = data + "/checkpoints"
        try fm.createDirectory(atPath: ck + "/step-20.partial-123", withIntermediateDirectories: true)
        try Data(count: 3_000_000).write(to: URL(fileURLWithPath: ck + "/step-20.partial-123/model.safetensors"))
        try fm.createDirectory(atPath: ck + "/mine", withIntermediateDirectories: true)
        try Data("{}".utf8).write(to: URL(fileURLWithPath: ck + "/mine/trainer_state.json"))
        try fm.createDirectory(atPath: ck + "/lost.old-456", withIntermediateDirectories: true)
        try Data("{}".utf8).write(to: URL(fileURLWithPath: ck + "/lost.old-456/trainer_state.json"))
        try Data("x\n".utf8).write(to: URL(fileURLWithPath: ck + "/latest.tmp-789"))

        let (server, c) = try start(data)
        XCTAssertEqual(try fm.contentsOfDirectory(atPath: ck).sorted(), ["lost", "mine"])
        XCTAssertTrue(server.log.contains("removed step-20.partial-123 (3.0 MB)"), server.log)
        XCTAssertTrue(server.log.contains("restored lost from lost.old-456"), server.log)
        XCTAssertEqual(try status(c).checkpoints, 2)
        XCTAssertEqual(server.stop(), 0)
    }

    /// `--keep-checkpoints 2` leaves the two newest `step-N` (the automatic series), and every
    /// client-named checkpoint.
    func testKeepCheckpointsPrunesTheAutomaticSeries() throws {
        let data = try temporaryDirectory() + "/data"
        let (server, c) = try start(data, ["--keep-checkpoints", "2", "--checkpoint-every", "1", "--batch-size", "1",
                                           "--max-wait-seconds", "0", "--lr", "1e-3"])
        _ = try submit(c, id: 1, 0)
        try waitFor("step 1") { try status(c).learnerStep >= 1 }
        guard case .saveCheckpointReply = try save(c, id: 2, "mine") else { return XCTFail() }
        for k in 1..<5 {
            _ = try submit(c, id: UInt64(10 + k), UInt32(k))
            try waitFor("step \(k + 1)") { try status(c).learnerStep >= k + 1 }
        }
        let ck = data + "/checkpoints"
        func steps() throws -> [String] { try fm.contentsOfDirectory(atPath: ck).filter { $0.hasPrefix("step-") }.sorted() }
        try waitFor("step-5 saved and the series pruned") {
            try (try? String(contentsOfFile: ck + "/latest", encoding: .utf8)) == "step-5\n" && steps() == ["step-4", "step-5"]
        }
        XCTAssertTrue(isDirectory(ck + "/mine"), "client-named checkpoints are not pruned")
        XCTAssertTrue(server.log.contains("removed checkpoint step-1"), server.log)
        try waitFor("Status to count the checkpoints") { try status(c).checkpoints == 3 }
        XCTAssertEqual(server.stop(), 0)
    }

    /// On a filesystem with less free space than a checkpoint needs, SaveCheckpoint is refused with
    /// RESOURCE_EXHAUSTED before anything is written; with room it succeeds. Status reports the
    /// disk. (A real tmpfs mounted for the test.)
    func testSaveIsRefusedWhenTheDiskIsTooSmall() throws {
        let dir = try temporaryDirectory()
        let data = dir + "/data"
        try fm.createDirectory(atPath: data, withIntermediateDirectories: true)
        guard mountTmpfs(data, size: "1m") else { throw XCTSkip("cannot mount a tmpfs here (needs root)") }
        addTeardownBlock { _ = self.run("/bin/umount", ["-l", data]) }

        let (server, c) = try start(data, ["--checkpoint-every", "0"])
        defer { server.stop() }
        let before = try status(c)
        XCTAssertGreaterThan(before.diskFreeBytes, 0)
        XCTAssertLessThanOrEqual(before.diskFreeBytes, 1 << 20)
        XCTAssertGreaterThan(before.dataDirBytes, 0)
        _ = try submit(c, id: 1, 0)

        let r = try save(c, id: 2, "big")
        if let e = errorOf(r) {
            XCTAssertEqual(e.code, .resourceExhausted, e.message)
            XCTAssertTrue(e.message.contains("needs ~") && e.message.contains("free in checkpoints"), e.message)
        }
        XCTAssertEqual(try fm.contentsOfDirectory(atPath: data + "/checkpoints"), [], "nothing was written")
        XCTAssertEqual(try status(c).walLastSequence, 1)

        XCTAssertTrue(run("/bin/mount", ["-o", "remount,size=64m", data]))
        guard case .saveCheckpointReply(let s) = try save(c, id: 3, "big") else { return XCTFail("save refused with room") }
        XCTAssertEqual(s.path, "checkpoints/big")
        try waitFor("Status to see the checkpoint") {
            let st = try status(c)
            return st.checkpoints == 1 && st.dataDirBytes > before.dataDirBytes + 1_000_000
        }
    }

    @discardableResult
    func run(_ tool: String, _ args: [String]) -> Bool {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: tool)
        p.arguments = args
        p.standardError = FileHandle.nullDevice
        do { try p.run() } catch { return false }
        p.waitUntilExit()
        return p.terminationStatus == 0
    }

    func mountTmpfs(_ path: String, size: String) -> Bool {
        getuid() == 0 && run("/bin/mount", ["-t", "tmpfs", "-o", "size=\(size),mode=0700", "tmpfs", path])
    }

    // MARK: 10. Versions

    /// Refresh → v2, `kill -9`, restart: the resumed checkpoint holds v1, which is not the highest
    /// version issued, so the weights come back as v3 — never below what clients saw. The number
    /// is in `DATA/version`.
    func testVersionNeverGoesBackAcrossARestart() throws {
        let data = try temporaryDirectory() + "/data"
        var (server, c) = try start(data, ["--checkpoint-every", "0"])
        XCTAssertEqual(try status(c).policyVersion, 1)
        guard case .saveCheckpointReply(let base) = try save(c, id: 1, "base") else { return XCTFail() }
        XCTAssertEqual(base.version, 1)
        guard case .refreshWeightsReply(let r) = try c.call(2, .refreshWeights(RefreshWeights(checkpoint: base.path))) else {
            return XCTFail()
        }
        XCTAssertEqual(r.version, 2)
        XCTAssertEqual(try String(contentsOfFile: data + "/version", encoding: .utf8), "2\n")
        server.kill9()

        (server, c) = try start(data, ["--checkpoint-every", "0"])
        let v = try status(c).policyVersion
        XCTAssertGreaterThanOrEqual(v, 3, "resumed at version \(v) after version 2 was served")
        XCTAssertEqual(v, 3)
        guard case .refreshWeightsReply(let r2) = try c.call(3, .refreshWeights(RefreshWeights(checkpoint: base.path))) else {
            return XCTFail()
        }
        XCTAssertEqual(r2.version, 4)
        // A clean stop saves nothing new (no training), so the next start resumes base again: 5.
        XCTAssertEqual(server.stop(), 0)
        (server, c) = try start(data, ["--checkpoint-every", "0"])
        XCTAssertEqual(try status(c).policyVersion, 5)
        XCTAssertEqual(server.stop(), 0)
    }

    /// The learner's own checkpoint (weights exactly as published) keeps its version across a restart.
    func testResumedCheckpointKeepsItsVersionWhenNothingCameAfter() throws {
        let data = try temporaryDirectory() + "/data"
        var (server, c) = try start(data, ["--checkpoint-every", "1", "--batch-size", "1", "--max-wait-seconds", "0", "--lr", "1e-3"])
        _ = try submit(c, id: 1, 0)
        try waitFor("step 1 saved") { (try? String(contentsOfFile: data + "/checkpoints/latest", encoding: .utf8)) == "step-1\n" }
        try waitFor("version 2 served") { try status(c).policyVersion == 2 }
        server.kill9()
        (server, c) = try start(data, ["--checkpoint-every", "1", "--batch-size", "1", "--max-wait-seconds", "0", "--lr", "1e-3"])
        XCTAssertEqual(try status(c).policyVersion, 2, "the same weights keep their number")
        XCTAssertEqual(server.stop(), 0)
    }
}
