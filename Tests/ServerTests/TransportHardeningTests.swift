import Foundation
import Wire
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// The transport and protocol layer under hostile or unlucky conditions (issue 10): listen failures,
/// connections that never say Hello, huge texts, strings with NUL or ill-formed UTF-8, what replies
/// reveal about the server's files, the metrics endpoint's auth and its counters.
final class TransportHardeningTests: XCTestCase {
    // MARK: Listen failures (defect 3)

    /// Every address the server cannot use ends `selm serve` with exit status 1 and one line naming
    /// the address — never a crash.
    func testListenFailuresExitOneWithOneLineNamingTheAddress() throws {
        let dir = try temporaryDirectory()
        let busy = try ListeningSocket()
        let missing = "/missing-\(UUID().uuidString.prefix(8))/dir/sock"
        let cases: [(name: String, args: [String], address: String)] = [
            ("busy TCP port", ["--address", "127.0.0.1:\(busy.port)"], "127.0.0.1:\(busy.port)"),
            ("--address nonsense", ["--address", "nonsense"], "nonsense"),
            ("busy metrics port", ["--address", "127.0.0.1:0", "--metrics", "127.0.0.1:\(busy.port)"], "127.0.0.1:\(busy.port)"),
            ("--unix in a missing folder", ["--address", "127.0.0.1:0", "--unix", missing], missing),
        ]
        for (i, c) in cases.enumerated() {
            let (status, stderr) = try runSelm(["serve", "--model", ServerProcess.tiny, "--data-dir", dir + "/data\(i)", "--no-learner"] + c.args)
            XCTAssertEqual(status, 1, "\(c.name): exit status \(status)\n\(stderr)")
            XCTAssertFalse(stderr.contains("crashed"), "\(c.name): crashed\n\(stderr)")
            let naming = stderr.split(separator: "\n").filter { $0.contains(c.address) }
            XCTAssertEqual(naming.count, 1, "\(c.name): expected one line naming \(c.address):\n\(stderr)")
        }
    }

    // MARK: Connections before Hello (defect 4)

    /// Hundreds of connections that never send Hello cannot lock out a client with the token: the
    /// pool of waiting connections (max(64, --max-connections) = 256) is full, newcomers are refused
    /// (UNAVAILABLE) while every waiting one is younger than 1 s, then the oldest silent one is
    /// closed (UNAUTHENTICATED) to admit the client, which retries as a client should.
    func testSilentConnectionsCannotLockOutAClientWithTheToken() throws {
        let dir = try temporaryDirectory()
        let token = try writeToken(dir)
        // A long Hello deadline: only the pool may close connections here, however slow the machine.
        let server = try ServerProcess(model: ServerProcess.tiny, dataDir: dir + "/data", metrics: true,
                                       args: ["--auth-token-file", dir + "/token", "--no-learner", "--hello-timeout", "600"])
        var silent: [TestClient] = []
        for _ in 0..<300 { silent.append(try server.client()) }
        // Retry until admitted (each refused attempt is answered UNAVAILABLE and closed).
        var refusedAttempts = 0
        var good: TestClient?
        let deadline = Date().addingTimeInterval(60)
        while good == nil && Date() < deadline {
            let c = try server.client()
            if case .helloReply = try c.call(0, .hello(Hello(authToken: token))) { good = c; break }
            refusedAttempts += 1
            usleep(50_000)
        }
        guard let good else { return XCTFail("the client with the token was never admitted:\n\(server.log)") }
        guard case .statusReply(let st) = try good.call(1, .status(StatusRequest())) else { return XCTFail() }
        XCTAssertLessThanOrEqual(st.connections, 257, "at most the pre-auth pool (256) plus the authenticated client")
        // The first silent connection was closed to make room, with a reason.
        let first = silent[0]
        let m = try first.receiveAny()
        if let m { assertError(m.body, .unauthenticated) } else { XCTFail("closed without an error") }
        XCTAssertTrue(first.waitForClose())
        // Connections beyond the pool were refused on arrival (they were all younger than 1 s).
        let last = silent[299]
        if let m = try last.receiveAny() { assertError(m.body, .unavailable) } else { XCTFail("refused without an error") }
        XCTAssertTrue(last.waitForClose())
        // The newest connection admitted to the pool is still open (nothing was sent to it).
        silent[255].setTimeout(0.3)
        XCTAssertThrowsError(try silent[255].receiveAny(), "the newest waiting connection was closed or answered")
        let text = try server.scrapeMetrics(token: token)
        XCTAssertEqual(metricValue(text, "selm_connections_dropped_total{reason=\"pre_auth_evicted\"}"), 1)
        XCTAssertEqual(metricValue(text, "selm_connections_dropped_total{reason=\"pre_auth_full\"}"), Double(300 - 256 + refusedAttempts))
        silent.removeAll()
        XCTAssertEqual(server.stop(), 0, server.log)
    }

