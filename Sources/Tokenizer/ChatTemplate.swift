/// One message of a conversation.
public struct ChatTurn: Sendable, Equatable, Hashable {
    /// `system`, `user`, `assistant` (ChatML and Llama-3 accept any role name).
    public var role: String
    /// The message text, inserted verbatim (special tokens in it are not escaped).
    public var content: String

    /// A message with any role.
    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }

    /// A system message.
    public static func system(_ content: String) -> ChatTurn { ChatTurn(role: "system", content: content) }
    /// A user message.
    public static func user(_ content: String) -> ChatTurn { ChatTurn(role: "user", content: content) }
    /// An assistant message.
    public static func assistant(_ content: String) -> ChatTurn { ChatTurn(role: "assistant", content: content) }
}

/// A chat format: the model's own Jinja template (`jinja`, the default when the model carries one),
/// or one of the three formats this project renders natively (`--template chatml|zephyr|llama3`),
/// byte for byte as the models' own Jinja templates render them through transformers'
/// `apply_chat_template`.
public enum ChatTemplate: Sendable, Equatable, Hashable {
    /// The model's own template, rendered by the Jinja interpreter (`--template model`).
    case jinja(JinjaChatTemplate)
    /// `<|im_start|>role\ncontent<|im_end|>\n` per message (SmolLM2, Qwen2/2.5, OpenHermes). With a
    /// `defaultSystem`, a system message carrying it is inserted when the first message is not one.
    case chatml(defaultSystem: String?)
    /// `<|role|>\ncontent</s>\n` per message for system, user and assistant (HuggingFaceH4/zephyr-7b-beta,
    /// TinyLlama-Chat); other roles are dropped.
    case zephyr
    /// `<|begin_of_text|>` then `<|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>` per
    /// message with the content trimmed (Meta-Llama-3-8B-Instruct). Llama-3.1 and later templates,
    /// which add a dated system header, are recognised as this but rendered as Llama-3's.
    case llama3

    /// The names `--template` takes: the model's own template, then the built-in ones.
    public static let names = ["model", "chatml", "zephyr", "llama3"]

    /// The built-in template a user names (`--template chatml|zephyr|llama3`, any case; `model`
    /// needs the model's text: `init(modelTemplate:specialTokens:)`).
    /// - Throws: `TokenizerError.unknownTemplateName` for any other name.
    public init(name: String) throws {
        switch name.lowercased() {
        case "chatml": self = .chatml(defaultSystem: nil)
        case "zephyr": self = .zephyr
        case "llama3", "llama-3": self = .llama3
        default: throw TokenizerError.unknownTemplateName(name)
        }
    }

    /// The model's own template `text`, rendered by the Jinja interpreter with `specialTokens` as
    /// variables (`bos_token`, `eos_token`, …). - Throws: `TokenizerError.invalidChatTemplate`
    /// naming the line and column of a syntax error.
    public init(modelTemplate text: String, specialTokens: [String: String]) throws(TokenizerError) {
        self = .jinja(try JinjaChatTemplate(source: text, specialTokens: specialTokens))
    }

    /// The built-in template a model's Jinja template text looks like (by its marker tokens).
    /// - Throws: `TokenizerError.unrecognizedChatTemplate` when `recognize` does not know it.
    public init(templateText: String) throws {
        guard let template = Self.recognize(templateText) else {
            let excerpt = String(templateText.prefix(80)).debugDescription
            throw TokenizerError.unrecognizedChatTemplate(excerpt: excerpt)
        }
        self = template
    }

    /// Recognises a model's Jinja template text by its marker tokens: `<|start_header_id|>` is
    /// Llama-3, `<|im_start|>` is ChatML, `<|user|>` is Zephyr. For ChatML the default system message
    /// is taken from the template itself: the text of a string literal
    /// `'<|im_start|>system\n…<|im_end|>…'` (what SmolLM2's and Qwen2.5's templates emit when the
    /// conversation has no system message). Nil when none matches.
    public static func recognize(_ templateText: String) -> ChatTemplate? {
        if templateText.contains("<|start_header_id|>") { return .llama3 }
        if templateText.contains("<|im_start|>") { return .chatml(defaultSystem: defaultSystemMessage(in: templateText)) }
        if templateText.contains("<|user|>") { return .zephyr }
        return nil
    }

    /// Short name, as `--template` takes it (`model` for the model's own template).
    public var name: String {
        switch self {
        case .jinja: return "model"
        case .chatml: return "chatml"
        case .zephyr: return "zephyr"
        case .llama3: return "llama3"
        }
    }

