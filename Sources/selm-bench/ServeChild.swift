// A `selm serve` child process and a blocking frame client, for the benchmarks that drive the real
// server binary over TCP (bench-load, soak-restarts).
import Foundation
import Wire

#if canImport(Glibc)
import Glibc
#endif

/// A failure of a benchmark request, by kind: a server error code ("RESOURCE_EXHAUSTED"), or
/// "DISCONNECTED" / "TIMEOUT" / "PROTOCOL" for the connection.
struct LoadFailure: Error, CustomStringConvertible {
    var code: String
    var detail: String
    var description: String { "\(code): \(detail)" }

    static func server(_ e: ErrorReply) -> LoadFailure { LoadFailure(code: codeName(e.code), detail: e.message) }

    static func codeName(_ c: ErrorCode) -> String { c.protoName }
}

/// `selm serve --address 127.0.0.1:0 --data-dir DATA ARGS`, its stderr in DATA.log.
final class ServeChild {
    let process = Process()
    let logPath: String
    /// Where this run's output starts in the log (runs of one data directory share it).
    let startOffset: Int
    private(set) var port = 0

    /// Starts the server and waits (up to `timeout` s) until it listens.
    init(selm: String, model: String, dataDir: String, args: [String], timeout: Double = 300) throws {
        logPath = dataDir + ".log"
        if !FileManager.default.fileExists(atPath: logPath) { _ = FileManager.default.createFile(atPath: logPath, contents: nil) }
        process.executableURL = URL(fileURLWithPath: selm)
        process.arguments = ["serve", "--model", model, "--address", "127.0.0.1:0", "--data-dir", dataDir] + args
        let log = FileHandle(forWritingAtPath: logPath)!
        startOffset = Int(log.seekToEndOfFile())
        process.standardError = log
        process.standardOutput = log
        try process.run()
        let deadline = Date().addingTimeInterval(timeout)
        let marker = "listening on tcp 127.0.0.1:"
        while Date() < deadline {
            let text = self.log(since: startOffset)
            if let r = text.range(of: marker), let p = Int(text[r.upperBound...].prefix { $0.isNumber }) {
                port = p
                return
            }
            if !process.isRunning {
                throw LoadFailure(code: "SERVER", detail: "selm serve exited (\(process.terminationStatus)); log \(logPath):\n\(lastLines(20))")
            }
            usleep(50_000)
        }
        process.terminate()
        throw LoadFailure(code: "SERVER", detail: "selm serve did not listen within \(Int(timeout)) s; log \(logPath)")
    }

    var pid: Int32 { process.processIdentifier }

    /// This run's output so far.
    var log: String { log(since: startOffset) }

    func log(since offset: Int) -> String {
        guard let d = FileManager.default.contents(atPath: logPath), d.count >= offset else { return "" }
        return String(decoding: d.dropFirst(offset), as: UTF8.self)
    }

    func lastLines(_ n: Int) -> String { log.split(separator: "\n").suffix(n).joined(separator: "\n") }

    /// Resident set size, MB (0 when the process is gone).
    var rssMB: Double { Self.rssMB(pid: pid) }

    /// Resident set size of process `pid`, MB (0 when it cannot be read). Thread: any.
    static func rssMB(pid: Int32) -> Double {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = s.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }) else { return 0 }
        return Double(line.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0) / 1024
    }

    /// `kill -9` and wait.
    func kill9() {
        if process.isRunning { kill(pid, SIGKILL) }
        process.waitUntilExit()
    }

    /// SIGTERM, wait up to `timeout` s (then SIGKILL); the exit status.
    @discardableResult
    func stop(timeout: Double = 120) -> Int32 {
        if process.isRunning { kill(pid, SIGTERM) }
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning { kill(pid, SIGKILL) }
        process.waitUntilExit()
        return process.terminationStatus
    }

    deinit { if process.isRunning { kill(pid, SIGKILL); process.waitUntilExit() } }
}

