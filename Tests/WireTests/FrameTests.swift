import XCTest
@testable import Wire

/// Drains every frame body the decoder holds (failing on errors).
func drain(_ decoder: inout FrameDecoder, file: StaticString = #filePath, line: UInt = #line) -> [[UInt8]] {
    var out: [[UInt8]] = []
    while true {
        do {
            guard let body = try decoder.next() else { return out }
            out.append(body)
        } catch {
            XCTFail("unexpected \(error)", file: file, line: line)
            return out
        }
    }
}

/// Round trips, framing and stream splitting.
final class FrameTests: XCTestCase {
    func testEveryClientMessageRoundTrips() throws {
        for (name, envelope) in Samples.client {
            let frame = try Frame.encode(envelope)
            var decoder = FrameDecoder()
            decoder.append(frame)
            let bodies = drain(&decoder)
            XCTAssertEqual(bodies.count, 1, name)
            XCTAssertEqual(bodies.first, Frame.encodeBody(envelope), name)
            XCTAssertEqual(try Frame.decodeClient(bodies[0]), envelope, name)
            XCTAssertTrue(decoder.isAtFrameBoundary)
        }
    }

    func testEveryServerMessageRoundTrips() throws {
        for (name, envelope) in Samples.server {
            let frame = try Frame.encode(envelope)
            var decoder = FrameDecoder()
            decoder.append(frame)
            let bodies = drain(&decoder)
            XCTAssertEqual(bodies.count, 1, name)
            XCTAssertEqual(try Frame.decodeServer(bodies[0]), envelope, name)
        }
    }

