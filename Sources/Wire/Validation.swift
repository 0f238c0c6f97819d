// The semantic checks of requests: what a decoded request must satisfy beyond its protobuf shape
// (Proto/README.md, "What `Wire` checks when the server decodes a request"). Each rule is written
// once, on the type it is about; the generated decoder (Generated/Decode.swift) calls a request
// type's `validate(at:)` as soon as the value is built, with the value's field path ("" for the
// envelope's body, "prompts[2]", "rows[0].chosen"). What needs the model (token ranges, lengths
// against the context, live versions, checkpoint names) is the server's.
//
// The decoder itself refuses what the Swift types cannot hold (gen_wire.py rules 4, 8, 10): a
// `Prompt` / `Response` with no member set, a missing required message, a string with a NUL byte or
// ill-formed UTF-8. A request with several faults reports the first one met in decoding order:
// strings and nested messages as they are read, then the enclosing message's own rules.

/// A request field that is missing or invalid: its proto path and what is wrong.
struct FieldError: Error {
    var field: String
    var reason: String

    init(_ field: String, _ reason: String) {
        self.field = field
        self.reason = reason
    }
}

/// The path of field `name` of the message at `path` ("" = the envelope's body).
func fieldPath(_ path: String, _ name: String) -> String {
    path.isEmpty ? name : "\(path).\(name)"
}

extension GenerateRequest {
    /// Limit on `n` (inclusive).
    public static let maxSamplesPerPrompt: UInt32 = 64
    /// Limit on `topLogprobs` (inclusive), shared with `ScoreRequest`.
    public static let maxTopLogprobs: UInt32 = 20
}

// MARK: - Rules

extension Hello {
    mutating func validate(at path: String) throws(FieldError) {
        // Whether a non-zero version is supported is the server's call (ErrorCode.unsupportedVersion).
        guard protocolVersion != 0 else { throw FieldError(fieldPath(path, "protocol_version"), "is required") }
    }
}

extension GenerateRequest {
    /// Also turns the wire's `n` 0 into 1.
    mutating func validate(at path: String) throws(FieldError) {
        guard !prompts.isEmpty else { throw FieldError(fieldPath(path, "prompts"), "at least one prompt is required") }
        guard n <= Self.maxSamplesPerPrompt else {
            throw FieldError(fieldPath(path, "n"), "must be at most \(Self.maxSamplesPerPrompt) (got \(n))")
        }
        n = max(n, 1)
        try checkTopLogprobs(topLogprobs, at: path)
        for (i, s) in stop.enumerated() where s.isEmpty {
            throw FieldError("\(fieldPath(path, "stop"))[\(i)]", "must not be empty")
        }
    }
}

extension SamplingParams {
    mutating func validate(at path: String) throws(FieldError) {
        if let t = temperature, !(t.isFinite && t >= 0) {
            throw FieldError(fieldPath(path, "temperature"), "must be a finite number ≥ 0 (got \(t))")
        }
        if let p = topP, !(p > 0 && p <= 1) { throw FieldError(fieldPath(path, "top_p"), "must be in (0, 1] (got \(p))") }
        if let p = minP, !(p >= 0 && p <= 1) { throw FieldError(fieldPath(path, "min_p"), "must be in [0, 1] (got \(p))") }
        if let r = repetitionPenalty, !(r.isFinite && r > 0) {
            throw FieldError(fieldPath(path, "repetition_penalty"), "must be a finite number > 0 (got \(r))")
        }
        if let p = presencePenalty, !p.isFinite { throw FieldError(fieldPath(path, "presence_penalty"), "must be finite (got \(p))") }
        if let p = frequencyPenalty, !p.isFinite { throw FieldError(fieldPath(path, "frequency_penalty"), "must be finite (got \(p))") }
        if let m = maxTokens, m < 1 { throw FieldError(fieldPath(path, "max_tokens"), "must be at least 1") }
    }
}

extension Prompt {
    mutating func validate(at path: String) throws(FieldError) {
        switch self {
        case .text: break
        case .ids(let ids): if ids.isEmpty { throw FieldError(fieldPath(path, "ids"), "must not be empty") }
        case .messages(let list): try checkConversation(list, at: fieldPath(path, "messages"))
        }
    }
}

extension Response {
    mutating func validate(at path: String) throws(FieldError) {
        switch self {
        case .text(let t): if t.isEmpty { throw FieldError(fieldPath(path, "text"), "must not be empty") }
        case .ids(let ids): if ids.isEmpty { throw FieldError(fieldPath(path, "ids"), "must not be empty") }
        // Where a conversational response may stand (a preference row with a conversational
        // prompt, ending with the assistant's turn) is the server's check (TRLRow's rules).
        case .messages(let list): try checkConversation(list, at: fieldPath(path, "messages"))
        }
    }
}

