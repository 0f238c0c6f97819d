import CUV
import Engine
import Foundation
import PreferenceLog
import Learner
import Model
import ModelBundle
import Wire

#if canImport(Glibc)
import Glibc
#endif

/// How `selm serve` listens and what it allows.
public struct ServerConfiguration: Sendable {
    /// TCP address "host:port" (port 0 = any free port), or nil for none. Default 127.0.0.1:7070.
    public var tcp: String? = "127.0.0.1:7070"
    /// Unix socket path, or nil. The socket file is created mode 0600 (a stale one is replaced).
    public var unixPath: String? = nil
    /// Prometheus endpoint "host:port" (`GET /metrics`), or nil.
    public var metrics: String? = nil
    /// OpenAI-compatible HTTP API "host:port" (a bare port: 127.0.0.1), or nil for none (the default).
    public var http: String? = nil
    /// Shared secret every connection must present in Hello, or nil for none. Never logged.
    public var authToken: String? = nil
    /// Largest frame body accepted (and sent).
    public var maxFrameBytes: Int = Frame.defaultMaxFrameBytes
    /// Output bytes a connection may have waiting (not yet taken by the socket): past half of it the
    /// server stops reading the connection's requests, past all of it the connection is dropped.
    public var maxOutputBytes: Int = 64 << 20
    /// Requests a connection may have in flight (subscriptions excluded); more are refused with
    /// RESOURCE_EXHAUSTED.
    public var maxRequestsInFlight: Int = 1024
    /// Authenticated client connections (a successful Hello) open at once; one more Hello is
    /// answered `UNAVAILABLE` and its connection closed. With the frame limit this bounds the input
    /// the server buffers (connections × max frame).
    public var maxConnections: Int = 256
    /// Seconds a new connection has to send a successful Hello; after that it gets `UNAUTHENTICATED`
    /// ("no Hello within N s") and is closed.
    public var helloTimeoutSeconds: Double = 10
    /// Largest frame accepted before a successful Hello (a larger one: `FRAME_TOO_LARGE`, closed).
    public var preAuthMaxFrameBytes: Int = 64 << 10
    /// Connections still waiting for their Hello, counted apart from `maxConnections`:
    /// max(64, maxConnections), so a burst of clients connecting at once all get to say Hello (each
    /// buffers at most `preAuthMaxFrameBytes` before it, 16 MiB for 256). When this many wait, the
    /// oldest is closed (`UNAUTHENTICATED`) to admit a new one once it has waited
    /// `preAuthEvictionSeconds`, so connections that never say Hello cannot lock out a client that
    /// does; while every waiting connection is younger than that, the new one is refused
    /// (`UNAVAILABLE`, retry) instead of closing a client that is about to say Hello.
    public var maxPreAuthConnections: Int { max(64, maxConnections) }
    /// How long a connection may wait for its Hello before a newer one may take its place in a full
    /// pre-auth pool: min(1 s, half the Hello timeout).
    public var preAuthEvictionSeconds: Double { min(1, helloTimeoutSeconds / 2) }
    /// Seconds a shutdown waits for in-flight work (cancelled generations, log flushes, saves).
    public var shutdownGraceSeconds: Double = 10
    /// Install SIGINT/SIGTERM handlers (`selm serve`); off for a server embedded in another program.
    public var handleSignals = true
    /// Log every connection.
    public var verbose = false
    /// What this process is in a deployment (`selm serve --role`); see `ServerRole`.
    public var role: ServerRole = .all
    /// The learner a rollout replica follows ("HOST:PORT", `--follow`), or nil.
    public var follow: String? = nil
    /// Preference rows more than this many versions behind the newest are dropped (`--max-staleness`).
    public var maxStaleness: UInt64? = nil
    /// Reported in HelloReply.server_version.
    public var serverVersion = "selm-server \(SelmVersion.string)"

    public init() {}
}

/// The `selm serve` RPC server: one libuv loop (TCP, Unix socket, metrics HTTP, signals, wake-ups)
/// in front of the generation engine, the preference log and the learner.
///
/// Threads:
/// - `init` binds the listening sockets on the calling thread; `run()` then runs the loop on the
///   calling thread (the *loop thread*) until shutdown. All connection state is confined to it.
/// - The engine thread reaches the loop with `uv_async_send` (its events are drained in one go per
///   wake-up); the log thread and the learner thread through `LoopMailbox` (a locked queue + one
///   `uv_async_t`); CPU work a request needs (tokenizing, loading a checkpoint) runs on libuv's
///   thread pool (`uv_queue_work`) and comes back on the loop thread.
/// - `shutdown()` may be called from any thread.
public final class SelmServer: @unchecked Sendable {
    let config: ServerConfiguration
    let bundle: ModelBundle
    let encoder: PromptEncoder
    /// The generation engine (nil: a model without a tokenizer; Generate and Score answer
    /// UNAVAILABLE). Its `RequestID` is the one id a running generation or score has in the server.
    let engine: GenerationEngine?
    let learner: LearnerControl
    let log: PreferenceLog
    let dataDirectory: DataDirectory
    let startTime = Date()
    /// What the server listens on ("tcp 127.0.0.1:7070", "unix /path", "metrics 127.0.0.1:9090"),
    /// with the real ports when 0 was asked for. Set by `init`; read it from any thread after.
    public internal(set) var addresses: [String] = []
    /// The TCP port bound (0 when not listening on TCP). Set by `init`; any thread after.
    public private(set) var tcpPort: Int = 0
    /// The metrics port bound (0 when none). Set by `init`; any thread after.
    public private(set) var metricsPort: Int = 0
    /// The HTTP API port bound (0 when none). Set by `init`; any thread after.
    public internal(set) var httpPort: Int = 0

