import ArgumentParser
import DurableFile
import Engine
import Foundation
import Kernels
import Model
import ModelBundle
import Tokenizer

struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Describe a model: architecture, sizes, vocabulary, template, parameters, BLAS core.")
    @OptionGroup var options: ModelOptions
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let b = try options.load()
        let c = b.model.config
        var d: [String: Any] = [
            "model": b.path, "name": b.name, "format": b.format.rawValue, "architecture": "llama",
            "layers": c.nLayers, "hidden_size": c.dim, "intermediate_size": c.hiddenDim,
            "heads": c.nHeads, "kv_heads": c.nKVHeads, "head_dim": c.headDim, "vocab_size": c.vocabSize,
            "context_length": c.contextLength, "rope_theta": Double(c.ropeTheta), "rms_norm_eps": Double(c.rmsEps),
            "tied_embeddings": c.tiedEmbeddings, "parameters": b.model.parameterCount,
            "tokenizer": b.tokenizerIfAny?.preTokenizer.rawValue ?? "none", "tokenizer_vocab": b.tokenizerIfAny?.vocabSize ?? 0,
            "chat_template": b.template?.name ?? "none", "openblas_core": String(cString: kernels_blas_core()),
            "openblas_threads": Int(kernels_blas_threads()), "load_seconds": b.loadSeconds,
        ]
        if let e = b.tokenizerIfAny?.eosId { d["eos_token_id"] = Int(e) }
        if let e = b.tokenizerIfAny?.bosId { d["bos_token_id"] = Int(e) }
        if let p = b.templateProblem { d["chat_template_problem"] = p }
        if json { print(jsonText(d, pretty: true)); return }
        print("""
        model          \(b.path) (\(b.format == .gguf ? "GGUF" : "Hugging Face directory"))
        name           \(b.name)
        architecture   llama: \(c.nLayers) layers, hidden \(c.dim), MLP \(c.hiddenDim), \(c.nHeads) heads / \(c.nKVHeads) KV heads × \(c.headDim)
        context        \(c.contextLength) tokens, RoPE θ \(c.ropeTheta), RMSNorm ε \(c.rmsEps)
        embeddings     \(c.tiedEmbeddings ? "tied" : "untied") output head
        parameters     \(b.model.parameterCount) (\(String(format: "%.1f", Double(b.model.parameterCount) / 1e6))M, f32 in memory)
        vocabulary     \(c.vocabSize) (\(b.tokenizerIfAny.map { t in "tokenizer: byte-level BPE, \(t.vocabSize) tokens, pre-tokenizer \(t.preTokenizer.rawValue), BOS \(t.bosId.map { String($0) } ?? "-"), EOS \(t.eosId.map { String($0) } ?? "-")" } ?? "no tokenizer"))
        chat template  \(b.template?.name ?? "none")\(b.templateProblem.map { " (\($0))" } ?? "")
        OpenBLAS       \(blasDescription())
        loaded in      \(String(format: "%.2f", b.loadSeconds)) s
        """)
    }
}

struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the token ids of a text as a JSON array.")
    @OptionGroup var options: ModelOptions
    @Option(help: "The text.") var text: String?
    @Option(help: "A file holding the text (UTF-8).") var textFile: String?
    @Flag(help: "Treat special-token text such as <|im_start|> as plain text.") var noSpecial = false
    @Flag(help: "Add BOS when the tokenizer asks for it.") var addBos = false

    func validate() throws {
        if (text == nil) == (textFile == nil) { throw ValidationError("give exactly one of --text and --text-file") }
    }

    func run() throws {
        let b = try options.load()
        let s: String
        if let t = text { s = t } else {
            guard let d = FileManager.default.contents(atPath: textFile!) else {
                throw CLIError.file(path: textFile!, reason: "cannot read --text-file")
            }
            guard let u = String(data: d, encoding: .utf8) else { throw CLIError.file(path: textFile!, reason: "--text-file is not UTF-8") }
            s = u
        }
        let tok = try b.tokenizer
        let ids = tok.encode(s, parseSpecial: !noSpecial, addBOS: addBos && tok.addBOS)
        print(jsonText(ids.map { Int($0) }))
    }
}

struct Detokenize: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the text of token ids.")
    @OptionGroup var options: ModelOptions
    @Option(help: "Comma-separated token ids.") var tokens: String

    func validate() throws { _ = try parseTokenList(tokens, field: "--tokens") }

    func run() throws {
        let b = try options.load()
        let ids = try parseTokenList(tokens, field: "--tokens")
        let tok = try b.tokenizer
        if let i = ids.firstIndex(where: { $0 < 0 || Int($0) >= tok.vocabSize }) {
            throw CLIError.argument(flag: "--tokens[\(i)]", reason: "token id \(ids[i]) is outside the vocabulary [0, \(tok.vocabSize)) of \(b.path)")
        }
        print(tok.decode(ids))
    }
}

