import Foundation
import Model

extension Checkpoint {
    /// Continues a run from the checkpoint in `directory` — the one resume, used by `selm serve`
    /// (its `DATA/checkpoints/latest`) and `selm train --resume`:
    /// - the policy's weights become the checkpoint's (same shape, every weight finite);
    /// - a frozen reference the run never refreshed is the model the run started from
    ///   (`TrainerState.baseModel`), not the checkpoint's weights;
    /// - AdamW moments, step counters, schedule and a refreshed reference come from the checkpoint.
    /// The caller checks what is its own (`selm train`: same options; `selm serve` keeps its own
    /// schedule) and reads the log or data position from the returned state.
    /// - Parameters:
    ///   - policy: the model loaded from `--model`; its weights are overwritten (trained in place).
    ///   - reference: a separate reference model, or nil for a frozen copy of the starting weights.
    /// - Throws: `LearnerError.badCheckpoint` for another shape or a non-finite weight (naming the
    ///   tensor), a BF16 checkpoint without its master residuals, or what loading throws.
    /// Thread: any (blocking I/O).
    public static func resume(from directory: String, policy: LlamaModel, reference: LlamaModel?, options: TrainingOptions,
                              schedule: LRSchedule) throws -> (trainer: Trainer, state: TrainerState) {
        let ck = try loadWeights(from: directory)
        guard ck.config == policy.config else {
            throw LearnerError.badCheckpoint(path: directory, reason: "the checkpoint holds a model of another shape than --model")
        }
        if let bad = ck.weights.firstNonFinite() {
            throw LearnerError.badCheckpoint(path: directory, reason: "cannot resume: the weights hold \(bad)")
        }
        let state = try loadState(from: directory)
        policy.weights.data.update(from: ck.weights.data, count: ck.weights.count)
        let trainer = try Trainer(policy: policy, reference: reference, options: options, schedule: schedule)
        if trainer.reference.kind == .initial && state.referenceGeneration == 0 {
            let start = try LlamaModel.load(path: state.baseModel)
            trainer.reference.model.weights.data.update(from: start.weights.data, count: start.weights.count)
        }
        try restore(trainer, from: directory, state: state)
        return (trainer, state)
    }

    /// The policy weights of the checkpoint in `directory` exactly as the learner held them: its
    /// `model.safetensors`, and — when that is BF16 and `optimizer.safetensors` holds
    /// `master_residual.<name>` tensors — each weight's residual added back (`BF16Split.join`), so a
    /// BF16 checkpoint gives the f32 master weights bit for bit. A checkpoint without residuals
    /// (F32, or a plain Hugging Face directory) loads as it is.
    /// - Throws: `LearnerError.badCheckpoint` when residuals exist for some tensors but not all, have
    ///   another shape, or sit beside F32 weights; or what loading throws.
    /// Thread: any (blocking I/O).
    public static func loadWeights(from directory: String) throws -> LlamaModel {
        let model = try LlamaModel.load(huggingFaceDirectory: directory)
        let optPath = directory + "/optimizer.safetensors"
        guard FileManager.default.fileExists(atPath: optPath) else { return model }
        let opt = try SafetensorsFile(path: optPath)
        let entries = model.weights.layout.entries
        let found = entries.filter { opt.tensor(residualPrefix + $0.name) != nil }
        if found.isEmpty { return model }
        guard found.count == entries.count else {
            let missing = entries.first { opt.tensor(residualPrefix + $0.name) == nil }!.name
            throw LearnerError.badCheckpoint(path: optPath, reason: "missing tensor '\(residualPrefix + missing)'")
        }
        let weightsFile = try SafetensorsFile(path: directory + "/model.safetensors")
        for e in entries {
            let info = opt.tensor(residualPrefix + e.name)!
            guard info.dtype.rawValue == "I16", info.shape == e.shape else {
                throw LearnerError.badCheckpoint(path: optPath, reason: "tensor '\(info.name)' is \(info.dtype) \(info.shape), expected I16 \(e.shape)")
            }
            guard weightsFile.tensor(e.name)?.dtype == .bf16 else {
                throw LearnerError.badCheckpoint(path: weightsFile.path, reason: "tensor '\(e.name)' is not BF16, but optimizer.safetensors holds its master residual")
            }
            let raw = opt.data(of: info)
            var residual = [Int16](repeating: 0, count: e.count)
            residual.withUnsafeMutableBytes { $0.copyMemory(from: raw) }
            for i in residual.indices { residual[i] = Int16(littleEndian: residual[i]) }
            BF16Split.join(model.weights.data + e.offset, residual: residual, count: e.count)
        }
        return model
    }
}
