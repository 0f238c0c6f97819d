import Foundation
import Model
import ModelBundle
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Checkpoints whose weights differ from the served ones (for RefreshWeights tests), and what the
/// `selm` CLI computes from a checkpoint offline, in a process of its own: the outputs a refreshed
/// server must then serve.
enum PerturbedCheckpoint {
    /// Writes a copy of the model at `source` (a GGUF file or a Hugging Face directory) whose final
    /// RMSNorm weight is multiplied element-wise by 1 + eps·u, u uniform in [−1, 1) from a fixed
    /// seed: every logit changes, so do greedy answers. A GGUF source gives `destination` as a GGUF
    /// file with the source's tokenizer metadata; a Hugging Face source a directory with the source's
    /// tokenizer files. Both load in `selm serve` (RefreshWeights) and in `selm generate / logits`.
    static func write(from source: String, to destination: String, eps: Float = 0.5, seed: UInt64 = 1) throws {
        let bundle = try ModelBundle(path: source)
        let model = LlamaModel(weights: bundle.model.weights.copy())
        let norm = try XCTUnwrap(model.weights.tensor("model.norm.weight"), "no final norm")
        var state = seed
        for i in 0..<model.config.dim {
            // splitmix64
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            z ^= z >> 31
            let u = Float(z >> 40) / Float(1 << 24) * 2 - 1
            norm[i] *= 1 + eps * u
        }
        switch bundle.format {
        case .gguf:
            try model.saveGGUF(path: destination, name: "perturbed", metadata: bundle.ggufTokenizerMetadata)
        case .huggingFace:
            let tok = bundle.tokenizerIfAny
            try model.saveHuggingFace(directory: destination, bosTokenId: tok?.bosId.map(Int.init), eosTokenId: tok?.eosId.map(Int.init),
                                      extraFiles: bundle.huggingFaceTokenizerFiles)
        }
    }
}

/// `selm generate --model M --prompt P --chat --max-tokens N --json --engine-precision P` (greedy;
/// f32 unless told): ids (with the stop token, if any) and their log-probs.
struct OfflineGreedy {
    var ids: [UInt32]
    var logprobs: [Float]
    var finishReason: String

    init(model: String, chatPrompt: String, maxTokens: Int, precision: String = "f32") throws {
        let r = try runSelmCLI(["generate", "--model", model, "--prompt", chatPrompt, "--chat", "--max-tokens", "\(maxTokens)", "--json",
                               "--engine-precision", precision])
        guard r.status == 0 else { throw TestError("selm generate exited \(r.status): \(r.stderr)") }
        guard let j = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any],
              let ids = j["ids"] as? [Int], let lps = j["logprobs"] as? [Double], let finish = j["finish_reason"] as? String
        else { throw TestError("selm generate --json printed \(r.stdout)") }
        self.ids = ids.map { UInt32($0) }
        logprobs = lps.map { Float($0) }
        finishReason = finish
    }
}

/// Log-probabilities of `tokens[from...]`, each given the tokens before it, from the logits
/// `selm logits --model M` writes (log-softmax in double precision here).
func offlineLogprobs(model: String, tokens: [UInt32], from: Int) throws -> [Double] {
    let out = FileManager.default.temporaryDirectory.appendingPathComponent("selm-logits-\(UUID().uuidString.prefix(8)).f32").path
    defer { try? FileManager.default.removeItem(atPath: out) }
    let r = try runSelmCLI(["logits", "--model", model, "--tokens", tokens.map(String.init).joined(separator: ","), "--out", out,
                           "--engine-precision", "f32"])
    guard r.status == 0 else { throw TestError("selm logits exited \(r.status): \(r.stderr)") }
    let data = try Data(contentsOf: URL(fileURLWithPath: out))
    let logits: [Float] = data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    let vocab = logits.count / tokens.count
    return (from..<tokens.count).map { i in
        let row = logits[(i - 1) * vocab ..< i * vocab].map(Double.init)
        let m = row.max()!
        let lse = m + log(row.reduce(0) { $0 + exp($1 - m) })
        return row[row.startIndex + Int(tokens[i])] - lse
    }
}

/// The largest |a[i] − b[i]|.
func maxAbsDifference<A: BinaryFloatingPoint, B: BinaryFloatingPoint>(_ a: [A], _ b: [B]) -> Double {
    zip(a, b).map { abs(Double($0) - Double($1)) }.max() ?? 0
}

/// Runs the `selm` binary beside the tests to completion (killed after 300 s).
func runSelmCLI(_ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
    let p = Process()
    p.executableURL = ServerProcess.selm
    p.arguments = args
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    p.standardInput = FileHandle.nullDevice
    try p.run()
    let killer = DispatchWorkItem { if p.isRunning { kill(p.processIdentifier, SIGKILL) } }
    DispatchQueue.global().asyncAfter(deadline: .now() + 300, execute: killer)
    // stderr on another thread, so neither pipe can fill up and stall the child.
    let errData = Locked(Data())
    let readerDone = DispatchSemaphore(value: 0)
    Thread {
        let d = err.fileHandleForReading.readDataToEndOfFile()
        errData.with { $0 = d }
        readerDone.signal()
    }.start()
    let o = out.fileHandleForReading.readDataToEndOfFile()
    readerDone.wait()
    p.waitUntilExit()
    killer.cancel()
    return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: errData.get, as: UTF8.self))
}

extension ServerProcess {
    /// The tiny chat model (tokenizer and template, vocabulary 601, context 256): a server with an engine.
    static var tinyChat: String { root.appendingPathComponent("Tests/ModelTests/Fixtures/tiny-chat").path }
}
