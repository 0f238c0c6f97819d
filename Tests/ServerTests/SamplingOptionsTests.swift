import Foundation
import Model
import ModelBundle
import Wire
import XCTest

/// Every sampling option of a `GenerateRequest` reaches the engine and has its effect, over the wire
/// of a real `selm serve` (the tiny chat model): penalties steer greedy output along the path their
/// formulas give from the model's raw logits (computed here in-process), one-token filters are
/// greedy, seeds reproduce, stop strings end with FINISH_REASON_STOP and the text cut, stop token ids
/// end with FINISH_REASON_EOS at their first occurrence, ignore_eos runs past the model's stop tokens,
/// max_tokens bounds the sample. (The sampler's own rule: EngineTests.SamplerReferenceTests and
/// SamplingEffectTests.)
final class SamplingOptionsTests: XCTestCase {
    static var tinyChat: String { ServerProcess.root.appendingPathComponent("Tests/ModelTests/Fixtures/tiny-chat").path }

    func samples(_ c: TestClient, _ id: UInt64, _ r: GenerateRequest) throws -> [Wire.SampleResult] {
        try c.send(id, .generate(r))
        var out: [Wire.SampleResult] = []
        while true {
            switch try c.receive(id) {
            case .sampleResult(let s): out.append(s)
            case .generateDone: return out.sorted { ($0.promptIndex, $0.sampleIndex) < ($1.promptIndex, $1.sampleIndex) }
            case .generateChunk: continue
            case let other: throw TestError("generate \(id): \(other)")
            }
        }
    }

    func lastLogits(_ model: LlamaModel, _ tokens: [Int32]) throws -> [Float] {
        var b = ForwardBatch()
        b.append(tokens, startPos: 0, slot: 0, logits: .all)
        let p = try model.forward(b, kv: nil, acts: Activations(config: model.config))
        let V = model.config.vocabSize
        return Array(UnsafeBufferPointer(start: p + (tokens.count - 1) * V, count: V))
    }

    /// Greedy decoding of `steps` tokens with `adjust` on each step's raw logits; the smallest gap
    /// between the two best adjusted logits.
    func greedy(_ model: LlamaModel, _ prompt: [Int32], steps: Int, adjust: (inout [Float], [Int32]) -> Void) throws -> ([Int32], Float) {
        var out: [Int32] = [], margin = Float.infinity
        for _ in 0..<steps {
            var x = try lastLogits(model, prompt + out)
            adjust(&x, out)
            let order = x.indices.sorted { x[$0] > x[$1] }
            margin = min(margin, x[order[0]] - x[order[1]])
            out.append(Int32(order[0]))
        }
        return (out, margin)
    }

    func testPenaltiesReachTheEngine() throws {
        let dir = try temporaryDirectory()
        let server = try ServerProcess(model: Self.tinyChat, dataDir: dir + "/data", args: ["--no-learner"])
        let c = try server.client()
        _ = try c.hello()
        let model = try ModelBundle(path: Self.tinyChat).model
        let cases: [(String, SamplingParams, (inout [Float], [Int32], [Int32]) -> Void)] = [
            ("repetition_penalty 1.4", SamplingParams(temperature: 0, repetitionPenalty: 1.4, maxTokens: 14), { x, prompt, gen in
                for t in Set(prompt + gen) { let v = x[Int(t)]; x[Int(t)] = v > 0 ? v / 1.4 : v * 1.4 }
            }),
            ("presence_penalty 0.8", SamplingParams(temperature: 0, presencePenalty: 0.8, maxTokens: 14), { x, _, gen in
                for t in Set(gen) { x[Int(t)] -= 0.8 }
            }),
            ("frequency_penalty 0.6", SamplingParams(temperature: 0, frequencyPenalty: 0.6, maxTokens: 14), { x, _, gen in
                var n: [Int32: Int] = [:]
                for t in gen { n[t, default: 0] += 1 }
                for (t, k) in n { x[Int(t)] -= Float(k) * 0.6 }
            }),
        ]
        var id: UInt64 = 1
        for (name, sampling, adjust) in cases {
            var checked = false
            for salt in 0..<40 where !checked {
                let prompt = (0..<6).map { Int32(3 + ($0 * 11 + salt * 7) % 90) }
                let (plain, m0) = try greedy(model, prompt, steps: 14) { _, _ in }
                let (penalised, m1) = try greedy(model, prompt, steps: 14) { x, gen in adjust(&x, prompt, gen) }
                guard plain != penalised, m0 > 1e-3, m1 > 1e-3 else { continue }
                let got = try samples(c, id, GenerateRequest(prompts: [.ids(prompt.map { UInt32($0) })], sampling: sampling, ignoreEOS: true))
                id += 1
                XCTAssertEqual(got[0].tokenIDs, penalised.map { UInt32($0) }, "\(name): the formula's greedy path")
                checked = true
            }
            XCTAssertTrue(checked, "\(name): no prompt where it changes the greedy path")
        }
        XCTAssertEqual(server.stop(), 0, server.log)
    }