    /// A burst of clients connecting at once (more than a quarter of --max-connections) all get to say
    /// Hello: none is closed to make room for the others before its Hello was read.
    func testABurstOfClientsConnectingAtOnceIsAllAdmitted() throws {
        let dir = try temporaryDirectory()
        let server = try ServerProcess(model: ServerProcess.tiny, dataDir: dir + "/data", metrics: true,
                                       args: ["--no-learner", "--max-connections", "128"])
        let clients = try (0..<120).map { _ in try server.client() }
        for (i, c) in clients.enumerated() {
            guard case .helloReply = try c.call(UInt64(i), .hello(Hello())) else { return XCTFail("client \(i) was not admitted") }
        }
        let text = try server.scrapeMetrics()
        XCTAssertEqual(metricValue(text, "selm_connections_dropped_total{reason=\"pre_auth_evicted\"}"), 0)
        XCTAssertEqual(metricValue(text, "selm_connections_dropped_total{reason=\"pre_auth_full\"}"), 0)
        XCTAssertEqual(server.stop(), 0, server.log)
    }

    /// `--max-connections` counts authenticated connections: one Hello too many is UNAVAILABLE.
    func testMaxConnectionsLimitsAuthenticatedClients() throws {
        let dir = try temporaryDirectory()
        let server = try ServerProcess(model: ServerProcess.tiny, dataDir: dir + "/data", args: ["--max-connections", "2", "--no-learner"])
        let a = try server.client(), b = try server.client(), c = try server.client()
        _ = try a.hello()
        _ = try b.hello()
        assertError(try c.call(0, .hello(Hello())), .unavailable)
        XCTAssertTrue(c.waitForClose())
        guard case .statusReply = try a.call(1, .status(StatusRequest())) else { return XCTFail() }
        a.close()
        // A slot freed: a new client gets in.
        let deadline = Date().addingTimeInterval(30)
        var admitted = false
        while !admitted && Date() < deadline {
            let d = try server.client()
            if case .helloReply = try d.call(0, .hello(Hello())) { admitted = true } else { usleep(50_000) }
        }
        XCTAssertTrue(admitted)
        XCTAssertEqual(server.stop(), 0, server.log)
    }

    /// A connection that sends nothing is closed after `--hello-timeout` seconds with a reason; an
    /// authenticated one stays.
    func testASilentConnectionIsClosedAfterTheHelloTimeout() throws {
        let dir = try temporaryDirectory()
        let server = try ServerProcess(model: ServerProcess.tiny, dataDir: dir + "/data", metrics: true,
                                       args: ["--hello-timeout", "1", "--no-learner"])
        let silent = try server.client()
        let talker = try server.client()
        _ = try talker.hello()
        guard let m = try silent.receiveAny() else { return XCTFail("closed without an error") }
        assertError(m.body, .unauthenticated)
        if case .error(let e) = m.body { XCTAssertTrue(e.message.contains("no Hello within 1 s"), e.message) }
        XCTAssertTrue(silent.waitForClose())
        guard case .statusReply(let st) = try talker.call(1, .status(StatusRequest())) else { return XCTFail() }
        XCTAssertEqual(st.connections, 1)
        XCTAssertEqual(metricValue(try server.scrapeMetrics(), "selm_connections_dropped_total{reason=\"hello_timeout\"}"), 1)
        XCTAssertEqual(server.stop(), 0, server.log)
    }

