import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// How `selm` fails, run as a user runs it. A usage error (a bad flag or flag value, found before
/// anything loads) prints the message and the usage text and exits 64; a runtime failure (missing or
/// corrupt file, bad data line, unreachable server, a refused request, a server that cannot start)
/// prints one line, `Error: …` naming the file / line / field, and exits 1.
final class CLIErrorTests: XCTestCase {
    typealias Result = CLITests.Result

    static let tinyModel = CLITests.modelFixtures.appendingPathComponent("tiny-tied").path

    @discardableResult
    func run(_ args: [String], stdin: String? = nil) throws -> Result {
        let p = Process()
        p.executableURL = CLITests.selm
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out; p.standardError = err
        if stdin != nil { p.standardInput = Pipe() }
        try p.run()
        if let stdin, let pipe = p.standardInput as? Pipe {
            pipe.fileHandleForWriting.write(Data(stdin.utf8))
            try pipe.fileHandleForWriting.close()
        }
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let r = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let status = p.terminationReason == .uncaughtSignal ? 128 + p.terminationStatus : p.terminationStatus
        return Result(status: status, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: r, as: UTF8.self), data: o)
    }

    func tempDir() throws -> String {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("selm-cli-err-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
        return d
    }

    /// Exit status 1 and exactly one error line — the last line of stderr, `Error: …` holding every
    /// `mentions` — and no usage text. `notesBefore`: progress notes may precede it (`selm serve`
    /// reports the model it loaded); otherwise stderr is that one line alone.
    func assertRuntimeFailure(_ r: Result, mentions: [String], notesBefore: Bool = false,
                              file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(r.status, 1, "runtime failures exit 1:\n\(r.stderr)", file: file, line: line)
        let lines = r.stderr.split(separator: "\n", omittingEmptySubsequences: true)
        if notesBefore {
            XCTAssertEqual(lines.filter { $0.hasPrefix("Error:") }.count, 1, r.stderr, file: file, line: line)
        } else {
            XCTAssertEqual(lines.count, 1, "one line on stderr:\n\(r.stderr)", file: file, line: line)
        }
        XCTAssertTrue(lines.last?.hasPrefix("Error: ") ?? false, r.stderr, file: file, line: line)
        XCTAssertFalse(r.stderr.lowercased().contains("usage"), "no usage text for a runtime failure:\n\(r.stderr)", file: file, line: line)
        for m in mentions {
            XCTAssertTrue(lines.last?.contains(m) ?? false, "the error line names \(m):\n\(r.stderr)", file: file, line: line)
        }
    }

    /// Exit status 64, the message (holding every `mentions`) and the usage text.
    func assertUsageError(_ r: Result, mentions: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(r.status, 64, "usage errors exit 64:\n\(r.stderr)", file: file, line: line)
        XCTAssertTrue(r.stderr.contains("Usage: selm"), "usage text:\n\(r.stderr)", file: file, line: line)
        for m in mentions { XCTAssertTrue(r.stderr.contains(m), "the message names \(m):\n\(r.stderr)", file: file, line: line) }
    }

    /// A TCP port nothing listens on (bound, then released).
    func closedPort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { p in bind(fd, p, len); return getsockname(fd, p, &len) }
        }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    // MARK: Usage errors

    /// `--help`, `-h` and `selm help …` print the help text on stdout and exit 0 (ArgumentParser's
    /// help command signals its request by throwing from `run()`; that is not a runtime failure).
    func testHelpIsPrintedNotReportedAsAnError() throws {
        for args in [["--help"], ["-h"], ["help"], ["serve", "--help"], ["help", "serve"], ["generate", "--help"]] {
            let r = try run(args)
            XCTAssertEqual(r.status, 0, "selm \(args.joined(separator: " ")): \(r.stderr)")
            XCTAssertTrue(r.stdout.contains("USAGE:"), "selm \(args.joined(separator: " ")) printed: \(r.stdout) \(r.stderr)")
            XCTAssertFalse(r.stderr.contains("Error"), r.stderr)
        }
        XCTAssertTrue(try run(["serve", "--help"]).stdout.contains("--engine-precision"))
    }

    func testUnknownFlagIsAUsageError() throws {
        assertUsageError(try run(["info", "--model", Self.tinyModel, "--no-such-flag"]), mentions: ["--no-such-flag"])
        assertUsageError(try run(["info"]), mentions: ["--model"])
    }

    /// Sampling and training flags are checked before the model loads: with a model path that does
    /// not exist, the bad flag is what is reported (and as a usage error).
    func testBadFlagValuesAreUsageErrorsFoundBeforeTheModelLoads() throws {
        let missing = "/nonexistent/model.gguf"
        assertUsageError(try run(["generate", "--model", missing, "--prompt", "x", "--temperature=-1"]), mentions: ["--temperature"])
        assertUsageError(try run(["generate", "--model", missing, "--prompt", "x", "--top-p", "0"]), mentions: ["--top-p"])
        assertUsageError(try run(["generate", "--model", missing, "--prompt", "x", "--top-p", "1.5"]), mentions: ["--top-p"])
        assertUsageError(try run(["generate", "--model", missing, "--prompt", "x", "--max-tokens", "0"]), mentions: ["--max-tokens"])
        assertUsageError(try run(["generate", "--model", missing, "--prompt", "x", "--template", "nope"]), mentions: ["--template"])
        assertUsageError(try run(["logits", "--model", missing, "--tokens", "1,x", "--out", "/tmp/x"]), mentions: ["--tokens"])
        assertUsageError(try run(["train", "--model", missing, "--data", "d.jsonl", "--out", "o", "--loss", "nope"]), mentions: ["--loss"])
        assertUsageError(try run(["train", "--model", missing, "--data", "d.jsonl", "--out", "o", "--batch-size", "0"]), mentions: ["--batch-size"])
        assertUsageError(try run(["loss", "--model", missing, "--data", "d.jsonl", "--beta", "0"]), mentions: ["--beta"])
        assertUsageError(try run(["serve", "--model", missing, "--schedule", "nope"]), mentions: ["--schedule"])
    }

    /// `selm client` checks its request flags with the server's own rules before connecting (port
    /// 1 refuses connections: a connect attempt would be a runtime failure, exit 1).
    func testClientFlagValuesAreUsageErrorsFoundBeforeConnecting() throws {
        let address = ["--address", "127.0.0.1:\(closedPort())"]
        assertUsageError(try run(["client", "generate", "--prompt", "x", "--top-p", "1.5"] + address), mentions: ["--top-p"])
        assertUsageError(try run(["client", "generate", "--prompt", "x", "--temperature=-1"] + address), mentions: ["--temperature"])
        assertUsageError(try run(["client", "generate", "--prompt", "x", "--max-tokens", "0"] + address), mentions: ["--max-tokens"])
        assertUsageError(try run(["client", "generate", "--prompt", "x", "-n", "65"] + address), mentions: ["-n"])
        assertUsageError(try run(["client", "generate", "--prompt-ids", "1,x"] + address), mentions: ["--prompt-ids"])
        assertUsageError(try run(["client", "score", "--prompt", "x", "--continuation", "y", "--top-logprobs", "21"] + address),
                         mentions: ["--top-logprobs"])
    }

    // MARK: Runtime failures

    func testMissingAndCorruptModelFilesAreOneLine() throws {
        let dir = try tempDir()
        assertRuntimeFailure(try run(["info", "--model", "/nonexistent/model.gguf"]), mentions: ["/nonexistent/model.gguf"])
        // A GGUF cut short, and bytes that are no GGUF at all.
        let smol = try Data(contentsOf: URL(fileURLWithPath: CLITests.smol))
        let cut = dir + "/cut.gguf", junk = dir + "/junk.gguf"
        try smol.prefix(200_000).write(to: URL(fileURLWithPath: cut))
        try Data((0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 31) }).write(to: URL(fileURLWithPath: junk))
        assertRuntimeFailure(try run(["info", "--model", cut]), mentions: [cut])
        assertRuntimeFailure(try run(["generate", "--model", junk, "--prompt", "x"]), mentions: [junk])
        // A Hugging Face directory with a broken config.json.
        let hf = dir + "/hf"
        try FileManager.default.createDirectory(atPath: hf, withIntermediateDirectories: true)
        try "{not json".write(toFile: hf + "/config.json", atomically: true, encoding: .utf8)
        assertRuntimeFailure(try run(["tokenize", "--model", hf, "--text", "x"]), mentions: [hf])
        let rows = dir + "/rows.jsonl"
        try (#"{"prompt_ids":[1],"chosen_ids":[2],"rejected_ids":[3]}"# + "\n").write(toFile: rows, atomically: true, encoding: .utf8)
        assertRuntimeFailure(try run(["loss", "--model", Self.tinyModel, "--ref", junk, "--data", rows]), mentions: ["--ref", junk])
    }

    func testUnreadableAndMalformedDataFilesAreOneLineNamingTheLine() throws {
        let dir = try tempDir()
        assertRuntimeFailure(try run(["loss", "--model", Self.tinyModel, "--data", dir + "/none.jsonl"]), mentions: ["none.jsonl"])
        assertRuntimeFailure(try run(["tokenize", "--model", Self.tinyModel, "--text-file", dir + "/none.txt"]), mentions: ["none.txt"])
        let bad = dir + "/bad.jsonl"
        try (#"{"prompt_ids":[1],"chosen_ids":[2],"rejected_ids":[3]}"# + "\n" + "{oops\n").write(toFile: bad, atomically: true, encoding: .utf8)
        assertRuntimeFailure(try run(["loss", "--model", Self.tinyModel, "--data", bad]), mentions: ["bad.jsonl:2"])
        assertRuntimeFailure(try run(["train", "--model", Self.tinyModel, "--data", bad, "--out", dir + "/o"]), mentions: ["bad.jsonl:2"])
        // `selm client submit` reads the whole file before connecting.
        let address = ["--address", "127.0.0.1:\(closedPort())"]
        assertRuntimeFailure(try run(["client", "submit", "--data", bad] + address), mentions: ["bad.jsonl:2"])
        let noRejected = dir + "/rows.jsonl"
        try "{\"prompt\": \"a\", \"chosen\": \"b\"}\n".write(toFile: noRejected, atomically: true, encoding: .utf8)
        assertRuntimeFailure(try run(["client", "submit", "--data", noRejected] + address), mentions: ["rows.jsonl:1", "rejected"])
        assertRuntimeFailure(try run(["client", "submit", "--data", dir + "/none.jsonl"] + address), mentions: ["none.jsonl"])
        assertRuntimeFailure(try run(["client", "status", "--auth-token-file", dir + "/no-token"] + address), mentions: ["no-token"])
        let good = dir + "/good.jsonl"
        try (#"{"prompt_ids":[1],"chosen_ids":[2],"rejected_ids":[3]}"# + "\n").write(toFile: good, atomically: true, encoding: .utf8)
        assertRuntimeFailure(try run(["train", "--model", Self.tinyModel, "--data", good, "--out", dir + "/o", "--resume", dir + "/no-ck"]),
                             mentions: ["--resume", "no-ck"])
    }

    func testUnreachableServerIsOneLine() throws {
        let port = closedPort()
        assertRuntimeFailure(try run(["client", "status", "--address", "127.0.0.1:\(port)"]), mentions: ["127.0.0.1:\(port)"])
        assertRuntimeFailure(try run(["client", "hello", "--unix", "/nonexistent/selm.sock"]), mentions: ["/nonexistent/selm.sock"])
    }

    /// Requests a running server refuses: the code, the message and the field on one line, exit 1.
    func testServerRefusalsAreOneLine() throws {
        let dir = try tempDir()
        let server = try ServeForErrors(args: ["--model", CLITests.modelFixtures.appendingPathComponent("tiny-untied").path,
                                               "--data-dir", dir + "/data", "--no-learner"], log: dir + "/serve.log")
        defer { server.stop() }
        let address = ["--address", "127.0.0.1:\(server.port)"]
        assertRuntimeFailure(try run(["client", "refresh", "--checkpoint", "no-such-checkpoint"] + address), mentions: ["NOT_FOUND", "checkpoint"])
        assertRuntimeFailure(try run(["client", "detokenize", "--tokens", "1,99999"] + address), mentions: ["ids[1]"])
        // A row the server refuses (a token id outside the tiny model's 97) names its file line.
        let rows = dir + "/rows.jsonl"
        try (#"{"prompt_ids":[1],"chosen_ids":[2],"rejected_ids":[3]}"# + "\n" + #"{"prompt_ids":[1],"chosen_ids":[500],"rejected_ids":[3]}"# + "\n")
            .write(toFile: rows, atomically: true, encoding: .utf8)
        assertRuntimeFailure(try run(["client", "submit", "--data", rows, "--batch-size", "2"] + address),
                             mentions: ["rows.jsonl:2", "rows[1].chosen"])
    }

    /// `selm serve` failing to start: one error line after its progress notes, exit 1.
    func testServeStartupFailuresAreOneLine() throws {
        let dir = try tempDir()
        let tiny = CLITests.modelFixtures.appendingPathComponent("tiny-untied").path
        let notADirectory = dir + "/file"
        try "x".write(toFile: notADirectory, atomically: true, encoding: .utf8)
        assertRuntimeFailure(try run(["serve", "--model", tiny, "--data-dir", notADirectory, "--no-learner"]),
                             mentions: [notADirectory], notesBefore: true)
        assertRuntimeFailure(try run(["serve", "--model", "/nonexistent/model.gguf", "--data-dir", dir + "/d"]),
                             mentions: ["/nonexistent/model.gguf"])
        assertRuntimeFailure(try run(["serve", "--model", tiny, "--data-dir", dir + "/d", "--auth-token-file", dir + "/no-token"]),
                             mentions: ["no-token"])
    }

    /// `selm serve` on an address another socket listens on: "cannot listen on …: address already
    /// in use", one line, exit 1 (not a crash).
    func testServeListenFailureIsOneLine() throws {
        let dir = try tempDir()
        let tiny = CLITests.modelFixtures.appendingPathComponent("tiny-untied").path
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { p in bind(fd, p, len); return getsockname(fd, p, &len) }
        }
        listen(fd, 1)
        let port = Int(UInt16(bigEndian: addr.sin_port))
        assertRuntimeFailure(try run(["serve", "--model", tiny, "--data-dir", dir + "/d2", "--no-learner", "--address", "127.0.0.1:\(port)"]),
                             mentions: ["cannot listen on 127.0.0.1:\(port)"], notesBefore: true)
    }
}

/// A `selm serve` process for the error tests (stderr to a file; the port read from it).
final class ServeForErrors {
    let process = Process()
    private(set) var port = 0

    init(args: [String], log: String) throws {
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        process.executableURL = CLITests.selm
        process.arguments = ["serve", "--address", "127.0.0.1:0"] + args
        process.standardError = FileHandle(forWritingAtPath: log)!
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            if let r = text.range(of: "listening on tcp 127.0.0.1:"), let p = Int(text[r.upperBound...].prefix { $0.isNumber }) {
                port = p
                return
            }
            if !process.isRunning { throw NSError(domain: "selm serve exited: \(text)", code: 1) }
            usleep(20_000)
        }
        process.terminate()
        throw NSError(domain: "selm serve did not start listening", code: 1)
    }

    func stop() {
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
    }
}
