// soak-restarts: `selm serve` with its learner, killed with SIGKILL at random moments (some while a
// checkpoint is being written) and restarted, again and again, while clients submit preference
// batches and record every acknowledgement. At the end every acknowledged row must be in the log
// exactly once, and the learner must have resumed from its checkpoints without going back and
// consumed everything.
import Engine
import Foundation
import PreferenceLog
import Server
import Wire

#if canImport(Glibc)
import Glibc
#endif

/// Every acknowledgement the clients received: sequence → the tags of its rows (their `source`).
private final class AckLedger: @unchecked Sendable {
    private let lock = NSLock()
    private(set) var acked: [UInt64: [String]] = [:]
    private(set) var problems: [String] = []
    private(set) var refusals: [String: Int] = [:]

    func ack(_ a: PreferenceAck, tags: [String]) {
        lock.lock(); defer { lock.unlock() }
        if a.firstSequence != a.lastSequence || Int(a.rows) != tags.count {
            problems.append("ack \(a.firstSequence)…\(a.lastSequence) for \(a.rows) rows, \(tags.count) sent")
        }
        if let old = acked[a.firstSequence] { problems.append("sequence \(a.firstSequence) acknowledged twice (\(old[0]), \(tags[0]))") }
        acked[a.firstSequence] = tags
    }

    func refused(_ code: String) { lock.lock(); refusals[code, default: 0] += 1; lock.unlock() }
    var rows: Int { lock.lock(); defer { lock.unlock() }; return acked.values.reduce(0) { $0 + $1.count } }
}

/// Directories under DATA/checkpoints: complete checkpoints, and the `.partial-PID` / `.old-PID`
/// ones a killed save leaves behind.
private func checkpointDirs(_ dataDir: String) -> (complete: [String], leftovers: [String], latest: String?) {
    let root = dataDir + "/checkpoints"
    let names = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
    let latest = (FileManager.default.contents(atPath: root + "/latest")).flatMap { String(data: $0, encoding: .utf8) }?
        .trimmingCharacters(in: .whitespacesAndNewlines)
    let dirs = names.filter { $0 != "latest" }
    return (dirs.filter { !$0.contains(".partial-") && !$0.contains(".old-") }.sorted(),
            dirs.filter { $0.contains(".partial-") || $0.contains(".old-") }.sorted(), latest)
}

