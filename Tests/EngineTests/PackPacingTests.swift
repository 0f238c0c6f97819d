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
        config.publishPackMaxPause = 0.005   // the engine is not stepped: its step count stays put
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

    /// A pause lasts until the engine step the slice overlapped has completed, so no step overlaps two
    /// slices however short the pauses are: here steps take 15 ms and the minimum pause is 1 ms (the
    /// old timed pacing started a slice every ~1 ms, about fifteen per step).
    func testEachEngineStepOverlapsAtMostOneSlice() throws {
        final class Counter: @unchecked Sendable {
            let lock = NSLock(); var n: UInt64 = 0; var stop = false
            func get() -> UInt64 { lock.lock(); defer { lock.unlock() }; return n }
        }
        let counter = Counter()
        let ticker = Thread {
            while true {
                Thread.sleep(forTimeInterval: 0.015)
                counter.lock.lock(); counter.n += 1; let s = counter.stop; counter.lock.unlock()
                if s { break }
            }
        }
        ticker.start()
        defer { counter.lock.lock(); counter.stop = true; counter.lock.unlock() }
        let base = try Fixtures.tiny()
        let pacing = PackPacing(slice: 1e-9, pause: 0.001, maxPause: 1, busy: { true }, steps: { counter.get() })
        _ = try LlamaModel.inference(from: base.weights, precision: .bf16, pacing: pacing)
        XCTAssertEqual(pacing.pauses, 15)
        XCTAssertEqual(pacing.slicesAtStep.count, 15)
        for (a, b) in zip(pacing.slicesAtStep, pacing.slicesAtStep.dropFirst()) {
            XCTAssertLessThan(a, b, "two slices began in the same engine step: \(pacing.slicesAtStep)")
        }
        XCTAssertGreaterThanOrEqual(pacing.paused, 14 * 0.010, "each pause waited for a step boundary")

        // A stalled engine (no step completes) holds each pause for at most maxPause.
        let stalled = PackPacing(slice: 1e-9, pause: 0.001, maxPause: 0.004, busy: { true }, steps: { 7 })
        let t0 = Date()
        _ = try LlamaModel.inference(from: base.weights, precision: .bf16, pacing: stalled)
        XCTAssertLessThan(Date().timeIntervalSince(t0), 15 * 0.004 + 0.5)
        XCTAssertGreaterThanOrEqual(stalled.paused, 15 * 0.004)
    }
}
