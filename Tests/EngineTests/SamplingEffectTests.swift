import Foundation
import XCTest
@testable import Engine
import Model
import Tokenizer

/// Sampling options tested for their effect on what the engine generates (the tiny 2-layer model),
/// against expectations computed here from the model's raw logits (a full forward pass, no KV cache):
/// penalties steer greedy decoding exactly as their formulas say, top-k / top-p / min-p bound every
/// draw (and the same draws without them do not stay in bounds), top-k 1 / tiny top-p / min-p 1 are
/// greedy, stop strings cut the text and end with `stop`, max tokens bounds every sample, seeds
/// reproduce. (The sampler's distribution itself is checked against transformers in
/// SamplerReferenceTests; stop tokens and ignore-EOS in EngineTests.testStopTokensAndIgnoreEOS.)
final class SamplingEffectTests: XCTestCase {
    let tok = Fixtures.tinyTokenizer

    func engine(_ model: LlamaModel) throws -> GenerationEngine {
        var c = EngineConfig()
        c.blockSize = 4
        c.kvCacheMB = 4
        return try GenerationEngine(model: model, tokenizer: tok, config: c)
    }

    func prompt(_ n: Int, _ salt: Int) -> [Int32] { (0..<n).map { Int32(3 + ($0 * 7 + salt * 13) % 94) } }

    func run(_ engine: GenerationEngine, _ r: GenerationRequest) throws -> Outcome {
        let id = try engine.submit(r)
        return engine.runUntilIdle()[id]!
    }

    func request(_ p: [Int32], maxTokens: Int, n: Int = 1, _ f: (inout SamplerSettings) -> Void) -> GenerationRequest {
        var params = SamplerSettings()
        f(&params)
        var r = GenerationRequest(prompt: p, params: params, maxTokens: maxTokens, n: n)
        r.ignoreEOS = true
        return r
    }

    /// The raw logits (vocab) after `context`.
    func lastLogits(_ model: LlamaModel, _ context: [Int32]) throws -> [Float] {
        let V = model.config.vocabSize
        return Array(try fullLogits(model, context).suffix(V))
    }

    /// Greedy decoding with `adjust` applied to each step's raw logits (given the prompt and the
    /// tokens generated so far); also the smallest gap between the best and second-best adjusted
    /// logit (a near tie could go either way under the engine's paged-attention rounding).
    func greedy(_ model: LlamaModel, _ prompt: [Int32], steps: Int,
                adjust: (inout [Float], [Int32], [Int32]) -> Void) throws -> (tokens: [Int32], margin: Float) {
        var out: [Int32] = []
        var margin = Float.infinity
        for _ in 0..<steps {
            var x = try lastLogits(model, prompt + out)
            adjust(&x, prompt, out)
            let order = x.indices.sorted { x[$0] > x[$1] }
            margin = min(margin, x[order[0]] - x[order[1]])
            out.append(Int32(order[0]))
        }
        return (out, margin)
    }

    /// transformers' RepetitionPenaltyLogitsProcessor: logits of every token in prompt + generated
    /// divided by r when positive, multiplied by r otherwise.
    func repetition(_ r: Float) -> (inout [Float], [Int32], [Int32]) -> Void {
        { x, prompt, generated in
            for t in Set(prompt + generated) { let v = x[Int(t)]; x[Int(t)] = v > 0 ? v / r : v * r }
        }
    }

    /// OpenAI / vLLM: logit − presence · [count > 0] − frequency · count, count among generated tokens only.
    func presenceFrequency(_ presence: Float, _ frequency: Float) -> (inout [Float], [Int32], [Int32]) -> Void {
        { x, _, generated in
            var counts: [Int32: Int] = [:]
            for t in generated { counts[t, default: 0] += 1 }
            for (t, n) in counts { x[Int(t)] -= presence + Float(n) * frequency }
        }
    }

    /// For each penalty setting: a prompt where the penalised greedy path differs from the plain one
    /// (and no step is a near tie), and the engine's greedy output with that penalty equals it.
    func checkPenalty(_ name: String, _ set: (inout SamplerSettings) -> Void,
                      _ adjust: @escaping (inout [Float], [Int32], [Int32]) -> Void) throws {
        let model = try Fixtures.tiny()
        let engine = try engine(model)
        let steps = 16
        for salt in 0..<40 {
            let p = prompt(6, salt)
            let plain = try greedy(model, p, steps: steps) { _, _, _ in }
            let penalised = try greedy(model, p, steps: steps, adjust: adjust)
            guard penalised.tokens != plain.tokens, penalised.margin > 1e-3, plain.margin > 1e-3 else { continue }
            let out = try run(engine, request(p, maxTokens: steps) { $0.temperature = 0; set(&$0) })
            XCTAssertEqual(out.samples[0].tokens, penalised.tokens, "\(name), prompt \(p): the formula's greedy path")
            XCTAssertNotEqual(out.samples[0].tokens, plain.tokens, name)
            // The reported log-probs stay the raw policy's.
            let logits = try fullLogits(model, p + penalised.tokens)
            let V = model.config.vocabSize
            for (j, t) in penalised.tokens.enumerated() {
                let ref = logits.withUnsafeBufferPointer { referenceLogprob($0.baseAddress! + (p.count - 1 + j) * V, vocab: V, token: t) }
                XCTAssertEqual(Double(out.samples[0].logprobs[j]), ref, accuracy: 1e-4, name)
            }
            return
        }
        XCTFail("\(name): no prompt where the penalty changes the greedy path")
    }

