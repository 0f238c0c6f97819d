import Foundation
@_exported import Wire

/// A blocking client of `selm serve` over TCP or a Unix socket.
///
/// One instance holds one connection. A reader thread reads every frame the server sends and hands
/// it to the request with the same id, so calls may be made from several threads at once, a
/// generation can stream while other calls run, and version pushes arrive whenever the server
/// publishes. Every method is thread-safe and blocks the calling thread only.
///
/// ```swift
/// let client = try SelmClient(endpoint: .tcp(host: "127.0.0.1", port: 7070))
/// defer { client.close() }
/// let samples = try client.generate(GenerateRequest(prompts: [.text("Hi!")], chat: true,
///                                                   sampling: SamplingParams(maxTokens: 32)))
/// ```
public final class SelmClient: @unchecked Sendable {
    /// The server's reply to Hello: model, current policy version, vocab size, context length, chat template.
    public private(set) var hello: HelloReply
    /// Where this client is connected.
    public let endpoint: Endpoint
    /// Seconds to wait for each reply message; `nil` waits as long as the connection lives.
    public let timeout: Double?

    private let socket: Socket
    private let maxReceiveFrameBytes: Int
    private let sendLock = NSLock()
    private let lock = NSLock()
    // Guarded by `lock`:
    private var mailboxes: [UInt64: Mailbox] = [:]
    private var failure: SelmClientError? = nil
    private var lastID: UInt64 = 0
    private var serverMaxFrameBytes = Frame.defaultMaxFrameBytes
    /// Signalled when the reader thread has exited.
    private let readerDone = DispatchSemaphore(value: 0)

    /// Connects and says Hello.
    ///
    /// - Parameters:
    ///   - endpoint: the server's TCP address or Unix socket.
    ///   - token: the server's shared secret (`selm serve --auth-token-file`), if it has one.
    ///   - timeout: seconds to wait for each reply message (`nil`: no limit).
    ///   - clientName: sent in Hello for the server's logs.
    ///   - maxFrameBytes: the largest frame accepted from the server.
    /// - Throws: `SelmClientError.connectFailed`, or `.server` with `.unauthenticated` /
    ///   `.unsupportedVersion` when the server refuses the Hello.
    public init(endpoint: Endpoint, token: String? = nil, timeout: Double? = nil, clientName: String = "selm-swift/0.1",
                maxFrameBytes: Int = 256 << 20) throws(SelmClientError) {
        self.endpoint = endpoint
        self.timeout = timeout
        self.maxReceiveFrameBytes = maxFrameBytes
        socket = try Socket.connect(endpoint)
        hello = HelloReply()
        let owner = WeakClient()
        let reader = Thread { [owner, socket, maxFrameBytes, readerDone] in
            SelmClient.readLoop(owner: owner, socket: socket, maxFrameBytes: maxFrameBytes, done: readerDone)
        }
        reader.name = "selm-client-reader"
        owner.client = self
        reader.start()
        let reply: HelloReply
        do {
            let box = try start(.hello(Hello(authToken: token ?? "", clientName: clientName)))
            defer { unregister(box.id) }
            guard case .helloReply(let r) = try wait(box, timeout: timeout) else {
                throw SelmClientError.protocolViolation("expected hello_reply")
            }
            reply = r
        } catch let error as SelmClientError {
            close()
            throw error
        } catch {
            close()
            throw .protocolViolation("\(error)")
        }
        hello = reply
        lock.withLock { if reply.maxFrameBytes > 0 { serverMaxFrameBytes = Int(clamping: reply.maxFrameBytes) } }
    }

    /// Connects to "HOST:PORT" or, when `unix` is given, to that Unix socket.
    public convenience init(address: String = Endpoint.defaultAddress, unix: String? = nil, token: String? = nil,
                            timeout: Double? = nil) throws(SelmClientError) {
        let endpoint: Endpoint = if let unix { .unix(path: unix) } else { try Endpoint(address: address) }
        try self.init(endpoint: endpoint, token: token, timeout: timeout)
    }

    deinit {
        socket.shutdown()
    }

