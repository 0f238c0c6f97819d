// PreferenceLog: the durable preference log (records framed with a length, a CRC-32C and a sequence
// number; group commit; recovery scan; replay), the data directory it lives in (`DataDirectory`:
// client paths confined to it, the checkpoint folder, disk usage) and the version ledger
// (`DATA/version`). Owns its error type, `PreferenceLogError`. Records are opaque bytes here: what a
// record holds (a batch of preference rows as a protobuf message) is the server's business, so this
// module never sees a wire or learner type. May import: Foundation, DurableFile.
import DurableFile
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// One durable record read back from the log.
public struct LogEntry: Sendable, Equatable {
    /// The record's sequence number (consecutive; the first record of a fresh log is 1).
    public var sequence: UInt64
    /// What the appender stored.
    public var payload: [UInt8]
    public init(sequence: UInt64, payload: [UInt8]) { self.sequence = sequence; self.payload = payload }
}

/// The write-ahead log of accepted preference batches: `DATA/preferences.wal`.
///
/// ## File format (little-endian)
///
/// ```
/// header  16 bytes: "SELMWAL1" | u32 format version (1) | u32 0
/// record  u32 length N | u32 CRC-32C | u64 sequence | N bytes payload
/// ```
///
/// The CRC-32C covers the length, the sequence and the payload (in that order, as stored). The
/// payload is whatever the appender made of the record's sequence number (`append`); the server
/// stores a serialized `selm.v1.Envelope` (Proto/selm.proto) whose `id` is the sequence number and
/// whose body is a `SubmitPreferences` holding the batch's rows as token ids (Server's
/// `PreferenceRecord`) — so any protobuf runtime can read a log.
///
/// Sequence numbers are consecutive, in 1…2^64−2. Opening a log scans it: the first record with a
/// bad length, a bad CRC or a sequence out of order (or out of that range) marks a torn tail (a crash in the middle of an append);
/// it and everything after it are truncated away (and the truncation fsynced), and the next append
/// continues after the last good record.
///
/// ## Durability and threads
///
/// `append` (any thread) queues a batch for the log's own thread, which writes every queued batch
/// as one record each, fsyncs once (group commit), and only then calls each batch's completion
/// with its sequence number (on the log thread) and the observers with the new last sequence. A
/// failed write or fsync fails the waiting batches and every later one (`PreferenceLogError.log`): after a
/// failed fsync what reached the disk is unknown, so the server stops accepting preferences rather
/// than acknowledging a batch it cannot vouch for.
///
/// Readers (`records(after:limit:)`, `waitForRecords(after:timeout:)`, `lastSequence`) may run on any
/// thread, concurrently with appends; they see only durable records. The file is locked
/// (`flock`) so two servers cannot share a data directory. The log never shrinks while the server
/// runs: consumed records stay (a later compaction can drop records every checkpoint has consumed).
public final class PreferenceLog: @unchecked Sendable {
    /// Name of the log file inside the data directory.
    public static let fileName = "preferences.wal"
    /// Bytes of the file header.
    public static let fileHeaderSize = 16
    /// Bytes of a record header (length, CRC, sequence).
    public static let recordHeaderSize = 16
    /// Largest payload a record may have (a longer length field is a torn or corrupt record).
    public static let maxPayloadBytes = 1 << 30
    static let magic: [UInt8] = Array("SELMWAL1".utf8)
    static let formatVersion: UInt32 = 1

    /// What opening the log found.
    public struct Recovery: Sendable, Equatable {
        /// Good records kept.
        public var records: Int
        /// Sequence of the first and last good record (0 when there are none).
        public var firstSequence: UInt64
        public var lastSequence: UInt64
        /// Bytes cut from the end (a torn record and anything after it); 0 when the tail was clean.
        public var truncatedBytes: Int64
        /// Why the tail was cut (bad length, CRC mismatch, sequence gap), when it was.
        public var truncationReason: String?
    }

    /// The log file's path.
    public let path: String
    /// What the scan at open found (and truncated).
    public let recovery: Recovery

    /// Called once the record is durable, with its sequence, or with the failure.
    public typealias Completion = @Sendable (Result<UInt64, PreferenceLogError>) -> Void
    /// Makes a record's payload from its sequence number (called on the log thread).
    public typealias Payload = @Sendable (_ sequence: UInt64) -> [UInt8]
    private struct Pending {
        var payload: Payload
        var completion: Completion
    }

