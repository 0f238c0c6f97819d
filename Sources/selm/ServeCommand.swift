import ArgumentParser
import Engine
import Foundation
import PreferenceLog
import Kernels
import Learner
import Logging
import Model
import ModelBundle
import Server

/// Startup lines of `selm serve` (the server's own are `selm.serve` too).
private let serveLog = Logger(label: "selm.serve")

/// `selm serve`: the RPC server (see Sources/Server and Proto/README.md).
struct Serve: ParsableCommand, LogLevelCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve generation, scoring, tokenization and preference intake over TCP and Unix sockets (and OpenAI's HTTP API with --http), learning online.",
        discussion: """
        Frames: a 4-byte big-endian length, then one protobuf selm.v1.Envelope (Proto/selm.proto). Clients send \
        Hello first (with the token of --auth-token-file when set). Log lines (--log-level) go to stderr. Preference batches are appended to \
        DATA-DIR/preferences.wal and fsynced before they are acknowledged; on start the log is scanned (a torn \
        tail is truncated) and the learner replays the records after its checkpoint. RefreshWeights and \
        SaveCheckpoint take paths inside --data-dir only (checkpoints are DATA-DIR/checkpoints/NAME). SIGINT/SIGTERM: stop accepting, cancel generations, \
        flush the log, exit 0.
        """)

    @OptionGroup var model: ModelOptions
    @OptionGroup var precisionOptions: PrecisionOptions
    @Option(help: "TCP address to listen on, HOST:PORT (port 0 = any free port; \"none\" = no TCP; default: \(Serve.defaultAddress)). Binds 127.0.0.1 unless told otherwise.")
    var address: String?
    @Option(name: .customLong("listen"), help: .hidden) var listen: String?  // deprecated spelling of --address
    static let defaultAddress = "127.0.0.1:7070"
    /// --address, or its deprecated spelling --listen, or the default.
    var tcpAddress: String { ((try? resolveSpelling(new: address, old: listen, newName: "--address", oldName: "--listen")) ?? nil) ?? Self.defaultAddress }
    @Option(help: "Also listen on this Unix socket path (created mode 0600).")
    var unix: String?
    @Option(help: "File holding the shared secret every client must present in Hello (never logged).")
    var authTokenFile: String?
    @Option(help: "Data directory: the preference log and checkpoints; client paths are confined to it.")
    var dataDir: String = "selm-data"
    @Option(help: "Paged KV cache size, MB.")
    var kvCacheMb: Int = 512
    @Option(help: "What the KV cache holds keys and values in: auto (f32 for --engine-precision f32, bit for bit; f16 for bf16, q8 and q4: half the memory per token, attention read in place on both cores), f32 or f16.")
    var kvCachePrecision: String = "auto"
    @Option(help: "Tokens one engine step carries while sequences are decoding (decodes first, then chunks of waiting prompts); lower keeps inter-token latency lower under admission, higher admits faster. ≥ 1.")
    var decodingStepTokens: Int = EngineConfig().decodingStepTokens
    @Option(help: "Weight versions kept alive at once (each a full copy of the weights); a publication beyond it retires the version cheapest to give up: its sequences move to the newest version (re-prefilled), requests pinned to it end with NOT_FOUND. ≥ 1.")
    var maxLiveVersions: Int = 3
    @Option(help: "Serve Prometheus metrics at http://host:port/metrics. Off unless given.")
    var metrics: String?
    @Option(help: "Serve the OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, /v1/models, /health) at host:port; a bare port means 127.0.0.1. Off unless given.")
    var http: String?
    @Option(help: "Largest frame accepted (and sent), bytes.")
    var maxFrameBytes: Int = 16 << 20
    @Option(help: "Reply bytes a client may leave unread: past half of it the server stops reading its requests, past all of it the connection is dropped.")
    var maxOutputBytes: Int = 64 << 20
    @Option(help: "Requests one connection may have in flight.")
    var maxRequestsInFlight: Int = 1024
    @Option(help: "Authenticated client connections open at once (connections still waiting for their Hello are counted apart: at most max(16, this / 4), the oldest closed to admit a new one).")
    var maxConnections: Int = 256
    @Option(help: "Seconds a new connection has to send a successful Hello before it is closed.")
    var helloTimeout: Double = 10
    @Flag(help: "Run no learner: preferences are logged durably and left unconsumed for a later run.")
    var noLearner = false
    @Option(help: "Reference model for the learner (default: a frozen copy of --model's starting weights).")
    var ref: String?
    @Option(help: "Publish the learner's weights to the engine as a new version every N optimizer steps.")
    var publishEvery: Int = 1
    @Option(help: "Save a checkpoint (with the log position consumed) every N optimizer steps; 0 = only on request and at shutdown.")
    var checkpointEvery: Int = 20
    @Option(help: "Keep the newest N automatic checkpoints (checkpoints/step-N); older ones are removed after each save, never the one checkpoints/latest names nor client-named ones. 0 = keep all.")
    var keepCheckpoints: Int = 3
    @Option(help: checkpointDTypeHelp)
    var checkpointDtype: String = "f32"
    @Option(help: "Linear learning-rate warm-up, optimizer steps (default: 0, or --warmup-ratio × --total-steps).")
    var warmupSteps: Int?
    @Option(help: "Horizon of the LR schedule (--schedule) in optimizer steps; 0 = constant after warm-up (an online run has no known end).")
    var totalSteps: Int = 0
    @Option(help: "Train on a partial batch once its oldest row has waited this many seconds; 0 = wait for a full batch.")
    var maxWaitSeconds: Double = 20
    @Option(help: "How engine and learner share the two cores' BLAS: adaptive (one BLAS thread each while both compute, all threads for a lone one), split (always one each), priority (one BLAS lock, rollouts first) or fifo (one lock, first come first served).")
    var computeSharing: String = "adaptive"
    @OptionGroup var logOptions: LogOptions
    @Option(help: "What this process is in a deployment: all (engine, preference log and learner: one machine), rollout (an engine only: preferences and checkpoints are refused; with --follow it serves its learner's versions) or learner (log, learner, an engine for its own evaluation, and FetchWeights for rollout replicas; keeps an f32 copy of its newest version).")
    var role: String = "all"
    @Option(help: "Rollout replicas: the learner (--role learner) to follow, HOST:PORT. The replica starts on the learner's newest version, fetched before it serves, and publishes every newer one under the learner's number.")
    var follow: String?
    @Option(help: "File holding the learner's --auth-token-file secret, for --follow.")
    var followAuthTokenFile: String?
    @Option(help: "With --follow: seconds between attempts to reach the learner after a failure.")
    var followRetrySeconds: Double = 0.5
    @Option(help: "Drop preference rows whose version (PreferenceRow.version) is more than K versions behind the newest (counted in Status and metrics); unset = keep them all.")
    var maxStaleness: UInt64?
    @OptionGroup var lossOptions: LossOptions
    @OptionGroup var optimizerOptions: OptimizerOptions
    @OptionGroup var learnerPrecision: LearnerPrecisionOptions

    func validate() throws {
        if kvCachePrecision != "auto" && KVCachePrecision(rawValue: kvCachePrecision) == nil {
            throw ValidationError("--kv-cache-precision: expected auto, f32 or f16")
        }
        if decodingStepTokens < 1 { throw ValidationError("--decoding-step-tokens: must be ≥ 1") }
        if maxFrameBytes < 1024 || maxFrameBytes > Int(UInt32.max) { throw ValidationError("--max-frame-bytes: must be in [1024, 2^32-1]") }
        if maxOutputBytes < 2 * maxFrameBytes { throw ValidationError("--max-output-bytes: must be at least twice --max-frame-bytes") }
        if maxRequestsInFlight < 1 { throw ValidationError("--max-requests-in-flight: must be ≥ 1") }
        if maxConnections < 1 { throw ValidationError("--max-connections: must be ≥ 1") }
        if !(helloTimeout > 0 && helloTimeout <= 86400) { throw ValidationError("--hello-timeout: must be in (0, 86400] seconds") }
        if kvCacheMb < 1 { throw ValidationError("--kv-cache-mb: must be ≥ 1") }
        if maxLiveVersions < 1 { throw ValidationError("--max-live-versions: must be ≥ 1") }
        _ = try resolveSpelling(new: address, old: listen, newName: "--address", oldName: "--listen")
        if tcpAddress == "none" && unix == nil { throw ValidationError("--address none needs --unix") }
        if !["adaptive", "priority", "fifo", "split"].contains(computeSharing) { throw ValidationError("--compute-sharing: expected adaptive, priority, fifo or split") }
        if publishEvery < 1 { throw ValidationError("--publish-every: must be ≥ 1") }
        guard let r = ServerRole(rawValue: role) else { throw ValidationError("--role: expected all, rollout or learner") }
        if follow != nil && r != .rollout { throw ValidationError("--follow: only a rollout replica follows a learner (add --role rollout)") }
        if followAuthTokenFile != nil && follow == nil { throw ValidationError("--follow-auth-token-file: needs --follow") }
        if !(followRetrySeconds > 0 && followRetrySeconds <= 3600) { throw ValidationError("--follow-retry-seconds: must be in (0, 3600]") }
        if r == .learner && noLearner { throw ValidationError("--role learner: cannot be combined with --no-learner") }
        if r == .rollout && maxStaleness != nil { throw ValidationError("--max-staleness: a rollout replica receives no preferences (it applies on the learner)") }
        if checkpointEvery < 0 { throw ValidationError("--checkpoint-every: must be ≥ 0") }
        if keepCheckpoints < 0 { throw ValidationError("--keep-checkpoints: must be ≥ 0") }
        _ = try parseCheckpointDType(checkpointDtype)
        if (warmupSteps ?? 0) < 0 || totalSteps < 0 { throw ValidationError("--warmup-steps and --total-steps must be ≥ 0") }
        _ = try optimizerOptions.options(loss: lossOptions.config(), epochs: 1)
        // Flags shared with `selm train` that mean nothing online (--seed), or only with a horizon.
        if optimizerOptions.seed != nil {
            throw ValidationError("--seed: selm serve has no seeded randomness to set: its learner trains on the preference log in order, and each generation takes its own seed (GenerateRequest sampling.seed, the API's seed); remove --seed")
        }
        if optimizerOptions.warmupRatio != nil {
            if warmupSteps != nil { throw ValidationError("--warmup-ratio and --warmup-steps both set the warm-up: give one") }
            if totalSteps == 0 { throw ValidationError("--warmup-ratio: a share of --total-steps, which is 0 (no horizon); give --total-steps, or --warmup-steps") }
        }
        if optimizerOptions.schedule == LRSchedule.Kind.cosine.rawValue && totalSteps == 0 {
            throw ValidationError("--schedule cosine: needs --total-steps (its horizon); without one the rate is constant after warm-up")
        }
    }

    /// Warm-up steps: --warmup-steps, or --warmup-ratio × --total-steps rounded up, or none.
    var onlineWarmupSteps: Int {
        if let w = warmupSteps { return w }
        if let r = optimizerOptions.warmupRatio { return Int((r * Double(totalSteps)).rounded(.up)) }
        return 0
    }

    func run() throws {
        let training = try optimizerOptions.options(loss: lossOptions.config(), epochs: 1)
        var config = ServerConfiguration()
        config.tcp = tcpAddress == "none" ? nil : tcpAddress
        config.unixPath = unix
        config.metrics = metrics
        config.http = http
        config.maxFrameBytes = maxFrameBytes
        config.maxOutputBytes = maxOutputBytes
        config.maxRequestsInFlight = maxRequestsInFlight
        config.maxConnections = maxConnections
        config.helloTimeoutSeconds = helloTimeout
        if let f = authTokenFile { config.authToken = try readToken(f) }
        let role = ServerRole(rawValue: self.role)!
        config.role = role
        config.follow = follow
        config.maxStaleness = maxStaleness
        let noLearner = self.noLearner || role == .rollout

        let bundle = try model.load()
        try requireFinite(bundle.model, option: "--model", path: bundle.path)
        serveLog.info("\(bundle.name) (\(bundle.path)), loaded in \(String(format: "%.2f", bundle.loadSeconds)) s; OpenBLAS \(blasDescription())")
        let dataDirectory = try DataDirectory.serving(dataDir)
        let log = try PreferenceLog(directory: dataDirectory.realPath)
        for line in dataDirectory.recoverInterruptedSaves() { serveLog.info("\(line)") }  // the log's lock is held
        // Two compute threads (engine, learner) share OpenBLAS: see --compute-sharing.
        switch computeSharing {
        case "adaptive": kernels_set_sharing(Int32(KERNELS_SHARING_ADAPTIVE), 0)
        case "split":
            kernels_set_sharing(Int32(KERNELS_SHARING_NONE), 0)
            kernels_set_blas_threads(1)
        case "fifo": kernels_set_sharing(Int32(KERNELS_SHARING_FIFO), 1e9)
        default: kernels_set_sharing(Int32(KERNELS_SHARING_PRIORITY), 1e9)
        }
        if computeSharing == "split" { ck_set_threads(1) }  // compact products too: one core each
        let learner: LearnerControl
        var engineModel = bundle.model
        var resumedVersion: UInt64? = nil
        if noLearner {
            learner = NoLearner()
        } else {
            var online = OnlineOptions()
            online.training = training
            online.precision = learnerPrecision.precision
            online.publishEvery = publishEvery
            online.checkpointEvery = checkpointEvery
            online.keepCheckpoints = keepCheckpoints
            online.warmupSteps = onlineWarmupSteps
            online.totalSteps = totalSteps
            online.maxWaitSeconds = maxWaitSeconds
            online.lowPriority = computeSharing != "fifo"
            let refModel: LlamaModel?
            do { refModel = try ref.map { try LlamaModel.load(path: $0) } } catch { throw CLIError.failed("cannot load --ref", error) }
            if let refModel, let ref { try requireFinite(refModel, option: "--ref", path: ref) }
            let control = try OnlineLearnerControl(policy: bundle.model, reference: refModel, options: online,
                                                   dataDirectory: dataDirectory, extras: bundle.checkpointExtras(dtype: try parseCheckpointDType(checkpointDtype)),
                                                   baseModel: bundle.path)
            if let r = control.resumedFrom {
                serveLog.info("learner resumed from \(r) at step \(control.learner.step)\(control.resumedVersion.map { ", which holds version \($0)" } ?? "")")
            }
            // The learner trains its own copy in place; the engine reads a snapshot per version,
            // in its precision (packed from the f32 weights, or an f32 copy).
            do { engineModel = try LlamaModel.inference(from: bundle.model.weights, precision: precisionOptions.precision) } catch {
                throw CLIError.failed("cannot convert the model to --engine-precision \(precisionOptions.precision)", error)
            }
            resumedVersion = control.resumedVersion
            learner = control
        }
        if noLearner && follow == nil {
            // Nothing trains: the engine's copy is the only one kept (the f32 weights are freed).
            engineModel = try precisionOptions.inferenceModel(bundle.model)
            bundle.replaceModel(engineModel)
        }
        // A follower starts on its learner's newest version, under the learner's number.
        var follower: WeightFollower? = nil
        var followed: WeightFollower.Fetched? = nil
        if let follow {
            guard bundle.tokenizerIfAny != nil else { throw ServerError.configuration(option: "--follow", reason: "\(bundle.path) has no tokenizer: a replica without an engine has nothing to follow for") }
            let f = WeightFollower(address: follow, token: try followAuthTokenFile.map { try readToken($0, option: "--follow-auth-token-file") },
                                   retrySeconds: followRetrySeconds, config: bundle.model.config,
                                   enginePrecision: precisionOptions.precision)
            let first = f.fetchFirst()
            let highest = dataDirectory.versions.highest
            guard first.version >= highest else {
                throw ServerError.configuration(option: "--follow", reason: "the learner's newest version \(first.version) is below version \(highest), which this data directory has already served (another learner?); numbers never go back: use a fresh --data-dir")
            }
            do { engineModel = try LlamaModel.inference(from: first.weights, precision: precisionOptions.precision) } catch {
                throw CLIError.failed("cannot convert the learner's weights to --engine-precision \(precisionOptions.precision)", error)
            }
            bundle.replaceModel(engineModel)
            try dataDirectory.versions.record(first.version)
            (follower, followed) = (f, first)
        }
        // (After --follow: a replica's engine is made from its learner's weights.)
        let kvText = kvCachePrecision == "auto" ? KVCachePrecision.default(for: engineModel.precision).rawValue : kvCachePrecision
        let snapshotText = String(format: "%.1f MB per weight snapshot", Double(engineModel.weightBytes) / 1_048_576)
            + (engineModel.packSeconds > 0 ? String(format: ", made in %.3f s", engineModel.packSeconds) : "")
        serveLog.info("engine precision \(engineModel.precision) (kernels: \(kernelPath(engineModel.precision))), KV cache \(kvText), decoding steps carry ≤ \(decodingStepTokens) tokens, \(snapshotText)")
        var engine: GenerationEngine? = nil
        if let tok = bundle.tokenizerIfAny {
            var ec = EngineConfig()
            ec.kvCacheMB = Double(kvCacheMb)
            ec.maxLiveVersions = maxLiveVersions
            ec.kvCachePrecision = KVCachePrecision(rawValue: kvCachePrecision)   // nil for auto
            ec.decodingStepTokens = decodingStepTokens
            // Numbers never go back across restarts: the resumed weights keep theirs only when no
            // later version was issued (DATA/version), else the next number.
            let engineVersion = try followed?.version ?? dataDirectory.versions.begin(resumedVersion: resumedVersion)
            do {
                engine = try GenerationEngine(model: engineModel, version: engineVersion, tokenizer: tok, template: bundle.template, config: ec)
            } catch { throw CLIError.failed("cannot start the engine", error) }
        } else {
            serveLog.info("\(bundle.path) has no tokenizer: generation and scoring are unavailable")
        }
        let server = try SelmServer(configuration: config, bundle: bundle, engine: engine, learner: learner, log: log,
                                    dataDirectory: dataDirectory)
        dataDirectory.usage.refresh()  // Status reports it from the start (measured off the loop later)
        if let follower, let engine, let followed { follower.start(engine: engine, ledger: dataDirectory.versions, from: followed.version) }
        serveLog.info("role \(role.rawValue)\(follow.map { ", following \($0) from version \(followed!.version)" } ?? "")")
        try server.run()
    }

    /// The implementation that runs the products of `p` (OpenBLAS's core for f32).
    private func kernelPath(_ p: EnginePrecision) -> String {
        switch p {
        case .f32: return "OpenBLAS"
        case .bf16: return String(cString: ck_path_name(Int32(CK_BF16)))
        case .q8: return String(cString: ck_path_name(Int32(CK_Q8)))
        case .q4: return String(cString: ck_path_name(Int32(CK_Q4)))
        }
    }

    /// Refuses to serve weights holding a NaN or ±Inf (every output would be garbage).
    private func requireFinite(_ model: LlamaModel, option: String, path: String) throws {
        if let bad = model.weights.firstNonFinite() {
            throw ServerError.configuration(option: option, reason: "\(path) holds a non-finite weight: \(bad); refusing to serve it")
        }
    }

    /// The token in `path` (surrounding whitespace dropped). Never printed.
    private func readToken(_ path: String, option: String = "--auth-token-file") throws -> String {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CLIError.file(path: path, reason: "cannot read \(option)")
        }
        let token = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard !token.isEmpty else { throw CLIError.file(path: path, reason: "\(option) is empty") }
        if let attrs = try? FileManager.default.attributesOfItem(atPath: path),
           let mode = (attrs[.posixPermissions] as? NSNumber)?.intValue, mode & 0o077 != 0 {
            serveLog.warning("\(path) is readable by other users (mode \(String(mode, radix: 8)))")
        }
        return token
    }
}
