import Engine
import Foundation
import PreferenceLog
import Learner
import Model
import ModelBundle
import Wire

/// Request handling. Everything here runs on the loop thread; CPU work goes to the thread pool
/// (`offload`), engine work to the engine, log appends to the log thread, saves to the learner.
///
/// Protocol semantics settled here (see Proto/README.md for the messages):
/// - Before a successful Hello only Hello is served: anything else gets `UNAUTHENTICATED` (the
///   connection stays open until the Hello deadline). A Hello with an unsupported version gets
///   `UNSUPPORTED_VERSION`; with a wrong token (when `--auth-token-file` is set) `UNAUTHENTICATED`,
///   and the connection is closed. A successful Hello past `maxConnections` authenticated
///   connections gets `UNAVAILABLE`, and the connection is closed.
/// - A request id still running on the connection cannot be reused: `INVALID_ARGUMENT` (field "id").
///   More than `maxRequestsInFlight` running requests: `RESOURCE_EXHAUSTED`.
/// - `Cancel` applies to generations, scores and subscriptions (`found` false for anything else).
///   A request cancelled while it is being prepared is submitted and cancelled at once, so the
///   engine answers it as any cancelled request: a generation with its SampleResults
///   (FINISH_REASON_CANCELLED, no tokens) and GenerateDone, a score with `CANCELLED`.
/// - While shutting down, new work is refused with `UNAVAILABLE`.
extension SelmServer {
    func route(_ conn: Connection, _ envelope: Envelope<ClientMessage>) {
        let id = envelope.id
        if case .hello(let h) = envelope.body {
            hello(conn, id: id, h)
            return
        }
        guard conn.authenticated else {
            fail(conn, id: id, type: envelope.body.name,
                 .refused(code: .unauthenticated, field: "", reason: "send Hello\(config.authToken == nil ? "" : " with the auth token") first"))
            return
        }
        if let refusal = roleRefusal(envelope.body) { return fail(conn, id: id, type: envelope.body.name, refusal) }
        switch envelope.body {
        case .hello: break
        case .status:
            send(conn, Envelope(id: id, body: .statusReply(statusReply())))
            metrics.countRequest("status", outcome: "ok")
        case .cancel(let c): cancel(conn, id: id, target: c.targetID)
        case .tokenize(let t): tokenize(conn, id: id, t)
        case .detokenize(let d): detokenize(conn, id: id, d)
        case .generate(let g): generate(conn, id: id, g)
        case .score(let s): score(conn, id: id, s)
        case .submitPreferences(let p): submitPreferences(conn, id: id, p)
        case .refreshWeights(let r): refreshWeights(conn, id: id, r)
        case .saveCheckpoint(let s): saveCheckpoint(conn, id: id, s)
        case .subscribeVersions: subscribe(conn, id: id)
        case .fetchWeights(let f): fetchWeights(conn, id: id, f)
        }
    }

    // MARK: Bookkeeping

    /// Sends an `Error` for a request that never started (or has no state) and counts it.
    func fail(_ conn: Connection, id: UInt64, type: String, _ error: ServerError) {
        let reply = error.errorReply
        send(conn, Envelope(id: id, body: .error(reply)))
        metrics.countRequest(type, outcome: reply.code.metricName)
    }

    /// Registers a running request, or refuses it (duplicate id, too many in flight, shutting down).
    func begin(_ conn: Connection, id: UInt64, type: String, cancellable: Bool = false, subscription: Bool = false) -> Request? {
        if state != .running {
            fail(conn, id: id, type: type, .refused(code: .unavailable, field: "", reason: "the server is shutting down"))
            return nil
        }
        if conn.requests[id] != nil {
            fail(conn, id: id, type: type, .invalid("id", "request id \(id) is still running on this connection"))
            return nil
        }
        if !subscription && conn.requests.count >= config.maxRequestsInFlight {
            fail(conn, id: id, type: type, .refused(code: .resourceExhausted, field: "",
                                                    reason: "more than \(config.maxRequestsInFlight) requests in flight on this connection"))
            return nil
        }
        let r = Request(id: id, type: type, isSubscription: subscription, cancellable: cancellable)
        conn.requests[id] = r
        return r
    }

