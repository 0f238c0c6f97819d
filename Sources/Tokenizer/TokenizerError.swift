/// Every way building a tokenizer or choosing a chat template can fail. Each case names the file,
/// field or value concerned, so the message alone tells the user what to fix.
public enum TokenizerError: Error, CustomStringConvertible, Equatable, Sendable {
    /// A file (tokenizer.json, tokenizer_config.json, chat_template.jinja) could not be read.
    case io(path: String, reason: String)
    /// A file is not valid JSON, or one of its fields has a shape this module cannot read.
    case malformed(file: String, field: String, reason: String)
    /// A component this module does not implement: a tokenizer model other than byte-level BPE,
    /// a normalizer other than NFC, byte fallback, subword prefixes.
    case unsupported(field: String, value: String)
    /// The pre-tokenizer named by `field` is none of gpt2, smollm, llama3, qwen2.
    case unknownPreTokenizer(field: String, value: String)
    /// The spec contradicts itself: a merge names a token not in the vocabulary, an id is out of
    /// range, or two lists that must have equal lengths do not.
    case invalidSpec(field: String, reason: String)
    /// A template name given by the user (`--template`) is not model, chatml, zephyr or llama3.
    case unknownTemplateName(String)
    /// A model's chat template text is none of the families this module renders (ChatML, Zephyr,
    /// Llama-3); `excerpt` is its beginning.
    case unrecognizedChatTemplate(excerpt: String)
    /// The model's chat template is not valid Jinja (or uses what the interpreter does not
    /// support); `reason` names the line and column.
    case invalidChatTemplate(reason: String)
    /// The model's chat template refused a conversation (its `raise_exception`) or failed while
    /// rendering it; `reason` is its message with the line and column.
    case chatTemplateFailed(reason: String)
    /// A chat was requested (a conversation, a text prompt with `chat`) but there is no usable
    /// template; `reason` says why (`PromptResponseEncoder.templateProblem`).
    case noChatTemplate(reason: String)
    /// A preference row breaks TRL's rules for conversational responses (`field` is "chosen",
    /// "rejected" or "reference"; `TRLRow.conversationalResponseProblem`).
    case invalidRow(field: String, reason: String)

    /// A message naming what is wrong and where.
    public var description: String {
        switch self {
        case let .io(path, reason):
            return "\(path): \(reason)"
        case let .malformed(file, field, reason):
            return "\(file): field '\(field)': \(reason)"
        case let .unsupported(field, value):
            return "'\(field)' is '\(value)', which is not supported (only byte-level BPE tokenizers are)"
        case let .unknownPreTokenizer(field, value):
            return "'\(field)' names an unknown pre-tokenizer '\(value)' (known: gpt2, smollm, llama3, qwen2)"
        case let .invalidSpec(field, reason):
            return "tokenizer \(field): \(reason)"
        case let .unknownTemplateName(name):
            return "unknown chat template '\(name)' (known: model, chatml, zephyr, llama3)"
        case let .unrecognizedChatTemplate(excerpt):
            return "the model's chat template is not ChatML, Zephyr or Llama-3 (it begins: \(excerpt)); choose one with --template"
        case let .invalidChatTemplate(reason):
            return "the model's chat template cannot be used: \(reason)"
        case let .chatTemplateFailed(reason):
            return "chat template: \(reason)"
        case let .noChatTemplate(reason):
            return "chat: \(reason)"
        case let .invalidRow(field, reason):
            return "\(field): \(reason)"
        }
    }
}