    // MARK: Loop-confined state

    let loop: UnsafeMutablePointer<uv_loop_t>
    var listeners: [UnsafeMutablePointer<uv_handle_t>] = []
    var metricsListener: UnsafeMutablePointer<uv_tcp_t>?
    var connections: [UInt64: Connection] = [:]
    /// The connections among `connections` without a successful Hello yet (at most
    /// `config.maxPreAuthConnections`).
    var preAuth: [UInt64: Connection] = [:]
    /// Thread-pool scheduling (`offload`): jobs running now, the connections with queued jobs in
    /// round-robin order, and the most jobs run at once (libuv's pool size).
    var poolRunning = 0
    var poolRotation: [Connection] = []
    let poolSlots: Int
    /// Jobs of one connection that may run at once: the rest of the pool stays free for others.
    static let poolJobsPerConnection = 2
    /// Rewrites server paths in error messages for clients (`send`).
    let pathScrubber: PathScrubber
    var loopClosed = false
    /// Connections to the metrics endpoint (HTTP API connections are in `connections`).
    var httpConnections: [UInt64: Connection] = [:]
    var nextConnectionID: UInt64 = 1
    /// Requests the engine runs → their connection and request (loop thread only).
    var engineRequests: [RequestID: (connection: Connection, request: Request)] = [:]
    var dirty: [Connection] = []
    let metrics = ServerMetrics()
    var mailbox: LoopMailbox!
    var engineWake: LoopSignal?
    var prepare: UnsafeMutablePointer<uv_prepare_t>!
    var sweepTimer: UnsafeMutablePointer<uv_timer_t>!
    var signalHandles: [UnsafeMutablePointer<uv_signal_t>] = []
    var state: State = .created
    var shutdownDeadline = 0.0
    var lastVersionEvent: VersionEvent
    let readBuffer: UnsafeMutableRawPointer
    static let readBufferSize = 64 << 10
    var shutdownSignal: LoopSignal!
    /// Role, weights served to followers, staleness (Cluster.swift).
    let cluster: ClusterState

    enum State { case created, running, draining, closing, stopped }

    /// Builds the server and binds every listening socket on the calling thread (nothing is accepted
    /// before `run()`, which also starts `engine`'s thread and the learner).
    /// - Parameters:
    ///   - engine: the generation engine (not started; the server starts and stops it), or nil for a
    ///     server without generation (Generate and Score answer UNAVAILABLE; a model without a
    ///     tokenizer has no engine). Its current version is the first policy version (number it with
    ///     `dataDirectory.versions.begin(resumedVersion:)`); later ones are numbered by the server
    ///     through the same ledger, one up per publication (RefreshWeights or the learner).
    ///   - learner: the online learner (`NoLearner()` for none); started by `run()`.
    ///   - log: the open preference log (its torn tail already truncated); started by `run()`.
    /// - Throws: `ServerError.listen` / `.configuration` when an address cannot be used.
    public init(configuration: ServerConfiguration, bundle: ModelBundle, engine: GenerationEngine?, learner: LearnerControl,
                log: PreferenceLog, dataDirectory: DataDirectory) throws {
        config = configuration
        self.bundle = bundle
        encoder = PromptEncoder(bundle: bundle)
        self.engine = engine
        self.learner = learner
        self.log = log
        self.dataDirectory = dataDirectory
        lastVersionEvent = VersionEvent(version: engine?.currentVersion ?? 0, unixTime: Date().timeIntervalSince1970)
        cluster = ClusterState(configuration)
        if configuration.role == .learner {  // the learner's starting weights, before it trains them in place
            cluster.published = PublishedWeights(.init(version: lastVersionEvent.version, learnerStep: 0, weights: bundle.model.weights.copy()))
        }
        do { try dataDirectory.versions.record(lastVersionEvent.version) } catch { throw ServerError(error) }  // numbers after it never repeat it
        let ledger = dataDirectory.versions
        engine?.setVersionIssuer { newest in try ledger.issue(after: newest) }
        readBuffer = UnsafeMutableRawPointer.allocate(byteCount: Self.readBufferSize, alignment: 16)
        poolSlots = libuvThreadPoolSize()
        pathScrubber = PathScrubber(dataDirectory: dataDirectory, modelPath: bundle.path)
        loop = uvAllocate(uv_loop_t.self)
        uv_loop_init(loop)
        loop.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        // A peer closing its socket must not kill the process with SIGPIPE.
        signal(SIGPIPE, SIG_IGN)
        do {
            try setUpHandles()
        } catch {
            closeLoop()
            throw error
        }
    }

