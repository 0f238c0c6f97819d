/// A model's own chat template (the Jinja text of GGUF `tokenizer.chat_template` or
/// tokenizer_config.json's `chat_template`), rendered as transformers' `apply_chat_template(…,
/// tokenize=False)` renders it: the variables are `messages` (`{role, content}` dicts),
/// `add_generation_prompt`, `tools` and `documents` (none), and the tokenizer's special tokens
/// (`bos_token`, `eos_token`, `unk_token`, `pad_token` when it has them).
///
/// Immutable; any thread.
public struct JinjaChatTemplate: Sendable, Hashable {
    /// The template text.
    public var source: String { template.source }
    /// The special-token variables (`bos_token` → its text, …).
    public let specialTokens: [String: String]
    /// Text of the token that ends an assistant turn in this template's rendering (what follows an
    /// assistant message's content, e.g. `<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, `</s>`);
    /// empty when a probe conversation does not show one.
    public let stopTokens: [String]
    let template: JinjaTemplate

    /// Parses `source`.
    /// - Throws: `TokenizerError.invalidChatTemplate` with the syntax error's line and column.
    public init(source: String, specialTokens: [String: String] = [:]) throws(TokenizerError) {
        do { template = try JinjaTemplate(source) } catch { throw .invalidChatTemplate(reason: error.description) }
        self.specialTokens = specialTokens
        stopTokens = Self.probeStopTokens(template, specialTokens)
    }

    /// The prompt text for `messages` (special tokens as text).
    /// - Throws: `TokenizerError.chatTemplateFailed` when the template raises (`raise_exception`,
    ///   e.g. roles that do not alternate) or fails while rendering, with its message and position.
    public func render(_ messages: [ChatTurn], addGenerationPrompt: Bool) throws(TokenizerError) -> String {
        do { return try render(context: Self.context(messages, addGenerationPrompt: addGenerationPrompt)) } catch {
            throw .chatTemplateFailed(reason: error.description)
        }
    }

    /// Renders with `context` (messages as any values, e.g. with `tool_calls`) on top of the special
    /// tokens and `tools`/`documents` = none. - Throws: `JinjaError`.
    public func render(context: [String: JinjaValue]) throws(JinjaError) -> String {
        var vars: [String: JinjaValue] = ["tools": .none, "documents": .none, "add_generation_prompt": .bool(false)]
        for (k, v) in specialTokens { vars[k] = .string(v) }
        for (k, v) in context { vars[k] = v }
        return try template.render(vars)
    }

    static func context(_ messages: [ChatTurn], addGenerationPrompt: Bool) -> [String: JinjaValue] {
        ["messages": .list(messages.map { .object(["role": .string($0.role), "content": .string($0.content)]) }),
         "add_generation_prompt": .bool(addGenerationPrompt)]
    }

    /// Renders a user/assistant exchange and takes the text right after the assistant's content,
    /// up to the first whitespace, as the end-of-turn token.
    private static func probeStopTokens(_ template: JinjaTemplate, _ special: [String: String]) -> [String] {
        let marker = "SELMPROBEANSWER"
        let probes: [[ChatTurn]] = [[.user("Hi"), .assistant(marker)], [.system("S"), .user("Hi"), .assistant(marker)]]
        for probe in probes {
            var vars = context(probe, addGenerationPrompt: false)
            vars["tools"] = JinjaValue.none
            vars["documents"] = JinjaValue.none
            for (k, v) in special { vars[k] = .string(v) }
            guard let text = try? template.render(vars), let r = text.range(of: marker, options: .backwards) else { continue }
            let after = text[r.upperBound...].drop { isPythonSpaceCharacter($0) }
            let token = after.prefix { !isPythonSpaceCharacter($0) }
            return token.isEmpty ? [] : [String(token)]
        }
        return []
    }

    private static func isPythonSpaceCharacter(_ c: Character) -> Bool { c.unicodeScalars.allSatisfy(isPythonSpace) }

    public static func == (a: JinjaChatTemplate, b: JinjaChatTemplate) -> Bool {
        a.source == b.source && a.specialTokens == b.specialTokens
    }

    public func hash(into h: inout Hasher) {
        h.combine(source)
        h.combine(specialTokens)
    }
}

extension JinjaChatTemplate {
    /// The special-token variables transformers passes a template (its `special_tokens_map`):
    /// `bos_token`, `eos_token`, `unk_token`, `pad_token`, each when the tokenizer has it.
    public static func specialTokens(of tokenizer: Tokenizer) -> [String: String] {
        var out: [String: String] = [:]
        for (name, id) in [("bos_token", tokenizer.bosId), ("eos_token", tokenizer.eosId),
                           ("unk_token", tokenizer.unkId), ("pad_token", tokenizer.padId)] {
            if let id, tokenizer.token(id) != nil { out[name] = tokenizer.decode([id]) }
        }
        return out
    }
}
