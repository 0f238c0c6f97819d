import Foundation
import XCTest
@testable import Engine
import Model
import Tokenizer

/// The precision contract (README "Precision contract"): each compact engine precision's log-probs
/// stay within a bound derived from its format of the f32 engine's, on the tiny fixture models and
/// on SmolLM2; the engine serves and publishes in its precision, converting on the publishing
/// thread, and computes what the offline tools compute in the same precision.
final class PrecisionContractTests: XCTestCase {
    /// Mean |Δ log-prob| per token may be at most this many times the format's per-product relative
    /// error (`EnginePrecision.productRelativeError`: bf16 2^-8, q8 1/127). Measured on SmolLM2
    /// (1000 tokens): bf16 3.0×, q8 8.7× (README); the random tiny models: up to 7.4× and 12.8×.
    static let meanBoundFactor = 20.0

    func check(_ model: LlamaModel, ids: [Int32], name: String) throws {
        let ref = try PrecisionContract.tokenLogProbs(model, ids: ids, chunk: 24)
        for p in [EnginePrecision.bf16, .q8] {
            let m = try LlamaModel.inference(from: model.weights, precision: p)
            let lp = try PrecisionContract.tokenLogProbs(m, ids: ids, chunk: 24)
            let d = PrecisionContract.LogProbDeviation(reference: ref, other: lp)
            let bound = Self.meanBoundFactor * p.productRelativeError
            print(String(format: "%@ %@: mean |Δ log-prob| %.5f (bound %.4f), max %.4f over %d tokens",
                         name as NSString, p.rawValue as NSString, d.mean, bound, d.max, d.tokens))
            XCTAssertLessThanOrEqual(d.mean, bound, "\(name) \(p)")
            XCTAssertTrue(d.max.isFinite, "\(name) \(p)")
        }
        // f32 through the engine's snapshot path: exactly the model's own forward.
        let f = try LlamaModel.inference(from: model.weights, precision: .f32)
        XCTAssertEqual(try PrecisionContract.tokenLogProbs(f, ids: ids, chunk: 24), ref)
    }

    func testTinyModelsStayWithinTheFormatBound() throws {
        for name in ["tiny-untied", "tiny-tied"] {
            let m = try LlamaModel.load(huggingFaceDirectory: Fixtures.packageRoot.appendingPathComponent("Tests/ModelTests/Fixtures/\(name)").path)
            var s: UInt64 = 5
            let ids = (0..<64).map { _ in s = s &* 6364136223846793005 &+ 1442695040888963407; return Int32((s >> 33) % UInt64(m.config.vocabSize)) }
            try check(m, ids: ids, name: name)
        }
    }

    func testSmolLM2StaysWithinTheFormatBound() throws {
        let smol = try Fixtures.smol()
        let text = try String(contentsOf: Fixtures.packageRoot.appendingPathComponent("Tests/ModelTests/Fixtures/precision_text.txt"), encoding: .utf8)
        let ids = Array(smol.tokenizer.encode(text, parseSpecial: false, addBOS: smol.tokenizer.addBOS).prefix(193))
        try check(smol.model, ids: ids, name: "SmolLM2")
    }

    /// A q8 engine converts each publication in `publish`, on the caller's thread (the version is
    /// pending, its snapshot made, before any step runs), reads the weights only during the call,
    /// and then generates exactly what the offline generator computes on the same weights in q8.
    func testQ8EnginePublishesPackedSnapshotsAndMatchesTheOfflineGenerator() throws {
        let base = try Fixtures.tiny()
        let q8 = try LlamaModel.inference(from: base.weights, precision: .q8)
        var config = EngineConfig()
        config.kvCacheMB = 1
        let engine = try GenerationEngine(model: q8, tokenizer: Fixtures.tinyTokenizer, config: config)
        XCTAssertEqual(engine.precision, .q8)
        XCTAssertEqual(engine.status().precision, .q8)
        XCTAssertEqual(engine.status().snapshotBytes, q8.weightBytes)
        XCTAssertEqual(engine.status().publishPacks, 0)

        let live = Fixtures.perturbed(base, seed: 3)    // the learner's weights
        let kept = live.copy()
        try engine.publish(weights: live, version: 2)
        let s = engine.status()
        XCTAssertEqual(s.pendingVersion, 2)
        XCTAssertEqual(s.publishPacks, 1, "packed inside publish, on this thread")
        XCTAssertGreaterThan(s.lastPublishPackSeconds, 0)
        live.zero()                                      // the learner trains on after the call

        var p = SamplerSettings()
        p.temperature = 0
        p.maxTokens = 12
        var r = GenerationRequest(prompt: [5, 6, 7, 8], params: p, maxTokens: 12)
        r.ignoreEOS = true
        let id = try engine.submit(r)
        var ids: [Int32] = [], logprobs: [Float] = []
        for _ in 0..<100 where ids.isEmpty {
            engine.step()
            for e in engine.drainEvents() {
                if case .sample(let fs) = e, fs.id == id { ids = fs.tokens; logprobs = fs.logprobs }
            }
        }
        XCTAssertEqual(engine.currentVersion, 2)
        let offline = try SingleSequenceGenerator(model: LlamaModel.inference(from: kept, precision: .q8))
            .generate(prompt: [5, 6, 7, 8], params: p, stopTokens: [])
        XCTAssertEqual(ids, offline.ids)
        XCTAssertEqual(logprobs.count, offline.logprobs.count)
        for (a, b) in zip(logprobs, offline.logprobs) { XCTAssertEqual(a, b, accuracy: 1e-5) }
        engine.stop()
    }

    /// `publish` reads the weights during the call only, in every precision: the learner hands over
    /// its live weights (no f32 copy of its own) and trains on; the version serves what they were.
    func testPublishReadsTheWeightsOnlyDuringTheCall() throws {
        let base = try Fixtures.tiny()
        for precision in [EnginePrecision.f32, .q8] {
            var config = EngineConfig()
            config.kvCacheMB = 1
            let engine = try GenerationEngine(model: LlamaModel.inference(from: base.weights, precision: precision),
                                              tokenizer: Fixtures.tinyTokenizer, config: config)
            let live = Fixtures.perturbed(base, seed: 5)
            let kept = live.copy()
            try engine.publish(weights: live, version: 2)
            for i in 0..<live.count { live.data[i] *= -0.5 }   // the learner's next step
            var p = SamplerSettings()
            p.temperature = 0
            var r = GenerationRequest(prompt: [9, 10, 11], params: p, maxTokens: 10)
            r.ignoreEOS = true
            let id = try engine.submit(r)
            var ids: [Int32] = []
            for _ in 0..<100 where ids.isEmpty {
                engine.step()
                for e in engine.drainEvents() { if case .sample(let s) = e, s.id == id { ids = s.tokens } }
            }
            p.maxTokens = 10
            let want = try SingleSequenceGenerator(model: LlamaModel.inference(from: kept, precision: precision))
                .generate(prompt: [9, 10, 11], params: p, stopTokens: []).ids
            XCTAssertEqual(ids, want, "\(precision): the published version serves the weights as they were at publish")
            engine.stop()
        }
    }
}
