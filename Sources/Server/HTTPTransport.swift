import CUV
import Foundation
import Wire

/// HTTP/1.1 on the server's own loop, shared by the metrics endpoint (`--metrics`) and the
/// OpenAI-compatible API (`--http`): accepting, reading through `HTTPRequestParser` (Node's
/// http-parser), answering in order, keep-alive, streamed (chunked) replies, idle deadlines.
///
/// An HTTP connection is a `Connection` with an `HTTPSession`: its replies use the same output
/// queue, output cap and close path as the socket protocol's, and a request it makes goes through
/// the same `begin` / `runOnEngine` / `end` as a socket request, whose replies `send` hands to
/// `httpDeliver` instead of framing them. Closing it (the client went away) cancels its generation.
///
/// Limits: request line + header fields ≤ `maxHTTPHeaderBytes` (431), body ≤ `--max-frame-bytes`
/// for the API (413, refused by its Content-Length before it is sent) and none for metrics; a
/// request that is not HTTP/1.x gets 400 and the connection is closed. A connection with no request
/// answered for `apiIdleSeconds` (API) or `metricsIdleSeconds` (metrics) is closed, whatever it
/// sent meanwhile. API connections count against `--max-connections` with the socket protocol's
/// (one more gets 503); metrics connections have their own limit of `maxMetricsConnections`.
/// Loop thread only.
extension SelmServer {
    static let maxMetricsConnections = 32
    static let maxHTTPHeaderBytes = 32 << 10
    static let metricsIdleSeconds = 10.0
    static let apiIdleSeconds = 60.0
    /// Unparsed bytes a connection may hold while a request is answered before reading pauses.
    static let maxHTTPInbox = 64 << 10

