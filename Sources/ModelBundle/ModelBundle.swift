import Foundation
import Model
import Tokenizer

/// Everything a user points `--model` at: a `.gguf` file or a Hugging Face directory, loaded into
/// the weights, the tokenizer and the chat template it declares.
public final class ModelBundle: @unchecked Sendable {
    public enum Format: String, Sendable { case gguf, huggingFace = "hf" }

    public let path: String
    public let format: Format
    /// The loaded f32 model; after `replaceModel`, the model given there.
    public private(set) var model: LlamaModel
    /// Nil only for a Hugging Face directory without tokenizer files (token-id work still runs).
    public let tokenizerIfAny: Tokenizer?
    /// The built-in template the user named (`--template chatml|zephyr|llama3`), else the model's
    /// own Jinja template (`.jinja`) when it carries one.
    public let template: ChatTemplate?
    /// Why there is no template (absent, or not valid Jinja), reported when a chat is requested.
    public let templateProblem: String?
    /// The GGUF file when loaded from one (its tokenizer metadata is carried into checkpoints).
    public let gguf: GGUFFile?
    public let loadSeconds: Double

    /// Replaces the model by `m` (same config), e.g. by the engine's compact copy when nothing else
    /// needs the f32 weights (`selm serve --no-learner`), so they can be freed. Thread: before the
    /// bundle is shared with other threads.
    public func replaceModel(_ m: LlamaModel) {
        precondition(m.config == model.config, "replaceModel: another architecture")
        model = m
    }

    /// Loads `path`. `templateName` (`chatml`, `zephyr`, `llama3`) overrides the model's template;
    /// `model` (like nil) uses the model's own, but then a missing or invalid one is a load error
    /// rather than a problem reported when a chat is asked for.
    public init(path: String, templateName: String? = nil) throws {
        let t0 = Date()
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw ModelError.io(file: path, reason: "no such file or directory")
        }
        self.path = path
        if isDir.boolValue {
            format = .huggingFace
            gguf = nil
            model = try LlamaModel.load(huggingFaceDirectory: path)
            let hasTokenizer = FileManager.default.fileExists(atPath: path + "/tokenizer.json")
            tokenizerIfAny = hasTokenizer ? try Tokenizer.load(huggingFaceDirectory: path) : nil
        } else {
            format = .gguf
            let g = try GGUFFile(path: path)
            gguf = g
            model = try LlamaModel.load(gguf: g)
            // A GGUF without tokenizer metadata (a checkpoint of a source that had no tokenizer) is
            // like a Hugging Face directory without tokenizer.json: token ids only.
            tokenizerIfAny = g.metadata["tokenizer.ggml.model"] == nil ? nil : try Tokenizer.load(gguf: g)
        }
        if let tok = tokenizerIfAny, tok.vocabSize > model.config.vocabSize {
            throw ModelError.badField(file: path, field: "vocab_size",
                                      reason: "the tokenizer has \(tok.vocabSize) tokens but the model only \(model.config.vocabSize) embeddings")
        }
        let modelOwn = templateName == nil || templateName?.lowercased() == "model"
        if let name = templateName, !modelOwn {
            template = try ChatTemplate(name: name)
            templateProblem = nil
        } else if let tok = tokenizerIfAny, let text = tok.chatTemplateText {
            do {
                template = try ChatTemplate(modelTemplate: text, specialTokens: JinjaChatTemplate.specialTokens(of: tok))
                templateProblem = nil
            } catch {
                if templateName != nil { throw BundleError.noChatTemplate(reason: "--template model: \(error)") }
                template = nil
                templateProblem = "\(error); name a built-in one with --template chatml|zephyr|llama3"
            }
        } else {
            if templateName != nil { throw BundleError.noChatTemplate(reason: "--template model: the model carries no chat template") }
            template = nil
            templateProblem = "the model has no chat template; name one with --template chatml|zephyr|llama3"
        }
        loadSeconds = Date().timeIntervalSince(t0)
    }

    /// The tokenizer, or an error when the model directory has none.
    public var tokenizer: Tokenizer {
        get throws {
            guard let t = tokenizerIfAny else { throw BundleError.noTokenizer(path: path) }
            return t
        }
    }

    /// A short name for the model (GGUF `general.name`, else the file or directory name).
    public var name: String {
        gguf?.metadata["general.name"]?.string ?? URL(fileURLWithPath: path).lastPathComponent
    }

    /// The chat template, or an error saying why there is none.
    public func chatTemplate() throws -> ChatTemplate {
        if let t = template { return t }
        throw BundleError.noChatTemplate(reason: templateProblem ?? "no chat template")
    }

    /// Token ids that end a sample by default: EOS and the template's end-of-turn tokens.
    public var stopTokenIds: Set<Int32> {
        var s = Set<Int32>()
        guard let tok = tokenizerIfAny else { return s }
        if let e = tok.eosId { s.insert(e) }
        for t in template?.stopTokens ?? [] { if let id = tok.id(of: t) { s.insert(id) } }
        return s
    }

    /// The model's prompt/response encoder (its tokenizer and chat template), the one way text
    /// becomes token ids. - Throws: `BundleError.noTokenizer`.
    public func textEncoder() throws -> PromptResponseEncoder {
        PromptResponseEncoder(tokenizer: try tokenizer, template: template,
                              templateProblem: templateProblem ?? "the model has no chat template")
    }

    /// The source's `tokenizer.*` GGUF metadata, carried into GGUF checkpoints so they load with
    /// their tokenizer in llama.cpp and here: a GGUF source's own keys; for a Hugging Face source
    /// with tokenizer files, the keys written from its tokenizer (`TokenizerSpec.ggufMetadata`).
    public var ggufTokenizerMetadata: [(String, GGUFFile.Value)] {
        guard let g = gguf else {
            // The spec was read from the same files when the bundle loaded, so this does not fail.
            guard tokenizerIfAny != nil, let spec = try? TokenizerSpec(huggingFaceDirectory: path) else { return [] }
            return spec.ggufMetadata
        }
        return g.metadataKeys.filter { $0.hasPrefix("tokenizer.") }.map { ($0, g.metadata[$0]!) }
    }

    /// Tokenizer files for checkpoints, so transformers loads them with `AutoTokenizer`: a Hugging
    /// Face source's own files, copied; for a GGUF source, `tokenizer.json` and
    /// `tokenizer_config.json` written from its tokenizer metadata.
    public var huggingFaceTokenizerFiles: [String: Data] {
        if let g = gguf {
            // The spec was read from the same metadata when the bundle loaded, so this does not fail.
            return (try? TokenizerSpec(gguf: g).huggingFaceFiles()) ?? [:]
        }
        var out: [String: Data] = [:]
        for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "generation_config.json"] {
            if let d = FileManager.default.contents(atPath: path + "/" + f) { out[f] = d }
        }
        return out
    }
}

/// Errors of loading a model bundle.
public enum BundleError: Error, CustomStringConvertible {
    /// A chat was requested but the model has no usable chat template.
    case noChatTemplate(reason: String)
    /// Text was given but the model directory has no tokenizer files.
    case noTokenizer(path: String)
    public var description: String {
        switch self {
        case let .noChatTemplate(r): return "chat: \(r)"
        case let .noTokenizer(p): return "\(p): no tokenizer (tokenizer.json, or tokenizer.ggml.* in a GGUF), so only token ids can be used with this model"
        }
    }
}