    func testFiltersSeedsStopsAndLimitsOverTheWire() throws {
        let dir = try temporaryDirectory()
        let server = try ServerProcess(model: Self.tinyChat, dataDir: dir + "/data", args: ["--no-learner"])
        let c = try server.client()
        _ = try c.hello()
        let bundle = try ModelBundle(path: Self.tinyChat)
        let prompt: [UInt32] = [1, 40, 41, 42, 43]
        func req(_ s: SamplingParams, n: UInt32 = 1, stop: [String] = [], stopIDs: [UInt32] = [], ignoreEOS: Bool = true) -> GenerateRequest {
            GenerateRequest(prompts: [.ids(prompt)], sampling: s, n: n, stop: stop, stopTokenIDs: stopIDs, ignoreEOS: ignoreEOS)
        }
        let greedy = try samples(c, 1, req(SamplingParams(temperature: 0, maxTokens: 12)))[0]
        XCTAssertEqual(greedy.finishReason, .length)
        XCTAssertEqual(greedy.tokenIDs.count, 12)
        XCTAssertEqual(greedy.completionTokens, 12)

        // One-token filters are greedy at any temperature and seed; without one, sampling is not.
        for (k, s) in [SamplingParams(temperature: 1.5, topK: 1, seed: 3, maxTokens: 12),
                       SamplingParams(temperature: 1.5, topP: 1e-6, seed: 4, maxTokens: 12),
                       SamplingParams(temperature: 1.5, minP: 1, seed: 5, maxTokens: 12)].enumerated() {
            for sample in try samples(c, UInt64(10 + k), req(s, n: 3)) { XCTAssertEqual(sample.tokenIDs, greedy.tokenIDs, "\(s)") }
        }
        // Seeds: the same seed reproduces, another seed and the n samples differ.
        let seeded = SamplingParams(temperature: 1.3, seed: 77, maxTokens: 12)
        let a = try samples(c, 20, req(seeded, n: 4)).map(\.tokenIDs)
        XCTAssertEqual(try samples(c, 21, req(seeded, n: 4)).map(\.tokenIDs), a)
        var other = seeded
        other.seed = 78
        XCTAssertNotEqual(try samples(c, 22, req(other, n: 4)).map(\.tokenIDs), a)
        XCTAssertGreaterThan(Set(a).count, 1)
        XCTAssertTrue(a.contains { $0 != greedy.tokenIDs })

        // max_tokens.
        for m in [1, 7] as [UInt32] {
            let s = try samples(c, 30 + UInt64(m), req(SamplingParams(temperature: 1, seed: 1, maxTokens: m), n: 2))
            XCTAssertEqual(s.map { $0.tokenIDs.count }, [Int(m), Int(m)])
            XCTAssertTrue(s.allSatisfy { $0.finishReason == .length && $0.completionTokens == m })
        }

        // A stop string: FINISH_REASON_STOP, the text cut before it, the ids ending with the token
        // that completed it.
        let text = greedy.text
        let chars = Array(text)
        guard let at = (3..<max(3, chars.count - 2)).first(where: { i in
            text.range(of: String(chars[i..<i + 2])).map { text.distance(from: text.startIndex, to: $0.lowerBound) } == i
        }) else { return XCTFail("greedy text \(text.debugDescription) has no fresh two-character piece") }
        let piece = String(chars[at..<at + 2])
        let stopped = try samples(c, 40, req(SamplingParams(temperature: 0, maxTokens: 12), stop: [piece]))[0]
        XCTAssertEqual(stopped.finishReason, .stop)
        XCTAssertEqual(stopped.text, String(chars[..<at]))
        let tok = try bundle.tokenizer
        let k = (1...greedy.tokenIDs.count).first { tok.decode(greedy.tokenIDs[..<$0].map { Int32($0) }).contains(piece) }!
        XCTAssertEqual(stopped.tokenIDs, Array(greedy.tokenIDs[..<k]))

        // A stop token id: FINISH_REASON_EOS at its first occurrence, the id kept.
        let j = greedy.tokenIDs.indices.first { $0 >= 3 && greedy.tokenIDs.firstIndex(of: greedy.tokenIDs[$0]) == $0 }!
        let byID = try samples(c, 41, req(SamplingParams(temperature: 0, maxTokens: 12), stopIDs: [greedy.tokenIDs[j]]))[0]
        XCTAssertEqual(byID.finishReason, .eos)
        XCTAssertEqual(byID.tokenIDs, Array(greedy.tokenIDs[...j]))

        // ignore_eos: a seeded sample that meets one of the model's stop tokens runs on with it and,
        // drawing the same tokens up to there, stops there without it.
        let stops = Set(bundle.stopTokenIds.map { UInt32($0) })
        XCTAssertFalse(stops.isEmpty)
        var found = false
        for seed in 0..<20 as Range<UInt64> where !found {
            let r = GenerateRequest(prompts: [.ids(prompt)], sampling: SamplingParams(temperature: 1.5, seed: seed, maxTokens: 40),
                                    n: 16, ignoreEOS: true)
            let on = try samples(c, 100 + seed * 2, r)
            guard let i = on.firstIndex(where: { s in s.tokenIDs.dropLast().contains { stops.contains($0) } }) else { continue }
            found = true
            let e = on[i].tokenIDs.firstIndex { stops.contains($0) }!
            XCTAssertEqual(on[i].finishReason, .length)
            var off = r
            off.ignoreEOS = false
            let s = try samples(c, 101 + seed * 2, off)[i]
            XCTAssertEqual(s.finishReason, .eos)
            XCTAssertEqual(s.tokenIDs, Array(on[i].tokenIDs[...e]))
        }
        XCTAssertTrue(found, "no sample meets a stop token \(stops)")
        XCTAssertEqual(server.stop(), 0, server.log)
    }
}
