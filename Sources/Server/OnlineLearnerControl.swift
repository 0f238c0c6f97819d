import Foundation
import PreferenceLog
import Learner
import Model

/// The online SELM learner behind `selm serve`: an `OnlineLearner` (Learner module) reading the
/// preference log, plugged into the server's `LearnerControl` seam.
///
/// On creation it resumes from `DATA/checkpoints/latest` when there is one: the policy's weights,
/// AdamW moments, step counters, reference policy and the log position the checkpoint consumed —
/// so the engine must be created after this object, from the (possibly restored) weights of
/// `policy`, numbered by `DataDirectory.versions.begin(resumedVersion:)`. Records after that
/// position are replayed, each row once.
///
/// Checkpoints live in `DATA/checkpoints/NAME`; the server checks client names
/// (`DataDirectory.checkpointDirectory`) before `saveCheckpoint(to:)`.
///
/// Thread-safe: the seam's methods return at once; the work runs on the learner thread.
public final class OnlineLearnerControl: LearnerControl, @unchecked Sendable {
    public let learner: Trainer
    public let options: OnlineOptions
    /// The version the resumed checkpoint's weights were published as (nil: a fresh start, or
    /// weights never published).
    public let resumedVersion: UInt64?
    /// Where the run resumed from (nil: a fresh start).
    public let resumedFrom: String?
    private let checkpointRoot: String
    private let dataDirectory: DataDirectory
    private let extras: Checkpoint.Extras
    private let baseModel: String
    private let start: (sequence: UInt64, rows: Int)
    private var online: OnlineLearner?
    private let lock = NSLock()

    /// - Parameters:
    ///   - policy: the model the server loaded; trained in place (its weights are the learner's own
    ///     copy: the engine receives copies).
    ///   - reference: a separate reference model, or nil for a frozen copy of the starting weights.
    /// - Throws: `ServerError.io` for a checkpoint that cannot be resumed (another shape, unreadable,
    ///   weights with NaN/Inf), or what loading throws.
    public init(policy: LlamaModel, reference: LlamaModel?, options: OnlineOptions, dataDirectory: DataDirectory,
                extras: Checkpoint.Extras, baseModel: String) throws {
        self.options = options
        self.extras = extras
        self.baseModel = baseModel
        self.dataDirectory = dataDirectory
        checkpointRoot = dataDirectory.checkpointsPath
        try FileManager.default.createDirectory(atPath: checkpointRoot, withIntermediateDirectories: true)
        var resumed: String? = nil
        var state: TrainerState? = nil
        let learner: Trainer
        if let dir = Self.latestDirectory(root: checkpointRoot) {
            do {
                (learner, state) = try Checkpoint.resume(from: dir, policy: policy, reference: reference, options: options.training,
                                                         schedule: options.schedule)
            } catch let LearnerError.badCheckpoint(path, reason) {
                throw ServerError.io(path: path, reason: reason + "; point \(checkpointRoot)/latest at another checkpoint")
            }
            learner.schedule = options.schedule  // the online run keeps its own schedule
            resumed = dir
        } else {
            learner = try Trainer(policy: policy, reference: reference, options: options.training, schedule: options.schedule)
        }
        learner.precision = options.precision
        self.learner = learner
        resumedFrom = resumed
        resumedVersion = state.map(\.policyVersion).flatMap { $0 > 0 ? $0 : nil }
        start = (state?.walSequence ?? 0, state?.walRows ?? 0)
    }

    /// Whether the reference policy's weights are the policy's own at start, so the start version
    /// serves them: a fresh run whose reference is a frozen copy of its starting weights, or a
    /// resumed one whose last applied step refreshed the reference (`--ref-refresh-steps`).
    var referenceServed: Bool {
        let r = learner.reference, steps = learner.optimizer.step, every = options.training.refRefreshSteps
        if resumedFrom == nil { return r.kind == .initial && r.generation == 0 }
        return r.generation > 0 && every > 0 && steps > 0 && steps % every == 0
    }

    static func latestDirectory(root: String) -> String? {
        guard let s = OnlineLearner.latestName(root: root) else { return nil }
        let dir = s.hasPrefix("/") ? s : root + "/" + s
        return [Checkpoint.stateFile, Checkpoint.legacyStateFile].contains { FileManager.default.fileExists(atPath: dir + "/" + $0) } ? dir : nil
    }

    public func start(_ context: LearnerContext) throws {
        let publisher = context.publisher
        let online = OnlineLearner(
            learner: learner, options: options, source: context.log, checkpointRoot: checkpointRoot, extras: extras,
            baseModel: baseModel, start: start, startVersion: context.servedVersion,
            referenceVersion: referenceServed ? context.servedVersion : 0,
            makeSnapshot: { weights in publisher.makeSnapshot(of: weights) },
            publish: { weights, snapshot, metrics, step, reference in
                publisher.publish(weights, snapshot: snapshot, learnerStep: UInt64(step), metrics: metrics, referenceVersion: reference)
            })
        let usage = dataDirectory.usage
        online.didChangeCheckpoints = { usage.refreshInBackground() }
        if let dir = resumedFrom, let prior = TrainingLog.load(fromCheckpoint: dir) { online.log.continue(from: prior, upTo: learner.step) }
        lock.lock(); self.online = online; lock.unlock()
        online.start()
    }

