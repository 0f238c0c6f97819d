import Foundation
import Model
import XCTest
@testable import Engine

/// A publication's compact copy made in slices (`PackPacing`) is the same copy, pauses only while
/// the engine is busy, and does not count its pauses as packing time.
final class PackPacingTests: XCTestCase {
    func testPacedPackingGivesTheSameModelAndPausesOnlyWhenBusy() throws {
        let base = try Fixtures.tiny()
        let weights = Fixtures.perturbed(base, seed: 9)
        for precision in [EnginePrecision.bf16, .q8] {
            let plain = try LlamaModel.inference(from: weights, precision: precision)
            let busy = PackPacing(slice: 1e-9, pause: 0.002, busy: { true })
            let paced = try LlamaModel.inference(from: weights, precision: precision, pacing: busy)
            let idle = PackPacing(slice: 1e-9, pause: 0.002, busy: { false })
            _ = try LlamaModel.inference(from: weights, precision: precision, pacing: idle)
            // 2 layers × 7 matrices + the head: a slice boundary after each.
            XCTAssertEqual(busy.pauses, 15, "\(precision)")
            XCTAssertGreaterThanOrEqual(busy.paused, 15 * 0.002)
            XCTAssertEqual(idle.pauses, 0, "\(precision): an idle engine gets no pauses")
            XCTAssertLessThan(paced.packSeconds, busy.paused, "\(precision): the pauses are not packing time")
            // Same packed weights: the same logits, bit for bit.
            var b = ForwardBatch()
            b.append([5, 6, 7, 8, 9], startPos: 0, slot: 0, logits: .all)
            let a1 = Activations(config: base.config), a2 = Activations(config: base.config)
            let x = try plain.forward(b, kv: nil, acts: a1), y = try paced.forward(b, kv: nil, acts: a2)
            for i in 0..<(5 * base.config.vocabSize) { XCTAssertEqual(x[i].bitPattern, y[i].bitPattern, "\(precision) logit \(i)"); if x[i] != y[i] { break } }
        }
    }

    func testEnginePacesAPublicationOnlyWhileRequestsRun() throws {
        let base = try Fixtures.tiny()
        var config = EngineConfig()
        config.kvCacheMB = 1
        config.publishPackSlice = 1e-9
        config.publishPackPause = 0.005
        let engine = try GenerationEngine(model: LlamaModel.inference(from: base.weights, precision: .bf16),
                                          tokenizer: Fixtures.tinyTokenizer, config: config)
        defer { engine.stop() }
        try engine.publish(weights: Fixtures.perturbed(base, seed: 1), version: 2)
        var r = GenerationRequest(prompt: [5, 6, 7], maxTokens: 8)
        r.ignoreEOS = true
        _ = try engine.submit(r)   // not stepped: admitted and unfinished while we publish
        let t0 = Date()
        try engine.publish(weights: Fixtures.perturbed(base, seed: 2), version: 3)
        let busyWall = Date().timeIntervalSince(t0)
        XCTAssertGreaterThanOrEqual(busyWall, 15 * 0.005, "paused between slices while a request runs")
        XCTAssertLessThan(engine.status().lastPublishPackSeconds, busyWall - 14 * 0.005)
    }
}