/// A blocking client on one TCP connection: frames out, frames in (any request id). One thread
/// receives; another may send (a `Cancel` while a reader waits), never two at once.
final class FrameClient: @unchecked Sendable {
    let fd: Int32
    private var decoder = FrameDecoder(maxFrameBytes: 64 << 20)
    private var buffer = [UInt8](repeating: 0, count: 1 << 16)
    private var nextID: UInt64 = 1
    /// What the server said about itself.
    private(set) var hello = HelloReply()

    /// Connects, says Hello. `timeout`: seconds a receive may wait before failing with TIMEOUT.
    init(port: Int, timeout: Double = 600) throws {
        fd = try connectLoopback(port: port, timeout: timeout)
        guard case .helloReply(let h) = try call(.hello(Hello(clientName: "selm-bench"))) else {
            throw LoadFailure(code: "PROTOCOL", detail: "Hello not answered with HelloReply")
        }
        hello = h
    }

    deinit { Glibc.close(fd) }

    /// A fresh request id.
    func newID() -> UInt64 { defer { nextID += 1 }; return nextID }

    func send(_ id: UInt64, _ body: ClientMessage) throws {
        let frame = try Frame.encode(Envelope(id: id, body: body))
        var off = 0
        while off < frame.count {
            let n = frame.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + off, frame.count - off, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw LoadFailure(code: "DISCONNECTED", detail: "send: \(String(cString: strerror(errno)))") }
            off += n
        }
    }

    func receive() throws -> Envelope<ServerMessage> {
        while true {
            if let body = try decoder.next() {
                do { return try Frame.decodeServer(body) } catch { throw LoadFailure(code: "PROTOCOL", detail: "\(error)") }
            }
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { throw LoadFailure(code: "TIMEOUT", detail: "no reply") }
            guard n > 0 else { throw LoadFailure(code: "DISCONNECTED", detail: n == 0 ? "closed by the server" : String(cString: strerror(errno))) }
            buffer.withUnsafeBytes { decoder.append(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        }
    }

    /// Sends one request and returns its reply (an `Error` reply is thrown).
    func call(_ body: ClientMessage) throws -> ServerMessage {
        let id = newID()
        try send(id, body)
        while true {
            let e = try receive()
            guard e.id == id else { continue }
            if case .error(let err) = e.body { throw LoadFailure.server(err) }
            return e.body
        }
    }

    /// Runs a generation to its `GenerateDone`: the samples (an `Error` reply is thrown).
    func generate(_ req: GenerateRequest) throws -> [SampleResult] {
        let id = newID()
        try send(id, .generate(req))
        var samples: [SampleResult] = []
        while true {
            let e = try receive()
            guard e.id == id else { continue }
            switch e.body {
            case .sampleResult(let s): samples.append(s)
            case .generateDone: return samples
            case .error(let err): throw LoadFailure.server(err)
            default: break
            }
        }
    }
}

func quantile(_ xs: [Double], _ q: Double) -> Double {
    let s = xs.sorted()
    return s.isEmpty ? .nan : s[min(s.count - 1, Int(Double(s.count - 1) * q + 0.5))]
}

/// Value of `--name V` on the command line, or `fallback`.
func option(_ name: String, _ fallback: String) -> String {
    let a = CommandLine.arguments
    if let i = a.firstIndex(of: name), i + 1 < a.count { return a[i + 1] }
    return fallback
}

/// A TCP connection to 127.0.0.1:`port` with Nagle off and receives that fail after `timeout`
/// seconds (the load and HTTP benchmarks' clients). Throws DISCONNECTED when it cannot connect.
func connectLoopback(port: Int, timeout: Double) throws -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = UInt16(port).bigEndian
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard rc == 0 else {
        let e = String(cString: strerror(errno))
        Glibc.close(fd)
        throw LoadFailure(code: "DISCONNECTED", detail: "connect: \(e)")
    }
    var one: Int32 = 1
    setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(4))
    var tv = timeval(tv_sec: Int(timeout), tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    return fd
}