    func testRepetitionPenaltyFollowsTransformersFormula() throws {
        try checkPenalty("repetition 1.5", { $0.repetitionPenalty = 1.5 }, repetition(1.5))
        try checkPenalty("repetition 0.6", { $0.repetitionPenalty = 0.6 }, repetition(0.6))
    }

    func testPresenceAndFrequencyPenaltiesFollowTheOpenAIFormula() throws {
        try checkPenalty("presence 0.8", { $0.presencePenalty = 0.8 }, presenceFrequency(0.8, 0))
        try checkPenalty("presence -0.7", { $0.presencePenalty = -0.7 }, presenceFrequency(-0.7, 0))
        try checkPenalty("frequency 0.6", { $0.frequencyPenalty = 0.6 }, presenceFrequency(0, 0.6))
        try checkPenalty("presence 0.5 + frequency 0.4 + repetition 1.2", {
            $0.presencePenalty = 0.5; $0.frequencyPenalty = 0.4; $0.repetitionPenalty = 1.2
        }) { x, p, g in self.repetition(1.2)(&x, p, g); self.presenceFrequency(0.5, 0.4)(&x, p, g) }
    }

    /// top-k 1, a tiny top-p and min-p 1 keep only the most likely token: sampled output (any seed,
    /// a high temperature) equals greedy.
    func testFiltersThatKeepOneTokenAreGreedy() throws {
        let model = try Fixtures.tiny()
        let engine = try engine(model)
        let p = prompt(7, 3)
        let greedyTokens = try run(engine, request(p, maxTokens: 12) { $0.temperature = 0 }).samples[0].tokens
        for (name, f) in [("top_k 1", { (s: inout SamplerSettings) in s.topK = 1 }),
                          ("top_p 1e-6", { (s: inout SamplerSettings) in s.topP = 1e-6 }),
                          ("min_p 1", { (s: inout SamplerSettings) in s.minP = 1 })] as [(String, (inout SamplerSettings) -> Void)] {
            for seed in [1, 2, 3] as [UInt64] {
                let o = try run(engine, request(p, maxTokens: 12, n: 3) { $0.temperature = 1.5; $0.seed = seed; f(&$0) })
                for s in o.samples { XCTAssertEqual(s.tokens, greedyTokens, "\(name), seed \(seed)") }
            }
        }
        // Without a filter the same sampling is not greedy.
        let free = try run(engine, request(p, maxTokens: 12, n: 3) { $0.temperature = 1.5; $0.seed = 1 })
        XCTAssertTrue(free.samples.contains { $0.tokens != greedyTokens })
    }

    /// Every token drawn under top-k 5 / min-p 0.2 / top-p 0.5 (temperature 1.5) is inside the set
    /// the filter keeps, computed from the raw logits at its step; the same draws without the filter
    /// leave that set (so the check can fail), and the filtered draws are not all greedy.
    func testTopKTopPAndMinPBoundEveryDraw() throws {
        let model = try Fixtures.tiny()
        let engine = try engine(model)
        let T: Float = 1.5
        let p = prompt(5, 9)
        typealias Bound = (_ logits: [Float], _ token: Int32) -> Bool
        /// Tempered probabilities, double precision.
        func probs(_ x: [Float]) -> [Double] {
            let m = Double(x.max()!)
            let e = x.map { exp((Double($0) - m) / Double(T)) }
            let s = e.reduce(0, +)
            return e.map { $0 / s }
        }
        let topK: Bound = { x, t in x.filter { $0 > x[Int(t)] }.count < 5 }
        let minP: Bound = { x, t in let q = probs(x); return q[Int(t)] >= 0.2 * q.max()! - 1e-6 }
        let topP: Bound = { x, t in let q = probs(x); return q.filter { $0 > q[Int(t)] }.reduce(0, +) < 0.5 + 1e-6 }
        for (name, f, inBounds) in [("top_k 5", { (s: inout SamplerSettings) in s.topK = 5 }, topK),
                                    ("min_p 0.2", { (s: inout SamplerSettings) in s.minP = 0.2 }, minP),
                                    ("top_p 0.5", { (s: inout SamplerSettings) in s.topP = 0.5 }, topP)]
            as [(String, (inout SamplerSettings) -> Void, Bound)] {
            var outside = [0, 0], draws = 0, firstTokens = Set<Int32>()
            for (k, filtered) in [true, false].enumerated() {
                let o = try run(engine, request(p, maxTokens: 6, n: 16) { $0.temperature = T; $0.seed = 11; if filtered { f(&$0) } })
                for s in o.samples {
                    if filtered { firstTokens.insert(s.tokens[0]) }
                    for j in s.tokens.indices {
                        let x = try lastLogits(model, p + s.tokens[..<j])
                        if !inBounds(x, s.tokens[j]) { outside[k] += 1 }
                        if filtered { draws += 1 }
                    }
                }
            }
            XCTAssertEqual(draws, 16 * 6, name)
            XCTAssertEqual(outside[0], 0, "\(name): draws outside the kept set")
            XCTAssertGreaterThan(outside[1], 0, "\(name): unfiltered draws never leave the set, so this check could not fail")
            XCTAssertGreaterThan(firstTokens.count, 1, "\(name) sampled like greedy")
        }
    }

