import Foundation
import XCTest
import SelmClient

/// `selm client <call>` as a shell user runs it, against a real `selm serve`.
final class ClientCommandTests: XCTestCase {
    nonisolated(unsafe) static var shared: ServeProcess?

    /// One server for the tests that do not disturb it; it runs no learner, so its version stays
    /// put (the save/refresh test starts a server of its own, with a learner).
    func server() throws -> ServeProcess {
        if let s = Self.shared { return s }
        let s = try ServeProcess(args: ["--no-learner"])
        Self.shared = s
        return s
    }

    override class func tearDown() {
        shared?.shutdown()
        shared = nil
        super.tearDown()
    }

    func json(_ s: String) throws -> [String: Any] {
        try XCTUnwrap(JSONSerialization.jsonObject(with: Data(s.utf8)) as? [String: Any], s)
    }

    func jsonLines(_ s: String) throws -> [[String: Any]] {
        try s.split(separator: "\n").map { try json(String($0)) }
    }

    func testHello() throws {
        let s = try server()
        let r = try s.runClient("hello", ["--json"], unix: true)
        XCTAssertEqual(r.status, 0, r.stderr)
        let h = try json(r.stdout)
        XCTAssertEqual(h["vocab_size"] as? Int, 49152)
        XCTAssertEqual(h["protocol_version"] as? Int, 1)
        let text = try s.runClient("hello")
        XCTAssertEqual(text.status, 0, text.stderr)
        XCTAssertTrue(text.stdout.contains("policy version"), text.stdout)
    }

    func testTokenizeAndDetokenize() throws {
        let s = try server()
        let t = try s.runClient("tokenize", ["--text", "Hello world"])
        XCTAssertEqual(t.status, 0, t.stderr)
        XCTAssertEqual(t.stdout, "[19556,905]\n")
        let d = try s.runClient("detokenize", ["--tokens", "19556, 905"])
        XCTAssertEqual(d.status, 0, d.stderr)
        XCTAssertEqual(d.stdout, "Hello world\n")
    }

