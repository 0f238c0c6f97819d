import Foundation
import Wire
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// The OpenAI-compatible HTTP API (`selm serve --http`) over raw sockets — the test writes the
/// bytes itself, so it can send what no client library would (bad JSON, a malformed request line,
/// an oversized body, pipelined requests, a client that vanishes mid-stream). Real `selm serve`
/// processes; the tiny model (no tokenizer, so no engine) where no generation is needed, SmolLM2
/// where it is. The `openai` package's view: clients/python/tests/test_openai_http.py.
final class HTTPTests: XCTestCase {
    func testRoutesErrorsAndLimits() throws {
        let dir = try temporaryDirectory()
        let server = try ServerProcess(model: ServerProcess.tiny, dataDir: dir + "/data", args: ["--http", "127.0.0.1:0", "--max-frame-bytes", "4096"])
        defer { _ = server.stop() }
        let port = try server.httpPort()

        // One keep-alive connection through a series of answers, errors included.
        let c = try RawHTTP(port: port)
        var r = try c.exchange("GET", "/health")
        XCTAssertEqual(r.status, 503, "no engine: not ready")
        XCTAssertEqual(r.json?["status"] as? String, "no generation engine")
        r = try c.exchange("GET", "/v1/models")
        XCTAssertEqual(r.status, 200)
        let models = r.json?["data"] as? [[String: Any]]
        XCTAssertEqual(models?.first?["id"] as? String, "tiny-untied")
        XCTAssertEqual((models?.first?["selm"] as? [String: Any])?["version"] as? Int, 0)
        r = try c.exchange("POST", "/v1/completions", body: "{\"prompt\": [1, 2], oops")
        XCTAssertEqual(r.status, 400)
        XCTAssertEqual(r.error?["code"] as? String, "invalid_json")
        XCTAssertEqual(r.error?["type"] as? String, "invalid_request_error")
        r = try c.exchange("POST", "/v1/completions", body: #"{"prompt": [1, 2], "temperature": -1}"#)
        XCTAssertEqual(r.status, 400)
        XCTAssertEqual(r.error?["param"] as? String, "temperature", "\(r.text)")
        r = try c.exchange("POST", "/v1/completions", body: #"{"prompt": [1, 2], "n": 65}"#)
        XCTAssertEqual(r.error?["param"] as? String, "n", "\(r.text)")
        r = try c.exchange("POST", "/v1/chat/completions", body: #"{"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 21}"#)
        XCTAssertEqual(r.error?["param"] as? String, "top_logprobs", "\(r.text)")
        r = try c.exchange("POST", "/v1/chat/completions", body: #"{"messages": "hi"}"#)
        XCTAssertEqual(r.error?["param"] as? String, "messages", "\(r.text)")
        r = try c.exchange("POST", "/v1/completions", body: #"{"prompt": [1, 2], "stop": 3}"#)
        XCTAssertEqual(r.error?["param"] as? String, "stop", "\(r.text)")
        r = try c.exchange("POST", "/v1/completions", body: #"{"prompt": [1, 2], "model": "gpt-4"}"#)
        XCTAssertEqual(r.status, 404)
        XCTAssertEqual(r.error?["code"] as? String, "model_not_found")
        r = try c.exchange("POST", "/v1/completions", body: #"{"prompt": [1, 2], "model": "tiny-untied"}"#)
        XCTAssertEqual(r.status, 503, "a well-formed request on a server without an engine: \(r.text)")
        XCTAssertEqual(r.error?["code"] as? String, "unavailable")
        r = try c.exchange("GET", "/v1/nope")
        XCTAssertEqual(r.status, 404)
        XCTAssertEqual(r.error?["type"] as? String, "not_found_error")
        r = try c.exchange("GET", "/v1/completions")
        XCTAssertEqual(r.status, 405)
        XCTAssertEqual(r.headers["allow"], "POST")
        // Pipelined: two requests in one write, answered in order.
        try c.send(RawHTTP.request("GET", "/v1/models") + RawHTTP.request("GET", "/v1/nope"))
        XCTAssertEqual(try c.readResponse().status, 200)
        XCTAssertEqual(try c.readResponse().status, 404)

        // A request in pieces (the head split inside a header, the body in two), then a chunked body.
        let whole = Array(RawHTTP.request("POST", "/v1/completions", body: #"{"prompt": [1, 2], "temperature": -1}"#).utf8)
        let cuts = [0, 9, 30, whole.count - 10, whole.count]
        for i in 0..<(cuts.count - 1) {
            try c.send(String(decoding: whole[cuts[i]..<cuts[i + 1]], as: UTF8.self))
            usleep(50_000)
        }
        r = try c.readResponse()
        XCTAssertEqual(r.error?["param"] as? String, "temperature", "\(r.text)")
        let parts = [#"{"prompt": [1, 2]"#, #", "temperature": -1}"#]
        try c.send("POST /v1/completions HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                   + parts.map { String($0.utf8.count, radix: 16) + "\r\n" + $0 + "\r\n" }.joined() + "0\r\n\r\n")
        r = try c.readResponse()
        XCTAssertEqual(r.error?["param"] as? String, "temperature", "\(r.text)")

        // A body over --max-frame-bytes is refused by its Content-Length, before it is sent.
        let big = try RawHTTP(port: port)
        try big.send("POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n")
        r = try big.readResponse()
        XCTAssertEqual(r.status, 413)
        XCTAssertEqual(r.headers["connection"], "close")
        XCTAssertTrue(big.waitForClose())
        // Header fields over 32 KiB.
        let longHead = try RawHTTP(port: port)
        try longHead.send("GET /v1/models HTTP/1.1\r\nX-Filler: \(String(repeating: "a", count: 40 << 10))\r\n\r\n")
        XCTAssertEqual(try longHead.readResponse().status, 431)
        XCTAssertTrue(longHead.waitForClose())
        // Not HTTP: 400 and closed.
        let garbage = try RawHTTP(port: port)
        try garbage.send("GARBAGE / HTTP/1.1\r\n\r\n")
        r = try garbage.readResponse()
        XCTAssertEqual(r.status, 400)
        XCTAssertEqual(r.error?["code"] as? String, "malformed_http")
        XCTAssertTrue(garbage.waitForClose())
        let badVersion = try RawHTTP(port: port)
        try badVersion.send("GET /v1/models HTTP/9\r\n\r\n")
        XCTAssertEqual(try badVersion.readResponse().status, 400)

        // Everyone else is still served: the keep-alive connection, a new one, a socket client.
        XCTAssertEqual(try c.exchange("GET", "/v1/models").status, 200)
        XCTAssertEqual(try RawHTTP(port: port).exchange("GET", "/v1/models").status, 200)
        XCTAssertEqual(try server.client().hello().modelName, "tiny-untied")
    }

    func testBearerToken() throws {
        let dir = try temporaryDirectory()
        let token = "s3cret-token"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try (token + "\n").write(toFile: dir + "/token", atomically: true, encoding: .utf8)
        chmod(dir + "/token", 0o600)
        let server = try ServerProcess(model: ServerProcess.tiny, dataDir: dir + "/data",
                                       args: ["--http", "127.0.0.1:0", "--auth-token-file", dir + "/token"])
        defer { _ = server.stop() }
        let c = try RawHTTP(port: try server.httpPort())
        var r = try c.exchange("GET", "/v1/models")
        XCTAssertEqual(r.status, 401)
        XCTAssertEqual(r.error?["type"] as? String, "authentication_error")
        XCTAssertEqual(r.error?["code"] as? String, "invalid_api_key")
        XCTAssertEqual(r.headers["www-authenticate"], "Bearer realm=\"selm\"")
        r = try c.exchange("POST", "/v1/completions", body: #"{"prompt": [1]}"#, headers: ["Authorization: Bearer \(token)x"])
        XCTAssertEqual(r.status, 401)
        r = try c.exchange("GET", "/v1/nope", headers: ["Authorization: Bearer wrong"])
        XCTAssertEqual(r.status, 401, "routes are not revealed without the token")
        r = try c.exchange("GET", "/v1/models", headers: ["Authorization: bearer \(token)"])
        XCTAssertEqual(r.status, 200)
        r = try c.exchange("GET", "/health")
        XCTAssertEqual(r.status, 503, "/health needs no token (tiny has no engine: 503)")
    }

    /// HTTP API connections and socket connections share `--max-connections`: past it an HTTP
    /// client gets 503 (and a socket Hello UNAVAILABLE), and a freed place serves either again.
    func testConnectionLimitIsSharedWithTheSocket() throws {
        let dir = try temporaryDirectory()
        let server = try ServerProcess(model: ServerProcess.tiny, dataDir: dir + "/data", args: ["--http", "127.0.0.1:0", "--max-connections", "1"])
        defer { _ = server.stop() }
        let port = try server.httpPort()
        var socket: TestClient? = try server.client()
        _ = try socket!.hello()
        let refused = try RawHTTP(port: port)
        try refused.send(RawHTTP.request("GET", "/v1/models"))
        let r = try refused.readResponse()
        XCTAssertEqual(r.status, 503)
        XCTAssertEqual(r.error?["type"] as? String, "service_unavailable_error")
        XCTAssertTrue(refused.waitForClose())
        socket = nil  // closes it
        // The socket's place is free once the server has seen it close.
        let deadline = Date().addingTimeInterval(30)
        var status = 0
        var http: RawHTTP?
        while status != 200 {
            guard Date() < deadline else { throw TestError("no place for an HTTP client after the socket closed") }
            usleep(20_000)
            http = try RawHTTP(port: port)
            status = try http!.exchange("GET", "/v1/models").status
        }
        let late = try server.client()
        assertError(try late.call(0, .hello(Hello(authToken: "", clientName: "late"))), .unavailable)
    }

    /// A completion over HTTP and a Generate over the socket, in flight at once: both are answered,
    /// by the same engine path (greedy on the same prompt: the same text, the same version).
    func testHTTPAndSocketGenerateAtOnce() throws {
        try requireSmol()
        let dir = try temporaryDirectory()
        let server = try ServerProcess(model: ServerProcess.smol, dataDir: dir + "/data", args: ["--http", "127.0.0.1:0", "--no-learner"])
        defer { _ = server.stop() }
        let socket = try server.client()
        _ = try socket.hello()
        let http = try RawHTTP(port: try server.httpPort())
        let prompt = "The capital of France is"
        try http.send(RawHTTP.request("POST", "/v1/completions", body: """
            {"prompt": "\(prompt)", "max_tokens": 12, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}
            """))
        try socket.send(1, .generate(GenerateRequest(prompts: [.text(prompt)], sampling: SamplingParams(temperature: 0, maxTokens: 12))))
        var sample: SampleResult?
        while true {
            let m = try socket.receive(1)
            if case .sampleResult(let s) = m { sample = s }
            if case .generateDone = m { break }
            if case .error(let e) = m { throw TestError("socket Generate failed: \(e)") }
        }
        let events = try http.readEvents()
        XCTAssertEqual(events.last, "[DONE]")
        let chunks = events.dropLast().compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        let text = chunks.compactMap { ($0["choices"] as? [[String: Any]])?.first?["text"] as? String }.joined()
        XCTAssertEqual(text, sample?.text)
        XCTAssertFalse(text.isEmpty)
        let finish = chunks.first { (($0["choices"] as? [[String: Any]])?.first?["finish_reason"] as? String) != nil }
        XCTAssertEqual((finish?["selm"] as? [String: Any])?["version"] as? Int, Int(sample?.version ?? 0))
        XCTAssertEqual(finish?["system_fingerprint"] as? String, "selm-v\(sample?.version ?? 0)")
        let usage = chunks.last?["usage"] as? [String: Any]
        XCTAssertEqual(usage?["completion_tokens"] as? Int, Int(sample?.completionTokens ?? 0))
    }

    /// A client that disconnects mid-stream: its generation is cancelled (counted as disconnected,
    /// no sequence left running) and the server keeps serving.
    func testClientDisconnectMidStreamCancels() throws {
        try requireSmol()
        let dir = try temporaryDirectory()
        let server = try ServerProcess(model: ServerProcess.smol, dataDir: dir + "/data", metrics: true,
                                       args: ["--http", "127.0.0.1:0", "--no-learner"])
        defer { _ = server.stop() }
        let port = try server.httpPort()
        let doomed = try RawHTTP(port: port)
        try doomed.send(RawHTTP.request("POST", "/v1/completions", body: """
            {"prompt": "Once upon a time", "max_tokens": 4000, "ignore_eos": true, "stream": true}
            """))
        let head = try doomed.readHead()
        XCTAssertEqual(head.status, 200)
        XCTAssertEqual(head.headers["content-type"], "text/event-stream")
        XCTAssertNotNil(try doomed.readEvent(), "a first event")
        doomed.close()

        let series = "selm_requests_total{type=\"http_completions\",outcome=\"disconnected\"}"
        let deadline = Date().addingTimeInterval(60)
        while metricValue(try server.scrapeMetrics(), series) != 1 {
            guard Date() < deadline else { throw TestError("the disconnected stream was not counted:\n\(try server.scrapeMetrics())") }
            usleep(50_000)
        }
        let c = try server.client()
        _ = try c.hello()
        while true {
            guard case .statusReply(let s) = try c.call(1, .status(StatusRequest())) else { throw TestError("no status") }
            if s.runningSequences == 0 && s.waitingRequests == 0 { break }
            guard Date() < deadline else { throw TestError("the cancelled sequence still runs: \(s)") }
            usleep(50_000)
        }
        let r = try RawHTTP(port: port).exchange("POST", "/v1/completions", body: #"{"prompt": "Hello", "max_tokens": 3}"#)
        XCTAssertEqual(r.status, 200, r.text)
        XCTAssertEqual(((r.json?["usage"] as? [String: Any])?["completion_tokens"] as? Int), 3)
    }
}

extension ServerProcess {
    /// The port of `--http 127.0.0.1:0`, from the start-up log.
    func httpPort() throws -> Int {
        guard let r = log.range(of: "listening on http 127.0.0.1:", options: .backwards),
              let port = Int(log[r.upperBound...].prefix { $0.isNumber }) else { throw TestError("no http listener in the log:\n\(log)") }
        return port
    }
}

/// An HTTP/1.1 client over a plain socket: the test writes the request bytes itself.
final class RawHTTP {
    struct Reply {
        var status: Int
        /// Lowercased names.
        var headers: [String: String]
        var body: [UInt8]
        var text: String { String(decoding: body, as: UTF8.self) }
        var json: [String: Any]? { try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any] }
        var error: [String: Any]? { json?["error"] as? [String: Any] }
    }

    private var fd: Int32
    private var buffer: [UInt8] = []
    private var chunked = false

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = UInt16(port).bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { throw TestError("connect to 127.0.0.1:\(port) failed") }
        var tv = timeval(tv_sec: 60, tv_usec: 0)  // a hung server fails the test
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close() }

    func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    static func request(_ method: String, _ path: String, body: String? = nil, headers: [String] = []) -> String {
        var s = "\(method) \(path) HTTP/1.1\r\nHost: test\r\n"
        for h in headers { s += h + "\r\n" }
        if let body { s += "Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n" }
        return s + "\r\n" + (body ?? "")
    }

    func send(_ text: String) throws {
        let bytes = Array(text.utf8)
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw TestError("send failed") }
            sent += n
        }
    }

    func exchange(_ method: String, _ path: String, body: String? = nil, headers: [String] = []) throws -> Reply {
        try send(Self.request(method, path, body: body, headers: headers))
        return try readResponse()
    }

    /// Reads more bytes; false at EOF.
    private func fill() throws -> Bool {
        var b = [UInt8](repeating: 0, count: 65536)
        let n = b.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n == 0 { return false }
        guard n > 0 else { throw TestError("recv failed (errno \(errno)): timed out or reset") }
        buffer += b[0..<n]
        return true
    }

    private func take(_ n: Int) throws -> [UInt8] {
        while buffer.count < n { guard try fill() else { throw TestError("EOF after \(buffer.count) of \(n) bytes") } }
        defer { buffer.removeFirst(n) }
        return Array(buffer[0..<n])
    }

    private func line() throws -> String {
        while true {
            if let i = buffer.firstIndex(of: 10) {
                let l = String(decoding: buffer[0..<i], as: UTF8.self).trimmingCharacters(in: .newlines)
                buffer.removeFirst(i + 1)
                return l
            }
            guard try fill() else { throw TestError("EOF inside a line") }
        }
    }

    func readHead() throws -> Reply {
        let statusLine = try line()
        let parts = statusLine.split(separator: " ")
        guard parts.count >= 2, let status = Int(parts[1]) else { throw TestError("bad status line \(statusLine)") }
        var headers: [String: String] = [:]
        while true {
            let l = try line()
            if l.isEmpty { break }
            if let colon = l.firstIndex(of: ":") {
                headers[l[..<colon].lowercased()] = l[l.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
        }
        chunked = headers["transfer-encoding"] == "chunked"
        return Reply(status: status, headers: headers, body: [])
    }

    /// Reads a whole response (Content-Length or chunked body).
    func readResponse() throws -> Reply {
        var r = try readHead()
        if let n = r.headers["content-length"].flatMap(Int.init) {
            r.body = try take(n)
        } else if chunked {
            while let chunk = try readChunk() { r.body += chunk }
        }
        return r
    }

    /// The next chunk of a chunked body; nil after the last.
    private func readChunk() throws -> [UInt8]? {
        guard let size = Int(try line(), radix: 16) else { throw TestError("bad chunk size") }
        if size == 0 { _ = try line(); return nil }
        let data = try take(size)
        _ = try line()
        return data
    }

    private var pendingEvents = ""

    /// The next server-sent event's data (after `readHead`), nil at the end of the body.
    func readEvent() throws -> String? {
        while true {
            if let r = pendingEvents.range(of: "\n\n") {
                let event = String(pendingEvents[..<r.lowerBound])
                pendingEvents = String(pendingEvents[r.upperBound...])
                return event.hasPrefix("data: ") ? String(event.dropFirst(6)) : event
            }
            guard let chunk = try readChunk() else { return nil }
            pendingEvents += String(decoding: chunk, as: UTF8.self)
        }
    }

    /// Every event of a streamed response.
    func readEvents() throws -> [String] {
        let head = try readHead()
        guard head.status == 200 else { throw TestError("stream answered \(head.status)") }
        var events: [String] = []
        while let e = try readEvent() { events.append(e) }
        return events
    }

    /// True once the server has closed the connection (reads until EOF).
    func waitForClose() -> Bool {
        while true {
            do { if try !fill() { return true } } catch { return false }
        }
    }
}