    deinit {
        // Built but never run (or `init` failed, which also runs deinit): close what `init` opened.
        closeLoop()
        readBuffer.deallocate()
        free(loop)
    }

    /// Closes every handle, runs their close callbacks and closes the loop — once: `init`'s failure
    /// path, `run()`'s and `deinit` all call it (closing a closed loop again reads freed memory).
    private func closeLoop() {
        guard !loopClosed else { return }
        loopClosed = true
        closeAllHandles()
        while uv_run(loop, UV_RUN_NOWAIT) != 0 {}
        uv_loop_close(loop)
    }

    private func setUpHandles() throws {
        mailbox = LoopMailbox(loop: loop)
        shutdownSignal = LoopSignal(loop: loop) { [unowned self] in self.beginShutdown(reason: "shutdown requested") }
        if let engine {
            let wake = LoopSignal(loop: loop) { [unowned self] in self.drainEngine() }
            engineWake = wake
            engine.setWakeup { wake.signal() }
        }
        prepare = uvAllocate(uv_prepare_t.self)
        uv_prepare_init(loop, prepare)
        uv_prepare_start(prepare) { p in server(of: uvHandle(p!)).flushDirty() }
        sweepTimer = uvAllocate(uv_timer_t.self)
        uv_timer_init(loop, sweepTimer)
        // Often enough to close a connection within a quarter of its Hello deadline.
        let sweepMs = UInt64(min(1000, max(50, config.helloTimeoutSeconds * 250)))
        uv_timer_start(sweepTimer, { t in server(of: uvHandle(t!)).sweep() }, sweepMs, sweepMs)
        uv_unref(uvHandle(sweepTimer))

        if let tcp = config.tcp { try listenTCP(tcp) }
        if let path = config.unixPath { try listenUnix(path) }
        if let m = config.metrics { try listenMetrics(m) }
        if let h = config.http { try listenHTTP(h) }
        if config.tcp == nil && config.unixPath == nil {
            throw ServerError.configuration(option: "--address/--unix", reason: "nothing to listen on")
        }
        if config.handleSignals {
            for sig in [SIGINT, SIGTERM] {
                let h = uvAllocate(uv_signal_t.self)
                uv_signal_init(loop, h)
                uv_signal_start(h, { h, signum in
                    server(of: uvHandle(h!)).beginShutdown(reason: signum == SIGINT ? "SIGINT" : "SIGTERM")
                }, sig)
                uv_unref(uvHandle(h))
                signalHandles.append(h)
            }
        }
    }