    public func walAppended(upTo sequence: UInt64) {
        lock.lock(); let o = online; lock.unlock()
        o?.logAppended(upTo: sequence)
    }

    public func versionPublished(_ version: UInt64, learnerStep: UInt64) {
        lock.lock(); let o = online; lock.unlock()
        o?.versionPublished(version, learnerStep: Int(learnerStep))
    }

    public func status() -> LearnerStatus {
        lock.lock(); let o = online; lock.unlock()
        guard let s = o?.status() else {
            return LearnerStatus(step: UInt64(learner.step), metrics: [:], consumedSequence: start.sequence)
        }
        var m = s.metrics
        m["pending_rows"] = Double(s.pendingRows)
        m["steps_per_minute"] = s.stepsPerMinute
        m["skipped_publishes"] = Double(s.skippedPublishes)
        m["step_seconds"] = s.lastStepSeconds
        m["step_seconds_total"] = s.stepSecondsTotal
        return LearnerStatus(step: UInt64(s.step), metrics: m, consumedSequence: s.consumedSequence, referenceVersion: s.referenceVersion)
    }

    /// `directory` is `DATA/checkpoints/NAME` as `DataDirectory.checkpointDirectory` returned it.
    public func saveCheckpoint(to directory: String, completion: @escaping @Sendable (Result<SavedCheckpoint, ServerError>) -> Void) {
        lock.lock(); let o = online; lock.unlock()
        guard let o else {
            completion(.failure(.refused(code: .unavailable, field: "", reason: "the learner has not started")))
            return
        }
        let name = (directory as NSString).lastPathComponent
        guard directory == checkpointRoot + "/" + name else {
            completion(.failure(.refused(code: .internal, field: "name", reason: "\(directory) is not in \(checkpointRoot)")))
            return
        }
        let dataDirectory = self.dataDirectory
        o.enqueue { o in
            do {
                let r = try o.saveCheckpoint(name: name)
                completion(.success(SavedCheckpoint(path: r.path, learnerStep: UInt64(r.step), walSequence: r.sequence, version: r.version)))
            } catch let e as CheckpointError {
                completion(.failure(Self.refusal(e, dataDirectory: dataDirectory)))
            } catch {
                completion(.failure(.io(path: dataDirectory.relative(directory), reason: "\(error)")))
            }
        }
    }

    /// The client-facing refusal for a checkpoint the learner would not write (paths relative to
    /// the data directory).
    static func refusal(_ e: CheckpointError, dataDirectory: DataDirectory) -> ServerError {
        switch e {
        case .notACheckpoint(let path):
            return .invalid("name", "\(dataDirectory.relative(path)) exists and is not a checkpoint; choose another name")
        case let .insufficientSpace(directory, needed, available):
            return .refused(code: .resourceExhausted, field: "",
                            reason: "the checkpoint needs ~\(byteText(needed)), \(byteText(available)) free in \(dataDirectory.relative(directory))")
        case .nonFinite:
            return .refused(code: .internal, field: "", reason: "not saved: \(e)")
        }
    }

    /// `RefreshWeights` published a checkpoint: the learner continues from those weights (and that
    /// checkpoint's optimizer state when it has one), so its next version builds on them.
    public func weightsRefreshed(version: UInt64, weights: ParameterSet, from path: String) {
        lock.lock(); let o = online; lock.unlock()
        let handed = UncheckedWeights(weights)
        o?.enqueue { o in
            do {
                var isDir: ObjCBool = false
                var referenceReplaced = false
                if FileManager.default.fileExists(atPath: path + "/optimizer.safetensors", isDirectory: &isDir),
                   let state = try? Checkpoint.loadState(from: path) {
                    try Checkpoint.restore(o.learner, from: path, state: state)
                    o.learner.schedule = o.options.schedule
                    referenceReplaced = state.referenceFile != nil
                }
                o.adopt(weights: handed.value, version: version, referenceReplaced: referenceReplaced)
            } catch {
                serverLog("learner: cannot adopt refreshed weights from \(path): \(error)", level: .error)
            }
        }
    }

    /// Stops the learner thread and saves a checkpoint when it has trained since the last one, so a
    /// restart continues from here (the log replays only what the learner had not consumed).
    public func stop() {
        lock.lock(); let o = online; lock.unlock()
        guard let o else { return }
        o.stop()
        if o.stepsSinceCheckpoint > 0 {
            do {
                let r = try o.saveCheckpoint(name: Checkpoint.automaticName(step: o.learner.step))
                serverLog("learner checkpoint \(r.path) (step \(r.step), log sequence \(r.sequence))")
            } catch {
                serverLog("could not save the learner's final checkpoint: \(error)", level: .error)
            }
        }
    }
}
