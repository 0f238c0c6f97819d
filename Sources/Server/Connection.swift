import CUV
import Engine
import Foundation
import Wire

/// One client connection (TCP or Unix socket). Loop thread only; `@unchecked Sendable` because
/// completions posted from other threads carry it back to the loop thread, where alone it is used.
final class Connection: @unchecked Sendable {
    let id: UInt64
    /// The libuv stream (a `uv_tcp_t` or `uv_pipe_t`); its `data` holds a retained reference to this
    /// object, released in the close callback, which also frees the handle.
    let stream: UnsafeMutablePointer<uv_stream_t>
    /// "ip:port" or "unix", for logs.
    let peer: String
    /// When it was accepted (seconds since 1970): the Hello deadline counts from here.
    let opened = Date().timeIntervalSince1970
    var decoder: FrameDecoder
    /// A successful Hello was received (with the right token when one is required).
    var authenticated: Bool
    /// Closed or closing: nothing more is read or sent.
    var closing = false
    /// `uv_read_start` is in effect.
    var reading = false
    /// Reading stopped because too many reply bytes wait in libuv (the client does not read).
    var pausedForOutput = false
    /// Reading stopped because too many requests wait for the thread pool (or for shutdown).
    var pausedForWork = false
    /// Reply frames queued since the last flush (one write request per loop iteration).
    var output: [UInt8] = []
    /// Bytes handed to libuv and not yet written.
    var queuedBytes = 0
    /// In the server's list of connections to flush.
    var isDirty = false
    /// Requests of this connection still running, by client request id.
    var requests: [UInt64: Request] = [:]
    /// Thread-pool jobs of this connection not finished yet (queued or running).
    var offloaded = 0
    /// Thread-pool jobs waiting for a turn (`SelmServer.dispatchPool`), oldest first, from
    /// `queuedWorkHead` on (taken ones are set to nil).
    var queuedWork: [AnyWorkItem?] = []
    var queuedWorkHead = 0
    /// Thread-pool jobs of this connection running now.
    var runningWork = 0
    /// In the server's round-robin list of connections with queued work.
    var inPoolRotation = false
    /// SubmitPreferences order: each batch takes a ticket on arrival and is appended to the log when
    /// every lower ticket has been (prepared batches wait here, nil for a refused one).
    var nextPreferenceTicket = 0
    var nextPreferenceToLog = 0
    var preparedPreferences: [Int: (() -> Void)?] = [:]
    /// Set for a connection of an HTTP listener: replies to its requests go to the HTTP layer
    /// (`SelmServer.send` hands them over) instead of being framed.
    var http: HTTPSession?

    /// Connection objects alive (created on the loop thread, released in their handle's close
    /// callback, on the loop thread): a leak check for tests, exported as a metric.
    nonisolated(unsafe) static var live = 0

    init(id: UInt64, stream: UnsafeMutablePointer<uv_stream_t>, peer: String, maxFrameBytes: Int, authenticated: Bool) {
        Connection.live += 1
        self.id = id
        self.stream = stream
        self.peer = peer
        decoder = FrameDecoder(maxFrameBytes: maxFrameBytes)
        self.authenticated = authenticated
    }

    deinit { Connection.live -= 1 }
}

/// A request still running on a connection. Loop thread only.
final class Request: @unchecked Sendable {
    /// The client's request id.
    let id: UInt64
    /// The request's proto name ("generate"), for metrics.
    let type: String
    /// When it was received (seconds since 1970).
    let received: Double
    /// A version subscription (runs until cancelled or the connection closes).
    let isSubscription: Bool
    /// Whether `Cancel` applies (generate, score, subscribe_versions).
    let cancellable: Bool
    /// The engine's id of this request, once submitted (the key of `SelmServer.engineRequests`).
    var engineID: RequestID?
    /// Cancel was received (or the connection closed); a request still being prepared is submitted
    /// and cancelled at once (the engine answers it as any cancelled request).
    var cancelled = false
    /// Set once the first token was seen (time to first token is measured once per request).
    var sawFirstToken = false
    /// When the first token came (the engine's `DispatchTime` uptime nanoseconds; 0: not yet).
    var firstTokenNanos: UInt64 = 0

    init(id: UInt64, type: String, isSubscription: Bool = false, cancellable: Bool = false) {
        self.id = id
        self.type = type
        received = Date().timeIntervalSince1970
        self.isSubscription = isSubscription
        self.cancellable = cancellable
    }
}

/// The HTTP side of a connection that came in on an HTTP listener (`--http`, `--metrics`): its
/// parser, the bytes not parsed yet, and the request being answered. Requests are answered one at
/// a time, in order (pipelined ones wait in `inbox`). Loop thread only.
final class HTTPSession: @unchecked Sendable {
    enum Endpoint { case api, metrics }
    let endpoint: Endpoint
    let parser: HTTPRequestParser
    /// Bytes received and not parsed yet (a request behind the one being answered).
    var inbox: [UInt8] = []
    /// A request is being answered (the next one is parsed when it is done).
    var busy = false
    /// Inside `httpPump` (a response finished synchronously must not pump again).
    var pumping = false
    /// Reading stopped because `inbox` grew while a request was being answered.
    var pausedForInbox = false
    /// Since when no request has been answered (the idle deadline counts from here, so a request
    /// trickled in byte by byte does not keep the connection open).
    var idleSince = Date().timeIntervalSince1970
    /// The request being answered: keep the connection after it? HTTP/1.0 (no chunked replies)?
    var keepAlive = true
    var isHTTP10 = false
    /// A streamed reply has sent its head (its body goes out in chunks).
    var streaming = false
    /// The generation being answered (API only).
    var exchange: APIExchange?
    /// Ids of the requests this connection hands to the request machinery (`begin`, `runOnEngine`).
    var nextRequestID: UInt64 = 1

    /// Sessions of metrics connections alive (their `Connection`s are not counted as client
    /// connection objects). Loop thread.
    nonisolated(unsafe) static var liveMetrics = 0

    init(endpoint: Endpoint, parser: HTTPRequestParser) {
        self.endpoint = endpoint
        self.parser = parser
        if endpoint == .metrics { Self.liveMetrics += 1 }
    }

    deinit { if endpoint == .metrics { Self.liveMetrics -= 1 } }
}
