import Foundation
import Model

/// Where training stands — everything beyond the weights and moments needed to resume exactly.
public struct TrainerState: Codable, Sendable, Equatable {
    /// Optimizer steps attempted (applied + skipped).
    public var step: Int
    public var optimizerSteps: Int
    public var skippedSteps: Int
    /// `selm train`: the epoch and the index of the next micro-batch within it.
    public var epoch: Int = 0
    public var nextMicroBatch: Int = 0
    /// `selm serve`: the preference-log position trained on — every record ≤ `walSequence`, plus the
    /// first `walRows` rows of the record after it.
    public var walSequence: UInt64 = 0
    public var walRows: Int = 0
    public var options: TrainingOptions
    public var schedule: LRSchedule
    /// How the reference policy stands: its kind, refresh generation, and the file holding its
    /// weights when they are neither the starting weights nor an external checkpoint.
    public var referenceKind: ReferencePolicy.Kind
    public var referenceGeneration: Int
    public var referenceFile: String?
    /// The model the run started from and the external reference, if any (for resuming).
    public var baseModel: String
    public var referenceModel: String?
    public var policyVersion: UInt64 = 0
    public var lastMetrics: [String: Double] = [:]

    public init(step: Int, optimizerSteps: Int, skippedSteps: Int, epoch: Int = 0, nextMicroBatch: Int = 0,
                walSequence: UInt64 = 0, walRows: Int = 0, options: TrainingOptions, schedule: LRSchedule,
                referenceKind: ReferencePolicy.Kind, referenceGeneration: Int, referenceFile: String? = nil,
                baseModel: String, referenceModel: String?, policyVersion: UInt64 = 0, lastMetrics: [String: Double] = [:]) {
        self.step = step; self.optimizerSteps = optimizerSteps; self.skippedSteps = skippedSteps
        self.epoch = epoch; self.nextMicroBatch = nextMicroBatch; self.walSequence = walSequence; self.walRows = walRows
        self.options = options; self.schedule = schedule; self.referenceKind = referenceKind
        self.referenceGeneration = referenceGeneration; self.referenceFile = referenceFile
        self.baseModel = baseModel; self.referenceModel = referenceModel; self.policyVersion = policyVersion
        self.lastMetrics = lastMetrics
    }
}

/// Checkpoint directories: `config.json` + `model.safetensors` (a Hugging Face directory
/// transformers loads), optionally `model.gguf` (F32, loads in this project and llama.cpp),
/// `optimizer.safetensors` (AdamW moments under `exp_avg.<name>` / `exp_avg_sq.<name>`),
/// `reference.safetensors` when the reference is a refreshed snapshot, and `trainer_state.json`.
/// The directory is assembled under a temporary name and renamed into place, each file fsynced, so
/// a crash never leaves a half-written checkpoint under the final name.
public enum Checkpoint {
    public struct Extras {
        public var bosTokenId: Int?
        public var eosTokenId: Int?
        /// GGUF metadata to carry over (the tokenizer's keys) and whether to write `model.gguf`.
        public var ggufMetadata: [(String, GGUFFile.Value)]
        public var writeGGUF: Bool
        /// Extra files for the HF directory (e.g. tokenizer.json).
        public var files: [String: Data]
        public init(bosTokenId: Int? = nil, eosTokenId: Int? = nil, ggufMetadata: [(String, GGUFFile.Value)] = [],
                    writeGGUF: Bool = true, files: [String: Data] = [:]) {
            self.bosTokenId = bosTokenId; self.eosTokenId = eosTokenId; self.ggufMetadata = ggufMetadata
            self.writeGGUF = writeGGUF; self.files = files
        }
    }

    public static let stateFile = "trainer_state.json"

