import DurableFile
import Foundation
import Kernels
import Model

/// Where the online learner reads acknowledged preferences from: the server's write-ahead log.
/// Records are numbered by a strictly increasing sequence and hold one accepted batch each. The
/// source never blocks: the owner tells the learner of new records (`OnlineLearner.logAppended`).
public protocol PreferenceSource: AnyObject, Sendable {
    /// The records already durable with sequence > `after`, in order (empty: none yet).
    /// Thread: the learner's.
    func batches(after: UInt64) -> [(sequence: UInt64, pairs: [PreferencePair])]
}

/// Options of the learner inside `selm serve`.
public struct OnlineOptions: Sendable {
    public var training = TrainingOptions()
    /// The number format of the learner's large products (`Trainer.precision`).
    public var precision: MatmulPrecision = .f32
    /// Linear warm-up steps (the online run has no known horizon, so no ratio).
    public var warmupSteps = 0
    /// Cosine needs a horizon; with `totalSteps` 0 the schedule after warm-up is constant.
    public var totalSteps = 0
    /// Publish the weights to the engine every N optimizer steps.
    public var publishEvery = 1
    /// Save a checkpoint (recording the last log record consumed) every N optimizer steps; 0 = never.
    public var checkpointEvery = 0
    /// Keep the newest N automatic checkpoints (`step-N`); older ones are removed after each save
    /// (never the one `latest` names, never a checkpoint with another name). 0 = keep all.
    public var keepCheckpoints = 3
    /// Train on a partial batch when its oldest row has waited this long (seconds); 0 = never.
    public var maxWaitSeconds: Double = 20
    /// Run the learner's BLAS work at low priority (rollouts first).
    public var lowPriority = true
    public init() {}

    public var schedule: LRSchedule {
        LRSchedule(kind: totalSteps > 0 ? training.schedule : .constant, baseLR: training.learningRate,
                   warmupSteps: warmupSteps, totalSteps: max(totalSteps, 1))
    }
}

/// What the learner reports to the server (status, version events).
public struct OnlineStatus: Sendable {
    public var step: Int
    public var skippedSteps: Int
    /// Log position trained on: every record ≤ `consumedSequence`, plus the first `consumedRows`
    /// rows of the record after it.
    public var consumedSequence: UInt64
    public var consumedRows: Int
    public var pendingRows: Int
    public var metrics: [String: Double]
    public var lastPublishedVersion: UInt64
    public var stepsPerMinute: Double
    /// Publications skipped because the weights held a NaN or ±Inf.
    public var skippedPublishes: Int = 0
    /// Seconds the last optimizer step took (0 before the first), and all steps of this run together.
    public var lastStepSeconds: Double = 0
    public var stepSecondsTotal: Double = 0
    /// The version whose weights are the reference policy now (0: not served as a version).
    public var referenceVersion: UInt64 = 0
}

/// The learner thread of `selm serve`: consumes acknowledged preference records in log order, forms
/// optimizer batches, runs SELM steps on its own copy of the weights and hands a finished snapshot
/// to the engine every `publishEvery` steps. Checkpoints record the log position consumed (record
/// and row), so a restart resumes from checkpoint + log with every acknowledged row applied once.
public final class OnlineLearner: @unchecked Sendable {
    /// Hands weights to the engine; returns whether they were handed over. The version they get is
    /// told later, through `versionPublished(_:learnerStep:)` (the engine numbers them). The
    /// weights are the learner's live policy, read during the call only (the engine packs or copies
    /// them on this thread, `GenerationEngine.publish`); the learner changes them only after it returns.
    /// `referenceVersion` is the version whose weights were the reference policy in that step (0:
    /// none served), which the engine keeps alive.
    /// `snapshot`: the engine's compact model of these weights, made by the step's optimizer pass
    /// (`makeSnapshot`), or nil; the engine packs the weights when there is none or it is
    /// incomplete (a skipped step).
    public typealias Publish = @Sendable (_ weights: ParameterSet, _ snapshot: CompactSnapshot?, _ metrics: [String: Double],
                                          _ step: Int, _ referenceVersion: UInt64) -> Bool
    /// Storage for the engine's compact model of the weights (`GenerationEngine.makeSnapshot`), for
    /// a step that will be published to fill in its optimizer pass; nil: none (f32 engine, none).
    public typealias MakeSnapshot = @Sendable (_ weights: ParameterSet) -> CompactSnapshot?

