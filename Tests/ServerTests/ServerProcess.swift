import Foundation
import Model
import ModelBundle
import Tokenizer
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// A `selm serve` process started from the built binary, its stderr in a file.
final class ServerProcess {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static var selm: URL {
        URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent().appendingPathComponent("selm")
    }

    /// The SmolLM2 GGUF (tokenizer, chat template).
    static var smol: String {
        ProcessInfo.processInfo.environment["SELM_MODEL"] ?? root.appendingPathComponent("models/SmolLM2-135M-Instruct.Q4_1.gguf").path
    }

    /// A tiny Hugging Face model (no tokenizer; vocabulary 97, context 64).
    static var tiny: String { root.appendingPathComponent("Tests/ModelTests/Fixtures/tiny-untied").path }
    static var tinyTied: String { root.appendingPathComponent("Tests/ModelTests/Fixtures/tiny-tied").path }

    let process = Process()
    let logPath: String
    let dataDir: String
    private(set) var port = 0
    private(set) var metricsPort = 0
    let unixPath: String?

    /// Starts `selm serve --model MODEL --address 127.0.0.1:0 --data-dir DATA ARGS` and waits until
    /// it listens. `environment` is added to the test's own (e.g. the fault shim's, `FaultShim`).
    init(model: String, dataDir: String, unix: String? = nil, metrics: Bool = false, args: [String] = [],
         environment: [String: String] = [:]) throws {
        self.dataDir = dataDir
        unixPath = unix
        logPath = dataDir + ".log"
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        process.executableURL = Self.selm
        var a = ["serve", "--model", model, "--address", "127.0.0.1:0", "--data-dir", dataDir]
        if let unix { a += ["--unix", unix] }
        if metrics { a += ["--metrics", "127.0.0.1:0"] }
        // Parity tests compare with the f32 forward: pin it unless the test names a precision.
        if !args.contains("--engine-precision") { a += ["--engine-precision", "f32"] }
        process.arguments = a + args
        if !environment.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        let log = FileHandle(forWritingAtPath: logPath)!
        log.seekToEndOfFile()
        process.standardError = log
        process.standardOutput = log
        try process.run()
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            let text = self.log
            // Each address is logged by its own write: with metrics, wait for both lines (reading
            // the tcp line alone once left the metrics port 0 and the scrape failed to connect).
            if let p = Self.port(in: text, after: "listening on tcp 127.0.0.1:"),
               !metrics || Self.port(in: text, after: "listening on metrics http://127.0.0.1:") != nil {
                port = p
                if metrics { metricsPort = Self.port(in: text, after: "listening on metrics http://127.0.0.1:")! }
                return
            }
            if !process.isRunning { throw TestError("selm serve exited (\(process.terminationStatus)):\n\(text)") }
            usleep(20_000)
        }
        process.terminate()
        throw TestError("selm serve did not start listening:\n\(self.log)")
    }

    private static func port(in text: String, after marker: String) -> Int? {
        guard let r = text.range(of: marker, options: .backwards) else { return nil }
        return Int(text[r.upperBound...].prefix { $0.isNumber })
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    var pid: Int32 { process.processIdentifier }

    func client(receiveBufferBytes: Int? = nil) throws -> TestClient {
        try TestClient(.tcp(port), receiveBufferBytes: receiveBufferBytes)
    }

    /// SIGTERM and wait; returns the exit status.
    @discardableResult
    func stop(signal sig: Int32 = SIGTERM, timeout: Double = 30) -> Int32 {
        if process.isRunning { kill(pid, sig) }
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning { kill(pid, SIGKILL); process.waitUntilExit() }
        return process.terminationStatus
    }

    /// `kill -9` and wait.
    func kill9() {
        kill(pid, SIGKILL)
        process.waitUntilExit()
    }

    /// Resident set size, bytes.
    var rss: Int {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = s.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }) else { return 0 }
        return (Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0) * 1024
    }

    /// Open file descriptors.
    var openFiles: Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
    }

    deinit {
        if process.isRunning { kill(pid, SIGKILL); process.waitUntilExit() }
    }

    /// GET /metrics.
    func scrapeMetrics() throws -> String {
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
        let req = Array("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".utf8)
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

/// The value of a Prometheus sample line `name{labels} value`.
func metricValue(_ text: String, _ series: String) -> Double? {
    for line in text.split(separator: "\n") where line.hasPrefix(series + " ") {
        return Double(line.dropFirst(series.count + 1))
    }
    return nil
}

extension XCTestCase {
    /// A fresh temporary directory removed after the test.
    func temporaryDirectory() throws -> String {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("selm-server-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
        return d
    }

    /// The default model must be there (`make test` fetches it): without it the test fails.
    func requireSmol() throws {
        guard FileManager.default.fileExists(atPath: ServerProcess.smol) else {
            throw TestError("\(ServerProcess.smol) is missing: run `make model`")
        }
    }
}

nonisolated(unsafe) private var smolBundleCache: ModelBundle?

/// SmolLM2 loaded in-process, to compare the server's tokenization with.
func sharedSmolBundle() throws -> ModelBundle {
    if let b = smolBundleCache { return b }
    let b = try ModelBundle(path: ServerProcess.smol)
    smolBundleCache = b
    return b
}

/// Wraps a value the compiler cannot prove Sendable (test code that synchronises by hand).
struct UncheckedSendable<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// A value behind a lock, shared by test threads.
final class Locked<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: T
    init(_ value: T) { self.value = value }
    func with<R>(_ body: (inout T) throws -> R) rethrows -> R {
        lock.lock(); defer { lock.unlock() }
        return try body(&value)
    }
    var get: T { with { $0 } }
}

/// Runs `body(0..<n)` on `n` threads at once and waits.
func parallel(_ n: Int, _ body: (Int) -> Void) {
    withoutActuallyEscaping(body) { escaping in
        let b = UncheckedSendable(escaping)
        DispatchQueue.concurrentPerform(iterations: n) { b.value($0) }
    }
}

nonisolated(unsafe) private var smolTokenizerCache: Tokenizer?

/// SmolLM2's tokenizer alone (no weights), read from the GGUF.
func sharedSmolTokenizer() throws -> Tokenizer {
    if let t = smolTokenizerCache { return t }
    let t = try Tokenizer.load(gguf: GGUFFile(path: ServerProcess.smol))
    smolTokenizerCache = t
    return t
}
