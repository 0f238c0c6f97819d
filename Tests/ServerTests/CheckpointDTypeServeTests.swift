import Foundation
import XCTest
import Learner
import Model
import SelmClient

/// `selm serve --checkpoint-dtype bf16` end to end: the learner's checkpoints hold BF16 model files,
/// a restart resumes from one to exactly the state a restart from an F32 checkpoint gives, and every
/// checkpoint carries `trainer_state.json` whose `log_history` runs across the restart.
extension OnlineLearningTests {
    func testServeBF16CheckpointsResumeExactlyAcrossARestart() throws {
        // One BLAS thread each (split), full batches only: the same rows give the same bits.
        let common = ["--lr", "2e-3", "--beta", "0.1", "--batch-size", "2", "--max-wait-seconds", "0",
                      "--checkpoint-every", "2", "--compute-sharing", "split"]
        var batches: [[PreferenceRow]] = []
        /// Two steps, a graceful stop, a restart, two more steps; returns the data directory.
        func run(_ extra: [String]) throws -> String {
            let dir = try temporaryDirectory()
            var (s, c) = try start(dir, common + extra)
            if batches.isEmpty { batches = try (0 ..< 4).map { try Self.rows(c, count: 2, offset: 10 * $0) } }
            for b in batches.prefix(2) { _ = try c.submitPreferences(b) }
            try waitFor("two learner steps and their checkpoint") {
                try c.status().learnerStep == 2 && OnlineLearner.latestName(root: dir + "/checkpoints") == "step-2"
            }
            c.close()
            XCTAssertEqual(s.stop(), 0, s.log)
            (s, c) = try start(dir, common + extra)
            XCTAssertTrue(s.log.contains("learner resumed from"), s.log)
            for b in batches.suffix(2) { _ = try c.submitPreferences(b) }
            try waitFor("the learner to consume every record") { try c.status().walConsumedSequence == 4 }
            _ = try c.saveCheckpoint(name: "end")
            c.close()
            XCTAssertEqual(s.stop(), 0, s.log)
            return dir
        }
        let f32 = try run([])
        let bf16 = try run(["--checkpoint-dtype", "bf16"])

        for name in ["step-2", "step-4", "end"] {
            let d = bf16 + "/checkpoints/" + name
            XCTAssertTrue(try SafetensorsFile(path: d + "/model.safetensors").tensors.allSatisfy { $0.dtype == .bf16 }, name)
            XCTAssertTrue(try SafetensorsFile(path: f32 + "/checkpoints/\(name)/model.safetensors").tensors.allSatisfy { $0.dtype == .f32 }, name)
        }
        let want = try Checkpoint.loadWeights(from: f32 + "/checkpoints/end").weights
        let got = try Checkpoint.loadWeights(from: bf16 + "/checkpoints/end").weights
        let diff = (0 ..< want.count).first { got.data[$0].bitPattern != want.data[$0].bitPattern }
        XCTAssertNil(diff, "resumed from a BF16 checkpoint, the run ends elsewhere than from an F32 one (element \(diff ?? -1))")
        let initial = try LlamaModel.load(huggingFaceDirectory: Self.tinyChat).weights
        XCTAssertTrue((0 ..< want.count).contains { want.data[$0] != initial.data[$0] }, "training changed the weights")

        struct State: Decodable { var global_step: Int; var max_steps: Int; var epoch: Double?; var log_history: [[String: Double?]] }
        let st = try JSONDecoder().decode(State.self, from: Data(contentsOf: URL(fileURLWithPath: bf16 + "/checkpoints/end/trainer_state.json")))
        XCTAssertEqual(st.global_step, 4)
        XCTAssertEqual(st.max_steps, 0, "an online run has no horizon")
        XCTAssertNil(st.epoch, "nor epochs")
        XCTAssertEqual(st.log_history.map { $0["step"] ?? nil }, [1, 2, 3, 4], "the history runs across the restart")
        XCTAssertTrue(st.log_history.allSatisfy { ($0["loss"] ?? nil) != nil && ($0["rewards/margins"] ?? nil) != nil })
    }

    /// `RefreshWeights` from a BF16 checkpoint hands the learner the checkpoint's f32 master weights
    /// (BF16 + residual), not the rounded BF16 ones: a checkpoint saved right after holds them exactly.
    func testRefreshFromBF16CheckpointAdoptsTheMasterWeights() throws {
        let dir = try temporaryDirectory()
        let (s, c) = try start(dir, ["--lr", "2e-3", "--batch-size", "2", "--max-wait-seconds", "0", "--checkpoint-every", "0",
                                     "--checkpoint-dtype", "bf16"])
        _ = try c.submitPreferences(try Self.rows(c, count: 2))
        try waitFor("one learner step") { try c.status().learnerStep == 1 }
        _ = try c.saveCheckpoint(name: "a")
        _ = try c.refreshWeights(checkpoint: "checkpoints/a")
        _ = try c.saveCheckpoint(name: "b")
        c.close()
        XCTAssertEqual(s.stop(), 0, s.log)
        let a = try Checkpoint.loadWeights(from: dir + "/checkpoints/a").weights
        let b = try Checkpoint.loadWeights(from: dir + "/checkpoints/b").weights
        let rounded = try LlamaModel.load(huggingFaceDirectory: dir + "/checkpoints/a").weights
        XCTAssertTrue((0 ..< a.count).contains { a.data[$0] != rounded.data[$0] }, "the master weights are not all BF16 values")
        let diff = (0 ..< a.count).first { a.data[$0].bitPattern != b.data[$0].bitPattern }
        XCTAssertNil(diff, "the refreshed learner holds other weights than checkpoint a's master weights (element \(diff ?? -1))")
    }
}
