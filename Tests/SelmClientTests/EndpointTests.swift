import XCTest
@testable import SelmClient
import Wire

/// Address parsing and error descriptions (no server needed).
final class EndpointTests: XCTestCase {
    func testParsesHostPort() throws {
        XCTAssertEqual(try Endpoint(address: "127.0.0.1:7070"), .tcp(host: "127.0.0.1", port: 7070))
        XCTAssertEqual(try Endpoint(address: "[::1]:80"), .tcp(host: "::1", port: 80))
        XCTAssertEqual(try Endpoint(address: "localhost:1"), .tcp(host: "localhost", port: 1))
        XCTAssertEqual(Endpoint.tcp(host: "::1", port: 80).description, "[::1]:80")
        XCTAssertEqual(Endpoint.unix(path: "/tmp/s").description, "unix:/tmp/s")
        for bad in ["", "7070", "host:", ":7070", "host:99999", "host:x"] {
            XCTAssertThrowsError(try Endpoint(address: bad), bad) { error in
                XCTAssertEqual((error as? SelmClientError)?.field, "address")
            }
        }
    }

    func testErrorDescriptionsCarryCodeAndField() {
        let e = SelmClientError.server(code: .invalidArgument, message: "sampling.top_p: must be in (0, 1]", field: "sampling.top_p", requestID: 3)
        XCTAssertEqual(e.description, "INVALID_ARGUMENT: sampling.top_p: must be in (0, 1]")
        XCTAssertEqual(SelmClientError.server(code: .notFound, message: "gone", field: "require_version", requestID: 1).description,
                       "NOT_FOUND: gone (field require_version)")
        XCTAssertEqual(e.code, .invalidArgument)
        XCTAssertEqual(e.field, "sampling.top_p")
        XCTAssertEqual(SelmClientError.server(code: .notFound, message: "no", field: "", requestID: 1).description, "NOT_FOUND: no")
    }

    func testConnectingToNothingFails() {
        XCTAssertThrowsError(try SelmClient(endpoint: .unix(path: "/nonexistent/selm.sock"))) { error in
            guard case .connectFailed = error as? SelmClientError else { return XCTFail("\(error)") }
        }
    }
}
