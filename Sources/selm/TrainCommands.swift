import ArgumentParser
import Engine
import Foundation
import Learner
import Logging
import Model
import ModelBundle

/// Loss and optimizer options shared by `train`, `loss` and `serve`.
struct LossOptions: ParsableArguments {
    @Option(help: "Loss: sigmoid (DPO/SELM), ipo or hinge.") var loss: String = "sigmoid"
    @Option(help: "β, the KL-regularisation strength (SELM recipe: 0.01).") var beta: Double = 0.01
    @Option(help: "α, SELM's optimism weight; 0 = plain DPO (SELM recipe: 0.001, Llama-3: 0.0001).") var alpha: Double = 0.001

    func validate() throws { _ = try config() }

    /// The loss; throws `ValidationError` for an unknown --loss (checked in `validate()` first).
    func config() throws -> LossConfig {
        guard let t = LossType(rawValue: loss) else { throw ValidationError("--loss: expected sigmoid, ipo or hinge, got '\(loss)'") }
        return LossConfig(type: t, beta: beta, alpha: alpha)
    }
}

struct OptimizerOptions: ParsableArguments {
    @Option(help: "Peak learning rate (SELM recipe: 5e-7 for 7-8B models).") var lr: Double = 5e-7
    @Option(help: "Share of the optimizer steps spent in linear warm-up (default: 0.1; selm serve: a share of --total-steps, default none).") var warmupRatio: Double?
    @Option(help: "After warm-up: cosine (to 0) or constant (default: cosine; selm serve: cosine needs --total-steps, constant without one).") var schedule: String?
    @Option(help: "Pairs per micro-batch.") var batchSize: Int = 4
    @Option(help: "Micro-batches per optimizer step.") var gradAccum: Int = 1
    @Option(help: "Global gradient-norm clip; 0 = off.") var maxGradNorm: Double = 1.0
    @Option(help: "AdamW decoupled weight decay (norm weights excluded).") var weightDecay: Double = 0
    @Option(help: "Refresh the reference to the current policy every N optimizer steps; 0 = frozen.") var refRefreshSteps: Int = 0
    @Option(help: "Seed of the data order of selm train (default: 42; not taken by selm serve, which trains in log order).") var seed: UInt64?

    /// The training options; throws `ValidationError` naming the bad flag. Commands call it from
    /// their `validate()`, so a bad value is reported (with the usage) before any model loads.
    func options(loss: LossConfig, epochs: Int) throws -> TrainingOptions {
        var o = TrainingOptions()
        o.loss = loss; o.learningRate = lr; o.warmupRatio = warmupRatio ?? 0.1
        guard let k = LRSchedule.Kind(rawValue: schedule ?? "cosine") else { throw ValidationError("--schedule: expected cosine or constant, got '\(schedule ?? "")'") }
        o.schedule = k; o.batchSize = batchSize; o.gradAccum = gradAccum; o.epochs = epochs
        o.maxGradNorm = maxGradNorm; o.weightDecay = weightDecay; o.refRefreshSteps = refRefreshSteps; o.seed = seed ?? 42
        do { try o.validate() } catch { throw ValidationError("\(error)") }
        return o
    }
}

func formatDuration(_ s: Double) -> String {
    guard s.isFinite else { return "?" }
    let t = Int(s.rounded())
    return t >= 3600 ? "\(t / 3600)h\(t % 3600 / 60)m" : t >= 60 ? "\(t / 60)m\(t % 60)s" : "\(t)s"
}

/// The pairs of `data` in training order for `epoch`: a seeded shuffle, the same on every run.
func epochOrder(count: Int, seed: UInt64, epoch: Int) -> [Int] {
    var idx = Array(0..<count)
    var rng = SplitMix64(seed: seed &+ UInt64(epoch) &* 0x9E37_79B9_7F4A_7C15)
    for i in stride(from: count - 1, to: 0, by: -1) {
        let j = Int(rng.next() % UInt64(i + 1))
        idx.swapAt(i, j)
    }
    return idx
}

