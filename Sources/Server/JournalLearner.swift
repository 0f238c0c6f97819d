import Foundation
import Model

/// A learner that learns nothing: it consumes the preference log in order exactly as the online
/// learner does and writes one line per record to `DATA/journal.jsonl`, and its checkpoints
/// (`SaveCheckpoint`) hold only the last sequence consumed. It is the reference implementation of
/// `LearnerControl` and the tests' witness that a restart replays exactly the records after the
/// last checkpoint (`selm serve --journal-learner`, hidden).
///
/// Journal lines: `{"run": R, "event": "start", "from": S}` when a run starts (S = the sequence its
/// checkpoint consumed), then `{"run": R, "sequence": N, "rows": K}` per record consumed.
/// Checkpoints: `DIR/journal_state.json` and `DATA/journal-latest.json`, both
/// `{"wal_sequence": S, "step": K, "path": DIR}`, written durably (temp file, fsync, rename).
///
/// Thread-safe: the public methods take a lock; the work runs on the learner's own thread.
public final class JournalLearner: LearnerControl, @unchecked Sendable {
    private let cond = NSCondition()
    private var consumed: UInt64
    private var steps: UInt64
    private var wake = true
    private var stopping = false
    private var stopped = false
    private var saves: [(String, @Sendable (Result<SavedCheckpoint, ServerError>) -> Void)] = []
    private var context: LearnerContext?
    private let journalPath: String
    private let latestPath: String
    private let run = UInt64(Date().timeIntervalSince1970 * 1000)

    /// Reads the last checkpoint's state from `DATA/journal-latest.json` (none: start at 0).
    public init(dataDirectory: DataDirectory) throws {
        journalPath = dataDirectory.realPath + "/journal.jsonl"
        latestPath = dataDirectory.realPath + "/journal-latest.json"
        consumed = 0; steps = 0
        if let data = FileManager.default.contents(atPath: latestPath) {
            guard let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                  let seq = (obj["wal_sequence"] as? NSNumber)?.uint64Value, let step = (obj["step"] as? NSNumber)?.uint64Value else {
                throw ServerError.io(path: latestPath, reason: "unreadable journal checkpoint pointer")
            }
            consumed = seq; steps = step
        }
    }

    public func start(_ context: LearnerContext) throws {
        cond.lock()
        self.context = context
        let from = consumed
        cond.unlock()
        try appendJournal(["{\"run\":\(run),\"event\":\"start\",\"from\":\(from)}"])
        let t = Thread { [self] in self.loop() }
        t.name = "selm-journal-learner"
        t.start()
    }

    public func walAppended(upTo sequence: UInt64) {
        cond.lock(); wake = true; cond.broadcast(); cond.unlock()
    }

    public func status() -> LearnerStatus {
        cond.lock(); defer { cond.unlock() }
        return LearnerStatus(step: steps, metrics: ["records": Double(steps)], consumedSequence: consumed)
    }

    public func saveCheckpoint(to directory: String, completion: @escaping @Sendable (Result<SavedCheckpoint, ServerError>) -> Void) {
        cond.lock(); saves.append((directory, completion)); cond.broadcast(); cond.unlock()
    }

    public func stop() {
        cond.lock()
        stopping = true
        cond.broadcast()
        while context != nil && !stopped { cond.wait() }
        cond.unlock()
    }

    private func loop() {
        while true {
            cond.lock()
            while !wake && saves.isEmpty && !stopping { cond.wait() }
            let pendingSaves = saves
            saves = []
            wake = false
            let quit = stopping
            let from = consumed
            let log = context!.log
            cond.unlock()
            // Consume everything durable, in order, before saving: a checkpoint holds all of it.
            var lines: [String] = []
            var last = from
            if let records = try? log.records(after: from) {
                for r in records {
                    lines.append("{\"run\":\(run),\"sequence\":\(r.sequence),\"rows\":\(r.pairs.count)}")
                    last = r.sequence
                }
            }
            if !lines.isEmpty {
                do { try appendJournal(lines) } catch { FileHandle.standardError.write(Data("journal learner: \(error)\n".utf8)) }
                cond.lock(); consumed = last; steps += UInt64(lines.count); cond.unlock()
            }
            for (dir, completion) in pendingSaves { completion(save(to: dir)) }
            if quit {
                cond.lock(); stopped = true; cond.broadcast(); cond.unlock()
                return
            }
        }
    }

    private func save(to dir: String) -> Result<SavedCheckpoint, ServerError> {
        cond.lock()
        let seq = consumed, step = steps
        cond.unlock()
        let text = "{\"wal_sequence\":\(seq),\"step\":\(step),\"path\":\(jsonString(dir))}\n"
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            for path in [dir + "/journal_state.json", latestPath] {
                let w = try DurableFileWriter(path: path)
                try w.write(text)
                try w.commit()
            }
        } catch {
            return .failure(.io(path: dir, reason: "\(error)"))
        }
        return .success(SavedCheckpoint(path: dir, learnerStep: step, walSequence: seq, version: 0))
    }

    private func appendJournal(_ lines: [String]) throws {
        let fd = open(journalPath, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw ServerError.io(path: journalPath, reason: errnoText()) }
        defer { Glibc.close(fd) }
        let bytes = Array((lines.joined(separator: "\n") + "\n").utf8)
        guard bytes.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == bytes.count, fsync(fd) == 0 else {
            throw ServerError.io(path: journalPath, reason: errnoText())
        }
    }
}

/// A JSON string literal.
func jsonString(_ s: String) -> String {
    let data = try! JSONSerialization.data(withJSONObject: [s], options: [.withoutEscapingSlashes])
    let text = String(decoding: data, as: UTF8.self)
    return String(text.dropFirst().dropLast())
}
