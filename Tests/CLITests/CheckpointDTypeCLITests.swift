import Foundation
import XCTest
@testable import Learner
@testable import Model

/// `selm train --checkpoint-dtype bf16` through the real binary: the model files are BF16, the run
/// resumes from a BF16 checkpoint to the very weights of an uninterrupted F32 run, and every
/// checkpoint carries `trainer_state.json` with the run's `log_history`.
extension CLITests {
    func testTrainBF16CheckpointResumesExactlyAndLogsHistory() throws {
        let dir = try tempDir()
        let data = dir.appendingPathComponent("pairs.jsonl")
        try writePairs((0 ..< 8).map { i in
            ["prompt_ids": [30 + i, 40 + i], "chosen_ids": [10, 10, 11], "rejected_ids": [20, 20, 21], "reference_ids": [50 + i, 2]]
        }, to: data)
        let model = Self.modelFixtures.appendingPathComponent("tiny-tied").path
        let common = ["--model", model, "--data", data.path, "--lr", "3e-3", "--batch-size", "2", "--epochs", "2",
                      "--beta", "0.1", "--ref-refresh-steps", "3", "--save-every", "2"]
        let f32 = dir.appendingPathComponent("f32").path, bf16 = dir.appendingPathComponent("bf16").path
        let resumed = dir.appendingPathComponent("resumed").path
        let a = try run(["train", "--out", f32] + common)
        XCTAssertEqual(a.status, 0, a.stderr)
        let b = try run(["train", "--out", bf16, "--checkpoint-dtype", "bf16"] + common)
        XCTAssertEqual(b.status, 0, b.stderr)
        let c = try run(["train", "--out", resumed, "--checkpoint-dtype", "bf16", "--resume", bf16 + "/checkpoint-4"] + common)
        XCTAssertEqual(c.status, 0, c.stderr)
        XCTAssertTrue(c.stderr.contains("resuming from"), c.stderr)
        let bad = try run(["train", "--out", dir.appendingPathComponent("x").path, "--checkpoint-dtype", "fp8"] + common)
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("--checkpoint-dtype: expected f32 or bf16, got 'fp8'"), bad.stderr)

        for d in [bf16 + "/checkpoint-4", bf16 + "/final"] {
            XCTAssertTrue(try SafetensorsFile(path: d + "/model.safetensors").tensors.allSatisfy { $0.dtype == .bf16 }, d)
            XCTAssertTrue(try GGUFFile(path: d + "/model.gguf").tensors.contains { $0.type == .bf16 }, d)
        }
        XCTAssertTrue(try SafetensorsFile(path: f32 + "/final/model.safetensors").tensors.allSatisfy { $0.dtype == .f32 }, "f32 is the default")
        // The master weights of the BF16 checkpoints are the F32 run's, bit for bit — also after resuming.
        let want = try LlamaModel.load(huggingFaceDirectory: f32 + "/final").weights
        for d in [bf16 + "/final", resumed + "/final"] {
            let got = try Checkpoint.loadWeights(from: d).weights
            let diff = (0 ..< want.count).first { got.data[$0].bitPattern != want.data[$0].bitPattern }
            XCTAssertNil(diff, "\(d) differs from the F32 run at element \(diff ?? -1)")
        }

        // trainer_state.json: one log_history entry per step, equal to metrics.jsonl; continued on resume.
        struct State: Decodable { var global_step: Int; var max_steps: Int; var epoch: Double?; var log_history: [[String: Double?]] }
        func metricsLines(_ out: String) throws -> [[String: Double?]] {
            try String(contentsOfFile: out + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
                .map { try JSONDecoder().decode([String: Double?].self, from: Data($0.utf8)) }
        }
        let logged = try metricsLines(bf16), loggedAfterResume = try metricsLines(resumed)
        XCTAssertEqual([logged.count, loggedAfterResume.count], [8, 4])
        for d in [bf16 + "/final", resumed + "/final", bf16 + "/checkpoint-4"] {
            // The resumed run's history: the checkpoint's four steps, then the four it logged itself.
            let metrics = d.hasPrefix(resumed) ? Array(logged.prefix(4)) + loggedAfterResume : logged
            let st = try JSONDecoder().decode(State.self, from: Data(contentsOf: URL(fileURLWithPath: d + "/trainer_state.json")))
            let n = d.hasSuffix("checkpoint-4") ? 4 : 8
            XCTAssertEqual(st.global_step, n, d)
            XCTAssertEqual(st.max_steps, 8, d)
            XCTAssertEqual(st.epoch, Double(n) / 4, d)
            XCTAssertEqual(st.log_history.map { $0["step"] ?? nil }, (1 ... n).map(Double.init), d)
            for (h, m) in zip(st.log_history, metrics) {
                for key in ["loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "learning_rate", "grad_norm"] {
                    XCTAssertEqual(h[key] ?? nil, m[key] ?? nil, "\(d) step \(h["step"]! ?? 0) \(key)")
                }
            }
        }
    }

    /// `selm train --keep-checkpoints N` keeps the newest N `checkpoint-<step>` directories after
    /// each save, whole (every file of a BF16 checkpoint), never `final` nor other names.
    func testTrainKeepCheckpointsPrunesOldestWholeDirectories() throws {
        let dir = try tempDir()
        let data = dir.appendingPathComponent("pairs.jsonl")
        try writePairs((0 ..< 10).map { i in ["prompt_ids": [30 + i, 40], "chosen_ids": [10, 11], "rejected_ids": [20, 21]] }, to: data)
        let out = dir.appendingPathComponent("out").path
        try FileManager.default.createDirectory(atPath: out + "/checkpoint-notes", withIntermediateDirectories: true)
        let r = try run(["train", "--model", Self.modelFixtures.appendingPathComponent("tiny-tied").path, "--data", data.path,
                         "--out", out, "--batch-size", "2", "--save-every", "1", "--keep-checkpoints", "2", "--checkpoint-dtype", "bf16"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: out).sorted(),
                       ["checkpoint-3", "checkpoint-4", "checkpoint-notes", "final", "metrics.jsonl"])
        XCTAssertTrue(r.stderr.contains("removed \(out)/checkpoint-1"), r.stderr)
        XCTAssertTrue(r.stderr.contains("removed \(out)/checkpoint-2"), r.stderr)
        let bad = try run(["train", "--model", Self.modelFixtures.appendingPathComponent("tiny-tied").path, "--data", data.path,
                           "--out", out, "--keep-checkpoints=-1"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("--keep-checkpoints: must be ≥ 0"), bad.stderr)
    }
}