    /// Before Hello a frame over 64 KiB is FRAME_TOO_LARGE and closes the connection; after Hello the
    /// full limit applies, also to a big request sent in the same write as the Hello.
    func testThePreAuthFrameLimit() throws {
        try requireSmol()
        let dir = try temporaryDirectory()
        let server = try ServerProcess(model: ServerProcess.smol, dataDir: dir + "/data", args: ["--no-learner"])
        let c = try server.client()
        let body = Frame.encodeBody(Envelope(id: 3, body: .tokenize(TokenizeRequest(input: .text(String(repeating: "hello ", count: (1 << 20) / 6))))))
        XCTAssertGreaterThan(body.count, 1 << 19)
        let n = UInt32(body.count)
        // The header and the start of the body (the server decides on the header).
        try c.sendRaw([UInt8(n >> 24), UInt8((n >> 16) & 0xFF), UInt8((n >> 8) & 0xFF), UInt8(n & 0xFF)] + body.prefix(1000))
        guard let m = try c.receiveAny() else { return XCTFail("closed without an error") }
        assertError(m.body, .frameTooLarge)
        XCTAssertTrue(c.waitForClose())

        // Hello and a 300 KB request in one write: both served.
        let p = try server.client()
        let text = String(repeating: "hello ", count: 50_000)
        try p.sendRaw(try Frame.encode(Envelope(id: 0, body: .hello(Hello()))) + Frame.encode(Envelope(id: 1, body: .tokenize(TokenizeRequest(input: .text(text))))))
        guard case .helloReply = try p.receive(0) else { return XCTFail() }
        guard case .tokenizeReply(let r) = try p.receive(1) else { return XCTFail() }
        XCTAssertEqual(r.ids, try sharedSmolTokenizer().encode(text, parseSpecial: false).map { UInt32($0) })
        XCTAssertEqual(server.stop(), 0, server.log)
    }

    // MARK: Huge texts and the tokenizer pool (defect 5)

    /// A 10 MB one-word prompt is refused by its byte length, before tokenizing, naming the field;
    /// eight of them in flight do not hold up another connection's Tokenize.
    func testHugeTextsAreRefusedByTheirLengthBeforeTokenizing() throws {
        try requireSmol()
        let dir = try temporaryDirectory()
        let server = try ServerProcess(model: ServerProcess.smol, dataDir: dir + "/data", metrics: true, args: ["--no-learner"])
        let huge = String(repeating: "a", count: 10_000_000)
        let a = try server.client()
        _ = try a.hello()
        for i in 0..<8 {
            try a.send(UInt64(10 + i), .generate(GenerateRequest(prompts: [.text(huge)], sampling: SamplingParams(maxTokens: 1))))
        }
        _ = try a.call(1, .status(StatusRequest()))  // every huge request has been read
        let b = try server.client()
        _ = try b.hello()
        guard case .tokenizeReply(let t) = try b.call(2, .tokenize(TokenizeRequest(input: .text("hello")))) else { return XCTFail() }
        XCTAssertEqual(t.ids.count, 1)
        for i in 0..<8 { assertError(try a.receive(UInt64(10 + i)), .outOfRange, field: "prompts[0].text") }
        // The other text fields.
        assertError(try a.call(20, .tokenize(TokenizeRequest(input: .text(huge)))), .outOfRange, field: "text")
        assertError(try a.call(21, .generate(GenerateRequest(prompts: [.ids([1]), .messages([ChatMessage(role: "user", content: huge)])]))),
                    .outOfRange, field: "prompts[1].messages")
        assertError(try a.call(22, .score(ScoreRequest(items: [ScoreItem(prompt: .ids([1]), continuation: .text(huge))]))),
                    .outOfRange, field: "items[0].continuation.text")
        assertError(try a.call(23, .submitPreferences(SubmitPreferences(rows: [
            PreferenceRow(prompt: .text("hi"), chosen: .text("ok"), rejected: .text(huge))]))), .outOfRange, field: "rows[0].rejected.text")
        // Only B's "hello" (5 bytes) reached the tokenizer: the preference row was refused as a whole
        // before its "hi" and "ok" were tokenized.
        XCTAssertEqual(metricValue(try server.scrapeMetrics(), "selm_tokenizer_input_bytes_total"), 5)
        XCTAssertEqual(server.stop(), 0, server.log)
    }