    public let learner: Trainer
    public let options: OnlineOptions
    private let source: PreferenceSource
    private let publish: Publish
    private let makeSnapshot: MakeSnapshot?
    private let checkpointRoot: String
    private let extras: Checkpoint.Extras
    private let baseModel: String

    /// Guards `running`, `commands`, `appended`, `statusCache`; signalled by every command, log
    /// append and stop (the thread sleeps on it when it has nothing to do).
    private let lock = NSCondition()
    /// The log holds records the thread has not read yet.
    private var appended = true
    private var thread: Thread?
    private var running = false
    private var commands: [(OnlineLearner) -> Void] = []
    // Log position: every record ≤ `fetched` has been read; its unconsumed rows are in `pending`,
    // in log order. `consumed` is (last fully consumed record, rows consumed of the next one).
    private var fetched: UInt64
    private var fetchedSequences: [UInt64] = []
    private var skipRows: Int
    private var pending: [(sequence: UInt64, row: Int, pair: PreferencePair, arrived: Date)] = []
    private var consumed: (sequence: UInt64, rows: Int)
    private var lastMetrics: [String: Double] = [:]
    private var lastVersion: UInt64 = 0
    /// The version serving the reference policy's weights (0: none); a refresh sets it to the
    /// version its step is published as, once told (`refreshedAt`).
    private var referenceVersion: UInt64
    private var refreshedAt: Int?
    /// `learner.step` when the weights were last published (or adopted, or resumed): a checkpoint
    /// saved at that step holds exactly version `lastVersion`.
    private var publishedStep: Int
    /// A step whose weights were handed over and whose version has not been told yet: no step and
    /// no periodic checkpoint runs until it is (the checkpoint must record that version).
    private var awaitingVersion: Int?
    private var checkpointDue = false
    /// The step handed to `publish` whose line (`logStep`) waits for its version.
    private var unloggedStep: StepReport?
    private var skippedPublishes = 0
    private var stepTimes: [Date] = []
    private var lastStepSeconds = 0.0, stepSecondsTotal = 0.0
    private var statusCache: OnlineStatus
    private var checkpointStep: Int

    /// Optimizer steps taken since the last checkpoint (or the start).
    public var stepsSinceCheckpoint: Int { learner.step - checkpointStep }
    /// The run's history, written as each checkpoint's `trainer_state.json`. Set (e.g. continued
    /// from the resumed checkpoint's) before `start`; the learner thread's afterwards.
    public var log: TrainingLog
    /// Called on the learner thread after every checkpoint saved and every pruning (the server
    /// refreshes its disk-usage figures).
    public var didChangeCheckpoints: (@Sendable () -> Void)?

    /// - Parameters:
    ///   - checkpointRoot: the folder of checkpoints (`DATA/checkpoints`); saves create
    ///     `checkpointRoot/NAME` and the `latest` pointer there.
    ///   - start: the log position already trained into `learner`'s weights (from a checkpoint).
    ///   - startVersion: the version the engine serves `learner`'s weights as.
    ///   - referenceVersion: the version serving the reference policy's weights at start (the start
    ///     version when the reference is the policy's starting weights; 0: none).
    ///   - publish: hands weights to the engine and returns the version they got; called on the
    ///     learner thread.
    public init(learner: Trainer, options: OnlineOptions, source: PreferenceSource, checkpointRoot: String,
                extras: Checkpoint.Extras, baseModel: String, start: (sequence: UInt64, rows: Int), startVersion: UInt64,
                referenceVersion: UInt64 = 0, makeSnapshot: MakeSnapshot? = nil, publish: @escaping Publish) {
        self.learner = learner
        self.options = options
        self.source = source
        self.publish = publish
        self.makeSnapshot = makeSnapshot
        self.checkpointRoot = checkpointRoot
        self.extras = extras
        self.baseModel = baseModel
        consumed = start
        fetched = start.sequence
        skipRows = start.rows  // of the first record after `start.sequence`, already trained on
        lastVersion = startVersion
        self.referenceVersion = referenceVersion
        checkpointStep = learner.step
        publishedStep = learner.step
        log = TrainingLog(maxSteps: options.totalSteps, trainBatchSize: options.training.batchSize, saveSteps: options.checkpointEvery)
        statusCache = OnlineStatus(step: learner.step, skippedSteps: learner.skippedSteps, consumedSequence: start.sequence,
                                   consumedRows: start.rows, pendingRows: 0, metrics: [:], lastPublishedVersion: startVersion,
                                   stepsPerMinute: 0, referenceVersion: referenceVersion)
    }

