import ModelBundle
import Synchronization
import Tokenizer
import Wire

/// Turns the wire's prompts and responses into token ids by the rules of the shared
/// `PromptResponseEncoder` (Tokenizer) — the same as `selm generate`, `selm train` and the engine
/// use (the requests around them are built by `Edge`); every error is a `ServerError.refused`
/// naming the proto field path.
///
/// - Text prompt: `chat` → the chat template as one user turn (with the generation prompt);
///   otherwise plain text, special-token text parsed, BOS when the tokenizer adds one.
/// - Messages: always the chat template (with the generation prompt).
/// - Ids: as they are (no template, no BOS), bit for bit; the engine (or the learner's pair check)
///   checks them against the vocabulary. Only `DetokenizeRequest`'s ids are checked here (they
///   reach no other part).
/// - Responses: text is tokenized on its own; preference responses get EOS appended
///   (`PromptResponseEncoder.encode`, the rule of `selm train`), score continuations do not; ids
///   as they are. Messages (a conversational response) only in a preference row whose prompt is
///   a conversation and ending with the assistant's turn (`TRLRow.conversationalResponseProblem`),
///   encoded as TRL does (`PromptResponseEncoder.encode`); a score continuation given as messages
///   is refused (`ERROR_CODE_INVALID_ARGUMENT`, `items[i].continuation.messages`).
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
    /// The shared text → ids rules; nil when the model has no tokenizer.
    let text: PromptResponseEncoder?

    init(bundle: ModelBundle) {
        self.bundle = bundle
        text = try? bundle.textEncoder()
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
        case .text(let t):
            let enc = try encoder(field + ".text")
            meter.add(Self.bytes(of: t, chat: chat))
            return try templated(chat ? "chat" : field + ".text") { () throws(TokenizerError) in try enc.prompt(text: t, chat: chat) }
        case .messages(let messages):
            let enc = try encoder(field + ".messages")
            meter.add(Self.bytes(of: messages))
            return try templated(field + ".messages") { () throws(TokenizerError) in try enc.chat(messages.map(Self.turn)) }
        }
    }

    /// Token ids of a score continuation (text tokenized on its own, no EOS; ids as they are).
    /// - Throws: `ServerError.refused` for messages: a conversational response is encoded with its
    ///   prompt (TRL's rule cuts the prompt to what the responses share), which a preference row
    ///   does and a score item, whose prompt is scored as given, does not.
    func continuation(_ r: Response, field: String) throws(ServerError) -> [Int32] {
        switch r {
        case .ids(let ids):
            return Edge.ids(ids)
        case .text(let t):
            let enc = try encoder(field + ".text")
            meter.add(t.utf8.count)
            return enc.response(text: t, appendEOS: false)
        case .messages:
            throw .invalid(field + ".messages", "conversational continuations are accepted in preference rows only; give the continuation as text or token ids")
        }
    }

    /// A preference row in token ids, by the row rule `selm train` uses
    /// (`PromptResponseEncoder.encode`; `chat` applies the template to a text prompt).
    func preferenceRow(_ row: PreferenceRow, chat: Bool, field: String) throws(ServerError) -> EncodedRow {
        func response(_ r: Response) -> TRLRow.Response {
            switch r {
            case .text(let t): return .text(t)
            case .ids(let ids): return .ids(Edge.ids(ids))
            case .messages(let m): return .messages(m.map(Self.turn))
            }
        }
        let prompt: TRLRow.Prompt
        var firstText: String? = nil   // the first text part's field, named when there is no tokenizer
        switch row.prompt {
        case .text(let t): prompt = .text(t); firstText = field + ".prompt.text"; meter.add(Self.bytes(of: t, chat: chat))
        case .messages(let m): prompt = .messages(m.map(Self.turn)); firstText = field + ".prompt.messages"; meter.add(Self.bytes(of: m))
        case .ids(let ids): prompt = .ids(Edge.ids(ids))
        }
        for (name, r) in [("chosen", row.chosen), ("rejected", row.rejected), ("reference", row.reference)] {
            switch r {
            case .text(let t)?: firstText = firstText ?? field + ".\(name).text"; meter.add(t.utf8.count)
            case .messages(let m)?: firstText = firstText ?? field + ".\(name).messages"; meter.add(Self.bytes(of: m))
            case .ids?, nil: break
            }
        }
        let trl = TRLRow(prompt: prompt, chosen: response(row.chosen), rejected: response(row.rejected),
                         reference: row.reference.map(response), weight: row.weight, source: row.source)
        if let (part, reason) = trl.conversationalResponseProblem {
            throw .invalid("\(field).\(part.rawValue).messages", reason)
        }
        if let encoded = trl.idsOnly { return encoded }   // no tokenizer needed
        let enc = try encoder(firstText ?? field)
        let templateField = prompt.isConversation ? field + ".prompt.messages" : "chat"
        return try templated(templateField) { () throws(TokenizerError) in try enc.encode(trl, textPromptsAsChat: chat) }
    }

    static func turn(_ m: Wire.ChatMessage) -> ChatTurn { ChatTurn(role: m.role, content: m.content) }

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

    /// Refuses a response whose text (a conversation's roles and contents together) cannot fit in the context.
    func checkLength(_ r: Response, field: String) throws(ServerError) {
        switch r {
        case .ids: return
        case .text(let text): try checkLength(text.utf8.count, field: field + ".text", limit: maxTextBytes)
        case .messages(let messages): try checkLength(Self.bytes(of: messages), field: field + ".messages", limit: maxTextBytes)
        }
    }

    private func checkLength(_ bytes: Int, field: String, limit: Int) throws(ServerError) {
        guard bytes > limit else { return }
        let why = limit == maxTextBytes
            ? "more than the context of \(contextLength) tokens can hold (at most \(limit) bytes, \(bundle.tokenizerIfAny?.maxBytesPerToken ?? 0) per token)"
            : "over the limit of \(limit) bytes"
        throw .refused(code: .outOfRange, field: field, reason: "\(bytes) bytes of text is \(why); refused before tokenizing")
    }

    /// UTF-8 bytes handed to the tokenizer for a text prompt (with `chat`, as the user turn's role and content).
    static func bytes(of text: String, chat: Bool) -> Int {
        text.utf8.count + (chat ? "user".utf8.count : 0)
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
            let enc = try encoder("text")
            meter.add(Self.bytes(of: text, chat: t.chat))
            if t.chat {
                ids = try templated("chat") { () throws(TokenizerError) in try enc.prompt(text: text, chat: true) }
            } else {
                ids = enc.tokenizer.encode(text, parseSpecial: t.addSpecial, addBOS: t.addSpecial && enc.tokenizer.addBOS)
            }
        case .messages(let messages):
            try checkLength(Self.bytes(of: messages), field: "messages", limit: maxTokenizeBytes)
            let enc = try encoder("messages")
            meter.add(Self.bytes(of: messages))
            ids = try templated("messages") { () throws(TokenizerError) in try enc.chat(messages.map(Self.turn)) }
        }
        return ids.map { UInt32(bitPattern: $0) }
    }

    /// The text of token ids (each checked against the vocabulary).
    func detokenize(_ ids: [UInt32]) throws(ServerError) -> String {
        let checkedIDs = try checked(ids, field: "ids")
        return try encoder("ids").tokenizer.decode(checkedIDs)
    }

    private func encoder(_ field: String) throws(ServerError) -> PromptResponseEncoder {
        guard let text else { throw .invalid(field, "the served model has no tokenizer: send token ids") }
        return text
    }

    /// Runs a templating encode, refusing a missing template as `field` (as before: "chat" for a
    /// text prompt with `chat`, the messages' path for a conversation).
    private func templated(_ field: String, _ body: () throws(TokenizerError) -> [Int32]) throws(ServerError) -> [Int32] {
        do { return try body() } catch { throw .invalid(field, "\(error)") }
    }

    private func templated(_ field: String, _ body: () throws(TokenizerError) -> EncodedRow) throws(ServerError) -> EncodedRow {
        do { return try body() } catch { throw .invalid(field, "\(error)") }
    }
}

/// A running total of bytes, added to from any thread (`PromptEncoder.meter`).
final class TokenizerMeter: Sendable {
    private let total = Atomic<UInt64>(0)
    func add(_ n: Int) { total.wrappingAdd(UInt64(n), ordering: .relaxed) }
    var bytes: UInt64 { total.load(ordering: .relaxed) }
}
