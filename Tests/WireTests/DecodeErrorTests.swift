import XCTest
@testable import Wire

/// The error a decode throws (nil if it succeeds).
func clientError(_ body: [UInt8]) -> WireError? {
    do {
        _ = try Frame.decodeClient(body)
        return nil
    } catch {
        return error
    }
}

func serverError(_ body: [UInt8]) -> WireError? {
    do {
        _ = try Frame.decodeServer(body)
        return nil
    } catch {
        return error
    }
}

/// The error decoding `request` (encoded without validation) throws on the server.
func requestError(_ request: ClientMessage, id: UInt64 = 42) -> WireError? {
    clientError(Frame.encodeBody(Envelope(id: id, body: request)))
}

/// Malformed bytes, missing and unknown bodies, and request validation.
final class DecodeErrorTests: XCTestCase {
    // MARK: Malformed protobuf

    func testTruncatedEnvelopeIsMalformedWithItsID() throws {
        let body = Frame.encodeBody(Samples.client.first { $0.name == "generate_full" }!.envelope)
        for cut in [body.count - 1, body.count - 3, body.count / 2, 3] {
            XCTAssertEqual(clientError(Array(body[..<cut])), .malformed(id: 2), "cut \(cut)")
        }
    }

    func testBrokenVarintIsMalformedWithoutID() {
        XCTAssertEqual(clientError([0x08]), .malformed(id: nil))
        XCTAssertEqual(clientError([0x08, 0xff, 0xff]), .malformed(id: nil))
        XCTAssertEqual(serverError([0x08]), .malformed(id: nil))
    }

    func testInvalidWireTypeIsMalformed() {
        // id = 5, then a key with wire type 7 (does not exist).
        XCTAssertEqual(clientError([0x08, 0x05, 0x0f]), .malformed(id: 5))
        // Field 1 (id) sent as length-delimited: the wrong wire type for a known field.
        XCTAssertEqual(clientError([0x0a, 0x00]), .malformed(id: nil))
    }

    func testNestedLengthOverrunIsMalformed() {
        // id = 9, generate { prompts: <5 bytes announced, 1 present> }
        XCTAssertEqual(clientError([0x08, 0x09, 0x5a, 0x02, 0x0a, 0x05]), .malformed(id: 9))
        let error = clientError([0x08, 0x09, 0x5a, 0x02, 0x0a, 0x05])!
        XCTAssertEqual(error.code, .malformed)
        XCTAssertEqual(error.requestID, 9)
        XCTAssertEqual(error.errorReply.code, .malformed)
    }

    func testScannerReadsTheLastIDBeforeTheDamage() {
        let bytes: [UInt8] = [0x08, 0x01, 0x08, 0x02, 0x5a, 0x7f]
        XCTAssertEqual(bytes.withUnsafeBytes { scanEnvelopeID($0) }, 2)
        XCTAssertNil([UInt8]().withUnsafeBytes { scanEnvelopeID($0) })
    }

    // MARK: Bodies

    func testEnvelopeWithoutBody() {
        XCTAssertEqual(clientError([0x08, 0x07]), .missingBody(id: 7))
        XCTAssertEqual(serverError([0x08, 0x07]), .missingBody(id: 7))
        // An unknown envelope-level field below the body range is not a body.
        XCTAssertEqual(clientError([0x08, 0x07, 0x18, 0x01]), .missingBody(id: 7))
        XCTAssertEqual(WireError.missingBody(id: 7).code, .unknownBody)
    }

    func testUnknownBodyFieldNumber() {
        // id = 7, field 60 (in the server range, unassigned), length-delimited, empty.
        XCTAssertEqual(clientError([0x08, 0x07, 0xe2, 0x03, 0x00]), .unknownBody(id: 7, fieldNumber: 60))
        XCTAssertEqual(serverError([0x08, 0x07, 0xe2, 0x03, 0x00]), .unknownBody(id: 7, fieldNumber: 60))
        // Field 25 (client range, unassigned) with a non-empty payload, id after the body.
        XCTAssertEqual(clientError([0xca, 0x01, 0x02, 0x08, 0x01, 0x08, 0x0b]), .unknownBody(id: 11, fieldNumber: 25))
        // Field 1000, varint.
        XCTAssertEqual(clientError([0xc0, 0x3e, 0x01]), .unknownBody(id: 0, fieldNumber: 1000))
        XCTAssertEqual(WireError.unknownBody(id: 7, fieldNumber: 60).errorReply.code, .unknownBody)
    }

    func testUnknownFieldsNextToAKnownBodyAreIgnored() throws {
        let envelope = Samples.client[0].envelope
        // Field 127 varint at the envelope level, and field 99 inside nothing: a newer peer's additions.
        let body = Frame.encodeBody(envelope) + [0xf8, 0x07, 0x01]
        XCTAssertEqual(try Frame.decodeClient(body), envelope)
    }

