import ArgumentParser
import Foundation
import Kernels
import ModelBundle

/// Options every model command takes.
struct ModelOptions: ParsableArguments {
    @Option(name: .long, help: "A .gguf file or a Hugging Face model directory.")
    var model: String

    @Option(name: .long, help: "Chat template to use instead of the model's own: chatml, zephyr or llama3.")
    var template: String?

    func load() throws -> ModelBundle {
        do { return try ModelBundle(path: model, templateName: template) } catch {
            throw ValidationError("\(error)")
        }
    }
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

/// JSON text of a Swift value tree ([String: Any], arrays, numbers, strings).
func jsonText(_ obj: Any, pretty: Bool = false) -> String {
    let data = try! JSONSerialization.data(withJSONObject: obj, options: pretty ? [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes])
    return String(decoding: data, as: UTF8.self)
}
