import Learner
// The checks use PreferenceLog's internal scan and record codec: debug builds (`make test`, `make
// fuzz`) are compiled for testing; a release build compiles a stub that says so.
#if DEBUG
@testable import PreferenceLog
@testable import Server


/// The properties the preference-log fuzzer asserts on every input (Fuzz/README.md), callable from
/// XCTest (Tests/PreferenceLogTests/LogCorpusReplayTests.swift) and from the libFuzzer target (Fuzz/log).
///
/// An input is a whole log file (`PreferenceLog`'s format). It is checked as it is and once more
/// with a valid file header and every record's CRC recomputed, so that mutated payloads reach the
/// payload decoder instead of stopping at a CRC mismatch.
///
/// - The recovery scan (`PreferenceLog.scan(fileBytes:)`, the code `init` runs on the file) never
///   traps; it refuses only a bad header, with a non-empty reason.
/// - It never reports a record past the end of the buffer: records are contiguous from the file
///   header, each record's CRC matches and its sequence follows the previous one, and the good
///   length is where the last one ends; a tail after it has a reason, no tail has none.
/// - Truncating the buffer at the good length and scanning again finds the same records, no tail.
/// - A record appended after the good prefix (what the server does after recovery) is found next.
/// - Every good record's payload decodes (the server's `PreferenceRecord`), or fails with `ServerError.log` and a non-empty reason;
///   a decoded record re-encodes to a payload that decodes to the same record.
///
/// Pure functions; any thread.
public enum LogProperties {
    /// Every property violation `input` shows, as one line each (empty: none).
    public static func violations(_ input: [UInt8]) -> [String] {
        var problems: [String] = []
        check(input, label: "as is", &problems)
        check(withValidFraming(input), label: "CRCs fixed", &problems)
        return problems
    }

    /// `bytes` with the file header made valid and the CRC of every record whose length fits
    /// recomputed (the walk stops at the first record that overruns the buffer).
    public static func withValidFraming(_ input: [UInt8]) -> [UInt8] {
        guard input.count >= PreferenceLog.fileHeaderSize else { return input }
        var bytes = input
        var header = PreferenceLog.magic
        appendLE32(&header, PreferenceLog.formatVersion)
        header += [0, 0, 0, 0]
        bytes.replaceSubrange(0..<PreferenceLog.fileHeaderSize, with: header)
        var offset = PreferenceLog.fileHeaderSize
        while bytes.count - offset >= PreferenceLog.recordHeaderSize {
            let length = Int(readLE32(bytes, offset))
            guard length <= bytes.count - offset - PreferenceLog.recordHeaderSize else { break }
            let payload = Array(bytes[offset + PreferenceLog.recordHeaderSize ..< offset + PreferenceLog.recordHeaderSize + length])
            let crc = PreferenceLog.recordCRC(length: UInt32(length), sequence: readLE64(bytes, offset + 8), payload: payload)
            var c: [UInt8] = []
            appendLE32(&c, crc)
            bytes.replaceSubrange(offset + 4 ..< offset + 8, with: c)
            offset += PreferenceLog.recordHeaderSize + length
        }
        return bytes
    }

    static func scan(_ bytes: [UInt8]) throws -> PreferenceLog.Scan {
        try bytes.withUnsafeBytes { try PreferenceLog.scan(fileBytes: $0) }
    }