    /// Closes the connection. Calls still waiting fail with `.connectionClosed`; the server cancels
    /// this connection's running generations and subscriptions.
    public func close() {
        fail(.connectionClosed(reason: "the client closed the connection"))
        socket.shutdown()
        // Wait for the reader thread to stop (and let later `close()` calls through too).
        readerDone.wait()
        readerDone.signal()
    }

    /// True once the connection is closed (by either side).
    public var isClosed: Bool { lock.withLock { failure != nil } }

    // MARK: Calls

    /// Runs a generation to its end and returns its samples ordered by (prompt, sample) index.
    /// `request.stream` is ignored (chunks are not needed to collect samples).
    /// - Throws: `.server` with `.invalidArgument` (field named), `.outOfRange`, `.notFound`, ...
    public func generate(_ request: GenerateRequest) throws(SelmClientError) -> [SampleResult] {
        var r = request
        r.stream = false
        let stream = try generateStream(r)
        defer { stream.close() }
        while try stream.next() != nil {}
        return stream.samples.sorted { ($0.promptIndex, $0.sampleIndex) < ($1.promptIndex, $1.sampleIndex) }
    }

    /// Starts a generation and returns its replies as a stream: chunks (when `request.stream` is
    /// set) and samples as they come, then the end (`GenerationStream.done`).
    public func generateStream(_ request: GenerateRequest) throws(SelmClientError) -> GenerationStream {
        return GenerationStream(client: self, mailbox: try start(.generate(request)))
    }

    /// Log-probabilities of given continuations.
    public func score(_ request: ScoreRequest) throws(SelmClientError) -> ScoreReply {
        guard case .scoreReply(let r) = try call(.score(request), expect: "score_reply") else { fatalError() }
        return r
    }

    /// Token ids of a text (or a conversation: `TokenizeRequest.Input.messages`).
    public func tokenize(_ request: TokenizeRequest) throws(SelmClientError) -> [UInt32] {
        guard case .tokenizeReply(let r) = try call(.tokenize(request), expect: "tokenize_reply") else { fatalError() }
        return r.ids
    }

    /// Token ids of `text`; `chat` wraps it as a user turn and applies the chat template,
    /// `addSpecial` parses special-token strings.
    public func tokenize(_ text: String, chat: Bool = false, addSpecial: Bool = false) throws(SelmClientError) -> [UInt32] {
        try tokenize(TokenizeRequest(input: .text(text), addSpecial: addSpecial, chat: chat))
    }

    /// The text of token ids.
    public func detokenize(_ ids: [UInt32]) throws(SelmClientError) -> String {
        guard case .detokenizeReply(let r) = try call(.detokenize(DetokenizeRequest(ids: ids)), expect: "detokenize_reply")
        else { fatalError() }
        return r.text
    }

    /// Appends preference rows to the server's write-ahead log; returns once they are durable. A
    /// row's responses may be messages (`Response.messages`) when its prompt is a conversation: the
    /// server encodes them as TRL does (`selm client submit` sends TRL's conversational rows so).
    public func submitPreferences(_ rows: [PreferenceRow], chat: Bool = false) throws(SelmClientError) -> PreferenceAck {
        guard case .preferenceAck(let r) = try call(.submitPreferences(SubmitPreferences(rows: rows, chat: chat)),
                                                    expect: "preference_ack") else { fatalError() }
        return r
    }

    /// The server's state.
    public func status() throws(SelmClientError) -> StatusReply {
        guard case .statusReply(let r) = try call(.status(StatusRequest()), expect: "status_reply") else { fatalError() }
        return r
    }

    /// Loads a checkpoint (relative to the server's data directory) and publishes it as a new
    /// version; returns the version.
    public func refreshWeights(checkpoint: String) throws(SelmClientError) -> UInt64 {
        guard case .refreshWeightsReply(let r) = try call(.refreshWeights(RefreshWeights(checkpoint: checkpoint)),
                                                          expect: "refresh_weights_reply") else { fatalError() }
        return r.version
    }

