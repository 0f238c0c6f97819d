import ArgumentParser
import Foundation
import Kernels
import Model
import ModelBundle
import Tokenizer

/// Options every model command takes.
struct ModelOptions: ParsableArguments {
    @Option(name: .long, help: "A .gguf file or a Hugging Face model directory.")
    var model: String

    @Option(name: .long, help: "Chat template: model (the model's own Jinja template; the default when it carries one) or a built-in chatml, zephyr or llama3.")
    var template: String?

    func validate() throws {
        if let template, template.lowercased() != "model" {
            do { _ = try ChatTemplate(name: template) } catch { throw ValidationError("--template: \(error)") }
        }
    }

    /// Loads the model. A missing or corrupt file is a runtime failure (`CLIError`), not a usage error.
    func load() throws -> ModelBundle {
        do { return try ModelBundle(path: model, templateName: template) } catch {
            throw CLIError.failed("cannot load --model", error)
        }
    }
}

/// `--engine-precision`: the precision `selm serve`'s engine computes in, and the same option of
/// the offline tools (`selm generate`, `selm logits`) so they reproduce exactly what the server
/// computes. Same default everywhere.
struct PrecisionOptions: ParsableArguments {
    @Option(name: .long, help: "Precision of the linear layers' products: f32 (the learner's own weights and forward, bit for bit), bf16, q8 (8-bit blocks, Q8_0-like) or q4 (4-bit blocks, Q4_1-like: fastest batch-1 decoding, largest deviation). Embeddings and norms stay f32. README \"Precision contract\".")
    var enginePrecision: String = EnginePrecision.servingDefault.rawValue

    func validate() throws {
        if EnginePrecision(rawValue: enginePrecision) == nil { throw ValidationError("--engine-precision: expected f32, bf16, q8 or q4") }
    }

    var precision: EnginePrecision { EnginePrecision(rawValue: enginePrecision) ?? EnginePrecision.servingDefault }

    /// `model` in this precision: itself for f32, else a packed copy (the f32 one stays with the caller).
    func inferenceModel(_ model: LlamaModel) throws -> LlamaModel {
        guard precision != .f32 else { return model }
        do { return try LlamaModel.inference(from: model.weights, precision: precision) } catch {
            throw CLIError.failed("cannot convert the model to --engine-precision \(precision)", error)
        }
    }
}

/// `--precision`: the number format of the learner's large products (forward, input and weight
/// gradients of q/k/v/o, gate/up/down and the output head) in `selm train` and `selm serve`'s
/// online learner. Master weights, gradients and AdamW state are f32 either way.
struct LearnerPrecisionOptions: ParsableArguments {
    @Option(name: .customLong("precision"), help: "Learner products: bf16 (bf16 operands, f32 accumulation; weights, gradients, optimizer state, norms, softmax and losses f32) or f32 (OpenBLAS sgemm). README \"Learner precision\".")
    var learnerPrecision: String = MatmulPrecision.learnerDefault.rawValue

    func validate() throws {
        if MatmulPrecision(rawValue: learnerPrecision) == nil { throw ValidationError("--precision: expected bf16 or f32, got '\(learnerPrecision)'") }
    }

    var precision: MatmulPrecision { MatmulPrecision(rawValue: learnerPrecision) ?? .learnerDefault }
}

/// A runtime failure of a `selm` command: something the command tried failed (a file is missing or
/// corrupt, line N of a data file is bad, the server is unreachable or refused a request). `main`
/// prints it as one line, `Error: <what failed>: <file/line/field and why>`, and exits with status 1.
///
/// Usage errors — a bad flag or flag value — are `ValidationError`s instead, thrown from the
/// commands' `validate()` before anything loads; only they print the usage text (exit status 64).
enum CLIError: Error, CustomStringConvertible {
    /// A file could not be read or used: its path and why.
    case file(path: String, reason: String)
    /// Line `line` (1-based) of the data file `path` is bad: why, naming the field.
    case line(path: String, line: Int, reason: String)
    /// A flag's value does not fit what was loaded (a token id outside the model's vocabulary).
    case argument(flag: String, reason: String)
    /// A step (`what`: "cannot load --model", "generation failed") failed with `underlying`.
    case failed(String, any Error)

    var description: String {
        switch self {
        case let .file(path, reason): "\(path): \(reason)"
        case let .line(path, line, reason): "\(path):\(line): \(reason)"
        case let .argument(flag, reason): "\(flag): \(reason)"
        case let .failed(what, underlying): "\(what): \(oneLine(underlying))"
        }
    }
}

/// An error as one line of text: its description (the localized one for Foundation errors), with
/// line breaks folded into "; ".
func oneLine(_ error: any Error) -> String {
    let text: String
    if let e = error as? LocalizedError, let d = e.errorDescription {
        text = d
    } else if type(of: error) is NSError.Type || error is CustomNSError {
        text = (error as NSError).localizedDescription
    } else {
        text = String(describing: error)
    }
    return text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
        .filter { !$0.isEmpty }.joined(separator: "; ")
}

/// Prints to stderr.
func note(_ s: String) {
    FileHandle.standardError.write((s + "\n").data(using: .utf8)!)
}

func blasDescription() -> String {
    var s = "\(String(cString: kernels_blas_core())), \(kernels_blas_threads()) threads"
    if let chosen = ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] { s += " (OPENBLAS_CORETYPE=\(chosen))" }
    return s
}

/// Parses "1,2,3" (spaces allowed) into token ids.
func parseTokenList(_ s: String, field: String) throws -> [Int32] {
    try s.split(separator: ",").map { part in
        let t = part.trimmingCharacters(in: .whitespaces)
        guard let v = Int32(t) else { throw ValidationError("\(field): '\(t)' is not a token id") }
        return v
    }
}

/// JSON text of a Swift value tree ([String: Any], arrays, numbers, strings). JSON has no NaN or
/// infinity: such a number (a learner metric with nothing to average, like `logps/pi_response`
/// when no row had a reference response) is written as `null`.
func jsonText(_ obj: Any, pretty: Bool = false) -> String {
    let data = try! JSONSerialization.data(withJSONObject: jsonSafe(obj), options: pretty ? [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes])
    return String(decoding: data, as: UTF8.self)
}

/// `v` with every non-finite floating-point number replaced by `NSNull`.
private func jsonSafe(_ v: Any) -> Any {
    switch v {
    case is Int, is Int32, is Int64, is UInt32, is UInt64, is Bool, is String: return v
    case let d as Double: return d.isFinite ? d : NSNull()
    case let f as Float: return f.isFinite ? f : NSNull()
    case let a as [Any]: return a.map(jsonSafe)
    case let m as [String: Any]: return m.mapValues(jsonSafe)
    default: return v
    }
}
