import XCTest
@testable import Wire

/// `Response.messages` (a conversational response in a preference row, as TRL writes them): it
/// round-trips through the protobuf-c codec and is checked at decode like a prompt's messages
/// (not empty, no empty role), naming the field path. Where it may stand is the server's check.
final class ConversationalResponseTests: XCTestCase {
    static let prompt: Prompt = .messages([ChatMessage(role: "user", content: "Hi")])

    func submit(chosen: Response, reference: Response? = nil) -> ClientMessage {
        .submitPreferences(SubmitPreferences(rows: [
            PreferenceRow(prompt: Self.prompt, chosen: .text("ok"), rejected: .ids([1])),
            PreferenceRow(prompt: Self.prompt, chosen: chosen, rejected: .messages([ChatMessage(role: "assistant", content: "No.")]),
                          reference: reference),
        ]))
    }

    func testMessagesResponseRoundTrips() throws {
        let turns = [ChatMessage(role: "assistant", content: "Bonjour !"), ChatMessage(role: "user", content: "Et au revoir ?"),
                     ChatMessage(role: "assistant", content: "Au revoir 👋")]
        let envelope = Envelope(id: 9, body: submit(chosen: .messages(turns), reference: .messages([ChatMessage(role: "assistant", content: "Salut.")])))
        XCTAssertEqual(try Frame.decodeClient(Frame.encodeBody(envelope)), envelope)
        let score = Envelope(id: 3, body: ClientMessage.score(ScoreRequest(items: [ScoreItem(prompt: Self.prompt, continuation: .messages(turns))])))
        XCTAssertEqual(try Frame.decodeClient(Frame.encodeBody(score)), score, "the shape is valid anywhere; the server decides where it is accepted")
    }

    func testMessagesResponseIsCheckedLikeAPromptsMessages() {
        func field(_ request: ClientMessage) -> String? {
            guard case .invalidField(42, let f, let reason)? = requestError(request), !reason.isEmpty else { return nil }
            return f
        }
        XCTAssertEqual(field(submit(chosen: .messages([]))), "rows[1].chosen.messages.messages")
        XCTAssertEqual(field(submit(chosen: .messages([ChatMessage(role: "assistant", content: "a"), ChatMessage(role: "", content: "b")]))),
                       "rows[1].chosen.messages.messages[1].role")
        XCTAssertEqual(field(submit(chosen: .text("ok"), reference: .messages([ChatMessage(role: "", content: "r")]))),
                       "rows[1].reference.messages.messages[0].role")
    }
}
