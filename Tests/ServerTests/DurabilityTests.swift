import Foundation
@testable import PreferenceLog
import Learner
import ModelBundle
@testable import Server
import Wire
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Preference intake: acknowledged means on disk; `kill -9` loses nothing acknowledged; a torn tail
/// is cut; a restart replays exactly what the learner's checkpoint had not consumed.
final class DurabilityTests: XCTestCase {
    nonisolated func row(_ k: UInt32) -> PreferenceRow {
        PreferenceRow(prompt: .ids([k % 90, 1, 2]), chosen: .ids([3, k % 90]), rejected: .ids([4]), source: "r\(k)")
    }

    func submit(_ c: TestClient, id: UInt64, rows: [PreferenceRow], chat: Bool = false) throws -> PreferenceAck {
        let r = try c.call(id, .submitPreferences(SubmitPreferences(rows: rows, chat: chat)))
        guard case .preferenceAck(let a) = r else { throw TestError("SubmitPreferences answered \(r)") }
        return a
    }

    func status(_ c: TestClient) throws -> StatusReply {
        guard case .statusReply(let s) = try c.call(999_999, .status(StatusRequest())) else { throw TestError("status") }
        return s
    }

    /// Text rows are stored as the token ids `PreferenceData` would make of them (template on the
    /// prompt when `chat`, EOS after each response); id rows as they are; weights and sources kept.
    func testAcknowledgedRowsAreOnDiskAsTokenIDs() throws {
        try requireSmol()
        let dir = try temporaryDirectory()
        let server = try ServerProcess(model: ServerProcess.smol, dataDir: dir + "/data", args: ["--no-learner"])
        let c = try server.client()
        _ = try c.hello()
        let rows = [
            PreferenceRow(prompt: .text("What is 2+2?"), chosen: .text("4."), rejected: .text("5."), reference: .text("Four."),
                          weight: 2, source: "pairrm"),
            PreferenceRow(prompt: .messages([ChatMessage(role: "system", content: "Be terse."), ChatMessage(role: "user", content: "Hi")]),
                          chosen: .text("Hello."), rejected: .ids([100, 200])),
        ]
        let a1 = try submit(c, id: 1, rows: rows, chat: true)
        XCTAssertEqual([a1.firstSequence, a1.lastSequence, UInt64(a1.rows)], [1, 1, 2])
        let a2 = try submit(c, id: 2, rows: [PreferenceRow(prompt: .text("plain"), chosen: .ids([5]), rejected: .ids([6]))], chat: false)
        XCTAssertEqual(a2.firstSequence, 2)
        XCTAssertEqual(server.stop(), 0)

        let bundle = try sharedSmolBundle()
        let tok = try bundle.tokenizer
        let log = try PreferenceLog(directory: dir + "/data")
        defer { log.close() }
        let recs = try log.records(after: 0)
        XCTAssertEqual(recs.map(\.sequence), [1, 2])
        let enc = try bundle.textEncoder()
        let expected0 = PreferencePair(prompt: try enc.prompt(text: "What is 2+2?", chat: true), chosen: enc.response(text: "4.", appendEOS: true),
                                       rejected: enc.response(text: "5.", appendEOS: true), reference: enc.response(text: "Four.", appendEOS: true), weight: 2)
        XCTAssertEqual(recs[0].pairs[0], expected0)
        XCTAssertEqual(recs[0].pairs[0].chosen.last, tok.eosId, "EOS appended to text responses")
        let expected1 = PreferencePair(prompt: try enc.chat([.system("Be terse."), .user("Hi")]),
                                       chosen: enc.response(text: "Hello.", appendEOS: true), rejected: [100, 200], weight: 1)
        XCTAssertEqual(recs[0].pairs[1], expected1)
        XCTAssertEqual(recs[0].sources, ["pairrm", ""])
        XCTAssertEqual(recs[1].pairs[0].prompt, try enc.prompt(text: "plain", chat: false), "chat false: the text prompt is not templated")
    }

