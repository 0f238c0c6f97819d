import Foundation
import XCTest
@testable import Tokenizer

/// The shared TRL row parser and prompt/response encoder against TRL itself
/// (`scripts/reference/trl_rows.py` → `Fixtures/trl_rows.json`: trl 1.16's
/// `maybe_apply_chat_template` strings and `DPOTrainer` token ids for SmolLM2 and tiny-chat).
final class TRLRowTests: XCTestCase {
    struct Fixture: Decodable {
        struct Strings: Decodable { var prompt: String; var chosen: String; var rejected: String }
        struct IDs: Decodable { var prompt: [Int32]; var chosen: [Int32]; var rejected: [Int32] }
        struct Row: Decodable { var name: String; var strings: Strings; var ids: IDs }
        struct Entry: Decodable { var tokenizer: String; var rows: [Row] }
        var source: String
        var tokenizers: [Entry]
    }

    /// The fixture's input rows, as JSON objects (the parser's input).
    static func inputRows() throws -> [[String: Any]] {
        let data = try Data(contentsOf: Fixtures.directory.appendingPathComponent("trl_rows.json"))
        let top = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        return try XCTUnwrap(top["rows"] as? [[String: Any]])
    }

    static func encoder(_ name: String) throws -> PromptResponseEncoder {
        let tok: Tokenizer
        switch name {
        case "smollm2": tok = try SmolLM2.tokenizer()
        case "tiny-chat":
            let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent("ModelTests/Fixtures/tiny-chat")
            tok = try Tokenizer.load(huggingFaceDirectory: dir.path)
        default: throw XCTSkip("unknown tokenizer \(name)")
        }
        return PromptResponseEncoder(tokenizer: tok, template: ChatTemplate.recognize(try XCTUnwrap(tok.chatTemplateText)))
    }

    /// Every fixture row, parsed by `TRLRow` and encoded by `PromptResponseEncoder`, gives TRL's
    /// prompt/chosen/rejected token ids exactly (conversational rows: the template's end-of-turn ends
    /// each response, several turns are all part of it; standard rows: plain prompt, EOS appended),
    /// and the rendered strings are TRL's strings.
    func testRowsEncodeToTRLsIDsAndStrings() throws {
        let fixture = try Fixtures.load(Fixture.self, "trl_rows.json")
        let inputs = try Self.inputRows()
        XCTAssertEqual(Set(fixture.tokenizers.map(\.tokenizer)), ["smollm2", "tiny-chat"])
        for entry in fixture.tokenizers {
            let enc = try Self.encoder(entry.tokenizer)
            let template = try XCTUnwrap(enc.template)
            XCTAssertEqual(entry.rows.count, inputs.count)
            for (input, expected) in zip(inputs, entry.rows) {
                let label = "\(entry.tokenizer): \(expected.name)"
                let row = try TRLRow.parse(input, place: label)
                // Standard rows are plain text in TRL (no template); conversational ones are templated anyway.
                let ids = try enc.encode(row, textPromptsAsChat: false)
                XCTAssertEqual(ids.prompt, expected.ids.prompt, "\(label): prompt")
                XCTAssertEqual(ids.chosen, expected.ids.chosen, "\(label): chosen")
                XCTAssertEqual(ids.rejected, expected.ids.rejected, "\(label): rejected")
                guard case .messages(let prompt) = row.prompt, case .messages(let chosen) = row.chosen,
                      case .messages(let rejected) = row.rejected else { continue }
                let p = try template.render(prompt, addGenerationPrompt: true)
                XCTAssertBytesEqual(p, expected.strings.prompt, label)
                XCTAssertBytesEqual(String(try template.render(prompt + chosen, addGenerationPrompt: false).dropFirst(p.count)),
                                    expected.strings.chosen, label)
                XCTAssertBytesEqual(String(try template.render(prompt + rejected, addGenerationPrompt: false).dropFirst(p.count)),
                                    expected.strings.rejected, label)
                XCTAssertBytesEqual(enc.tokenizer.decode(ids.chosen), expected.strings.chosen, label)
            }
        }
    }

    /// A conversational reference response is encoded by the same rule as chosen/rejected, and a
    /// text response beside conversational ones is tokenized on its own with EOS.
    func testReferenceAndMixedResponsesContinueTheSamePrompt() throws {
        let enc = try Self.encoder("tiny-chat")
        let obj: [String: Any] = [
            "prompt": [["role": "user", "content": "Hi"]],
            "chosen": [["role": "assistant", "content": "Hello."]],
            "rejected": "Go away.",
            "reference_response": [["role": "assistant", "content": "Hey."]],
        ]
        let row = try TRLRow.parse(obj, place: "t")
        let ids = try enc.encode(row, textPromptsAsChat: true)
        XCTAssertEqual(ids.prompt, try enc.chat([.user("Hi")]))
        XCTAssertEqual(ids.rejected, enc.response(text: "Go away.", appendEOS: true))
        XCTAssertEqual(ids.reference, enc.tokenizer.encode("Hey.<|im_end|>\n", parseSpecial: true))
        XCTAssertEqual(ids.chosen, enc.tokenizer.encode("Hello.<|im_end|>\n", parseSpecial: true))
    }