    /// Writes a complete checkpoint of `learner` to `directory` (replacing an older one there).
    public static func save(_ learner: Learner, state: TrainerState, to directory: String, extras: Extras) throws {
        let fm = FileManager.default
        let tmp = directory + ".partial-\(getpid())"
        try? fm.removeItem(atPath: tmp)
        do {
            try fm.createDirectory(atPath: tmp, withIntermediateDirectories: true)
            try learner.policy.saveHuggingFace(directory: tmp, bosTokenId: extras.bosTokenId, eosTokenId: extras.eosTokenId,
                                               extraFiles: extras.files)
            if extras.writeGGUF {
                try learner.policy.saveGGUF(path: tmp + "/model.gguf", name: "selm checkpoint step \(state.step)",
                                            metadata: extras.ggufMetadata)
            }
            var moments: [(name: String, shape: [Int], data: UnsafePointer<Float>)] = []
            for t in learner.optimizer.m.namedTensors { moments.append(("exp_avg." + t.name, t.shape, t.data)) }
            for t in learner.optimizer.v.namedTensors { moments.append(("exp_avg_sq." + t.name, t.shape, t.data)) }
            try writeSafetensors(path: tmp + "/optimizer.safetensors", tensors: moments,
                                 metadata: ["step": String(learner.optimizer.step)])
            var st = state
            st.referenceGeneration = learner.reference.generation
            st.referenceKind = learner.reference.kind
            st.referenceFile = nil
            if learner.reference.generation > 0 {
                try writeSafetensors(path: tmp + "/reference.safetensors", tensors: learner.reference.model.weights.namedTensors)
                st.referenceFile = "reference.safetensors"
            }
            let enc = JSONEncoder()
            enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            enc.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
            try writeDurably(path: tmp + "/" + stateFile, data: try enc.encode(st))
            try DurableFileWriter.syncDirectory(of: tmp + "/x")
            if fm.fileExists(atPath: directory) {
                let old = directory + ".old-\(getpid())"
                try fm.moveItem(atPath: directory, toPath: old)
                try fm.moveItem(atPath: tmp, toPath: directory)
                try? fm.removeItem(atPath: old)
            } else {
                try fm.moveItem(atPath: tmp, toPath: directory)
            }
            try DurableFileWriter.syncDirectory(of: directory)
        } catch {
            try? fm.removeItem(atPath: tmp)
            throw error
        }
    }

    /// Reads `trainer_state.json`.
    public static func loadState(from directory: String) throws -> TrainerState {
        let path = directory + "/" + stateFile
        guard let data = FileManager.default.contents(atPath: path) else {
            throw LearnerError.badCheckpoint(path: directory, reason: "no \(stateFile): not a training checkpoint")
        }
        let dec = JSONDecoder()
        dec.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        do { return try dec.decode(TrainerState.self, from: data) } catch {
            throw LearnerError.badCheckpoint(path: path, reason: "unreadable: \(error)")
        }
    }

    /// Restores optimizer moments, counters and (when saved) the reference weights into `learner`,
    /// whose policy must already hold the checkpoint's weights.
    public static func restore(_ learner: Learner, from directory: String, state: TrainerState) throws {
        let opt = try SafetensorsFile(path: directory + "/optimizer.safetensors")
        for e in learner.optimizer.m.layout.entries {
            for (prefix, set) in [("exp_avg.", learner.optimizer.m), ("exp_avg_sq.", learner.optimizer.v)] {
                guard let info = opt.tensor(prefix + e.name) else {
                    throw LearnerError.badCheckpoint(path: opt.path, reason: "missing tensor '\(prefix + e.name)'")
                }
                guard info.shape == e.shape else {
                    throw LearnerError.badCheckpoint(path: opt.path, reason: "tensor '\(prefix + e.name)' has shape \(info.shape), expected \(e.shape)")
                }
                try opt.read(info, into: set.data + e.offset)
            }
        }
        learner.restore(optimizerSteps: state.optimizerSteps, skipped: state.skippedSteps)
        learner.schedule = state.schedule
        if let f = state.referenceFile {
            let ref = try SafetensorsFile(path: directory + "/" + f)
            let w = ParameterSet(config: learner.policy.config)
            for e in w.layout.entries {
                guard let info = ref.tensor(e.name), info.shape == e.shape else {
                    throw LearnerError.badCheckpoint(path: ref.path, reason: "missing or misshapen tensor '\(e.name)'")
                }
                try ref.read(info, into: w.data + e.offset)
            }
            learner.reference.restore(weights: w, generation: state.referenceGeneration)
        }
    }
}

extension ReferencePolicy {
    /// Sets the reference weights and generation from a checkpoint.
    public func restore(weights: ParameterSet, generation: Int) {
        refresh(from: weights)
        setGeneration(generation)
    }
}