/// `selm train`'s own lines (the step lines and checkpoint saves are `selm.learner`'s).
private let trainLog = Logger(label: "selm.train")

struct Train: ParsableCommand, LogLevelCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train a policy on preference pairs (JSONL) with the SELM loss.",
        discussion: """
        Rows are TRL's {"prompt","chosen","rejected","reference_response"?} (text: the chat template is applied to \
        the prompt, EOS appended to each response) or {"prompt_ids","chosen_ids","rejected_ids","reference_ids"?}. \
        Writes DIR/metrics.jsonl, DIR/checkpoint-<step>/ every --checkpoint-every steps and DIR/final/ at the end; each \
        checkpoint is a Hugging Face directory (+ model.gguf) with the optimizer state beside it. Progress goes to \
        stderr as log lines (--log-level): one per optimizer step with step/total, loss, margin, accuracy, tokens/s \
        and the ETA, and one when each checkpoint save starts and ends (size, seconds).
        """)
    @OptionGroup var model: ModelOptions
    @Option(help: "Preference rows (JSONL).") var data: String
    @Option(help: "Output directory.") var out: String
    @Option(help: "Reference model (default: a frozen copy of --model).") var ref: String?
    @OptionGroup var lossOptions: LossOptions
    @OptionGroup var opt: OptimizerOptions
    @OptionGroup var learnerPrecision: LearnerPrecisionOptions
    @Option(help: "Passes over the data.") var epochs: Int = 1
    @Option(help: "Save a checkpoint every N optimizer steps (0 = only at the end).") var checkpointEvery: Int = 0
    @Option(name: .customLong("save-every"), help: .hidden) var saveEvery: Int?  // deprecated spelling of --checkpoint-every
    @OptionGroup var logOptions: LogOptions

    /// --checkpoint-every, or its deprecated spelling --save-every.
    var checkpointInterval: Int {
        ((try? resolveSpelling(new: checkpointEvery == 0 ? nil : checkpointEvery, old: saveEvery,
                               newName: "--checkpoint-every", oldName: "--save-every")) ?? nil) ?? 0
    }
    @Option(help: "Resume from a checkpoint directory written by this command.") var resume: String?
    @Flag(help: "Do not write model.gguf into checkpoints.") var noGguf = false
    @Option(help: checkpointDTypeHelp) var checkpointDtype: String = "f32"
    @Option(help: "Keep the newest N checkpoint-<step> directories, removing older ones after each save (final is never removed); 0 = keep all.")
    var keepCheckpoints: Int = 0

    func validate() throws {
        _ = try opt.options(loss: lossOptions.config(), epochs: epochs)
        _ = try resolveSpelling(new: checkpointEvery == 0 ? nil : checkpointEvery, old: saveEvery,
                                newName: "--checkpoint-every", oldName: "--save-every")
        if checkpointInterval < 0 { throw ValidationError("--checkpoint-every: must be ≥ 0") }
        _ = try parseCheckpointDType(checkpointDtype)
        if keepCheckpoints < 0 { throw ValidationError("--keep-checkpoints: must be ≥ 0") }
    }

    func run() throws {
        let options = try opt.options(loss: lossOptions.config(), epochs: epochs)
        let bundle = try model.load()
        let c = bundle.model.config
        let pairs: [PreferencePair]
        do { pairs = try PreferenceData.load(path: data, encoder: try? bundle.textEncoder(), vocabSize: c.vocabSize, contextLength: c.contextLength) }
        catch { throw CLIError.failed("cannot read --data", error) }
        let microPerEpoch = (pairs.count + options.batchSize - 1) / options.batchSize
        let stepsPerEpoch = (microPerEpoch + options.gradAccum - 1) / options.gradAccum
        let total = stepsPerEpoch * epochs
        let refModel: LlamaModel? = try ref.map { p in
            do { return try LlamaModel.load(path: p) } catch { throw CLIError.failed("cannot load --ref", error) }
        }
        var schedule = LRSchedule(kind: options.schedule, baseLR: options.learningRate, warmupRatio: options.warmupRatio, totalSteps: total)
        var epoch = 0, nextMicro = 0
        var log = TrainingLog(maxSteps: total, numTrainEpochs: epochs, trainBatchSize: options.batchSize, saveSteps: checkpointInterval)
        let learner: Trainer
        if let r = resume {
            let state: TrainerState
            do {
                (learner, state) = try Checkpoint.resume(from: r, policy: bundle.model, reference: refModel, options: options,
                                                         schedule: schedule)
            } catch { throw CLIError.failed("cannot load --resume", error) }
            guard state.options == options else {
                throw CLIError.file(path: r, reason: "the --resume checkpoint was trained with other options (\(state.options)); pass the same options to resume exactly")
            }
            schedule = state.schedule
            epoch = state.epoch; nextMicro = state.nextMicroBatch
            if let prior = TrainingLog.load(fromCheckpoint: r) { log.continue(from: prior, upTo: state.step) }
            trainLog.info("resuming from \(r) at step \(state.step) (epoch \(epoch + 1), micro-batch \(nextMicro))")
        } else {
            learner = try Trainer(policy: bundle.model, reference: refModel, options: options, schedule: schedule)
        }
        learner.precision = learnerPrecision.precision
        do { try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true) } catch {
            throw CLIError.failed("cannot create --out \(out)", error)
        }
        let metricsPath = out + "/metrics.jsonl"
        if !FileManager.default.fileExists(atPath: metricsPath) { _ = FileManager.default.createFile(atPath: metricsPath, contents: nil) }
        let metricsFile: FileHandle
        do { metricsFile = try FileHandle(forWritingTo: URL(fileURLWithPath: metricsPath)) } catch {
            throw CLIError.failed("cannot write \(metricsPath)", error)
        }
        metricsFile.seekToEndOfFile()
        trainLog.info("training \(pairs.count) pairs, \(total) optimizer steps (batch \(options.batchSize) × accum \(options.gradAccum), \(epochs) epoch(s)), loss \(options.loss.type.rawValue) β \(options.loss.beta) α \(options.loss.alpha), lr \(options.learningRate), products \(learner.precision)")

        func state(epoch: Int, next: Int, metrics: [String: Double]) -> TrainerState {
            TrainerState(step: learner.step, optimizerSteps: learner.optimizer.step, skippedSteps: learner.skippedSteps,
                         epoch: epoch, nextMicroBatch: next, options: options, schedule: schedule,
                         referenceKind: learner.reference.kind, referenceGeneration: learner.reference.generation,
                         referenceFile: nil, baseModel: resume.flatMap { try? Checkpoint.loadState(from: $0).baseModel } ?? bundle.path,
                         referenceModel: ref, lastMetrics: metrics)
        }
        let t0 = Date()
        var tokensDone = 0
        var last: [String: Double] = [:]
        let extras = bundle.checkpointExtras(writeGGUF: !noGguf, dtype: try parseCheckpointDType(checkpointDtype))   // the same for every checkpoint of the run
        while epoch < epochs {
            let order = epochOrder(count: pairs.count, seed: options.seed, epoch: epoch)
            let micro = stride(from: 0, to: order.count, by: options.batchSize).map { Array(order[$0 ..< min($0 + options.batchSize, order.count)]) }
            while nextMicro < micro.count {
                let group = micro[nextMicro ..< min(nextMicro + options.gradAccum, micro.count)]
                let report = try learner.step(group.map { idx in (idx.map { pairs[$0] }, idx.map { UInt64($0) }) })
                nextMicro += group.count
                tokensDone += report.tokens
                last = report.metrics
                log.record(step: report.step, epoch: Double(epoch) + Double(nextMicro) / Double(micro.count), metrics: report.metrics, tokens: report.tokens)
                let elapsed = Date().timeIntervalSince(t0)
                let rate = Double(tokensDone) / elapsed
                let remaining = Double(total - report.step) * report.seconds
                var line = report.metrics
                line["step"] = Double(report.step)
                line["epoch"] = Double(epoch) + Double(nextMicro) / Double(micro.count)
                line["tokens_per_second"] = Double(report.tokens) / report.seconds
                metricsFile.write((jsonText(line.mapValues { $0.isFinite ? $0 as Any : NSNull() as Any }) + "\n").data(using: .utf8)!)
                logStep(report, version: nil, total: total, extra: [
                    "percent": .string(String(format: "%.1f", 100 * Double(report.step) / Double(max(total, 1)))),
                    "eta": .string(formatDuration(remaining)), "run_tokens_per_second": .string(String(format: "%.0f", rate)),
                    "epoch": .string(String(format: "%.2f", line["epoch"] ?? 0)),
                ])
                if checkpointInterval > 0 && report.step % checkpointInterval == 0 && report.step < total {
                    let dir = out + "/checkpoint-\(report.step)"
                    try loggedCheckpointSave(to: dir, step: report.step) {
                        try Checkpoint.save(learner, state: state(epoch: epoch, next: nextMicro, metrics: last), to: dir, extras: extras, log: log)
                    }
                    for (n, bytes) in Checkpoint.prune(in: out, keep: keepCheckpoints, protecting: nil, series: "checkpoint-") {
                        trainLog.info("removed \(out)/\(n) (\(byteText(bytes))), beyond --keep-checkpoints \(keepCheckpoints)")
                    }
                }
            }
            epoch += 1; nextMicro = 0
        }
        let dir = out + "/final"
        try loggedCheckpointSave(to: dir, step: learner.step) {
            try Checkpoint.save(learner, state: state(epoch: epoch, next: 0, metrics: last), to: dir, extras: extras, log: log)
        }
        try metricsFile.synchronize()
        trainLog.info("done after \(formatDuration(Date().timeIntervalSince(t0)))", metadata: ["final": "\(dir)"])
    }
}