    /// A stop string ends the sample with `stop`, the text cut before it, the ids ending with the
    /// token that completed it; streamed deltas add up to the cut text; the earliest of two wins.
    func testStopStringsCutTheTextAndEndWithStop() throws {
        let model = try Fixtures.tiny()
        let engine = try engine(model)
        let p = prompt(6, 4)
        let full = try run(engine, request(p, maxTokens: 30) { $0.temperature = 0 }).samples[0]
        let text = full.text
        XCTAssertEqual(full.finishReason, .length)
        // A two-character piece first seen at character 6 or later, and one seen later still.
        let chars = Array(text)
        func firstPiece(from: Int) -> (String, Int)? {
            for i in from..<(chars.count - 2) {
                let s = String(chars[i..<i + 2])
                if let r = text.range(of: s), text.distance(from: text.startIndex, to: r.lowerBound) == i { return (s, i) }
            }
            return nil
        }
        guard let (stop, at) = firstPiece(from: 6), let (later, laterAt) = firstPiece(from: at + 4) else {
            return XCTFail("greedy text \(text.debugDescription) has no fresh two-character pieces")
        }
        var r = request(p, maxTokens: 30) { $0.temperature = 0 }
        r.stop = [stop]
        r.stream = true
        let o = try run(engine, r)
        let s = o.samples[0]
        XCTAssertEqual(s.finishReason, .stop)
        XCTAssertEqual(s.text, String(chars[..<at]))
        let k = (1...full.tokens.count).first { tok.decode(Array(full.tokens[..<$0])).contains(stop) }!
        XCTAssertEqual(s.tokens, Array(full.tokens[..<k]))
        XCTAssertEqual(o.chunks.map(\.textDelta).joined(), s.text)
        r.stop = [later, stop]
        XCTAssertEqual(try run(engine, r).samples[0].text, String(chars[..<min(at, laterAt)]))
    }

    /// max tokens: every sample has exactly that many tokens (and log-probs), finish `length`; a
    /// prompt plus max tokens beyond the context is refused naming max_tokens.
    func testMaxTokensBoundsEverySample() throws {
        let model = try Fixtures.tiny()
        let engine = try engine(model)
        for m in [1, 5, 17] {
            var r = request(prompt(6, 1), maxTokens: m, n: 3) { $0.temperature = 1; $0.seed = 4 }
            r.prompts.append(prompt(9, 2))
            let o = try run(engine, r)
            XCTAssertEqual(o.samples.count, 6)
            for s in o.samples {
                XCTAssertEqual(s.tokens.count, m)
                XCTAssertEqual(s.logprobs.count, m)
                XCTAssertEqual(s.finishReason, .length)
            }
            XCTAssertEqual(o.done?.completionTokens, 6 * m)
        }
        XCTAssertThrowsError(try engine.submit(request(prompt(6, 1), maxTokens: 64 - 5) { _ in })) {
            XCTAssertEqual(field(of: $0), "sampling.max_tokens")
        }
    }

    /// A seed reproduces a request's samples on another engine and batched among other requests;
    /// another seed, or the n samples of one request, differ.
    func testSeedsReproduceSamples() throws {
        let model = try Fixtures.tiny()
        let p = prompt(8, 5)
        func samples(_ e: GenerationEngine, seed: UInt64) throws -> [[Int32]] {
            try run(e, request(p, maxTokens: 10, n: 4) { $0.temperature = 1.2; $0.topP = 0.95; $0.seed = seed }).ordered.map(\.tokens)
        }
        let a = try engine(model), b = try engine(model)
        let first = try samples(a, seed: 7)
        XCTAssertEqual(try samples(b, seed: 7), first)
        // Batched with other requests (and after them): the same.
        let others = try (0..<3).map { try b.submit(request(prompt(5 + $0, $0), maxTokens: 8, n: 2) { $0.temperature = 1; $0.seed = 99 }) }
        let again = try b.submit(request(p, maxTokens: 10, n: 4) { $0.temperature = 1.2; $0.topP = 0.95; $0.seed = 7 })
        let out = b.runUntilIdle()
        XCTAssertEqual(out[again]!.ordered.map(\.tokens), first)
        XCTAssertEqual(others.compactMap { out[$0]?.done }.count, 3)
        XCTAssertNotEqual(try samples(a, seed: 8), first)
        XCTAssertGreaterThan(Set(first).count, 1, "the n samples of one request are independent draws")
    }
}