    /// Starts the learner thread. Thread: any.
    public func start() {
        lock.lock(); running = true; lock.unlock()
        let t = Thread { [self] in run() }
        t.name = "selm-learner"
        t.stackSize = 8 << 20
        thread = t
        t.start()
    }

    /// Asks the thread to finish its current step and stop; waits for it. Thread: any but the learner's.
    public func stop() {
        lock.lock(); running = false; lock.signal(); lock.unlock()
        while let t = thread, !t.isFinished { usleep(10_000) }
    }

    /// A snapshot for Status and metrics. Thread: any.
    public func status() -> OnlineStatus {
        lock.lock(); defer { lock.unlock() }
        return statusCache
    }

    /// Runs `body` on the learner thread between two steps. Thread: any.
    public func enqueue(_ body: @escaping (OnlineLearner) -> Void) {
        lock.lock(); commands.append(body); lock.signal(); lock.unlock()
    }

    /// The log made records up to `sequence` durable: wakes the thread to read them. Returns at
    /// once. Thread: any (the log's, after each group commit).
    public func logAppended(upTo sequence: UInt64) {
        lock.lock(); appended = true; lock.signal(); lock.unlock()
    }

    /// The engine published the weights of `learnerStep` as `version` (told by the owner, once per
    /// publication that `publish` handed over). Returns at once. Thread: any.
    public func versionPublished(_ version: UInt64, learnerStep: Int) {
        enqueue { o in o.told(version, step: learnerStep) }
    }

    /// Thread: the learner's.
    private func told(_ version: UInt64, step: Int) {
        if version > lastVersion, step >= publishedStep {
            lastVersion = version
            publishedStep = step
        }
        if let s = refreshedAt, s == step {
            refreshedAt = nil
            referenceVersion = version  // the reference was refreshed to exactly these weights
        }
        if let r = unloggedStep, r.step == step {
            unloggedStep = nil
            logStep(r, version: version)
        }
        if awaitingVersion == step {
            awaitingVersion = nil
            if checkpointDue { checkpointDue = false; savePeriodicCheckpoint() }
        }
        refreshStatus()
    }

