import XCTest
@testable import Wire

/// `FrameDecoder` limits that change between frames (the server's pre-Hello limit) and
/// `Frame.requestType(of:)` on bodies that could not be decoded.
final class FrameLimitTests: XCTestCase {
    private func frame(_ body: [UInt8]) -> [UInt8] {
        let n = UInt32(body.count)
        return [UInt8(n >> 24), UInt8((n >> 16) & 0xFF), UInt8((n >> 8) & 0xFF), UInt8(n & 0xFF)] + body
    }

    /// Two frames in one chunk: the first read under a small limit, the second under the larger
    /// limit set after the first was taken — as a Hello followed by a big request.
    func testAppendUntilReadyLetsTheLimitChangeBetweenFrames() throws {
        let small = [UInt8](repeating: 1, count: 10), big = [UInt8](repeating: 2, count: 100)
        let stream = frame(small) + frame(big) + frame(small)
        var d = FrameDecoder(maxFrameBytes: 16)
        let used = stream.withUnsafeBytes { d.appendUntilReady($0) }
        XCTAssertEqual(used, 4 + small.count, "stops right after the first frame")
        XCTAssertEqual(try d.next(), small)
        XCTAssertNil(try d.next(), "the second header was not read yet")
        // Read to the end, raising the limit after the first frame: the limit in force when each
        // header is read decides.
        var e = FrameDecoder(maxFrameBytes: 16)
        var got: [Result<[UInt8], WireError>] = []
        stream.withUnsafeBytes { raw in
            var rest = raw[...]
            while !rest.isEmpty {
                let used = e.appendUntilReady(UnsafeRawBufferPointer(rebasing: rest))
                rest = rest.dropFirst(used)
                while true {
                    do { guard let f = try e.next() else { break }; got.append(.success(f)) } catch { got.append(.failure(error as! WireError)) }
                    e.maxFrameBytes = 1000  // "authenticated" after the first frame
                }
            }
        }
        XCTAssertEqual(got, [.success(small), .success(big), .success(small)])

        // Without the change the big frame is refused (and skipped, the next one decodes).
        var f = FrameDecoder(maxFrameBytes: 16)
        f.append(stream)
        XCTAssertEqual(try f.next(), small)
        XCTAssertThrowsError(try f.next()) { XCTAssertEqual($0 as? WireError, .frameTooLarge(size: 100, limit: 16)) }
        XCTAssertEqual(try f.next(), small)
    }

    func testAppendUntilReadyConsumesEverythingWhenNoFrameCompletes() {
        var d = FrameDecoder(maxFrameBytes: 100)
        let partial = Array(frame([UInt8](repeating: 7, count: 50)).prefix(30))
        XCTAssertEqual(partial.withUnsafeBytes { d.appendUntilReady($0) }, 30)
        XCTAssertEqual(d.bufferedByteCount, 26)
        // An oversize header stops the read too: the error is ready.
        var e = FrameDecoder(maxFrameBytes: 10)
        let bytes = frame([UInt8](repeating: 7, count: 50)) + frame([1])
        XCTAssertEqual(bytes.withUnsafeBytes { e.appendUntilReady($0) }, 4)
        XCTAssertThrowsError(try e.next())
    }

    func testRequestTypeOfBodiesThatDoNotDecode() {
        // A request refused by a field check: its type is known.
        let invalid = Frame.encodeBody(Envelope(id: 1, body: ClientMessage.generate(GenerateRequest(prompts: [.ids([1])], n: 65))))
        XCTAssertNotNil(requestError(.generate(GenerateRequest(prompts: [.ids([1])], n: 65))))
        XCTAssertEqual(Frame.requestType(of: invalid), "generate")
        // Truncated inside the body: the body's key was read.
        XCTAssertEqual(Frame.requestType(of: [0x08, 0x05, 0x72, 0x0A, 0x0A, 0x01]), "tokenize")
        XCTAssertEqual(Frame.requestType(of: Array(Frame.encodeBody(Envelope(id: 3, body: ClientMessage.submitPreferences(
            SubmitPreferences(rows: [PreferenceRow(prompt: .text("p"), chosen: .text("c"), rejected: .text("r"))])))).dropLast(2))),
                       "submit_preferences")
        // Not a request this build knows, a reply, no body, garbage.
        XCTAssertNil(Frame.requestType(of: [0x08, 0x06, 0xBA, 0x02, 0x00]))  // field 39
        XCTAssertNil(Frame.requestType(of: Frame.encodeBody(Envelope<ServerMessage>(id: 1, body: .cancelReply(CancelReply(found: true))))))
        XCTAssertNil(Frame.requestType(of: [0x08, 0x09]))
        XCTAssertNil(Frame.requestType(of: [0xFF, 0xFF, 0xFF]))
    }
}