    /// `kill -9` right after acknowledgements from many concurrent clients, then a power loss (the
    /// log cut back to what the fault shim saw fsynced: without the fsync nothing would be left),
    /// plus a torn record at the end of the log: on restart every acknowledged record is there, the
    /// torn one is gone, and numbering continues after the last acknowledged one.
    func testKill9KeepsEveryAcknowledgedBatchAndTruncatesATornTail() throws {
        let dir = try temporaryDirectory()
        let data = dir + "/data"
        let shim = try FaultShim(dir: dir)
        var server = try ServerProcess(model: ServerProcess.tiny, dataDir: data, args: ["--no-learner"], environment: shim.environment)
        let clients = 16, perClient = 6
        let acked = Locked([UInt64: UInt32]())  // sequence → the row key it carried
        let failures = Locked([String]())
        let srv = UncheckedSendable(server)
        concurrently(clients) { k in
            do {
                let c = try srv.value.client()
                _ = try c.hello()
                // Pipeline every batch of this client, then collect the acks.
                for j in 0..<perClient { try c.send(UInt64(j), .submitPreferences(SubmitPreferences(rows: [faultRow(UInt32(k * 100 + j))]))) }
                for j in 0..<perClient {
                    guard case .preferenceAck(let a) = try c.receive(UInt64(j)) else { throw TestError("no ack") }
                    acked.with { $0[a.firstSequence] = UInt32(k * 100 + j) }
                }
            } catch {
                failures.with { $0.append("\(error)") }
            }
        }
        XCTAssertEqual(failures.get, [])
        XCTAssertEqual(Set(acked.get.keys), Set(1...UInt64(clients * perClient)), "distinct consecutive sequences")
        server.kill9()

        // Power loss: what only the page cache held is gone. Every acknowledged batch was fsynced,
        // so the last fsync covered the whole file.
        let path = data + "/" + PreferenceLog.fileName
        XCTAssertEqual(shim.durableSize, fileSize(path), "bytes of acknowledged batches were never fsynced")
        XCTAssertEqual(truncate(path, off_t(shim.durableSize)), 0)

        // A torn append: a record header announcing more bytes than follow.
        let size = (try FileManager.default.attributesOfItem(atPath: path)[.size] as! NSNumber).intValue
        let fh = FileHandle(forWritingAtPath: path)!
        fh.seekToEndOfFile()
        var torn: [UInt8] = []
        appendLE32(&torn, 4096); appendLE32(&torn, 0x1234_5678); appendLE64(&torn, UInt64(clients * perClient + 1))
        fh.write(Data(torn + [UInt8](repeating: 7, count: 100)))
        fh.closeFile()

        server = try ServerProcess(model: ServerProcess.tiny, dataDir: data, args: ["--no-learner"])
        XCTAssertTrue(server.log.contains("torn tail of 116 bytes truncated"), server.log)
        XCTAssertEqual((try FileManager.default.attributesOfItem(atPath: path)[.size] as! NSNumber).intValue, size,
                       "the file is cut back to the acknowledged records")
        let c = try server.client()
        _ = try c.hello()
        let st = try status(c)
        XCTAssertEqual(st.walLastSequence, UInt64(clients * perClient))
        XCTAssertEqual(st.walConsumedSequence, 0)
        XCTAssertEqual(try submit(c, id: 1, rows: [row(1)]).firstSequence, UInt64(clients * perClient + 1))
        XCTAssertEqual(server.stop(), 0)
        let log = try PreferenceLog(directory: data)
        defer { log.close() }
        let recs = try log.records(after: 0)
        XCTAssertEqual(recs.count, clients * perClient + 1)
        for r in recs.dropLast() {
            XCTAssertEqual(UInt32(r.pairs[0].prompt[0]), acked.get[r.sequence]! % 90, "record \(r.sequence) holds the batch acknowledged with it")
            XCTAssertEqual(r.sources, ["r\(acked.get[r.sequence]!)"])
        }
    }