    func testMessagesOfTheOtherDirectionAreRefused() {
        for (_, envelope) in Samples.server {
            XCTAssertEqual(clientError(Frame.encodeBody(envelope)),
                           .unexpectedBody(id: envelope.id, body: envelope.body.name))
        }
        for (_, envelope) in Samples.client {
            XCTAssertEqual(serverError(Frame.encodeBody(envelope)),
                           .unexpectedBody(id: envelope.id, body: envelope.body.name))
        }
    }

    func testLastOneofMemberWins() throws {
        // hello {} then status {} in one envelope: protobuf keeps the last.
        XCTAssertEqual(try Frame.decodeClient([0x08, 0x03, 0x52, 0x02, 0x08, 0x01, 0x8a, 0x01, 0x00]),
                       Envelope(id: 3, body: .status(StatusRequest())))
    }

    // MARK: Request validation

    func assertInvalid(_ request: ClientMessage, _ field: String, file: StaticString = #filePath, line: UInt = #line) {
        guard case .invalidField(let id, let got, let reason)? = requestError(request) else {
            XCTFail("expected invalidField(\(field)), got \(String(describing: requestError(request)))", file: file, line: line)
            return
        }
        XCTAssertEqual(id, 42, file: file, line: line)
        XCTAssertEqual(got, field, file: file, line: line)
        XCTAssertFalse(reason.isEmpty, file: file, line: line)
        let reply = WireError.invalidField(id: id, field: got, reason: reason).errorReply
        XCTAssertEqual(reply.code, .invalidArgument, file: file, line: line)
        XCTAssertEqual(reply.field, field, file: file, line: line)
    }

    func generate(_ prompts: [Prompt] = [.text("hi")], sampling: SamplingParams = SamplingParams(), n: UInt32 = 1,
                  stop: [String] = [], topLogprobs: UInt32 = 0) -> ClientMessage {
        .generate(GenerateRequest(prompts: prompts, sampling: sampling, n: n, stop: stop, topLogprobs: topLogprobs))
    }

    func testGenerateValidation() {
        assertInvalid(generate([]), "prompts")
        assertInvalid(generate([.text("a"), .text("b"), .ids([])]), "prompts[2].ids")
        assertInvalid(generate([.messages([])]), "prompts[0].messages.messages")
        assertInvalid(generate([.messages([ChatMessage(role: "user", content: "x"), ChatMessage(role: "", content: "y")])]),
                      "prompts[0].messages.messages[1].role")
        assertInvalid(generate(n: 65), "n")
        assertInvalid(generate(topLogprobs: 21), "top_logprobs")
        assertInvalid(generate(stop: ["ok", ""]), "stop[1]")
        assertInvalid(generate(sampling: SamplingParams(temperature: -0.1)), "sampling.temperature")
        assertInvalid(generate(sampling: SamplingParams(temperature: .infinity)), "sampling.temperature")
        assertInvalid(generate(sampling: SamplingParams(topP: 0)), "sampling.top_p")
        assertInvalid(generate(sampling: SamplingParams(topP: 1.5)), "sampling.top_p")
        assertInvalid(generate(sampling: SamplingParams(topP: .nan)), "sampling.top_p")
        assertInvalid(generate(sampling: SamplingParams(minP: -0.5)), "sampling.min_p")
        assertInvalid(generate(sampling: SamplingParams(repetitionPenalty: 0)), "sampling.repetition_penalty")
        assertInvalid(generate(sampling: SamplingParams(presencePenalty: .nan)), "sampling.presence_penalty")
        assertInvalid(generate(sampling: SamplingParams(frequencyPenalty: -.infinity)), "sampling.frequency_penalty")
        assertInvalid(generate(sampling: SamplingParams(maxTokens: 0)), "sampling.max_tokens")
    }

    func testGenerateLimitsAndDefaults() throws {
        XCTAssertNil(requestError(generate(n: 64, topLogprobs: 20)))
        XCTAssertNil(requestError(generate(sampling: SamplingParams(temperature: 0, topK: 0, topP: 1, minP: 0, maxTokens: 1))))
        // n = 0 on the wire means 1.
        let decoded = try Frame.decodeClient(Frame.encodeBody(Envelope(id: 1, body: generate(n: 0))))
        guard case .generate(let request) = decoded.body else { return XCTFail() }
        XCTAssertEqual(request.n, 1)
        XCTAssertEqual(request.sampling, SamplingParams())
        XCTAssertNil(request.requireVersion)
    }

    func testPromptWithNoKindIsRejected() {
        // generate { prompts { } } with id 42: the prompt message is present but empty.
        XCTAssertEqual(clientError([0x08, 42, 0x5a, 0x02, 0x0a, 0x00]),
                       .invalidField(id: 42, field: "prompts[0]", reason: "one of text, ids, messages is required"))
    }

