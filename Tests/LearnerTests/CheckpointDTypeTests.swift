import DurableFile
import Foundation
import XCTest
@testable import Learner
@testable import Model

/// `--checkpoint-dtype` and `trainer_state.json`, on real checkpoints of the tiny fixture model:
/// a BF16 checkpoint's files, its exact resume, its GGUF, and the Hugging Face Trainer state file.
final class CheckpointDTypeTests: XCTestCase {
    func temporaryDirectory() throws -> String {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("selm-ckdtype-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
        return d
    }

    static let fixture = LearnerTests.modelFixtures.appendingPathComponent("tiny-untied").path

    func options() -> TrainingOptions {
        var o = TrainingOptions()
        o.learningRate = 1e-2; o.batchSize = 2; o.refRefreshSteps = 3
        return o
    }
    let schedule = LRSchedule(kind: .constant, baseLR: 1e-2, warmupSteps: 0, totalSteps: 10)

    func batch(_ k: Int) -> [(pairs: [PreferencePair], keys: [UInt64])] {
        let ps = (0 ..< 2).map { i in
            PreferencePair(prompt: [Int32(30 + k + i), 40], chosen: [10, 10, 11], rejected: [20, 20, 21], reference: [Int32(50 + i)])
        }
        return [(ps, [UInt64(2 * k), UInt64(2 * k + 1)])]
    }

    func bits(_ w: ParameterSet) -> [UInt32] { (0 ..< w.count).map { w.data[$0].bitPattern } }

    /// Bitwise equality, reporting the first difference (not two whole arrays).
    func assertSameBits(_ a: [UInt32], _ b: [UInt32], _ what: String, line: UInt = #line) {
        guard let i = zip(a, b).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset ?? (a.count == b.count ? nil : min(a.count, b.count)) else { return }
        XCTFail("\(what): differs at element \(i) of \(a.count) (\(i < a.count ? String(format: "%08x", a[i]) : "-") vs \(i < b.count ? String(format: "%08x", b[i]) : "-"))", line: line)
    }

    func state(_ t: Trainer) -> TrainerState {
        TrainerState(step: t.step, optimizerSteps: t.optimizer.step, skippedSteps: t.skippedSteps, options: t.options,
                     schedule: t.schedule, referenceKind: t.reference.kind, referenceGeneration: t.reference.generation,
                     baseModel: Self.fixture, referenceModel: nil)
    }

    /// The split is exact for every bit pattern class (normals, subnormals, ties, ±0, huge, Inf,
    /// NaN) and the BF16 half is the nearest bfloat16.
    func testBF16SplitIsExact() {
        var patterns: [UInt32] = [0, 0x8000_0000, 0x0000_8000, 0x0001_8000, 0x3F80_8000, 0x3F81_8000, 0xBF80_8000,
                                  0x7F7F_FFFF, 0xFF7F_FFFF, 0x7F80_0000, 0x7FC0_0001, 0xFFFF_FFFF, 0x0000_0001]
        var state: UInt64 = 7
        for _ in 0 ..< 100_000 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            patterns.append(UInt32(truncatingIfNeeded: state >> 29))
        }
        for p in patterns {
            let x = Float(bitPattern: p)
            var w = Float(bitPattern: UInt32(BF16Split.bf16(x)) << 16)
            var r = BF16Split.residual(x)
            BF16Split.join(&w, residual: &r, count: 1)
            XCTAssertEqual(w.bitPattern, p, String(format: "%08x", p))
            if x.isFinite && abs(x) < 1e38 {
                let b = Float(bitPattern: UInt32(BF16Split.bf16(x)) << 16)
                let ulp = Float(bitPattern: (b.bitPattern & 0x7F80_0000) | 0x1_0000) - Float(bitPattern: b.bitPattern & 0x7F80_0000)
                XCTAssertLessThanOrEqual(abs(b - x), ulp / 2 * 1.0000001, String(format: "%08x", p))
            }
        }
    }

