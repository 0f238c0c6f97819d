import Foundation
@testable import PreferenceLog
@testable import Server
import Wire
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// The fault-injection shim (`Tests/FaultShim`, built by `swift build` as `libSelmFaultShim.so`)
/// for one `selm serve`: the environment that loads it and what it recorded.
///
/// It watches the files whose path matches `pattern` and nothing else: every write, every fsync /
/// fdatasync (with the file size it made durable and CLOCK_MONOTONIC times), and it can delay,
/// hold or fail them (include/selm_fault.h).
struct FaultShim {
    /// `libSelmFaultShim.so`, next to the `selm` binary the tests run.
    static var library: String {
        ServerProcess.selm.deletingLastPathComponent().appendingPathComponent("libSelmFaultShim.so").path
    }

    let events: String
    let releaseFile: String
    let environment: [String: String]

    /// - Parameters:
    ///   - dir: where the event log and the release file go.
    ///   - pattern: the files acted on (`fnmatch`, `*` matches `/` too).
    ///   - syncDelayMs: sleep before each sync.
    ///   - failSync / failWrite: "N:ERRNO" (failWrite also "N:ERRNO:short").
    ///   - holdSync: the Nth sync waits until `release()`.
    /// - Throws: when the shim library is missing (a failure, not a skip: `swift build --build-tests`
    ///   builds it).
    init(dir: String, pattern: String = "*/" + PreferenceLog.fileName, syncDelayMs: Int = 0, failSync: String? = nil,
         failWrite: String? = nil, holdSync: Int? = nil) throws {
        guard FileManager.default.fileExists(atPath: Self.library) else {
            XCTFail("\(Self.library) is missing: `swift build --build-tests` builds it (target SelmFaultShim)")
            throw TestError("no fault shim")
        }
        events = dir + "/fault-events.log"
        releaseFile = dir + "/fault-release"
        var env = ["LD_PRELOAD": Self.library, "SELM_FAULT_PATH": pattern, "SELM_FAULT_EVENTS": events,
                   "SELM_FAULT_RELEASE": releaseFile]
        if syncDelayMs > 0 { env["SELM_FAULT_SYNC_DELAY_MS"] = "\(syncDelayMs)" }
        if let failSync { env["SELM_FAULT_FAIL_SYNC"] = failSync }
        if let failWrite { env["SELM_FAULT_FAIL_WRITE"] = failWrite }
        if let holdSync { env["SELM_FAULT_HOLD_SYNC"] = "\(holdSync)" }
        environment = env
    }

    /// One line of the event log: its kind and its `key=value` fields.
    struct Event {
        var kind: String
        var fields: [String: Int64]
        subscript(_ k: String) -> Int64 { fields[k] ?? -1 }
    }

    var allEvents: [Event] {
        let text = (try? String(contentsOfFile: events, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").map { line in
            let parts = line.split(separator: " ")
            var f: [String: Int64] = [:]
            for p in parts.dropFirst() {
                let kv = p.split(separator: "=", maxSplits: 1)
                if kv.count == 2, let v = Int64(kv[1]) { f[String(kv[0])] = v }
            }
            return Event(kind: String(parts.first ?? ""), fields: f)
        }
    }

    /// Every fsync / fdatasync of a matched file, in order (`size`: bytes it made durable, `t1`: when
    /// it returned; `rc` 0 when it succeeded).
    var syncs: [Event] { allEvents.filter { $0.kind == "sync" } }

    /// The bytes a power loss would keep: the size covered by the last successful sync (0: none).
    var durableSize: Int64 { syncs.filter { $0["rc"] == 0 }.map { $0["size"] }.max() ?? 0 }

    /// Lets a held sync go on.
    func release() { _ = FileManager.default.createFile(atPath: releaseFile, contents: nil) }

    /// Waits until the held sync is holding (a `hold` event); false after `timeout` s.
    func waitForHold(timeout: Double = 30) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if allEvents.contains(where: { $0.kind == "hold" }) { return true }
            usleep(5_000)
        }
        return false
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the shim's clock, the same in every process of the machine.
func monotonicNanos() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}

/// The end offset (header + payload) of every record of a preference log file, by sequence.
func walRecordEnds(_ path: String) throws -> [UInt64: Int64] {
    let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
    let scan = try bytes.withUnsafeBytes { try PreferenceLog.scan(fileBytes: $0) }
    var ends: [UInt64: Int64] = [:]
    for (i, e) in scan.index.enumerated() {
        ends[scan.firstSequence + UInt64(i)] = e.offset + Int64(PreferenceLog.recordHeaderSize) + Int64(e.length)
    }
    return ends
}

