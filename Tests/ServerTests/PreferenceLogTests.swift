import Foundation
@testable import PreferenceLog
import Learner
@testable import Server
import XCTest

/// The preference log in-process: format, group commit, torn tails, reading back. (Its fsyncs, and
/// failing writes and fsyncs, against the real server: `FaultInjectionTests`.)
final class PreferenceLogTests: XCTestCase {
    func pair(_ k: Int32, rows: Int = 1) -> [PreferencePair] {
        (0..<rows).map { r in
            PreferencePair(prompt: [k, k + 1, Int32(r)], chosen: [k + 2], rejected: [k + 3, k + 4],
                           reference: k % 2 == 0 ? [k + 5] : nil, weight: 0.5 + Float(r))
        }
    }

    /// Appends and waits for every ack.
    func appendAll(_ log: PreferenceLog, _ batches: [[PreferencePair]]) -> [UInt64] {
        let group = DispatchGroup()
        let seqs = Locked([UInt64](repeating: 0, count: batches.count))
        for (i, b) in batches.enumerated() {
            group.enter()
            log.append(b, sources: b.map { _ in "src\(i)" }) { r in
                seqs.with { $0[i] = (try? r.get()) ?? 0 }
                group.leave()
            }
        }
        group.wait()
        return seqs.get
    }

