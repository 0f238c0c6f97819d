import Foundation
import Wire

/// One reply of a generation, in arrival order.
public enum GenerationEvent: Sendable, Equatable {
    /// New tokens of one sample (only when the request set `stream`).
    case chunk(GenerateChunk)
    /// A finished sample.
    case sample(SampleResult)
}

/// The replies of one generation: `next()` returns chunks and samples as they come and `nil` after
/// the server's `GenerateDone` (then in `done`). Read it from one thread at a time.
///
/// Close it (`close()`) if you stop reading early: a stream that has not ended is then cancelled
/// on the server. Dropping the last reference closes it too.
public final class GenerationStream: @unchecked Sendable {
    /// The request id (for `SelmClient.cancel(_:)`).
    public let requestID: UInt64
    /// Every sample received so far.
    public private(set) var samples: [SampleResult] = []
    /// The totals, once the generation has ended.
    public private(set) var done: GenerateDone? = nil
    /// True once the generation has ended (done, failed or closed).
    public private(set) var isFinished = false

    private let client: SelmClient
    private let mailbox: Mailbox

    init(client: SelmClient, mailbox: Mailbox) {
        self.client = client
        self.mailbox = mailbox
        self.requestID = mailbox.id
    }

    deinit { close() }

    /// The next chunk or sample, or `nil` once the generation has ended.
    /// - Throws: `.server` if the server ended the generation with an error, `.timeout` when no
    ///   reply came within the client's timeout, `.connectionClosed`.
    public func next() throws(SelmClientError) -> GenerationEvent? {
        if isFinished { return nil }
        let message: ServerMessage
        do { message = try client.wait(mailbox, timeout: client.timeout) } catch {
            if case .timeout = error { close() } else { finish() }  // on timeout, stop it on the server too
            throw error
        }
        switch message {
        case .generateChunk(let c):
            return .chunk(c)
        case .sampleResult(let s):
            samples.append(s)
            return .sample(s)
        case .generateDone(let d):
            done = d
            finish()
            return nil
        default:
            finish()
            throw .protocolViolation("expected generate_chunk, sample_result or generate_done for request \(requestID), got \(message.name)")
        }
    }

    /// Asks the server to cancel this generation; keep reading to get the (cancelled) samples and
    /// the end. Returns whether the server still had it running.
    @discardableResult
    public func cancel() throws(SelmClientError) -> Bool {
        if isFinished { return false }
        return try client.cancel(requestID)
    }

    /// Stops reading: cancels the generation if it is still running and drops its later replies.
    public func close() {
        if isFinished { return }
        finish()
        client.sendDetached(.cancel(Cancel(targetID: requestID)))
    }

    private func finish() {
        isFinished = true
        client.unregister(requestID)
    }
}

/// Weight-version events of a subscription: the current version first, then one per published
/// version. Read it from one thread at a time; `close()` cancels it (from any thread).
public final class VersionSubscription: @unchecked Sendable {
    /// The request id of the subscription.
    public let requestID: UInt64

    private let client: SelmClient
    /// Internal for tests (`Mailbox.waiters`).
    let mailbox: Mailbox
    private let lock = NSLock()
    private var closed = false

    init(client: SelmClient, mailbox: Mailbox) {
        self.client = client
        self.mailbox = mailbox
        self.requestID = mailbox.id
    }

    deinit { close() }

    /// The next event, waiting at most `timeout` seconds (`nil`: as long as the connection lives;
    /// 0: only an event that has already arrived). `nil` if none came within `timeout`, or once the
    /// subscription is closed (`isClosed`).
    /// - Throws: `.connectionClosed`, or `.server` if the server ended the subscription.
    public func next(timeout: Double? = nil) throws(SelmClientError) -> VersionEvent? {
        if isClosed { return nil }
        let message: ServerMessage
        do { message = try client.wait(mailbox, timeout: timeout, unregisterOnTimeout: false) } catch {
            if case .timeout = error { return nil }
            if isClosed { return nil }
            lock.withLock { closed = true }
            throw error
        }
        guard case .versionEvent(let event) = message else {
            throw .protocolViolation("expected version_event for request \(requestID), got \(message.name)")
        }
        return event
    }

    /// True once the subscription is closed (by `close()`, or by an error that ended it).
    public var isClosed: Bool { lock.withLock { closed } }

    /// Cancels the subscription; a thread blocked in `next` returns `nil`.
    public func close() {
        let wasClosed = lock.withLock { () -> Bool in
            defer { closed = true }
            return closed
        }
        if wasClosed { return }
        client.unregister(requestID)
        mailbox.put(.failure(.connectionClosed(reason: "subscription closed")))
        client.sendDetached(.cancel(Cancel(targetID: requestID)))
    }
}