    func testServerErrorsPrintCodeAndFieldAndFail() throws {
        let s = try server()
        let d = try s.runClient("detokenize", ["--tokens", "1,99999999"])
        XCTAssertEqual(d.status, 1)
        XCTAssertTrue(d.stderr.contains("OUT_OF_RANGE") && d.stderr.contains("ids[1]"), d.stderr)
        // (A bad flag value such as --top-p 1.5 is a usage error found before connecting: CLIErrorTests.)
        let g = try s.runClient("generate", ["--prompt", "Hi", "--require-version", "999"])
        XCTAssertEqual(g.status, 1)
        XCTAssertTrue(g.stderr.contains("NOT_FOUND") && g.stderr.contains("require_version"), g.stderr)
        let r = try s.runClient("refresh", ["--checkpoint", "no-such-checkpoint"])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("NOT_FOUND") && r.stderr.contains("checkpoint"), r.stderr)
        let none = try ServeProcess.run(["client", "status", "--unix", "/nonexistent/selm.sock"])
        XCTAssertNotEqual(none.status, 0)
        XCTAssertTrue(none.stderr.contains("cannot connect"), none.stderr)
    }

    func testGenerateJSONAndStream() throws {
        let s = try server()
        let r = try s.runClient("generate", ["--prompt", "What is the capital of France?", "--chat", "-n", "2",
                                             "--max-tokens", "8", "--temperature", "0.7", "--seed", "5", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let lines = try jsonLines(r.stdout)
        XCTAssertEqual(lines.map { $0["type"] as? String }, ["sample", "sample", "done"])
        guard lines.count == 3 else { return }
        XCTAssertEqual(Set(lines.prefix(2).compactMap { $0["sample_index"] as? Int }), [0, 1])
        XCTAssertEqual(lines[2]["samples"] as? Int, 2)
        for l in lines.prefix(2) {
            XCTAssertEqual((l["token_ids"] as? [Int])?.count, l["completion_tokens"] as? Int)
            XCTAssertNotNil(l["version"] as? Int)
        }
        let stream = try s.runClient("generate", ["--prompt", "What is the capital of France?", "--chat",
                                                  "--max-tokens", "12", "--temperature", "0", "--stream", "--json"])
        XCTAssertEqual(stream.status, 0, stream.stderr)
        let events = try jsonLines(stream.stdout)
        let chunks = events.filter { $0["type"] as? String == "chunk" }
        let sample = try XCTUnwrap(events.first { $0["type"] as? String == "sample" })
        XCTAssertFalse(chunks.isEmpty)
        XCTAssertEqual(chunks.map { $0["text_delta"] as? String ?? "" }.joined(), sample["text"] as? String)
        let text = try s.runClient("generate", ["--prompt", "What is the capital of France?", "--chat",
                                                "--max-tokens", "12", "--temperature", "0", "--stream"])
        XCTAssertEqual(text.status, 0, text.stderr)
        XCTAssertEqual(text.stdout, (sample["text"] as? String ?? "") + "\n")
        XCTAssertTrue(text.stderr.contains("version"), text.stderr)
    }

    func testScore() throws {
        let s = try server()
        let r = try s.runClient("score", ["--prompt", "The capital of France is", "--continuation", " Paris", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let j = try json(r.stdout)
        XCTAssertLessThan(j["total_logprob"] as? Double ?? 0, 0)
        XCTAssertEqual((j["logprobs"] as? [Double])?.count, (j["token_ids"] as? [Int])?.count)
    }

    func testSubmitJSONLInBatches() throws {
        let s = try server()
        let file = s.directory + "/prefs.jsonl"
        let rows = """
        {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5", "reference_response": "four"}
        {"prompt": [{"role": "user", "content": "Hi"}], "chosen": "Hello!", "rejected": "Go away."}

        {"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6], "reference_ids": [7], "weight": 0.5, "score": 3}
        """
        try rows.write(toFile: file, atomically: true, encoding: .utf8)
        let r = try s.runClient("submit", ["--data", file, "--batch-size", "2", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let acks = try jsonLines(r.stdout)
        XCTAssertEqual(acks.map { $0["rows"] as? Int }, [2, 1])
        XCTAssertEqual(acks.map { $0["first_row"] as? Int }, [1, 3])
        let seqs = acks.compactMap { $0["last_sequence"] as? Int }
        XCTAssertEqual(seqs, seqs.sorted())
        // From stdin, plain output.
        let plain = try s.runClient("submit", ["--data", "-"], stdin: "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n")
        XCTAssertEqual(plain.status, 0, plain.stderr)
        XCTAssertTrue(plain.stdout.contains("submitted 1 rows"), plain.stdout)
        // A row the server refuses names the file line and the field.
        try "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\", \"weight\": -1}\n"
            .write(toFile: file, atomically: true, encoding: .utf8)
        let bad = try s.runClient("submit", ["--data", file])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.stderr.contains("prefs.jsonl:2") && bad.stderr.contains("rows[1].weight"), bad.stderr)
        // A row the client cannot read.
        try "{\"prompt\": \"a\", \"chosen\": \"b\"}\n".write(toFile: file, atomically: true, encoding: .utf8)
        let missing = try s.runClient("submit", ["--data", file])
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertTrue(missing.stderr.contains("prefs.jsonl:1") && missing.stderr.contains("rejected"), missing.stderr)
    }

    func testStatusAndSubscribe() throws {
        let s = try server()
        let st = try s.runClient("status", ["--json"])
        XCTAssertEqual(st.status, 0, st.stderr)
        let status = try json(st.stdout)
        let version = try XCTUnwrap(status["policy_version"] as? Int)
        XCTAssertNotNil(status["wal_last_sequence"] as? Int)
        let sub = try s.runClient("subscribe", ["--count", "1", "--json"])
        XCTAssertEqual(sub.status, 0, sub.stderr)
        XCTAssertEqual(try json(sub.stdout)["version"] as? Int, version)
        let text = try s.runClient("status")
        XCTAssertTrue(text.stdout.contains("policy version"), text.stdout)
    }

    /// `selm client save` after a learner step, `refresh` back to it once the learner has moved on:
    /// `generate` on the refreshed version gives what `selm generate` computes from the checkpoint
    /// offline, and not what the version before it gave. (The server always runs a learner: a failing
    /// save is a failure.)
    func testSaveAndRefresh() throws {
        let s = try ServeProcess(args: ServeProcess.learnerArgs)
        defer { s.shutdown() }
        /// Submits one row and waits (a failure bound only) until the learner's step `step` is the
        /// published version (the first event of a subscription is the current version).
        func train(_ row: String, step: Int) throws -> Int {
            let submit = try s.runClient("submit", ["--data", "-", "--chat"], stdin: row + "\n")
            XCTAssertEqual(submit.status, 0, submit.stderr)
            let deadline = Date().addingTimeInterval(300)
            while true {
                let sub = try s.runClient("subscribe", ["--count", "1", "--json"])
                XCTAssertEqual(sub.status, 0, sub.stderr)
                let event = try json(sub.stdout)
                if event["learner_step"] as? Int == step { return try XCTUnwrap(event["version"] as? Int) }
                guard Date() < deadline else { throw TestFailure("learner step \(step) not published within 300 s: \(event)") }
                usleep(100_000)
            }
        }
        func generate(_ version: Int) throws -> [String: Any] {
            let g = try s.runClient("generate", ["--prompt", "What is the capital of France?", "--chat", "--max-tokens", "8",
                                                 "--temperature", "0", "--require-version", "\(version)", "--json"])
            XCTAssertEqual(g.status, 0, g.stderr)
            return try XCTUnwrap(try jsonLines(g.stdout).first { $0["type"] as? String == "sample" }, g.stdout)
        }
        let v1 = try train(#"{"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}"#, step: 1)
        let save = try s.runClient("save", ["--name", "ckpt-cli", "--json"])
        XCTAssertEqual(save.status, 0, save.stderr)
        let saved = try json(save.stdout)
        let path = try XCTUnwrap(saved["path"] as? String)
        XCTAssertEqual(saved["version"] as? Int, v1)
        let v2 = try train(#"{"prompt": "Name a colour.", "chosen": "Red.", "rejected": "Seven."}"#, step: 2)
        let expected = try OfflineGreedy(model: s.dataDir + "/" + path, chatPrompt: "What is the capital of France?", maxTokens: 8)
        func distance(_ sample: [String: Any]) -> Double {
            guard let ids = sample["token_ids"] as? [Int], ids.map({ UInt32($0) }) == expected.ids,
                  let lps = sample["logprobs"] as? [Double] else { return .infinity }
            return zip(lps, expected.logprobs).map { abs($0 - Double($1)) }.max() ?? 0
        }
        XCTAssertGreaterThan(distance(try generate(v2)), 1e-3, "the learner's second step must change the served outputs")

        let refresh = try s.runClient("refresh", ["--checkpoint", path])
        XCTAssertEqual(refresh.status, 0, refresh.stderr)
        XCTAssertTrue(refresh.stdout.contains("as version"), refresh.stdout)
        let version = try XCTUnwrap(Int(refresh.stdout.split(separator: " ").last?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""),
                                    refresh.stdout)
        XCTAssertGreaterThan(version, v2)
        let st = try s.runClient("status", ["--json"])
        XCTAssertEqual(st.status, 0, st.stderr)
        let status = try json(st.stdout)
        XCTAssertEqual(status["policy_version"] as? Int, version)
        // No row had a reference response: that metric is NaN, printed as JSON null.
        XCTAssertTrue((status["learner_metrics"] as? [String: Any])?["logps/pi_response"] is NSNull, st.stdout)
        let after = try generate(version)
        XCTAssertEqual(after["version"] as? Int, version)
        XCTAssertLessThanOrEqual(distance(after), 1e-4, "the refreshed version does not serve the checkpoint's weights: \(after)")
    }
}