    /// Ends a request: forgets it and counts its outcome.
    func end(_ conn: Connection, _ r: Request, outcome: String) {
        guard conn.requests[r.id] === r else { return }
        conn.requests[r.id] = nil
        metrics.countRequest(r.type, outcome: outcome)
    }

    /// Ends a request with an `Error`.
    func end(_ conn: Connection, _ r: Request, error: ServerError) {
        guard conn.requests[r.id] === r else { return }
        let reply = error.errorReply
        send(conn, Envelope(id: r.id, body: .error(reply)))
        end(conn, r, outcome: reply.code.metricName)
    }

    /// Whether a request's completion still has somewhere to go.
    func alive(_ conn: Connection, _ r: Request) -> Bool {
        !conn.closing && conn.requests[r.id] === r
    }

    // MARK: Hello, Status, Cancel, Subscribe

    private func hello(_ conn: Connection, id: UInt64, _ h: Hello) {
        guard h.protocolVersion == Hello.currentProtocolVersion else {
            fail(conn, id: id, type: "hello", .refused(code: .unsupportedVersion, field: "protocol_version",
                                                      reason: "protocol version \(h.protocolVersion) is not supported (this server speaks \(Hello.currentProtocolVersion))"))
            return
        }
        if let token = config.authToken, !constantTimeEqual(h.authToken, token) {
            conn.authenticated = false
            fail(conn, id: id, type: "hello", .refused(code: .unauthenticated, field: "auth_token", reason: "wrong auth token"))
            metrics.countDrop(.authFailed)
            close(conn, reason: "wrong auth token", graceful: true)
            return
        }
        if !conn.authenticated {
            // Leaves the pre-auth pool for the authenticated connections, if one is free.
            guard connections.count - preAuth.count < config.maxConnections else {
                fail(conn, id: id, type: "hello", .refused(code: .unavailable, field: "",
                                                          reason: "too many connections (limit \(config.maxConnections))"))
                metrics.countDrop(.tooManyConnections)
                close(conn, reason: "too many connections", graceful: true)
                return
            }
            preAuth[conn.id] = nil
            conn.authenticated = true
            conn.decoder.maxFrameBytes = config.maxFrameBytes
        }
        let c = bundle.model.config
        send(conn, Envelope(id: id, body: .helloReply(HelloReply(
            protocolVersion: Hello.currentProtocolVersion, serverVersion: config.serverVersion, modelName: bundle.name,
            modelPath: URL(fileURLWithPath: bundle.path).lastPathComponent, policyVersion: currentPolicyVersion, vocabSize: UInt32(c.vocabSize),
            contextLength: UInt32(c.contextLength), chatTemplate: bundle.template?.name ?? "",
            maxFrameBytes: UInt64(config.maxFrameBytes), enginePrecision: engine?.precision.rawValue ?? ""))))
        metrics.countRequest("hello", outcome: "ok")
    }

    var currentPolicyVersion: UInt64 { engine?.currentVersion ?? lastVersionEvent.version }

    /// The live figures from the engine, the learner and the log (their thread-safe snapshots).
    func liveFigures() -> LiveFigures {
        var f = LiveFigures()
        let l = learner.status()
        f.learnerStep = l.step
        f.learnerMetrics = l.metrics
        f.walConsumedSequence = l.consumedSequence
        f.walLastSequence = log.lastSequence
        f.walPendingBatches = log.pendingBatches
        f.policyVersion = lastVersionEvent.version
        if let s = engine?.status() {
            f.policyVersion = s.currentVersion
            f.waitingRequests = s.waitingRequests
            f.runningSequences = s.runningSequences
            f.kvBlocksUsed = s.kvBlocksUsed
            f.kvBlocksTotal = s.kvBlocksTotal
            f.tokensPerSecond = s.tokensPerSecond
            f.liveVersions = s.liveVersions.count
            f.enginePrecision = s.precision.rawValue
            f.snapshotBytes = s.snapshotBytes
            f.kvCachePrecision = s.kvCachePrecision.rawValue
            f.publishPacks = s.publishPacks
            f.lastPublishPackSeconds = s.lastPublishPackSeconds
            f.publishPackSecondsTotal = s.publishPackSecondsTotal
            f.publishSnapshots = s.publishSnapshots
            f.compactMemory = s.compactMemory
        } else {
            f.liveVersions = 1
        }
        f.connections = connections.count
        f.connectionObjects = Connection.live - HTTPSession.liveMetrics  // a scrape does not count itself
        f.tokenizerInputBytes = encoder.meter.bytes
        f.uptime = Date().timeIntervalSince(startTime)
        return f
    }

