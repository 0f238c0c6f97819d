import Engine
import Learner
import Wire

/// The one translation between the wire and the engine and learner: a request message becomes the
/// engine's (or the learner's) own request type here, an engine event becomes a reply message here,
/// and an engine or learner error becomes a protocol error code here (one switch each). Nothing else
/// in the server converts between the two.
///
/// Validation, each rule once (see README, "Where requests are checked"):
/// - `Wire` checks the message shape at decode (required fields, lengths, value ranges the protocol
///   defines: n ≤ 64, top_p ∈ (0, 1], …).
/// - `PromptEncoder` bounds text by the context (bytes, before tokenizing) and tokenizes; it passes
///   token ids through unchecked.
/// - The engine checks everything about the model for Generate and Score (token ids against the
///   vocabulary, prompts and max_tokens against the context, the KV pool, versions), the learner's
///   `PreferencePair.validate` does so for preference rows; both name the wire's field paths and
///   say by their error's case which code applies.
///
/// Pure functions of their arguments; any thread (requests are built on libuv's pool, events are
/// mapped on the loop thread).
enum Edge {
    // MARK: Requests in

    /// A `GenerateRequest` as the engine's `GenerationRequest`: prompts tokenized (text bounded by
    /// the context first), every other field as sent (unset sampling fields take the engine's
    /// defaults).
    /// - Throws: `ServerError.refused` from the encoder (text too long, no tokenizer, no template).
    static func generationRequest(_ g: GenerateRequest, encoder: PromptEncoder) throws(ServerError) -> GenerationRequest {
        for (i, p) in g.prompts.enumerated() { try encoder.checkLength(p, field: "prompts[\(i)]") }
        var prompts: [[Int32]] = []
        prompts.reserveCapacity(g.prompts.count)
        for (i, p) in g.prompts.enumerated() { prompts.append(try encoder.prompt(p, chat: g.chat, field: "prompts[\(i)]")) }
        return GenerationRequest(
            prompts: prompts, params: settings(g.sampling), maxTokens: g.sampling.maxTokens.map { Int($0) }, n: Int(g.n),
            stop: g.stop, stopTokenIDs: ids(g.stopTokenIDs), ignoreEOS: g.ignoreEOS, topLogprobs: Int(g.topLogprobs),
            stream: g.stream, recompute: g.recompute, requireVersion: g.requireVersion)
    }

    /// A `ScoreRequest` as the engine's `ScoringRequest` (continuations given as text get no EOS).
    static func scoringRequest(_ s: ScoreRequest, encoder: PromptEncoder) throws(ServerError) -> ScoringRequest {
        for (i, item) in s.items.enumerated() {
            try encoder.checkLength(item.prompt, field: "items[\(i)].prompt")
            try encoder.checkLength(item.continuation, field: "items[\(i)].continuation")
        }
        var items: [ScoringItem] = []
        items.reserveCapacity(s.items.count)
        for (i, item) in s.items.enumerated() {
            items.append(ScoringItem(prompt: try encoder.prompt(item.prompt, chat: s.chat, field: "items[\(i)].prompt"),
                                     continuation: try encoder.continuation(item.continuation, field: "items[\(i)].continuation")))
        }
        return ScoringRequest(items: items, version: s.version, topLogprobs: Int(s.topLogprobs), entropy: s.entropy)
    }

    /// The rows of a `SubmitPreferences` as the learner's checked pairs, and their sources.
    /// - Throws: `ServerError.refused` naming `rows[i]…`: the encoder's refusals, and the pair's
    ///   own checks (`PreferencePair.validate`: empty parts, context, vocabulary, weight).
    static func preferenceBatch(_ p: SubmitPreferences, encoder: PromptEncoder) throws(ServerError) -> ([PreferencePair], [String]) {
        for (i, row) in p.rows.enumerated() {
            try encoder.checkLength(row.prompt, field: "rows[\(i)].prompt")
            try encoder.checkLength(row.chosen, field: "rows[\(i)].chosen")
            try encoder.checkLength(row.rejected, field: "rows[\(i)].rejected")
            if let r = row.reference { try encoder.checkLength(r, field: "rows[\(i)].reference") }
        }
        var pairs: [PreferencePair] = []
        pairs.reserveCapacity(p.rows.count)
        for (i, row) in p.rows.enumerated() {
            let field = "rows[\(i)]"
            let pair = PreferencePair(try encoder.preferenceRow(row, chat: p.chat, field: field), weight: row.weight)
            do {
                try pair.validate(vocabSize: encoder.vocabSize, contextLength: encoder.contextLength, at: field, idsField: { $0 + ".ids" })
            } catch {
                throw refusal(error, row: field)
            }
            pairs.append(pair)
        }
        return (pairs, p.rows.map(\.source))
    }

    /// The engine's sampler settings for the wire's (unset fields keep the engine's defaults).
    static func settings(_ s: SamplingParams) -> SamplerSettings {
        var p = SamplerSettings()
        if let v = s.temperature { p.temperature = v }
        if let v = s.topK { p.topK = Int(v) }
        if let v = s.topP { p.topP = v }
        if let v = s.minP { p.minP = v }
        if let v = s.repetitionPenalty { p.repetitionPenalty = v }
        if let v = s.presencePenalty { p.presencePenalty = v }
        if let v = s.frequencyPenalty { p.frequencyPenalty = v }
        p.seed = s.seed
        return p
    }