    /// With the learner (one row per optimizer step), a `kill -9` and restart replays exactly the
    /// records after the checkpoint: the restarted learner resumes at the checkpoint's step and
    /// position, and its step count grows by the rows of the records after it — none of the records
    /// before it is trained on again, none after it skipped. (The same check, killed mid-run with
    /// batches of several rows, is `OnlineLearningTests.testKillAndRestartAppliesEveryPreferenceExactlyOnce`.)
    func testRestartReplaysExactlyTheRecordsAfterTheCheckpoint() throws {
        let dir = try temporaryDirectory()
        let data = dir + "/data"
        let args = ["--batch-size", "1", "--grad-accum", "1", "--checkpoint-every", "0"]
        var server = try ServerProcess(model: ServerProcess.tiny, dataDir: data, args: args)
        var c = try server.client()
        _ = try c.hello()
        for i in 0..<3 { _ = try submit(c, id: UInt64(i), rows: [row(UInt32(i)), row(UInt32(i + 50))]) }
        let deadline = Date().addingTimeInterval(60)
        while try status(c).walConsumedSequence < 3 && Date() < deadline { usleep(20_000) }
        guard case .saveCheckpointReply(let ck) = try c.call(10, .saveCheckpoint(SaveCheckpoint(name: "ck1"))) else { return XCTFail() }
        XCTAssertEqual(ck.walSequence, 3, "the checkpoint holds every record consumed before it")
        XCTAssertEqual(ck.learnerStep, 6, "one step per row")
        for i in 3..<5 { _ = try submit(c, id: UInt64(i), rows: [row(UInt32(i))]) }
        // Wait until the learner consumed them too, then kill (no final checkpoint).
        while try status(c).walConsumedSequence < 5 && Date() < deadline { usleep(20_000) }
        XCTAssertEqual(try status(c).learnerStep, 8)
        server.kill9()

        server = try ServerProcess(model: ServerProcess.tiny, dataDir: data, args: args)
        XCTAssertTrue(server.log.contains("learner consumed 3, 2 to replay"), server.log)
        c = try server.client()
        _ = try c.hello()
        let until = Date().addingTimeInterval(60)
        while try status(c).walConsumedSequence < 5 && Date() < until { usleep(20_000) }
        let s = try status(c)
        XCTAssertEqual(s.walConsumedSequence, 5)
        XCTAssertEqual(s.learnerStep, 8, "resumed at step 6, then records 4 and 5 (one row each) once")
        XCTAssertEqual(try submit(c, id: 9, rows: [row(9)]).firstSequence, 6)
        while try status(c).learnerStep < 9 && Date() < until { usleep(20_000) }
        XCTAssertEqual(try status(c).learnerStep, 9)
        XCTAssertEqual(server.stop(), 0)
    }

    /// SIGTERM while batches are in flight: the server stops reading, finishes (and acknowledges)
    /// every batch it had read, closes, and exits 0; the log holds exactly the acknowledged batches.
    /// The fault shim holds the first commit's fsync until SIGTERM has been taken, so at that moment
    /// a batch is certainly in flight: written, not synced, not acknowledged.
    func testSigtermAcknowledgesEverythingInFlightThenExitsZero() throws {
        let dir = try temporaryDirectory()
        let data = dir + "/data"
        let shim = try FaultShim(dir: dir, holdSync: 2)  // sync 1 is the new log's header
        let server = try ServerProcess(model: ServerProcess.tiny, dataDir: data, args: ["--no-learner"], environment: shim.environment)
        let c = try server.client()
        _ = try c.hello()
        var frames: [UInt8] = []
        for i in 0..<300 { frames += try Frame.encode(Envelope(id: UInt64(i + 1), body: .submitPreferences(SubmitPreferences(rows: [row(UInt32(i))])))) }
        try c.sendRaw(frames)
        XCTAssertTrue(shim.waitForHold(), "the first commit's fsync never came")
        let held = shim.allEvents.filter { $0.kind == "write" }.map { $0["end"] }.max() ?? 0
        XCTAssertGreaterThan(held, Int64(PreferenceLog.fileHeaderSize), "the held commit wrote its records")
        do {
            let other = try server.client()
            _ = try other.hello()
            XCTAssertEqual(try status(other).walLastSequence, 0, "nothing is durable (nor acknowledged) while the fsync is held")
        }
        kill(server.pid, SIGTERM)
        let deadline = Date().addingTimeInterval(30)
        while !server.log.contains("SIGTERM: shutting down") && Date() < deadline { usleep(10_000) }
        XCTAssertTrue(server.log.contains("SIGTERM: shutting down"), server.log)
        shim.release()
        var acks: [UInt64: UInt64] = [:]  // request id → sequence
        while let e = try c.receiveAny() {
            if case .preferenceAck(let a) = e.body { acks[e.id] = a.firstSequence }
        }
        XCTAssertEqual(acks[1], 1, "the batch in flight at SIGTERM was acknowledged")
        XCTAssertEqual(acks.keys.sorted().map { acks[$0]! }, acks.keys.sorted(), "request i got sequence i")
        XCTAssertEqual(server.stop(), 0, server.log)
        let ends = try walRecordEnds(data + "/" + PreferenceLog.fileName)
        XCTAssertTrue(ends.filter { $0.value <= held }.keys.allSatisfy { acks.values.contains($0) },
                      "every record of the commit held at SIGTERM was acknowledged")
        let log = try PreferenceLog(directory: data)
        defer { log.close() }
        XCTAssertEqual(Set(try log.records(after: 0).map(\.sequence)), Set(acks.values), "every record on disk was acknowledged and vice versa")
    }
}