    /// Writes a checkpoint of the learner's state as `checkpoints/NAME` in the server's data
    /// directory (`name`: A-Z a-z 0-9 . _ -; "" = automatic `step-N`); returns once it is on disk.
    /// The reply's `path` is what `refreshWeights(checkpoint:)` takes.
    public func saveCheckpoint(name: String = "") throws(SelmClientError) -> SaveCheckpointReply {
        guard case .saveCheckpointReply(let r) = try call(.saveCheckpoint(SaveCheckpoint(name: name)),
                                                          expect: "save_checkpoint_reply") else { fatalError() }
        return r
    }

    /// Subscribes to weight versions: the current one at once, then every new one.
    public func subscribeVersions() throws(SelmClientError) -> VersionSubscription {
        return VersionSubscription(client: self, mailbox: try start(.subscribeVersions(SubscribeVersions())))
    }

    /// Cancels a running request of this connection by id; returns whether the server still had it.
    public func cancel(_ requestID: UInt64) throws(SelmClientError) -> Bool {
        guard case .cancelReply(let r) = try call(.cancel(Cancel(targetID: requestID)), expect: "cancel_reply")
        else { fatalError() }
        return r.found
    }

    /// Sends any request and returns its single reply (an `Error` reply is thrown as `.server`).
    /// For generations and subscriptions use `generateStream` / `subscribeVersions`.
    public func call(_ message: ClientMessage, expect: String) throws(SelmClientError) -> ServerMessage {
        let box = try start(message)
        defer { unregister(box.id) }
        let reply = try wait(box, timeout: timeout)
        guard reply.name == expect else {
            throw .protocolViolation("expected \(expect) for request \(box.id), got \(reply.name)")
        }
        return reply
    }

    // MARK: Plumbing

    /// Registers a mailbox for a fresh id and sends the request. The caller holds on to the
    /// mailbox: replies (and the connection's failure) land in it even after it is unregistered.
    func start(_ message: ClientMessage) throws(SelmClientError) -> Mailbox {
        lock.lock()
        if let failure {
            lock.unlock()
            throw failure
        }
        lastID += 1
        let id = lastID, limit = serverMaxFrameBytes
        let box = Mailbox(id: id)
        mailboxes[id] = box
        lock.unlock()
        do {
            try send(Envelope(id: id, body: message), limit: limit)
        } catch {
            unregister(id)
            throw error
        }
        return box
    }

    /// Sends a request nobody waits for (a cancel on closing a stream); failures are ignored.
    func sendDetached(_ message: ClientMessage) {
        let next: (id: UInt64, limit: Int)? = lock.withLock {
            if failure != nil { return nil }
            lastID += 1
            return (lastID, serverMaxFrameBytes)
        }
        guard let (id, limit) = next else { return }
        try? send(Envelope(id: id, body: message), limit: limit)
    }

    private func send(_ envelope: Envelope<ClientMessage>, limit: Int) throws(SelmClientError) {
        let frame: [UInt8]
        do { frame = try Frame.encode(envelope, maxFrameBytes: limit) } catch {
            if case .frameTooLarge(let size, let limit) = error { throw .frameTooLarge(size: size, limit: limit) }
            throw .protocolViolation("cannot encode the request: \(error)")
        }
        sendLock.lock()
        defer { sendLock.unlock() }
        do { try socket.sendAll(frame) } catch {
            fail(error)
            throw error
        }
    }

    func unregister(_ id: UInt64) {
        lock.withLock { _ = mailboxes.removeValue(forKey: id) }
    }

    /// The next message of a request that is not an error: an `Error` reply is thrown as `.server`
    /// (and unregisters the request), the connection's failure as itself.
    func wait(_ box: Mailbox, timeout: Double?, unregisterOnTimeout: Bool = true) throws(SelmClientError) -> ServerMessage {
        let id = box.id
        switch box.take(timeout: timeout) {
        case .none:
            if unregisterOnTimeout { unregister(id) }
            throw .timeout(requestID: id, seconds: timeout ?? 0)
        case .some(.failure(let e)):
            unregister(id)
            throw e
        case .some(.success(.error(let e))):
            unregister(id)
            throw .server(code: e.code, message: e.message, field: e.field, requestID: id)
        case .some(.success(let m)):
            return m
        }
    }

