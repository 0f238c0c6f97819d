import Foundation
import FuzzChecks
@testable import PreferenceLog
import XCTest

/// The preference-log fuzzer's seed and regression corpus (Fuzz/corpus/log) replayed through the
/// properties it asserts (`LogProperties`, Fuzz/README.md), and the in-memory scan the fuzzer drives
/// checked against `PreferenceLog.init` on the same bytes in a real file.
final class LogCorpusReplayTests: XCTestCase {
    static let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fuzz/corpus/log").path

    func inputs() throws -> [(name: String, bytes: [UInt8])] {
        try FuzzDriver.corpusFiles(Self.corpus).map { (($0 as NSString).lastPathComponent, Array(try Data(contentsOf: URL(fileURLWithPath: $0)))) }
    }

    func testEveryCorpusInputKeepsTheLogProperties() throws {
        let all = try inputs()
        XCTAssertGreaterThanOrEqual(all.count, 10, "the seed corpus: valid and torn logs")
        for (name, bytes) in all {
            XCTAssertEqual(LogProperties.violations(bytes), [], name)
        }
    }

    /// What `PreferenceLog(directory:)` recovers from each corpus file equals the fuzzed scan of the
    /// same bytes: the records it keeps, what it cuts, and the records it reads back.
    func testTheFuzzedScanIsTheScanOpeningALogRuns() throws {
        for (name, bytes) in try inputs() {
            for variant in [bytes, LogProperties.withValidFraming(bytes)] {
                let dir = try temporaryDirectory()
                try Data(variant).write(to: URL(fileURLWithPath: dir + "/" + PreferenceLog.fileName))
                let scan: PreferenceLog.Scan
                do { scan = try variant.withUnsafeBytes { try PreferenceLog.scan(fileBytes: $0) } } catch {
                    XCTAssertThrowsError(try PreferenceLog(directory: dir), "\(name): the scan refuses it, so does opening")
                    continue
                }
                let log = try PreferenceLog(directory: dir)
                defer { log.close() }
                XCTAssertEqual(log.recovery.records, scan.index.count, name)
                XCTAssertEqual(log.recovery.firstSequence, scan.firstSequence, name)
                if variant.count >= PreferenceLog.fileHeaderSize {
                    XCTAssertEqual(log.recovery.truncatedBytes, Int64(variant.count) - scan.goodLength, name)
                    XCTAssertEqual(log.recovery.truncationReason, scan.truncationReason, name)
                }
                let entries = try log.entries(after: 0)
                XCTAssertEqual(entries.count, scan.index.count, name)
                for (entry, found) in zip(scan.index, entries) {
                    let o = Int(entry.offset) + PreferenceLog.recordHeaderSize
                    XCTAssertEqual(found.payload, Array(variant[o..<o + Int(entry.length)]), "\(name): record \(found.sequence) reads back as stored")
                }
            }
        }
    }

    /// Regression (found by the fuzzer): a CRC-valid record numbered 2^64−1 followed by another made
    /// the recovery scan's sequence arithmetic overflow (a trap when the server opens the log; wrapped
    /// numbering in an unchecked build). Sequences live in 1…2^64−2: a record outside is a torn tail.
    func testRecordsNumberedOutsideTheSequenceSpaceAreATornTail() throws {
        for bad: UInt64 in [0, .max] {
            let dir = try temporaryDirectory()
            var bytes = Array("SELMWAL1".utf8)
            appendLE32(&bytes, 1); appendLE32(&bytes, 0)
            let good = bytes.count
            for seq in [bad, bad &+ 1] {
                let payload: [UInt8] = [0x08, 0x01, 0x10, 0x02]
                appendLE32(&bytes, UInt32(payload.count))
                appendLE32(&bytes, PreferenceLog.recordCRC(length: UInt32(payload.count), sequence: seq, payload: payload))
                appendLE64(&bytes, seq)
                bytes += payload
            }
            try Data(bytes).write(to: URL(fileURLWithPath: dir + "/" + PreferenceLog.fileName))
            let log = try PreferenceLog(directory: dir)
            XCTAssertEqual(log.recovery.records, 0, "sequence \(bad)")
            XCTAssertEqual(log.recovery.truncatedBytes, Int64(bytes.count - good))
            XCTAssertTrue(log.recovery.truncationReason?.contains("outside 1…2^64−2") ?? false, "\(log.recovery)")
            log.start()
            let seq = Locked(UInt64(0))
            let done = DispatchSemaphore(value: 0)
            log.append({ _ in [1, 2, 3] }) { r in seq.with { $0 = (try? r.get()) ?? 0 }; done.signal() }
            done.wait()
            XCTAssertEqual(seq.get, 1, "numbering starts afresh after the cut")
            log.close()
        }
    }
}

/// A fresh temporary directory, removed when the test process ends.
func temporaryDirectory() throws -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("selm-log-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

/// A value shared with a callback on another thread.
final class Locked<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: T
    init(_ value: T) { self.value = value }
    var get: T { lock.lock(); defer { lock.unlock() }; return value }
    func with(_ body: (inout T) -> Void) { lock.lock(); body(&value); lock.unlock() }
}
