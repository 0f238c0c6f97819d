import Foundation
import Kernels
import XCTest
@testable import Engine
import Model
import Tokenizer

/// Engine precision q4 (4-bit Q4_1-like weights, `CK_Q4`): the precision contract's bound on the
/// tiny fixture models and on SmolLM2, the model file's own Q4_1 weights kept exactly, and a q4
/// engine publishing packed snapshots that compute what the offline generator computes.
final class Q4EngineTests: XCTestCase {
    /// Mean |Δ log-prob| per token at most this many times q4's per-product relative error
    /// (`EnginePrecision.q4.productRelativeError` = 1/15 + 1/254), as for bf16 and q8
    /// (PrecisionContractTests). Measured on 192 tokens: SmolLM2 1.0× (0.071: its linear weights are
    /// Q4_1 in the file and come back exactly, its head stays q8), the random tiny models 12.7× and
    /// 13.2× (q4 rounds their f32 weights).
    static let meanBoundFactor = 20.0

    func check(_ model: LlamaModel, ids: [Int32], name: String) throws {
        let ref = try PrecisionContract.tokenLogProbs(model, ids: ids, chunk: 24)
        let m = try LlamaModel.inference(from: model.weights, precision: .q4)
        let lp = try PrecisionContract.tokenLogProbs(m, ids: ids, chunk: 24)
        let d = PrecisionContract.LogProbDeviation(reference: ref, other: lp)
        let bound = Self.meanBoundFactor * EnginePrecision.q4.productRelativeError
        print(String(format: "%@ q4: mean |Δ log-prob| %.5f (bound %.4f), max %.4f over %d tokens",
                     name as NSString, d.mean, bound, d.max, d.tokens))
        XCTAssertLessThanOrEqual(d.mean, bound, name)
        XCTAssertTrue(d.max.isFinite, name)
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

    /// The linear weights SmolLM2's file stores as Q4_1 come back bit for bit from the q4 packing of
    /// their dequantised values: a q4 engine started from that file computes with the file's weights.
    func testSmolLM2sQ4_1WeightsArePackedExactly() throws {
        let smol = try Fixtures.smol()
        let gguf = try GGUFFile(path: Fixtures.smolPath)
        let c = smol.model.config
        var exact = 0, checked = 0
        for (l, p) in smol.model.weights.layers.enumerated() {
            let mats: [(String, UnsafeMutablePointer<Float>, Int, Int)] = [
                ("attn_q", p.wq, c.qDim, c.dim), ("attn_k", p.wk, c.kvDim, c.dim), ("attn_v", p.wv, c.kvDim, c.dim),
                ("attn_output", p.wo, c.dim, c.qDim), ("ffn_gate", p.wGate, c.hiddenDim, c.dim),
                ("ffn_up", p.wUp, c.hiddenDim, c.dim), ("ffn_down", p.wDown, c.dim, c.hiddenDim)]
            for (name, w, n, k) in mats {
                guard let i = gguf.tensorsByName["blk.\(l).\(name).weight"], gguf.tensors[i].type == .q4_1 else { continue }
                checked += 1
                var q = ck_weights()
                XCTAssertEqual(ck_weights_alloc(&q, Int32(CK_Q4), Int32(n), Int32(k)), 0)
                defer { ck_weights_free(&q) }
                XCTAssertEqual(ck_pack_f32(&q, w, k, 0, Int32(n)), 0)
                var row = [Float](repeating: 0, count: k)
                var same = true
                for r in 0..<n where same {
                    ck_unpack_row(&q, Int32(r), &row)
                    same = memcmp(row, w + r * k, k * 4) == 0
                }
                XCTAssertTrue(same, "blk.\(l).\(name): q4 reproduces the file's Q4_1 values")
                if same { exact += 1 }
            }
        }
        print("SmolLM2: \(exact) of \(checked) Q4_1 linear weights (of \(7 * c.nLayers)) packed to q4 exactly")
        XCTAssertGreaterThan(checked, 0, "the file has Q4_1 linear weights")
    }

    /// A q4 engine converts each publication in `publish`, on the caller's thread, reads the weights
    /// only during the call, and then generates exactly what the offline generator computes on the
    /// same weights in q4.
    func testQ4EnginePublishesPackedSnapshotsAndMatchesTheOfflineGenerator() throws {
        let base = try Fixtures.tiny()
        let q4 = try LlamaModel.inference(from: base.weights, precision: .q4)
        XCTAssertLessThan(q4.weightBytes, try LlamaModel.inference(from: base.weights, precision: .q8).weightBytes)
        var config = EngineConfig()
        config.kvCacheMB = 1
        let engine = try GenerationEngine(model: q4, tokenizer: Fixtures.tinyTokenizer, config: config)
        XCTAssertEqual(engine.precision, .q4)
        XCTAssertEqual(engine.status().precision, .q4)
        XCTAssertEqual(engine.status().snapshotBytes, q4.weightBytes)

        let live = Fixtures.perturbed(base, seed: 3)    // the learner's weights
        let kept = live.copy()
        try engine.publish(weights: live, version: 2)
        let s = engine.status()
        XCTAssertEqual(s.pendingVersion, 2)
        XCTAssertEqual(s.publishPacks, 1, "packed inside publish, on this thread")
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
        let offline = try SingleSequenceGenerator(model: LlamaModel.inference(from: kept, precision: .q4))
            .generate(prompt: [5, 6, 7, 8], params: p, stopTokens: [])
        XCTAssertEqual(ids, offline.ids)
        XCTAssertEqual(logprobs.count, offline.logprobs.count)
        for (a, b) in zip(logprobs, offline.logprobs) { XCTAssertEqual(a, b, accuracy: 1e-5) }
        engine.stop()
    }

    /// Non-finite weights are refused by q4 as by q8 (the blocks are counted by the packer).
    func testNonFiniteWeightsAreRefused() throws {
        let w = try Fixtures.tiny().weights.copy()
        w.layers[1].wUp[5] = .nan
        XCTAssertThrowsError(try LlamaModel.inference(from: w, precision: .q4)) { e in
            XCTAssertTrue("\(e)".contains("1 blocks"), "\(e)")
        }
    }
}
