/// Turns prompts and responses into token ids: the one place text becomes a model's input, for the
/// server (generate, score, preference rows), the engine, `selm generate` and `selm train`/`loss`.
///
/// - A conversation (or, with `chat`, a text prompt as one user message) is rendered by the chat
///   template with the generation prompt; special-token text is parsed; BOS is added when the
///   tokenizer asks for it. A text prompt without `chat` is tokenized as it is (specials parsed, BOS).
/// - A text response is tokenized on its own (special-token text not parsed); preference responses
///   get EOS appended.
/// - A conversational response follows TRL (`DPOTrainer` in trl 1.16): the prompt with the
///   generation prompt and prompt + response (no generation prompt) are each rendered and
///   tokenized; the response is the tokens after the prefix they share, and the prompt is cut to
///   the prefix all responses share (whole, for templates that render the prompt the same both
///   ways). No EOS is appended: the template's end-of-turn ends the response (ChatML:
///   `…<|im_end|>\n`), and several turns are all part of it.
///
/// Immutable; any thread.
public struct PromptResponseEncoder: Sendable {
    public let tokenizer: Tokenizer
    public let template: ChatTemplate?
    /// Why there is no template, for the error of a chat request.
    public let templateProblem: String

    public init(tokenizer: Tokenizer, template: ChatTemplate?, templateProblem: String = "the model has no chat template") {
        self.tokenizer = tokenizer
        self.template = template
        self.templateProblem = templateProblem
    }

    /// Token ids of a conversation rendered by the chat template, ending with the assistant turn's
    /// opening. - Throws: `TokenizerError.noChatTemplate`; `.chatTemplateFailed` when the model's
    /// template refuses the conversation.
    public func chat(_ messages: [ChatTurn]) throws(TokenizerError) -> [Int32] {
        tokens(try chatTemplate().render(messages, addGenerationPrompt: true))
    }

    /// Token ids of a text prompt: with `chat`, as one user message through the chat template;
    /// otherwise the text itself. - Throws: `TokenizerError.noChatTemplate` for `chat` without one.
    public func prompt(text: String, chat: Bool) throws(TokenizerError) -> [Int32] {
        chat ? try self.chat([.user(text)]) : tokens(text)
    }

    /// Token ids of a text response, tokenized on its own (special-token text taken literally);
    /// `appendEOS` for preference responses.
    public func response(text: String, appendEOS: Bool) -> [Int32] {
        var ids = tokenizer.encode(text, parseSpecial: false)
        if appendEOS, let e = tokenizer.eosId { ids.append(e) }
        return ids
    }

    /// TRL's rule for a conversational prompt and conversational responses (see the type's
    /// comment): the prompt's ids and each response's. - Throws: `TokenizerError.noChatTemplate`.
    public func conversation(prompt: [ChatTurn], responses: [[ChatTurn]]) throws(TokenizerError) -> (prompt: [Int32], responses: [[Int32]]) {
        let template = try chatTemplate()
        let promptIDs = tokens(try template.render(prompt, addGenerationPrompt: true))
        var full: [[Int32]] = []
        for r in responses { full.append(tokens(try template.render(prompt + r, addGenerationPrompt: false))) }
        let shared = full.map { f in zip(promptIDs, f).prefix { $0 == $1 }.count }.min() ?? promptIDs.count
        return (Array(promptIDs[..<shared]), full.map { Array($0[shared...]) })
    }

    /// A preference row in token ids. Text prompts go through the chat template when
    /// `textPromptsAsChat` (`selm train`; the server's `SubmitPreferences.chat`); ids are taken as
    /// they are. With a conversational prompt, conversational responses follow TRL's rule
    /// (`conversation`) and text responses are tokenized on their own with EOS.
    /// - Throws: `TokenizerError.noChatTemplate`; `.invalidRow` when the row breaks TRL's rules for
    ///   conversational responses (`TRLRow.parse` and the server's `SubmitPreferences` refuse such
    ///   rows first, naming the line or the wire field).
    public func encode(_ row: TRLRow, textPromptsAsChat: Bool) throws(TokenizerError) -> EncodedRow {
        if let (part, reason) = row.conversationalResponseProblem { throw .invalidRow(field: part.rawValue, reason: reason) }
        var prompt: [Int32]
        switch row.prompt {
        case .text(let t): prompt = try self.prompt(text: t, chat: textPromptsAsChat)
        case .messages(let m): prompt = try chat(m)
        case .ids(let ids): prompt = ids
        }
        let parts: [TRLRow.Response?] = [row.chosen, row.rejected, row.reference]
        var out: [[Int32]?] = parts.map { p in
            switch p {
            case .text(let t)?: return response(text: t, appendEOS: true)
            case .ids(let ids)?: return ids
            case .messages?, nil: return nil
            }
        }
        if case .messages(let m) = row.prompt {
            let turns = parts.indices.compactMap { i -> (Int, [ChatTurn])? in
                if case .messages(let r)? = parts[i] { return (i, r) }
                return nil
            }
            if !turns.isEmpty {
                let (p, responses) = try conversation(prompt: m, responses: turns.map(\.1))
                // Text/ids responses continue the same (possibly cut) prompt.
                for (i, ids) in out.enumerated() where ids != nil && parts[i] != nil { out[i] = Array(prompt[p.count...]) + ids! }
                prompt = p
                for ((i, _), r) in zip(turns, responses) { out[i] = r }
            }
        }
        return (prompt, out[0]!, out[1]!, out[2])
    }

    private func chatTemplate() throws(TokenizerError) -> ChatTemplate {
        guard let template else { throw .noChatTemplate(reason: templateProblem) }
        return template
    }

    /// Prompt text → ids: special-token text parsed, BOS when the tokenizer adds one.
    private func tokens(_ text: String) -> [Int32] {
        tokenizer.encode(text, parseSpecial: true, addBOS: tokenizer.addBOS)
    }
}

/// A preference row in token ids (`PromptResponseEncoder.encode`, `TRLRow.idsOnly`); the learner
/// makes its `PreferencePair` of it.
public typealias EncodedRow = (prompt: [Int32], chosen: [Int32], rejected: [Int32], reference: [Int32]?)

extension TRLRow {
    /// The row as it is when given wholly in token ids (no tokenizer needed); nil when any part is text.
    public var idsOnly: EncodedRow? {
        func ids(_ r: Response?) -> [Int32]? {
            if case .ids(let i)? = r { return i }
            return nil
        }
        guard case .ids(let p) = prompt, let c = ids(chosen), let r = ids(rejected),
              reference == nil || ids(reference) != nil else { return nil }
        return (p, c, r, ids(reference))
    }
}
