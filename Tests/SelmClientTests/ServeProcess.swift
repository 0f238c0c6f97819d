import Foundation
import XCTest
import SelmClient

#if canImport(Glibc)
import Glibc
#endif

/// A real `selm serve` process (the binary beside the test binary) on a free TCP port and a Unix
/// socket, with a temporary data directory; its output goes to a log file.
final class ServeProcess: @unchecked Sendable {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// The `selm` executable, built beside the test binary.
    static var selm: URL {
        URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent().appendingPathComponent("selm")
    }

    /// The SmolLM2 GGUF (`make model`), or `$SELM_MODEL`.
    static var model: String {
        ProcessInfo.processInfo.environment["SELM_MODEL"] ?? root.appendingPathComponent("models/SmolLM2-135M-Instruct.Q4_1.gguf").path
    }

    let process = Process()
    let directory: String
    let dataDir: String
    let logPath: String
    let unixPath: String
    let token: String?
    private(set) var address = ""

    /// Starts `selm serve` and waits until it listens on both sockets.
    init(token: String? = nil, args: [String] = []) throws {
        guard FileManager.default.fileExists(atPath: Self.model) else {
            throw TestFailure("\(Self.model) is missing: run `make model`")
        }
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("selm-client-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        dataDir = directory + "/data"
        logPath = directory + "/serve.log"
        unixPath = directory + "/selm.sock"
        self.token = token
        var a = ["serve", "--model", Self.model, "--address", "127.0.0.1:0", "--unix", unixPath, "--data-dir", dataDir,
                 "--engine-precision", "f32"]  // parity with the f32 forward
        if let token {
            let tokenFile = directory + "/token"
            _ = FileManager.default.createFile(atPath: tokenFile, contents: Data((token + "\n").utf8), attributes: [.posixPermissions: 0o600])
            a += ["--auth-token-file", tokenFile]
        }
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = FileHandle(forWritingAtPath: logPath)!
        process.executableURL = Self.selm
        process.arguments = a + args
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline {
            let text = self.log
            if let r = text.range(of: "listening on tcp "), text.contains("listening on unix ") {
                address = String(text[r.upperBound...].prefix { !$0.isWhitespace })
                return
            }
            if !process.isRunning { throw TestFailure("selm serve exited (\(process.terminationStatus)):\n\(text)") }
            usleep(20_000)
        }
        stop()
        throw TestFailure("selm serve did not start listening:\n\(self.log)")
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// A client over TCP (or the Unix socket), with this server's token.
    func client(unix: Bool = false, token: String?? = .none, timeout: Double = 120) throws -> SelmClient {
        let endpoint: Endpoint = unix ? .unix(path: unixPath) : try Endpoint(address: address)
        return try SelmClient(endpoint: endpoint, token: token ?? self.token, timeout: timeout)
    }

    /// SIGTERM, then SIGKILL after 30 s; returns the exit status.
    @discardableResult
    func stop() -> Int32 {
        if process.isRunning { kill(process.processIdentifier, SIGTERM) }
        let deadline = Date().addingTimeInterval(30)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        return process.terminationStatus
    }

    /// Stops the server and removes its directory.
    func shutdown() {
        stop()
        try? FileManager.default.removeItem(atPath: directory)
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
    }

    // MARK: `selm client` as a user runs it

    struct Run { var status: Int32; var stdout: String; var stderr: String }

    /// Runs `selm client CALL <connection options> ARGS` and waits for it.
    func runClient(_ call: String, _ args: [String] = [], unix: Bool = false, stdin: String? = nil) throws -> Run {
        var a = ["client", call]
        a += unix ? ["--unix", unixPath] : ["--address", address]
        if token != nil { a += ["--auth-token-file", directory + "/token"] }
        a += ["--timeout", "120"]
        return try Self.run(a + args, stdin: stdin)
    }

    static func run(_ args: [String], stdin: String? = nil) throws -> Run {
        let p = Process()
        p.executableURL = selm
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        let input = Pipe()
        p.standardInput = stdin == nil ? FileHandle.nullDevice : input
        try p.run()
        if let stdin {
            input.fileHandleForWriting.write(Data(stdin.utf8))
            try input.fileHandleForWriting.close()
        }
        // Read stderr on another thread so neither pipe can fill up and stall the child.
        let errData = LockedData()
        let t = Thread { errData.set(err.fileHandleForReading.readDataToEndOfFile()) }
        t.start()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        while !errData.isSet { usleep(1000) }
        return Run(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
                   stderr: String(decoding: errData.value, as: UTF8.self))
    }
}

final class LockedData: @unchecked Sendable {
    private let lock = NSLock()
    private var data: Data? = nil
    func set(_ d: Data) { lock.withLock { data = d } }
    var isSet: Bool { lock.withLock { data != nil } }
    var value: Data { lock.withLock { data ?? Data() } }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ s: String) { description = s }
}

/// A value behind a lock, shared by test threads.
final class Shared<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: T
    init(_ value: T) { self.value = value }
    func with<R>(_ body: (inout T) throws -> R) rethrows -> R {
        lock.lock(); defer { lock.unlock() }
        return try body(&value)
    }
    var get: T { with { $0 } }
}

/// Asserts that `body` throws `SelmClientError.server` with `code` (and `field`, when given).
func assertServerError<T>(_ code: ErrorCode, field: String? = nil, file: StaticString = #filePath, line: UInt = #line,
                          _ body: () throws -> T) {
    do {
        _ = try body()
        XCTFail("expected \(SelmClientError.name(of: code))", file: file, line: line)
    } catch let e as SelmClientError {
        guard case .server(let c, _, let f, let id) = e else { return XCTFail("expected a server error, got \(e)", file: file, line: line) }
        XCTAssertEqual(c, code, "\(e)", file: file, line: line)
        if let field { XCTAssertEqual(f, field, "\(e)", file: file, line: line) }
        XCTAssertGreaterThan(id, 0, file: file, line: line)
    } catch {
        XCTFail("unexpected error \(error)", file: file, line: line)
    }
}
