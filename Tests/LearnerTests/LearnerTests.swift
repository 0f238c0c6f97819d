import Foundation
import XCTest
@testable import Learner
@testable import Model

/// The learner against PyTorch autograd, torch.optim.AdamW and a transformers-Trainer-style run
/// (fixtures from scripts/reference/learner.py), finite differences, and its own invariants.
final class LearnerTests: XCTestCase {
    static let fixtures = Bundle.module.resourceURL!.appendingPathComponent("Fixtures")
    static let modelFixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("ModelTests/Fixtures")

    func json(_ name: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: Self.fixtures.appendingPathComponent(name))) as! [String: Any]
    }

    func pairs(_ list: Any) -> [PreferencePair] {
        (list as! [[String: Any]]).map { p in
            func ids(_ k: String) -> [Int32]? { (p[k] as? [NSNumber])?.map { $0.int32Value } }
            return PreferencePair(prompt: ids("prompt_ids")!, chosen: ids("chosen_ids")!, rejected: ids("rejected_ids")!,
                                  reference: ids("reference_ids"), weight: (p["weight"] as? NSNumber)?.floatValue ?? 1)
        }
    }

    func loadTiny(_ path: String) throws -> LlamaModel {
        let url = path.hasPrefix("Tests/ModelTests/Fixtures/")
            ? Self.modelFixtures.appendingPathComponent(String(path.dropFirst("Tests/ModelTests/Fixtures/".count)))
            : Self.fixtures.appendingPathComponent(path)
        return try LlamaModel.load(huggingFaceDirectory: url.path)
    }

    func relErr(_ a: UnsafeBufferPointer<Float>, _ b: [Float]) -> Float {
        var num: Float = 0, den: Float = 0
        for i in 0..<b.count { num = max(num, abs(a[i] - b[i])); den = max(den, abs(b[i])) }
        return den == 0 ? num : num / den
    }

    /// Loss, metrics and every parameter's gradient equal PyTorch autograd's.
    func checkGradients(_ name: String) throws {
        let c = try json("\(name).json")
        let policy = try loadTiny(c["model"] as! String)
        let ref = try loadTiny(c["ref"] as! String)
        var opts = TrainingOptions()
        opts.loss = LossConfig(type: LossType(rawValue: c["loss_type"] as! String)!, beta: c["beta"] as! Double, alpha: c["alpha"] as! Double)
        let learner = try Trainer(policy: policy, reference: ref, options: opts,
                                  schedule: LRSchedule(kind: .constant, baseLR: 0, warmupSteps: 0, totalSteps: 1))
        let ps = pairs(c["pairs"]!)
        learner.grads.zero()
        let (result, _) = try learner.microBatch(ps, keys: ps.indices.map { UInt64($0) }, accumulateScale: 1)
        let metrics = c["metrics"] as! [String: Double]
        XCTAssertEqual(result.loss, metrics["loss"]!, accuracy: 1e-5 * abs(metrics["loss"]!), "\(name) loss")
        for (k, v) in metrics {
            XCTAssertEqual(result.metrics[k]!, v, accuracy: 1e-4 * max(1, abs(v)), "\(name) \(k)")
        }
        let ref_grads = try SafetensorsFile(path: Self.fixtures.appendingPathComponent("\(name).grads.safetensors").path)
        var worst: (Float, String) = (0, "")
        for e in learner.grads.layout.entries {
            let expected = try ref_grads.floats(e.name)
            let err = relErr(UnsafeBufferPointer(learner.grads.tensor(e.name)!), expected)
            if err > worst.0 { worst = (err, e.name) }
            XCTAssertLessThanOrEqual(err, 1e-4, "\(name): gradient of \(e.name)")
        }
        XCTAssertEqual(ref_grads.tensors.count, learner.grads.layout.entries.count, "every parameter has a gradient")
        print("\(name): loss \(result.loss), worst gradient relative error \(worst.0) (\(worst.1))")
    }

    func testSELMGradientsTiedMatchAutograd() throws { try checkGradients("selm-tied") }
    func testSELMGradientsUntiedMatchAutograd() throws { try checkGradients("selm-untied") }
    func testIPOGradientsMatchAutograd() throws { try checkGradients("ipo-untied") }
    func testHingeGradientsMatchAutograd() throws { try checkGradients("hinge-tied") }

    /// Central finite differences of the loss agree with the analytic gradient on a few weights.
    func testFiniteDifferences() throws {
        let c = try json("ipo-untied.json")
        let policy = try loadTiny(c["model"] as! String)
        let ref = try loadTiny(c["ref"] as! String)
        var opts = TrainingOptions()
        opts.loss = LossConfig(type: .ipo, beta: 0.5, alpha: 0.1)
        let learner = try Trainer(policy: policy, reference: ref, options: opts,
                                  schedule: LRSchedule(kind: .constant, baseLR: 0, warmupSteps: 0, totalSteps: 1))
        let ps = pairs(c["pairs"]!)
        let keys = ps.indices.map { UInt64($0) }
        learner.grads.zero()
        _ = try learner.microBatch(ps, keys: keys, accumulateScale: 1)
        let probes: [(String, Int)] = [("model.layers.0.self_attn.q_proj.weight", 17), ("model.layers.1.mlp.down_proj.weight", 300),
                                       ("model.layers.0.input_layernorm.weight", 5), ("lm_head.weight", 1000),
                                       ("model.embed_tokens.weight", Int(ps[0].prompt[0]) * 64 + 3),
                                       ("model.layers.1.self_attn.k_proj.weight", 40), ("model.norm.weight", 9)]
        for (name, i) in probes {
            let w = policy.weights.tensor(name)!
            let analytic = Double(learner.grads.tensor(name)![i])
            let h: Float = 1e-2
            let orig = w[i]
            w[i] = orig + h
            let plus = try learner.microBatch(ps, keys: keys, accumulateScale: 0).0.loss
            w[i] = orig - h
            let minus = try learner.microBatch(ps, keys: keys, accumulateScale: 0).0.loss
            w[i] = orig
            let numeric = (plus - minus) / Double(2 * h)
            XCTAssertEqual(analytic, numeric, accuracy: 2e-2 * max(1, abs(numeric)), "\(name)[\(i)]")
        }
    }

    /// Three AdamW steps equal torch.optim.AdamW.
    func testAdamWMatchesTorch() throws {
        let c = try json("adamw.json")
        let initial = (c["initial"] as! [NSNumber]).map { $0.floatValue }
        let grads = (c["grads"] as! [[NSNumber]]).map { $0.map { $0.floatValue } }
        let final = (c["final"] as! [NSNumber]).map { $0.floatValue }
        // A one-layer config whose embedding holds exactly the 257 values (vocab 257 × dim 1 would be
        // too narrow for RoPE; use the embedding entry of a small config and compare its first 257).
        let cfg = LlamaConfig(dim: 2, hiddenDim: 2, nLayers: 1, nHeads: 1, nKVHeads: 1, vocabSize: 257,
                              contextLength: 8, ropeTheta: 10000, rmsEps: 1e-5, tiedEmbeddings: true)
        let p = ParameterSet(config: cfg), g = ParameterSet(config: cfg)
        let emb = p.tensor("model.embed_tokens.weight")!
        let opt = AdamW(config: cfg, weightDecay: Float(c["weight_decay"] as! Double))
        for i in 0..<257 { emb[2 * i] = initial[i] }
        for gr in grads {
            g.zero()
            let ge = g.tensor("model.embed_tokens.weight")!
            for i in 0..<257 { ge[2 * i] = gr[i] }
            opt.update(p, grads: g, lr: Float(c["lr"] as! Double))
        }
        var worst: Float = 0
        for i in 0..<257 { worst = max(worst, abs(emb[2 * i] - final[i]) / max(abs(final[i]), 1e-3)) }
        XCTAssertLessThanOrEqual(worst, 1e-5)
    }

    /// Three optimizer steps with accumulation, clipping, weight decay and warm-up + cosine equal the
    /// same run in PyTorch.
    func testThreeTrainingStepsMatchPyTorch() throws {
        let c = try json("train3.json")
        let policy = try loadTiny("Tests/ModelTests/Fixtures/tiny-untied")
        let ref = try loadTiny("selm-untied-ref")
        var opts = TrainingOptions()
        opts.loss = LossConfig(type: .sigmoid, beta: c["beta"] as! Double, alpha: c["alpha"] as! Double)
        opts.weightDecay = c["weight_decay"] as! Double
        opts.maxGradNorm = c["max_grad_norm"] as! Double
        opts.gradAccum = 2
        let sched = LRSchedule(kind: .cosine, baseLR: c["lr"] as! Double, warmupSteps: c["warmup_steps"] as! Int,
                               totalSteps: c["total_steps"] as! Int)
        let learner = try Trainer(policy: policy, reference: ref, options: opts, schedule: sched)
        let ps = pairs(c["pairs"]!)
        let log = c["log"] as! [[String: Double]]
        for s in 0..<3 {
            let r = try learner.step([(Array(ps[0..<2]), [0, 1]), (Array(ps[2..<4]), [2, 3])])
            XCTAssertEqual(r.metrics["loss"]!, log[s]["loss"]!, accuracy: 1e-5 * max(1, abs(log[s]["loss"]!)), "step \(s) loss")
            XCTAssertEqual(r.metrics["grad_norm"]!, log[s]["grad_norm"]!, accuracy: 1e-4 * log[s]["grad_norm"]!, "step \(s) grad_norm")
            XCTAssertEqual(r.metrics["learning_rate"]!, log[s]["learning_rate"]!, accuracy: 1e-12, "step \(s) lr")
        }
        // Adam's first steps are nearly sign(g)·lr, so for weights whose gradient is at float32
        // rounding level the two runs may step differently; the bound is therefore looser than for the
        // optimizer alone (testAdamWMatchesTorch, 1e-5) and still far below one step (lr = 3e-3).
        let expected = try SafetensorsFile(path: Self.fixtures.appendingPathComponent("train3.weights.safetensors").path)
        for e in policy.weights.layout.entries {
            let err = relErr(UnsafeBufferPointer(policy.weights.tensor(e.name)!), try expected.floats(e.name))
            XCTAssertLessThanOrEqual(err, 3e-4, "weights of \(e.name) after 3 steps")
        }
    }

    /// A row with a non-finite loss skips the step, is counted, and leaves the weights untouched.
    func testNonFiniteStepIsSkipped() throws {
        let policy = try loadTiny("Tests/ModelTests/Fixtures/tiny-tied")
        let before = Array(UnsafeBufferPointer(start: policy.weights.data, count: policy.weights.count))
        let learner = try Trainer(policy: policy, reference: nil, options: TrainingOptions(),
                                  schedule: LRSchedule(kind: .constant, baseLR: 1e-2, warmupSteps: 0, totalSteps: 1))
        let bad = PreferencePair(prompt: [5, 6], chosen: [7], rejected: [8], reference: nil, weight: .nan)
        let r = try learner.step([([bad], [0])])
        XCTAssertFalse(r.applied)
        XCTAssertEqual(learner.skippedSteps, 1)
        XCTAssertEqual(r.metrics["skipped_steps"], 1)
        let after = Array(UnsafeBufferPointer(start: policy.weights.data, count: policy.weights.count))
        XCTAssertEqual(before, after)
        let good = PreferencePair(prompt: [5, 6], chosen: [7], rejected: [8])
        XCTAssertTrue(try learner.step([([good], [1])]).applied)
        XCTAssertNotEqual(before, Array(UnsafeBufferPointer(start: policy.weights.data, count: policy.weights.count)))
    }

    /// A short run on a small synthetic preference set learns it: accuracy 1.0, margin grows.
    func testShortRunLearnsSyntheticPreferences() throws {
        let policy = try loadTiny("Tests/ModelTests/Fixtures/tiny-untied")
        var opts = TrainingOptions()
        opts.loss = LossConfig(type: .sigmoid, beta: 0.1, alpha: 0.001)
        let learner = try Trainer(policy: policy, reference: nil, options: opts,
                                  schedule: LRSchedule(kind: .constant, baseLR: 3e-3, warmupSteps: 0, totalSteps: 30))
        // Chosen responses repeat token 10, rejected ones token 20: a preference the model can learn.
        var ps: [PreferencePair] = []
        for i: Int32 in 0..<8 {
            ps.append(PreferencePair(prompt: [30 + i, 40 + i], chosen: [10, 10, 11], rejected: [20, 20, 21], reference: [50 + i]))
        }
        var first: [String: Double] = [:], last: [String: Double] = [:]
        for s in 0..<25 {
            let r = try learner.step([(Array(ps[0..<4]), [0, 1, 2, 3]), (Array(ps[4..<8]), [4, 5, 6, 7])])
            if s == 0 { first = r.metrics }
            last = r.metrics
        }
        XCTAssertEqual(last["rewards/accuracies"], 1.0)
        XCTAssertGreaterThan(last["rewards/margins"]!, first["rewards/margins"]! + 0.1)
        XCTAssertLessThan(last["loss"]!, first["loss"]!)
    }

    /// Reference log-probs are computed once per row and reused until a refresh.
    func testReferenceCacheAndRefresh() throws {
        let policy = try loadTiny("Tests/ModelTests/Fixtures/tiny-tied")
        var opts = TrainingOptions()
        opts.refRefreshSteps = 2
        let learner = try Trainer(policy: policy, reference: nil, options: opts,
                                  schedule: LRSchedule(kind: .constant, baseLR: 1e-2, warmupSteps: 0, totalSteps: 4))
        let p = [PreferencePair(prompt: [3, 4, 5], chosen: [6, 7], rejected: [8, 9], reference: [10])]
        _ = try learner.step([(p, [7])])
        XCTAssertEqual(learner.reference.cachedRows, 1)
        let cached = try learner.reference.logps(p, keys: [7])
        // The cache is not recomputed: the reference weights have not moved although the policy has.
        XCTAssertEqual(try learner.reference.logps(p, keys: [7]), cached)
        _ = try learner.step([(p, [7])])
        XCTAssertEqual(learner.reference.generation, 1, "refreshed after 2 steps")
        XCTAssertEqual(learner.reference.cachedRows, 0, "cache emptied at refresh")
        let refreshed = try learner.reference.logps(p, keys: [7])
        XCTAssertNotEqual(refreshed, cached)
        // After the refresh the reference equals the policy: z = 0 for every pair.
        let (r, _) = try learner.microBatch(p, keys: [7], accumulateScale: 0)
        XCTAssertEqual(r.metrics["rewards/margins"]!, 0, accuracy: 1e-6)
    }

    func testPreferenceRowErrorsNameTheLine() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("selm-prefs-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let f = dir.appendingPathComponent("d.jsonl")
        let good = #"{"prompt_ids":[1,2],"chosen_ids":[3],"rejected_ids":[4]}"#
        for (bad, expect) in [
            (#"{"prompt_ids":[1,2],"chosen_ids":[],"rejected_ids":[4]}"#, "field 'chosen': is empty"),
            (#"{"prompt_ids":[1,2],"chosen_ids":[3],"rejected_ids":[400]}"#, "field 'rejected[0]'"),
            (#"{"prompt_ids":[1,2],"chosen_ids":[3]}"#, "field 'rejected_ids': is missing"),
            ("not json", "not a JSON object"),
            (#"{"prompt_ids":[1,2.5],"chosen_ids":[3],"rejected_ids":[4]}"#, "field 'prompt_ids[1]'"),
        ] {
            try (good + "\n\n" + bad + "\n" + good + "\n").write(to: f, atomically: true, encoding: .utf8)
            XCTAssertThrowsError(try PreferenceData.load(path: f.path, encoder: nil, vocabSize: 97, contextLength: 64)) { e in
                XCTAssertTrue("\(e)".contains("d.jsonl:3"), "\(e)")
                XCTAssertTrue("\(e)".contains(expect), "'\(e)' should contain '\(expect)'")
            }
        }
        try (good + "\n" + good + "\n").write(to: f, atomically: true, encoding: .utf8)
        XCTAssertEqual(try PreferenceData.load(path: f.path, encoder: nil, vocabSize: 97, contextLength: 64).count, 2)
    }
}
