// bench-http: the OpenAI-compatible HTTP API against the socket protocol on one `selm serve`
// (release, learner off): CLIENTS connections each sending 1-token completions back to back, the
// two protocols in alternating phases of a few rounds, so both see the same machine; request rate,
// p50 and p99 latency of each and their ratio.
import Foundation
import Wire

#if canImport(Glibc)
import Glibc
#endif

/// The one request both protocols send: a short text prompt (tokenized by the server, no chat
/// template), greedy, one completion token.
private let httpBenchPrompt = "The capital of France is"

/// A keep-alive HTTP/1.1 client on one TCP connection, for `POST` requests with a JSON body.
private final class HTTPClient {
    let fd: Int32
    private var buffer = [UInt8]()
    private var scratch = [UInt8](repeating: 0, count: 1 << 16)

    init(port: Int, timeout: Double = 600) throws {
        fd = try connectLoopback(port: port, timeout: timeout)
    }

    deinit { Glibc.close(fd) }

    /// Sends `POST path` with `body` and reads the whole response: (status, body).
    func post(_ path: String, _ body: [UInt8]) throws -> (Int, [UInt8]) {
        let head = "POST \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: \(body.count)\r\n\r\n"
        let request = Array(head.utf8) + body
        var off = 0
        while off < request.count {
            let n = request.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + off, request.count - off, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw LoadFailure(code: "DISCONNECTED", detail: "send: \(String(cString: strerror(errno)))") }
            off += n
        }
        // Status line and header fields, then Content-Length bytes (the API never chunks a non-streamed reply).
        var headerEnd: Int? = nil
        while true {
            if headerEnd == nil, let e = Self.find(buffer, [13, 10, 13, 10]) { headerEnd = e + 4 }
            if let h = headerEnd {
                let header = String(decoding: buffer[0..<h], as: UTF8.self)
                let status = Int(header.split(separator: " ", maxSplits: 2).dropFirst().first ?? "") ?? 0
                guard let lengthLine = header.split(separator: "\r\n").first(where: { $0.lowercased().hasPrefix("content-length:") }),
                      let length = Int(lengthLine.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) else {
                    throw LoadFailure(code: "PROTOCOL", detail: "a response without Content-Length: \(header)")
                }
                if buffer.count >= h + length {
                    let body = Array(buffer[h..<(h + length)])
                    buffer.removeFirst(h + length)
                    return (status, body)
                }
            }
            let n = scratch.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { throw LoadFailure(code: "TIMEOUT", detail: "no reply") }
            guard n > 0 else { throw LoadFailure(code: "DISCONNECTED", detail: n == 0 ? "closed by the server" : String(cString: strerror(errno))) }
            buffer += scratch[0..<n]
        }
    }

    private static func find(_ haystack: [UInt8], _ needle: [UInt8]) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        for i in 0...(haystack.count - needle.count) where haystack[i] == needle[0] {
            if Array(haystack[i..<(i + needle.count)]) == needle { return i }
        }
        return nil
    }
}

private enum BenchProtocol: String {
    case http = "OpenAI HTTP (POST /v1/completions)"
    case socket = "socket protocol (Generate)"
}

/// Latencies and failures of one phase, shared by its client threads.
private final class PhaseStats: @unchecked Sendable {
    private let lock = NSLock()
    private(set) var latencies: [Double] = []
    private(set) var failures: [String: Int] = [:]
    private(set) var example: String? = nil
    func ok(_ s: Double) { lock.lock(); latencies.append(s); lock.unlock() }
    func fail(_ e: Error) {
        let f = e as? LoadFailure ?? LoadFailure(code: "OTHER", detail: "\(e)")
        lock.lock()
        failures[f.code, default: 0] += 1
        if example == nil { example = f.description }
        lock.unlock()
    }
}