    // Everything below is guarded by `cond`.
    private let cond = NSCondition()
    private var pending: [Pending] = []
    /// File offset of record `firstSequence + i`'s header, and its payload length.
    private var index: [(offset: Int64, length: UInt32)] = []
    /// Sequence of `index[0]` (also the next sequence when the log is empty).
    private var firstSequence: UInt64
    /// The next sequence an append gets.
    private var nextSequence: UInt64
    private var failure: PreferenceLogError?
    private var closing = false
    private var stopped = false
    private var started = false
    private var observers: [@Sendable (UInt64) -> Void] = []
    private var fd: Int32
    /// End of the last durable record (log thread only, after `start`).
    private var endOffset: Int64
    private var thread: Thread?

    /// Opens (creating if needed) `directory/preferences.wal`, scans it and truncates a torn tail.
    /// The log thread starts with `start()`; until then `append` only queues. Any thread (the
    /// server opens it on the main thread before serving).
    /// - Throws: `PreferenceLogError.log` when the file is not a preference log, is locked by another
    ///   process, or cannot be read, truncated or synced.
    public init(directory: String) throws {
        path = directory + "/" + Self.fileName
        let existed = FileManager.default.fileExists(atPath: path)
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw PreferenceLogError.log(path: path, reason: "cannot open: \(errnoText())") }
        var ok = false
        defer { if !ok { Glibc.close(fd) } }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            throw PreferenceLogError.log(path: path, reason: "locked by another process (is another `selm serve` using this data directory?)")
        }
        let size = Int64(lseek(fd, 0, SEEK_END))
        guard size >= 0 else { throw PreferenceLogError.log(path: path, reason: "cannot seek: \(errnoText())") }
        let p = path
        func fail(_ r: String) -> PreferenceLogError { .log(path: p, reason: r) }

        if size < Int64(Self.fileHeaderSize) {
            // New file, or a crash while the header was written (no record can exist yet).
            var header = Self.magic
            withUnsafeBytes(of: Self.formatVersion.littleEndian) { header.append(contentsOf: $0) }
            header.append(contentsOf: [0, 0, 0, 0])
            guard ftruncate(fd, 0) == 0, pwriteAll(fd, header, at: 0), fsync(fd) == 0 else {
                throw fail("cannot write the header: \(errnoText())")
            }
            if !existed { try? syncDirectory(directory) }
            self.fd = fd
            endOffset = Int64(Self.fileHeaderSize)
            firstSequence = 1; nextSequence = 1
            recovery = Recovery(records: 0, firstSequence: 0, lastSequence: 0, truncatedBytes: size > 0 ? size : 0,
                                truncationReason: size > 0 ? "incomplete file header" : nil)
            ok = true
            return
        }
        var header = [UInt8](repeating: 0, count: Self.fileHeaderSize)
        guard preadAll(fd, &header, at: 0) else { throw fail("cannot read the header: \(errnoText())") }
        guard Array(header[0..<8]) == Self.magic else { throw fail("not a selm preference log (bad magic)") }
        let version = readLE32(header, 8)
        guard version == Self.formatVersion else { throw fail("format version \(version) is not supported (expected \(Self.formatVersion))") }

        // Scan every record; the first bad one starts the torn tail.
        let scan = try Self.scanRecords(size: size) { buffer, at in
            guard preadAll(fd, &buffer, at: at) else { throw fail("cannot read at offset \(at): \(errnoText())") }
        }
        let idx = scan.index, first = scan.firstSequence, offset = scan.goodLength, reason = scan.truncationReason
        var cut: Int64 = 0
        if offset < size {
            cut = size - offset
            guard ftruncate(fd, off_t(offset)) == 0, fsync(fd) == 0 else { throw fail("cannot truncate the torn tail: \(errnoText())") }
        }
        self.fd = fd
        index = idx
        endOffset = offset
        firstSequence = idx.isEmpty ? 1 : first
        nextSequence = firstSequence + UInt64(idx.count)
        recovery = Recovery(records: idx.count, firstSequence: idx.isEmpty ? 0 : first,
                            lastSequence: idx.isEmpty ? 0 : first + UInt64(idx.count) - 1,
                            truncatedBytes: cut, truncationReason: cut > 0 ? reason : nil)
        ok = true
    }

    /// What a scan of the records found: the good records in order, and where the good prefix ends.
    struct Scan: Equatable {
        /// File offset of each good record's header and its payload length, in order.
        var index: [(offset: Int64, length: UInt32)]
        /// Sequence of the first good record (0 when there is none).
        var firstSequence: UInt64
        /// End of the last good record (the file header's size when there is none): the length the
        /// file is truncated to.
        var goodLength: Int64
        /// Why the bytes from `goodLength` on are a torn tail (nil when the file ends there).
        var truncationReason: String?

        static func == (a: Scan, b: Scan) -> Bool {
            a.index.map(\.offset) == b.index.map(\.offset) && a.index.map(\.length) == b.index.map(\.length)
                && a.firstSequence == b.firstSequence && a.goodLength == b.goodLength && a.truncationReason == b.truncationReason
        }
    }

    /// The recovery scan `init` runs over a log of `size` bytes whose header is good: reads record
    /// after record with `read(buffer, offset)` (filling `buffer` exactly), and stops at the first one
    /// with a bad length, a CRC mismatch or a sequence out of order — the start of the torn tail.
    static func scanRecords(size: Int64, read: (inout [UInt8], Int64) throws -> Void) rethrows -> Scan {
        var offset = Int64(Self.fileHeaderSize)
        var idx: [(offset: Int64, length: UInt32)] = []
        var first: UInt64 = 0
        var reason: String? = nil
        var rh = [UInt8](repeating: 0, count: Self.recordHeaderSize)
        var payload: [UInt8] = []
        while offset < size {
            if size - offset < Int64(Self.recordHeaderSize) { reason = "record header cut short at offset \(offset)"; break }
            try read(&rh, offset)
            let length = readLE32(rh, 0), crc = readLE32(rh, 4), seq = readLE64(rh, 8)
            if Int(length) > Self.maxPayloadBytes || offset + Int64(Self.recordHeaderSize) + Int64(length) > size {
                reason = "record at offset \(offset) announces \(length) bytes, beyond the end of the file"; break
            }
            payload = [UInt8](repeating: 0, count: Int(length))
            try read(&payload, offset + Int64(Self.recordHeaderSize))
            if Self.recordCRC(length: length, sequence: seq, payload: payload) != crc {
                reason = "CRC mismatch in the record at offset \(offset)"; break
            }
            // Sequences run from 1 and the one after the last must exist: a record numbered 0 or
            // 2^64−1 is damage (and would make the numbering overflow), not a record.
            if seq == 0 || seq == .max {
                reason = "record at offset \(offset) has sequence \(seq), outside 1…2^64−2"; break
            }
            if !idx.isEmpty && seq != first + UInt64(idx.count) {
                reason = "record at offset \(offset) has sequence \(seq), expected \(first + UInt64(idx.count))"; break
            }
            if idx.isEmpty { first = seq }
            idx.append((offset, length))
            offset += Int64(Self.recordHeaderSize) + Int64(length)
        }
        return Scan(index: idx, firstSequence: first, goodLength: offset, truncationReason: offset < size ? reason : nil)
    }

    /// The recovery scan of a whole log file held in memory (file header included), as `init` scans
    /// the file on disk, without touching any file: for the fuzzer and offline checks. Any thread.
    /// - Throws: `PreferenceLogError.log` for a file `init` refuses (bad magic or format version); a file
    ///   shorter than its header scans as empty (`init` rewrites such a header).
    static func scan(fileBytes bytes: UnsafeRawBufferPointer, path: String = "<memory>") throws -> Scan {
        guard bytes.count >= Self.fileHeaderSize else {
            return Scan(index: [], firstSequence: 0, goodLength: 0, truncationReason: bytes.isEmpty ? nil : "incomplete file header")
        }
        let header = Array(bytes[0..<Self.fileHeaderSize])
        guard Array(header[0..<8]) == Self.magic else { throw PreferenceLogError.log(path: path, reason: "not a selm preference log (bad magic)") }
        let version = readLE32(header, 8)
        guard version == Self.formatVersion else {
            throw PreferenceLogError.log(path: path, reason: "format version \(version) is not supported (expected \(Self.formatVersion))")
        }
        return scanRecords(size: Int64(bytes.count)) { buffer, at in
            let n = buffer.count
            buffer.withUnsafeMutableBytes { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[Int(at)..<Int(at) + n])) }
        }
    }

    deinit {
        if fd >= 0 { Glibc.close(fd) }
    }

    /// Makes the next append get a sequence of at least `next` (a learner whose checkpoint consumed
    /// more than this log holds, e.g. after the log was deleted, must never see old numbers again).
    /// Call before `start()`; any thread.
    public func advanceSequence(toAtLeast next: UInt64) {
        cond.lock(); defer { cond.unlock() }
        precondition(!started, "advanceSequence after start")
        if next > nextSequence {
            nextSequence = next
            if index.isEmpty { firstSequence = next }
        }
    }

    /// Starts the log thread (appends queued before are written then). Any thread, once.
    public func start() {
        cond.lock()
        precondition(!started, "PreferenceLog.start called twice")
        started = true
        cond.unlock()
        let t = Thread { [self] in self.run() }
        t.name = "selm-wal"
        thread = t
        t.start()
    }

    /// Registers `observer`, called on the log thread with the new last durable sequence after
    /// every group commit (after the batches' completions). Any thread.
    public func addObserver(_ observer: @escaping @Sendable (UInt64) -> Void) {
        cond.lock(); observers.append(observer); cond.unlock()
    }

    /// Queues one record; `payload` makes its bytes from the sequence number the record gets (on
    /// the log thread, in append order). `completion` runs on the log thread once the record is on
    /// disk (fsynced), with its sequence number, or with the failure. Any thread; never blocks on I/O.
    public func append(_ payload: @escaping Payload, completion: @escaping Completion) {
        let item = Pending(payload: payload, completion: completion)
        cond.lock()
        if let f = failure ?? (closing ? PreferenceLogError.log(path: path, reason: "closed") : nil) {
            cond.unlock()
            completion(.failure(f))
            return
        }
        pending.append(item)
        // Broadcast, not signal: readers waiting in `waitForRecords` share this condition, and a
        // signal could wake one of them instead of the log thread (a lost wake-up).
        cond.broadcast()
        cond.unlock()
    }

    /// The last durable sequence (0 when the log is empty; one less than the first sequence an
    /// append will get when `advanceSequence` moved it). Any thread.
    public var lastSequence: UInt64 {
        cond.lock(); defer { cond.unlock() }
        return durableLast
    }

    /// Guarded by `cond`.
    private var durableLast: UInt64 { firstSequence + UInt64(index.count) - 1 }

    /// Batches queued or being written (not acknowledged yet). Any thread.
    public var pendingBatches: Int {
        cond.lock(); defer { cond.unlock() }
        return pending.count + Int(nextSequence - 1 - durableLast)
    }

    /// The durable records with a sequence greater than `sequence`, in order, at most `limit`.
    /// Any thread (the learner's); reads the file, concurrently with appends.
    /// - Throws: `PreferenceLogError.log` when a record cannot be read back (or changed on disk).
    public func entries(after sequence: UInt64, limit: Int = .max) throws(PreferenceLogError) -> [LogEntry] {
        cond.lock()
        let first = firstSequence
        let available = index.count
        let start = sequence < first ? 0 : Int(min(sequence - first + 1, UInt64(available)))
        let end = start + min(limit, available - start)
        let slice = Array(index[start..<end])
        let fileDescriptor = fd
        cond.unlock()
        var out: [LogEntry] = []
        out.reserveCapacity(slice.count)
        var rh = [UInt8](repeating: 0, count: Self.recordHeaderSize)
        for (i, entry) in slice.enumerated() {
            let seq = first + UInt64(start + i)
            guard preadAll(fileDescriptor, &rh, at: entry.offset) else {
                throw PreferenceLogError.log(path: path, reason: "cannot read record \(seq): \(errnoText())")
            }
            var payload = [UInt8](repeating: 0, count: Int(entry.length))
            guard preadAll(fileDescriptor, &payload, at: entry.offset + Int64(Self.recordHeaderSize)) else {
                throw PreferenceLogError.log(path: path, reason: "cannot read record \(seq): \(errnoText())")
            }
            guard readLE32(rh, 0) == entry.length, readLE64(rh, 8) == seq,
                  Self.recordCRC(length: entry.length, sequence: seq, payload: payload) == readLE32(rh, 4) else {
                throw PreferenceLogError.log(path: path, reason: "record \(seq) changed on disk (CRC mismatch)")
            }
            out.append(LogEntry(sequence: seq, payload: payload))
        }
        return out
    }

    /// Blocks until a record with a sequence greater than `sequence` is durable, the log closes, or
    /// `timeout` seconds pass; returns whether such a record exists. Any thread but the loop thread
    /// (the learner's, typically).
    public func waitForRecords(after sequence: UInt64, timeout: Double) -> Bool {
        let deadline = Date(timeIntervalSinceNow: timeout)
        cond.lock(); defer { cond.unlock() }
        while index.isEmpty || durableLast <= sequence {
            if closing || stopped { return false }
            if !cond.wait(until: deadline) { break }
        }
        return !index.isEmpty && durableLast > sequence
    }

    /// Writes and acknowledges everything queued, stops the log thread and closes the file. Blocks
    /// until done; appends after it fail. Any thread except the log thread; call once the readers
    /// (the learner) have stopped.
    public func close() {
        cond.lock()
        if stopped { cond.unlock(); return }
        closing = true
        cond.broadcast()
        let wasStarted = started
        cond.unlock()
        if wasStarted {
            cond.lock()
            while !stopped { cond.wait() }
            cond.unlock()
        } else {
            // Never started: fail whatever was queued.
            cond.lock()
            let queued = pending; pending = []; stopped = true
            cond.broadcast()
            cond.unlock()
            for p in queued { p.completion(.failure(.log(path: path, reason: "closed before the log thread started"))) }
        }
        cond.lock()
        if fd >= 0 { Glibc.close(fd); fd = -1 }
        cond.unlock()
    }

    // MARK: The log thread

    private func run() {
        while true {
            cond.lock()
            while pending.isEmpty && !closing { cond.wait() }
            if pending.isEmpty {
                stopped = true
                cond.broadcast()
                cond.unlock()
                return
            }
            let batch = pending
            pending = []
            let failed = failure
            let firstSeq = nextSequence
            if failed == nil { nextSequence += UInt64(batch.count) }
            cond.unlock()
            if let failed {
                for p in batch { p.completion(.failure(failed)) }
                continue
            }
            commit(batch, firstSequence: firstSeq)
        }
    }

    /// Writes `batch` as consecutive records, fsyncs once, then completes each batch.
    private func commit(_ batch: [Pending], firstSequence firstSeq: UInt64) {
        var buffer: [UInt8] = []
        var entries: [(offset: Int64, length: UInt32)] = []
        for (i, item) in batch.enumerated() {
            let seq = firstSeq + UInt64(i)
            let payload = item.payload(seq)
            let length = UInt32(payload.count)
            entries.append((endOffset + Int64(buffer.count), length))
            appendLE32(&buffer, length)
            appendLE32(&buffer, Self.recordCRC(length: length, sequence: seq, payload: payload))
            appendLE64(&buffer, seq)
            buffer.append(contentsOf: payload)
        }
        let wrote = pwriteAll(fd, buffer, at: endOffset) && fdatasync(fd) == 0
        if !wrote {
            let reason = "write or fsync failed: \(errnoText())"
            _ = ftruncate(fd, off_t(endOffset))
            let err = PreferenceLogError.log(path: path, reason: reason)
            cond.lock()
            failure = err
            nextSequence = firstSeq
            let queued = pending; pending = []
            cond.unlock()
            for p in batch + queued { p.completion(.failure(err)) }
            return
        }
        endOffset += Int64(buffer.count)
        cond.lock()
        index.append(contentsOf: entries)
        let last = firstSeq + UInt64(batch.count) - 1
        let obs = observers
        cond.broadcast()
        cond.unlock()
        for (i, p) in batch.enumerated() { p.completion(.success(firstSeq + UInt64(i))) }
        for o in obs { o(last) }
    }

    // MARK: Record encoding

    /// CRC-32C over length ‖ sequence ‖ payload.
    static func recordCRC(length: UInt32, sequence: UInt64, payload: [UInt8]) -> UInt32 {
        var c: UInt32 = 0
        withUnsafeBytes(of: length.littleEndian) { c = CRC32C.update(c, $0) }
        withUnsafeBytes(of: sequence.littleEndian) { c = CRC32C.update(c, $0) }
        payload.withUnsafeBytes { c = CRC32C.update(c, $0) }
        return c
    }
}

// MARK: - Small file helpers

func readLE32(_ b: [UInt8], _ at: Int) -> UInt32 {
    UInt32(b[at]) | UInt32(b[at + 1]) << 8 | UInt32(b[at + 2]) << 16 | UInt32(b[at + 3]) << 24
}

func readLE64(_ b: [UInt8], _ at: Int) -> UInt64 {
    UInt64(readLE32(b, at)) | UInt64(readLE32(b, at + 4)) << 32
}

func appendLE32(_ b: inout [UInt8], _ v: UInt32) {
    withUnsafeBytes(of: v.littleEndian) { b.append(contentsOf: $0) }
}

func appendLE64(_ b: inout [UInt8], _ v: UInt64) {
    withUnsafeBytes(of: v.littleEndian) { b.append(contentsOf: $0) }
}