struct Loss: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Evaluate the loss of a whole preference file as one batch; optionally write its gradient.",
        discussion: "Prints one JSON object with `loss` and the TRL / SELM metrics. --grads-out writes dLoss/dθ for every parameter under Hugging Face names (lm_head.weight only when untied).")
    @OptionGroup var model: ModelOptions
    @Option(help: "Reference model (default: the model itself).") var ref: String?
    @Option(help: "Preference rows (JSONL).") var data: String
    @OptionGroup var lossOptions: LossOptions
    @Option(help: "Write the gradient of the mean loss to this .safetensors file.") var gradsOut: String?

    func validate() throws { _ = try trainingOptions() }

    /// The options of a loss evaluation; `ValidationError` for a bad --loss, --beta or --alpha.
    func trainingOptions() throws -> TrainingOptions {
        var options = TrainingOptions()
        options.loss = try lossOptions.config()
        do { try options.validate() } catch { throw ValidationError("\(error)") }
        return options
    }

    func run() throws {
        let options = try trainingOptions()
        let bundle = try model.load()
        let c = bundle.model.config
        let pairs: [PreferencePair]
        do { pairs = try PreferenceData.load(path: data, encoder: try? bundle.textEncoder(), vocabSize: c.vocabSize, contextLength: c.contextLength) }
        catch { throw CLIError.failed("cannot read --data", error) }
        let refModel: LlamaModel? = try ref.map { p in
            do { return try LlamaModel.load(path: p) } catch { throw CLIError.failed("cannot load --ref", error) }
        }
        let learner = try Trainer(policy: bundle.model, reference: refModel, options: options,
                                  schedule: LRSchedule(kind: .constant, baseLR: 0, warmupSteps: 0, totalSteps: 1))
        learner.grads.zero()
        let (r, _) = try learner.microBatch(pairs, keys: pairs.indices.map { UInt64($0) }, accumulateScale: gradsOut == nil ? 0 : 1)
        var out = r.metrics.mapValues { $0.isFinite ? $0 as Any : NSNull() as Any }
        out["pairs"] = pairs.count
        if let g = gradsOut {
            try writeSafetensors(path: g, tensors: learner.grads.namedTensors, metadata: ["loss": String(r.loss)])
            out["grad_norm"] = learner.grads.globalNorm()
        }
        print(jsonText(out, pretty: true))
    }
}