    /// One connection with many slow tokenizer jobs holds at most part of the thread pool: another
    /// connection's Tokenize is answered before most of them.
    func testOneConnectionCannotHoldTheWholeTokenizerPool() throws {
        try requireSmol()
        let dir = try temporaryDirectory()
        let server = try ServerProcess(model: ServerProcess.smol, dataDir: dir + "/data", args: ["--no-learner"])
        let a = try server.client()
        _ = try a.hello()
        let word = String(repeating: "a", count: 100_000)  // one long word: slow BPE, under every bound
        let jobs = 12
        for i in 0..<jobs { try a.send(UInt64(10 + i), .tokenize(TokenizeRequest(input: .text(word)))) }
        _ = try a.call(1, .status(StatusRequest()))  // all of them have been read and queued
        let b = try server.client()
        _ = try b.hello()
        guard case .tokenizeReply = try b.call(2, .tokenize(TokenizeRequest(input: .text("hello")))) else { return XCTFail() }
        // How many of A's replies had arrived by then (whatever is readable now).
        a.setTimeout(0.2)
        var before = 0
        while (try? a.receiveAny()) != nil { before += 1 }
        XCTAssertLessThan(before, jobs / 2, "B's Tokenize waited behind \(before) of A's \(jobs) jobs")
        a.close()
        XCTAssertEqual(server.stop(), 0, server.log)
    }

    // MARK: Strings (defect 7)

    /// A string with an embedded NUL or ill-formed UTF-8 is refused naming the field, never cut.
    func testStringsWithNULOrIllFormedUTF8AreRefused() throws {
        let dir = try temporaryDirectory()
        let token = try writeToken(dir)
        let data = dir + "/data"
        let server = try ServerProcess(model: ServerProcess.tiny, dataDir: data, args: ["--auth-token-file", dir + "/token"])
        let c = try server.client()
        let r = try c.call(0, .hello(Hello(authToken: token + "\0junk")))
        guard let e = errorOf(r) else { return }
        XCTAssertTrue([ErrorCode.unauthenticated, .invalidArgument].contains(e.code), "\(e)")
        XCTAssertEqual(e.field, "auth_token")
        assertError(try c.call(1, .status(StatusRequest())), .unauthenticated)
        let c2 = try server.client()
        _ = try c2.hello(token: token)
        assertError(try c2.call(2, .saveCheckpoint(SaveCheckpoint(name: "ckpt\0junk"))), .invalidArgument, field: "name")
        XCTAssertFalse(FileManager.default.fileExists(atPath: data + "/checkpoints/ckpt"), "a checkpoint was saved under the cut name")
        assertError(try c2.call(3, .generate(GenerateRequest(prompts: [.ids([1])], stop: ["a\0b"]))), .invalidArgument, field: "stop[0]")
        assertError(try c2.call(4, .tokenize(TokenizeRequest(input: .messages([ChatMessage(role: "us\0er", content: "x")])))),
                    .invalidArgument, field: "messages.messages[0].role")
        // tokenize { text: "a\xffb" }, id 5.
        try c2.sendFrame(body: [0x08, 0x05, 0x72, 0x05, 0x0a, 0x03, 0x61, 0xff, 0x62])
        assertError(try c2.receive(5), .invalidArgument, field: "text")
        guard case .saveCheckpointReply(let s) = try c2.call(6, .saveCheckpoint(SaveCheckpoint(name: "ckpt"))) else { return XCTFail() }
        XCTAssertEqual(s.path, "checkpoints/ckpt")
        XCTAssertEqual(server.stop(), 0, server.log)
    }

    // MARK: What replies reveal (defect 9)

