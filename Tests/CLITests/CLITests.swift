import Foundation
import XCTest
import Kernels
@testable import Model

/// The `selm` command as a user runs it: a real process, real files.
final class CLITests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let modelFixtures = root.appendingPathComponent("Tests/ModelTests/Fixtures")
    static let learnerFixtures = root.appendingPathComponent("Tests/LearnerTests/Fixtures")

    static var selm: URL {
        // The test binary sits in the products directory beside the `selm` executable.
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        return exe.deletingLastPathComponent().appendingPathComponent("selm")
    }

    static var smol: String {
        ProcessInfo.processInfo.environment["SELM_MODEL"] ?? root.appendingPathComponent("models/SmolLM2-135M-Instruct.Q4_1.gguf").path
    }

    struct Result { var status: Int32; var stdout: String; var stderr: String; var data: Data }

    @discardableResult
    func run(_ args: [String], env: [String: String?] = [:]) throws -> Result {
        let p = Process()
        p.executableURL = Self.selm
        p.arguments = args
        var e = ProcessInfo.processInfo.environment
        for (k, v) in env { e[k] = v }
        p.environment = e
        let out = Pipe(), err = Pipe()
        p.standardOutput = out; p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let r = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Result(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
                      stderr: String(decoding: r, as: UTF8.self), data: o)
    }

    func tempDir() throws -> URL {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("selm-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: d) }
        return d
    }

    func json(_ s: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(s.utf8)) as! [String: Any]
    }

    override func setUp() {
        XCTAssertTrue(FileManager.default.fileExists(atPath: Self.smol), "\(Self.smol) is missing: run `make model`")
    }

    // MARK: OpenBLAS core

    /// Without OPENBLAS_CORETYPE the command runs on the best core this CPU supports (re-executing
    /// itself when OpenBLAS's own detection falls back to a weaker one); a user's choice is kept.
    func testBestBLASCoreIsUsedUnlessTheUserChose() throws {
        let r = try run(["info", "--model", Self.smol, "--json"], env: ["OPENBLAS_CORETYPE": nil])
        XCTAssertEqual(r.status, 0, r.stderr)
        let core = try json(r.stdout)["openblas_core"] as! String
        let best = String(cString: kernels_best_core_for_cpu())
        XCTAssertGreaterThanOrEqual(kernels_core_rank(core), kernels_core_rank(best), "ran on \(core), CPU supports \(best)")
        let chosen = try run(["info", "--model", Self.smol, "--json"], env: ["OPENBLAS_CORETYPE": "Prescott"])
        XCTAssertEqual(try json(chosen.stdout)["openblas_core"] as? String, "Prescott")
    }

    /// `selm logits` equals transformers on every BLAS core (the core changes speed, not results).
    func testLogitsEqualTransformersOnEveryCore() throws {
        let ref = try JSONSerialization.jsonObject(with: Data(contentsOf: Self.modelFixtures.appendingPathComponent("smollm2.logits.json"))) as! [String: Any]
        let idx = (ref["sample_indices"] as! [NSNumber]).map { $0.intValue }
        let seq = (ref["sequences"] as! [[String: Any]])[1]
        let ids = (seq["ids"] as! [NSNumber]).map { $0.intValue }
        let sampled = (seq["sampled"] as! [[NSNumber]]).map { $0.map { $0.floatValue } }
        let dir = try tempDir()
        let best = String(cString: kernels_best_core_for_cpu())
        for core in [nil, "Prescott", best] as [String?] {
            let out = dir.appendingPathComponent("logits-\(core ?? "auto").f32").path
            let r = try run(["logits", "--model", Self.smol, "--tokens", ids.map(String.init).joined(separator: ","), "--out", out,
                             "--engine-precision", "f32"],
                            env: ["OPENBLAS_CORETYPE": core])
            XCTAssertEqual(r.status, 0, r.stderr)
            let data = try Data(contentsOf: URL(fileURLWithPath: out))
            XCTAssertEqual(data.count, ids.count * 49152 * 4)
            let logits: [Float] = data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
            for t in ids.indices {
                let mine = idx.map { logits[t * 49152 + $0] }
                var num: Float = 0, den: Float = 0
                for i in mine.indices { num = max(num, abs(mine[i] - sampled[t][i])); den = max(den, abs(sampled[t][i])) }
                XCTAssertLessThanOrEqual(num / den, 1e-4, "core \(core ?? "auto"), position \(t)")
            }
        }
    }

    /// Greedy chat continuations equal transformers' `generate` token for token (prompt ids too).
    func testGreedyChatEqualsTransformers() throws {
        let gens = try JSONSerialization.jsonObject(with: Data(contentsOf: Self.modelFixtures.appendingPathComponent("smollm2.greedy.json"))) as! [[String: Any]]
        for g in gens {
            let prompt = g["prompt"] as! String
            let r = try run(["generate", "--model", Self.smol, "--chat", "--prompt", prompt, "--max-tokens", "40", "--json",
                             "--engine-precision", "f32"])
            XCTAssertEqual(r.status, 0, r.stderr)
            let out = try json(r.stdout)
            XCTAssertEqual(out["prompt_tokens"] as? Int, (g["prompt_ids"] as! [Int]).count, prompt)
            XCTAssertEqual(out["ids"] as! [Int], g["output_ids"] as! [Int], prompt)
            let expectedReason = (g["output_ids"] as! [Int]).last == 2 ? "eos" : "length"
            XCTAssertEqual(out["finish_reason"] as? String, expectedReason)
        }
        let tok = try run(["tokenize", "--model", Self.smol, "--text", "<|im_start|>user\nWhat is the capital of France?<|im_end|>"])
        XCTAssertTrue(tok.stdout.hasPrefix("[1,4093,198,"), tok.stdout)
    }

    func testTokenizeDetokenizeAndErrors() throws {
        let t = try run(["tokenize", "--model", Self.smol, "--text", "Héllo wörld 2024 🎉"])
        XCTAssertEqual(t.status, 0, t.stderr)
        let ids = try JSONSerialization.jsonObject(with: Data(t.stdout.utf8)) as! [Int]
        let d = try run(["detokenize", "--model", Self.smol, "--tokens", ids.map(String.init).joined(separator: ",")])
        XCTAssertEqual(d.stdout, "Héllo wörld 2024 🎉\n")
        let bad = try run(["detokenize", "--model", Self.smol, "--tokens", "5,99999"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("--tokens[1]"), bad.stderr)
        let missing = try run(["info", "--model", "/nonexistent/model.gguf"])
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertTrue(missing.stderr.contains("/nonexistent/model.gguf"), missing.stderr)
        let badT = try run(["generate", "--model", Self.smol, "--prompt", "x", "--temperature", "-1"])
        XCTAssertNotEqual(badT.status, 0)
        XCTAssertTrue(badT.stderr.contains("temperature"), badT.stderr)
    }

    // MARK: training

    func writePairs(_ pairs: [[String: Any]], to url: URL) throws {
        let lines = try pairs.map { String(decoding: try JSONSerialization.data(withJSONObject: $0), as: UTF8.self) }
        try (lines.joined(separator: "\n") + "\n").write(to: url, atomically: true, encoding: .utf8)
    }

    /// `selm loss` prints the loss autograd computes and writes the same gradients.
    func testLossCommandMatchesAutograd() throws {
        let c = try JSONSerialization.jsonObject(with: Data(contentsOf: Self.learnerFixtures.appendingPathComponent("selm-untied.json"))) as! [String: Any]
        let dir = try tempDir()
        let data = dir.appendingPathComponent("pairs.jsonl")
        try writePairs(c["pairs"] as! [[String: Any]], to: data)
        let grads = dir.appendingPathComponent("grads.safetensors").path
        let r = try run(["loss", "--model", Self.modelFixtures.appendingPathComponent("tiny-untied").path,
                         "--ref", Self.learnerFixtures.appendingPathComponent("selm-untied-ref").path,
                         "--data", data.path, "--beta", "0.5", "--alpha", "0.1", "--grads-out", grads])
        XCTAssertEqual(r.status, 0, r.stderr)
        let out = try json(r.stdout)
        let expected = (c["metrics"] as! [String: Double])["loss"]!
        XCTAssertEqual(out["loss"] as! Double, expected, accuracy: 1e-5 * expected)
        let mine = try SafetensorsFile(path: grads), ref = try SafetensorsFile(path: Self.learnerFixtures.appendingPathComponent("selm-untied.grads.safetensors").path)
        XCTAssertEqual(Set(mine.tensors.map(\.name)), Set(ref.tensors.map(\.name)))
        for t in ref.tensors {
            let a = try mine.floats(t.name), b = try ref.floats(t.name)
            var num: Float = 0, den: Float = 0
            for i in a.indices { num = max(num, abs(a[i] - b[i])); den = max(den, abs(b[i])) }
            XCTAssertLessThanOrEqual(num / den, 1e-4, t.name)
        }
    }

    /// Training writes metrics and checkpoints that load back (HF directory and GGUF); resuming
    /// from a mid-run checkpoint ends at the same weights as the uninterrupted run.
    func testTrainCheckpointAndResume() throws {
        let dir = try tempDir()
        let data = dir.appendingPathComponent("pairs.jsonl")
        var pairs: [[String: Any]] = []
        for i in 0..<10 {
            pairs.append(["prompt_ids": [30 + i, 40 + i], "chosen_ids": [10, 10, 11], "rejected_ids": [20, 20, 21], "reference_ids": [50 + i, 2]])
        }
        try writePairs(pairs, to: data)
        let model = Self.modelFixtures.appendingPathComponent("tiny-tied").path
        let common = ["--data", data.path, "--lr", "3e-3", "--batch-size", "2", "--grad-accum", "2", "--epochs", "2",
                      "--beta", "0.1", "--ref-refresh-steps", "2", "--weight-decay", "0.01"]
        let full = dir.appendingPathComponent("full").path
        let a = try run(["train", "--model", model, "--out", full, "--checkpoint-every", "2"] + common)
        XCTAssertEqual(a.status, 0, a.stderr)
        XCTAssertTrue(a.stderr.contains("step 6/6"), a.stderr)
        let metrics = try String(contentsOfFile: full + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(metrics.count, 6)
        for key in ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected",
                    "logps/pi_response", "logps/ref_response", "loss", "grad_norm", "learning_rate"] {
            XCTAssertTrue(metrics[0].contains("\"\(key)\""), "metrics.jsonl lacks \(key)")
        }
        // Resume from step 2 (mid-epoch, after a reference refresh) in a fresh process.
        let resumed = dir.appendingPathComponent("resumed").path
        let b = try run(["train", "--model", model, "--out", resumed, "--resume", full + "/checkpoint-2"] + common)
        XCTAssertEqual(b.status, 0, b.stderr)
        XCTAssertTrue(b.stderr.contains("resuming from"), b.stderr)
        let w1 = try LlamaModel.load(huggingFaceDirectory: full + "/final"), w2 = try LlamaModel.load(huggingFaceDirectory: resumed + "/final")
        var worst: Float = 0
        for i in 0..<w1.weights.count { worst = max(worst, abs(w1.weights.data[i] - w2.weights.data[i])) }
        XCTAssertLessThanOrEqual(worst, 1e-6, "resumed run ends at the uninterrupted run's weights")
        let start = try LlamaModel.load(huggingFaceDirectory: model)
        var moved: Float = 0
        for i in 0..<start.weights.count { moved = max(moved, abs(w1.weights.data[i] - start.weights.data[i])) }
        XCTAssertGreaterThan(moved, 1e-3, "training changed the weights")
        // The GGUF checkpoint loads back to the same weights (Q/K permutation round trip included).
        let g = try LlamaModel.load(gguf: GGUFFile(path: full + "/final/model.gguf"))
        XCTAssertEqual(Array(UnsafeBufferPointer(start: g.weights.data, count: g.weights.count)),
                       Array(UnsafeBufferPointer(start: w1.weights.data, count: w1.weights.count)))
        let state = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: full + "/final/selm_state.json"))) as! [String: Any]
        XCTAssertEqual(state["step"] as? Int, 6)
        XCTAssertEqual(state["referenceGeneration"] as? Int, 3)
    }

    func testTrainRejectsMalformedDataNamingTheLine() throws {
        let dir = try tempDir()
        let data = dir.appendingPathComponent("bad.jsonl")
        try (#"{"prompt_ids":[1],"chosen_ids":[2],"rejected_ids":[3]}"# + "\n" + #"{"prompt_ids":[1],"chosen_ids":[],"rejected_ids":[3]}"# + "\n")
            .write(to: data, atomically: true, encoding: .utf8)
        let r = try run(["train", "--model", Self.modelFixtures.appendingPathComponent("tiny-tied").path, "--data", data.path,
                         "--out", dir.appendingPathComponent("o").path])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("bad.jsonl:2"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("o/final").path), "nothing trained from a bad file")
    }
}