    static func check(_ bytes: [UInt8], label: String, _ problems: inout [String]) {
        func fail(_ s: String) { problems.append("\(label): \(s)") }
        let s: PreferenceLog.Scan
        do { s = try scan(bytes) } catch {
            if case let .log(_, reason)? = error as? PreferenceLogError, !reason.isEmpty {
                if bytes.count >= PreferenceLog.fileHeaderSize && Array(bytes[0..<8]) == PreferenceLog.magic
                    && readLE32(bytes, 8) == PreferenceLog.formatVersion {
                    fail("a log with a good header was refused: \(reason)")
                }
            } else {
                fail("scan threw \(error), not PreferenceLogError.log with a reason")
            }
            return
        }
        // Where the records are.
        var end = bytes.count < PreferenceLog.fileHeaderSize ? 0 : Int64(PreferenceLog.fileHeaderSize)
        for (i, entry) in s.index.enumerated() {
            let recordEnd = entry.offset + Int64(PreferenceLog.recordHeaderSize) + Int64(entry.length)
            guard entry.offset == end, recordEnd <= Int64(bytes.count) else {
                fail("record \(i) at \(entry.offset)+\(entry.length) is not where the previous one ends (\(end)) or runs past the buffer (\(bytes.count) bytes)")
                return
            }
            let o = Int(entry.offset)
            let payload = Array(bytes[o + PreferenceLog.recordHeaderSize ..< Int(recordEnd)])
            let seq = readLE64(bytes, o + 8)
            if readLE32(bytes, o) != entry.length { fail("record \(i): indexed length \(entry.length) ≠ stored \(readLE32(bytes, o))") }
            if seq != s.firstSequence &+ UInt64(i) { fail("record \(i): sequence \(seq), expected \(s.firstSequence &+ UInt64(i))") }
            if PreferenceLog.recordCRC(length: entry.length, sequence: seq, payload: payload) != readLE32(bytes, o + 4) {
                fail("record \(i): kept with a CRC mismatch")
            }
            checkPayload(payload, sequence: seq, fail)
            end = recordEnd
        }
        if s.goodLength != end { fail("good length \(s.goodLength), but the last good record ends at \(end)") }
        if s.goodLength < Int64(bytes.count) {
            if (s.truncationReason ?? "").isEmpty { fail("a torn tail of \(Int64(bytes.count) - s.goodLength) bytes without a reason") }
        } else if s.truncationReason != nil {
            fail("a truncation reason (\(s.truncationReason!)) without a torn tail")
        }
        // Truncated at the good length, the same records and no tail.
        let kept = Array(bytes[0..<Int(s.goodLength)])
        do {
            let t = try scan(kept)
            var expected = s
            expected.truncationReason = nil
            if t != expected { fail("after truncating at \(s.goodLength) the scan differs: \(t.index.count) records, good length \(t.goodLength)") }
        } catch {
            fail("after truncating at \(s.goodLength) the scan throws \(error)")
        }
        // One more record after the good prefix is found next (numbering as `init` continues it).
        guard s.goodLength >= Int64(PreferenceLog.fileHeaderSize) else { return }
        let next = s.index.isEmpty ? 1 : s.firstSequence &+ UInt64(s.index.count)
        guard next < .max else { return }  // the sequence space is exhausted: nothing can follow
        let pair = PreferencePair(prompt: [1, 2], chosen: [3], rejected: [4, 5], reference: [6], weight: 0.5)
        let payload = PreferenceRecord.encodePayload([pair], sources: ["fuzz"], sequence: next)
        var record: [UInt8] = []
        appendLE32(&record, UInt32(payload.count))
        appendLE32(&record, PreferenceLog.recordCRC(length: UInt32(payload.count), sequence: next, payload: payload))
        appendLE64(&record, next)
        record += payload
        do {
            let t = try scan(kept + record)
            if t.index.count != s.index.count + 1 || t.truncationReason != nil || t.goodLength != s.goodLength + Int64(record.count)
                || (!s.index.isEmpty && t.firstSequence != s.firstSequence) {
                fail("a record appended after the good prefix is not found next: \(t.index.count) records (was \(s.index.count)), reason \(t.truncationReason ?? "none")")
            }
        } catch {
            fail("after an append the scan throws \(error)")
        }
    }

    static func checkPayload(_ payload: [UInt8], sequence: UInt64, _ fail: (String) -> Void) {
        let record: PreferenceRecord
        do { record = try PreferenceRecord.decodePayload(payload, sequence: sequence, path: "<fuzz>") } catch {
            if case let .log(_, reason)? = error as? ServerError, !reason.isEmpty { return }
            fail("record \(sequence): payload decode threw \(error), not ServerError.log with a reason")
            return
        }
        if record.sequence != sequence || record.sources.count != record.pairs.count {
            fail("record \(sequence): decoded as sequence \(record.sequence) with \(record.pairs.count) pairs and \(record.sources.count) sources")
        }
        let again = PreferenceRecord.encodePayload(record.pairs, sources: record.sources, sequence: sequence)
        do {
            let back = try PreferenceRecord.decodePayload(again, sequence: sequence, path: "<fuzz>")
            if back != record { fail("record \(sequence): changed across a re-encode") }
        } catch {
            fail("record \(sequence): re-encoded payload no longer decodes: \(error)")
        }
    }
}

#else
import Server

public enum LogProperties {
    /// Unavailable in a release build (PreferenceLog's internals are not visible there).
    public static func violations(_ input: [UInt8]) -> [String] {
        ["the log properties need a debug build (swift build; make fuzz builds one)"]
    }
}
#endif
