import Foundation
import PreferenceLog
import Learner
import Model

/// The learner's state as the server reports it (`StatusReply`, metrics, `VersionEvent`).
public struct LearnerStatus: Sendable, Equatable {
    /// Optimizer steps taken (since the start of the run, checkpoints included).
    public var step: UInt64
    /// The latest step's metrics, TRL names ("loss", "rewards/margins", ...); empty before the first.
    public var metrics: [String: Double]
    /// The last preference-log sequence whose rows the learner's state includes.
    public var consumedSequence: UInt64
    /// The version serving the reference policy's weights (0: none): the start version for a
    /// learner whose frozen reference is its starting weights, before its first publication.
    public var referenceVersion: UInt64

    /// A status; defaults describe a learner that has done nothing.
    public init(step: UInt64 = 0, metrics: [String: Double] = [:], consumedSequence: UInt64 = 0, referenceVersion: UInt64 = 0) {
        self.step = step
        self.metrics = metrics
        self.consumedSequence = consumedSequence
        self.referenceVersion = referenceVersion
    }
}

/// What `SaveCheckpoint` returns once the checkpoint is on disk.
public struct SavedCheckpoint: Sendable, Equatable {
    /// The checkpoint directory (absolute; the server reports it relative to the data directory).
    public var path: String
    /// The learner step it holds.
    public var learnerStep: UInt64
    /// The last preference-log sequence its state consumed (a restart replays the records after it).
    public var walSequence: UInt64
    /// The weight version it holds (0: weights trained past the last published version).
    public var version: UInt64

    public init(path: String, learnerStep: UInt64, walSequence: UInt64, version: UInt64) {
        self.path = path
        self.learnerStep = learnerStep
        self.walSequence = walSequence
        self.version = version
    }
}

/// How a learner hands new weights to the generation engine: the server implements it (the engine
/// numbers the version; the server announces it to every subscriber and tells the learner through
/// `LearnerControl.versionPublished(_:learnerStep:)`).
public protocol WeightPublisher: Sendable {
    /// Hands `weights` over as the next version; false when they could not be published (the
    /// version could not be recorded; logged). They are read during the call only — the engine makes
    /// its snapshot from them on the calling thread (packed into its precision, or copied for f32)
    /// — so `OnlineLearner` hands over its live weights and changes them only after the call returns.
    /// `learnerStep` and `metrics` go into the `VersionEvent`. Any thread but the loop's (recording
    /// the number fsyncs; packing takes ~0.1 s); the swap happens between two engine steps.
    /// `referenceVersion`: the version whose weights were the learner's reference policy in that
    /// step (0: none served); the engine keeps it alive and the `VersionEvent` names it.
    /// `snapshot`: the engine's compact model of `weights`, filled by the learner's optimizer pass
    /// (from `makeSnapshot(of:)`); the engine then packs nothing.
    func publish(_ weights: ParameterSet, snapshot: CompactSnapshot?, learnerStep: UInt64, metrics: [String: Double],
                 referenceVersion: UInt64) -> Bool
    /// Storage for the engine's compact model of `weights`, for the optimizer pass of a step that
    /// will be published to fill; nil when the engine needs none (f32, no engine). Any thread.
    func makeSnapshot(of weights: ParameterSet) -> CompactSnapshot?
}

extension WeightPublisher {
    public func publish(_ weights: ParameterSet, learnerStep: UInt64, metrics: [String: Double], referenceVersion: UInt64) -> Bool {
        publish(weights, snapshot: nil, learnerStep: learnerStep, metrics: metrics, referenceVersion: referenceVersion)
    }
    public func makeSnapshot(of weights: ParameterSet) -> CompactSnapshot? { nil }
}

/// Everything a learner needs from the server, handed over by `LearnerControl.start`.
public struct LearnerContext: Sendable {
    /// The preference log: read records with `records(after:limit:)`, block for new ones with
    /// `waitForRecords(after:timeout:)` (or wait for `walAppended`).
    public let log: PreferenceLog
    /// Where checkpoints go; client-named paths arrive already confined to it.
    public let dataDirectory: DataDirectory
    /// Publishes new weights as versions.
    public let publisher: any WeightPublisher
    /// The version the engine serves at start (the learner's starting weights; 0 without an engine).
    public let servedVersion: UInt64