    /// Binds the API listener (`--http`; a bare port means 127.0.0.1).
    func listenHTTP(_ text: String) throws {
        let address = text.allSatisfy(\.isNumber) ? "127.0.0.1:\(text)" : text
        var (_, _, storage) = try parseSocketAddress(address, option: "--http")
        let h = uvAllocate(uv_tcp_t.self)
        uv_tcp_init(loop, h)
        listeners.append(uvHandle(h))  // closed with the protocol's listeners
        var rc = withUnsafeBytes(of: &storage) { uv_tcp_bind(h, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), 0) }
        if rc == 0 {
            rc = uv_listen(uvStream(h), 256) { s, status in server(of: uvHandle(s!)).acceptHTTP(s!, status: status, endpoint: .api) }
        }
        guard rc == 0 else { throw ServerError.listen(address: "\(address) (--http)", reason: uvErrorText(rc)) }
        let bound = boundAddress(h)
        httpPort = Int(bound.split(separator: ":").last.flatMap { Int($0) } ?? 0)
        addresses.append("http \(bound)")
    }

    /// Loop thread: an HTTP listener has a connection waiting.
    func acceptHTTP(_ listener: UnsafeMutablePointer<uv_stream_t>, status: Int32, endpoint: HTTPSession.Endpoint) {
        guard status == 0 else { return }
        let h = uvAllocate(uv_tcp_t.self)
        uv_tcp_init(loop, h)
        guard uv_accept(listener, uvStream(h)) == 0, state == .running,
              endpoint == .api || httpConnections.count < Self.maxMetricsConnections else {
            uvCloseAndFree(uvHandle(h))
            return
        }
        uv_tcp_nodelay(h, 1)
        let session = HTTPSession(endpoint: endpoint, parser: HTTPRequestParser(
            maxHeaderBytes: Self.maxHTTPHeaderBytes, maxBodyBytes: endpoint == .api ? config.maxFrameBytes : 0))
        let conn = Connection(id: nextConnectionID, stream: uvStream(h), peer: peerAddress(h), maxFrameBytes: 0, authenticated: true)
        conn.http = session
        nextConnectionID += 1
        // The handle holds one reference to its connection until the close callback.
        h.pointee.data = Unmanaged.passRetained(conn).toOpaque()
        switch endpoint {
        case .metrics:
            httpConnections[conn.id] = conn
        case .api:
            connections[conn.id] = conn
            metrics.connectionsAccepted += 1
            if connections.count - preAuth.count > config.maxConnections {
                session.busy = true
                metrics.countDrop(.tooManyConnections)
                httpError(conn, session, APIError(status: 503, message: "too many connections (limit \(config.maxConnections)); retry shortly"),
                          close: true)
                return
            }
            serverLog("http connection \(conn.id) from \(conn.peer)", level: config.verbose ? .info : .debug)
        }
        startReading(conn)
    }

    /// Loop thread: bytes arrived on an HTTP connection.
    func httpReceived(_ conn: Connection, _ h: HTTPSession, _ bytes: UnsafeRawBufferPointer) {
        h.inbox.append(contentsOf: bytes)
        if h.busy && h.inbox.count > Self.maxHTTPInbox && !h.pausedForInbox {
            h.pausedForInbox = true
            stopReading(conn)
        }
        httpPump(conn, h)
    }

    /// Parses and answers the requests in `h.inbox`, one at a time: stops at a request still being
    /// answered (a generation), resumed by `httpFinished`.
    func httpPump(_ conn: Connection, _ h: HTTPSession) {
        guard !h.pumping else { return }
        h.pumping = true
        defer { h.pumping = false }
        while !conn.closing, !h.busy, !h.inbox.isEmpty {
            let (used, outcome) = h.inbox.withUnsafeBytes { h.parser.parse($0) }
            h.inbox.removeFirst(used)
            if h.parser.takeContinue() { enqueue(conn, Array("HTTP/1.1 100 Continue\r\n\r\n".utf8)) }
            switch outcome {
            case .incomplete:
                return
            case .failed(let e):
                h.busy = true
                h.keepAlive = false
                metrics.countRequest(h.endpoint == .api ? "http" : "metrics_http", outcome: "http_\(e.status)")
                httpError(conn, h, APIError(status: e.status, message: e.message, code: e.status == 400 ? "malformed_http" : nil), close: true)
            case .request(let r):
                h.busy = true
                h.keepAlive = r.keepAlive
                h.isHTTP10 = r.isHTTP10
                h.streaming = false
                switch h.endpoint {
                case .metrics: handleMetrics(conn, h, r)
                case .api: handleAPI(conn, h, r)
                }
            }
        }
    }

    // MARK: Responses

    /// Answers the request being served with a complete response (`headOnly`: a HEAD request,
    /// Content-Length of the body, no body). The connection closes after it when `close`, when the
    /// client asked, and always for the metrics endpoint.
    func httpRespond(_ conn: Connection, _ h: HTTPSession, status: Int, headers: [(String, String)] = [], body: [UInt8],
                     contentType: String = "application/json", headOnly: Bool = false, close: Bool = false, deferred: Bool = false) {
        let closing = close || !h.keepAlive || h.endpoint == .metrics
        var head = "HTTP/1.1 \(status) \(httpReason(status))\r\nContent-Type: \(contentType)\r\nContent-Length: \(body.count)\r\n"
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        head += closing ? "Connection: close\r\n" : (h.isHTTP10 ? "Connection: keep-alive\r\n" : "")
        head += "\r\n"
        enqueue(conn, Array(head.utf8) + (headOnly ? [] : body))
        httpFinished(conn, h, close: closing, deferred: deferred)
    }

    /// Answers with an error: OpenAI's JSON shape on the API, a line of text on the metrics endpoint.
    func httpError(_ conn: Connection, _ h: HTTPSession, _ e: APIError, headers: [(String, String)] = [], close: Bool = false,
                   deferred: Bool = false) {
        if h.endpoint == .metrics {
            httpRespond(conn, h, status: e.status, headers: headers, body: Array((e.message + "\n").utf8),
                        contentType: "text/plain; charset=utf-8", close: close, deferred: deferred)
        } else {
            httpRespond(conn, h, status: e.status, headers: headers, body: e.json.bytes, close: close, deferred: deferred)
        }
    }

    /// Starts a streamed reply (server-sent events): the head now, the body in chunks
    /// (`httpStreamWrite`), ended by `httpEndStream`. HTTP/1.0 clients get the body unchunked and
    /// the connection closed after it.
    func httpStartStream(_ conn: Connection, _ h: HTTPSession) {
        h.streaming = true
        var head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        if h.isHTTP10 {
            h.keepAlive = false
            head += "Connection: close\r\n"
        } else {
            head += "Transfer-Encoding: chunked\r\n" + (h.keepAlive ? "" : "Connection: close\r\n")
        }
        enqueue(conn, Array((head + "\r\n").utf8))
    }

    func httpStreamWrite(_ conn: Connection, _ h: HTTPSession, _ text: String) {
        let body = Array(text.utf8)
        guard !body.isEmpty else { return }
        if h.isHTTP10 {
            enqueue(conn, body)
        } else {
            enqueue(conn, Array((String(body.count, radix: 16) + "\r\n").utf8) + body + [13, 10])
        }
    }

    func httpEndStream(_ conn: Connection, _ h: HTTPSession, deferred: Bool = false) {
        if !h.isHTTP10 { enqueue(conn, Array("0\r\n\r\n".utf8)) }
        httpFinished(conn, h, close: !h.keepAlive, deferred: deferred)
    }

    /// The request being served is answered: close, or read the next one. `deferred` (a reply
    /// delivered through `send`, whose request is ended right after): on the loop's next turn, so
    /// the request machinery has ended the request first (a close now would count it as cut off).
    private func httpFinished(_ conn: Connection, _ h: HTTPSession, close closing: Bool, deferred: Bool = false) {
        if deferred {
            h.exchange = nil
            mailbox.post { [self] in
                guard !conn.closing else { return }
                httpFinished(conn, h, close: closing)
            }
            return
        }
        h.busy = false
        h.streaming = false
        h.exchange = nil
        h.idleSince = Date().timeIntervalSince1970
        if closing {
            close(conn, reason: "HTTP response sent, connection not kept", graceful: true)
            return
        }
        if h.pausedForInbox && state == .running {
            h.pausedForInbox = false
            startReading(conn)
        }
        httpPump(conn, h)
    }

    /// Loop thread (`sweep`): closes HTTP connections past their idle deadline.
    func sweepHTTP(now: Double) {
        for (_, c) in httpConnections where now - (c.http?.idleSince ?? 0) > Self.metricsIdleSeconds {
            close(c, reason: "idle HTTP connection")
        }
        for (_, c) in connections {
            guard let h = c.http, !h.busy, now - h.idleSince > Self.apiIdleSeconds else { continue }
            close(c, reason: "idle HTTP connection")
        }
    }
}

/// The reason phrase of a status code.
func httpReason(_ status: Int) -> String {
    switch status {
    case 200: "OK"
    case 400: "Bad Request"
    case 401: "Unauthorized"
    case 403: "Forbidden"
    case 404: "Not Found"
    case 405: "Method Not Allowed"
    case 413: "Payload Too Large"
    case 429: "Too Many Requests"
    case 431: "Request Header Fields Too Large"
    case 500: "Internal Server Error"
    case 503: "Service Unavailable"
    default: "Status \(status)"
    }
}
