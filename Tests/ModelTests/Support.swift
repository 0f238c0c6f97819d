import Foundation
import XCTest
@testable import Model

/// Paths and shared state for the model tests.
enum TestSupport {
    static let packageRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static var fixtures: URL {
        Bundle.module.resourceURL!.appendingPathComponent("Fixtures")
    }

    static func fixture(_ name: String) -> URL { fixtures.appendingPathComponent(name) }

    /// The default model; `SELM_MODEL` overrides. Fails (never skips) when absent.
    static func smolPath() throws -> String {
        let path = ProcessInfo.processInfo.environment["SELM_MODEL"]
            ?? packageRoot.appendingPathComponent("models/SmolLM2-135M-Instruct.Q4_1.gguf").path
        guard FileManager.default.fileExists(atPath: path) else {
            XCTFail("\(path) is missing: run `make model`")
            throw ModelError.io(file: path, reason: "missing")
        }
        return path
    }

    nonisolated(unsafe) private static var cachedSmol: LlamaModel?
    private static let lock = NSLock()

    /// SmolLM2 loaded once per test process.
    static func smol() throws -> LlamaModel {
        lock.lock(); defer { lock.unlock() }
        if let m = cachedSmol { return m }
        let m = try LlamaModel.load(gguf: GGUFFile(path: smolPath()))
        cachedSmol = m
        return m
    }

    static func json(_ name: String) throws -> Any {
        try JSONSerialization.jsonObject(with: Data(contentsOf: fixture(name)))
    }

    static func floats(_ a: Any) -> [Float] { (a as! [NSNumber]).map { $0.floatValue } }
    static func ints(_ a: Any) -> [Int32] { (a as! [NSNumber]).map { $0.int32Value } }

    /// max |a − b| / max |b| — the relative error used against references.
    static func relativeError(_ a: [Float], _ b: [Float]) -> Float {
        precondition(a.count == b.count)
        var num: Float = 0, den: Float = 0
        for i in a.indices { num = max(num, abs(a[i] - b[i])); den = max(den, abs(b[i])) }
        return den == 0 ? num : num / den
    }
}

extension LlamaModel {
    /// All logits (T, vocab) of one full sequence.
    func logits(_ tokens: [Int32]) throws -> [Float] {
        var b = ForwardBatch()
        b.append(tokens, startPos: 0, slot: 0, logits: .all)
        let acts = Activations(config: config)
        let p = try forward(b, kv: nil, acts: acts)
        return Array(UnsafeBufferPointer(start: p, count: tokens.count * config.vocabSize))
    }
}
