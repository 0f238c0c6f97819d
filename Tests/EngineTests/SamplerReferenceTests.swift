import Foundation
import XCTest
@testable import Engine

/// `Sampler` against an external reference (Fixtures/sampler.json, written by
/// scripts/reference/sampler.py): transformers' `RepetitionPenaltyLogitsProcessor`,
/// `TemperatureLogitsWarper`, `TopKLogitsWarper`, `TopPLogitsWarper`, `MinPLogitsWarper` and the
/// OpenAI / vLLM presence and frequency penalties turn the same float32 logits and penalty state
/// (prompt + generated tokens) into a distribution, and numpy's inverse CDF (ids ascending) turns
/// the same uniform draws into tokens. Covers each option alone and in combinations, greedy with
/// penalties, and the sampler's own random stream (xoshiro256** written from its reference code).
final class SamplerReferenceTests: XCTestCase {
    struct Fixture: Decodable {
        var vocab: Int
        var xoshiro256starstar_seed42: [String]
        var cases: [Case]
    }

    struct Params: Decodable {
        var temperature: Float
        var top_k: Int
        var top_p: Float
        var min_p: Float
        var repetition_penalty: Float
        var presence_penalty: Float
        var frequency_penalty: Float

        var sampling: SamplerSettings {
            var p = SamplerSettings()
            p.temperature = temperature
            p.topK = top_k
            p.topP = top_p
            p.minP = min_p
            p.repetitionPenalty = repetition_penalty
            p.presencePenalty = presence_penalty
            p.frequencyPenalty = frequency_penalty
            return p
        }
    }

    struct Case: Decodable {
        var params: Params
        var logits_bits: [UInt32]
        var prompt: [Int32]
        var generated: [Int32]
        var greedy: Int32?
        var probs: [Double]?
        var uniforms_2_53: [UInt64]?
        var tokens: [Int32]?
        var seed: UInt64?
        var seeded_tokens: [Int32]?

        var logits: [Float] { logits_bits.map { Float(bitPattern: $0) } }
    }

    static let fixture: Fixture = {
        let url = Bundle.module.url(forResource: "Fixtures/sampler", withExtension: "json")!
        return try! JSONDecoder().decode(Fixture.self, from: Data(contentsOf: url))
    }()

    /// A sampler in the state of the case: prompt given, generated tokens accepted.
    func sampler(_ c: Case, seed: UInt64 = 0) -> Sampler {
        var s = Sampler(params: c.params.sampling, rng: RandomSource(seed: seed), prompt: c.prompt)
        for t in c.generated { s.accept(t) }
        return s
    }

    func testTheFixtureCoversEveryOption() {
        let cases = Self.fixture.cases
        XCTAssertGreaterThanOrEqual(cases.count, 26)
        let p = cases.map(\.params)
        XCTAssertTrue(p.contains { $0.top_k == 1 } && p.contains { $0.top_k > 1 })
        XCTAssertTrue(p.contains { $0.top_p < 1 } && p.contains { $0.min_p > 0 })
        XCTAssertTrue(p.contains { $0.repetition_penalty > 1 } && p.contains { $0.repetition_penalty < 1 })
        XCTAssertTrue(p.contains { $0.presence_penalty < 0 } && p.contains { $0.frequency_penalty < 0 })
        XCTAssertTrue(p.contains { $0.temperature < 1 && $0.temperature > 0 } && p.contains { $0.temperature > 1 })
        XCTAssertGreaterThanOrEqual(cases.filter { $0.greedy != nil }.count, 4)
    }

    /// The probabilities the next draw uses equal the processed softmax: the same tokens dropped
    /// (exactly 0), the others within 2e-6.
    func testDistributionsEqualTransformersLogitsProcessors() {
        let V = Self.fixture.vocab
        for (k, c) in Self.fixture.cases.enumerated() {
            guard let ref = c.probs else { continue }
            let logits = c.logits
            let mine = logits.withUnsafeBufferPointer { sampler(c).distribution($0.baseAddress!, vocab: V) }
            var worst = 0.0, droppedDiffer: [Int] = []
            for i in 0..<V {
                if (ref[i] == 0) != (mine[i] == 0) { droppedDiffer.append(i) }
                worst = max(worst, abs(mine[i] - ref[i]))
            }
            XCTAssertEqual(droppedDiffer, [], "case \(k) \(c.params): tokens kept by one side only")
            XCTAssertLessThanOrEqual(worst, 2e-6, "case \(k) \(c.params): largest probability difference")
        }
    }

    /// With the reference's uniforms fed in, every draw is the token numpy's inverse CDF picks.
    func testDrawsWithTheReferenceUniformsEqualTheInverseCDF() {
        let V = Self.fixture.vocab
        var draws = 0
        for (k, c) in Self.fixture.cases.enumerated() {
            guard let us = c.uniforms_2_53, let tokens = c.tokens else { continue }
            var s = sampler(c)
            let logits = c.logits
            let mine = us.map { u in logits.withUnsafeBufferPointer { s.sample($0.baseAddress!, vocab: V, uniform: Double(u) * 0x1.0p-53) } }
            XCTAssertEqual(mine, tokens, "case \(k) \(c.params)")
            draws += us.count
        }
        XCTAssertGreaterThan(draws, 400)
    }

    /// `sample` drawing from its own stream, `RandomSource(seed:)`, picks the tokens the reference
    /// picks with the same xoshiro256** outputs: the uniform seam is the path real sampling takes.
    func testSeededDrawsEqualTheReference() {
        let V = Self.fixture.vocab
        for (k, c) in Self.fixture.cases.enumerated() {
            guard let seed = c.seed, let tokens = c.seeded_tokens else { continue }
            var s = sampler(c, seed: seed)
            let logits = c.logits
            let mine = tokens.indices.map { _ in logits.withUnsafeBufferPointer { s.sample($0.baseAddress!, vocab: V) } }
            XCTAssertEqual(mine, tokens, "case \(k) \(c.params)")
        }
    }

    func testRandomSourceIsXoshiro256StarStarSeededBySplitMix64() {
        var r = RandomSource(seed: 42)
        XCTAssertEqual((0..<8).map { _ in String(r.next()) }, Self.fixture.xoshiro256starstar_seed42)
    }

    /// Temperature 0 with penalties: the argmax of the penalised logits (not of the raw ones; the
    /// fixture only holds cases where the two differ), whatever top-k/p and min-p say.
    func testGreedyPicksTheArgmaxOfThePenalisedLogits() {
        let V = Self.fixture.vocab
        var penalised = 0
        for (k, c) in Self.fixture.cases.enumerated() {
            guard let greedy = c.greedy else { continue }
            var s = sampler(c)
            let logits = c.logits
            XCTAssertEqual(logits.withUnsafeBufferPointer { s.sample($0.baseAddress!, vocab: V) }, greedy, "case \(k) \(c.params)")
            let d = logits.withUnsafeBufferPointer { s.distribution($0.baseAddress!, vocab: V) }
            XCTAssertEqual(d[Int(greedy)], 1, "case \(k)")
            if c.params.repetition_penalty != 1 || c.params.presence_penalty != 0 || c.params.frequency_penalty != 0 {
                penalised += 1
                XCTAssertNotEqual(Int(greedy), logits.indices.max { logits[$0] < logits[$1] }, "case \(k): the penalties change nothing")
            }
        }
        XCTAssertGreaterThanOrEqual(penalised, 3)
    }
}
