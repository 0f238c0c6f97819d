import Foundation
@testable import PreferenceLog
import XCTest

/// Client paths are confined to the data directory (the server maps each refusal to its error code:
/// `.invalid` → INVALID_ARGUMENT, `.notFound` → NOT_FOUND, `.outside` → PERMISSION_DENIED).
final class DataDirectoryTests: XCTestCase {
    func testConfinement() throws {
        let root = try temporaryDirectory()
        let outside = try temporaryDirectory()
        try FileManager.default.createDirectory(atPath: root + "/data/ck", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: root + "/data/out", withDestinationPath: outside)
        try FileManager.default.createSymbolicLink(atPath: root + "/data/in", withDestinationPath: root + "/data/ck")
        let d = try DataDirectory(root + "/data")
        func code(_ f: () throws -> String) -> String {
            do { _ = try f(); return "ok" } catch let PreferenceLogError.path(refusal, _, _) { return "\(refusal)" } catch { return "\(error)" }
        }
        XCTAssertEqual(code { try d.resolveExisting("ck", field: "checkpoint") }, "ok")
        XCTAssertEqual(code { try d.resolveExisting("in", field: "checkpoint") }, "ok", "a link that stays inside is fine")
        XCTAssertEqual(code { try d.resolveExisting("out", field: "checkpoint") }, "outside")
        XCTAssertEqual(code { try d.resolveExisting("nope", field: "checkpoint") }, "notFound")
        XCTAssertEqual(code { try d.resolveExisting("../data/ck", field: "checkpoint") }, "invalid")
        XCTAssertEqual(code { try d.resolveExisting("/etc", field: "checkpoint") }, "invalid")
        XCTAssertEqual(code { try d.resolveNew("new/deeper", field: "name") }, "ok")
        XCTAssertEqual(code { try d.resolveNew("out/x", field: "name") }, "outside")
        XCTAssertEqual(code { try d.resolveNew("out", field: "name") }, "outside")
        XCTAssertEqual(code { try d.resolveNew("in/x", field: "name") }, "ok")
        XCTAssertEqual(try d.resolveNew("in/x", field: "name"), d.realPath + "/ck/x")
    }
}