    public init(log: PreferenceLog, dataDirectory: DataDirectory, publisher: any WeightPublisher, servedVersion: UInt64 = 0) {
        self.log = log
        self.dataDirectory = dataDirectory
        self.publisher = publisher
        self.servedVersion = servedVersion
    }
}

/// The seam between the server and the online learner.
///
/// The server's calls, in order: `status()` before serving (its `consumedSequence` — from the
/// checkpoint the learner resumed from — keeps the log's sequence numbers ahead of it), then
/// `start(_:)` once; while serving `walAppended(upTo:)`, `versionPublished(_:learnerStep:)`,
/// `status()`, `saveCheckpoint(to:completion:)` and `weightsRefreshed(version:weights:from:)`; at
/// shutdown `stop()`, after which the log is closed.
///
/// The learner runs on its own thread: it reads the log in order from `consumedSequence + 1`
/// (this is the replay after a restart — nothing at or below the checkpoint's sequence is read
/// again), forms optimizer batches, publishes weights through `LearnerContext.publisher`, and
/// records the last sequence consumed in its checkpoints. No method may block on a training step.
public protocol LearnerControl: AnyObject, Sendable {
    /// Starts the learner thread. Called once, on the main thread, before the server accepts
    /// connections and after the log is open (torn tail already truncated).
    func start(_ context: LearnerContext) throws

    /// New durable records exist, up to `sequence`. Called on the log thread after every group
    /// commit; must return at once (e.g. signal a condition the learner thread waits on).
    func walAppended(upTo sequence: UInt64)

    /// A snapshot of the learner's state. Any thread (the loop thread calls it for every Status
    /// and metrics scrape); must not block on a training step.
    func status() -> LearnerStatus

    /// Writes a checkpoint to `directory` — `DATA/checkpoints/NAME`, checked by the server
    /// (`DataDirectory.checkpointDirectory`: a fresh name or an existing checkpoint to replace) —
    /// and calls `completion` on any thread once it is on disk, or with
    /// `ServerError.refused(code: .unavailable, …)` when there is nothing to save. Called on the
    /// loop thread; must return at once (save on the learner thread, between steps).
    func saveCheckpoint(to directory: String, completion: @escaping @Sendable (Result<SavedCheckpoint, ServerError>) -> Void)

    /// The engine published the weights the learner handed over at `learnerStep` as `version`
    /// (the learner is told its versions; it never numbers them). Loop thread; must return at once.
    func versionPublished(_ version: UInt64, learnerStep: UInt64)

    /// `RefreshWeights` published `weights`, loaded from the checkpoint at `path`, as `version`; a
    /// learner may reset its own weights to them (copying: the engine owns `weights`), and take
    /// that checkpoint's optimizer state (the default ignores it: the learner keeps training its
    /// own copy). Loop thread; must return at once.
    func weightsRefreshed(version: UInt64, weights: ParameterSet, from path: String)

    /// Stops the learner thread (finishing or abandoning the current step) and returns once it has
    /// stopped. Called once, on the main thread, during shutdown.
    func stop()
}

extension LearnerControl {
    public func walAppended(upTo sequence: UInt64) {}
    public func versionPublished(_ version: UInt64, learnerStep: UInt64) {}
    public func weightsRefreshed(version: UInt64, weights: ParameterSet, from path: String) {}
}

/// No learner (`selm serve --no-learner`): preferences are logged durably and left unconsumed for a
/// later run; `SaveCheckpoint` is refused with `UNAVAILABLE`. Thread-safe (stateless).
public final class NoLearner: LearnerControl {
    public init() {}
    public func start(_ context: LearnerContext) throws {}
    public func status() -> LearnerStatus { LearnerStatus() }
    public func saveCheckpoint(to directory: String, completion: @escaping @Sendable (Result<SavedCheckpoint, ServerError>) -> Void) {
        completion(.failure(.refused(code: .unavailable, field: "", reason: "no learner runs in this server (--no-learner)")))
    }
    public func stop() {}
}