    /// A BF16 checkpoint: model.safetensors and model.gguf in BF16 (GGUF norms F32), config.json
    /// says bfloat16, the optimizer state F32 with the I16 residuals; resuming from it gives the
    /// f32 weights, moments and reference bit for bit, and training on continues exactly as from the
    /// F32 checkpoint and as the run that never stopped.
    func testBF16CheckpointResumesBitForBit() throws {
        let root = try temporaryDirectory()
        let learner = try Trainer(policy: LlamaModel.load(path: Self.fixture), reference: nil, options: options(), schedule: schedule)
        for k in 0 ..< 4 { _ = try learner.step(batch(k)) }  // the reference was refreshed at step 3
        XCTAssertEqual(learner.reference.generation, 1)
        try Checkpoint.save(learner, state: state(learner), to: root + "/bf16", extras: .init(writeGGUF: true, dtype: .bf16))
        try Checkpoint.save(learner, state: state(learner), to: root + "/f32", extras: .init(writeGGUF: true, dtype: .f32))
        let saved = bits(learner.policy.weights)

        // The files.
        let model = try SafetensorsFile(path: root + "/bf16/model.safetensors")
        XCTAssertTrue(model.tensors.allSatisfy { $0.dtype == .bf16 }, "\(model.tensors.map(\.dtype))")
        XCTAssertTrue(try SafetensorsFile(path: root + "/f32/model.safetensors").tensors.allSatisfy { $0.dtype == .f32 })
        let opt = try SafetensorsFile(path: root + "/bf16/optimizer.safetensors")
        for e in learner.policy.weights.layout.entries {
            XCTAssertEqual(opt.tensor("exp_avg." + e.name)?.dtype, .f32)
            XCTAssertEqual(opt.tensor(Checkpoint.residualPrefix + e.name)?.dtype.rawValue, "I16")
            XCTAssertEqual(opt.tensor(Checkpoint.residualPrefix + e.name)?.shape, e.shape)
        }
        XCTAssertNil(try SafetensorsFile(path: root + "/f32/optimizer.safetensors").tensors.first { $0.name.hasPrefix(Checkpoint.residualPrefix) })
        XCTAssertTrue(try SafetensorsFile(path: root + "/bf16/reference.safetensors").tensors.allSatisfy { $0.dtype == .f32 })
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: root + "/bf16/config.json"))) as! [String: Any]
        XCTAssertEqual(config["torch_dtype"] as? String, "bfloat16")
        let modelBytes = { (d: String) in (try? FileManager.default.attributesOfItem(atPath: root + "/\(d)/model.safetensors")[.size] as? Int) ?? 0 }
        XCTAssertLessThan(modelBytes("bf16"), modelBytes("f32") / 2 + 4096)

        // The BF16 values are the rounded weights; the GGUF holds the same values (norms F32, exact).
        let hf = try LlamaModel.load(huggingFaceDirectory: root + "/bf16")
        for i in 0 ..< hf.weights.count {
            XCTAssertEqual(hf.weights.data[i].bitPattern, UInt32(BF16Split.bf16(learner.policy.weights.data[i])) << 16)
            if hf.weights.data[i].bitPattern != UInt32(BF16Split.bf16(learner.policy.weights.data[i])) << 16 { break }
        }
        let gguf = try GGUFFile(path: root + "/bf16/model.gguf")
        XCTAssertTrue(gguf.tensors.allSatisfy { $0.type == ($0.dims.count > 1 ? .bf16 : .f32) }, "\(gguf.tensors.map { ($0.name, $0.type) })")
        let fromGGUF = try LlamaModel.load(gguf: gguf)
        for e in hf.weights.layout.entries {
            let a = (0 ..< e.count).map { hf.weights.data[e.offset + $0].bitPattern }
            let n = e.shape.count > 1 ? a : (0 ..< e.count).map { learner.policy.weights.data[e.offset + $0].bitPattern }
            XCTAssertEqual((0 ..< e.count).map { fromGGUF.weights.data[e.offset + $0].bitPattern }, n, e.name)
        }

        // Resume from each; both hold the learner's f32 state exactly; three more steps agree.
        var runs: [Trainer] = [learner]
        for d in ["bf16", "f32"] {
            let (t, st) = try Checkpoint.resume(from: root + "/" + d, policy: LlamaModel.load(path: Self.fixture), reference: nil,
                                                options: options(), schedule: schedule)
            assertSameBits(bits(t.policy.weights), saved, "\(d): the resumed weights are the f32 master weights")
            assertSameBits(bits(t.optimizer.m), bits(learner.optimizer.m), "\(d): exp_avg")
            assertSameBits(bits(t.reference.model.weights), bits(learner.reference.model.weights), "\(d): reference")
            XCTAssertEqual(st.step, 4)
            runs.append(t)
        }
        for k in 4 ..< 7 { for t in runs { _ = try t.step(batch(k)) } }
        assertSameBits(bits(runs[1].policy.weights), bits(runs[0].policy.weights), "resumed from bf16 vs never stopped")
        assertSameBits(bits(runs[2].policy.weights), bits(runs[0].policy.weights), "resumed from f32 vs never stopped")
        assertSameBits(bits(runs[1].optimizer.v), bits(runs[0].optimizer.v), "exp_avg_sq after 3 more steps")
    }

    /// The size estimate covers a BF16 checkpoint and stays close to it.
    func testEstimateCoversBF16Checkpoint() throws {
        let root = try temporaryDirectory()
        let learner = try Trainer(policy: LlamaModel.load(path: Self.fixture), reference: nil, options: options(), schedule: schedule)
        _ = try learner.step(batch(0))
        let extras = Checkpoint.Extras(writeGGUF: true, dtype: .bf16)
        try Checkpoint.save(learner, state: state(learner), to: root + "/ck", extras: extras)
        let written = diskBytes(at: root + "/ck")
        let estimate = Checkpoint.estimatedBytes(of: learner, extras: extras)
        XCTAssertGreaterThanOrEqual(estimate, written)
        XCTAssertLessThan(estimate, written + (2 << 20))
        XCTAssertLessThan(estimate, Checkpoint.estimatedBytes(of: learner, extras: .init(writeGGUF: true, dtype: .f32)))
    }

    /// `trainer_state.json` has the Hugging Face Trainer's keys and one `log_history` entry per
    /// step with the learner's metrics under TRL's names; the resume state is `selm_state.json`; a
    /// resumed history continues the checkpoint's.
    func testTrainerStateJSONInHuggingFaceLayout() throws {
        let root = try temporaryDirectory()
        let learner = try Trainer(policy: LlamaModel.load(path: Self.fixture), reference: nil, options: options(), schedule: schedule)
        var log = TrainingLog(maxSteps: 10, numTrainEpochs: 2, trainBatchSize: 2, saveSteps: 3)
        var reports: [StepReport] = []
        for k in 0 ..< 3 {
            let r = try learner.step(batch(k))
            reports.append(r)
            log.record(step: r.step, epoch: Double(k + 1) / 5, metrics: r.metrics, tokens: r.tokens)
        }
        try Checkpoint.save(learner, state: state(learner), to: root + "/ck", extras: .init(writeGGUF: false), log: log)

        let o = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: root + "/ck/trainer_state.json"))) as! [String: Any]
        XCTAssertEqual(Set(o.keys), ["epoch", "global_step", "max_steps", "logging_steps", "eval_steps", "save_steps",
                                     "train_batch_size", "num_train_epochs", "num_input_tokens_seen", "total_flos",
                                     "log_history", "best_metric", "best_global_step", "best_model_checkpoint",
                                     "is_local_process_zero", "is_world_process_zero", "is_hyper_param_search",
                                     "trial_name", "trial_params", "stateful_callbacks"])
        XCTAssertEqual(o["global_step"] as? Int, 3)
        XCTAssertEqual(o["max_steps"] as? Int, 10)
        XCTAssertEqual(o["num_train_epochs"] as? Int, 2)
        XCTAssertEqual(o["train_batch_size"] as? Int, 2)
        XCTAssertEqual(o["save_steps"] as? Int, 3)
        XCTAssertEqual(o["epoch"] as? Double, 0.6)
        XCTAssertEqual(o["num_input_tokens_seen"] as? Int, reports.map(\.tokens).reduce(0, +))
        XCTAssertTrue(o["best_metric"] is NSNull)
        XCTAssertTrue(o["trial_name"] is NSNull)
        // Values through JSONDecoder (JSONSerialization's parser rounds some doubles one unit off).
        struct File: Decodable { var log_history: [[String: Double?]] }
        let history = try JSONDecoder().decode(File.self, from: Data(contentsOf: URL(fileURLWithPath: root + "/ck/trainer_state.json"))).log_history
        XCTAssertEqual(history.count, 3)
        for (h, r) in zip(history, reports) {
            XCTAssertEqual(h["step"], Double(r.step))
            for key in ["loss", "learning_rate", "grad_norm", "rewards/chosen", "rewards/rejected", "rewards/margins",
                        "rewards/accuracies", "logps/chosen", "logps/rejected"] {
                XCTAssertEqual(h[key] ?? nil, try XCTUnwrap(r.metrics[key], key), "step \(r.step) \(key)")
            }
            XCTAssertEqual(Set(h.keys), Set(r.metrics.keys).union(["step", "epoch"]))
        }
        // The resume state lives beside it and loads; a resumed history continues this one.
        XCTAssertTrue(FileManager.default.fileExists(atPath: root + "/ck/" + Checkpoint.stateFile))
        XCTAssertEqual(try Checkpoint.loadState(from: root + "/ck").step, 3)
        let back = try XCTUnwrap(TrainingLog.load(fromCheckpoint: root + "/ck"))
        XCTAssertEqual(back.entries.map(\.step), [1, 2, 3])
        XCTAssertEqual(back.entries[1].metrics["loss"], reports[1].metrics["loss"])
        var next = TrainingLog(maxSteps: 10)
        next.continue(from: back, upTo: 2)
        next.record(step: 3, epoch: nil, metrics: ["loss": 1], tokens: 5)
        XCTAssertEqual(next.entries.map(\.step), [1, 2, 3])
        XCTAssertEqual(next.inputTokensSeen, back.inputTokensSeen + 5)
    }

    /// A checkpoint written before `selm_state.json` (the resume state in `trainer_state.json`)
    /// still counts as a checkpoint and resumes.
    func testLegacyCheckpointStillResumes() throws {
        let root = try temporaryDirectory()
        let learner = try Trainer(policy: LlamaModel.load(path: Self.fixture), reference: nil, options: options(), schedule: schedule)
        _ = try learner.step(batch(0))
        try Checkpoint.save(learner, state: state(learner), to: root + "/old", extras: .init(writeGGUF: false))
        let fm = FileManager.default
        try fm.removeItem(atPath: root + "/old/trainer_state.json")
        try fm.moveItem(atPath: root + "/old/selm_state.json", toPath: root + "/old/trainer_state.json")
        XCTAssertTrue(Checkpoint.isCheckpoint(root + "/old"))
        let (t, st) = try Checkpoint.resume(from: root + "/old", policy: LlamaModel.load(path: Self.fixture), reference: nil,
                                            options: options(), schedule: schedule)
        XCTAssertEqual(st.step, 1)
        assertSameBits(bits(t.policy.weights), bits(learner.policy.weights), "legacy resume")
        XCTAssertNil(TrainingLog.load(fromCheckpoint: root + "/old"), "the old file is not in the HF layout")
    }
}
