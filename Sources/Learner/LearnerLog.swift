import DurableFile
import Foundation
import Logging

/// The learner's logger (label `selm.learner`): the step line, checkpoint saves, skipped steps and
/// publications. Its format and level are the process's (`selm --log-level`, `SelmLogHandler`).
public let learnerLogger = Logger(label: "selm.learner")

/// The one line per optimizer step, the same for `selm serve`'s online learner and `selm train`:
/// message `step N` (`step N/TOTAL` with `total`), metadata `step`, `loss`, `margin` (rewards/margins), `accuracy`
/// (rewards/accuracies), `lr`, `grad_norm`, `tokens_per_second` (this step's policy tokens over its
/// time), `version` (the weight version the step was published as; `none` when it was not
/// published; left out with `total`, as `selm train` has no versions) and `applied=false` for a step a non-finite loss or gradient made a no-op. Extra
/// entries (`total`, `eta`) are added by the caller.
public func logStep(_ report: StepReport, version: UInt64?, total: Int? = nil, extra: Logger.Metadata = [:]) {
    func num(_ key: String, _ format: String) -> Logger.Metadata.Value {
        guard let v = report.metrics[key], v.isFinite else { return "nan" }
        return .string(String(format: format, v))
    }
    var m: Logger.Metadata = [
        "step": "\(report.step)",
        "loss": num("loss", "%.4f"),
        "margin": num("rewards/margins", "%.4f"),
        "accuracy": num("rewards/accuracies", "%.3f"),
        "lr": num("learning_rate", "%.3e"),
        "grad_norm": num("grad_norm", "%.3f"),
        "tokens_per_second": .string(report.seconds > 0 ? String(format: "%.0f", Double(report.tokens) / report.seconds) : "0"),
    ]
    if total == nil { m["version"] = .string(version.map { "\($0)" } ?? "none") }
    if !report.applied { m["applied"] = "false" }
    m.merge(extra) { _, new in new }
    learnerLogger.info("step \(report.step)\(total.map { "/\($0)" } ?? "")", metadata: m)
}

/// Saves a checkpoint through `save` with a line before (`checkpoint save started`, `path`) and
/// after (`checkpoint saved`, `path`, `bytes` on disk, `seconds`); a failure logs
/// `checkpoint save failed` with the error (at error level) and rethrows.
public func loggedCheckpointSave(to directory: String, step: Int, _ save: () throws -> Void) throws {
    learnerLogger.info("checkpoint save started", metadata: ["path": "\(directory)", "step": "\(step)"])
    let t0 = Date()
    do { try save() } catch {
        learnerLogger.error("checkpoint save failed", metadata: ["path": "\(directory)", "step": "\(step)", "error": "\(error)"])
        throw error
    }
    let seconds = Date().timeIntervalSince(t0)
    learnerLogger.info("checkpoint saved", metadata: [
        "path": "\(directory)", "step": "\(step)", "bytes": "\(diskBytes(at: directory))",
"seconds": .string(String(format: "%.3f", seconds)),
    ])
}
