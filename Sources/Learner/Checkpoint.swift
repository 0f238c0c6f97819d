import DurableFile
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
/// transformers loads; F32, or BF16 with `Extras.dtype`), optionally `model.gguf` (the same dtype,
/// loads in this project and llama.cpp), `optimizer.safetensors` (F32 AdamW moments under
/// `exp_avg.<name>` / `exp_avg_sq.<name>`; in a BF16 checkpoint also the I16
/// `master_residual.<name>` that turn the BF16 weights back into the f32 master weights,
/// `BF16Split`), `reference.safetensors` (F32) when the reference is a refreshed snapshot,
/// `selm_state.json` (the resume state, `TrainerState`) and `trainer_state.json` (the Hugging Face
/// Trainer's layout, `TrainingLog`).
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
        /// The dtype of `model.safetensors` and `model.gguf` (`--checkpoint-dtype`); the optimizer
        /// state stays F32 and resuming is exact either way.
        public var dtype: CheckpointDType
        public init(bosTokenId: Int? = nil, eosTokenId: Int? = nil, ggufMetadata: [(String, GGUFFile.Value)] = [],
                    writeGGUF: Bool = true, files: [String: Data] = [:], dtype: CheckpointDType = .f32) {
            self.bosTokenId = bosTokenId; self.eosTokenId = eosTokenId; self.ggufMetadata = ggufMetadata
            self.writeGGUF = writeGGUF; self.files = files; self.dtype = dtype
        }
    }

    /// The resume state (`TrainerState`). Checkpoints written before it existed hold that state in
    /// `trainer_state.json` (`legacyStateFile`), which `loadState` still reads.
    public static let stateFile = "selm_state.json"
    /// The Hugging Face Trainer's state file (`TrainingLog`), written with every checkpoint.
    public static let huggingFaceStateFile = "trainer_state.json"
    /// Where checkpoints before `selm_state.json` kept the resume state.
    public static let legacyStateFile = "trainer_state.json"
    /// The tensor-name prefix of the residuals in a BF16 checkpoint's `optimizer.safetensors`.
    public static let residualPrefix = "master_residual."
    /// Suffixes of the temporary names a save uses next to its directory (`NAME.partial-PID` while
    /// writing, `NAME.old-PID` for the checkpoint it replaces); never valid checkpoint names.
    public static let temporarySuffixes = [".partial-", ".old-"]

    /// Writes a complete checkpoint of `learner` to `directory`, replacing an older checkpoint there.
    /// `log` becomes `trainer_state.json` (its `global_step` is `state.step`).
    /// - Throws: `CheckpointError.notACheckpoint` when `directory` exists and is not a checkpoint
    ///   directory (`isCheckpoint`), or is a symbolic link: a save never deletes anything else.
    public static func save(_ learner: Trainer, state: TrainerState, to directory: String, extras: Extras,
                            log: TrainingLog = TrainingLog()) throws {
        let fm = FileManager.default
        if pathExists(directory) && !isCheckpoint(directory) { throw CheckpointError.notACheckpoint(path: directory) }
        // A checkpoint is a boundary of the reference cache, so resuming from it is exact (clearCache).
        learner.reference.clearCache()
        let tmp = directory + ".partial-\(getpid())"
        try? fm.removeItem(atPath: tmp)
        do {
            try fm.createDirectory(atPath: tmp, withIntermediateDirectories: true)
            try learner.policy.saveHuggingFace(directory: tmp, bosTokenId: extras.bosTokenId, eosTokenId: extras.eosTokenId,
                                               extraFiles: extras.files, dtype: extras.dtype)
            if extras.writeGGUF {
                try learner.policy.saveGGUF(path: tmp + "/model.gguf", name: "selm checkpoint step \(state.step)",
                                            metadata: extras.ggufMetadata, dtype: extras.dtype)
            }
            var moments: [(name: String, shape: [Int], data: UnsafePointer<Float>, encoding: TensorEncoding)] = []
            for t in learner.optimizer.m.namedTensors { moments.append(("exp_avg." + t.name, t.shape, t.data, .f32)) }
            for t in learner.optimizer.v.namedTensors { moments.append(("exp_avg_sq." + t.name, t.shape, t.data, .f32)) }
            if extras.dtype == .bf16 {
                for t in learner.policy.weights.namedTensors { moments.append((residualPrefix + t.name, t.shape, t.data, .bf16Residual)) }
            }
            try writeSafetensors(path: tmp + "/optimizer.safetensors", encoded: moments,
                                 metadata: ["step": String(learner.optimizer.step), "weights": extras.dtype.rawValue])
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
            try writeDurably(path: tmp + "/" + huggingFaceStateFile, data: try log.huggingFaceJSON(globalStep: state.step))
            try syncDirectory(of: tmp + "/x")
            if pathExists(directory) {
                // A crash between the two renames leaves NAME.old-PID and no NAME: the next start
                // renames it back (`recoverInterruptedSaves`).
                let old = directory + ".old-\(getpid())"
                try? fm.removeItem(atPath: old)
                try fm.moveItem(atPath: directory, toPath: old)
                try fm.moveItem(atPath: tmp, toPath: directory)
                try? fm.removeItem(atPath: old)
            } else {
                try fm.moveItem(atPath: tmp, toPath: directory)
            }
            try syncDirectory(of: directory)
        } catch {
            try? fm.removeItem(atPath: tmp)
            throw error
        }
    }

    /// Reads `selm_state.json` (or, in a checkpoint written before it, `trainer_state.json`).
    public static func loadState(from directory: String) throws -> TrainerState {
        var path = directory + "/" + stateFile
        if !pathExists(path) && pathExists(directory + "/" + legacyStateFile) { path = directory + "/" + legacyStateFile }
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
    public static func restore(_ learner: Trainer, from directory: String, state: TrainerState) throws {
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

/// Why a checkpoint was not written. Nothing on disk changed when one of these is thrown.
public enum CheckpointError: Error, CustomStringConvertible, Equatable {
    /// `path` exists and is not a checkpoint directory (no `trainer_state.json`, or a link).
    case notACheckpoint(path: String)
    /// The filesystem holding `directory` has `available` bytes free; the checkpoint needs ≈ `needed`.
    case insufficientSpace(directory: String, needed: Int64, available: Int64)
    /// The weights hold a NaN or ±Inf: a checkpoint of them would be refused when resumed.
    case nonFinite(NonFiniteValue)

    public var description: String {
        switch self {
        case let .notACheckpoint(path): return "\(path) exists and is not a checkpoint (left alone)"
        case let .insufficientSpace(directory, needed, available):
            return "needs ~\(byteText(needed)), \(byteText(available)) free in \(directory)"
        case let .nonFinite(v): return "the weights hold a non-finite value (\(v))"
        }
    }
}

/// "2.13 GB", "1.6 MB", "512 B" (decimal units, as `df -H`).
public func byteText(_ n: Int64) -> String {
    if n >= 1_000_000_000 { return String(format: "%.2f GB", Double(n) / 1e9) }
    if n >= 1_000_000 { return String(format: "%.1f MB", Double(n) / 1e6) }
    if n >= 1_000 { return String(format: "%.1f kB", Double(n) / 1e3) }
    return "\(n) B"
}

/// Disk bookkeeping of a checkpoint folder (`DATA/checkpoints` in `selm serve`): what a save will
/// need, leftovers of interrupted saves, pruning the automatic `step-N` series. All of it plain file
/// system calls on the calling thread (the learner's, or the server's at start).
extension Checkpoint {
    /// Whether `directory` is a checkpoint this project wrote: a real directory (not a link)
    /// holding `selm_state.json`, or `trainer_state.json` (a checkpoint written before
    /// `selm_state.json` existed) as a regular file.
    public static func isCheckpoint(_ directory: String) -> Bool {
        var st = stat()
        guard lstat(directory, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else { return false }
        for f in [stateFile, legacyStateFile] where lstat(directory + "/" + f, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG {
            return true
        }
        return false
    }

    /// The name of the automatic checkpoint of `step` ("step-120").
    public static func automaticName(step: Int) -> String { "step-\(step)" }

    /// The step of an automatic checkpoint name ("step-120" → 120; with `series` "checkpoint-",
    /// `selm train`'s "checkpoint-120"), nil for any other name.
    public static func automaticStep(of name: String, series: String = "step-") -> Int? {
        let n = series.count
        guard name.hasPrefix(series), name.count > n, name.dropFirst(n).allSatisfy(\.isASCIIDigit) else { return nil }
        return Int(name.dropFirst(n))
    }

    /// What a checkpoint of `learner` will take on disk, bytes: the policy (model.safetensors, 4 or
    /// 2 bytes a weight), the two F32 AdamW moments (+ the 2-byte master residuals of a BF16
    /// checkpoint), the F32 reference once it was refreshed, model.gguf when written (at most 4 or 2
    /// bytes a weight), the extra files and their GGUF copy, plus 1 MiB of headers and the state
    /// files (`trainer_state.json` grows by ~0.6 kB a step); at least `previous`'s size (the last
    /// checkpoint, when there is one).
    public static func estimatedBytes(of learner: Trainer, extras: Extras, previous: String? = nil) -> Int64 {
        let count = Int64(learner.policy.weights.count)
        let tensor = count * 4
        let model = count * Int64(extras.dtype.bytesPerElement)
        var n = model + tensor * 2
        if extras.dtype == .bf16 { n += count * 2 }
        if learner.reference.generation > 0 { n += tensor }
        let files = Int64(extras.files.values.reduce(0) { $0 + $1.count })
        n += files
        if extras.writeGGUF { n += model + files }
        n += (1 << 20) + Int64(learner.step) * 1024
        if let previous { n = max(n, diskBytes(at: previous)) }
        return n
    }

    /// Throws `insufficientSpace` when the filesystem of `root` has less free space than a checkpoint
    /// of `learner` needs (`estimatedBytes`, at least the size of `previous`).
    public static func checkSpace(for learner: Trainer, extras: Extras, root: String, previous: String?) throws {
        let needed = estimatedBytes(of: learner, extras: extras, previous: previous)
        if let free = freeBytes(at: root), free < needed {
            throw CheckpointError.insufficientSpace(directory: root, needed: needed, available: free)
        }
    }

    /// Cleans up after saves a crash interrupted (call at start, while no save can run): a
    /// `NAME.old-PID` whose `NAME` is missing (the crash fell between the two renames of `save`) is
    /// renamed back to `NAME`; every other `*.partial-PID`, `*.old-PID` and `*.tmp-PID` (the
    /// `latest` pointer's temporary file) in `root` is removed. Returns one line per action for the log
    /// and the bytes freed.
    public static func recoverInterruptedSaves(in root: String) -> (actions: [String], freedBytes: Int64) {
        let fm = FileManager.default
        guard let names = try? fm.contentsOfDirectory(atPath: root) else { return ([], 0) }
        var actions: [String] = []
        var freed: Int64 = 0
        for name in names.sorted() {
            guard let (base, marker) = temporaryBase(of: name) else { continue }
            let path = root + "/" + name
            if marker == ".old-" && !pathExists(root + "/" + base) && isCheckpoint(path) {
                do {
                    try fm.moveItem(atPath: path, toPath: root + "/" + base)
                    actions.append("restored \(base) from \(name) (a save replacing it was interrupted)")
                    continue
                } catch {
                    actions.append("could not restore \(base) from \(name): \(error.localizedDescription)")
                    continue
                }
            }
            let bytes = diskBytes(at: path)
            do {
                try fm.removeItem(atPath: path)
                freed += bytes
                actions.append("removed \(name) (\(byteText(bytes))), left by an interrupted save")
            } catch {
                actions.append("could not remove \(name): \(error.localizedDescription)")
            }
        }
        if !actions.isEmpty { try? syncDirectory(of: root + "/x") }
        return (actions, freed)
    }

    /// `(NAME, marker)` when `name` is `NAME.partial-PID`, `NAME.old-PID` or `NAME.tmp-PID`.
    static func temporaryBase(of name: String) -> (String, String)? {
        for marker in temporarySuffixes + [".tmp-"] {
            guard let r = name.range(of: marker, options: .backwards) else { continue }
            let pid = name[r.upperBound...]
            if !pid.isEmpty && pid.allSatisfy(\.isASCIIDigit) && r.lowerBound > name.startIndex {
                return (String(name[..<r.lowerBound]), marker)
            }
        }
        return nil
    }

    /// Removes the oldest automatic checkpoints (`step-N` directories holding a checkpoint; `series`
    /// names another prefix, `selm train`'s "checkpoint-") in `root` beyond the newest `keep`, never
    /// `protecting` (the one `latest` names) — each a whole directory, whatever files it holds. Other
    /// names are never touched. `keep` 0 keeps everything. Returns the names removed and their sizes.
    public static func prune(in root: String, keep: Int, protecting: String?, series prefix: String = "step-") -> [(name: String, bytes: Int64)] {
        guard keep > 0, let names = try? FileManager.default.contentsOfDirectory(atPath: root) else { return [] }
        let series = names.compactMap { n in automaticStep(of: n, series: prefix).map { (name: n, step: $0) } }
            .filter { isCheckpoint(root + "/" + $0.name) }
            .sorted { $0.step > $1.step }
        var removed: [(String, Int64)] = []
        for c in series.dropFirst(keep) where c.name != protecting {
            let path = root + "/" + c.name
            let bytes = diskBytes(at: path)
            if (try? FileManager.default.removeItem(atPath: path)) != nil { removed.append((c.name, bytes)) }
        }
        if !removed.isEmpty { try? syncDirectory(of: root + "/x") }
        return removed
    }
}

/// Whether anything (a file, a directory, a dangling link) is at `path`.
func pathExists(_ path: String) -> Bool {
    var st = stat()
    return lstat(path, &st) == 0
}

extension Character {
    fileprivate var isASCIIDigit: Bool { isASCII && isNumber }
}
