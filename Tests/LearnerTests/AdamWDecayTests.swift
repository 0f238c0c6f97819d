import Foundation
import XCTest
@testable import Learner
@testable import Model

/// AdamW's weight decay against torch.optim.AdamW with the transformers Trainer's param groups
/// (fixture adamw-groups.json from scripts/reference/learner.py): every parameter of a small Llama,
/// decay large enough to matter, norm weights near 1 and not decayed. The tolerance sits far below
/// what dropping the decay or decaying the norm weights changes (the fixture carries both runs, and
/// the test checks that margin first).
final class AdamWDecayTests: XCTestCase {
    /// Largest |a − b| over a tensor, relative to the largest |b| (as the gradient checks measure).
    func relErr(_ a: UnsafeBufferPointer<Float>, _ b: [Float]) -> Double {
        var num = 0.0, den = 0.0
        for i in 0..<b.count { num = max(num, Double(abs(a[i] - b[i]))); den = max(den, Double(abs(b[i]))) }
        return den == 0 ? num : num / den
    }

    func relErr(_ a: [Float], _ b: [Float]) -> Double { a.withUnsafeBufferPointer { relErr($0, b) } }

    func testWeightDecayMatchesTorchWithTheTrainersParamGroups() throws {
        let url = LearnerTests.fixtures.appendingPathComponent("adamw-groups.json")
        let c = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        func tensors(_ v: Any?) throws -> [String: [Float]] {
            let d = try XCTUnwrap(v as? [String: [NSNumber]])
            return d.mapValues { $0.map(\.floatValue) }
        }
        let shape = try XCTUnwrap(c["config"] as? [String: Any])
        func int(_ k: String) -> Int { (shape[k] as! NSNumber).intValue }
        let cfg = LlamaConfig(dim: int("hidden_size"), hiddenDim: int("intermediate_size"), nLayers: int("num_hidden_layers"),
                              nHeads: int("num_attention_heads"), nKVHeads: int("num_key_value_heads"), vocabSize: int("vocab_size"),
                              contextLength: int("max_position_embeddings"), ropeTheta: 10000,
                              rmsEps: (shape["rms_norm_eps"] as! NSNumber).floatValue,
                              tiedEmbeddings: (shape["tie_word_embeddings"] as! Bool), headDim: int("head_dim"))
        let initial = try tensors(c["initial"])
        let steps = try XCTUnwrap(c["grads"] as? [Any]).map { try tensors($0) }
        let expected = try tensors(c["final"])
        let withoutDecay = try tensors(c["final_without_decay"])
        let decayingEverything = try tensors(c["final_decaying_everything"])
        let decayed = Set(try XCTUnwrap(c["decay_parameters"] as? [String]))
        let lr = Float(try XCTUnwrap(c["lr"] as? Double)), wd = Float(try XCTUnwrap(c["weight_decay"] as? Double))

        let p = ParameterSet(config: cfg), g = ParameterSet(config: cfg)
        let names = p.layout.entries.map(\.name)
        XCTAssertEqual(Set(names), Set(initial.keys), "the fixture holds every parameter")
        func fill(_ set: ParameterSet, _ values: [String: [Float]]) {
            for n in names {
                let t = set.tensor(n)!
                XCTAssertEqual(t.count, values[n]!.count, n)
                for (i, v) in values[n]!.enumerated() { t[i] = v }
            }
        }
        fill(p, initial)
        let opt = AdamW(config: cfg, weightDecay: wd)
        for step in steps {
            fill(g, step)
            opt.update(p, grads: g, lr: lr)
        }

        // The tolerance, and what each mistake would change: per tensor, the decayed ones move by the
        // decay (vs the run without it), the norm weights would move if decayed.
        let tolerance = 1e-6
        var worst = 0.0, smallestMistake = Double.infinity
        defer { print("AdamW vs torch: worst relative error \(worst); smallest change a decay mistake makes \(smallestMistake)") }
        for n in names {
            let e = expected[n]!
            let mistake = decayed.contains(n) ? relErr(withoutDecay[n]!, e) : relErr(decayingEverything[n]!, e)
            XCTAssertGreaterThan(mistake, 1000 * tolerance, "\(n): the fixture cannot tell the mistake apart")
            let err = relErr(UnsafeBufferPointer(p.tensor(n)!), e)
            worst = max(worst, err)
            smallestMistake = min(smallestMistake, mistake)
            XCTAssertLessThanOrEqual(err, tolerance, "\(n) (\(decayed.contains(n) ? "decayed" : "not decayed") in torch's run): "
                                     + "relative error \(err); dropping decay / decaying it would change it by \(mistake)")
        }
        XCTAssertEqual(decayed, Set(names.filter { !$0.hasSuffix("norm.weight") }), "the Trainer decays all but the norm weights")
    }
}
