import Foundation
import Synchronization
import XCTest
@testable import Learner
import Model

/// The online learner is driven by what it is told: it reads the log when the log says it appended
/// (no polling), and the version of the weights it handed over is told to it by the owner (it never
/// numbers them, and takes no step while a handed-over version is untold). Waits are failure bounds.
final class OnlineLearnerWakeTests: XCTestCase {
    /// A preference source that counts reads.
    final class Source: PreferenceSource, @unchecked Sendable {
        let state = Mutex<(reads: Int, records: [(UInt64, [PreferencePair])])>((0, []))
        func batches(after: UInt64) -> [(sequence: UInt64, pairs: [PreferencePair])] {
            state.withLock { s in
                s.reads += 1
                return s.records.filter { $0.0 > after }.map { (sequence: $0.0, pairs: $0.1) }
            }
        }
        func add(_ sequence: UInt64) {
            state.withLock { $0.records.append((sequence, [PreferencePair(prompt: [5, 6], chosen: [7, 8], rejected: [9, 10])])) }
        }
        var reads: Int { state.withLock { $0.reads } }
    }

    func wait(_ what: String, _ cond: () -> Bool) {
        let deadline = Date().addingTimeInterval(60)
        while !cond() {
            if Date() > deadline { return XCTFail("timed out waiting for \(what)") }
            usleep(10_000)
        }
    }

    func testReadsOnAppendAndStepsOnceTheVersionIsTold() throws {
        let policy = try LlamaModel.load(huggingFaceDirectory: LearnerTests.modelFixtures.appendingPathComponent("tiny-tied").path)
        var options = OnlineOptions()
        options.training.batchSize = 1
        options.training.gradAccum = 1
        options.maxWaitSeconds = 0
        options.lowPriority = false
        let trainer = try Trainer(policy: policy, reference: nil, options: options.training, schedule: options.schedule)
        let source = Source()
        let handed = Mutex<[Int]>([])
        let online = OnlineLearner(learner: trainer, options: options, source: source, checkpointRoot: NSTemporaryDirectory(),
                                   extras: .init(writeGGUF: false), baseModel: "x", start: (0, 0), startVersion: 1,
                                   publish: { _, _, step in handed.withLock { $0.append(step) }; return true })
        online.start()
        defer { online.stop() }
        wait("the first read") { source.reads >= 1 }
        usleep(600_000)
        XCTAssertEqual(source.reads, 1, "an idle learner does not poll the log")

        source.add(1)
        online.logAppended(upTo: 1)
        wait("step 1") { online.status().step == 1 }
        XCTAssertEqual(handed.withLock { $0 }, [1])
        XCTAssertEqual(online.status().lastPublishedVersion, 1, "not numbered by the learner")

        source.add(2)
        online.logAppended(upTo: 2)
        wait("record 2 read") { online.status().pendingRows == 1 }
        XCTAssertEqual(online.status().step, 1, "no step while the version of step 1 is untold")
        online.versionPublished(7, learnerStep: 1)
        wait("step 2") { online.status().step == 2 }
        XCTAssertEqual(handed.withLock { $0 }, [1, 2])
        wait("version 7 recorded") { online.status().lastPublishedVersion == 7 }
    }
}