    func testEveryBodyCaseIsCovered() throws {
        // Every member of Envelope.body in Proto/selm.proto has a sample (requests are numbered 10–39,
        // replies 40–79): a message added to the protocol must get one, so the Python cross-check and
        // the fuzz seed corpus (made from these frames) cover it.
        let proto = try String(contentsOf: URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../Proto/selm.proto").standardized, encoding: .utf8)
        let envelope = try XCTUnwrap(proto.range(of: "message Envelope {").map { proto[$0.upperBound...] })
        let oneof = try XCTUnwrap(envelope.range(of: "oneof body {").map { envelope[$0.upperBound...] })
        let body = oneof[..<(oneof.range(of: "\n  }")?.lowerBound ?? oneof.endIndex)]
        var requests: Set<String> = [], replies: Set<String> = []
        for line in body.split(separator: "\n") {
            let words = line.split(separator: "/").first?.split(whereSeparator: { $0 == " " || $0 == "=" || $0 == ";" }) ?? []
            guard words.count == 3, let number = Int(words[2]) else { continue }
            if number < 40 { requests.insert(String(words[1])) } else { replies.insert(String(words[1])) }
        }
        XCTAssertGreaterThanOrEqual(requests.count, 12, "parsed the request members")
        XCTAssertGreaterThanOrEqual(replies.count, 16, "parsed the reply members")
        XCTAssertEqual(Set(Samples.client.map { $0.envelope.body.name }), requests)
        XCTAssertEqual(Set(Samples.server.map { $0.envelope.body.name }), replies)
    }

    func testHeaderIsBigEndianBodyLength() throws {
        let envelope = Samples.server.first { $0.name == "status_reply" }!.envelope
        let frame = try Frame.encode(envelope)
        let body = Frame.encodeBody(envelope)
        XCTAssertEqual(frame.count, body.count + 4)
        XCTAssertEqual(Array(frame[0..<4]), [0, 0, UInt8(body.count >> 8), UInt8(body.count & 0xff)])
        XCTAssertEqual(Array(frame[4...]), body)
    }

    func testEqualDictionariesEncodeToEqualBytes() {
        var a: [String: Double] = [:]
        var b: [String: Double] = [:]
        let keys = (0..<50).map { "metric/\($0)" }
        for k in keys { a[k] = Double(k.count) }
        for k in keys.reversed() { b[k] = Double(k.count) }
        XCTAssertEqual(Frame.encodeBody(Envelope(id: 1, body: ServerMessage.versionEvent(VersionEvent(version: 1, metrics: a)))),
                       Frame.encodeBody(Envelope(id: 1, body: ServerMessage.versionEvent(VersionEvent(version: 1, metrics: b)))))
    }

    func testStreamSplitAtEveryByteBoundary() throws {
        let frames = try Samples.allFrames()
        let stream = frames.flatMap { $0 }
        let bodies = frames.map { Array($0[4...]) }
        for cut in 0...stream.count {
            var decoder = FrameDecoder()
            decoder.append(Array(stream[..<cut]))
            var got = drain(&decoder)
            decoder.append(Array(stream[cut...]))
            got += drain(&decoder)
            XCTAssertEqual(got, bodies, "split at \(cut)")
            XCTAssertTrue(decoder.isAtFrameBoundary)
        }
    }

    func testEveryFrameSplitAtEveryByteBoundaryDecodes() throws {
        for (name, envelope) in Samples.client {
            let frame = try Frame.encode(envelope)
            for cut in 0...frame.count {
                var decoder = FrameDecoder()
                decoder.append(Array(frame[..<cut]))
                if cut < frame.count { XCTAssertNil(try decoder.next(), "\(name) cut \(cut)") }
                decoder.append(Array(frame[cut...]))
                let bodies = drain(&decoder)
                XCTAssertEqual(bodies.count, 1)
                XCTAssertEqual(try Frame.decodeClient(bodies[0]), envelope, "\(name) cut \(cut)")
            }
        }
    }

    func testByteAtATime() throws {
        let frames = try Samples.allFrames()
        var decoder = FrameDecoder()
        var got: [[UInt8]] = []
        for byte in frames.flatMap({ $0 }) {
            decoder.append([byte])
            got += drain(&decoder)
        }
        XCTAssertEqual(got, frames.map { Array($0[4...]) })
    }

    func testTwoFramesInOneChunk() throws {
        let a = Samples.client[0].envelope
        let b = Samples.client[1].envelope
        var decoder = FrameDecoder()
        decoder.append(try Frame.encode(a) + Frame.encode(b))
        let bodies = drain(&decoder)
        XCTAssertEqual(bodies.count, 2)
        XCTAssertEqual(try Frame.decodeClient(bodies[0]), a)
        XCTAssertEqual(try Frame.decodeClient(bodies[1]), b)
        XCTAssertNil(try decoder.next())
    }

    func testFrameAndAHalf() throws {
        let a = try Frame.encode(Samples.client[0].envelope)
        let b = try Frame.encode(Samples.client[1].envelope)
        var decoder = FrameDecoder()
        decoder.append(a + b[..<7])
        XCTAssertEqual(drain(&decoder).count, 1)
        XCTAssertEqual(decoder.bufferedByteCount, 3)
        XCTAssertFalse(decoder.isAtFrameBoundary)
        decoder.append(Array(b[7...]))
        XCTAssertEqual(try Frame.decodeClient(drain(&decoder)[0]), Samples.client[1].envelope)
    }

    func testEmptyFrameYieldsEmptyBody() throws {
        var decoder = FrameDecoder()
        decoder.append([0, 0, 0, 0])
        XCTAssertEqual(try decoder.next(), [])
        XCTAssertThrowsError(try Frame.decodeClient([])) { XCTAssertEqual($0 as? WireError, .missingBody(id: 0)) }
    }

    func testOversizeFrameIsReportedAtTheHeaderAndSkipped() throws {
        var decoder = FrameDecoder(maxFrameBytes: 100)
        // Header only: 1 GiB announced. Reported before any body byte arrives.
        decoder.append([0x40, 0, 0, 0])
        XCTAssertThrowsError(try decoder.next()) {
            XCTAssertEqual($0 as? WireError, .frameTooLarge(size: 1 << 30, limit: 100))
            XCTAssertEqual(($0 as? WireError)?.code, .frameTooLarge)
            XCTAssertNil(($0 as? WireError)?.requestID)
        }
        XCTAssertNil(try decoder.next())
        // The body is discarded as it arrives, never buffered.
        let chunk = [UInt8](repeating: 0xAB, count: 1 << 20)
        for _ in 0..<1024 {
            decoder.append(chunk)
            XCTAssertEqual(decoder.bufferedByteCount, 0)
        }
        XCTAssertNil(try decoder.next())
        XCTAssertTrue(decoder.isAtFrameBoundary)
        // The stream goes on normally afterwards.
        let hello = Samples.client[0].envelope
        decoder.append(try Frame.encode(hello))
        XCTAssertEqual(try Frame.decodeClient(drain(&decoder)[0]), hello)
    }

    func testOversizeBetweenFramesKeepsOrder() throws {
        let small = try Frame.encode(Samples.client[0].envelope)
        var decoder = FrameDecoder(maxFrameBytes: 64)
        decoder.append(small + [0, 0, 0, 65] + [UInt8](repeating: 1, count: 65) + small)
        XCTAssertNotNil(try decoder.next())
        XCTAssertThrowsError(try decoder.next()) { XCTAssertEqual($0 as? WireError, .frameTooLarge(size: 65, limit: 64)) }
        XCTAssertNotNil(try decoder.next())
        XCTAssertNil(try decoder.next())
    }

    func testLimitIsInclusive() throws {
        var decoder = FrameDecoder(maxFrameBytes: 3)
        decoder.append([0, 0, 0, 3, 8, 1, 1])
        XCTAssertEqual(try decoder.next(), [8, 1, 1])
        XCTAssertEqual(FrameDecoder().maxFrameBytes, 16 << 20)
    }

    func testEncodeRefusesFramesOverTheLimit() throws {
        let big = Envelope(id: 1, body: ServerMessage.tokenizeReply(TokenizeReply(ids: Array(repeating: UInt32.max, count: 1000))))
        let size = Frame.encodeBody(big).count
        XCTAssertThrowsError(try Frame.encode(big, maxFrameBytes: size - 1)) {
            XCTAssertEqual($0 as? WireError, .frameTooLarge(size: UInt64(size), limit: size - 1))
        }
        XCTAssertEqual(try Frame.encode(big, maxFrameBytes: size).count, size + 4)
    }

    func testLargeMessageRoundTrips() throws {
        // Many allocations in the arena (beyond one chunk), long strings and arrays.
        var rows: [PreferenceRow] = []
        for i in 0..<500 {
            let prompt = Prompt.text(String(repeating: "p\(i) ", count: 20))
            let chosen = Response.ids(Array(0..<UInt32(i % 50 + 1)))
            let reference: Response? = i % 2 == 0 ? .text("ref") : nil
            rows.append(PreferenceRow(prompt: prompt, chosen: chosen, rejected: .text("r\(i)"), reference: reference,
                                      weight: Float(i % 7 + 1), source: "src"))
        }
        let envelope = Envelope(id: 77, body: ClientMessage.submitPreferences(SubmitPreferences(rows: rows)))
        var decoder = FrameDecoder()
        decoder.append(try Frame.encode(envelope))
        XCTAssertEqual(try Frame.decodeClient(drain(&decoder)[0]), envelope)
    }

    func testProtocolVersionMatchesTheProto() {
        XCTAssertEqual(Hello.currentProtocolVersion, 1)
        XCTAssertEqual(Hello().protocolVersion, Hello.currentProtocolVersion)
    }
}