    private func listenTCP(_ address: String) throws {
        var (_, _, storage) = try parseSocketAddress(address, option: "--address")
        let h = uvAllocate(uv_tcp_t.self)
        uv_tcp_init(loop, h)
        listeners.append(uvHandle(h))
        var rc = withUnsafeBytes(of: &storage) { uv_tcp_bind(h, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), 0) }
        if rc == 0 {
            rc = uv_listen(uvStream(h), 256) { s, status in server(of: uvHandle(s!)).accept(s!, status: status, kind: .tcp) }
        }
        guard rc == 0 else { throw ServerError.listen(address: "\(address) (--listen)", reason: uvErrorText(rc)) }
        let bound = boundAddress(h)
        tcpPort = Int(bound.split(separator: ":").last.flatMap { Int($0) } ?? 0)
        addresses.append("tcp \(bound)")
    }

    private func listenUnix(_ path: String) throws {
        // libuv reports a missing folder as EACCES: say what is wrong.
        let folder = (path as NSString).deletingLastPathComponent
        var isDir: ObjCBool = false
        if !folder.isEmpty, !FileManager.default.fileExists(atPath: folder, isDirectory: &isDir) || !isDir.boolValue {
            throw ServerError.listen(address: "\(path) (--unix)", reason: "the folder \(folder) does not exist")
        }
        try removeStaleSocket(path)
        let h = uvAllocate(uv_pipe_t.self)
        uv_pipe_init(loop, h, 0)
        listeners.append(uvHandle(h))
        var rc = uv_pipe_bind(h, path)
        if rc == 0 {
            chmod(path, 0o600)
            rc = uv_listen(uvStream(h), 256) { s, status in server(of: uvHandle(s!)).accept(s!, status: status, kind: .unix) }
        }
        guard rc == 0 else { throw ServerError.listen(address: "\(path) (--unix)", reason: uvErrorText(rc)) }
        addresses.append("unix \(path)")
    }

    /// A socket file nobody listens on (left by a killed server) is removed; a live one is an error.
    private func removeStaleSocket(_ path: String) throws {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        guard (st.st_mode & S_IFMT) == S_IFSOCK else {
            throw ServerError.listen(address: "\(path) (--unix)", reason: "exists and is not a socket")
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { Glibc.close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            throw ServerError.listen(address: "\(path) (--unix)", reason: "path too long for a Unix socket")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        let live = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0 }
        }
        if live { throw ServerError.listen(address: "\(path) (--unix)", reason: "another server is listening there") }
        unlink(path)
    }

    private func listenMetrics(_ address: String) throws {
        var (_, _, storage) = try parseSocketAddress(address, option: "--metrics")
        let h = uvAllocate(uv_tcp_t.self)
        uv_tcp_init(loop, h)
        metricsListener = h
        var rc = withUnsafeBytes(of: &storage) { uv_tcp_bind(h, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), 0) }
        if rc == 0 {
            rc = uv_listen(uvStream(h), 64) { s, status in server(of: uvHandle(s!)).acceptHTTP(s!, status: status, endpoint: .metrics) }
        }
        guard rc == 0 else { throw ServerError.listen(address: "\(address) (--metrics)", reason: uvErrorText(rc)) }
        let bound = boundAddress(h)
        metricsPort = Int(bound.split(separator: ":").last.flatMap { Int($0) } ?? 0)
        addresses.append("metrics http://\(bound)/metrics")
    }

    // MARK: Running

    /// Starts the preference log and the learner, then runs the loop on the calling thread until a
    /// shutdown (signal or `shutdown()`) has finished: listeners closed, in-flight work cancelled
    /// or finished (within the grace period), replies flushed, handles closed. Then stops the
    /// learner, closes the preference log (every queued batch written and acknowledged) and stops
    /// the engine. Call once; the calling thread becomes the loop thread.
    /// - Throws: what `LearnerControl.start` throws (nothing is served then).
    public func run() throws {
        precondition(state == .created, "SelmServer.run called twice")
        // The log's numbers stay ahead of what the learner's checkpoint consumed; the learner then
        // replays the records after it (nothing at or below it is read again).
        let consumed = learner.status().consumedSequence
        log.advanceSequence(toAtLeast: consumed + 1)
        let learner = self.learner
        log.addObserver { last in learner.walAppended(upTo: last) }
        log.start()
        let r = log.recovery
        let last = log.lastSequence
        serverLog("preference log \(log.path): \(r.records) records\(r.records > 0 ? " (\(r.firstSequence)…\(r.lastSequence))" : "")"
                  + (r.truncatedBytes > 0 ? ", torn tail of \(r.truncatedBytes) bytes truncated (\(r.truncationReason ?? ""))" : "")
                  + "; learner consumed \(consumed), \(last > consumed ? last - consumed : 0) to replay")
        do {
            try learner.start(LearnerContext(log: log, dataDirectory: dataDirectory, publisher: ServerPublisher(server: self),
                                             servedVersion: currentPolicyVersion))
            // The start version serves the reference policy (a fresh run's frozen copy of its
            // starting weights): kept alive from now on, and named by the first VersionEvent.
            let reference = learner.status().referenceVersion
            if reference != 0, engine?.keepReference(version: reference) ?? false {
                lastVersionEvent.referenceVersion = reference
            }
        } catch {
            closeLoop()
            log.close()
            engine?.stop()
            state = .stopped
            throw error
        }
        engine?.start()
        state = .running
        for a in addresses { serverLog("listening on \(a)") }
        uv_run(loop, UV_RUN_DEFAULT)
        learner.stop()
        log.close()
        engine?.stop()
        // The signal handles stayed open (unreferenced) until now, so a second SIGTERM while the
        // learner and the log were stopping was caught, not fatal.
        for h in signalHandles { uvCloseAndFree(uvHandle(h)) }
        signalHandles.removeAll()
        while uv_run(loop, UV_RUN_NOWAIT) != 0 {}
        loopClosed = true
        let rc = uv_loop_close(loop)
        if rc != 0 { serverLog("loop closed with handles still open (\(uvErrorText(rc)))", level: .warning) }
        if config.handleSignals {
            signal(SIGINT, SIG_IGN)
            signal(SIGTERM, SIG_IGN)
        }
        state = .stopped
        serverLog("stopped")
    }

    /// Begins a graceful shutdown (as SIGTERM does). Any thread; returns at once.
    public func shutdown() {
        shutdownSignal.signal()
    }

    // MARK: Accepting

    enum ListenerKind { case tcp, unix }

    /// Loop thread: a listener has a connection waiting.
    func accept(_ listener: UnsafeMutablePointer<uv_stream_t>, status: Int32, kind: ListenerKind) {
        guard status == 0 else { serverLog("accept failed: \(uvErrorText(status))", level: .warning); return }
        let stream: UnsafeMutablePointer<uv_stream_t>
        switch kind {
        case .tcp:
            let h = uvAllocate(uv_tcp_t.self)
            uv_tcp_init(loop, h)
            stream = uvStream(h)
        case .unix:
            let h = uvAllocate(uv_pipe_t.self)
            uv_pipe_init(loop, h, 0)
            stream = uvStream(h)
        }
        guard uv_accept(listener, stream) == 0, state == .running else {
            uvCloseAndFree(uvHandle(stream))
            return
        }
        var peer = "unix"
        if kind == .tcp {
            let tcp = UnsafeMutableRawPointer(stream).assumingMemoryBound(to: uv_tcp_t.self)
            uv_tcp_nodelay(tcp, 1)
            peer = peerAddress(tcp)
        }
        // Until its Hello a connection reads small frames only and counts against the pre-auth pool;
        // a full pool makes room by closing its oldest member once that one has waited long enough,
        // else refuses the newcomer (see `ServerConfiguration.maxPreAuthConnections`).
        var refuse = false
        if preAuth.count >= config.maxPreAuthConnections, let oldest = preAuth.values.min(by: { $0.id < $1.id }) {
            let waited = Date().timeIntervalSince1970 - oldest.opened
            if waited >= config.preAuthEvictionSeconds {
                send(oldest, Envelope(id: 0, body: .error(ErrorReply(code: .unauthenticated, message:
                    "closed to admit a newer connection: no Hello after \(String(format: "%.1f", waited)) s while \(config.maxPreAuthConnections) connections waited for theirs"))))
                metrics.countDrop(.preAuthEvicted)
                close(oldest, reason: "evicted from the pre-auth pool (no Hello)", graceful: true)
            } else {
                refuse = true
            }
        }
        let conn = Connection(id: nextConnectionID, stream: stream, peer: peer,
                              maxFrameBytes: min(config.preAuthMaxFrameBytes, config.maxFrameBytes), authenticated: false)
        nextConnectionID += 1
        // The handle holds one reference to its connection until the close callback.
        stream.pointee.data = Unmanaged.passRetained(conn).toOpaque()
        connections[conn.id] = conn
        preAuth[conn.id] = conn
        metrics.connectionsAccepted += 1
        if refuse {
            send(conn, Envelope(id: 0, body: .error(ErrorReply(code: .unavailable, message:
                "\(config.maxPreAuthConnections) connections are waiting for their Hello; retry shortly"))))
            metrics.countDrop(.preAuthFull)
            close(conn, reason: "pre-auth pool full", graceful: true)
            return
        }
        serverLog("connection \(conn.id) from \(peer)", level: config.verbose ? .info : .debug)
        startReading(conn)
    }

    func startReading(_ conn: Connection) {
        guard !conn.closing, !conn.reading, !conn.pausedForOutput, !conn.pausedForWork else { return }
        conn.reading = true
        uv_read_start(conn.stream, { h, _, buf in
            let s = server(of: h!)
            buf!.pointee = uv_buf_init(s.readBuffer.assumingMemoryBound(to: CChar.self), UInt32(SelmServer.readBufferSize))
        }, { stream, nread, buf in
            let conn = Unmanaged<Connection>.fromOpaque(stream!.pointee.data).takeUnretainedValue()
            let s = server(of: uvHandle(stream!))
            if nread > 0 {
                s.received(conn, UnsafeRawBufferPointer(start: buf!.pointee.base, count: nread))
            } else if nread < 0 {
                s.close(conn, reason: nread == Int(UV_EOF.rawValue) ? "closed by peer" : uvErrorText(Int32(nread)))
            }
        })
    }

    func stopReading(_ conn: Connection) {
        guard conn.reading else { return }
        conn.reading = false
        uv_read_stop(conn.stream)
    }

    /// Loop thread: bytes arrived on `conn`. Before a successful Hello the decoder takes one frame at
    /// a time (under the pre-auth frame limit), so the frames after a Hello in the same read are
    /// judged by the full limit.
    func received(_ conn: Connection, _ bytes: UnsafeRawBufferPointer) {
        if let h = conn.http {  // metrics scrapes are not client traffic
            if h.endpoint == .api { metrics.bytesIn += UInt64(bytes.count) }
            return httpReceived(conn, h, bytes)
        }
        metrics.bytesIn += UInt64(bytes.count)
        var rest = bytes
        while !conn.closing {
            if conn.authenticated {
                conn.decoder.append(rest)
                rest = UnsafeRawBufferPointer(start: nil, count: 0)
            } else {
                let used = conn.decoder.appendUntilReady(rest)
                rest = UnsafeRawBufferPointer(rebasing: rest[used...])
            }
            while !conn.closing {
                let body: [UInt8]
                do {
                    guard let b = try conn.decoder.next() else { break }
                    body = b
                } catch {
                    // Oversize frame: answer with id 0 (the body was never read) and hang up.
                    metrics.countRequest("unknown", outcome: error.code.metricName)
                    var reply = error.errorReply
                    if !conn.authenticated { reply.message += " (the limit before Hello)" }
                    send(conn, Envelope(id: 0, body: .error(reply)))
                    metrics.countDrop(.frameTooLarge)
                    close(conn, reason: "frame too large", graceful: true)
                    break
                }
                metrics.framesIn += 1
                let envelope: Envelope<ClientMessage>
                do {
                    envelope = try Frame.decodeClient(body)
                } catch {
                    metrics.countRequest(Frame.requestType(of: body) ?? "unknown", outcome: error.code.metricName)
                    send(conn, Envelope(id: error.requestID ?? 0, body: .error(error.errorReply)))
                    continue
                }
                route(conn, envelope)
            }
            if rest.isEmpty { break }
        }
    }

    // MARK: Sending

    /// Loop thread: queues a reply on `conn` (written before the loop next waits for I/O).
    /// Every `Error` passes here: its message is rewritten so that no server path reaches the client
    /// (data-directory paths become relative, the model's path its file name); the server's log
    /// keeps the full text of internal errors and of every rewritten message.
    func send(_ conn: Connection, _ envelope: Envelope<ServerMessage>) {
        guard !conn.closing else { return }
        var envelope = envelope
        if case .error(var reply) = envelope.body {
            let scrubbed = pathScrubber.scrub(reply.message)
            if scrubbed != reply.message || reply.code == .internal {
                serverLog("connection \(conn.id) (\(conn.peer)), request \(envelope.id): \(reply.code.metricName): \(reply.message)",
                          level: reply.code == .internal ? .error : .info)
            }
            reply.message = scrubbed
            envelope.body = .error(reply)
        }
        if let h = conn.http { return httpDeliver(conn, h, envelope) }
        var frame: [UInt8]
        do {
            frame = try Frame.encode(envelope, maxFrameBytes: config.maxFrameBytes)
        } catch {
            let reply = ErrorReply(code: .resourceExhausted, message: "the reply (\(envelope.body.name)) does not fit in a frame of \(config.maxFrameBytes) bytes")
            frame = try! Frame.encode(Envelope(id: envelope.id, body: .error(reply)))
        }
        metrics.framesOut += 1
        enqueue(conn, frame)
    }

    /// Loop thread: queues bytes on `conn` (frames, or an HTTP connection's response bytes); past
    /// `maxOutputBytes` unwritten the connection is dropped.
    func enqueue(_ conn: Connection, _ bytes: [UInt8]) {
        guard !conn.closing else { return }
        conn.output.append(contentsOf: bytes)
        if !conn.isDirty {
            conn.isDirty = true
            dirty.append(conn)
        }
        if conn.output.count + conn.queuedBytes > config.maxOutputBytes && !conn.closing {
            serverLog("connection \(conn.id) (\(conn.peer)): dropped, \(conn.output.count + conn.queuedBytes) bytes of replies unread (limit \(config.maxOutputBytes))", level: .warning)
            metrics.countDrop(.outputCap)
            close(conn, reason: "output cap")
        }
    }

    /// Loop thread (prepare phase, right before the loop waits): hands every connection's queued
    /// replies to libuv, one write request each.
    func flushDirty() {
        let list = dirty
        dirty.removeAll(keepingCapacity: true)
        for conn in list {
            conn.isDirty = false
            guard !conn.closing, !conn.output.isEmpty else { continue }
            write(conn, conn.output)
            conn.output = []
        }
    }

    /// One write request owning a copy of `bytes`, freed in its callback.
    private func write(_ conn: Connection, _ bytes: [UInt8]) {
        let n = bytes.count
        let headerSize = MemoryLayout<uv_write_t>.stride
        let raw = malloc(headerSize + n)!
        let req = raw.bindMemory(to: uv_write_t.self, capacity: 1)
        memset(raw, 0, headerSize)
        let data = raw + headerSize
        bytes.withUnsafeBytes { data.copyMemory(from: $0.baseAddress!, byteCount: n) }
        req.pointee.data = UnsafeMutableRawPointer(bitPattern: n)
        var buf = uv_buf_init(data.assumingMemoryBound(to: CChar.self), UInt32(n))
        let rc = uv_write(req, conn.stream, &buf, 1) { req, status in
            let n = Int(bitPattern: req!.pointee.data)
            let stream = req!.pointee.handle!
            free(req)
            let conn = Unmanaged<Connection>.fromOpaque(stream.pointee.data).takeUnretainedValue()
            server(of: uvHandle(stream)).written(conn, bytes: n, status: status)
        }
        if rc != 0 {
            free(raw)
            close(conn, reason: "write failed: \(uvErrorText(rc))")
            return
        }
        conn.queuedBytes += n
        if conn.queuedBytes > config.maxOutputBytes / 2 && !conn.pausedForOutput {
            conn.pausedForOutput = true
            stopReading(conn)
        }
    }

    /// Loop thread: a write request finished (status < 0: failed or cancelled by a close).
    func written(_ conn: Connection, bytes: Int, status: Int32) {
        conn.queuedBytes -= bytes
        if status == 0 && conn.http?.endpoint != .metrics { metrics.bytesOut += UInt64(bytes) }
        if status < 0 {
            if !conn.closing { close(conn, reason: "write failed: \(uvErrorText(status))") }
            return
        }
        if cluster.streams[conn.id] != nil { pumpWeights(conn) }
        if conn.pausedForOutput && conn.queuedBytes <= config.maxOutputBytes / 4 {
            conn.pausedForOutput = false
            startReading(conn)
        }
    }

    // MARK: Closing

    /// Loop thread: closes `conn`, cancelling its generations (their KV blocks are freed by the
    /// engine) and forgetting its other requests. `graceful` first writes what is queued (used
    /// after an error that ends the connection).
    func close(_ conn: Connection, reason: String, graceful: Bool = false) {
        guard !conn.closing else { return }
        serverLog("connection \(conn.id) (\(conn.peer)) closed: \(reason)", level: config.verbose || (graceful && conn.http == nil) ? .info : .debug)
        stopReading(conn)
        for (_, request) in conn.requests {
            request.cancelled = true
            if let id = request.engineID {
                engine?.cancel(id)
                engineRequests[id] = nil
            }
            metrics.countRequest(request.type, outcome: "disconnected")
        }
        conn.requests.removeAll()
        cluster.streams[conn.id] = nil
        connections[conn.id] = nil
        preAuth[conn.id] = nil
        httpConnections[conn.id] = nil
        // Queued thread-pool jobs are dropped (their replies would have nowhere to go); running ones
        // finish and find the connection gone.
        conn.queuedWork.removeAll()
        conn.queuedWorkHead = 0
        if conn.inPoolRotation {
            poolRotation.removeAll { $0 === conn }
            conn.inPoolRotation = false
        }
        if graceful && !conn.output.isEmpty {
            write(conn, conn.output)
            conn.output = []
        }
        conn.closing = true
        if graceful {
            let req = uvAllocate(uv_shutdown_t.self)
            let rc = uv_shutdown(req, conn.stream) { req, _ in
                let stream = req!.pointee.handle!
                free(req)
                if uv_is_closing(uvHandle(stream)) == 0 { uv_close(uvHandle(stream), connectionClosed) }
            }
            if rc == 0 { return }
            free(req)
        }
        uv_close(uvHandle(conn.stream), connectionClosed)
    }

    /// Loop thread: periodic housekeeping (Hello deadlines, idle metrics connections, shutdown
    /// progress).
    func sweep() {
        let now = Date().timeIntervalSince1970
        for (_, conn) in preAuth where now - conn.opened > config.helloTimeoutSeconds {
            send(conn, Envelope(id: 0, body: .error(ErrorReply(code: .unauthenticated,
                message: "no Hello within \(String(format: "%g", config.helloTimeoutSeconds)) s"))))
            metrics.countDrop(.helloTimeout)
            close(conn, reason: "no Hello within the deadline", graceful: true)
        }
        sweepHTTP(now: now)
        if state == .draining { checkDrained() }
    }

    // MARK: Shutdown

    /// Loop thread: stop accepting, cancel generations, wait (up to the grace period) for in-flight
    /// work, then close everything.
    func beginShutdown(reason: String) {
        guard state == .running else {
            if state == .draining { serverLog("\(reason) again: closing now"); finishShutdown() }
            return
        }
        state = .draining
        serverLog("\(reason): shutting down (in-flight requests get \(Int(config.shutdownGraceSeconds)) s)")
        shutdownDeadline = Date().timeIntervalSince1970 + config.shutdownGraceSeconds
        for h in listeners { uvCloseAndFree(h) }
        listeners.removeAll()
        if let m = metricsListener { uvCloseAndFree(uvHandle(m)); metricsListener = nil }
        if let path = config.unixPath { unlink(path) }
        for (_, conn) in connections {
            stopReading(conn)
            conn.pausedForWork = true  // never resume
            for (_, r) in conn.requests { if let id = r.engineID { engine?.cancel(id) } }
        }
        uv_ref(uvHandle(sweepTimer))
        uv_timer_start(sweepTimer, { t in server(of: uvHandle(t!)).sweep() }, 50, 50)
        checkDrained()
    }

    private func checkDrained() {
        let busy = connections.values.contains { $0.requests.values.contains { !$0.isSubscription } }
        if !busy || Date().timeIntervalSince1970 > shutdownDeadline {
            if busy { serverLog("grace period over: closing with requests still in flight", level: .warning) }
            finishShutdown()
        }
    }

    private func finishShutdown() {
        guard state == .draining else { return }
        state = .closing
        flushDirty()
        for (_, conn) in connections { close(conn, reason: "server shutting down", graceful: true) }
        for (_, c) in httpConnections { close(c, reason: "server shutting down") }
        closeAllHandles(keepSignals: true)
    }

    /// Closes every non-connection handle (listeners, timers, wake-ups; the signal handles too
    /// unless `keepSignals`: they hold no reference on the loop and are closed by `run()` last).
    func closeAllHandles(keepSignals: Bool = false) {
        for h in listeners { uvCloseAndFree(h) }
        listeners.removeAll()
        if let m = metricsListener { uvCloseAndFree(uvHandle(m)); metricsListener = nil }
        if !keepSignals {
            for h in signalHandles { uvCloseAndFree(uvHandle(h)) }
            signalHandles.removeAll()
        }
        if let p = prepare { uvCloseAndFree(uvHandle(p)); prepare = nil }
        if let t = sweepTimer { uvCloseAndFree(uvHandle(t)); sweepTimer = nil }
        mailbox?.close()
        engineWake?.close()
        shutdownSignal?.close()
    }

    // MARK: Thread-pool work

    /// Runs `work` on libuv's thread pool, then `then` with its result on the loop thread.
    ///
    /// Fair to every connection: jobs wait in their connection's queue; at most
    /// `poolJobsPerConnection` of one connection run at once and at most `poolSlots` in all, and a
    /// freed slot goes to the next connection in turn (round robin) — so one connection's slow jobs
    /// (long texts to tokenize, a checkpoint to load) never keep another's waiting behind them.
    /// Counts against `conn`'s offloaded work: past 64 items its reading pauses until 32 remain.
    /// Jobs still queued when the connection closes are dropped.
    func offload<T: Sendable>(_ conn: Connection, _ work: @escaping @Sendable () -> T, then: @escaping (T) -> Void) {
        let item = WorkItem(work: work, then: then)
        item.connection = conn
        conn.offloaded += 1
        if conn.offloaded > 64 && !conn.pausedForWork {
            conn.pausedForWork = true
            stopReading(conn)
        }
        item.onDone = { [unowned self, conn] in
            conn.offloaded -= 1
            if conn.pausedForWork && conn.offloaded <= 32 && self.state == .running {
                conn.pausedForWork = false
                self.startReading(conn)
            }
        }
        conn.queuedWork.append(item)
        if !conn.inPoolRotation {
            conn.inPoolRotation = true
            poolRotation.append(conn)
        }
        dispatchPool()
    }

    /// Loop thread: hands queued jobs to the pool while slots are free, one connection at a time in
    /// turn, skipping connections at their own limit.
    func dispatchPool() {
        var skipped = 0
        while poolRunning < poolSlots, !poolRotation.isEmpty, skipped < poolRotation.count {
            let conn = poolRotation.removeFirst()
            if conn.closing || conn.queuedWorkHead == conn.queuedWork.count {
                conn.inPoolRotation = false
                continue
            }
            if conn.runningWork >= Self.poolJobsPerConnection {
                poolRotation.append(conn)
                skipped += 1
                continue
            }
            let item = conn.queuedWork[conn.queuedWorkHead]!
            conn.queuedWork[conn.queuedWorkHead] = nil
            conn.queuedWorkHead += 1
            if conn.queuedWorkHead == conn.queuedWork.count {
                conn.queuedWork.removeAll(keepingCapacity: true)
                conn.queuedWorkHead = 0
                conn.inPoolRotation = false
            } else {
                if conn.queuedWorkHead >= 64 && conn.queuedWorkHead * 2 >= conn.queuedWork.count {
                    conn.queuedWork.removeFirst(conn.queuedWorkHead)
                    conn.queuedWorkHead = 0
                }
                poolRotation.append(conn)
            }
            skipped = 0
            conn.runningWork += 1
            poolRunning += 1
            submit(item)
        }
    }

    private func submit(_ item: AnyWorkItem) {
        let req = uvAllocate(uv_work_t.self)
        req.pointee.data = Unmanaged<AnyWorkItem>.passRetained(item).toOpaque()
        let rc = uv_queue_work(loop, req, { req in
            Unmanaged<AnyWorkItem>.fromOpaque(req!.pointee.data).takeUnretainedValue().runWork()
        }, { req, _ in
            let item = Unmanaged<AnyWorkItem>.fromOpaque(req!.pointee.data).takeRetainedValue()
            let s = Unmanaged<SelmServer>.fromOpaque(req!.pointee.loop.pointee.data).takeUnretainedValue()
            free(req)
            s.poolJobFinished(item)
        })
        precondition(rc == 0, "uv_queue_work failed: \(uvErrorText(rc))")
    }

    /// Loop thread: a pool job returned; its slot goes to the next job in turn, then its completion runs.
    private func poolJobFinished(_ item: AnyWorkItem) {
        poolRunning -= 1
        item.connection?.runningWork -= 1
        item.connection = nil
        dispatchPool()
        item.runThen()
    }
}

