import Foundation
import Kernels
import Model
import XCTest
@testable import Engine

/// The f16 KV cache (`EngineConfig.kvCachePrecision`): the compact engines' default; same results
/// as the f32 cache up to half-precision rounding of keys and values, decoding and prefilling.
final class KVCachePrecisionTests: XCTestCase {
    static func greedy(_ model: LlamaModel, kv: KVCachePrecision?, prompts: [[Int32]], maxTokens: Int) throws
        -> (engine: KVCachePrecision, samples: [[Int32]], logprobs: [[Float]]) {
        var config = EngineConfig()
        config.kvCacheMB = 1
        config.blockSize = 4
        config.kvCachePrecision = kv
        let engine = try GenerationEngine(model: model, tokenizer: Fixtures.tinyTokenizer, config: config)
        defer { engine.stop() }
        var p = SamplerSettings()
        p.temperature = 0
        var ids: [RequestID] = []
        for prompt in prompts {
            var r = GenerationRequest(prompt: prompt, params: p, maxTokens: maxTokens)
            r.ignoreEOS = true
            ids.append(try engine.submit(r))
        }
        var out: [RequestID: ([Int32], [Float])] = [:]
        for _ in 0..<1000 where out.count < prompts.count {
            engine.step()
            for e in engine.drainEvents() { if case .sample(let s) = e { out[s.id] = (s.tokens, s.logprobs) } }
        }
        return (engine.kvCachePrecision, ids.map { out[$0]?.0 ?? [] }, ids.map { out[$0]?.1 ?? [] })
    }

    func testHalfCacheMatchesTheFloatCacheUpToRounding() throws {
        let model = try Fixtures.tiny()
        // Prompts of 1 … 20 tokens (decoded in place; the longer ones prefill through the gathered path),
        // 12 new tokens each, all in one batch over blocks of 4 positions.
        let prompts: [[Int32]] = (1...20).map { n in (0..<n).map { Int32(3 + ($0 * 7 + n) % 90) } }
        let exact = try Self.greedy(model, kv: nil, prompts: prompts, maxTokens: 12)
        let half = try Self.greedy(model, kv: .f16, prompts: prompts, maxTokens: 12)
        XCTAssertEqual(exact.engine, .f32, "the f32 engine keeps the f32 cache by default")
        XCTAssertEqual(half.engine, .f16)
        var worst: Float = 0, same = 0
        for (a, b) in zip(exact.samples, half.samples) where a == b { same += 1 }
        for (a, b) in zip(exact.logprobs, half.logprobs) {
            XCTAssertEqual(a.count, 12); XCTAssertEqual(b.count, 12)
            for (x, y) in zip(a, b) { worst = max(worst, abs(x - y)) }
        }
        XCTAssertGreaterThanOrEqual(same, 18, "greedy samples identical in \(same) of 20")
        XCTAssertLessThan(worst, 2e-2, "max |Δ log-prob| \(worst)")
    }
}

extension KVCachePrecisionTests {
    /// Mean |Δ log-prob| against the reference over the tokens up to the first greedy divergence,
    /// and the number of samples identical to the reference.
    static func deviation(_ x: (engine: KVCachePrecision, samples: [[Int32]], logprobs: [[Float]]),
                          from ref: (engine: KVCachePrecision, samples: [[Int32]], logprobs: [[Float]])) -> (mean: Double, same: Int) {
        var sum = 0.0, n = 0, same = 0
        for i in ref.samples.indices {
            if x.samples[i] == ref.samples[i] { same += 1 }
            for t in ref.samples[i].indices {
                sum += Double(abs(x.logprobs[i][t] - ref.logprobs[i][t])); n += 1
                if x.samples[i][t] != ref.samples[i][t] { break }
            }
        }
        return (sum / Double(max(n, 1)), same)
    }

    /// The compact engines default to the f16 cache; against the f32 engine it adds little to what
    /// their products already cost (their rounding of activations to bf16 / 8 bits amplifies any
    /// small change, so the comparison is with the f32 engine, not between the two caches).
    func testCompactEnginesDefaultToTheHalfCacheWhichAddsLittleDeviation() throws {
        let base = try Fixtures.tiny()
        let prompts: [[Int32]] = (1...20).map { n in (0..<n).map { Int32(3 + ($0 * 7 + n) % 90) } }
        let ref = try Self.greedy(base, kv: nil, prompts: prompts, maxTokens: 12)
        for precision in [EnginePrecision.bf16, .q8] {
            let model = try LlamaModel.inference(from: base.weights, precision: precision)
            let full = Self.deviation(try Self.greedy(model, kv: .f32, prompts: prompts, maxTokens: 12), from: ref)
            let halfRun = try Self.greedy(model, kv: nil, prompts: prompts, maxTokens: 12)
            XCTAssertEqual(halfRun.engine, .f16, "\(precision)")
            let half = Self.deviation(halfRun, from: ref)
            XCTAssertLessThan(half.mean, 1.3 * full.mean + 1e-3,
                              "\(precision): mean |Δ log-prob| vs the f32 engine: f16 cache \(half.mean), f32 cache \(full.mean)")
            XCTAssertGreaterThanOrEqual(half.same, full.same - 2, "\(precision): greedy samples identical to the f32 engine's")
        }
    }
}
