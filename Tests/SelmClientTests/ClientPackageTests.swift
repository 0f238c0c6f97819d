import Foundation
import XCTest

/// `SelmClient` as a library another package depends on: examples/swift-client is a package of its
/// own that names the `SelmClient` product of this repository (by path) and imports nothing but
/// `SelmClient` — no `@testable`, no module of the server. It is built with `swift build` into a
/// scratch directory under .build (the second run is incremental), then run against a real
/// `selm serve`: it connects, streams a generation and sends a preference row.
final class ClientPackageTests: XCTestCase {
    static let package = ServeProcess.root.appendingPathComponent("examples/swift-client")
    static let scratch = ServeProcess.root.appendingPathComponent(".build/swift-client-example")

    func testAnotherPackageBuildsAgainstSelmClientAndRunsIt() throws {
        // The manifests are evaluated afresh each time (`--manifest-cache none`, no cached build
        // manifest): else a build can be planned from a stale evaluation of this repository's
        // Package.swift (seen under `swift test`) and pass after the product is gone.
        let build = try Self.run(Self.swift, ["build", "--package-path", Self.package.path, "--scratch-path", Self.scratch.path,
                                              "--manifest-cache", "none", "--disable-build-manifest-caching"])
        XCTAssertEqual(build.status, 0, "swift build of examples/swift-client failed:\n\(build.stdout)\n\(build.stderr)")
        guard build.status == 0 else { return }

        let server = try ServeProcess()
        defer { server.shutdown() }
        let example = Self.scratch.appendingPathComponent("debug/selm-client-example")
        let run = try Self.run(example, ["--address", server.address, "--prompt", "Name a colour."])
        XCTAssertEqual(run.status, 0, "\(run.stdout)\n\(run.stderr)\nserver log:\n\(server.log)")
        XCTAssertTrue(run.stdout.contains("connected to \(server.address): model "), run.stdout)
        XCTAssertTrue(run.stdout.contains("sample 0 (version ") && run.stdout.contains("sample 1 (version "), run.stdout)
        XCTAssertTrue(run.stdout.contains("preference durable as WAL sequence 1"), run.stdout)

        // The row it sent is in the server's log.
        let client = try server.client()
        defer { client.close() }
        XCTAssertEqual(try client.status().walLastSequence, 1)

        // Errors reach the example's user as SelmClientError's one line.
        let refused = try Self.run(example, ["--unix", server.directory + "/nobody.sock"])
        XCTAssertEqual(refused.status, 1)
        XCTAssertTrue(refused.stderr.contains("cannot connect to unix:"), refused.stderr)
    }

    /// `swift` from $SWIFT, else from PATH.
    static var swift: URL {
        if let s = ProcessInfo.processInfo.environment["SWIFT"], !s.isEmpty { return URL(fileURLWithPath: s) }
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") {
            let candidate = URL(fileURLWithPath: String(dir)).appendingPathComponent("swift")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        }
        return URL(fileURLWithPath: "/usr/bin/swift")
    }

    static func run(_ executable: URL, _ args: [String]) throws -> ServeProcess.Run {
        let p = Process()
        p.executableURL = executable
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = FileHandle.nullDevice
        try p.run()
        let errData = LockedData()
        let t = Thread { errData.set(err.fileHandleForReading.readDataToEndOfFile()) }
        t.start()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        while !errData.isSet { usleep(1000) }
        return ServeProcess.Run(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
                                stderr: String(decoding: errData.value, as: UTF8.self))
    }
}