/// libuv's thread-pool size: `UV_THREADPOOL_SIZE` as libuv reads it (1…1024), else its default 4.
func libuvThreadPoolSize() -> Int {
    guard let text = ProcessInfo.processInfo.environment["UV_THREADPOOL_SIZE"], let n = Int(text), n > 0 else { return 4 }
    return min(n, 1024)
}

/// The server that owns the loop of `handle`.
func server(of handle: UnsafeMutablePointer<uv_handle_t>) -> SelmServer {
    Unmanaged<SelmServer>.fromOpaque(handle.pointee.loop.pointee.data).takeUnretainedValue()
}

/// Close callback of a client connection's handle: drops the handle's reference to its connection
/// and frees the handle.
let connectionClosed: uv_close_cb = { handle in
    Unmanaged<Connection>.fromOpaque(handle!.pointee.data).release()
    free(handle)
}

/// Type-erased thread-pool job (`uv_work_t.data`).
class AnyWorkItem: @unchecked Sendable {
    var onDone: (() -> Void)?
    /// The connection whose job this is (loop thread only; cleared when it finished).
    var connection: Connection?
    func runWork() {}
    func runThen() {}
}

/// A thread-pool job: `work` on a pool thread writes `result`; `then` reads it on the loop thread
/// (libuv orders the two: the after-work callback runs after the work callback returned).
final class WorkItem<T: Sendable>: AnyWorkItem, @unchecked Sendable {
    let work: @Sendable () -> T
    let then: (T) -> Void
    var result: T?

    init(work: @escaping @Sendable () -> T, then: @escaping (T) -> Void) {
        self.work = work
        self.then = then
    }

    override func runWork() { result = work() }

    override func runThen() {
        onDone?()
        then(result!)
    }
}