/// `make soak-restarts`.
func soakRestarts(_ modelPath: String) throws {
    let selm = option("--selm", ".build/release/selm")
    let cycles = Int(option("--cycles", "20")) ?? 20
    let clients = Int(option("--clients", "4")) ?? 4
    let checkpointEvery = option("--checkpoint-every", "2")
    let maxSeconds = Double(option("--max-seconds", "15")) ?? 15
    let drainSeconds = Double(option("--drain-seconds", "3600")) ?? 3600
    let keep = CommandLine.arguments.contains("--keep")
    let dataDir = FileManager.default.temporaryDirectory.appendingPathComponent("selm-soak-\(getpid())").path
    let serveArgs = ["--checkpoint-every", checkpointEvery, "--max-wait-seconds", "1", "--batch-size", "2"]
    print("== soak-restarts: \(cycles) cycles of {selm serve (learner, --checkpoint-every \(checkpointEvery)), \(clients) clients "
          + "submitting preference batches, kill -9 after 2–\(Int(maxSeconds)) s (every third cycle while a checkpoint is being "
          + "saved), restart}; model \(modelPath); data \(dataDir)")
    let ledger = AckLedger()
    var consumedAtStart: [UInt64] = []
    var problems: [String] = []
    var killedMidSave = 0, savesFinishedFirst = 0, tornTails = 0, leftoverDirs = 0, rowsSent = 0
    var leftoverBytes: Int64 = 0
    let started = Date()
    var rng = SplitMix64(seed: UInt64(option("--seed", "2024")) ?? 2024)

    func consumed(in log: String) -> UInt64? {
        guard let r = log.range(of: "learner consumed ", options: .backwards) else { return nil }
        return UInt64(log[r.upperBound...].prefix { $0.isNumber })
    }

    for cycle in 1...cycles {
        let server: ServeChild
        do { server = try ServeChild(selm: selm, model: modelPath, dataDir: dataDir, args: serveArgs) } catch {
            problems.append("cycle \(cycle): the server did not restart: \(error)")
            break
        }
        let log = server.log
        if log.contains("torn tail of") { tornTails += 1 }
        if let c = consumed(in: log) {
            if let prev = consumedAtStart.last, c < prev {
                problems.append("cycle \(cycle): the learner resumed at log sequence \(c), behind the previous restart's \(prev)")
            }
            consumedAtStart.append(c)
        } else {
            problems.append("cycle \(cycle): no \"learner consumed\" line in the server log")
        }
        let stop = RunFlag()
        let group = DispatchGroup()
        let port = server.port
        let sent = SentCounter()
        for k in 0..<clients {
            group.enter()
            let seed = rng.next()
            Thread {
                defer { group.leave() }
                var r = SplitMix64(seed: seed)
                guard let c = try? FrameClient(port: port, timeout: 600) else { return }
                let vocab = max(UInt32(c.hello.vocabSize), 3)
                var n = 0
                func ids(_ count: Int) -> [UInt32] { (0..<count).map { _ in UInt32.random(in: 3..<min(vocab, 20_000), using: &r) } }
                while stop.isSet {
                    let count = Int.random(in: 1...3, using: &r)
                    let tags = (0..<count).map { "c\(cycle).k\(k).b\(n).r\($0)" }
                    n += 1
                    let rows = tags.map { PreferenceRow(prompt: .ids(ids(6)), chosen: .ids(ids(3)), rejected: .ids(ids(3)), source: $0) }
                    do {
                        let id = c.newID()
                        try c.send(id, .submitPreferences(SubmitPreferences(rows: rows)))
                        sent.add(count)
                        while true {
                            let e = try c.receive()
                            guard e.id == id else { continue }
                            if case .preferenceAck(let a) = e.body { ledger.ack(a, tags: tags) }
                            if case .error(let err) = e.body { ledger.refused(LoadFailure.codeName(err.code)) }
                            break
                        }
                    } catch {
                        return  // the server is gone
                    }
                    usleep(UInt32.random(in: 500_000...2_000_000, using: &r))
                }
            }.start()
        }
        let delay = Double.random(in: 2...max(2.5, maxSeconds), using: &rng)
        usleep(UInt32(delay * 1e6))
        var note = String(format: "killed after %.1f s", delay)
        if cycle % 3 == 0 {
            // SaveCheckpoint, then kill once the save is under way (its `.partial-` directory exists).
            let saver = try? FrameClient(port: server.port, timeout: 600)
            try? saver?.send(1_000_000, .saveCheckpoint(SaveCheckpoint()))
            let deadline = Date().addingTimeInterval(120)
            var started = false
            while Date() < deadline {
                if !checkpointDirs(dataDir).leftovers.isEmpty { started = true; break }
                usleep(2_000)
            }
            usleep(UInt32.random(in: 0...400_000, using: &rng))
            let midSave = !checkpointDirs(dataDir).leftovers.isEmpty
            if midSave { killedMidSave += 1 } else { savesFinishedFirst += 1 }
            note += started ? (midSave ? ", during a checkpoint save" : ", just after a checkpoint save finished")
                            : ", a checkpoint save requested but not started within 120 s"
        }
        server.kill9()
        stop.clear()
        group.wait()
        rowsSent += sent.value
        // Prune what the server leaves behind so the soak's disk use stays bounded: complete
        // checkpoints older than `latest`, and the directories of killed saves (counted).
        let dirs = checkpointDirs(dataDir)
        leftoverDirs += dirs.leftovers.count
        leftoverBytes += dirs.leftovers.reduce(0) { $0 + directoryBytes(dataDir + "/checkpoints/" + $1) }
        for d in dirs.leftovers + dirs.complete.filter({ $0 != dirs.latest }) {
            try? FileManager.default.removeItem(atPath: dataDir + "/checkpoints/" + d)
        }
        print("cycle \(cycle): resumed at log sequence \(consumedAtStart.last.map(String.init) ?? "?"), \(note); "
              + "acknowledged so far \(ledger.rows) rows in \(ledger.acked.count) batches; latest checkpoint \(dirs.latest ?? "none")"
              + (dirs.leftovers.isEmpty ? "" : "; left behind: \(dirs.leftovers.joined(separator: ", "))"))
    }

    // A last run: the learner must consume everything; then a clean stop.
    var drained = "not checked"
    if problems.isEmpty {
        let server = try ServeChild(selm: selm, model: modelPath, dataDir: dataDir, args: serveArgs)
        if let c = consumed(in: server.log), let prev = consumedAtStart.last, c < prev {
            problems.append("final run: the learner resumed at \(c), behind \(prev)")
        }
        let c = try FrameClient(port: server.port, timeout: 600)
        let drainStart = Date()
        let deadline = Date().addingTimeInterval(drainSeconds)
        var st = StatusReply()
        while Date() < deadline {
            guard case .statusReply(let s) = try c.call(.status(StatusRequest())) else { break }
            st = s
            if s.walConsumedSequence >= s.walLastSequence { break }
            usleep(500_000)
        }
        drained = "learner consumed \(st.walConsumedSequence) of \(st.walLastSequence) records (step \(st.learnerStep), "
            + String(format: "%.0f s after the last restart)", Date().timeIntervalSince(drainStart))
        if st.walConsumedSequence < st.walLastSequence {
            drained += " within \(Int(drainSeconds)) s (not all: raise --drain-seconds)"
        }
        let status = server.stop(timeout: 300)
        if status != 0 { problems.append("final run: exit status \(status) after SIGTERM") }
    }

    // Every acknowledged batch is in the log, as the record of its sequence, with its rows; no row twice.
    let log = try PreferenceLog(directory: dataDir)
    let records = try log.records(after: 0)
    log.close()
    var bySequence: [UInt64: [String]] = [:]
    var seen: [String: Int] = [:]
    for r in records {
        bySequence[r.sequence] = r.sources
        for s in r.sources { seen[s, default: 0] += 1 }
    }
    var lost = 0
    for (seq, tags) in ledger.acked where bySequence[seq] != tags {
        lost += tags.count
        if problems.count < 20 { problems.append("acknowledged sequence \(seq) (\(tags.joined(separator: ", "))) is \(bySequence[seq].map { "\($0)" } ?? "missing") in the log") }
    }
    let duplicated = seen.values.filter { $0 > 1 }.count
    if duplicated > 0 { problems.append("\(duplicated) rows are in the log more than once") }
    let ackedRows = ledger.rows
    let durableRows = records.reduce(0) { $0 + $1.pairs.count }
    problems += ledger.problems
    print("log: \(records.count) records, \(durableRows) rows (sequences \(records.first?.sequence ?? 0)…\(records.last?.sequence ?? 0)); "
          + "\(rowsSent) rows sent, \(durableRows - ackedRows) durable without an ack (killed before it arrived)")
    print("restarts: \(tornTails) found a torn tail; learner resumed at \(consumedAtStart.map(String.init).joined(separator: ", ")) (never backwards); \(drained)")
    print("checkpoint saves: \(killedMidSave) killed mid-save, \(savesFinishedFirst) finished before the kill; "
          + "\(leftoverDirs) partial/old checkpoint directories (\(leftoverBytes >> 20) MB) left behind by killed saves (pruned by the soak)")
    print(String(format: "soak time: %.0f s", Date().timeIntervalSince(started)))
    if !ledger.refusals.isEmpty { print("refused batches: \(ledger.refusals.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))") }
    print("acknowledged \(ackedRows), lost \(lost)\(duplicated > 0 ? ", duplicated \(duplicated)" : "") (goal: lost 0)")
    if problems.isEmpty {
        if !keep { try? FileManager.default.removeItem(atPath: dataDir); try? FileManager.default.removeItem(atPath: dataDir + ".log") }
    } else {
        for p in problems { print("PROBLEM: \(p)") }
        print("data directory kept: \(dataDir) (server log \(dataDir).log)")
        throw LoadFailure(code: "SOAK", detail: "\(problems.count) problems")
    }
}

/// Rows sent by the client threads of a cycle.
private final class SentCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func add(_ k: Int) { lock.lock(); n += k; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return n }
}

/// Bytes of the regular files under `path`.
private func directoryBytes(_ path: String) -> Int64 {
    guard let e = FileManager.default.enumerator(atPath: path) else { return 0 }
    var total: Int64 = 0
    while let f = e.nextObject() as? String {
        if let n = (try? FileManager.default.attributesOfItem(atPath: path + "/" + f))?[.size] as? NSNumber { total += n.int64Value }
    }
    return total
}
