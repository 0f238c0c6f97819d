import CUV
import Foundation

/// The Prometheus endpoint (`--metrics host:port`): plain HTTP/1.1 on the server's own loop.
/// `GET /metrics` answers the exposition text; any other path 404, any other method 405, a request
/// head over 8 KiB 431. With an auth token (`--auth-token-file`) every request must carry
/// `Authorization: Bearer <token>` (compared in constant time), else 401 — Prometheus sends it with
/// `authorization: {type: Bearer, credentials_file: ...}` in the scrape config. One request per
/// connection (the answer carries `Connection: close`); at most 32 connections at once, each closed
/// after 10 s. Loop thread only.
extension SelmServer {
    static let maxHTTPConnections = 32
    static let maxHTTPRequestBytes = 8 << 10

    /// Loop thread: the metrics listener has a connection waiting.
    func acceptHTTP(_ listener: UnsafeMutablePointer<uv_stream_t>, status: Int32) {
        guard status == 0 else { return }
        let h = uvAllocate(uv_tcp_t.self)
        uv_tcp_init(loop, h)
        guard uv_accept(listener, uvStream(h)) == 0, httpConnections.count < Self.maxHTTPConnections, state == .running else {
            uvCloseAndFree(uvHandle(h))
            return
        }
        let c = HTTPConnection(id: nextConnectionID, tcp: h)
        nextConnectionID += 1
        h.pointee.data = Unmanaged.passRetained(c).toOpaque()
        httpConnections[c.id] = c
        uv_read_start(uvStream(h), { h, _, buf in
            let s = server(of: h!)
            buf!.pointee = uv_buf_init(s.readBuffer.assumingMemoryBound(to: CChar.self), UInt32(SelmServer.readBufferSize))
        }, { stream, nread, buf in
            let c = Unmanaged<HTTPConnection>.fromOpaque(stream!.pointee.data).takeUnretainedValue()
            let s = server(of: uvHandle(stream!))
            if nread > 0 {
                s.httpReceived(c, UnsafeRawBufferPointer(start: buf!.pointee.base, count: nread))
            } else if nread < 0 {
                s.closeHTTP(c)
            }
        })
    }

    func httpReceived(_ c: HTTPConnection, _ bytes: UnsafeRawBufferPointer) {
        guard !c.answered, !c.closing else { return }
        c.request.append(contentsOf: bytes)
        let head = c.request
        guard let end = findHeadEnd(head) else {
            if head.count > Self.maxHTTPRequestBytes { respondHTTP(c, status: "431 Request Header Fields Too Large", body: "request head too large\n") }
            return
        }
        let firstLine = String(decoding: head[..<(head.firstIndex(of: 13) ?? end)], as: UTF8.self)
        let parts = firstLine.split(separator: " ")
        guard parts.count == 3, parts[2].hasPrefix("HTTP/1.") else {
            respondHTTP(c, status: "400 Bad Request", body: "bad request line\n")
            return
        }
        let path = parts[1].split(separator: "?", maxSplits: 1).first.map(String.init) ?? ""
        if let token = config.authToken, !constantTimeEqual(bearerToken(head[..<end]) ?? "", token) {
            respondHTTP(c, status: "401 Unauthorized", body: "send Authorization: Bearer <the server's auth token>\n",
                        extraHeaders: "WWW-Authenticate: Bearer realm=\"selm\"\r\n")
        } else if parts[0] != "GET" && parts[0] != "HEAD" {
            respondHTTP(c, status: "405 Method Not Allowed", body: "only GET\n", extraHeaders: "Allow: GET, HEAD\r\n")
        } else if path != "/metrics" {
            respondHTTP(c, status: "404 Not Found", body: "try /metrics\n")
        } else {
            let body = metrics.render(liveFigures())
            respondHTTP(c, status: "200 OK", body: parts[0] == "HEAD" ? "" : body,
                        contentType: "text/plain; version=0.0.4; charset=utf-8", contentLength: body.utf8.count)
        }
    }

    /// The credentials of an `Authorization: Bearer …` header (name and scheme case-insensitive).
    private func bearerToken(_ head: ArraySlice<UInt8>) -> String? {
        for line in String(decoding: head, as: UTF8.self).split(separator: "\r\n").dropFirst() {
            guard let colon = line.firstIndex(of: ":"), line[..<colon].lowercased() == "authorization" else { continue }
            let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            guard value.count > 7, value.prefix(7).lowercased() == "bearer " else { return nil }
            return value.dropFirst(7).trimmingCharacters(in: .whitespaces)
        }
        return nil
    }

    private func findHeadEnd(_ b: [UInt8]) -> Int? {
        guard b.count >= 4 else { return nil }
        for i in 0...(b.count - 4) where b[i] == 13 && b[i + 1] == 10 && b[i + 2] == 13 && b[i + 3] == 10 { return i }
        return nil
    }

    private func respondHTTP(_ c: HTTPConnection, status: String, body: String, contentType: String = "text/plain; charset=utf-8",
                             contentLength: Int? = nil, extraHeaders: String = "") {
        c.answered = true
        uv_read_stop(uvStream(c.tcp))
        let text = "HTTP/1.1 \(status)\r\nContent-Type: \(contentType)\r\nContent-Length: \(contentLength ?? body.utf8.count)\r\n"
            + extraHeaders + "Connection: close\r\n\r\n" + body
        let bytes = Array(text.utf8)
        let headerSize = MemoryLayout<uv_write_t>.stride
        let raw = malloc(headerSize + bytes.count)!
        memset(raw, 0, headerSize)
        let req = raw.bindMemory(to: uv_write_t.self, capacity: 1)
        let data = raw + headerSize
        bytes.withUnsafeBytes { data.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
        var buf = uv_buf_init(data.assumingMemoryBound(to: CChar.self), UInt32(bytes.count))
        if uv_write(req, uvStream(c.tcp), &buf, 1, { req, _ in free(req) }) != 0 {
            free(raw)
            closeHTTP(c)
            return
        }
        metrics.bytesOut += UInt64(bytes.count)
        let sreq = uvAllocate(uv_shutdown_t.self)
        let rc = uv_shutdown(sreq, uvStream(c.tcp)) { req, _ in
            let stream = req!.pointee.handle!
            free(req)
            let c = Unmanaged<HTTPConnection>.fromOpaque(stream.pointee.data).takeUnretainedValue()
            server(of: uvHandle(stream)).closeHTTP(c)
        }
        if rc != 0 { free(sreq); closeHTTP(c) }
    }

    /// Loop thread: closes a metrics connection (its object is released in the close callback).
    func closeHTTP(_ c: HTTPConnection) {
        guard !c.closing else { return }
        c.closing = true
        httpConnections[c.id] = nil
        uv_close(uvHandle(c.tcp)) { h in
            Unmanaged<HTTPConnection>.fromOpaque(h!.pointee.data).release()
            free(h)
        }
    }
}