struct Logits: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write the logits of every position as little-endian float32, row-major [tokens × vocab].",
        discussion: "Computed in --engine-precision (default the server's), so they match what `selm serve` computes; --engine-precision f32 gives the learner's own forward.")
    @OptionGroup var options: ModelOptions
    @OptionGroup var precisionOptions: PrecisionOptions
    @Option(help: "Comma-separated token ids.") var tokens: String
    @Option(help: "Output file.") var out: String

    func validate() throws {
        if try parseTokenList(tokens, field: "--tokens").isEmpty { throw ValidationError("--tokens: no token ids") }
    }

    func run() throws {
        let b = try options.load()
        let ids = try parseTokenList(tokens, field: "--tokens")
        let model = try precisionOptions.inferenceModel(b.model)
        let acts = Activations(config: model.config)
        let logits: UnsafeMutablePointer<Float>
        // Through the engine's KV cache (f16 for the compact precisions), as a Score request computes them.
        do { logits = try engineLogits(model, tokens: ids, acts: acts) } catch { throw CLIError.failed("forward pass", error) }
        let n = ids.count * b.model.config.vocabSize
        let data = Data(bytes: logits, count: n * 4)  // x86-64 and arm64 are little-endian
        try writeDurably(path: out, data: data)
        note("wrote \(ids.count) × \(b.model.config.vocabSize) float32 logits to \(out)")
    }
}

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Continue a prompt. Stops at EOS or the template's end-of-turn token.",
        discussion: "Temperature 0 (the default) is greedy decoding. The text streams to stdout as it is generated; with --json one object {ids, text, finish_reason, logprobs} is printed at the end (ids include the stop token; text does not).")
    @OptionGroup var options: ModelOptions
    @OptionGroup var precisionOptions: PrecisionOptions
    @Option(help: "The prompt text.") var prompt: String
    @Flag(help: "Apply the model's chat template (the prompt is the user's message).") var chat = false
    @Option(help: "System message for --chat (default: the template's own, if any).") var system: String?
    @Option(help: "Maximum new tokens.") var maxTokens = 256
    @Option(help: "Sampling temperature; 0 = greedy.") var temperature: Float = 0
    @Option(help: "Keep the k most likely tokens (0 = off).") var topK = 0
    @Option(help: "Nucleus sampling mass (1 = off).") var topP: Float = 1
    @Option(help: "Drop tokens below min-p × the top probability (0 = off).") var minP: Float = 0
    @Option(help: "Random seed (sampling is reproducible with a seed; default: a random one).") var seed: UInt64?
    @Flag(help: "Print one JSON object at the end instead of streaming text.") var json = false

    /// The sampling flags as engine parameters.
    var sampling: SamplerSettings {
        var p = SamplerSettings()
        p.temperature = temperature; p.topK = topK; p.topP = topP; p.minP = minP
        p.seed = seed; p.maxTokens = maxTokens
        return p
    }

    /// Sampling flags are checked here, before the model loads.
    func validate() throws {
        do { try sampling.validate() } catch let SamplingError.invalid(field, reason) {
            throw ValidationError("--\(field.replacingOccurrences(of: "_", with: "-")): \(reason)")
        }
    }

    func run() throws {
        let b = try options.load()
        let ids: [Int32]
        let tok = try b.tokenizer
        if chat {
            var msgs: [ChatTurn] = []
            if let s = system { msgs.append(.system(s)) }
            msgs.append(.user(prompt))
            ids = try b.textEncoder().chat(msgs)
        } else {
            ids = try b.textEncoder().prompt(text: prompt, chat: false)
        }
        let p = sampling
        let gen = SingleSequenceGenerator(model: try precisionOptions.inferenceModel(b.model))
        let stops = b.stopTokenIds
        var stream = tok.makeStreamDecoder()
        let out = FileHandle.standardOutput
        let result: SingleSequenceGenerator.Output
        do {
            result = try gen.generate(prompt: ids, params: p, stopTokens: stops) { tok, _ in
                if !json { out.write(stream.feed(tok).data(using: .utf8)!) }
                return true
            }
        } catch { throw CLIError.failed("generation failed", error) }
        let textIds = result.finishReason == .eos ? Array(result.ids.dropLast()) : result.ids
        if json {
            print(jsonText(["ids": result.ids.map { Int($0) }, "text": tok.decode(textIds),
                            "finish_reason": result.finishReason.rawValue, "prompt_tokens": ids.count,
                            "logprobs": result.logprobs.map { Double($0) }]))
        } else {
            out.write((stream.finish() + "\n").data(using: .utf8)!)
        }
    }
}