    func statusReply() -> StatusReply {
        let f = liveFigures()
        let disk = dataDirectory.usage.figures  // cached: measured off the loop
        return StatusReply(policyVersion: f.policyVersion, learnerStep: f.learnerStep, learnerMetrics: f.learnerMetrics,
                           walLastSequence: f.walLastSequence, walConsumedSequence: f.walConsumedSequence,
                           waitingRequests: UInt32(clamping: f.waitingRequests), runningSequences: UInt32(clamping: f.runningSequences),
                           kvBlocksUsed: UInt32(clamping: f.kvBlocksUsed), kvBlocksTotal: UInt32(clamping: f.kvBlocksTotal),
                           generatedTokensPerSecond: f.tokensPerSecond, uptimeSeconds: f.uptime,
                           liveVersions: UInt32(clamping: f.liveVersions), connections: UInt32(clamping: f.connections),
                           dataDirBytes: disk.dataDirBytes, diskFreeBytes: disk.freeBytes, checkpoints: UInt32(clamping: disk.checkpoints),
                           enginePrecision: f.enginePrecision, staleness: stalenessBuckets, staleRowsDropped: cluster.staleDropped,
                           role: cluster.role.rawValue, following: cluster.following ?? "",
                           referenceVersion: lastVersionEvent.referenceVersion)
    }

    private func cancel(_ conn: Connection, id: UInt64, target: UInt64) {
        var found = false
        if let r = conn.requests[target], r.cancellable {
            found = true
            r.cancelled = true
            if r.isSubscription {
                end(conn, r, outcome: "cancelled")
            } else if let id = r.engineID {
                engine?.cancel(id)  // the engine ends it with cancelled samples / an error
            }  // else: still being prepared; submitted and cancelled when preparation ends
        }
        send(conn, Envelope(id: id, body: .cancelReply(CancelReply(found: found))))
        metrics.countRequest("cancel", outcome: "ok")
    }

    private func subscribe(_ conn: Connection, id: UInt64) {
        guard begin(conn, id: id, type: "subscribe_versions", cancellable: true, subscription: true) != nil else { return }
        send(conn, Envelope(id: id, body: .versionEvent(lastVersionEvent)))
    }

    /// Loop thread: a new version was published; every subscription hears of it.
    func announce(_ event: VersionEvent) {
        if event.version > lastVersionEvent.version { lastVersionEvent = event }
        for conn in connections.values {
            for r in conn.requests.values where r.isSubscription {
                send(conn, Envelope(id: r.id, body: .versionEvent(event)))
            }
        }
    }

    // MARK: Tokenizer

    private func tokenize(_ conn: Connection, id: UInt64, _ t: TokenizeRequest) {
        guard let r = begin(conn, id: id, type: "tokenize") else { return }
        let enc = encoder
        offload(conn, { Result { () throws(ServerError) in try enc.tokenize(t) } }) { [self] result in
            guard alive(conn, r) else { return }
            switch result {
            case .success(let ids):
                send(conn, Envelope(id: id, body: .tokenizeReply(TokenizeReply(ids: ids))))
                end(conn, r, outcome: "ok")
            case .failure(let e): end(conn, r, error: e)
            }
        }
    }

    private func detokenize(_ conn: Connection, id: UInt64, _ d: DetokenizeRequest) {
        guard let r = begin(conn, id: id, type: "detokenize") else { return }
        let enc = encoder
        offload(conn, { Result { () throws(ServerError) in try enc.detokenize(d.ids) } }) { [self] result in
            guard alive(conn, r) else { return }
            switch result {
            case .success(let text):
                send(conn, Envelope(id: id, body: .detokenizeReply(DetokenizeReply(text: text))))
                end(conn, r, outcome: "ok")
            case .failure(let e): end(conn, r, error: e)
            }
        }
    }