/// Runs `body(0..<n)` on `n` threads of its own, all at once, and waits for them. (Unlike
/// `parallel`, whose `concurrentPerform` runs only as many at a time as there are cores: 16
/// "concurrent" clients there are 2 at a time on a 2-core machine.)
func concurrently(_ n: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let done = DispatchSemaphore(value: 0)
    for k in 0..<n {
        let t = Thread { body(k); done.signal() }
        t.stackSize = 1 << 20
        t.start()
    }
    for _ in 0..<n { done.wait() }
}

/// A one-row batch whose source names `k`.
func faultRow(_ k: UInt32) -> PreferenceRow {
    PreferenceRow(prompt: .ids([k % 90, 1, 2]), chosen: .ids([3, k % 90]), rejected: .ids([4]), source: "r\(k)")
}

func fileSize(_ path: String) -> Int64 {
    ((try? FileManager.default.attributesOfItem(atPath: path)[.size]) as? NSNumber)?.int64Value ?? -1
}

/// The preference log under injected faults, against the real `selm serve` (the shim loaded with
/// LD_PRELOAD acts on `preferences.wal` only): an acknowledgement is sent only after the fsync that
/// covers its record returned; concurrent batches share fsyncs; a failed write or fsync stops
/// intake with `UNAVAILABLE` naming the log while everything else keeps being served, and loses
/// nothing acknowledged; a power loss (the file cut back to what the last fsync covered) keeps every
/// acknowledged batch.
final class FaultInjectionTests: XCTestCase {
    nonisolated func row(_ k: UInt32) -> PreferenceRow { faultRow(k) }

    func status(_ c: TestClient) throws -> StatusReply {
        guard case .statusReply(let s) = try c.call(999_999, .status(StatusRequest())) else { throw TestError("status") }
        return s
    }

    /// The records of a stopped server's log: sequence → the `source` of its single row.
    func loggedSources(_ data: String) throws -> [UInt64: String] {
        let log = try PreferenceLog(directory: data)
        defer { log.close() }
        return Dictionary(uniqueKeysWithValues: try log.records(after: 0).map { ($0.sequence, $0.sources.first ?? "") })
    }

    /// With every fsync delayed 300 ms, each PreferenceAck reaches the client after an fsync that
    /// covers its record's end offset has returned (the shim's clock and the client's are the same).
    func testAnAckNeverPrecedesTheFsyncCoveringItsRecord() throws {
        let dir = try temporaryDirectory()
        let data = dir + "/data"
        let shim = try FaultShim(dir: dir, syncDelayMs: 300)
        let server = try ServerProcess(model: ServerProcess.tiny, dataDir: data, args: ["--no-learner"], environment: shim.environment)
        let acks = Locked([(sequence: UInt64, at: Int64)]())
        let failures = Locked([String]())
        let srv = UncheckedSendable(server)
        concurrently(4) { k in
            do {
                let c = try srv.value.client()
                _ = try c.hello()
                for j in 0..<4 {
                    let r = try c.call(UInt64(j + 1), .submitPreferences(SubmitPreferences(rows: [faultRow(UInt32(k * 10 + j))])))
                    let now = monotonicNanos()
                    guard case .preferenceAck(let a) = r else { throw TestError("SubmitPreferences answered \(r)") }
                    acks.with { $0.append((a.firstSequence, now)) }
                }
            } catch {
                failures.with { $0.append("\(error)") }
            }
        }
        XCTAssertEqual(failures.get, [])
        XCTAssertEqual(server.stop(), 0, server.log)

        let ends = try walRecordEnds(data + "/" + PreferenceLog.fileName)
        let syncs = shim.syncs.filter { $0["rc"] == 0 }
        XCTAssertFalse(syncs.isEmpty, "the shim saw no fsync of the log: \(shim.allEvents.map(\.kind))")
        XCTAssertEqual(acks.get.count, 16)
        var early: [String] = []
        for ack in acks.get.sorted(by: { $0.sequence < $1.sequence }) {
            guard let end = ends[ack.sequence] else { early.append("\(ack.sequence): not in the log"); continue }
            // The first fsync that made this record's bytes durable.
            guard let covering = syncs.first(where: { $0["size"] >= end }) else {
                early.append("\(ack.sequence): no fsync covered byte \(end) (synced sizes \(syncs.map { $0["size"] }))")
                continue
            }
            if covering["t1"] >= ack.at {
                early.append("\(ack.sequence): acked \(Double(covering["t1"] - ack.at) / 1e6) ms before its fsync returned")
            }
        }
        XCTAssertEqual(early, [], "acknowledgements that came before the fsync covering their record")
    }

