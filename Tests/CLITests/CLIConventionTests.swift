import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// One name per concept across `selm`'s commands: the new spellings work silently, the old ones
/// still work and print one deprecation line on stderr; `--version`; defaults stated in `--help`.
final class CLIConventionTests: XCTestCase {
    typealias Result = CLITests.Result
    static let tiny = CLITests.modelFixtures.appendingPathComponent("tiny-tied").path

    func run(_ args: [String]) throws -> Result {
        let p = Process()
        p.executableURL = CLITests.selm
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out; p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Result(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self), data: o)
    }

    func tempDir() throws -> String {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("selm-conv-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
        return d
    }

    /// The deprecation lines of `stderr`.
    func notes(_ stderr: String) -> [Substring] { stderr.split(separator: "\n").filter { $0.contains("deprecated") } }

    /// A port nothing listens on.
    func closedPort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var a = sockaddr_in(); a.sin_family = sa_family_t(AF_INET); a.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
        _ = withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return Int(UInt16(bigEndian: a.sin_port))
    }

    /// `selm serve --listen` (old) and `--address` (new) both listen where told; only the old one
    /// prints the note, once.
    func testServeAddressSpellings() throws {
        let dir = try tempDir()
        for (flag, deprecated) in [("--listen", true), ("--address", false)] {
            let log = dir + "/\(flag).log"
            _ = FileManager.default.createFile(atPath: log, contents: nil)
            let p = Process()
            p.executableURL = CLITests.selm
            p.arguments = ["serve", "--model", Self.tiny, "--data-dir", dir + "/data" + flag, "--no-learner", flag, "127.0.0.1:0"]
            p.standardError = FileHandle(forWritingAtPath: log)!
            p.standardOutput = FileHandle.nullDevice
            try p.run()
            let deadline = Date().addingTimeInterval(60)
            var text = ""
            while Date() < deadline, p.isRunning {
                text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
                if text.contains("listening on tcp 127.0.0.1:") { break }
                usleep(20_000)
            }
            kill(p.processIdentifier, SIGTERM)
            p.waitUntilExit()
            XCTAssertTrue(text.contains("listening on tcp 127.0.0.1:"), "\(flag):\n\(text)")
            XCTAssertEqual(p.terminationStatus, 0, text)
            if deprecated {
                XCTAssertEqual(notes(text), ["selm: warning: --listen is deprecated; use --address"], text)
            } else {
                XCTAssertEqual(notes(text), [], text)
            }
        }
        // Both at once is a usage error naming both.
        let both = try run(["serve", "--model", Self.tiny, "--address", "127.0.0.1:0", "--listen", "127.0.0.1:0"])
        XCTAssertEqual(both.status, 64, both.stderr)
        XCTAssertTrue(both.stderr.contains("--listen") && both.stderr.contains("--address"), both.stderr)
    }

    /// `selm client --token-file` (old) and `--auth-token-file` (new, as `selm serve` spells it)
    /// both read the token file (a missing one is named); only the old one prints the note.
    func testClientAuthTokenFileSpellings() throws {
        let dir = try tempDir()
        let address = ["--address", "127.0.0.1:\(closedPort())"]
        let old = try run(["client", "status", "--token-file", dir + "/missing-token"] + address)
        XCTAssertEqual(old.status, 1, old.stderr)
        XCTAssertEqual(notes(old.stderr), ["selm: warning: --token-file is deprecated; use --auth-token-file"], old.stderr)
        XCTAssertTrue(old.stderr.contains("missing-token"), old.stderr)
        let new = try run(["client", "status", "--auth-token-file", dir + "/missing-token"] + address)
        XCTAssertEqual(new.status, 1, new.stderr)
        XCTAssertEqual(notes(new.stderr), [], new.stderr)
        XCTAssertEqual(new.stderr.split(separator: "\n").count, 1, new.stderr)
        XCTAssertTrue(new.stderr.contains("missing-token") && new.stderr.contains("--auth-token-file"), new.stderr)
    }

    /// `selm train --save-every` (old) and `--checkpoint-every` (new, as `selm serve` spells it)
    /// both save DIR/checkpoint-N; only the old one prints the note.
    func testTrainCheckpointEverySpellings() throws {
        let dir = try tempDir()
        let data = dir + "/rows.jsonl"
        try (#"{"prompt_ids":[1,2],"chosen_ids":[3,4],"rejected_ids":[5,6]}"# + "\n" + #"{"prompt_ids":[1,3],"chosen_ids":[3,5],"rejected_ids":[5,7]}"# + "\n")
            .write(toFile: data, atomically: true, encoding: .utf8)
        for (flag, deprecated) in [("--save-every", true), ("--checkpoint-every", false)] {
            let out = dir + "/out" + flag
            let r = try run(["train", "--model", Self.tiny, "--data", data, "--out", out, "--batch-size", "1", "--no-gguf", flag, "1"])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/checkpoint-1/trainer_state.json")
                          || FileManager.default.fileExists(atPath: out + "/checkpoint-1"), "\(flag): no checkpoint-1\n\(r.stderr)")
            XCTAssertEqual(notes(r.stderr), deprecated ? ["selm: warning: --save-every is deprecated; use --checkpoint-every"] : [], r.stderr)
        }
    }

    /// `selm --version` and `selm version` print the one version (SelmVersion) and nothing else.
    func testVersion() throws {
        let a = try run(["--version"]), b = try run(["version"])
        XCTAssertEqual(a.status, 0, a.stderr)
        XCTAssertEqual(b.status, 0, b.stderr)
        XCTAssertEqual(a.stdout, b.stdout)
        XCTAssertNotNil(a.stdout.range(of: #"^\d+\.\d+\.\d+\n$"#, options: .regularExpression), a.stdout)
    }

    /// Options with a default say it in `--help` (ArgumentParser's "(default: …)", or the help
    /// text for options whose default is the server's or depends on another option).
    func testHelpStatesDefaults() throws {
        func help(_ args: [String]) throws -> String {
            let r = try run(args + ["--help"])
            XCTAssertEqual(r.status, 0, r.stderr)
            // Join wrapped help lines so a phrase split across lines still matches.
            return r.stdout.replacingOccurrences(of: #"\n\s+"#, with: " ", options: .regularExpression)
        }
        let serve = try help(["serve"])
        for phrase in ["default: 127.0.0.1:7070", "--log-level <log-level> Least severe", "(default: info)",
                       "--kv-cache-mb <kv-cache-mb> Paged KV cache size, MB. (default: 512)", "(default: adaptive)",
                       "default: 0, or --warmup-ratio × --total-steps"] {
            XCTAssertTrue(serve.contains(phrase), "selm serve --help lacks \(phrase):\n\(serve)")
        }
        let generate = try help(["client", "generate"])
        for phrase in ["0 = greedy (default: the server's, 1.0)", "(default: the server's, 256)", "(default: the server's, 1 = off)",
                       "(default: a random one per request)", "(default: 127.0.0.1:7070)"] {
            XCTAssertTrue(generate.contains(phrase), "selm client generate --help lacks \(phrase):\n\(generate)")
        }
        let train = try help(["train"])
        for phrase in ["(default: 0.1;", "(default: cosine;", "(default: 42;", "(default: 5e-07)", "(default: info)"] {
            XCTAssertTrue(train.contains(phrase), "selm train --help lacks \(phrase):\n\(train)")
        }
        // Hidden old spellings stay out of the help.
        XCTAssertFalse(serve.contains("--listen") || serve.contains("--verbose"), serve)
        XCTAssertFalse(generate.contains("--token-file <"), generate)
        XCTAssertFalse(train.contains("--save-every"), train)
    }
}