    // MARK: Generation and scoring

    private func generate(_ conn: Connection, id: UInt64, _ g: GenerateRequest) {
        runOnEngine(conn, id: id, type: "generate", { encoder throws(ServerError) in try Edge.generationRequest(g, encoder: encoder) },
                    submit: { engine, request in try engine.submit(request) })
    }

    private func score(_ conn: Connection, id: UInt64, _ s: ScoreRequest) {
        runOnEngine(conn, id: id, type: "score", { encoder throws(ServerError) in try Edge.scoringRequest(s, encoder: encoder) },
                    submit: { engine, request in try engine.score(request) })
    }

    /// Generate and Score: the request is built (tokenized) on the thread pool, then submitted to the
    /// engine on the loop thread; its events come back through `drainEngine`, keyed by the engine's
    /// request id. A request cancelled meanwhile is submitted and cancelled at once.
    func runOnEngine<R: Sendable>(_ conn: Connection, id: UInt64, type: String,
                                          _ build: @escaping @Sendable (PromptEncoder) throws(ServerError) -> R,
                                          submit: @escaping (GenerationEngine, R) throws -> RequestID) {
        guard let engine else {
            fail(conn, id: id, type: type, .refused(code: .unavailable, field: "", reason: "no generation engine runs in this server"))
            return
        }
        guard let r = begin(conn, id: id, type: type, cancellable: true) else { return }
        let enc = encoder
        offload(conn, { Result { () throws(ServerError) in try build(enc) } }) { [self] result in
            guard alive(conn, r) else { return }
            let request: R
            switch result {
            case .failure(let e): return end(conn, r, error: e)
            case .success(let built): request = built
            }
            guard state == .running else {
                return end(conn, r, error: .refused(code: .unavailable, field: "", reason: "the server is shutting down"))
            }
            let engineID: RequestID
            do { engineID = try submit(engine, request) } catch let e as EngineError {
                return end(conn, r, error: Edge.refusal(e))
            } catch {
                return end(conn, r, error: .refused(code: .internal, field: "", reason: "\(error)"))
            }
            r.engineID = engineID
            engineRequests[engineID] = (conn, r)
            if r.cancelled { engine.cancel(engineID) }
        }
    }

    /// Loop thread (engine wake-up): routes everything the engine produced, mapped by `Edge`.
    func drainEngine() {
        guard let engine else { return }
        let now = Date().timeIntervalSince1970
        for e in engine.drainEvents() {
            if case .published(let p) = e {
                versionPublished(p)
                continue
            }
            guard let id = e.requestID, let (conn, r) = engineRequests[id] else { continue }
            if case .firstToken(_, let t) = e, !r.sawFirstToken {
                r.sawFirstToken = true
                r.firstTokenNanos = t
                metrics.timeToFirstToken.observe(now - r.received)
            }
            // A sample's mean gap between consecutive tokens: from the request's first token to its last.
            if case .sample(let s) = e, s.tokens.count >= 2, r.firstTokenNanos > 0, s.time > r.firstTokenNanos {
                metrics.interTokenLatency.observe(Double(s.time - r.firstTokenNanos) / 1e9 / Double(s.tokens.count - 1))
            }
            let (message, last) = Edge.reply(e)
            if let message {
                if case .sampleResult(let s) = message {
                    metrics.generatedTokens += UInt64(s.completionTokens)
                    metrics.promptTokens += UInt64(s.promptTokens)
                }
                send(conn, Envelope(id: r.id, body: message))
            }
            if last {
                engineRequests[id] = nil
                var outcome = r.cancelled ? "cancelled" : "ok"
                if case .error(let err)? = message { outcome = err.code.metricName }
                if outcome == "ok", r.type == "generate" || r.type.hasPrefix("http_") {
                    metrics.endToEndLatency.observe(now - r.received)
                }
                end(conn, r, outcome: outcome)
            }
        }
    }

    // MARK: Preferences