    /// Wire token ids (uint32) as the engine's (Int32, bit for bit: an id of 2^31 or more becomes
    /// negative, which the engine refuses as outside the vocabulary, naming it as sent).
    static func ids(_ a: [UInt32]) -> [Int32] { a.map { Int32(bitPattern: $0) } }

    // MARK: Events out

    /// The reply an engine event carries, nil for one that carries none (the first-token note, the
    /// empty closing chunk of a cancelled sample). `last` marks the event that ends the request.
    static func reply(_ e: EngineEvent) -> (message: ServerMessage?, last: Bool) {
        switch e {
        case .firstToken, .published:  // a publication is announced by `SelmServer.versionPublished`
            return (nil, false)
        case .chunk(let c):
            if c.tokens.isEmpty && c.textDelta.isEmpty { return (nil, false) }
            return (.generateChunk(GenerateChunk(
                promptIndex: UInt32(c.promptIndex), sampleIndex: UInt32(c.sampleIndex), tokenIDs: wire(c.tokens),
                textDelta: c.textDelta, logprobs: c.logprobs, topLogprobs: top(c.topLogprobs))), false)
        case .sample(let s):
            return (.sampleResult(sampleResult(s)), false)
        case .done(let d):
            return (.generateDone(GenerateDone(samples: UInt32(d.samples), promptTokens: UInt64(d.promptTokens),
                                               completionTokens: UInt64(d.completionTokens))), true)
        case .score(let r):
            return (.scoreReply(ScoreReply(
                items: r.items.map { ScoredItem(tokenIDs: wire($0.tokens), logprobs: $0.logprobs, totalLogprob: $0.totalLogprob,
                                                topLogprobs: top($0.topLogprobs), entropies: $0.entropies) },
                version: r.version)), true)
        case .error(_, let err):
            return (.error(refusal(err).errorReply), true)
        }
    }

    static func sampleResult(_ s: FinishedSample) -> SampleResult {
        let reason: FinishReason = switch s.finishReason {
        case .eos: .eos
        case .stop: .stop
        case .length: .length
        case .cancelled: .cancelled
        }
        return SampleResult(promptIndex: UInt32(s.promptIndex), sampleIndex: UInt32(s.sampleIndex), tokenIDs: wire(s.tokens),
                            text: s.text, logprobs: s.logprobs, topLogprobs: top(s.topLogprobs), finishReason: reason,
                            version: s.version, firstVersion: s.firstVersion, promptTokens: UInt32(s.promptTokens),
                            completionTokens: UInt32(s.completionTokens))
    }

    static func wire(_ a: [Int32]) -> [UInt32] { a.map { UInt32(bitPattern: $0) } }

    static func top(_ t: [[TokenLogprob]]) -> [TopLogprobs] {
        t.map { alts in TopLogprobs(tokenIDs: alts.map { UInt32(bitPattern: $0.id) }, logprobs: alts.map(\.logprob)) }
    }

    // MARK: Errors

    /// The client-facing refusal for an engine error: one case, one code. The engine names fields by
    /// their wire paths, so they pass through as they are.
    static func refusal(_ e: EngineError) -> ServerError {
        switch e {
        case let .invalidRequest(field, reason):
            return .refused(code: .invalidArgument, field: field, reason: reason)
        case let .outOfRange(field, reason):
            return .refused(code: .outOfRange, field: field, reason: reason)
        case let .exceedsKVPool(field, _, _, _):
            return .refused(code: .resourceExhausted, field: field, reason: e.description)
        case let .versionNotAlive(field, _, _):
            return .refused(code: .notFound, field: field, reason: e.description)
        case let .versionRetired(field, version, limit):
            return .refused(code: .notFound, field: field,
                            reason: "weight version \(version) was retired (live versions are limited to \(limit): selm serve --max-live-versions)")
        case .noChatTemplate:
            return .refused(code: .invalidArgument, field: "chat", reason: e.description)
        case .cancelled:
            return .refused(code: .cancelled, field: "", reason: e.description)
        case .stopped:
            return .refused(code: .unavailable, field: "", reason: "the server is shutting down")
        case .staleVersion, .incompatibleWeights, .invalidConfig, .forwardFailed:
            return .refused(code: .internal, field: "", reason: e.description)
        }
    }

    /// The client-facing refusal for a preference row the learner's checks refused (`row` is
    /// "rows[i]"; the learner's field is relative to the row).
    static func refusal(_ error: Error, row: String) -> ServerError {
        switch error as? LearnerError {
        case let .badRow(_, f, reason)?:
            return .invalid(f.isEmpty ? row : "\(row).\(f)", reason)
        case let .outOfRange(_, f, reason)?:
            return .refused(code: .outOfRange, field: f.isEmpty ? row : "\(row).\(f)", reason: reason)
        default:
            return .invalid(row, "\(error)")
        }
    }
}