    func testScoreValidation() {
        assertInvalid(.score(ScoreRequest(items: [])), "items")
        assertInvalid(.score(ScoreRequest(items: [ScoreItem(prompt: .text("a"), continuation: .text(""))])),
                      "items[0].continuation.text")
        assertInvalid(.score(ScoreRequest(items: [ScoreItem(prompt: .text("a"), continuation: .ids([1])),
                                                  ScoreItem(prompt: .ids([]), continuation: .ids([1]))])),
                      "items[1].prompt.ids")
        assertInvalid(.score(ScoreRequest(items: [ScoreItem(prompt: .text("a"), continuation: .ids([1]))], topLogprobs: 99)),
                      "top_logprobs")
        // score { items { prompt { text: "a" } } }: continuation missing.
        XCTAssertEqual(clientError([0x08, 42, 0x6a, 0x07, 0x0a, 0x05, 0x0a, 0x03, 0x0a, 0x01, 0x61]),
                       .invalidField(id: 42, field: "items[0].continuation", reason: "is required"))
    }

    func testPreferenceValidation() throws {
        let good = PreferenceRow(prompt: .text("p"), chosen: .text("a"), rejected: .text("b"))
        assertInvalid(.submitPreferences(SubmitPreferences(rows: [])), "rows")
        var bad = good
        bad.weight = -1
        assertInvalid(.submitPreferences(SubmitPreferences(rows: [good, bad])), "rows[1].weight")
        bad.weight = .nan
        assertInvalid(.submitPreferences(SubmitPreferences(rows: [bad])), "rows[0].weight")
        bad = good
        bad.reference = .ids([])
        assertInvalid(.submitPreferences(SubmitPreferences(rows: [bad])), "rows[0].reference.ids")
        bad = good
        bad.chosen = .text("")
        assertInvalid(.submitPreferences(SubmitPreferences(rows: [bad])), "rows[0].chosen.text")
        // Weight 0 on the wire means 1.
        var zero = good
        zero.weight = 0
        let decoded = try Frame.decodeClient(Frame.encodeBody(Envelope(id: 1, body: .submitPreferences(SubmitPreferences(rows: [zero])))))
        XCTAssertEqual(decoded.body, .submitPreferences(SubmitPreferences(rows: [good])))
    }

    func testOtherRequestValidation() {
        assertInvalid(.hello(Hello(protocolVersion: 0)), "protocol_version")
        XCTAssertNil(requestError(.hello(Hello(protocolVersion: 2))))  // the server decides what it supports
        assertInvalid(.refreshWeights(RefreshWeights(checkpoint: "")), "checkpoint")
        assertInvalid(.refreshWeights(RefreshWeights(checkpoint: "/etc/passwd")), "checkpoint")
        assertInvalid(.refreshWeights(RefreshWeights(checkpoint: "ckpt/../../x")), "checkpoint")
        XCTAssertNil(requestError(.refreshWeights(RefreshWeights(checkpoint: "ckpt/..step-1"))))
        assertInvalid(.saveCheckpoint(SaveCheckpoint(name: "../x")), "name")
        assertInvalid(.tokenize(TokenizeRequest(input: .messages([]))), "messages.messages")
        XCTAssertNil(requestError(.tokenize(TokenizeRequest(input: .text("")))))
        XCTAssertNil(requestError(.detokenize(DetokenizeRequest(ids: []))))
    }

    func testTokenizeWithoutInputIsEmptyText() throws {
        // tokenize { add_special: true } — no text, no messages.
        XCTAssertEqual(try Frame.decodeClient([0x08, 0x01, 0x72, 0x02, 0x10, 0x01]),
                       Envelope(id: 1, body: .tokenize(TokenizeRequest(input: .text(""), addSpecial: true))))
    }

    func testInvalidUTF8IsRepaired() throws {
        // detokenize_reply { text: "a\xffb" }
        XCTAssertEqual(try Frame.decodeServer([0x08, 0x01, 0x82, 0x03, 0x05, 0x0a, 0x03, 0x61, 0xff, 0x62]),
                       Envelope(id: 1, body: .detokenizeReply(DetokenizeReply(text: "a\u{FFFD}b"))))
    }

    func testErrorDescriptionsAndReplies() {
        let error = WireError.invalidField(id: 3, field: "sampling.top_p", reason: "must be in (0, 1] (got 2.0)")
        XCTAssertEqual(error.requestID, 3)
        XCTAssertEqual(error.errorReply, ErrorReply(code: .invalidArgument, message: "sampling.top_p: must be in (0, 1] (got 2.0)",
                                                    field: "sampling.top_p"))
        XCTAssertEqual(WireError.frameTooLarge(size: 10, limit: 5).errorReply.code, .frameTooLarge)
        XCTAssertEqual(WireError.unexpectedBody(id: 1, body: "hello_reply").code, .unknownBody)
        for raw in Int32(-1)...20 {
            XCTAssertEqual(ErrorCode(rawValue: raw).rawValue, raw)
            XCTAssertEqual(FinishReason(rawValue: raw).rawValue, raw)
        }
    }
}
