import Foundation
import XCTest
@testable import Engine
import Kernels
import Model

/// Score's `entropy` option against `torch.distributions.Categorical(logits).entropy()` of the
/// transformers logits of the same model and tokens (Fixtures/tiny-tied.entropy.json, written by
/// `scripts/reference/entropy.py` from the model tests' tiny-tied.logits.json), and the engine's
/// reference version: kept alive beside `maxLiveVersions`, released when another replaces it.
final class ScoreEntropyTests: XCTestCase {
    struct Fixture: Decodable {
        var sequences: [[Int32]]
        var entropies: [[Double]]
    }

    /// Each fixture sequence scored as prompt = its first token, continuation = the rest: the
    /// entropy at continuation token j is the one of the distribution after token j of the
    /// sequence (the f32 engine computes the learner's forward, within 1e-5 of transformers'
    /// logits). A wrong row (off by one), a wrong formula (the log-prob's entropy, a missing
    /// max shift) or base-2 logs fail by far more than the tolerance.
    func testEntropiesEqualTorchCategoricalEntropy() throws {
        let url = Bundle.module.url(forResource: "Fixtures/tiny-tied.entropy", withExtension: "json")!
        let fx = try JSONDecoder().decode(Fixture.self, from: Data(contentsOf: url))
        let model = try Fixtures.tiny()
        let engine = try GenerationEngine(model: model, tokenizer: Fixtures.tinyTokenizer)
        let long = fx.sequences.enumerated().filter { $0.element.count >= 2 }
        let id = try engine.score(ScoringRequest(
            items: long.map { ScoringItem(prompt: [$0.element[0]], continuation: Array($0.element.dropFirst())) }, entropy: true))
        let plain = try engine.score(ScoringRequest(items: [ScoringItem(prompt: [long[0].element[0]], continuation: Array(long[0].element.dropFirst()))]))
        var out: [RequestID: Outcome] = [:]
        engine.runUntilIdle(into: &out)
        let items = try XCTUnwrap(out[id]?.score?.items)
        XCTAssertEqual(items.count, long.count)
        var worst = 0.0
        for ((_, (i, seq)), item) in zip(long.enumerated(), items) {
            XCTAssertEqual(item.entropies.count, seq.count - 1)
            for (j, h) in item.entropies.enumerated() {
                let want = fx.entropies[i][j]
                worst = max(worst, abs(Double(h) - want))
                XCTAssertEqual(Double(h), want, accuracy: 1e-4, "sequence \(i), position \(j)")
            }
        }
        print("Score entropy vs torch Categorical: worst |Δ| \(worst) nats over \(items.map(\.entropies.count).reduce(0, +)) positions")
        XCTAssertEqual(out[plain]?.score?.items.first?.entropies, [], "no entropies unless asked for")
    }

    /// The kernel on rows whose entropy is known in closed form: uniform over n (log n), one token
    /// certain (0), two equal tokens among −inf logits (log 2: −inf adds nothing, never NaN), and a
    /// row shifted by a constant (unchanged), at lengths that leave a vector tail.
    func testKernelOnClosedFormRows() {
        for n in [1, 7, 16, 97, 1000, 49152] {
            let uniform = [Float](repeating: 3.25, count: n)
            XCTAssertEqual(kernels_entropy(uniform, Int32(n)), log(Double(n)), accuracy: 1e-6 * max(1, log(Double(n))))
            var peaked = [Float](repeating: -200, count: n)
            peaked[n / 2] = 10
            XCTAssertEqual(kernels_entropy(peaked, Int32(n)), 0, accuracy: 1e-9)
            if n >= 2 {
                var two = [Float](repeating: -.infinity, count: n)
                two[0] = 1; two[n - 1] = 1
                XCTAssertEqual(kernels_entropy(two, Int32(n)), log(2), accuracy: 1e-6)
            }
        }
        var rng = SystemRandomNumberGenerator()
        let row = (0..<1003).map { _ in Float.random(in: -8...8, using: &rng) }
        let shifted = row.map { $0 + 50 }
        // The definition in double precision, −Σ p log p, as the reference.
        let m = Double(row.max()!)
        let z = row.reduce(0.0) { $0 + exp(Double($1) - m) }
        let want = -row.reduce(0.0) { acc, x in let p = exp(Double(x) - m) / z; return acc + p * log(p) }
        XCTAssertEqual(kernels_entropy(row, Int32(row.count)), want, accuracy: 1e-5)
        XCTAssertEqual(kernels_entropy(shifted, Int32(row.count)), want, accuracy: 1e-5)
    }

    /// `keepReference` holds a version beside `maxLiveVersions` (here 1): publishing two more
    /// versions leaves it live and scoreable; a publication naming another reference lets the
    /// first go (freed, no longer scoreable) and keeps the new one.
    func testReferenceVersionIsKeptBesideTheLiveLimit() throws {
        let model = try Fixtures.tiny()
        var c = EngineConfig()
        c.maxLiveVersions = 1
        let engine = try GenerationEngine(model: model, tokenizer: Fixtures.tinyTokenizer, config: c)
        XCTAssertTrue(engine.keepReference(version: 1))
        XCTAssertEqual(engine.referenceVersion, 1)
        var out: [RequestID: Outcome] = [:]
        let p: [Int32] = [5, 9, 14, 20]
        for v in 2...3 {
            _ = try engine.publish(weights: Fixtures.perturbed(model, seed: UInt64(v)), learnerStep: UInt64(v - 1), referenceVersion: 1)
            engine.runUntilIdle(into: &out)
        }
        XCTAssertEqual(engine.status().liveVersions, [1, 3], "the reference and the newest (limit 1)")
        let s1 = try engine.score(ScoringRequest(items: [ScoringItem(prompt: p, continuation: [7, 8])], version: 1))
        engine.runUntilIdle(into: &out)
        XCTAssertEqual(out[s1]?.score?.version, 1)
        _ = try engine.publish(weights: Fixtures.perturbed(model, seed: 4), learnerStep: 3, referenceVersion: 3)
        engine.runUntilIdle(into: &out)
        XCTAssertEqual(engine.referenceVersion, 3)
        XCTAssertEqual(engine.status().liveVersions, [3, 4])
        XCTAssertThrowsError(try engine.score(ScoringRequest(items: [ScoringItem(prompt: p, continuation: [7])], version: 1))) {
            guard case .versionNotAlive(_, 1, _)? = $0 as? EngineError else { return XCTFail("\($0)") }
        }
        XCTAssertFalse(engine.keepReference(version: 2), "a version no longer live cannot be kept")
        XCTAssertEqual(engine.referenceVersion, 0)
        XCTAssertEqual(engine.status().liveVersions, [4], "version 3 freed with its last hold")
    }
}