/// `clients` threads, one connection each, sending the 1-token completion back to back over
/// `proto` for `seconds`; a failed connection is replaced. Every thread connects (and says Hello)
/// before the clock starts.
private func runPhase(_ proto: BenchProtocol, tcpPort: Int, httpPort: Int, clients: Int, seconds: Double) -> (PhaseStats, Double) {
    let stats = PhaseStats()
    let httpBody = Array(#"{"prompt": "\#(httpBenchPrompt)", "max_tokens": 1, "temperature": 0}"#.utf8)
    let request = GenerateRequest(prompts: [.text(httpBenchPrompt)], sampling: SamplingParams(temperature: 0, maxTokens: 1))
    let ready = DispatchGroup(), done = DispatchGroup()
    let start = DispatchSemaphore(value: 0)
    let deadline = Shared(Date.distantFuture)
    for _ in 0..<clients {
        ready.enter()
        done.enter()
        let t = Thread {
            defer { done.leave() }
            var http: HTTPClient? = nil
            var frames: FrameClient? = nil
            func connect() throws {
                switch proto {
                case .http: if http == nil { http = try HTTPClient(port: httpPort) }
                case .socket: if frames == nil { frames = try FrameClient(port: tcpPort, timeout: 600) }
                }
            }
            do { try connect() } catch { stats.fail(error) }
            ready.leave()
            start.wait()
            let end = deadline.value
            while Date() < end {
                do {
                    try connect()
                    let t0 = Date()
                    switch proto {
                    case .http:
                        let (status, body) = try http!.post("/v1/completions", httpBody)
                        guard status == 200 else {
                            throw LoadFailure(code: "HTTP_\(status)", detail: String(decoding: body.prefix(300), as: UTF8.self))
                        }
                    case .socket:
                        let s = try frames!.generate(request)
                        guard s.count == 1 else { throw LoadFailure(code: "PROTOCOL", detail: "\(s.count) samples for n = 1") }
                    }
                    stats.ok(Date().timeIntervalSince(t0))
                } catch {
                    stats.fail(error)
                    if let f = error as? LoadFailure, ["DISCONNECTED", "TIMEOUT", "PROTOCOL"].contains(f.code) { http = nil; frames = nil }
                }
            }
        }
        t.stackSize = 512 << 10
        t.start()
    }
    ready.wait()
    let t0 = Date()
    deadline.value = t0.addingTimeInterval(seconds)
    for _ in 0..<clients { start.signal() }
    done.wait()
    return (stats, Date().timeIntervalSince(t0))
}

/// A value behind a lock.
private final class Shared<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var _value: T
    init(_ v: T) { _value = v }
    var value: T {
        get { lock.lock(); defer { lock.unlock() }; return _value }
        set { lock.lock(); _value = newValue; lock.unlock() }
    }
}

