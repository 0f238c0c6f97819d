import Foundation
import Learner
@testable import PreferenceLog
@testable import Server
import Wire
import XCTest

/// Conversational preference rows over the wire (`Response.messages`): the server encodes them by the
/// shared TRL rule, so what reaches the log (and the learner, which reads it) is exactly TRL 1.16's
/// `DPOTrainer` token ids (Tests/TokenizerTests/Fixtures/trl_rows.json, scripts/reference/trl_rows.py),
/// from the raw protocol and from `selm client submit`; a row breaking TRL's rules is refused naming
/// the field, and every other request carries on.
final class ConversationalPreferenceTests: XCTestCase {
    /// The fixture's input rows (JSON objects as TRL datasets hold them) and SmolLM2's ids of each.
    static func fixture() throws -> [(row: [String: Any], ids: PreferencePair)] {
        let url = ServerProcess.root.appendingPathComponent("Tests/TokenizerTests/Fixtures/trl_rows.json")
        let top = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        let rows = try XCTUnwrap(top["rows"] as? [[String: Any]])
        let smol = try XCTUnwrap((top["tokenizers"] as? [[String: Any]])?.first { $0["tokenizer"] as? String == "smollm2" })
        let ids = try XCTUnwrap(smol["rows"] as? [[String: Any]]).map { entry -> PreferencePair in
            let i = entry["ids"] as! [String: [Int]]
            func a(_ k: String) -> [Int32] { i[k]!.map(Int32.init) }
            return PreferencePair(prompt: a("prompt"), chosen: a("chosen"), rejected: a("rejected"), reference: nil, weight: 1)
        }
        XCTAssertEqual(rows.count, ids.count)
        return rows.map { $0.filter { ["prompt", "chosen", "rejected"].contains($0.key) } }.enumerated().map { ($1, ids[$0]) }
    }

    /// A fixture row as a wire row: strings as text, lists of messages as messages.
    static func wireRow(_ row: [String: Any]) -> PreferenceRow {
        func turns(_ v: Any) -> [ChatMessage] {
            (v as! [[String: String]]).map { ChatMessage(role: $0["role"]!, content: $0["content"]!) }
        }
        func response(_ v: Any) -> Response { (v as? String).map { .text($0) } ?? .messages(turns(v)) }
        let prompt: Prompt = (row["prompt"] as? String).map { .text($0) } ?? .messages(turns(row["prompt"]!))
        return PreferenceRow(prompt: prompt, chosen: response(row["chosen"]!), rejected: response(row["rejected"]!))
    }

    static let user = ChatMessage(role: "user", content: "Hi")
    static let assistant = ChatMessage(role: "assistant", content: "Hello.")

    /// Every fixture row (four conversational ones — a system prompt, several turns in chosen, a
    /// multi-turn prompt, non-ASCII — and a standard one, `chat` false as TRL) sent in one batch is
    /// stored as TRL's ids exactly; the same file through `selm client submit` too. Meanwhile another
    /// client's rows that break TRL's rules are refused naming the field (nothing of that batch is
    /// written), a conversational score continuation is refused, and that client is served after.
    func testConversationalRowsAreStoredAsTRLsIDsAndBadOnesAreRefusedByField() throws {
        try requireSmol()
        let fixture = try Self.fixture()
        XCTAssertEqual(fixture.filter { $0.row["prompt"] is [Any] }.count, 4)
        let dir = try temporaryDirectory()
        let server = try ServerProcess(model: ServerProcess.smol, dataDir: dir + "/data", args: ["--no-learner"])
        let a = try server.client(), b = try server.client()
        _ = try a.hello()
        _ = try b.hello()

        // Client b's bad requests are pipelined ahead of a's batch.
        let good = PreferenceRow(prompt: .messages([Self.user]), chosen: .messages([Self.assistant]), rejected: .text("Go away."))
        let bad: [(ClientMessage, String)] = [
            // A conversational response beside a text prompt (TRL has no rule for it).
            (.submitPreferences(SubmitPreferences(rows: [good, good, PreferenceRow(prompt: .text("Hi"), chosen: .messages([Self.assistant]),
                                                                                   rejected: .text("No."))])), "rows[2].chosen.messages"),
            // Not ending with the assistant's turn.
            (.submitPreferences(SubmitPreferences(rows: [PreferenceRow(prompt: .messages([Self.user]), chosen: .text("Hello."),
                                                                       rejected: .messages([Self.assistant, Self.user]))])),
             "rows[0].rejected.messages"),
            // Beside an ids prompt, as the reference.
            (.submitPreferences(SubmitPreferences(rows: [PreferenceRow(prompt: .ids([1, 2]), chosen: .ids([3]), rejected: .ids([4]),
                                                                       reference: .messages([Self.assistant]))])),
             "rows[0].reference.messages"),
            // A score continuation.
            (.score(ScoreRequest(items: [ScoreItem(prompt: .text("Hi"), continuation: .ids([5])),
                                         ScoreItem(prompt: .messages([Self.user]), continuation: .messages([Self.assistant]))])),
             "items[1].continuation.messages"),
        ]
        for (i, (request, _)) in bad.enumerated() { try b.send(UInt64(10 + i), request) }
        let batch = fixture.map { Self.wireRow($0.row) }
        let ack = try a.call(1, .submitPreferences(SubmitPreferences(rows: batch, chat: false)))
        guard case .preferenceAck(let acked) = ack else { return XCTFail("a's batch: \(ack)") }
        XCTAssertEqual(acked.rows, UInt32(fixture.count))
        for (i, (_, field)) in bad.enumerated() {
            let reply = try b.receive(UInt64(10 + i))
            assertError(reply, .invalidArgument, field: field)
            if case .error(let e) = reply {
                XCTAssertTrue(e.message.contains("conversational"), e.message)
            }
        }
        guard case .preferenceAck(let after) = try b.call(20, .submitPreferences(SubmitPreferences(rows: [good]))) else {
            return XCTFail("b is served after its refusals")
        }
        XCTAssertEqual(after.firstSequence, acked.lastSequence + 1, "refused batches wrote nothing")

        // The same rows as a JSONL file through `selm client submit`.
        let file = dir + "/conversational.jsonl"
        let lines = try fixture.map { String(decoding: try JSONSerialization.data(withJSONObject: $0.row), as: UTF8.self) }
        try (lines.joined(separator: "\n") + "\n").write(toFile: file, atomically: true, encoding: .utf8)
        let cli = try runSelmCLI(["client", "submit", "--data", file, "--address", "127.0.0.1:\(server.port)", "--json"])
        XCTAssertEqual(cli.status, 0, cli.stderr)
        let ackedByCLI = cli.stdout.split(separator: "\n").compactMap {
            (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any]
        }.reduce(0) { $0 + ($1["rows"] as? Int ?? 0) }
        XCTAssertEqual(ackedByCLI, fixture.count, cli.stdout)
        XCTAssertEqual(server.stop(), 0)

        let log = try PreferenceLog(directory: dir + "/data")
        defer { log.close() }
        let records = try log.records(after: 0)
        XCTAssertEqual(records.map(\.sequence), [1, 2, 3])
        guard records.count == 3 else { return }
        let expected = fixture.map(\.ids)
        for (name, record) in [("raw protocol", records[0]), ("selm client submit", records[2])] {
            XCTAssertEqual(record.pairs.count, expected.count, name)
            for (i, (got, want)) in zip(record.pairs, expected).enumerated() {
                XCTAssertEqual(got, want, "\(name): row \(i) (\(fixture[i].row["prompt"] is String ? "standard" : "conversational"))")
            }
        }
    }
}