    /// Rows are tokenized and checked on the thread pool (batches in parallel), then appended to
    /// the log in the order the connection sent them: a connection's batches get increasing
    /// sequence numbers in submission order.
    private func submitPreferences(_ conn: Connection, id: UInt64, _ preferences: SubmitPreferences) {
        guard let r = begin(conn, id: id, type: "submit_preferences") else { return }
        let (p, stale): (SubmitPreferences, Int)
        do throws(ServerError) { (p, stale) = try admitStaleness(preferences) } catch { return end(conn, r, error: error) }
        if p.rows.isEmpty {  // every row too stale: nothing to log
            send(conn, Envelope(id: id, body: .preferenceAck(PreferenceAck(rows: 0, staleRows: UInt32(stale)))))
            return end(conn, r, outcome: "ok")
        }
        let ticket = conn.nextPreferenceTicket
        conn.nextPreferenceTicket += 1
        let enc = encoder
        offload(conn, { Result { () throws(ServerError) in try Edge.preferenceBatch(p, encoder: enc) } }) { [self] result in
            // A batch whose connection closed meanwhile is not logged: its client saw no ack.
            guard alive(conn, r) else { return }
            switch result {
            case .failure(let e):
                end(conn, r, error: e)
                logInOrder(conn, ticket, nil)
            case .success(let (pairs, sources)):
                let rows = pairs.count
                let mailbox = self.mailbox!
                logInOrder(conn, ticket) { [self] in
                    log.append(pairs, sources: sources) { [self] appended in
                        mailbox.post { [self] in preferencesLogged(conn, r, rows: rows, stale: stale, appended) }
                    }
                }
            }
        }
    }

    /// Runs the append of batch `ticket` (nil: nothing to append) once every earlier batch of the
    /// connection has been appended or refused.
    private func logInOrder(_ conn: Connection, _ ticket: Int, _ append: (() -> Void)?) {
        conn.preparedPreferences[ticket] = .some(append)
        while let next = conn.preparedPreferences.removeValue(forKey: conn.nextPreferenceToLog) {
            conn.nextPreferenceToLog += 1
            next?()
        }
    }

    /// Loop thread: the log thread has written (and fsynced) a batch, or failed to.
    private func preferencesLogged(_ conn: Connection, _ r: Request, rows: Int, stale: Int = 0, _ result: Result<UInt64, ServerError>) {
        metrics.walAck.observe(Date().timeIntervalSince1970 - r.received)
        if case .success = result { metrics.preferenceRows += UInt64(rows) }
        guard alive(conn, r) else { return }
        switch result {
        case .success(let seq):
            send(conn, Envelope(id: r.id, body: .preferenceAck(PreferenceAck(firstSequence: seq, lastSequence: seq, rows: UInt32(rows), staleRows: UInt32(stale)))))
            end(conn, r, outcome: "ok")
        case .failure(let e):
            end(conn, r, error: e)
        }
    }

    // MARK: Weights and checkpoints

    /// Loads and checks the checkpoint on the thread pool (shape, every weight finite), then
    /// publishes it there too (recording the version fsyncs), and answers on the loop.
    private func refreshWeights(_ conn: Connection, id: UInt64, _ rw: RefreshWeights) {
        guard let r = begin(conn, id: id, type: "refresh_weights") else { return }
        let dir = dataDirectory
        let expected = bundle.model.config
        offload(conn, { () -> Result<(LlamaModel, String), ServerError> in
            Result { () throws(ServerError) in
                let path: String
                do throws(PreferenceLogError) { path = try dir.resolveExisting(rw.checkpoint, field: "checkpoint") } catch { throw ServerError(error) }
                return (try loadCheckpointWeights(path, expected: expected, shownAs: rw.checkpoint), path)
            }
        }) { [self] result in
            guard alive(conn, r) else { return }
            switch result {
            case .failure(let e):
                end(conn, r, error: e)
            case .success(let (model, path)):
                guard state == .running else {
                    return end(conn, r, error: .refused(code: .unavailable, field: "", reason: "the server is shutting down"))
                }
                let weights = UncheckedWeights(model.weights)
                offload(conn, { [self] in
                    Result { () throws(ServerError) in try publish(weights.value, learnerStep: 0, metrics: [:]) }
                }) { [self] published in
                    switch published {
                    case .failure(let e):
                        serverLog("refresh from \(dataDirectory.relative(path)) not published: \(e)", level: .error)
                        if alive(conn, r) { end(conn, r, error: e) }
                    case .success(let version):
                        learner.weightsRefreshed(version: version, weights: weights.value, from: path)
                        serverLog("published \(dataDirectory.relative(path)) as version \(version)")
                        guard alive(conn, r) else { return }
                        send(conn, Envelope(id: r.id, body: .refreshWeightsReply(RefreshWeightsReply(version: version))))
                        end(conn, r, outcome: "ok")
                    }
                }
            }
        }
    }

