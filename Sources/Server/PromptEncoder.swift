import ModelBundle
import Synchronization
import Tokenizer
import Wire

/// Turns the wire's prompts and responses into token ids (the requests around them are built by
/// `Edge`); every error is a `ServerError.refused` naming the proto field path.
///
/// - Text prompt: `chat` → the chat template as one user turn (with the generation prompt);
///   otherwise plain text, special-token text parsed, BOS when the tokenizer adds one (as
///   `selm generate`).
/// - Messages: always the chat template (with the generation prompt).
/// - Ids: as they are (no template, no BOS), bit for bit; the engine (or the learner's pair check)
///   checks them against the vocabulary. Only `DetokenizeRequest`'s ids are checked here (they
///   reach no other part).
/// - Responses: text is tokenized on its own; preference responses get EOS appended (as TRL and
///   `PreferenceData` do), score continuations do not; ids as they are.
/// - Length: before any text of a request is tokenized, every text field (a conversation's roles and
///   contents together) is checked against `maxTextBytes` — more bytes than the context can hold
///   as tokens — and refused with `ERROR_CODE_OUT_OF_RANGE` naming the field; a `TokenizeRequest`
///   against `maxTokenizeBytes`. Tokenizing costs CPU in proportion to the text; this bounds it by
///   what a request could legitimately need.
///
/// Immutable apart from `meter` (thread-safe); any thread (the server runs it on libuv's thread
/// pool, off the loop thread).
struct PromptEncoder: Sendable {
    let bundle: ModelBundle
    let vocabSize: Int
    let contextLength: Int
    /// The longest text (UTF-8 bytes) a prompt, response or conversation may have: the context length
    /// × the most bytes one token stands for (`Tokenizer.maxBytesPerToken`) — a longer text cannot
    /// fit in the context. Int.max without a tokenizer (text is refused then anyway).
    let maxTextBytes: Int
    /// The longest text a `TokenizeRequest` may have: `maxTextBytes`, at least 1 MiB (a text longer
    /// than the context may be tokenized, to count or split it).
    let maxTokenizeBytes: Int
    /// Bytes of text handed to the tokenizer (the `selm_tokenizer_input_bytes_total` metric).
    let meter = TokenizerMeter()

    init(bundle: ModelBundle) {
        self.bundle = bundle
        vocabSize = bundle.model.config.vocabSize
        contextLength = bundle.model.config.contextLength
        if let tok = bundle.tokenizerIfAny {
            let (bound, overflow) = contextLength.multipliedReportingOverflow(by: tok.maxBytesPerToken)
            maxTextBytes = overflow ? Int.max : bound
        } else {
            maxTextBytes = Int.max
        }
        maxTokenizeBytes = max(maxTextBytes, 1 << 20)
    }

    /// Token ids of a prompt.
    func prompt(_ p: Prompt, chat: Bool, field: String) throws(ServerError) -> [Int32] {
        switch p {
        case .ids(let ids):
            return Edge.ids(ids)
        case .text(let text):
            let tok = try tokenizer(field + ".text")
            if chat { return try templated([ChatTurn(role: "user", content: text)], field: "chat") }
            meter.add(text.utf8.count)
            return tok.encode(text, parseSpecial: true, addBOS: tok.addBOS)
        case .messages(let messages):
            _ = try tokenizer(field + ".messages")
            return try templated(messages.map { ChatTurn(role: $0.role, content: $0.content) }, field: field + ".messages")
        }
    }

    /// Token ids of a response; `appendEOS` for preference responses given as text.
    func response(_ r: Response, appendEOS: Bool, field: String) throws(ServerError) -> [Int32] {
        switch r {
        case .ids(let ids):
            return Edge.ids(ids)
        case .text(let text):
            let tok = try tokenizer(field + ".text")
            meter.add(text.utf8.count)
            var ids = tok.encode(text, parseSpecial: false)
            if appendEOS, let e = tok.eosId { ids.append(e) }
            return ids
        }
    }

