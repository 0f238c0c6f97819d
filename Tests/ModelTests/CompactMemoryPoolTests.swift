import Foundation
@testable import Model
import XCTest

/// Compact models' memory is reused (issue 13): a model released returns its memory to
/// `CompactMemoryPool`, the next one of the same shape and precision takes it (publishing every
/// second would otherwise allocate and unmap ~365 MB per publication), the pool keeps at most
/// `capacity`, and what it lets go of is dropped on the reaper's thread.
final class CompactMemoryPoolTests: XCTestCase {
    func tiny() throws -> LlamaModel {
        try LlamaModel.load(huggingFaceDirectory: InferenceWeightsTests.fixtures.appendingPathComponent("tiny-untied").path)
    }

    func delta(_ body: () throws -> Void) rethrows -> CompactMemoryPool.Counts {
        let a = CompactMemoryPool.statistics
        try body()
        let b = CompactMemoryPool.statistics
        var d = CompactMemoryPool.Counts()
        (d.allocated, d.reused, d.freed) = (b.allocated - a.allocated, b.reused - a.reused, b.freed - a.freed)
        return d
    }

    func testTheNextModelTakesTheMemoryOfTheLastReleased() throws {
        let w = try tiny().weights
        CompactMemoryPool.capacity = 1
        defer { CompactMemoryPool.capacity = 1 }
        _ = try LlamaModel.inference(from: w, precision: .bf16)  // leaves one spare of this shape
        var first: UnsafeMutableRawPointer?
        let d = try delta {
            var m: LlamaModel? = try LlamaModel.inference(from: w, precision: .q8)  // another precision: fresh
            first = m?.store?.mats[0].data
            m = nil
            let again = try LlamaModel.inference(from: w, precision: .q8)
            XCTAssertEqual(again.store?.mats[0].data, first, "the same memory, reused")
        }
        XCTAssertEqual(d.allocated, 1)
        XCTAssertEqual(d.reused, 1)
        // The q8 one released last displaced the bf16 spare: freed (a pool of one).
        XCTAssertEqual(d.freed, 1)
    }

    func testThePoolKeepsAtMostItsCapacity() throws {
        let w = try tiny().weights
        CompactMemoryPool.capacity = 0
        CompactMemoryPool.capacity = 3
        defer { CompactMemoryPool.capacity = 1 }
        let d = try delta {
            var models: [LlamaModel] = try (0..<4).map { _ in try LlamaModel.inference(from: w, precision: .bf16) }
            models.removeAll()   // four released: three kept, one freed
            let more = try (0..<3).map { _ in try LlamaModel.inference(from: w, precision: .bf16) }
            XCTAssertEqual(more.count, 3)
        }
        XCTAssertEqual(d.allocated, 4)
        XCTAssertEqual(d.freed, 1)
        XCTAssertEqual(d.reused, 3)
        let lowered = delta { CompactMemoryPool.capacity = 0 }
        XCTAssertEqual(lowered.freed, 3, "lowering the capacity frees what it no longer keeps")
    }

    func testTheReaperDropsOnItsOwnThreadAfterTheDelay() {
        final class Probe: @unchecked Sendable {
            let done: XCTestExpectation
            let start = Date()
            let caller = Thread.current
            init(_ e: XCTestExpectation) { done = e }
            deinit {
                XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(start), 0.3)
                XCTAssertFalse(Thread.current === caller)
                done.fulfill()
            }
        }
        let e = expectation(description: "dropped")
        Reaper.shared.drop(Probe(e), after: 0.3)
        wait(for: [e], timeout: 10)
    }
}
