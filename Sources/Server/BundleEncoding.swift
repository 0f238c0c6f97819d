import Learner
import ModelBundle
import Tokenizer

/// Applies the chat template to text prompts and appends EOS to responses, as TRL does.
extension ModelBundle: PreferenceTextEncoder {
    public func encodePrompt(_ prompt: PromptInput) throws -> [Int32] {
        switch prompt {
        case let .text(s): return try encodeChat([.user(s)])
        case let .messages(ms): return try encodeChat(ms.map { ChatTurn(role: $0.role, content: $0.content) })
        }
    }

    public func encodeResponse(_ text: String) throws -> [Int32] {
        let tok = try tokenizer
        var ids = tok.encode(text, parseSpecial: false)
        if let e = tok.eosId { ids.append(e) }
        return ids
    }
}
