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
    ///   tensor), or what loading throws.
    /// Thread: any (blocking I/O).
    public static func resume(from directory: String, policy: LlamaModel, reference: LlamaModel?, options: TrainingOptions,
                              schedule: LRSchedule) throws -> (trainer: Trainer, state: TrainerState) {
        let ck = try LlamaModel.load(huggingFaceDirectory: directory)
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
}