extension ScoreRequest {
    mutating func validate(at path: String) throws(FieldError) {
        guard !items.isEmpty else { throw FieldError(fieldPath(path, "items"), "at least one item is required") }
        try checkTopLogprobs(topLogprobs, at: path)
    }
}

extension TokenizeRequest {
    mutating func validate(at path: String) throws(FieldError) {
        // No input at all is empty text (the decoder's rule 7), which is valid.
        if case .messages(let list) = input { try checkConversation(list, at: fieldPath(path, "messages")) }
    }
}

extension PreferenceRow {
    /// Also turns the wire's `weight` 0 into 1.
    mutating func validate(at path: String) throws(FieldError) {
        guard weight.isFinite, weight >= 0 else {
            throw FieldError(fieldPath(path, "weight"), "must be a finite number ≥ 0 (got \(weight))")
        }
        if weight == 0 { weight = 1 }
    }
}

extension SubmitPreferences {
    mutating func validate(at path: String) throws(FieldError) {
        guard !rows.isEmpty else { throw FieldError(fieldPath(path, "rows"), "at least one row is required") }
    }
}

extension RefreshWeights {
    mutating func validate(at path: String) throws(FieldError) {
        guard !checkpoint.isEmpty else { throw FieldError(fieldPath(path, "checkpoint"), "is required") }
        try checkRelativePath(checkpoint, at: fieldPath(path, "checkpoint"))
    }
}

extension SaveCheckpoint {
    /// Empty = an automatic name; the name rules themselves are the server's.
    mutating func validate(at path: String) throws(FieldError) {
        if !name.isEmpty { try checkRelativePath(name, at: fieldPath(path, "name")) }
    }
}

// Request types without rules of their own (a role is checked with its conversation, below).
extension FetchWeights {
    /// The default chunk size (the wire's 0).
    public static let defaultChunkBytes: UInt32 = 1 << 20
    /// The chunk sizes a server accepts (besides 0).
    public static let chunkBytesRange: ClosedRange<UInt32> = 4096...(8 << 20)
    /// Turns the wire's `chunk_bytes` 0 into `defaultChunkBytes` (the range is the server's check:
    /// it depends on its frame limit).
    mutating func validate(at path: String) throws(FieldError) {
        if chunkBytes == 0 { chunkBytes = Self.defaultChunkBytes }
    }
}

extension ChatMessage { mutating func validate(at path: String) throws(FieldError) {} }
extension ScoreItem { mutating func validate(at path: String) throws(FieldError) {} }
extension Cancel { mutating func validate(at path: String) throws(FieldError) {} }
extension DetokenizeRequest { mutating func validate(at path: String) throws(FieldError) {} }
extension StatusRequest { mutating func validate(at path: String) throws(FieldError) {} }
extension SubscribeVersions { mutating func validate(at path: String) throws(FieldError) {} }

// MARK: - Rules shared by several fields

/// A conversation (`path` names the `Messages` field; its list is `path.messages`): at least one
/// message, none with an empty role.
private func checkConversation(_ list: [ChatMessage], at path: String) throws(FieldError) {
    guard !list.isEmpty else { throw FieldError(fieldPath(path, "messages"), "at least one message is required") }
    for (j, message) in list.enumerated() where message.role.isEmpty {
        throw FieldError("\(fieldPath(path, "messages"))[\(j)].role", "must not be empty")
    }
}

/// `top_logprobs` of a generation or a score.
private func checkTopLogprobs(_ value: UInt32, at path: String) throws(FieldError) {
    guard value <= GenerateRequest.maxTopLogprobs else {
        throw FieldError(fieldPath(path, "top_logprobs"), "must be at most \(GenerateRequest.maxTopLogprobs) (got \(value))")
    }
}

/// A path the server resolves under its data directory: relative, without a ".." component.
private func checkRelativePath(_ path: String, at field: String) throws(FieldError) {
    if path.hasPrefix("/") { throw FieldError(field, "must be relative to the data directory") }
    if path.split(separator: "/").contains("..") { throw FieldError(field, "must not contain \"..\"") }
}

// MARK: - Requests built in memory

extension GenerateRequest {
    /// The checks the decoder applies to a decoded `GenerateRequest` — its prompts, its sampling
    /// parameters, then its own rules (`n` 0 becomes 1) — for a request built in memory rather than
    /// decoded: the server's OpenAI-compatible HTTP API builds one from JSON and checks it here, so
    /// each rule stays written once. Any thread.
    /// - Throws: `WireError.invalidField` (request id 0) naming the field by its proto path
    ///   ("sampling.top_p", "prompts[0].messages.messages[1].role").
    public mutating func check() throws(WireError) {
        do throws(FieldError) {
            for i in prompts.indices { try prompts[i].validate(at: "prompts[\(i)]") }
            try sampling.validate(at: "sampling")
            try validate(at: "")
        } catch {
            throw .invalidField(id: 0, field: error.field, reason: error.reason)
        }
    }
}
