import ArgumentParser
import Engine
import Foundation
import PreferenceLog
import Kernels
import Learner
import Model
import ModelBundle
import Server

/// `selm serve`: the RPC server (see Sources/Server and Proto/README.md).
struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve generation, scoring, tokenization and preference intake over TCP and Unix sockets (and OpenAI's HTTP API with --http), learning online.",
        discussion: """
        Frames: a 4-byte big-endian length, then one protobuf selm.v1.Envelope (Proto/selm.proto). Clients send \
        Hello first (with the token of --auth-token-file when set). Preference batches are appended to \
        DATA-DIR/preferences.wal and fsynced before they are acknowledged; on start the log is scanned (a torn \
        tail is truncated) and the learner replays the records after its checkpoint. RefreshWeights and \
        SaveCheckpoint take paths inside --data-dir only (checkpoints are DATA-DIR/checkpoints/NAME). SIGINT/SIGTERM: stop accepting, cancel generations, \
        flush the log, exit 0.
        """)

    @OptionGroup var model: ModelOptions
    @OptionGroup var precisionOptions: PrecisionOptions
    @Option(help: "TCP address host:port (port 0 = any free port; \"none\" = no TCP). Binds 127.0.0.1 unless told otherwise.")
    var listen: String = "127.0.0.1:7070"
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
    @Option(help: "Serve Prometheus metrics at http://host:port/metrics.")
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
    @Option(help: "Linear learning-rate warm-up, optimizer steps.")
    var warmupSteps: Int = 0
    @Option(help: "Horizon of the cosine schedule in optimizer steps; 0 = constant after warm-up (an online run has no known end).")
    var totalSteps: Int = 0
    @Option(help: "Train on a partial batch once its oldest row has waited this many seconds; 0 = wait for a full batch.")
    var maxWaitSeconds: Double = 20
    @Option(help: "How engine and learner share the two cores' BLAS: adaptive (one BLAS thread each while both compute, all threads for a lone one), split (always one each), priority (one BLAS lock, rollouts first) or fifo (one lock, first come first served).")
    var computeSharing: String = "adaptive"
    @Flag(help: "Log every connection.")
    var verbose = false
    @OptionGroup var lossOptions: LossOptions
    @OptionGroup var optimizerOptions: OptimizerOptions

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
        if listen == "none" && unix == nil { throw ValidationError("--listen none needs --unix") }
        if !["adaptive", "priority", "fifo", "split"].contains(computeSharing) { throw ValidationError("--compute-sharing: expected adaptive, priority, fifo or split") }
        if publishEvery < 1 { throw ValidationError("--publish-every: must be ≥ 1") }
        if checkpointEvery < 0 { throw ValidationError("--checkpoint-every: must be ≥ 0") }
        if keepCheckpoints < 0 { throw ValidationError("--keep-checkpoints: must be ≥ 0") }
        if warmupSteps < 0 || totalSteps < 0 { throw ValidationError("--warmup-steps and --total-steps must be ≥ 0") }
        _ = try optimizerOptions.options(loss: lossOptions.config(), epochs: 1)
    }

    func run() throws {
        let training = try optimizerOptions.options(loss: lossOptions.config(), epochs: 1)
        var config = ServerConfiguration()
        config.tcp = listen == "none" ? nil : listen
        config.unixPath = unix
        config.metrics = metrics
        config.http = http
        config.maxFrameBytes = maxFrameBytes
        config.maxOutputBytes = maxOutputBytes
        config.maxRequestsInFlight = maxRequestsInFlight
        config.maxConnections = maxConnections
        config.helloTimeoutSeconds = helloTimeout
        config.verbose = verbose
        if let f = authTokenFile { config.authToken = try readToken(f) }

        let bundle = try model.load()
        try requireFinite(bundle.model, option: "--model", path: bundle.path)
        note("selm serve: \(bundle.name) (\(bundle.path)), loaded in \(String(format: "%.2f", bundle.loadSeconds)) s; OpenBLAS \(blasDescription())")
        let dataDirectory = try DataDirectory.serving(dataDir)
        let log = try PreferenceLog(directory: dataDirectory.realPath)
        for line in dataDirectory.recoverInterruptedSaves() { note("selm serve: \(line)") }  // the log's lock is held
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
            online.publishEvery = publishEvery
            online.checkpointEvery = checkpointEvery
            online.keepCheckpoints = keepCheckpoints
            online.warmupSteps = warmupSteps
            online.totalSteps = totalSteps
            online.maxWaitSeconds = maxWaitSeconds
            online.lowPriority = computeSharing != "fifo"
            let refModel: LlamaModel?
            do { refModel = try ref.map { try LlamaModel.load(path: $0) } } catch { throw CLIError.failed("cannot load --ref", error) }
            if let refModel, let ref { try requireFinite(refModel, option: "--ref", path: ref) }
            let control = try OnlineLearnerControl(policy: bundle.model, reference: refModel, options: online,
                                                   dataDirectory: dataDirectory, extras: bundle.checkpointExtras(),
                                                   baseModel: bundle.path)
            if let r = control.resumedFrom {
                note("selm serve: learner resumed from \(r) at step \(control.learner.step)"
                     + (control.resumedVersion.map { ", which holds version \($0)" } ?? ""))
            }
            // The learner trains its own copy in place; the engine reads a snapshot per version,
            // in its precision (packed from the f32 weights, or an f32 copy).
            do { engineModel = try LlamaModel.inference(from: bundle.model.weights, precision: precisionOptions.precision) } catch {
                throw CLIError.failed("cannot convert the model to --engine-precision \(precisionOptions.precision)", error)
            }
            resumedVersion = control.resumedVersion
            learner = control
        }
        if noLearner {
            // Nothing trains: the engine's copy is the only one kept (the f32 weights are freed).
            engineModel = try precisionOptions.inferenceModel(bundle.model)
            bundle.replaceModel(engineModel)
        }
        note("selm serve: engine precision \(engineModel.precision) (kernels: \(kernelPath(engineModel.precision))), KV cache \(kvCachePrecision == "auto" ? KVCachePrecision.default(for: engineModel.precision).rawValue : kvCachePrecision), "
             + "decoding steps carry ≤ \(decodingStepTokens) tokens, "
             + String(format: "%.1f MB per weight snapshot", Double(engineModel.weightBytes) / 1_048_576)
             + (engineModel.packSeconds > 0 ? String(format: ", made in %.3f s", engineModel.packSeconds) : ""))
        var engine: GenerationEngine? = nil
        if let tok = bundle.tokenizerIfAny {
            var ec = EngineConfig()
            ec.kvCacheMB = Double(kvCacheMb)
            ec.maxLiveVersions = maxLiveVersions
            ec.kvCachePrecision = KVCachePrecision(rawValue: kvCachePrecision)   // nil for auto
            ec.decodingStepTokens = decodingStepTokens
            // Numbers never go back across restarts: the resumed weights keep theirs only when no
            // later version was issued (DATA/version), else the next number.
            let engineVersion = try dataDirectory.versions.begin(resumedVersion: resumedVersion)
            do {
                engine = try GenerationEngine(model: engineModel, version: engineVersion, tokenizer: tok, template: bundle.template, config: ec)
            } catch { throw CLIError.failed("cannot start the engine", error) }
        } else {
            note("selm serve: \(bundle.path) has no tokenizer: generation and scoring are unavailable")
        }
        let server = try SelmServer(configuration: config, bundle: bundle, engine: engine, learner: learner, log: log,
                                    dataDirectory: dataDirectory)
        dataDirectory.usage.refresh()  // Status reports it from the start (measured off the loop later)
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
    private func readToken(_ path: String) throws -> String {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CLIError.file(path: path, reason: "cannot read --auth-token-file")
        }
        let token = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard !token.isEmpty else { throw CLIError.file(path: path, reason: "--auth-token-file is empty") }
        if let attrs = try? FileManager.default.attributesOfItem(atPath: path),
           let mode = (attrs[.posixPermissions] as? NSNumber)?.intValue, mode & 0o077 != 0 {
            note("selm serve: warning: \(path) is readable by other users (mode \(String(mode, radix: 8)))")
        }
        return token
    }
}