    /// `ids` as Int32 after checking each is in the vocabulary.
    func checked(_ ids: [UInt32], field: String) throws(ServerError) -> [Int32] {
        if let i = ids.firstIndex(where: { Int($0) >= vocabSize }) {
            throw .refused(code: .outOfRange, field: "\(field)[\(i)]",
                           reason: "token id \(ids[i]) is outside the vocabulary [0, \(vocabSize))")
        }
        return ids.map { Int32(bitPattern: $0) }
    }

    // MARK: Length bounds (checked before anything is tokenized)

    /// Refuses a prompt whose text cannot fit in the context.
    func checkLength(_ p: Prompt, field: String) throws(ServerError) {
        switch p {
        case .ids: return
        case .text(let text): try checkLength(text.utf8.count, field: field + ".text", limit: maxTextBytes)
        case .messages(let messages): try checkLength(Self.bytes(of: messages), field: field + ".messages", limit: maxTextBytes)
        }
    }

    /// Refuses a response whose text cannot fit in the context.
    func checkLength(_ r: Response, field: String) throws(ServerError) {
        if case .text(let text) = r { try checkLength(text.utf8.count, field: field + ".text", limit: maxTextBytes) }
    }

    private func checkLength(_ bytes: Int, field: String, limit: Int) throws(ServerError) {
        guard bytes > limit else { return }
        let why = limit == maxTextBytes
            ? "more than the context of \(contextLength) tokens can hold (at most \(limit) bytes, \(bundle.tokenizerIfAny?.maxBytesPerToken ?? 0) per token)"
            : "over the limit of \(limit) bytes"
        throw .refused(code: .outOfRange, field: field, reason: "\(bytes) bytes of text is \(why); refused before tokenizing")
    }

    /// UTF-8 bytes of a conversation's roles and contents.
    static func bytes(of messages: [Wire.ChatMessage]) -> Int {
        messages.reduce(0) { $0 + $1.role.utf8.count + $1.content.utf8.count }
    }

    /// A `TokenizeRequest`: text (chat → templated as one user turn; otherwise `add_special` parses
    /// special-token text and adds BOS when the tokenizer does) or a conversation (templated).
    func tokenize(_ t: TokenizeRequest) throws(ServerError) -> [UInt32] {
        let ids: [Int32]
        switch t.input {
        case .text(let text):
            try checkLength(text.utf8.count, field: "text", limit: maxTokenizeBytes)
            let tok = try tokenizer("text")
            if t.chat {
                ids = try templated([ChatTurn(role: "user", content: text)], field: "chat")
            } else {
                meter.add(text.utf8.count)
                ids = tok.encode(text, parseSpecial: t.addSpecial, addBOS: t.addSpecial && tok.addBOS)
            }
        case .messages(let messages):
            try checkLength(Self.bytes(of: messages), field: "messages", limit: maxTokenizeBytes)
            _ = try tokenizer("messages")
            ids = try templated(messages.map { ChatTurn(role: $0.role, content: $0.content) }, field: "messages")
        }
        return ids.map { UInt32(bitPattern: $0) }
    }

    /// The text of token ids (each checked against the vocabulary).
    func detokenize(_ ids: [UInt32]) throws(ServerError) -> String {
        let checkedIDs = try checked(ids, field: "ids")
        return try tokenizer("ids").decode(checkedIDs)
    }

    private func tokenizer(_ field: String) throws(ServerError) -> Tokenizer {
        guard let t = bundle.tokenizerIfAny else {
            throw .invalid(field, "the served model has no tokenizer: send token ids")
        }
        return t
    }

    private func templated(_ messages: [ChatTurn], field: String) throws(ServerError) -> [Int32] {
        meter.add(messages.reduce(0) { $0 + $1.role.utf8.count + $1.content.utf8.count })
        do { return try bundle.encodeChat(messages) } catch {
            throw .invalid(field, "\(error)")
        }
    }
}

/// A running total of bytes, added to from any thread (`PromptEncoder.meter`).
final class TokenizerMeter: Sendable {
    private let total = Atomic<UInt64>(0)
    func add(_ n: Int) { total.wrappingAdd(UInt64(n), ordering: .relaxed) }
    var bytes: UInt64 { total.load(ordering: .relaxed) }
}
