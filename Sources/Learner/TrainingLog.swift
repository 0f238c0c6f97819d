import Foundation

/// A run's history in the Hugging Face Trainer's `trainer_state.json` layout (transformers 5.24's
/// `TrainerState`, snake_case keys): what a checkpoint carries for people and tools that read HF
/// Trainer / TRL checkpoints (plots of `log_history`, `TrainerState.load_from_json`). The learner's
/// own resume state is `selm_state.json` (`TrainerState`); nothing resumes from this file.
///
/// `log_history` holds one entry per optimizer step: `step`, `epoch` (when the run has epochs) and
/// the step's metrics under TRL's `DPOTrainer` names (`loss`, `grad_norm`, `learning_rate`,
/// `rewards/chosen`, `rewards/rejected`, `rewards/margins`, `rewards/accuracies`, `logps/chosen`,
/// `logps/rejected`, plus SELM's `logps/pi_response`, `logps/ref_response`); a non-finite value is
/// written as `null`. The history is carried across resumes (read back from the checkpoint's
/// `trainer_state.json`).
/// Thread: a value; the learner's thread owns the copy it appends to.
public struct TrainingLog: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public var step: Int
        public var epoch: Double?
        public var metrics: [String: Double]
        public init(step: Int, epoch: Double?, metrics: [String: Double]) {
            self.step = step; self.epoch = epoch; self.metrics = metrics
        }
    }

    public var entries: [Entry] = []
    /// Tokens the learner consumed (prompt + responses of every pair trained on).
    public var inputTokensSeen = 0
    /// The run's shape, as the HF Trainer states it: planned optimizer steps (0: no horizon, as
    /// `selm serve`), epochs (0 for `selm serve`), pairs per micro-batch, steps between saves.
    public var maxSteps = 0
    public var numTrainEpochs = 0
    public var trainBatchSize = 0
    public var saveSteps = 0
    /// The current fractional epoch (`selm train`); nil for `selm serve`, which has none.
    public var epoch: Double?

    public init(maxSteps: Int = 0, numTrainEpochs: Int = 0, trainBatchSize: Int = 0, saveSteps: Int = 0) {
        self.maxSteps = maxSteps; self.numTrainEpochs = numTrainEpochs
        self.trainBatchSize = trainBatchSize; self.saveSteps = saveSteps
    }

    /// Appends optimizer step `step`'s metrics (and `tokens` consumed).
    public mutating func record(step: Int, epoch: Double?, metrics: [String: Double], tokens: Int) {
        entries.append(Entry(step: step, epoch: epoch, metrics: metrics))
        inputTokensSeen += tokens
        self.epoch = epoch
    }

    /// Continues `prior` — the history of the checkpoint a run resumed from — up to its step `step`:
    /// its entries and token count come before the ones this run records; the run's shape stays.
    public mutating func `continue`(from prior: TrainingLog, upTo step: Int) {
        entries = prior.entries.filter { $0.step <= step } + entries
        inputTokensSeen += prior.inputTokensSeen
        if epoch == nil { epoch = prior.epoch }
    }

    /// Drops the entries beyond `step` (a resume from an older checkpoint than the history's end).
    public mutating func truncate(after step: Int) { entries.removeAll { $0.step > step } }

    /// The `trainer_state.json` object at optimizer step `globalStep`.
    public func huggingFaceObject(globalStep: Int) -> [String: Any] {
        func number(_ x: Double?) -> Any { x.map { $0.isFinite ? $0 as Any : NSNull() } ?? NSNull() }
        let history: [[String: Any]] = entries.map { e in
            var d: [String: Any] = e.metrics.mapValues { number($0) }
            d["step"] = e.step
            if let ep = e.epoch { d["epoch"] = ep }
            return d
        }
        return [
            "epoch": number(epoch), "global_step": globalStep, "max_steps": maxSteps,
            "logging_steps": 1, "eval_steps": 0, "save_steps": saveSteps,
            "train_batch_size": trainBatchSize, "num_train_epochs": numTrainEpochs,
            "num_input_tokens_seen": inputTokensSeen, "total_flos": 0, "log_history": history,
            "best_metric": NSNull(), "best_global_step": NSNull(), "best_model_checkpoint": NSNull(),
            "is_local_process_zero": true, "is_world_process_zero": true, "is_hyper_param_search": false,
            "trial_name": NSNull(), "trial_params": NSNull(), "stateful_callbacks": [String: Any](),
        ]
    }

    /// `trainer_state.json`'s bytes (pretty-printed, keys sorted, as the HF Trainer indents it).
    public func huggingFaceJSON(globalStep: Int) throws -> Data {
        try JSONSerialization.data(withJSONObject: huggingFaceObject(globalStep: globalStep), options: [.prettyPrinted, .sortedKeys])
    }

    /// The history a checkpoint's `trainer_state.json` holds (to continue it after a resume); nil
    /// when the file is missing or not in this layout (a checkpoint from before it was written).
    /// (Read with `JSONDecoder`: Foundation's `JSONSerialization` parses some doubles one unit off.)
    public static func load(fromCheckpoint directory: String) -> TrainingLog? {
        struct File: Decodable {
            var max_steps: Int?, num_train_epochs: Int?, train_batch_size: Int?, save_steps: Int?
            var num_input_tokens_seen: Int?, epoch: Double?
            var log_history: [[String: Double?]]
        }
        guard let data = FileManager.default.contents(atPath: directory + "/" + Checkpoint.huggingFaceStateFile),
              let o = try? JSONDecoder().decode(File.self, from: data) else { return nil }
        var log = TrainingLog(maxSteps: o.max_steps ?? 0, numTrainEpochs: o.num_train_epochs ?? 0,
                              trainBatchSize: o.train_batch_size ?? 0, saveSteps: o.save_steps ?? 0)
        log.inputTokensSeen = o.num_input_tokens_seen ?? 0
        log.epoch = o.epoch
        for h in o.log_history {
            guard let s = h["step"] ?? nil, let step = Int(exactly: s) else { continue }
            var m: [String: Double] = [:]
            for (k, v) in h where k != "step" && k != "epoch" { m[k] = v ?? .nan }
            log.entries.append(Entry(step: step, epoch: h["epoch"] ?? nil, metrics: m))
        }
        return log
    }
}