    /// `name` → `DATA/checkpoints/NAME` (empty: `step-<learner step>`), checked here once
    /// (`DataDirectory.checkpointDirectory`); the learner writes it between two steps.
    private func saveCheckpoint(_ conn: Connection, id: UInt64, _ sc: SaveCheckpoint) {
        guard let r = begin(conn, id: id, type: "save_checkpoint") else { return }
        let name = sc.name.isEmpty ? Checkpoint.automaticName(step: Int(learner.status().step)) : sc.name
        let dir: String
        do throws(ServerError) { dir = try dataDirectory.checkpointDirectory(named: name, field: "name") } catch {
            return end(conn, r, error: error)
        }
        let mailbox = self.mailbox!
        let usage = dataDirectory.usage
        learner.saveCheckpoint(to: dir) { [self] result in
            if case .success = result { usage.refreshInBackground() }
            mailbox.post { [self] in
                guard alive(conn, r) else { return }
                switch result {
                case .success(let saved):
                    serverLog("checkpoint saved: \(dataDirectory.relative(saved.path)) (step \(saved.learnerStep), log sequence \(saved.walSequence))")
                    send(conn, Envelope(id: r.id, body: .saveCheckpointReply(SaveCheckpointReply(
                        path: dataDirectory.relative(saved.path), learnerStep: saved.learnerStep, walSequence: saved.walSequence,
                        version: saved.version))))
                    end(conn, r, outcome: "ok")
                case .failure(let e):
                    serverLog("checkpoint \(dataDirectory.relative(dir)) not saved: \(e)", level: .error)
                    end(conn, r, error: e)
                }
            }
        }
    }

    /// The one publish path, for the learner and RefreshWeights. Any thread but the loop's
    /// (recording a version fsyncs): the engine numbers `weights` (its issuer is the data
    /// directory's `VersionLedger`: the number is on disk before the engine or anyone sees it),
    /// queues them and announces `.published`, which `drainEngine` turns into `versionPublished`.
    /// Without an engine the ledger numbers them and the announcement is posted to the loop.
    /// - Returns: the version.
    /// - Throws: `ServerError.io` when the version cannot be recorded (nothing is published).
    func publish(_ weights: ParameterSet, snapshot: CompactSnapshot? = nil, learnerStep: UInt64, metrics: [String: Double],
                 referenceVersion: UInt64? = nil) throws(ServerError) -> UInt64 {
        guard let engine else {
            let version: UInt64
            do { version = try dataDirectory.versions.issue() } catch { throw ServerError(error) }
            cluster.published?.store(.init(version: version, learnerStep: learnerStep, weights: weights.copy()))
            let p = Publication(version: version, learnerStep: learnerStep, metrics: metrics)  // no engine keeps a reference
            mailbox.post { [self] in versionPublished(p) }
            return version
        }
        do {
            // A learner keeps an f32 copy of its newest version for FetchWeights (read during this
            // call only), made before the engine may announce the version, so a replica told of it
            // finds it stored (it asks for that version and retries while it is not yet).
            let copy = cluster.published == nil ? nil : weights.copy()
            let version = try engine.publish(weights: weights, snapshot: snapshot, learnerStep: learnerStep, metrics: metrics,
                                             referenceVersion: referenceVersion)
            if let copy { cluster.published?.store(.init(version: version, learnerStep: learnerStep, weights: copy)) }
            return version
        } catch let e as PreferenceLogError {
            throw ServerError(e)
        } catch {
            // Only a caller bug gets here (weights of another shape are refused before).
            serverLog("publish refused by the engine: \(error)", level: .error)
            throw .refused(code: .internal, field: "", reason: "the engine refused the weights: \(error)")
        }
    }