    func testCRC32CKnownVector() {
        // RFC 3720 / iSCSI check value.
        XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)
        XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0, count: 32)), 0x8A91_36AA)
        // Split updates equal one pass.
        let bytes = (0..<1000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        let whole = CRC32C.checksum(bytes)
        let a = bytes[..<333].withUnsafeBytes { CRC32C.update(0, $0) }
        XCTAssertEqual(bytes[333...].withUnsafeBytes { CRC32C.update(a, $0) }, whole)
        // The hardware path against the Swift tables, over lengths and alignments.
        var rng = SystemRandomNumberGenerator()
        let data = (0..<4099).map { _ in UInt8.random(in: 0...255, using: &rng) }
        data.withUnsafeBytes { all in
            for start in 0..<9 {
                for length in [0, 1, 7, 8, 9, 15, 16, 63, 64, 1000, 4090 - start] {
                    let slice = UnsafeRawBufferPointer(rebasing: all[start..<start + length])
                    XCTAssertEqual(CRC32C.update(0, slice), CRC32C.portableUpdate(0, slice), "start \(start), length \(length)")
                    XCTAssertEqual(CRC32C.update(0x1234_5678, slice), CRC32C.portableUpdate(0x1234_5678, slice))
                }
            }
        }
    }

    func testAppendReadBackAndReopen() throws {
        let dir = try temporaryDirectory()
        let log = try PreferenceLog(directory: dir)
        log.start()
        let batches = (0..<20).map { pair(Int32($0 * 10), rows: 1 + $0 % 3) }
        let seqs = appendAll(log, batches)
        XCTAssertEqual(Set(seqs), Set(1...20), "every batch acked with its own consecutive sequence")
        XCTAssertEqual(log.lastSequence, 20)
        let back = try log.records(after: 0)
        XCTAssertEqual(back.map(\.sequence), Array(1...20))
        for (i, s) in seqs.enumerated() {
            XCTAssertEqual(back[Int(s) - 1].pairs, batches[i], "record \(s) holds batch \(i)")
            XCTAssertEqual(back[Int(s) - 1].sources, batches[i].map { _ in "src\(i)" })
        }
        XCTAssertEqual(try log.records(after: 17).map(\.sequence), [18, 19, 20])
        XCTAssertEqual(try log.records(after: 5, limit: 2).map(\.sequence), [6, 7])
        XCTAssertTrue(try log.records(after: 20).isEmpty)
        log.close()

        let again = try PreferenceLog(directory: dir)
        XCTAssertEqual(again.recovery.records, 20)
        XCTAssertEqual(again.recovery.truncatedBytes, 0)
        XCTAssertEqual(try again.records(after: 0).map(\.pairs), back.map(\.pairs))
        again.start()
        XCTAssertEqual(appendAll(again, [pair(7)]), [21], "numbering continues")
        again.close()
    }

    /// Group commit: batches queued while the log thread is busy (here: not started yet) are
    /// written and fsynced together — one commit, one observer call with the new last sequence —
    /// and each still gets its own sequence. (With the real server and a counted fsync:
    /// `FaultInjectionTests.testConcurrentBatchesShareFsyncs`.)
    func testQueuedBatchesAreCommittedTogether() throws {
        let dir = try temporaryDirectory()
        let log = try PreferenceLog(directory: dir)
        let commits = Locked([UInt64]())
        log.addObserver { last in commits.with { $0.append(last) } }
        let group = DispatchGroup()
        let seqs = Locked([UInt64]())
        for i in 0..<20 {
            group.enter()
            log.append(pair(Int32(i))) { r in
                seqs.with { $0.append((try? r.get()) ?? 0) }
                group.leave()
            }
        }
        XCTAssertEqual(log.pendingBatches, 20)
        log.start()
        group.wait()
        log.close()  // the observers have run once the log thread stopped
        XCTAssertEqual(seqs.get.sorted(), Array(1...20))
        XCTAssertEqual(commits.get, [20], "20 queued batches, one group commit")
    }

    func testSecondOpenWhileLockedIsRefused() throws {
        let dir = try temporaryDirectory()
        let log = try PreferenceLog(directory: dir)
        XCTAssertThrowsError(try PreferenceLog(directory: dir)) { e in
            XCTAssertTrue("\(e)".contains("locked"), "\(e)")
        }
        log.close()
    }

    /// Every kind of torn tail is cut at the last good record, and numbering continues from it.
    func testTornTailsAreTruncated() throws {
        for damage in ["partial header", "partial payload", "bad crc", "garbage", "sequence gap"] {
            let dir = try temporaryDirectory()
            var log = try PreferenceLog(directory: dir)
            log.start()
            _ = appendAll(log, [pair(1), pair(2), pair(3)])
            log.close()
            let path = dir + "/" + PreferenceLog.fileName
            let good = try Data(contentsOf: URL(fileURLWithPath: path))
            var bad = good
            switch damage {
            case "partial header": bad.append(contentsOf: [5, 0, 0])
            case "partial payload":
                var h: [UInt8] = []
                appendLE32(&h, 100); appendLE32(&h, 0xDEAD_BEEF); appendLE64(&h, 4)
                bad.append(contentsOf: h + [1, 2, 3])
            case "bad crc":
                // A complete copy of record 3 renumbered 4, with its CRC left as it was.
                let last = try PreferenceLog.lastRecordBytes(good)
                var rec = last
                rec.replaceSubrange(8..<16, with: withUnsafeBytes(of: UInt64(4).littleEndian) { Array($0) })
                bad.append(contentsOf: rec)
            case "garbage": bad.append(contentsOf: (0..<300).map { UInt8(truncatingIfNeeded: $0 &* 31) })
            case "sequence gap":
                // A well-formed record with sequence 9 (CRC right, number wrong).
                let payload = PreferenceRecord.encodePayload(pair(9), sources: [""], sequence: 9)
                var rec: [UInt8] = []
                appendLE32(&rec, UInt32(payload.count))
                appendLE32(&rec, PreferenceLog.recordCRC(length: UInt32(payload.count), sequence: 9, payload: payload))
                appendLE64(&rec, 9)
                bad.append(contentsOf: rec + payload)
            default: break
            }
            try bad.write(to: URL(fileURLWithPath: path))
            log = try PreferenceLog(directory: dir)
            XCTAssertEqual(log.recovery.records, 3, damage)
            XCTAssertEqual(log.recovery.truncatedBytes, Int64(bad.count - good.count), damage)
            XCTAssertNotNil(log.recovery.truncationReason, damage)
            XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path)), good, "\(damage): file cut back to the good records")
            log.start()
            XCTAssertEqual(appendAll(log, [pair(4)]), [4], damage)
            XCTAssertEqual(try log.records(after: 0).map(\.sequence), [1, 2, 3, 4], damage)
            log.close()
        }
    }

    /// A learner whose checkpoint consumed more than the log holds (the log was lost) never sees
    /// old numbers again.
    func testAdvanceSequence() throws {
        let dir = try temporaryDirectory()
        let log = try PreferenceLog(directory: dir)
        log.advanceSequence(toAtLeast: 58)
        log.start()
        XCTAssertEqual(log.lastSequence, 57)
        XCTAssertEqual(appendAll(log, [pair(1), pair(2)]).sorted(), [58, 59])
        XCTAssertEqual(try log.records(after: 0).map(\.sequence), [58, 59])
        log.close()
        let again = try PreferenceLog(directory: dir)
        XCTAssertEqual(again.recovery.firstSequence, 58)
        XCTAssertEqual(again.recovery.lastSequence, 59)
        again.close()
    }

    func testWaitForRecordsWakesOnAppend() throws {
        let dir = try temporaryDirectory()
        let log = try PreferenceLog(directory: dir)
        log.start()
        XCTAssertFalse(log.waitForRecords(after: 0, timeout: 0.05))
        let one = pair(1)
        DispatchQueue.global().asyncAfter(deadline: .now() + 0.1) { log.append(one) { _ in } }
        let t0 = Date()
        XCTAssertTrue(log.waitForRecords(after: 0, timeout: 10))
        XCTAssertLessThan(Date().timeIntervalSince(t0), 5)
        // The learner's view (PreferenceSource).
        let recs = log.batches(after: 0)
        XCTAssertEqual(recs.map(\.sequence), [1])
        log.close()
    }
}

extension PreferenceLog {
    /// The bytes of the last record of a log file's contents (test helper).
    static func lastRecordBytes(_ file: Data) throws -> [UInt8] {
        let b = [UInt8](file)
        var off = fileHeaderSize
        var last: [UInt8] = []
        while off + recordHeaderSize <= b.count {
            let n = Int(readLE32(b, off))
            last = Array(b[off..<(off + recordHeaderSize + n)])
            off += recordHeaderSize + n
        }
        return last
    }
}