extension CLITests {
    /// Text rows are encoded as TRL does (chat template on the prompt, EOS after each response):
    /// the loss equals the loss of the id rows built by hand from `selm tokenize`.
    func testTextRowsEncodeAsTRLDoes() throws {
        let dir = try tempDir()
        let text = dir.appendingPathComponent("text.jsonl"), ids = dir.appendingPathComponent("ids.jsonl")
        let prompt = "Name a color.", chosen = "Blue.", rejected = "I do not know.", reference = "Red."
        try writePairs([["prompt": prompt, "chosen": chosen, "rejected": rejected, "reference_response": reference]], to: text)
        func tokenize(_ s: String, special: Bool = true) throws -> [Int] {
            let r = try run(["tokenize", "--model", Self.smol, "--text", s] + (special ? [] : ["--no-special"]))
            return try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [Int]
        }
        let templated = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n\(prompt)<|im_end|>\n<|im_start|>assistant\n"
        try writePairs([["prompt_ids": try tokenize(templated), "chosen_ids": try tokenize(chosen, special: false) + [2],
                         "rejected_ids": try tokenize(rejected, special: false) + [2], "reference_ids": try tokenize(reference, special: false) + [2]]], to: ids)
        let a = try run(["loss", "--model", Self.smol, "--data", text.path])
        let b = try run(["loss", "--model", Self.smol, "--data", ids.path])
        XCTAssertEqual(a.status, 0, a.stderr)
        XCTAssertEqual(b.status, 0, b.stderr)
        let la = try json(a.stdout), lb = try json(b.stdout)
        for key in ["loss", "logps/chosen", "logps/rejected", "logps/pi_response"] {
            XCTAssertEqual(la[key] as! Double, lb[key] as! Double, accuracy: 1e-6, key)
        }
        XCTAssertLessThan(la["logps/chosen"] as! Double, 0)
    }
}
