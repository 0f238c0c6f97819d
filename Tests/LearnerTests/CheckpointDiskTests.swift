import DurableFile
import Foundation
import XCTest
@testable import Learner
@testable import Model

/// Checkpoint disk bookkeeping (pruning the automatic series, cleaning after interrupted saves, the
/// size estimate) and the finiteness scan, on real directories.
final class CheckpointDiskTests: XCTestCase {
    func temporaryDirectory() throws -> String {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("selm-ckdisk-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
        return d
    }

    /// A directory that looks like a checkpoint (`trainer_state.json`) with `bytes` of payload.
    func fakeCheckpoint(_ path: String, bytes: Int = 10) throws {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        try Data("{}".utf8).write(to: URL(fileURLWithPath: path + "/" + Checkpoint.stateFile))
        try Data(count: bytes).write(to: URL(fileURLWithPath: path + "/model.safetensors"))
    }

    func names(_ root: String) throws -> [String] { try FileManager.default.contentsOfDirectory(atPath: root).sorted() }

    /// The newest N of the `step-N` series stay, plus the protected one; other names and
    /// non-checkpoints are never touched; 0 keeps all.
    func testPruneKeepsNewestAutomaticCheckpointsAndTheProtectedOne() throws {
        let root = try temporaryDirectory()
        for s in [1, 2, 3, 10, 20] { try fakeCheckpoint(root + "/step-\(s)") }
        try fakeCheckpoint(root + "/mine")
        try FileManager.default.createDirectory(atPath: root + "/step-0", withIntermediateDirectories: true)  // not a checkpoint
        try fakeCheckpoint(root + "/step-7x")

        XCTAssertTrue(Checkpoint.prune(in: root, keep: 0, protecting: nil).isEmpty, "0 keeps all")
        let removed = Checkpoint.prune(in: root, keep: 2, protecting: "step-1")
        XCTAssertEqual(removed.map(\.name).sorted(), ["step-2", "step-3"])
        XCTAssertTrue(removed.allSatisfy { $0.bytes > 0 })
        XCTAssertEqual(try names(root), ["mine", "step-0", "step-1", "step-10", "step-20", "step-7x"])
    }

    /// `NAME.old-PID` without `NAME` (a crash between the renames of a replacing save) comes back;
    /// every other leftover goes; nothing else is touched.
    func testRecoverInterruptedSaves() throws {
        let root = try temporaryDirectory()
        try fakeCheckpoint(root + "/step-5.partial-123", bytes: 100_000)
        try fakeCheckpoint(root + "/a")
        try fakeCheckpoint(root + "/a.old-77")
        try fakeCheckpoint(root + "/b.old-78")
        try Data("step-5\n".utf8).write(to: URL(fileURLWithPath: root + "/latest.tmp-99"))
        try fakeCheckpoint(root + "/keep.partial-x")  // not a PID suffix: not ours
        try Data("a\n".utf8).write(to: URL(fileURLWithPath: root + "/latest"))

        let r = Checkpoint.recoverInterruptedSaves(in: root)
        XCTAssertEqual(try names(root), ["a", "b", "keep.partial-x", "latest"])
        XCTAssertGreaterThanOrEqual(r.freedBytes, 100_000)
        XCTAssertTrue(r.actions.contains { $0.hasPrefix("restored b from b.old-78") }, "\(r.actions)")
        XCTAssertTrue(r.actions.contains { $0.hasPrefix("removed step-5.partial-123") }, "\(r.actions)")
        XCTAssertTrue(Checkpoint.isCheckpoint(root + "/b"))
    }

    /// A save never replaces something that is not a checkpoint.
    func testSaveRefusesToReplaceANonCheckpoint() throws {
        let root = try temporaryDirectory()
        try FileManager.default.createDirectory(atPath: root + "/notes", withIntermediateDirectories: true)
        try Data("mine".utf8).write(to: URL(fileURLWithPath: root + "/notes/todo.txt"))
        let model = try LlamaModel.load(huggingFaceDirectory: LearnerTests.modelFixtures.appendingPathComponent("tiny-untied").path)
        let learner = try Trainer(policy: model, reference: nil, options: TrainingOptions(), schedule: LRSchedule(kind: .constant, baseLR: 0, warmupSteps: 0, totalSteps: 1))
        let state = TrainerState(step: 0, optimizerSteps: 0, skippedSteps: 0, options: learner.options, schedule: learner.schedule,
                                 referenceKind: learner.reference.kind, referenceGeneration: 0, baseModel: "x", referenceModel: nil)
        XCTAssertThrowsError(try Checkpoint.save(learner, state: state, to: root + "/notes", extras: .init(writeGGUF: false))) {
            XCTAssertEqual($0 as? CheckpointError, .notACheckpoint(path: root + "/notes"))
        }
        XCTAssertEqual(try String(contentsOfFile: root + "/notes/todo.txt", encoding: .utf8), "mine")
        // A checkpoint is replaced; the estimate covers what was written.
        try Checkpoint.save(learner, state: state, to: root + "/ck", extras: .init(writeGGUF: true))
        try Checkpoint.save(learner, state: state, to: root + "/ck", extras: .init(writeGGUF: true))
        XCTAssertEqual(try names(root), ["ck", "notes"])
        let written = diskBytes(at: root + "/ck")
        let estimate = Checkpoint.estimatedBytes(of: learner, extras: .init(writeGGUF: true))
        XCTAssertGreaterThanOrEqual(estimate, written, "the estimate covers the checkpoint")
        XCTAssertLessThan(estimate, written + (2 << 20), "and is close to it")
    }

    /// The scan names the first NaN / Inf by tensor and index, and finds none in finite weights.
    func testFirstNonFinite() throws {
        let model = try LlamaModel.load(huggingFaceDirectory: LearnerTests.modelFixtures.appendingPathComponent("tiny-untied").path)
        let w = model.weights
        XCTAssertNil(w.firstNonFinite())
        let e = w.layout.entries[5]
        w.data[e.offset + 3] = .infinity
        XCTAssertEqual(w.firstNonFinite(), NonFiniteValue(tensor: e.name, index: 3, value: .infinity))
        let last = w.layout.entries.last!
        w.data[e.offset + 3] = 1
        w.data[last.offset + last.count - 1] = .nan
        let found = try XCTUnwrap(w.firstNonFinite())
        XCTAssertEqual(found.tensor, last.name)
        XCTAssertEqual(found.index, last.count - 1)
        XCTAssertTrue(found.value.isNaN)
    }
}