    /// Saves a checkpoint now (between steps) as `checkpointRoot/name` (replacing a checkpoint of
    /// that name), records it in `checkpointRoot/latest` — what a restart resumes from — prunes the
    /// automatic checkpoints beyond `keepCheckpoints`, and returns its path and position. `name` is
    /// one path component the caller has checked (the server's `DataDirectory.checkpointDirectory`).
    /// The version recorded is `lastVersion` when the weights are exactly the ones published as it,
    /// else 0 (trained further since, with `publishEvery` > 1).
    /// - Throws: `CheckpointError` — `.nonFinite` (weights with NaN/Inf), `.insufficientSpace`
    ///   (less free space than the checkpoint needs), `.notACheckpoint` (`name` is taken by something
    ///   else) — with nothing written; or what writing throws.
    /// Thread: the learner's (use `enqueue`).
    public func saveCheckpoint(name: String) throws -> (path: String, step: Int, sequence: UInt64, version: UInt64) {
        precondition(!name.isEmpty && !name.contains("/") && name != "." && name != "..", "checkpoint name \(name) is not one path component")
        let directory = checkpointRoot + "/" + name
        if let bad = learner.policy.weights.firstNonFinite() { throw CheckpointError.nonFinite(bad) }
        try Checkpoint.checkSpace(for: learner, extras: extras, root: checkpointRoot,
                                  previous: Self.latestName(root: checkpointRoot).map { checkpointRoot + "/" + $0 })
        let version = learner.step == publishedStep ? lastVersion : 0
        let state = TrainerState(step: learner.step, optimizerSteps: learner.optimizer.step, skippedSteps: learner.skippedSteps,
                                 walSequence: consumed.sequence, walRows: consumed.rows, options: learner.options,
                                 schedule: learner.schedule, referenceKind: learner.reference.kind,
                                 referenceGeneration: learner.reference.generation, baseModel: baseModel,
                                 referenceModel: nil, policyVersion: version, lastMetrics: lastMetrics)
        try loggedCheckpointSave(to: directory, step: learner.step) {
            try Checkpoint.save(learner, state: state, to: directory, extras: extras, log: log)
        }
        checkpointStep = learner.step
        try writeDurably(path: checkpointRoot + "/latest", data: Data((name + "\n").utf8))
        for (n, bytes) in Checkpoint.prune(in: checkpointRoot, keep: options.keepCheckpoints, protecting: name) {
            learnerLogger.info("removed checkpoint \(n) (\(byteText(bytes))), beyond --keep-checkpoints \(options.keepCheckpoints)")
        }
        didChangeCheckpoints?()
        return (directory, learner.step, consumed.sequence, version)
    }

    /// The checkpoint name `root/latest` holds, if any.
    public static func latestName(root: String) -> String? {
        guard let d = FileManager.default.contents(atPath: root + "/latest"),
              let s = String(data: d, encoding: .utf8)?.trimmingCharacters(in: .whitespacesAndNewlines), !s.isEmpty else { return nil }
        return s
    }

    /// Continues from `weights`, already published by the server as `version` (RefreshWeights).
    /// `referenceReplaced`: the reference policy was loaded from elsewhere too (no version serves it).
    /// Thread: the learner's (use `enqueue`).
    public func adopt(weights: ParameterSet, version: UInt64, referenceReplaced: Bool = false) {
        learner.policy.weights.data.update(from: weights.data, count: weights.count)
        if referenceReplaced { referenceVersion = 0; refreshedAt = nil }
        lastVersion = version
        publishedStep = learner.step
        awaitingVersion = nil  // a version told later for an older step no longer describes these weights
        if checkpointDue { checkpointDue = false; savePeriodicCheckpoint() }
        refreshStatus()
    }

    // MARK: the thread

    private func run() {
        if options.lowPriority { kernels_set_thread_priority(0) }
        let batchRows = options.training.batchSize * options.training.gradAccum
        var idle = false
        while true {
            lock.lock()
            if idle && running && commands.isEmpty && !appended {
                // Nothing to do until a command, a log append or stop — or, with rows waiting, until
                // the oldest has waited `maxWaitSeconds`.
                if let first = pending.first, options.maxWaitSeconds > 0 {
                    _ = lock.wait(until: first.arrived.addingTimeInterval(options.maxWaitSeconds))
                } else {
                    lock.wait()
                }
            }
            let go = running
            let cmds = commands
            commands.removeAll()
            let read = appended
            appended = false
            lock.unlock()
            for c in cmds { c(self) }
            if !go { break }
            // Read what the log has beyond what we hold.
            let recs = read ? source.batches(after: fetched) : []
            if recs.count >= 64 { lock.lock(); appended = true; lock.unlock() }  // a bounded read: more may wait
            for r in recs where r.sequence > fetched {
                for (i, p) in r.pairs.enumerated() where i >= skipRows {
                    pending.append((r.sequence, i, p, Date()))
                }
                skipRows = 0
                fetched = r.sequence
                fetchedSequences.append(r.sequence)
            }
            let waited = pending.first.map { Date().timeIntervalSince($0.arrived) } ?? 0
            let ready = awaitingVersion == nil && (pending.count >= batchRows
                || (!pending.isEmpty && options.maxWaitSeconds > 0 && waited >= options.maxWaitSeconds))
            if ready {
                do { try trainOneStep(rows: min(batchRows, pending.count)) } catch {
                    learnerLogger.error("step failed: \(error)")
                }
            }
            idle = !ready
            // A step whose checkpoint waits for its version is reported once that checkpoint is
            // saved (as when the save follows the step at once): Status never shows a step whose
            // periodic checkpoint is still to be written.
            if !checkpointDue { refreshStatus() }
        }
        refreshStatus()
    }