    /// A row built in code (not parsed) that breaks TRL's conversational rules is refused by the
    /// encoder with the part named, never encoded (or trapped on).
    func testEncoderRefusesARowThatBreaksTheConversationalRules() throws {
        let enc = try Self.encoder("tiny-chat")
        let textPrompt = TRLRow(prompt: .text("Hi"), chosen: .messages([ChatTurn(role: "assistant", content: "Hello.")]),
                                rejected: .text("Go away."))
        XCTAssertThrowsError(try enc.encode(textPrompt, textPromptsAsChat: true)) { e in
            guard case let .invalidRow(field, reason)? = e as? TokenizerError else { return XCTFail("\(e)") }
            XCTAssertEqual(field, "chosen")
            XCTAssertTrue(reason.contains("conversational prompt"), reason)
        }
        let userLast = TRLRow(prompt: .messages([.user("Hi")]), chosen: .text("Hello."),
                              rejected: .messages([ChatTurn(role: "user", content: "Hm?")]))
        XCTAssertThrowsError(try enc.encode(userLast, textPromptsAsChat: true)) { e in
            guard case let .invalidRow(field, _)? = e as? TokenizerError else { return XCTFail("\(e)") }
            XCTAssertEqual(field, "rejected")
        }
    }

    // MARK: Parsing

    func testParsesEveryAcceptedField() throws {
        let row = try TRLRow.parse([
            "prompt_ids": [1, 2], "prompt": "ignored: the ids win", "chosen": "c", "rejected_ids": [3],
            "reference_response": "r", "weight": 0.5, "source": "pairrm", "score": 7,
        ], place: "x")
        XCTAssertEqual(row, TRLRow(prompt: .ids([1, 2]), chosen: .text("c"), rejected: .ids([3]), reference: .text("r"),
                                   weight: 0.5, source: "pairrm"))
        XCTAssertNil(row.idsOnly, "a text part needs the tokenizer")
        let ids = try XCTUnwrap(try TRLRow.parse(["prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3]], place: "x").idsOnly)
        XCTAssertEqual([ids.prompt, ids.chosen, ids.rejected], [[1], [2], [3]])
        XCTAssertNil(ids.reference)
    }

    /// Each bad row names its line and field.
    func testErrorsNameTheLineAndTheField() {
        func error(_ jsonl: String) -> TRLRowError? {
            do { _ = try TRLRow.read(jsonl: Data(jsonl.utf8), name: "d.jsonl"); return nil } catch { return error }
        }
        let ok = #"{"prompt": "p", "chosen": "c", "rejected": "r"}"#
        let cases: [(String, String, String)] = [
            ("[1, 2]", "d.jsonl:2", ""),
            (#"{"chosen": "c", "rejected": "r"}"#, "d.jsonl:2", "prompt"),
            (#"{"prompt": "p", "chosen": "c"}"#, "d.jsonl:2", "rejected"),
            (#"{"prompt": "p", "chosen": "", "rejected": "r"}"#, "d.jsonl:2", "chosen"),
            (#"{"prompt": 3, "chosen": "c", "rejected": "r"}"#, "d.jsonl:2", "prompt"),
            (#"{"prompt": [{"role": "user"}], "chosen": "c", "rejected": "r"}"#, "d.jsonl:2", "prompt[0]"),
            (#"{"prompt": [], "chosen": "c", "rejected": "r"}"#, "d.jsonl:2", "prompt"),
            (#"{"prompt_ids": [1, -2], "chosen": "c", "rejected": "r"}"#, "d.jsonl:2", "prompt_ids[1]"),
            (#"{"prompt_ids": [1], "chosen_ids": [true], "rejected": "r"}"#, "d.jsonl:2", "chosen_ids[0]"),
            (#"{"prompt": "p", "chosen": "c", "rejected": "r", "weight": "1"}"#, "d.jsonl:2", "weight"),
            (#"{"prompt": "p", "chosen": "c", "rejected": "r", "weight": true}"#, "d.jsonl:2", "weight"),
            (#"{"prompt": "p", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "r"}"#, "d.jsonl:2", "chosen"),
            (#"{"prompt": [{"role": "user", "content": "q"}], "chosen": "c", "rejected": [{"role": "user", "content": "a"}]}"#,
             "d.jsonl:2", "rejected"),
        ]
        for (line, place, field) in cases {
            let e = error(ok + "\n" + line + "\n")
            XCTAssertEqual(e?.place, place, line)
            XCTAssertEqual(e?.field, field, line)
            if let e { XCTAssertTrue(e.description.hasPrefix(place), e.description) }
        }
        XCTAssertNil(error(ok + "\r\n  \n" + ok))
    }
}