    /// HelloReply names the model file only; error messages name data-directory paths relatively
    /// (the server's log keeps the full path).
    func testRepliesCarryNoAbsoluteServerPaths() throws {
        let dir = try temporaryDirectory()
        let data = dir + "/data"
        let server = try ServerProcess(model: ServerProcess.tiny, dataDir: data)
        let c = try server.client()
        let h = try c.hello()
        XCTAssertEqual(h.modelPath, "tiny-untied")
        XCTAssertEqual(h.modelName, "tiny-untied")
        // A checkpoint directory whose weights file is garbage: the loader's error names the file.
        try FileManager.default.createDirectory(atPath: data + "/bad", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: ServerProcess.tiny + "/config.json", toPath: data + "/bad/config.json")
        XCTAssertTrue(FileManager.default.createFile(atPath: data + "/bad/model.safetensors", contents: Data(repeating: 0x41, count: 64)))
        let r = try c.call(1, .refreshWeights(RefreshWeights(checkpoint: "bad")))
        guard let e = errorOf(r) else { return }
        XCTAssertEqual(e.code, .invalidArgument)
        XCTAssertFalse(e.message.contains(dir) || e.message.contains(realPath(dir)), "the reply names an absolute server path: \(e.message)")
        XCTAssertTrue(e.message.contains("bad/model.safetensors"), e.message)
        XCTAssertEqual(server.stop(), 0, server.log)
        XCTAssertTrue(server.log.contains(data + "/bad/model.safetensors") || server.log.contains(realPath(data) + "/bad/model.safetensors"), server.log)
    }

    /// With an auth token, `/metrics` wants `Authorization: Bearer <token>`.
    func testMetricsNeedTheBearerTokenWhenAuthIsOn() throws {
        let dir = try temporaryDirectory()
        let token = try writeToken(dir)
        let server = try ServerProcess(model: ServerProcess.tiny, dataDir: dir + "/data", metrics: true,
                                       args: ["--auth-token-file", dir + "/token", "--no-learner"])
        XCTAssertTrue(try server.scrapeMetrics().hasPrefix("HTTP/1.1 401 "))
        XCTAssertTrue(try server.scrapeMetrics(token: "nope").hasPrefix("HTTP/1.1 401 "))
        XCTAssertTrue(try server.scrapeMetrics(token: token + "x").hasPrefix("HTTP/1.1 401 "))
        let ok = try server.scrapeMetrics(token: token)
        XCTAssertTrue(ok.hasPrefix("HTTP/1.1 200 OK\r\n"), ok)
        XCTAssertEqual(metricValue(ok, "selm_connections"), 0)
        XCTAssertEqual(server.stop(), 0, server.log)
    }

    // MARK: Counters (defect 11)

