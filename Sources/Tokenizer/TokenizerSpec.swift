/// Everything needed to build a `Tokenizer`, as plain values: what a GGUF file's `tokenizer.ggml.*`
/// metadata or a Hugging Face `tokenizer.json` holds. `Tokenizer(spec:)` checks it.
public struct TokenizerSpec: Sendable, Equatable {
    /// Vocabulary, indexed by token id, in byte-level spelling (`"Ġworld"` for `" world"`); special
    /// tokens are spelled as they appear in text (`"<|im_start|>"`).
    public var tokens: [String]
    /// Merge rules, best first, each `"left right"` (one space between two vocabulary entries).
    public var merges: [String]
    /// Per-token kind, GGUF / llama.cpp codes (see `TokenType`); nil treats every token as normal
    /// except the bos/eos/unk/pad ids, which count as control tokens.
    public var tokenTypes: [Int]?
    /// How text is split into words before BPE.
    public var preTokenizer: PreTokenizerKind
    /// Beginning-of-sequence token id.
    public var bosId: Int32?
    /// End-of-sequence token id (for chat models, the end-of-turn token).
    public var eosId: Int32?
    /// Unknown token id: stands for a byte the vocabulary lacks (never needed by a full byte-level vocabulary).
    public var unkId: Int32?
    /// Padding token id.
    public var padId: Int32?
    /// Whether the model expects a BOS token at the start of a prompt (`encode(_:addBOS:)` does not
    /// decide this on its own; callers pass `tokenizer.addBOS`).
    public var addBOS: Bool
    /// When a whole word is itself a vocabulary entry, use it without applying merges (Hugging Face's
    /// `ignore_merges`; Llama-3 sets it).
    public var ignoreMerges: Bool
    /// Apply Unicode NFC normalisation to text outside special tokens before splitting it (Qwen2's
    /// tokenizer.json declares this normalizer).
    public var normalizeNFC: Bool
    /// The chat template text (Jinja) the model ships, if any.
    public var chatTemplate: String?

    /// A spec from its parts; see the properties for what each means.
    public init(
        tokens: [String], merges: [String], tokenTypes: [Int]? = nil, preTokenizer: PreTokenizerKind,
        bosId: Int32? = nil, eosId: Int32? = nil, unkId: Int32? = nil, padId: Int32? = nil,
        addBOS: Bool = false, ignoreMerges: Bool = false, normalizeNFC: Bool = false, chatTemplate: String? = nil
    ) {
        self.tokens = tokens
        self.merges = merges
        self.tokenTypes = tokenTypes
        self.preTokenizer = preTokenizer
        self.bosId = bosId
        self.eosId = eosId
        self.unkId = unkId
        self.padId = padId
        self.addBOS = addBOS
        self.ignoreMerges = ignoreMerges
        self.normalizeNFC = normalizeNFC
        self.chatTemplate = chatTemplate
    }
}

/// Token kinds, with the codes GGUF's `tokenizer.ggml.token_type` (llama.cpp) uses.
public enum TokenType: Int, Sendable {
    /// An ordinary BPE token.
    case normal = 1
    /// The unknown token.
    case unknown = 2
    /// A control token (`<|im_start|>`, `<|endoftext|>`): matched whole in text only when special
    /// tokens are parsed.
    case control = 3
    /// A user-defined added token: always matched whole in text, but not special.
    case userDefined = 4
    /// A reserved, unused slot.
    case unused = 5
    /// A byte token (`<0x41>`, sentencepiece vocabularies); treated as normal here.
    case byte = 6
}