/// `make bench-http`.
func benchHTTP(_ modelPath: String) throws {
    let selm = option("--selm", ".build/release/selm")
    let clients = Int(option("--clients", "64")) ?? 64
    let seconds = Double(option("--seconds", "10")) ?? 10
    let rounds = Int(option("--rounds", "3")) ?? 3
    print("== bench-http: 1-token completions at \(clients) connections, OpenAI HTTP API vs socket protocol, "
          + "\(rounds) rounds × \(Int(seconds)) s per protocol, alternating; \(selm) serve --model \(modelPath) (learner off)")
    let dataDir = FileManager.default.temporaryDirectory.appendingPathComponent("selm-bench-http-\(getpid())").path
    let server = try ServeChild(selm: selm, model: modelPath, dataDir: dataDir, args: [
        "--no-learner", "--http", "127.0.0.1:0", "--max-connections", String(clients + 64),
    ])
    defer {
        server.stop()
        try? FileManager.default.removeItem(atPath: dataDir)
        try? FileManager.default.removeItem(atPath: server.logPath)
    }
    // ServeChild returns once the TCP listener is logged; the HTTP one is logged beside it.
    guard let r = server.log.range(of: "listening on http 127.0.0.1:"),
          let httpPort = Int(server.log[r.upperBound...].prefix { $0.isNumber }) else {
        throw LoadFailure(code: "SERVER", detail: "no HTTP listener in the log \(server.logPath)")
    }
    print("server pid \(server.pid): socket 127.0.0.1:\(server.port), HTTP 127.0.0.1:\(httpPort); prompt \"\(httpBenchPrompt)\", "
          + "max_tokens 1, temperature 0")

    // Both answer the same: one request each, the completion's text compared.
    let probe = try FrameClient(port: server.port)
    let socketText = try probe.generate(GenerateRequest(prompts: [.text(httpBenchPrompt)], sampling: SamplingParams(temperature: 0, maxTokens: 1)))
        .first?.text ?? ""
    let (status, body) = try HTTPClient(port: httpPort).post("/v1/completions",
                                                             Array(#"{"prompt": "\#(httpBenchPrompt)", "max_tokens": 1, "temperature": 0}"#.utf8))
    let reply = (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any]
    let httpText = ((reply?["choices"] as? [[String: Any]])?.first?["text"] as? String)
    guard status == 200, httpText == socketText else {
        throw LoadFailure(code: "SETUP", detail: "HTTP \(status) \(String(decoding: body, as: UTF8.self)) does not carry the socket's completion \"\(socketText)\"")
    }
    print("both complete it with \"\(socketText)\"")

    let warm = min(3, seconds)
    _ = runPhase(.http, tcpPort: server.port, httpPort: httpPort, clients: clients, seconds: warm)
    _ = runPhase(.socket, tcpPort: server.port, httpPort: httpPort, clients: clients, seconds: warm)

    var all: [BenchProtocol: [Double]] = [.http: [], .socket: []]
    var wall: [BenchProtocol: Double] = [.http: 0, .socket: 0]
    var failures: [BenchProtocol: [String: Int]] = [.http: [:], .socket: [:]]
    var examples: [String] = []
    func row(_ name: String, _ n: Int, _ w: Double, _ xs: [Double], _ f: [String: Int]) -> String {
        let ftext = f.isEmpty ? "0" : f.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
        return "  " + name.padding(toLength: 44, withPad: " ", startingAt: 0)
            + String(format: "%7d  %8.1f/s  %8.1f ms  %8.1f ms   ", n, Double(n) / w, quantile(xs, 0.5) * 1000, quantile(xs, 0.99) * 1000) + ftext
    }
    print("  " + "round: protocol".padding(toLength: 44, withPad: " ", startingAt: 0)
          + "  count        rate          p50          p99   failures")
    for round in 1...rounds {
        // Alternate which goes first, so neither always follows the other.
        for proto in round % 2 == 1 ? [BenchProtocol.http, .socket] : [.socket, .http] {
            let (stats, w) = runPhase(proto, tcpPort: server.port, httpPort: httpPort, clients: clients, seconds: seconds)
            all[proto]! += stats.latencies
            wall[proto]! += w
            failures[proto]!.merge(stats.failures, uniquingKeysWith: +)
            if let e = stats.example { examples.append("\(proto.rawValue): \(e)") }
            print(row("\(round): \(proto.rawValue)", stats.latencies.count, w, stats.latencies, stats.failures))
        }
    }
    print("  all rounds:")
    for proto in [BenchProtocol.http, .socket] {
        print(row(proto.rawValue, all[proto]!.count, wall[proto]!, all[proto]!, failures[proto]!))
    }
    for e in examples.prefix(4) { print("    e.g. \(e)") }
    let rate = { (p: BenchProtocol) in Double(all[p]!.count) / wall[p]! }
    print(String(format: "  HTTP / socket: rate %.2f×, p50 %.2f×, p99 %.2f×",
                 rate(.http) / rate(.socket), quantile(all[.http]!, 0.5) / quantile(all[.socket]!, 0.5),
                 quantile(all[.http]!, 0.99) / quantile(all[.socket]!, 0.99)))
    let exit = server.stop()
    print("server exit status after SIGTERM: \(exit) (goal: 0)")
}
