import Foundation
import XCTest
@testable import Wire

/// Frames written by Google's Python protobuf (scripts/reference/wire.py, fixture committed) decode
/// to the same values Swift builds, and Swift encodes those values to the very same bytes, so the
/// Python client reads what the server writes and the other way round.
final class PythonCrossCheckTests: XCTestCase {
    struct Fixture: Decodable {
        struct Frame: Decodable {
            var name: String
            var direction: String
            var frame: String
        }
        struct Invalid: Decodable {
            var name: String
            var frame: String
            var id: UInt64
            var field: String
        }
        var protobuf: String
        var frames: [Frame]
        var invalid: [Invalid]
    }

    func loadFixture() throws -> Fixture {
        let url = Bundle.module.resourceURL!.appendingPathComponent("Fixtures/python_frames.json")
        return try JSONDecoder().decode(Fixture.self, from: Data(contentsOf: url))
    }

    func hex(_ s: String) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(s.count / 2)
        var it = s.utf8.makeIterator()
        while let hi = it.next(), let lo = it.next() {
            func v(_ c: UInt8) -> UInt8 { c <= 57 ? c - 48 : c - 87 }
            out.append(v(hi) << 4 | v(lo))
        }
        return out
    }

    func testFixtureCoversEverySample() throws {
        let fixture = try loadFixture()
        XCTAssertEqual(Set(fixture.frames.filter { $0.direction == "client" }.map(\.name)), Set(Samples.client.map(\.name)))
        XCTAssertEqual(Set(fixture.frames.filter { $0.direction == "server" }.map(\.name)), Set(Samples.server.map(\.name)))
    }

    func testPythonFramesDecodeToSwiftValues() throws {
        let fixture = try loadFixture()
        let client = Dictionary(uniqueKeysWithValues: Samples.client.map { ($0.name, $0.envelope) })
        let server = Dictionary(uniqueKeysWithValues: Samples.server.map { ($0.name, $0.envelope) })
        // All frames through one decoder, as one stream.
        var decoder = FrameDecoder()
        decoder.append(fixture.frames.flatMap { hex($0.frame) })
        let bodies = drain(&decoder)
        XCTAssertEqual(bodies.count, fixture.frames.count)
        for (entry, body) in zip(fixture.frames, bodies) {
            if entry.direction == "client" {
                XCTAssertEqual(try Frame.decodeClient(body), client[entry.name], "\(entry.name) (protobuf \(fixture.protobuf))")
            } else {
                XCTAssertEqual(try Frame.decodeServer(body), server[entry.name], "\(entry.name) (protobuf \(fixture.protobuf))")
            }
        }
    }

    func testSwiftEncodesThePythonBytes() throws {
        let fixture = try loadFixture()
        let python = Dictionary(uniqueKeysWithValues: fixture.frames.map { ($0.name, hex($0.frame)) })
        for (name, envelope) in Samples.client {
            XCTAssertEqual(try Frame.encode(envelope), python[name], name)
        }
        for (name, envelope) in Samples.server {
            XCTAssertEqual(try Frame.encode(envelope), python[name], name)
        }
    }

    func testPythonInvalidRequestsNameTheField() throws {
        let fixture = try loadFixture()
        XCTAssertFalse(fixture.invalid.isEmpty)
        for entry in fixture.invalid {
            let frame = hex(entry.frame)
            XCTAssertThrowsError(try Frame.decodeClient(Array(frame[4...])), entry.name) { error in
                guard case .invalidField(let id, let field, _)? = error as? WireError else {
                    return XCTFail("\(entry.name): \(error)")
                }
                XCTAssertEqual(id, entry.id, entry.name)
                XCTAssertEqual(field, entry.field, entry.name)
            }
        }
    }
}
