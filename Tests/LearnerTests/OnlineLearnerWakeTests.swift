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
                                   publish: { _, _, _, step, _ in handed.withLock { $0.append(step) }; return true })
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

/// Which version each publication names as its reference (`OnlineLearner.Publish`'s
/// `referenceVersion`): the version the weights of the step's π_ref were served as.
final class OnlineLearnerReferenceVersionTests: XCTestCase {
    typealias Source = OnlineLearnerWakeTests.Source

    /// Runs `steps` steps of one row each, telling step k's version as 10 + k; returns the
    /// reference version each publication named and the status' reference version at the end.
    func run(refRefreshSteps: Int, publishEvery: Int = 1, startReference: UInt64, steps: Int) throws -> ([UInt64], UInt64) {
        let policy = try LlamaModel.load(huggingFaceDirectory: LearnerTests.modelFixtures.appendingPathComponent("tiny-tied").path)
        var options = OnlineOptions()
        options.training.batchSize = 1
        options.training.refRefreshSteps = refRefreshSteps
        options.maxWaitSeconds = 0
        options.publishEvery = publishEvery
        options.lowPriority = false
        let trainer = try Trainer(policy: policy, reference: nil, options: options.training, schedule: options.schedule)
        let source = Source()
        let named = Mutex<[UInt64]>([])
        let online = OnlineLearner(learner: trainer, options: options, source: source, checkpointRoot: NSTemporaryDirectory(),
                                   extras: .init(writeGGUF: false), baseModel: "x", start: (0, 0), startVersion: 1,
                                   referenceVersion: startReference,
                                   publish: { _, _, _, _, reference in named.withLock { $0.append(reference) }; return true })
        online.start()
        defer { online.stop() }
        func wait(_ what: String, _ cond: () -> Bool) {
            let deadline = Date().addingTimeInterval(60)
            while !cond() {
                if Date() > deadline { return XCTFail("timed out waiting for \(what)") }
                usleep(10_000)
            }
        }
        for k in 1...steps {
            source.add(UInt64(k))
            online.logAppended(upTo: UInt64(k))
            wait("step \(k)") { online.status().step == k }
            if k % publishEvery == 0 { online.versionPublished(UInt64(10 + k), learnerStep: k) }
        }
        wait("the last version told") { online.status().lastPublishedVersion == UInt64(10 + steps - steps % publishEvery) }
        return (named.withLock { $0 }, online.status().referenceVersion)
    }

    /// A frozen reference (the start weights, version 1) is named by every publication.
    func testFrozenReferenceIsTheStartVersion() throws {
        let (named, now) = try run(refRefreshSteps: 0, startReference: 1, steps: 3)
        XCTAssertEqual(named, [1, 1, 1])
        XCTAssertEqual(now, 1)
    }

    /// Refreshed every step: step k trained against the weights of step k − 1, served as 10 + k − 1
    /// (step 1 against the start version); afterwards the reference is the last step's version.
    func testRefreshedReferenceIsThePreviousStepsVersion() throws {
        let (named, now) = try run(refRefreshSteps: 1, startReference: 1, steps: 3)
        XCTAssertEqual(named, [1, 11, 12])
        XCTAssertEqual(now, 13)
    }

    /// Refreshed every 2 steps, published every step: steps 1–2 against the start, 3–4 against
    /// step 2's version (12).
    func testRefreshEveryTwoSteps() throws {
        let (named, now) = try run(refRefreshSteps: 2, startReference: 1, steps: 4)
        XCTAssertEqual(named, [1, 1, 12, 12])
        XCTAssertEqual(now, 14)
    }

    /// A reference refreshed at a step that is not published is served by no version: 0 (and an
    /// unknown start reference stays unknown until a refresh is published).
    func testRefreshAtAnUnpublishedStepIsNotServed() throws {
        let (named, now) = try run(refRefreshSteps: 1, publishEvery: 2, startReference: 0, steps: 4)
        XCTAssertEqual(named, [0, 0], "step 2 trained against step 1's weights, never published")
        XCTAssertEqual(now, 14)
    }
}
