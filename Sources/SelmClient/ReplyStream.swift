import Foundation

/// The replies of one streamed request of any kind (`SelmClient.stream(_:)`), in order, e.g.
/// `FetchWeights`' `WeightsChunk`s and `WeightsDone`. Read it from one thread at a time.
public final class ReplyStream: @unchecked Sendable {
    /// The request id.
    public let requestID: UInt64
    private let client: SelmClient
    private let mailbox: Mailbox

    init(client: SelmClient, mailbox: Mailbox) {
        self.client = client
        self.mailbox = mailbox
        requestID = mailbox.id
    }

    deinit { client.unregister(requestID) }

    /// The next reply, waiting at most `timeout` seconds (`nil`: the client's own timeout).
    /// - Throws: `.server` for an `Error` reply (which ends the request), `.timeout`,
    ///   `.connectionClosed`.
    public func next(timeout: Double? = nil) throws(SelmClientError) -> ServerMessage {
        try client.wait(mailbox, timeout: timeout ?? client.timeout)
    }

    /// Stops listening: later replies of the request are dropped.
    public func close() { client.unregister(requestID) }
}

extension SelmClient {
    /// Sends `message` and returns a stream of its replies (for requests answered by several
    /// messages, such as `FetchWeights`). Thread: any.
    public func stream(_ message: ClientMessage) throws(SelmClientError) -> ReplyStream {
        ReplyStream(client: self, mailbox: try start(message))
    }
}
