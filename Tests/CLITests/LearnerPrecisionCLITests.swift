import Foundation
import XCTest

/// `--precision bf16|f32` of `selm train` and `selm serve` (the learner's products), run as a user
/// runs it.
final class LearnerPrecisionCLITests: XCTestCase {
    func run(_ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        let p = Process()
        p.executableURL = CLITests.selm
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out; p.standardError = err
        p.standardInput = FileHandle.nullDevice
        try p.run()
        let errData = Locked(Data())
        let reader = Thread { errData.set(err.fileHandleForReading.readDataToEndOfFile()) }
        reader.start()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        while !reader.isFinished { usleep(1000) }
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: errData.get(), as: UTF8.self))
    }

    /// A bad value is a usage error naming the flag; both commands list the option.
    func testBadValueAndHelp() throws {
        let r = try run(["train", "--model", "m", "--data", "d", "--out", "o", "--precision", "fp8"])
        XCTAssertEqual(r.status, 64, r.stderr)
        XCTAssertTrue(r.stderr.contains("--precision: expected bf16 or f32, got 'fp8'"), r.stderr)
        for cmd in ["train", "serve"] {
            let h = try run([cmd, "--help"])
            XCTAssertTrue(h.stdout.contains("--precision"), "\(cmd) --help: \(h.stdout)")
        }
    }

    /// The option reaches the learner: one optimizer step in each precision trains, and the bf16
    /// step's logged log-probs differ from the f32 step's (by bf16 rounding: within 2 %).
    func testTrainOneStepInEachPrecision() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("selm-precision-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        let data = dir.appendingPathComponent("pairs.jsonl")
        let rows = (0..<2).map { i in
            "{\"prompt_ids\": [\(30 + i), \(40 + i), 7, 9], \"chosen_ids\": [10, 10, 11, 12, 13], \"rejected_ids\": [20, 20, 21, 22], \"reference_ids\": [\(50 + i), 2]}"
        }
        try (rows.joined(separator: "\n") + "\n").write(to: data, atomically: true, encoding: .utf8)
        let model = CLITests.modelFixtures.appendingPathComponent("tiny-untied").path
        var logps: [String: Double] = [:]
        for precision in ["f32", "bf16"] {
            let out = dir.appendingPathComponent(precision).path
            let r = try run(["train", "--model", model, "--data", data.path, "--out", out, "--batch-size", "2", "--lr", "1e-3",
                             "--precision", precision, "--no-gguf"])
            XCTAssertEqual(r.status, 0, r.stderr)
            let line = try String(contentsOfFile: out + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").first!
            let m = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            logps[precision] = (m["logps/chosen"] as! NSNumber).doubleValue
        }
        let f32 = logps["f32"]!, bf16 = logps["bf16"]!
        XCTAssertNotEqual(f32, bf16, "bf16 products change the log-probs")
        XCTAssertEqual(bf16, f32, accuracy: 0.02 * abs(f32))
    }
}

private final class Locked<T>: @unchecked Sendable {
    private var value: T
    private let lock = NSLock()
    init(_ v: T) { value = v }
    func get() -> T { lock.lock(); defer { lock.unlock() }; return value }
    func set(_ v: T) { lock.lock(); value = v; lock.unlock() }
}
