import Foundation
import FuzzChecks
import Wire
import XCTest

/// The fuzzer's seed and regression corpus (Fuzz/corpus/wire) replayed through the properties the
/// wire fuzzer asserts (`WireProperties`, Fuzz/README.md), without a fuzzer build: every committed
/// input decodes without trapping, every error has a code and a reason, every decoded envelope
/// survives a re-encode, and the frame decoder splits the stream the same in any chunking.
final class CorpusReplayTests: XCTestCase {
    static let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fuzz/corpus/wire").path

    func testEveryCorpusInputKeepsTheWireProperties() throws {
        let files = try FuzzDriver.corpusFiles(Self.corpus)
        XCTAssertGreaterThanOrEqual(files.count, 100, "the seed corpus: every message type, torn and oversize frames")
        for file in files {
            let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: file)))
            let problems = WireProperties.violations(bytes)
            XCTAssertEqual(problems, [], (file as NSString).lastPathComponent)
        }
    }

    /// The corpus reaches every kind of outcome: decoded both ways, refused with each error kind.
    func testCorpusCoversEveryOutcome() throws {
        var kinds = Set<String>()
        for file in try FuzzDriver.corpusFiles(Self.corpus) {
            let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: file)))
            let body = bytes.count >= 4 ? Array(bytes.dropFirst(4)) : bytes
            for candidate in [bytes, body] {
                do { _ = try Frame.decodeClient(candidate); kinds.insert("client") } catch { kinds.insert("\(error.code)") }
                do { _ = try Frame.decodeServer(candidate); kinds.insert("server") } catch { kinds.insert("\(error.code)") }
            }
        }
        for k in ["client", "server", "malformed", "unknownBody", "invalidArgument"] { XCTAssertTrue(kinds.contains(k), "\(k) in \(kinds)") }
    }

    /// Regression (found by the fuzzer): proto3 enums are open int32s, so a peer may send a negative
    /// error code or finish reason; converting the C enum's UInt32 with `numericCast` trapped, in
    /// `Frame.decodeServer` (every Swift client) and in `Frame.encode`.
    func testNegativeEnumValuesRoundTripAsUnrecognized() throws {
        for code: Int32 in [-1, -2, Int32.min, 99] {
            let e = Envelope(id: 7, body: ServerMessage.error(ErrorReply(code: .unrecognized(code), message: "m")))
            XCTAssertEqual(try Frame.decodeServer(Frame.encodeBody(e)), e)
            let s = Envelope(id: 8, body: ServerMessage.sampleResult(SampleResult(finishReason: .unrecognized(code), version: 1, firstVersion: 1)))
            XCTAssertEqual(try Frame.decodeServer(Frame.encodeBody(s)), s)
        }
        let frame = Array(try Data(contentsOf: URL(fileURLWithPath: Self.corpus + "/regression-negative-error-code")))
        guard case .error(let reply) = try Frame.decodeServer(Array(frame.dropFirst(4))).body else { return XCTFail("not an Error") }
        XCTAssertEqual(reply.code, .unrecognized(-2))
    }
}
