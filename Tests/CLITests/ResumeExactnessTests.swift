import Foundation
import XCTest
@testable import Model

/// `selm train --resume` continues bit for bit, also when the reference is frozen and its cached
/// log-probs would otherwise be reused across the checkpoint: a checkpoint empties the reference
/// cache, so the uninterrupted run recomputes them in the same batches as the resumed one (the f32
/// forward's last bits depend on the batch's shape).
extension CLITests {
    func testResumeWithAFrozenReferenceIsBitExact() throws {
        let dir = try tempDir()
        let data = dir.appendingPathComponent("pairs.jsonl")
        try writePairs((0 ..< 8).map { i in
            ["prompt_ids": [30 + i, 40 + i], "chosen_ids": [10, 10, 11], "rejected_ids": [20, 20, 21], "reference_ids": [50 + i, 2]]
        }, to: data)
        let model = Self.modelFixtures.appendingPathComponent("tiny-tied").path
        let common = ["--model", model, "--data", data.path, "--lr", "3e-3", "--batch-size", "2", "--epochs", "2",
                      "--beta", "0.1", "--checkpoint-every", "2", "--log-level", "warning"]
        let full = dir.appendingPathComponent("full").path, resumed = dir.appendingPathComponent("resumed").path
        XCTAssertEqual(try run(["train", "--out", full] + common).status, 0)
        XCTAssertEqual(try run(["train", "--out", resumed, "--resume", full + "/checkpoint-4"] + common).status, 0)
        let a = try LlamaModel.load(huggingFaceDirectory: full + "/final").weights
        let b = try LlamaModel.load(huggingFaceDirectory: resumed + "/final").weights
        let diff = (0 ..< a.count).first { a.data[$0].bitPattern != b.data[$0].bitPattern }
        XCTAssertNil(diff, "the resumed run ends elsewhere than the uninterrupted one (element \(diff ?? -1))")
    }
}
