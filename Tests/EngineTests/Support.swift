import Foundation
import XCTest
@testable import Engine
import Model
import ModelBundle
import Tokenizer

/// Models and helpers shared by the engine tests.
enum Fixtures {
    static let packageRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    struct MissingModel: Error, CustomStringConvertible {
        var path: String
        var description: String { "model not found at \(path): run `make model` (or set SELM_MODEL)" }
    }

    /// SmolLM2-135M-Instruct, located by `$SELM_MODEL` or `<package root>/models/`.
    static var smolPath: String {
        if let env = ProcessInfo.processInfo.environment["SELM_MODEL"], !env.isEmpty { return env }
        return packageRoot.appendingPathComponent("models/SmolLM2-135M-Instruct.Q4_1.gguf").path
    }

    struct Smol: @unchecked Sendable {
        var model: LlamaModel
        var tokenizer: Tokenizer
        var template: ChatTemplate
    }

    private static let smolLoaded: Result<Smol, any Error> = Result {
        guard FileManager.default.fileExists(atPath: smolPath) else { throw MissingModel(path: smolPath) }
        let gguf = try GGUFFile(path: smolPath)
        let tok = try Tokenizer.load(gguf: gguf)
        let model = try LlamaModel.load(gguf: gguf)
        return Smol(model: model, tokenizer: tok, template: try ChatTemplate(templateText: tok.chatTemplateText ?? ""))
    }

    /// SmolLM2 loaded once per test process; throws (failing the test) when the file is missing.
    static func smol() throws -> Smol {
        do { return try smolLoaded.get() } catch {
            XCTFail("\(error)")
            throw error
        }
    }

    /// The 2-layer, 97-token random Llama from the model tests' fixtures (context 64).
    static func tiny() throws -> LlamaModel {
        try LlamaModel.load(huggingFaceDirectory: packageRoot.appendingPathComponent("Tests/ModelTests/Fixtures/tiny-tied").path)
    }

    /// A tokenizer for the tiny model: 0 `<unk>`, 1 `<s>`, 2 `</s>` (EOS), then `!` ... `~` (ids 3 ... 96).
    static let tinyTokenizer: Tokenizer = {
        let chars = (33...126).map { String(UnicodeScalar(UInt8($0))) }
        let spec = TokenizerSpec(tokens: ["<unk>", "<s>", "</s>"] + chars, merges: [], tokenTypes: [2, 3, 3] + chars.map { _ in 1 },
                                 preTokenizer: .gpt2, bosId: 1, eosId: 2, unkId: 0)
        return try! Tokenizer(spec: spec)
    }()

    /// A copy of `model` with every weight scaled by 1 + eps·noise (a "new version" from the learner).
    static func perturbed(_ model: LlamaModel, eps: Float = 0.02, seed: UInt64 = 7) -> ParameterSet {
        let w = model.weights.copy()
        var rng = RandomSource(seed: seed)
        for i in 0..<w.count {
            let u = Float(rng.nextUnit()) * 2 - 1
            w.data[i] *= 1 + eps * u
        }
        return w
    }
}

extension Fixtures {
    /// A copy of `model` with every RMSNorm weight scaled by 1 + eps·noise: cheap to make, and it
    /// changes every logit.
    static func perturbedNorms(_ model: LlamaModel, eps: Float = 0.05, seed: UInt64 = 11) -> ParameterSet {
        let w = model.weights.copy()
        var rng = RandomSource(seed: seed)
        let dim = model.config.dim
        for p in w.layers.flatMap({ [$0.attnNorm, $0.mlpNorm] }) + [w.finalNorm] {
            for i in 0..<dim { p[i] *= 1 + eps * (Float(rng.nextUnit()) * 2 - 1) }
        }
        return w
    }
}

/// Everything one request produced.
struct Outcome {
    var firstToken: UInt64?
    var samples: [FinishedSample] = []
    var chunks: [StreamChunk] = []
    var done: RequestDone?
    var score: ScoringResult?
    var error: EngineError?

    /// Samples ordered by (prompt, sample).
    var ordered: [FinishedSample] {
        samples.sorted { ($0.promptIndex, $0.sampleIndex) < ($1.promptIndex, $1.sampleIndex) }
    }
}

extension GenerationEngine {
    /// Steps until idle (at most `maxSteps`), collecting events per request.
    @discardableResult
    func runUntilIdle(maxSteps: Int = 100_000, into outcomes: inout [RequestID: Outcome]) -> Int {
        var steps = 0
        repeat {
            let r = step()
            steps += 1
            collect(into: &outcomes)
            if !r.hasWork { break }
        } while steps < maxSteps
        return steps
    }

    func runUntilIdle(maxSteps: Int = 100_000) -> [RequestID: Outcome] {
        var o: [RequestID: Outcome] = [:]
        runUntilIdle(maxSteps: maxSteps, into: &o)
        return o
    }

    func collect(into outcomes: inout [RequestID: Outcome]) {
        for e in drainEvents() {
            switch e {
            case let .firstToken(id, time): outcomes[id, default: Outcome()].firstToken = time
            case let .chunk(c): outcomes[c.id, default: Outcome()].chunks.append(c)
            case let .sample(s): outcomes[s.id, default: Outcome()].samples.append(s)
            case let .done(d): outcomes[d.id, default: Outcome()].done = d
            case let .score(s): outcomes[s.id, default: Outcome()].score = s
            case let .error(id, err): outcomes[id, default: Outcome()].error = err
            case .published: break
            }
        }
    }
}

/// The field an `EngineError` names.
func field(of error: Error) -> String? {
    switch error as? EngineError {
    case let .invalidRequest(f, _)?, let .outOfRange(f, _)?: return f
    case let .exceedsKVPool(f, _, _, _)?: return f
    case let .versionNotAlive(f, _, _)?: return f
    default: return nil
    }
}

/// log-softmax of `logits` (vocab) at `token`, in double precision, as an independent reference.
func referenceLogprob(_ logits: UnsafePointer<Float>, vocab: Int, token: Int32) -> Double {
    var mx = -Double.infinity
    for i in 0..<vocab { mx = max(mx, Double(logits[i])) }
    var sum = 0.0
    for i in 0..<vocab { sum += exp(Double(logits[i]) - mx) }
    return Double(logits[Int(token)]) - mx - log(sum)
}

/// All logits (T, vocab) of one full sequence, without a KV cache (what `selm logits` prints).
func fullLogits(_ model: LlamaModel, _ tokens: [Int32]) throws -> [Float] {
    var b = ForwardBatch()
    b.append(tokens, startPos: 0, slot: 0, logits: .all)
    let acts = Activations(config: model.config)
    let p = try model.forward(b, kv: nil, acts: acts)
    return Array(UnsafeBufferPointer(start: p, count: tokens.count * model.config.vocabSize))
}