    /// 16 clients × 8 batches (each client waits for its ack before the next) with fsyncs delayed
    /// 150 ms: the batches that arrive during one fsync are written and synced together, so the log
    /// is synced far fewer times than there are batches — and every batch is acknowledged.
    func testConcurrentBatchesShareFsyncs() throws {
        let dir = try temporaryDirectory()
        let data = dir + "/data"
        let shim = try FaultShim(dir: dir, syncDelayMs: 150)
        let server = try ServerProcess(model: ServerProcess.tiny, dataDir: data, args: ["--no-learner"], environment: shim.environment)
        let clients = 16, perClient = 8, batches = clients * perClient
        let acked = Locked([UInt64]())
        let failures = Locked([String]())
        let srv = UncheckedSendable(server)
        concurrently(clients) { k in
            do {
                let c = try srv.value.client()
                _ = try c.hello()
                for j in 0..<perClient {
                    let r = try c.call(UInt64(j + 1), .submitPreferences(SubmitPreferences(rows: [faultRow(UInt32(k * 10 + j))])))
                    guard case .preferenceAck(let a) = r else { throw TestError("SubmitPreferences answered \(r)") }
                    acked.with { $0.append(a.firstSequence) }
                }
            } catch {
                failures.with { $0.append("\(error)") }
            }
        }
        XCTAssertEqual(failures.get, [])
        XCTAssertEqual(acked.get.sorted(), Array(1...UInt64(batches)), "every batch acknowledged, with its own sequence")
        XCTAssertEqual(server.stop(), 0, server.log)

        // The syncs of commits (the first one, of the 16-byte file header, is the log's creation).
        let commits = shim.syncs.filter { $0["size"] > Int64(PreferenceLog.fileHeaderSize) }
        XCTAssertGreaterThan(commits.count, 0, "the shim saw no fsync of the log")
        // Each round of 16 batches takes about two fsyncs (the first arrival alone, the other 15
        // during its fsync): 16 here; one fsync per batch would be 128.
        XCTAssertLessThanOrEqual(commits.count, batches / 4,
                                 "\(batches) batches from \(clients) concurrent clients took \(commits.count) fsyncs: commits are not grouped")
        XCTAssertEqual(shim.durableSize, fileSize(data + "/" + PreferenceLog.fileName), "the last fsync covered the whole log")
    }

    /// A fault in the log (`failWrite` or `failSync` as the shim takes it, hitting the second
    /// batch's commit): that batch and every later one, on any connection, get `UNAVAILABLE` naming
    /// the preference log and the cause; Tokenize and Status keep answering; after a restart
    /// without the fault the log holds exactly the acknowledged batch and takes new ones.
    func checkFailingLog(failWrite: String? = nil, failSync: String? = nil, cause: String) throws {
        let dir = try temporaryDirectory()
        let data = dir + "/data"
        // A fresh log: write 1 and sync 1 are its header, write 2 and sync 2 the first batch's commit.
        let shim = try FaultShim(dir: dir, failSync: failSync, failWrite: failWrite)
        let tinyChat = ServerProcess.root.appendingPathComponent("Tests/ModelTests/Fixtures/tiny-chat").path
        var server = try ServerProcess(model: tinyChat, dataDir: data, args: ["--no-learner"], environment: shim.environment)
        let c = try server.client()
        _ = try c.hello()
        guard case .preferenceAck(let first) = try c.call(1, .submitPreferences(SubmitPreferences(rows: [row(1)]))) else {
            return XCTFail("the first batch was not acknowledged")
        }
        XCTAssertEqual(first.firstSequence, 1)
        // Four batches in flight at once: the commit holding the first of them fails.
        for i in 2...5 { try c.send(UInt64(i), .submitPreferences(SubmitPreferences(rows: [row(UInt32(i))]))) }
        func assertLogUnavailable(_ m: ServerMessage, _ what: String) {
            guard let e = errorOf(m) else { return }
            XCTAssertEqual(e.code, .unavailable, "\(what): \(e.message)")
            XCTAssertTrue(e.message.contains("preference log") && e.message.contains(PreferenceLog.fileName) && e.message.contains(cause),
                          "\(what): \(e.message)")
        }
        for i in 2...5 { assertLogUnavailable(try c.receive(UInt64(i)), "batch \(i)") }
        // Later batches, on this connection and another, are refused the same way.
        let other = try server.client()
        _ = try other.hello()
        assertLogUnavailable(try other.call(6, .submitPreferences(SubmitPreferences(rows: [row(6)]))), "a later batch")
        assertLogUnavailable(try c.call(7, .submitPreferences(SubmitPreferences(rows: [row(7)]))), "a later batch on the same connection")
        // Everything else is served.
        guard case .tokenizeReply(let t) = try other.call(8, .tokenize(TokenizeRequest(input: .text("still here")))) else {
            return XCTFail("Tokenize did not answer after the log failed")
        }
        XCTAssertFalse(t.ids.isEmpty)
        let st = try status(other)
        XCTAssertEqual(st.walLastSequence, 1, "only the acknowledged batch is durable")
        XCTAssertTrue(server.log.contains("unavailable: preference log") && server.log.contains(cause), "the server's log says why:\n\(server.log)")
        XCTAssertEqual(server.stop(), 0, server.log)

        // Restart without the fault: exactly the acknowledged batch is there, and intake works again.
        server = try ServerProcess(model: tinyChat, dataDir: data, args: ["--no-learner"])
        let c2 = try server.client()
        _ = try c2.hello()
        XCTAssertEqual(try status(c2).walLastSequence, 1)
        guard case .preferenceAck(let next) = try c2.call(1, .submitPreferences(SubmitPreferences(rows: [row(9)]))) else {
            return XCTFail("no ack after the restart")
        }
        XCTAssertEqual(next.firstSequence, 2)
        XCTAssertEqual(server.stop(), 0, server.log)
        XCTAssertEqual(try loggedSources(data), [1: "r1", 2: "r9"], "the acknowledged batches, and no refused one")
    }