    /// Loop thread: a version exists; subscribers hear of it, and the learner when it is its own.
    func versionPublished(_ p: Publication) {
        announce(VersionEvent(version: p.version, learnerStep: p.learnerStep, metrics: p.metrics, unixTime: Date().timeIntervalSince1970,
                              referenceVersion: p.referenceVersion))
        if p.learnerStep > 0 { learner.versionPublished(p.version, learnerStep: p.learnerStep) }
    }
}

/// A parameter set handed from the loop to a pool thread for publishing (never mutated after load).
struct UncheckedWeights: @unchecked Sendable {
    let value: ParameterSet
    init(_ value: ParameterSet) { self.value = value }
}

/// The `WeightPublisher` handed to the learner: publishes through the server. Thread-safe.
final class ServerPublisher: WeightPublisher, @unchecked Sendable {
    weak var server: SelmServer?
    init(server: SelmServer) { self.server = server }
    func publish(_ weights: ParameterSet, snapshot: CompactSnapshot?, learnerStep: UInt64, metrics: [String: Double],
                 referenceVersion: UInt64) -> Bool {
        guard let server else { return false }
        do throws(ServerError) {
            _ = try server.publish(weights, snapshot: snapshot, learnerStep: learnerStep, metrics: metrics, referenceVersion: referenceVersion)
            return true
        } catch {
            serverLog("learner step \(learnerStep): weights not published: \(error)", level: .error)
            return false
        }
    }

    func makeSnapshot(of weights: ParameterSet) -> CompactSnapshot? { server?.engine?.makeSnapshot(of: weights) }
}

/// Loads the weights of a checkpoint for RefreshWeights: a Hugging Face directory (config.json +
/// safetensors, as `Checkpoint.save` writes) or a `.gguf` file (a directory holding only
/// `model.gguf` works too). They must have the served model's shape and be finite (a NaN or Inf is
/// refused naming the tensor: served, it would turn every output to garbage). `shownAs` names the
/// checkpoint in errors. Thread-pool thread.
func loadCheckpointWeights(_ path: String, expected: LlamaConfig, shownAs: String) throws(ServerError) -> LlamaModel {
    var isDir: ObjCBool = false
    _ = FileManager.default.fileExists(atPath: path, isDirectory: &isDir)
    let model: LlamaModel
    do {
        if isDir.boolValue {
            if FileManager.default.fileExists(atPath: path + "/config.json") {
                model = try Checkpoint.loadWeights(from: path)  // a BF16 checkpoint's f32 master weights
            } else if FileManager.default.fileExists(atPath: path + "/model.gguf") {
                model = try LlamaModel.load(path: path + "/model.gguf")
            } else {
                throw ServerError.invalid("checkpoint", "is neither a Hugging Face checkpoint directory (config.json) nor holds model.gguf")
            }
        } else if path.hasSuffix(".gguf") {
            model = try LlamaModel.load(path: path)
        } else {
            throw ServerError.invalid("checkpoint", "is neither a checkpoint directory nor a .gguf file")
        }
    } catch let e as ServerError {
        throw e
    } catch {
        throw .invalid("checkpoint", "cannot be loaded: \(error)")
    }
    guard model.config == expected else {
        throw .invalid("checkpoint", "holds a model of another shape than the one served")
    }
    if let bad = model.weights.firstNonFinite() {
        throw .invalid("checkpoint", "\(shownAs) holds a non-finite weight: \(bad); not published")
    }
    return model
}

/// Compares a presented secret with the expected one in time that depends only on the expected
/// secret's length (never on where they differ).
func constantTimeEqual(_ presented: String, _ expected: String) -> Bool {
    let x = Array(presented.utf8), y = Array(expected.utf8)
    var diff = UInt(bitPattern: x.count ^ y.count)
    for i in 0..<y.count {
        let a = i < x.count ? x[i] : 0
        diff |= UInt(a ^ y[i])
    }
    return diff == 0
}