    /// Marks the connection failed: every waiting request ends with `error`.
    fileprivate func fail(_ error: SelmClientError) {
        let boxes: [Mailbox] = lock.withLock {
            if failure == nil { failure = error }
            let all = Array(mailboxes.values)
            mailboxes.removeAll()
            return all
        }
        let f = lock.withLock { failure! }
        for b in boxes { b.put(.failure(f)) }
    }

    /// The reader thread: frames → mailboxes, until the stream ends or fails. Holds the client
    /// weakly, so a client nobody references any more is deinitialised (which shuts the socket down
    /// and ends this loop).
    private static func readLoop(owner: WeakClient, socket: Socket, maxFrameBytes: Int, done: DispatchSemaphore) {
        var decoder = FrameDecoder(maxFrameBytes: maxFrameBytes)
        var failure = SelmClientError.connectionClosed(reason: "the server closed the connection")
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 16)
        defer {
            buffer.deallocate()
            owner.client?.fail(failure)
            done.signal()
        }
        do {
            while true {
                let n = try socket.receive(into: buffer)
                if n == 0 { return }
                decoder.append(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
                while let body = try decoder.next() {
                    let envelope = try Frame.decodeServer(body)
                    guard let client = owner.client else { return }
                    client.dispatch(envelope)
                }
            }
        } catch let e as SelmClientError {
            failure = e
        } catch let e as WireError {
            if case .frameTooLarge(let size, let limit) = e {
                failure = .protocolViolation("the server sent a frame of \(size) bytes, over this client's limit of \(limit)")
            } else {
                failure = .protocolViolation("the server sent an invalid frame: \(e)")
            }
        } catch {
            failure = .protocolViolation("\(error)")
        }
    }

    private func dispatch(_ envelope: Envelope<ServerMessage>) {
        let (box, everyone): (Mailbox?, [Mailbox]) = lock.withLock {
            if let b = mailboxes[envelope.id] { return (b, []) }
            // An error about a frame whose id the server could not read concerns no request in
            // particular: every waiting request learns of it.
            if envelope.id == 0, case .error = envelope.body { return (nil, Array(mailboxes.values)) }
            return (nil, [])
        }
        if let box { box.put(.success(envelope.body)) }
        for b in everyone { b.put(.success(envelope.body)) }
        // Replies for requests nobody waits for any more (closed streams, timed-out calls) are dropped.
    }
}

/// The reader thread's reference to its client: weak, so dropping the client ends the connection.
final class WeakClient: @unchecked Sendable {
    weak var client: SelmClient?
}

/// The replies of one request, filled by the reader thread and taken by the caller.
final class Mailbox: @unchecked Sendable {
    /// The request id.
    let id: UInt64
    private let condition = NSCondition()
    private var items: [Result<ServerMessage, SelmClientError>] = []
    private var head = 0
    private var waiting = 0

    /// Threads blocked in `take` right now (tests wait on it to know a reader is blocked).
    var waiters: Int { condition.lock(); defer { condition.unlock() }; return waiting }

    init(id: UInt64) { self.id = id }

    func put(_ item: Result<ServerMessage, SelmClientError>) {
        condition.lock()
        items.append(item)
        condition.signal()
        condition.unlock()
    }

    /// The next item, or `nil` after `timeout` seconds.
    func take(timeout: Double?) -> Result<ServerMessage, SelmClientError>? {
        condition.lock()
        defer { condition.unlock() }
        let deadline = timeout.map { Date(timeIntervalSinceNow: $0) }
        waiting += 1
        defer { waiting -= 1 }
        while head == items.count {
            if let deadline {
                if !condition.wait(until: deadline) && head == items.count { return nil }
            } else {
                condition.wait()
            }
        }
        let item = items[head]
        head += 1
        if head == items.count { items.removeAll(keepingCapacity: true); head = 0 }
        return item
    }
}