    private func trainOneStep(rows n: Int) throws {
        let take = Array(pending.prefix(n))
        let bs = options.training.batchSize
        var micro: [(pairs: [PreferencePair], keys: [UInt64])] = []
        for start in stride(from: 0, to: take.count, by: bs) {
            let part = take[start ..< min(start + bs, take.count)]
            micro.append((part.map(\.pair), part.map { ($0.sequence << 20) | UInt64($0.row) }))
        }
        let usedReference = referenceVersion
        let generation = learner.reference.generation
        // A step that will be published fills the engine's snapshot in its optimizer pass.
        let publishing = options.publishEvery > 0 && (learner.step + 1) % options.publishEvery == 0
        let snapshot = publishing ? makeSnapshot?(learner.policy.weights) : nil
        let report = try learner.step(micro, snapshot: snapshot)
        if learner.reference.generation != generation {
            // Refreshed to the weights after this step: served once (if) this step is published.
            referenceVersion = 0
            refreshedAt = learner.step
        }
        pending.removeFirst(n)
        // Every record before the first pending row's is consumed; of that record, its rows before
        // the pending one are (rows stay in order).
        if let first = pending.first {
            let before = fetchedSequences.last { $0 < first.sequence } ?? consumed.sequence
            consumed = (max(before, consumed.sequence), first.row)
        } else {
            consumed = (fetched, 0)
        }
        fetchedSequences.removeAll { $0 <= consumed.sequence }
        lastMetrics = report.metrics
        log.record(step: learner.step, epoch: nil, metrics: report.metrics, tokens: report.tokens)
        lastStepSeconds = report.seconds
        stepSecondsTotal += report.seconds
        stepTimes.append(Date())
        if stepTimes.count > 20 { stepTimes.removeFirst() }
        if options.publishEvery > 0 && learner.step % options.publishEvery == 0 {
            if let bad = learner.policy.weights.firstNonFinite() {
                // Never hand the engine weights that would serve NaN: skip, say so, count it.
                skippedPublishes += 1
                learnerLogger.warning("step \(learner.step): not published, the weights hold \(bad) (\(skippedPublishes) skipped)")
            } else if publish(learner.policy.weights, snapshot, report.metrics, learner.step, usedReference) {
                awaitingVersion = learner.step
                unloggedStep = report  // logged with its version once told
            }
        }
        if unloggedStep?.step != report.step { logStep(report, version: nil) }
        if options.checkpointEvery > 0 && learner.step % options.checkpointEvery == 0 {
            // Saved once the version of these weights is told, so the checkpoint records it.
            if awaitingVersion != nil { checkpointDue = true } else { savePeriodicCheckpoint() }
        }
    }

    /// A periodic save that cannot be written (no space, bad weights) is skipped, not fatal.
    private func savePeriodicCheckpoint() {
        do { _ = try saveCheckpoint(name: Checkpoint.automaticName(step: learner.step)) } catch {
            learnerLogger.error("checkpoint \(Checkpoint.automaticName(step: learner.step)) skipped: \(error)")
        }
    }

    private func refreshStatus() {
        let spm: Double = stepTimes.count >= 2
            ? Double(stepTimes.count - 1) / stepTimes.last!.timeIntervalSince(stepTimes.first!) * 60 : 0
        let s = OnlineStatus(step: learner.step, skippedSteps: learner.skippedSteps, consumedSequence: consumed.sequence,
                             consumedRows: consumed.rows, pendingRows: pending.count, metrics: lastMetrics,
                             lastPublishedVersion: lastVersion, stepsPerMinute: spm, skippedPublishes: skippedPublishes,
                             lastStepSeconds: lastStepSeconds, stepSecondsTotal: stepSecondsTotal,
                             referenceVersion: referenceVersion)
        lock.lock(); statusCache = s; lock.unlock()
    }
}