    func testFailedFsyncStopsIntakeAndLosesNothingAcknowledged() throws {
        try checkFailingLog(failSync: "3:EIO", cause: "Input/output error")
    }

    func testFailedWriteStopsIntakeAndLosesNothingAcknowledged() throws {
        try checkFailingLog(failWrite: "3:EIO", cause: "Input/output error")
    }

    /// A disk running full: the commit's write gets half its bytes out, then ENOSPC.
    func testFullDiskStopsIntakeAndLosesNothingAcknowledged() throws {
        try checkFailingLog(failWrite: "3:ENOSPC:short", cause: "No space left on device")
    }

    /// A log that cannot even be created (its header's fsync fails): `selm serve` refuses to start
    /// and says why.
    func testUnsyncableLogAtStartIsAClearStartupError() throws {
        let dir = try temporaryDirectory()
        let shim = try FaultShim(dir: dir, failSync: "1:EIO")
        XCTAssertThrowsError(try ServerProcess(model: ServerProcess.tiny, dataDir: dir + "/data", args: ["--no-learner"],
                                               environment: shim.environment)) { e in
            let text = "\(e)"
            XCTAssertTrue(text.contains("preference log") && text.contains(PreferenceLog.fileName) && text.contains("Input/output error"), text)
        }
    }

    /// Power loss: eight clients submit continuously; the 8th fsync of the log is held (its batches
    /// are written, in the page cache, not synced, not acknowledged) and the server is killed
    /// (`kill -9`). The file is then cut back to what the last completed fsync covered — what a
    /// power loss would leave — and the restarted server holds every acknowledged batch.
    func testPowerLossKeepsEveryAcknowledgedBatch() throws {
        let dir = try temporaryDirectory()
        let data = dir + "/data"
        let shim = try FaultShim(dir: dir, holdSync: 8)
        var server = try ServerProcess(model: ServerProcess.tiny, dataDir: data, args: ["--no-learner"], environment: shim.environment)
        let acked = Locked([UInt64: String]())  // sequence → the source of the row it carried
        let sent = Locked(Set<String>())
        let srv = UncheckedSendable(server)
        let writers = Thread {
            concurrently(8) { k in
                guard let c = try? srv.value.client(), (try? c.hello()) != nil else { return }
                for j in 0..<200 {
                    let r = faultRow(UInt32(k * 1000 + j))
                    sent.with { _ = $0.insert(r.source) }
                    guard case .preferenceAck(let a)? = try? c.call(UInt64(j + 1), .submitPreferences(SubmitPreferences(rows: [r]))) else { return }
                    acked.with { $0[a.firstSequence] = r.source }
                }
            }
        }
        writers.start()
        XCTAssertTrue(shim.waitForHold(), "the 8th fsync of the log never came: \(shim.allEvents.map(\.kind))")
        server.kill9()
        while !writers.isFinished { usleep(10_000) }

        let path = data + "/" + PreferenceLog.fileName
        let durable = shim.durableSize
        let cached = fileSize(path)
        XCTAssertGreaterThan(cached, durable, "the held commit's records were written but not synced")
        XCTAssertFalse(acked.get.isEmpty)
        XCTAssertEqual(truncate(path, off_t(durable)), 0)

        server = try ServerProcess(model: ServerProcess.tiny, dataDir: data, args: ["--no-learner"])
        let c = try server.client()
        _ = try c.hello()
        let last = try status(c).walLastSequence
        XCTAssertEqual(server.stop(), 0, server.log)
        let logged = try loggedSources(data)
        XCTAssertEqual(UInt64(logged.count), last)
        let lost = acked.get.filter { logged[$0.key] != $0.value }.keys.sorted()
        XCTAssertEqual(lost.count, 0, "acknowledged records lost or changed by the power loss (of \(acked.get.count)): \(lost.prefix(10))…")
        XCTAssertEqual(logged.values.filter { !sent.get.contains($0) }, [], "records holding a row no client sent")
    }
}
