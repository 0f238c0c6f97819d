import XCTest
@testable import Wire

/// String fields travel with their exact length (the C code sees them as `bytes`): a request string
/// with a NUL byte or ill-formed UTF-8 is refused naming its field, never cut; reply strings keep
/// every byte, NULs included.
final class StringFieldTests: XCTestCase {
    private func assertRefused(_ request: ClientMessage, _ field: String, file: StaticString = #filePath, line: UInt = #line) {
        guard case .invalidField(let id, let got, let reason)? = requestError(request) else {
            return XCTFail("expected invalidField(\(field)), got \(String(describing: requestError(request)))", file: file, line: line)
        }
        XCTAssertEqual(id, 42, file: file, line: line)
        XCTAssertEqual(got, field, file: file, line: line)
        XCTAssertTrue(reason.contains("NUL"), reason, file: file, line: line)
    }

    func testEveryRequestStringWithANULIsRefusedNamingTheField() {
        let nul = "ab\0cd"
        assertRefused(.hello(Hello(authToken: "token" + "\0junk")), "auth_token")
        assertRefused(.hello(Hello(clientName: nul)), "client_name")
        assertRefused(.generate(GenerateRequest(prompts: [.ids([1]), .text(nul)])), "prompts[1].text")
        assertRefused(.generate(GenerateRequest(prompts: [.messages([ChatMessage(role: "user", content: "x"), ChatMessage(role: nul, content: "x")])])),
                      "prompts[0].messages.messages[1].role")
        assertRefused(.generate(GenerateRequest(prompts: [.messages([ChatMessage(role: "user", content: nul)])])),
                      "prompts[0].messages.messages[0].content")
        assertRefused(.generate(GenerateRequest(prompts: [.ids([1])], stop: ["ok", nul])), "stop[1]")
        assertRefused(.score(ScoreRequest(items: [ScoreItem(prompt: .text(nul), continuation: .ids([1]))])), "items[0].prompt.text")
        assertRefused(.score(ScoreRequest(items: [ScoreItem(prompt: .ids([1]), continuation: .text(nul))])), "items[0].continuation.text")
        assertRefused(.tokenize(TokenizeRequest(input: .text(nul))), "text")
        assertRefused(.tokenize(TokenizeRequest(input: .messages([ChatMessage(role: "user", content: nul)]))), "messages.messages[0].content")
        let row = PreferenceRow(prompt: .ids([1]), chosen: .ids([2]), rejected: .ids([3]))
        var r = row; r.prompt = .text(nul)
        assertRefused(.submitPreferences(SubmitPreferences(rows: [row, r])), "rows[1].prompt.text")
        r = row; r.chosen = .text(nul)
        assertRefused(.submitPreferences(SubmitPreferences(rows: [r])), "rows[0].chosen.text")
        r = row; r.rejected = .text(nul)
        assertRefused(.submitPreferences(SubmitPreferences(rows: [r])), "rows[0].rejected.text")
        r = row; r.reference = .text(nul)
        assertRefused(.submitPreferences(SubmitPreferences(rows: [r])), "rows[0].reference.text")
        r = row; r.source = nul
        assertRefused(.submitPreferences(SubmitPreferences(rows: [r])), "rows[0].source")
        assertRefused(.refreshWeights(RefreshWeights(checkpoint: "ckpt\0/../../etc")), "checkpoint")
        assertRefused(.saveCheckpoint(SaveCheckpoint(name: "ckpt\0junk")), "name")
    }

    func testIllFormedUTF8InARequestIsRefused() {
        // hello { protocol_version: 1, auth_token: "a\xffb" }, id 3
        XCTAssertEqual(clientError([0x08, 0x03, 0x52, 0x07, 0x08, 0x01, 0x12, 0x03, 0x61, 0xFF, 0x62]),
                       .invalidField(id: 3, field: "auth_token", reason: "is not valid UTF-8"))
        // tokenize { text: "\xc3" } (a truncated two-byte sequence), id 4
        XCTAssertEqual(clientError([0x08, 0x04, 0x72, 0x03, 0x0A, 0x01, 0xC3]),
                       .invalidField(id: 4, field: "text", reason: "is not valid UTF-8"))
    }

    func testRequestStringsRoundTripExactly() throws {
        let text = "Ünïcödé ✓ 🙂 \u{7F} tab\tend"
        let request = ClientMessage.tokenize(TokenizeRequest(input: .text(text)))
        XCTAssertEqual(try Frame.decodeClient(Frame.encodeBody(Envelope(id: 1, body: request))).body, request)
    }

    func testReplyStringsKeepEveryByteNULsIncluded() throws {
        // A token can decode to U+0000; the client must see it, and what follows it.
        for message in [ServerMessage.detokenizeReply(DetokenizeReply(text: "a\0b")),
                        .sampleResult(SampleResult(text: "x\0y\0")),
                        .generateChunk(GenerateChunk(textDelta: "\0")),
                        .error(ErrorReply(code: .internal, message: "m\0n", field: "f\0"))] {
            XCTAssertEqual(try Frame.decodeServer(Frame.encodeBody(Envelope(id: 9, body: message))).body, message)
        }
    }
}