    /// Text of the tokens that end an assistant turn: generation stops at any of them.
    public var stopTokens: [String] {
        switch self {
        case let .jinja(t): return t.stopTokens
        case .chatml: return ["<|im_end|>"]
        case .zephyr: return ["</s>"]
        case .llama3: return ["<|eot_id|>"]
        }
    }

    /// The prompt text for `messages`, ending with the opening of an assistant turn when
    /// `addGenerationPrompt`. Special tokens appear as text; encode it with `parseSpecial: true`.
    /// - Throws: `TokenizerError.chatTemplateFailed` when the model's template refuses the
    ///   conversation (its `raise_exception`, e.g. a system message Gemma does not take, roles that
    ///   do not alternate) or fails while rendering; the built-in templates do not throw.
    public func render(_ messages: [ChatTurn], addGenerationPrompt: Bool) throws(TokenizerError) -> String {
        var out = ""
        switch self {
        case let .jinja(t):
            return try t.render(messages, addGenerationPrompt: addGenerationPrompt)
        case let .chatml(defaultSystem):
            if let defaultSystem, let first = messages.first, first.role != "system" {
                out += "<|im_start|>system\n\(defaultSystem)<|im_end|>\n"
            }
            for m in messages { out += "<|im_start|>\(m.role)\n\(m.content)<|im_end|>\n" }
            if addGenerationPrompt { out += "<|im_start|>assistant\n" }
        case .zephyr:
            for m in messages where ["user", "system", "assistant"].contains(m.role) {
                out += "<|\(m.role)|>\n\(m.content)</s>\n"
            }
            // The template emits it inside its message loop (`loop.last`): nothing for no messages.
            if addGenerationPrompt, !messages.isEmpty { out += "<|assistant|>\n" }
        case .llama3:
            for (i, m) in messages.enumerated() {
                if i == 0 { out += "<|begin_of_text|>" }
                out += "<|start_header_id|>\(m.role)<|end_header_id|>\n\n\(Self.jinjaTrim(m.content))<|eot_id|>"
            }
            if addGenerationPrompt { out += "<|start_header_id|>assistant<|end_header_id|>\n\n" }
        }
        return out
    }

    // MARK: helpers

    /// Jinja's `trim` filter (Python's `str.strip()`): removes leading and trailing characters that
    /// Python counts as whitespace (Unicode White_Space plus U+001C...U+001F).
    static func jinjaTrim(_ s: String) -> String {
        func isSpace(_ c: Unicode.Scalar) -> Bool { c.properties.isWhitespace || (0x1C...0x1F).contains(c.value) }
        let scalars = s.unicodeScalars
        guard let first = scalars.firstIndex(where: { !isSpace($0) }),
              let last = scalars.lastIndex(where: { !isSpace($0) }) else { return "" }
        return String(scalars[first...last])
    }

    /// The default system message a ChatML template inserts, read from its string literals.
    static func defaultSystemMessage(in template: String) -> String? {
        let head = "<|im_start|>system\n", tail = "<|im_end|>"
        for literal in jinjaStringLiterals(template) where literal.hasPrefix(head) {
            let rest = literal.dropFirst(head.count)
            guard let end = rest.range(of: tail) else { continue }
            let message = String(rest[..<end.lowerBound])
            if !message.isEmpty { return message }
        }
        return nil
    }

    /// The values of the string literals inside a template's `{{ … }}` and `{% … %}` tags, with
    /// Jinja's escapes (`\n`, `\t`, `\r`, `\\`, `\'`, `\"`) resolved. Text outside tags is output, not code.
    static func jinjaStringLiterals(_ template: String) -> [String] {
        var literals: [String] = []
        let chars = Array(template.unicodeScalars)
        var i = 0
        var inTag = false
        while i < chars.count {
            let c = chars[i]
            let next: Unicode.Scalar? = i + 1 < chars.count ? chars[i + 1] : nil
            if !inTag {
                if c == "{", next == "{" || next == "%" { inTag = true; i += 2 } else { i += 1 }
                continue
            }
            if (c == "}" || c == "%"), next == "}" { inTag = false; i += 2; continue }
            guard c == "'" || c == "\"" else { i += 1; continue }
            let quote = c
            var value = String.UnicodeScalarView()
            i += 1
            while i < chars.count, chars[i] != quote {
                if chars[i] == "\\", i + 1 < chars.count {
                    switch chars[i + 1] {
                    case "n": value.append("\n")
                    case "t": value.append("\t")
                    case "r": value.append("\r")
                    case "\\", "'", "\"": value.append(chars[i + 1])
                    default: value.append(chars[i]); value.append(chars[i + 1])
                    }
                    i += 2
                } else {
                    value.append(chars[i])
                    i += 1
                }
            }
            literals.append(String(value))
            i += 1
        }
        return literals
    }
}