    /// Server-initiated disconnects are counted by reason; requests refused while decoding are
    /// counted under their type when the body's field number can be read.
    func testDroppedConnectionsAndRefusedRequestsAreCountedExactly() throws {
        let dir = try temporaryDirectory()
        let token = try writeToken(dir)
        let server = try ServerProcess(model: ServerProcess.tiny, dataDir: dir + "/data", metrics: true,
                                       args: ["--auth-token-file", dir + "/token", "--no-learner"])
        for _ in 0..<5 {
            let c = try server.client()
            _ = try c.hello(token: token)
            try c.sendRaw([0x02, 0x00, 0x00, 0x00])  // 32 MiB announced
            assertError(try c.receive(0), .frameTooLarge)
            XCTAssertTrue(c.waitForClose())
        }
        for _ in 0..<2 {
            let w = try server.client()
            assertError(try w.call(0, .hello(Hello(authToken: "wrong"))), .unauthenticated)
            XCTAssertTrue(w.waitForClose())
        }
        let c = try server.client()
        _ = try c.hello(token: token)
        for i in 0..<3 {
            assertError(try c.call(UInt64(30 + i), .generate(GenerateRequest(prompts: [.ids([1])], n: 65))), .invalidArgument, field: "n")
        }
        for i in 0..<2 {
            try c.sendFrame(body: [0x08, UInt8(40 + i), 0x72, 0x0a, 0x0a, 0x01])  // tokenize, truncated
            assertError(try c.receive(UInt64(40 + i)), .malformed)
        }
        try c.sendFrame(body: [0x08, 0x32, 0xBA, 0x02, 0x00])  // id 50, unknown body field 39
        assertError(try c.receive(50), .unknownBody)
        _ = try c.call(51, .status(StatusRequest()))
        let text = try server.scrapeMetrics(token: token)
        XCTAssertEqual(metricValue(text, "selm_connections_dropped_total{reason=\"frame_too_large\"}"), 5, text)
        XCTAssertEqual(metricValue(text, "selm_connections_dropped_total{reason=\"auth_failed\"}"), 2, text)
        XCTAssertEqual(metricValue(text, "selm_connections_dropped_total{reason=\"output_cap\"}"), 0, text)
        XCTAssertEqual(metricValue(text, "selm_requests_total{type=\"generate\",outcome=\"invalid_argument\"}"), 3, text)
        XCTAssertEqual(metricValue(text, "selm_requests_total{type=\"tokenize\",outcome=\"malformed\"}"), 2, text)
        XCTAssertEqual(metricValue(text, "selm_requests_total{type=\"unknown\",outcome=\"unknown_body\"}"), 1, text)
        XCTAssertEqual(metricValue(text, "selm_requests_total{type=\"hello\",outcome=\"ok\"}"), 6, text)
        XCTAssertEqual(metricValue(text, "selm_requests_total{type=\"hello\",outcome=\"unauthenticated\"}"), 2, text)
        XCTAssertEqual(metricValue(text, "selm_connections_accepted_total"), 8, text)
        XCTAssertEqual(server.stop(), 0, server.log)
    }
}

// MARK: - Helpers

/// A TCP socket listening on 127.0.0.1 at a free port (closed on deinit): a busy address.
private final class ListeningSocket {
    let fd: Int32
    let port: Int

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.fd = fd
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, len) == 0 && listen(fd, 1) == 0 && getsockname(fd, $0, &len) == 0
            }
        }
        guard ok else { Glibc.close(fd); throw TestError("cannot bind a test socket") }
        port = Int(UInt16(bigEndian: addr.sin_port))
    }

    deinit { Glibc.close(fd) }
}

/// Runs the selm binary to completion (killed after 120 s); its exit status and stderr.
private func runSelm(_ args: [String]) throws -> (Int32, String) {
    let p = Process()
    p.executableURL = ServerProcess.selm
    p.arguments = args
    let err = Pipe()
    p.standardError = err
    p.standardOutput = FileHandle.nullDevice
    try p.run()
    let killer = DispatchWorkItem { if p.isRunning { kill(p.processIdentifier, SIGKILL) } }
    DispatchQueue.global().asyncAfter(deadline: .now() + 120, execute: killer)
    let data = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    killer.cancel()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// Writes a fresh token to `dir/token` (mode 0600) and returns it.
private func writeToken(_ dir: String) throws -> String {
    let token = "t0k3n-\(UUID().uuidString)"
    try (token + "\n").write(toFile: dir + "/token", atomically: true, encoding: .utf8)
    chmod(dir + "/token", 0o600)
    return token
}

private func realPath(_ p: String) -> String {
    guard let r = Glibc.realpath(p, nil) else { return p }
    defer { free(r) }
    return String(cString: r)
}

extension TestClient {
    /// Closes the socket now (the server sees EOF).
    func close() { shutdown(fd, Int32(SHUT_RDWR)) }
}

extension ServerProcess {
    /// GET /metrics with `Authorization: Bearer token` (nil: no header); the whole HTTP response.
    func scrapeMetrics(token: String?) throws -> String {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { Glibc.close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = UInt16(metricsPort).bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { throw TestError("metrics connect failed") }
        let auth = token.map { "Authorization: Bearer \($0)\r\n" } ?? ""
        let req = Array("GET /metrics HTTP/1.1\r\nHost: x\r\n\(auth)\r\n".utf8)
        _ = req.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, 0) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }
}
