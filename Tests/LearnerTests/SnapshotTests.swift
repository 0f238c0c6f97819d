import Foundation
import Kernels
@testable import Learner
@testable import Model
import XCTest

/// The engine's snapshot made by the optimizer's pass (`AdamW.update(…, snapshot:)`, issue 13): the
/// update is bit for bit the plain one, and the snapshot is bit for bit what packing the updated
/// weights afterwards (`LlamaModel.inference(from:precision:)`) makes — for every compact
/// precision, tied and untied embeddings.
final class SnapshotTests: XCTestCase {
    func tiny(_ name: String) throws -> LlamaModel {
        try LlamaModel.load(huggingFaceDirectory: LearnerTests.modelFixtures.appendingPathComponent(name).path)
    }

    func logits(_ m: LlamaModel, _ ids: [Int32]) throws -> [UInt32] {
        var b = ForwardBatch()
        b.append(ids, startPos: 0, slot: 0, logits: .all)
        let acts = Activations(config: m.config)
        let p = try m.forward(b, kv: nil, acts: acts)
        return UnsafeBufferPointer(start: p, count: ids.count * m.config.vocabSize).map(\.bitPattern)
    }

    /// Deterministic values in about [-scale, scale).
    func fill(_ set: ParameterSet, seed: UInt64, scale: Float) {
        var s = seed
        for i in 0..<set.count {
            s = s &* 6364136223846793005 &+ 1442695040888963407
            set.data[i] = scale * (Float(Int64(bitPattern: s) >> 11) / Float(1 << 52))
        }
    }

    func bits(_ set: ParameterSet) -> [UInt32] { UnsafeBufferPointer(start: set.data, count: set.count).map(\.bitPattern) }

    func testTheOptimizersSnapshotIsThePackOfTheUpdatedWeights() throws {
        for name in ["tiny-untied", "tiny-tied"] {
            let m = try tiny(name)
            let c = m.config
            let ids: [Int32] = (0..<7).map { Int32(($0 * 37 + 5) % c.vocabSize) }
            for precision in [EnginePrecision.bf16, .q8, .q4] {
                let plain = m.weights.copy(), fused = m.weights.copy()
                let grads = ParameterSet(config: c)
                let a = AdamW(config: c, weightDecay: 0.1), b = AdamW(config: c, weightDecay: 0.1)
                for step in 0..<3 {
                    fill(grads, seed: UInt64(step + 1), scale: 0.5)
                    // The last step fills a snapshot; the earlier ones give the moments values.
                    let snapshot = step == 2 ? try CompactSnapshot(of: fused, precision: precision) : nil
                    a.update(plain, grads: grads, lr: 0.01, gradScale: 0.75)
                    b.update(fused, grads: grads, lr: 0.01, gradScale: 0.75, snapshot: snapshot)
                    XCTAssertEqual(bits(plain), bits(fused), "\(name) \(precision): the update's bits")
                    XCTAssertEqual(bits(a.m), bits(b.m))
                    XCTAssertEqual(bits(a.v), bits(b.v))
                    guard let snapshot else { continue }
                    XCTAssertTrue(snapshot.isComplete)
                    XCTAssertGreaterThan(snapshot.seconds, 0)
                    let made = try snapshot.model()
                    XCTAssertEqual(made.precision, precision)
                    XCTAssertNil(made.f32Weights)
                    let packed = try LlamaModel.inference(from: plain, precision: precision)
                    XCTAssertEqual(made.weightBytes, packed.weightBytes)
                    let l = try logits(made, ids)
                    XCTAssertEqual(l, try logits(packed, ids), "\(name) \(precision): the snapshot is the pack of the new weights")
                    // And it is a snapshot: training on does not reach it.
                    a.update(plain, grads: grads, lr: 0.01)
                    XCTAssertEqual(try logits(made, ids), l)
                    XCTAssertNotEqual(try logits(try LlamaModel.inference(from: plain, precision: precision), ids), l)
                }
            }
        }
    }

    func testAnUnfilledSnapshotAndUnrepresentableWeightsAreRefused() throws {
        let m = try tiny("tiny-untied")
        let w = m.weights.copy()
        let s = try CompactSnapshot(of: w, precision: .bf16)
        XCTAssertFalse(s.isComplete)
        XCTAssertThrowsError(try s.model()) { XCTAssertTrue("\($0)".contains("tensors"), "\($0)") }

        // A NaN gradient makes NaN weights: q8 cannot scale their blocks.
        let grads = ParameterSet(config: m.config)
        grads.data[grads.layout.entry("model.layers.0.mlp.up_proj.weight")!.offset + 3] = .nan
        let q8 = try CompactSnapshot(of: w, precision: .q8)
        AdamW(config: m.config).update(w, grads: grads, lr: 0.01, snapshot: q8)
        XCTAssertTrue(q8.isComplete)
        XCTAssertThrowsError(try q8.model()) { XCTAssertTrue("\($0)".contains("non-finite"), "\($0)") }
    }
}
