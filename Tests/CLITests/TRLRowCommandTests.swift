import Foundation
import XCTest

/// `selm loss` / `selm train` and `selm client submit` read preference JSONL with the one TRL row
/// parser; conversational rows are encoded as TRL's `DPOTrainer` encodes them
/// (Tests/TokenizerTests/Fixtures/trl_rows.json, written by scripts/reference/trl_rows.py).
extension CLITests {
    /// The fixture's conversational rows and TRL's token ids of them for SmolLM2.
    static func trlConversationalRows() throws -> [(row: [String: Any], ids: [String: Any])] {
        let url = Self.root.appendingPathComponent("Tests/TokenizerTests/Fixtures/trl_rows.json")
        let top = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        let rows = try XCTUnwrap(top["rows"] as? [[String: Any]])
        let smol = try XCTUnwrap((top["tokenizers"] as? [[String: Any]])?.first { $0["tokenizer"] as? String == "smollm2" })
        let ids = try XCTUnwrap(smol["rows"] as? [[String: Any]]).map { $0["ids"] as! [String: Any] }
        return zip(rows, ids).filter { $0.0["prompt"] is [Any] }.map { row, ids in
            (row.filter { ["prompt", "chosen", "rejected"].contains($0.key) }, ids)
        }
    }

    /// Conversational rows (system prompts, several turns in chosen) give exactly the loss of TRL's
    /// token ids: the response is the rendered turns after the prompt, ending with the template's
    /// end-of-turn (`<|im_end|>\n`), not the last assistant message + EOS.
    func testConversationalRowsTrainOnTRLsTokenIDs() throws {
        let dir = try tempDir()
        let rows = try Self.trlConversationalRows()
        XCTAssertGreaterThanOrEqual(rows.count, 3)
        let text = dir.appendingPathComponent("conversational.jsonl"), ids = dir.appendingPathComponent("ids.jsonl")
        try writePairs(rows.map(\.row), to: text)
        try writePairs(rows.map { ["prompt_ids": $0.ids["prompt"]!, "chosen_ids": $0.ids["chosen"]!, "rejected_ids": $0.ids["rejected"]!] },
                       to: ids)
        let a = try run(["loss", "--model", Self.smol, "--data", text.path])
        let b = try run(["loss", "--model", Self.smol, "--data", ids.path])
        XCTAssertEqual(a.status, 0, a.stderr)
        XCTAssertEqual(b.status, 0, b.stderr)
        let la = try json(a.stdout), lb = try json(b.stdout)
        for key in ["loss", "logps/chosen", "logps/rejected"] {
            XCTAssertEqual(la[key] as! Double, lb[key] as! Double, accuracy: 1e-6, key)
        }
    }
}

extension CLIErrorTests {
    /// `selm client submit` reads rows with the same parser and sends conversational responses as
    /// messages: a file of TRL's conversational rows is acknowledged by a real server (the ids the
    /// server stores are TRL's: `ServerTests.ConversationalPreferenceTests`). A conversational
    /// response beside a text prompt breaks TRL's rules and is refused naming the line and field
    /// before connecting; so is any bad row.
    func testClientSubmitSendsConversationalResponses() throws {
        let dir = try tempDir()
        let file = URL(fileURLWithPath: dir + "/conv.jsonl")
        func write(_ rows: [[String: Any]]) throws {
            let lines = try rows.map { String(decoding: try JSONSerialization.data(withJSONObject: $0), as: UTF8.self) }
            try (lines.joined(separator: "\n") + "\n").write(to: file, atomically: true, encoding: .utf8)
        }
        let conversational = try CLITests.trlConversationalRows().map(\.row)
        try write([["prompt": "a", "chosen": "b", "rejected": "c"]] + conversational)
        let server = try ServeForErrors(args: ["--model", CLITests.smol, "--data-dir", dir + "/data", "--no-learner"], log: dir + "/serve.log")
        defer { server.stop() }
        let ok = try run(["client", "submit", "--data", file.path, "--address", "127.0.0.1:\(server.port)"])
        XCTAssertEqual(ok.status, 0, ok.stderr)
        XCTAssertTrue(ok.stdout.contains("acknowledged \(conversational.count + 1) rows"), ok.stdout)
        XCTAssertTrue(ok.stdout.contains("submitted \(conversational.count + 1) rows"), ok.stdout)

        var mismatched = conversational[0]
        mismatched["prompt"] = "What color is the sky?"
        try write([["prompt": "a", "chosen": "b", "rejected": "c"], mismatched])
        let r = try run(["client", "submit", "--data", file.path, "--address", "127.0.0.1:\(closedPort())"])
        assertRuntimeFailure(r, mentions: ["conv.jsonl:2", "'chosen'", "conversational prompt"])
        // A bad row names its line and field, as `selm train` does.
        try write([["prompt": "a", "chosen": "b", "rejected": "c"], ["prompt": "a", "chosen": "b", "rejected_ids": [1, -1]]])
        let bad = try run(["client", "submit", "--data", file.path, "--address", "127.0.0.1:\(closedPort())"])
        assertRuntimeFailure(bad, mentions: ["conv.jsonl:2", "rejected_ids[1]"])
    }
}
