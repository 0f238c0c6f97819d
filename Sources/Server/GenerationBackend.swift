import Model
import Wire

/// A generation request in native types, checked against the model (token ids in range, prompts
/// within the context), ready for the engine.
struct GenerationJob: Sendable {
    /// Server-wide job id (not the client's request id, which is only unique per connection).
    var id: UInt64
    /// Tokenized (and templated) prompts.
    var prompts: [[Int32]]
    /// Samples per prompt, 1…64.
    var n: Int
    /// As the client sent them (unset fields take the engine's defaults).
    var sampling: Wire.SamplingParams
    var stop: [String]
    /// Extra stop tokens, beside the model's EOS and end-of-turn tokens.
    var stopTokenIDs: [Int32]
    var ignoreEOS: Bool
    var stream: Bool
    var topLogprobs: Int
    var requireVersion: UInt64?
    var recompute: Bool
}

/// A scoring request in native types.
struct ScoreJob: Sendable {
    var id: UInt64
    /// (prompt, continuation) token ids; each pair fits in the context.
    var items: [(prompt: [Int32], continuation: [Int32])]
    var version: UInt64?
    var topLogprobs: Int
}

/// What the engine produced for a job: a reply already in wire terms (`last` ends the job: a
/// `GenerateDone`, a `ScoreReply`, or an `Error`), and/or the note that the job's first token
/// exists (`firstToken`, for the time-to-first-token metric, sent whether or not it streams).
struct BackendEvent: Sendable {
    var jobID: UInt64
    var message: ServerMessage?
    var last: Bool = false
    var firstToken: Bool = false
}

/// The engine's figures for Status and metrics.
struct BackendStatus: Sendable {
    var policyVersion: UInt64 = 0
    var waitingRequests = 0
    var runningSequences = 0
    var kvBlocksUsed = 0
    var kvBlocksTotal = 0
    var tokensPerSecond = 0.0
    var liveVersions = 1
}

/// What the server needs from the generation engine (implemented over `Engine` by
/// `EngineBackend`). Every method is thread-safe and returns without waiting for an engine step.
protocol GenerationBackend: AnyObject, Sendable {
    /// The version new requests bind to.
    var currentVersion: UInt64 { get }
    /// Sets the callback the engine calls (on its thread) when events are ready; the server makes
    /// it `uv_async_send`. Called once, before serving.
    func setWakeup(_ wake: @escaping @Sendable () -> Void)
    /// Starts the engine thread (called by `SelmServer.run()`).
    func start()
    /// Queues a generation. Throws `ServerError.refused` for a request the engine can never serve
    /// (bad sampling values, a version no longer alive, a sequence larger than the KV pool).
    func submit(_ job: GenerationJob) throws(ServerError)
    /// Queues a scoring job (same errors).
    func score(_ job: ScoreJob) throws(ServerError)
    /// Cancels a job: its unfinished samples end with FINISH_REASON_CANCELLED and it sends its
    /// final events; unknown or finished ids are ignored.
    func cancel(_ jobID: UInt64)
    /// Everything produced since the last call, in order (loop thread, after a wake-up).
    func drainEvents() -> [BackendEvent]
    /// A snapshot for Status and metrics.
    func status() -> BackendStatus
    /// Publishes `weights` as the next version and returns it (takes effect between two steps);
    /// the number is recorded on disk first. Not on the loop thread (fsync).
    func publish(_ weights: ParameterSet) throws(ServerError) -> UInt64
    /// Stops the engine thread (in-flight jobs are abandoned); returns once it stopped.
    func stop()
}
