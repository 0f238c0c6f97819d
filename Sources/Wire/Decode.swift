// protobuf-c structs → Swift values. Every unpacked envelope is freed with
// `selm__v1__envelope__free_unpacked` before the decode function returns, error or not.

internal import SelmProtoC
internal import CProtobufC

/// A request field that is missing or invalid: its proto path and what is wrong.
struct FieldError: Error {
    var field: String
    var reason: String

    init(_ field: String, _ reason: String) {
        self.field = field
        self.reason = reason
    }
}

/// Decoding of unpacked envelopes, with request validation for client messages.
enum Unpacked {
    /// The allocator protobuf-c unpacks and frees with; nil = malloc/free. A test hook (leak
    /// counting): set it only while no decode runs on any thread.
    nonisolated(unsafe) static var allocator: UnsafeMutablePointer<ProtobufCAllocator>? = nil

    static func decodeClient(_ bytes: UnsafeRawBufferPointer) throws(WireError) -> Envelope<ClientMessage> {
        let env = try unpack(bytes)
        defer { selm__v1__envelope__free_unpacked(env, allocator) }
        let e = env.pointee
        let number = UInt32(e.body_case.rawValue)
        if number == 0 { throw bodyless(env) }
        if number >= 40 { throw .unexpectedBody(id: e.id, body: bodyName(number)) }
        do throws(FieldError) {
            return Envelope(id: e.id, body: try clientBody(e))
        } catch {
            throw .invalidField(id: e.id, field: error.field, reason: error.reason)
        }
    }

    static func decodeServer(_ bytes: UnsafeRawBufferPointer) throws(WireError) -> Envelope<ServerMessage> {
        let env = try unpack(bytes)
        defer { selm__v1__envelope__free_unpacked(env, allocator) }
        let e = env.pointee
        let number = UInt32(e.body_case.rawValue)
        if number == 0 { throw bodyless(env) }
        guard let body = serverBody(e) else { throw .unexpectedBody(id: e.id, body: bodyName(number)) }
        return Envelope(id: e.id, body: body)
    }

    /// Unpacks an envelope (caller frees it) or throws `.malformed` with the id if readable.
    private static func unpack(_ bytes: UnsafeRawBufferPointer) throws(WireError) -> UnsafeMutablePointer<Selm__V1__Envelope> {
        guard let base = bytes.baseAddress, bytes.count > 0 else { throw .missingBody(id: 0) }
        guard let env = selm__v1__envelope__unpack(allocator, bytes.count, base.assumingMemoryBound(to: UInt8.self)) else {
            throw .malformed(id: scanEnvelopeID(bytes))
        }
        return env
    }

    /// The error for an envelope without a known body: an unknown field in the body range
    /// (≥ 10) means a body from a newer peer, otherwise there is no body at all.
    private static func bodyless(_ env: UnsafeMutablePointer<Selm__V1__Envelope>) -> WireError {
        let base = env.pointee.base
        for i in 0..<Int(base.n_unknown_fields) {
            let tag = base.unknown_fields[i].tag
            if tag >= 10 { return .unknownBody(id: env.pointee.id, fieldNumber: tag) }
        }
        return .missingBody(id: env.pointee.id)
    }

    /// The proto field name of an envelope body field, from the generated descriptor.
    static func bodyName(_ number: UInt32) -> String {
        knownBodyName(number) ?? "field \(number)"
    }

    /// The proto field name of envelope field `number`, nil when the descriptor has none.
    static func knownBodyName(_ number: UInt32) -> String? {
        withUnsafePointer(to: selm__v1__envelope__descriptor) { desc in
            guard let field = protobuf_c_message_descriptor_get_field(desc, number) else { return nil }
            return String(cString: field.pointee.name)
        }
    }

    // MARK: Client messages (validated)

    private static func clientBody(_ e: Selm__V1__Envelope) throws(FieldError) -> ClientMessage {
        switch e.body_case {
        case SELM__V1__ENVELOPE__BODY_HELLO:
            let m = e.hello!.pointee
            guard m.protocol_version != 0 else { throw FieldError("protocol_version", "is required") }
            return .hello(Hello(protocolVersion: m.protocol_version, authToken: try text(m.auth_token, "auth_token"),
                                clientName: try text(m.client_name, "client_name")))
        case SELM__V1__ENVELOPE__BODY_GENERATE:
            return .generate(try generateRequest(e.generate!.pointee))
        case SELM__V1__ENVELOPE__BODY_CANCEL:
            return .cancel(Cancel(targetID: e.cancel!.pointee.target_id))
        case SELM__V1__ENVELOPE__BODY_SCORE:
            return .score(try scoreRequest(e.score!.pointee))
        case SELM__V1__ENVELOPE__BODY_TOKENIZE:
            return .tokenize(try tokenizeRequest(e.tokenize!.pointee))
        case SELM__V1__ENVELOPE__BODY_DETOKENIZE:
            let m = e.detokenize!.pointee
            return .detokenize(DetokenizeRequest(ids: array(m.ids, m.n_ids)))
        case SELM__V1__ENVELOPE__BODY_SUBMIT_PREFERENCES:
            return .submitPreferences(try submitPreferences(e.submit_preferences!.pointee))
        case SELM__V1__ENVELOPE__BODY_STATUS:
            return .status(StatusRequest())
        case SELM__V1__ENVELOPE__BODY_REFRESH_WEIGHTS:
            let checkpoint = try text(e.refresh_weights!.pointee.checkpoint, "checkpoint")
            guard !checkpoint.isEmpty else { throw FieldError("checkpoint", "is required") }
            try checkRelativePath(checkpoint, field: "checkpoint")
            return .refreshWeights(RefreshWeights(checkpoint: checkpoint))
        case SELM__V1__ENVELOPE__BODY_SAVE_CHECKPOINT:
            let name = try text(e.save_checkpoint!.pointee.name, "name")
            if !name.isEmpty { try checkRelativePath(name, field: "name") }
            return .saveCheckpoint(SaveCheckpoint(name: name))
        case SELM__V1__ENVELOPE__BODY_SUBSCRIBE_VERSIONS:
            return .subscribeVersions(SubscribeVersions())
        default:
            // Unreachable: protobuf-c only sets body cases it knows, and the caller sorted out
            // server bodies. Reported as a field error rather than trapping.
            throw FieldError("body", "unexpected body case \(e.body_case.rawValue)")
        }
    }

    private static func generateRequest(_ m: Selm__V1__GenerateRequest) throws(FieldError) -> GenerateRequest {
        guard m.n_prompts > 0 else { throw FieldError("prompts", "at least one prompt is required") }
        var prompts: [Prompt] = []
        prompts.reserveCapacity(m.n_prompts)
        for i in 0..<m.n_prompts {
            prompts.append(try prompt(m.prompts[i], path: "prompts[\(i)]"))
        }
        let sampling = try samplingParams(m.sampling)
        guard m.n <= GenerateRequest.maxSamplesPerPrompt else {
            throw FieldError("n", "must be at most \(GenerateRequest.maxSamplesPerPrompt) (got \(m.n))")
        }
        guard m.top_logprobs <= GenerateRequest.maxTopLogprobs else {
            throw FieldError("top_logprobs", "must be at most \(GenerateRequest.maxTopLogprobs) (got \(m.top_logprobs))")
        }
        var stop: [String] = []
        stop.reserveCapacity(m.n_stop)
        for i in 0..<m.n_stop {
            let s = try text(m.stop[i], "stop[\(i)]")
            guard !s.isEmpty else { throw FieldError("stop[\(i)]", "must not be empty") }
            stop.append(s)
        }
        let requireVersion: UInt64? =
            m.optional_require_version_case == SELM__V1__GENERATE_REQUEST__OPTIONAL_REQUIRE_VERSION_REQUIRE_VERSION
            ? m.require_version : nil
        return GenerateRequest(
            prompts: prompts, chat: m.chat != 0, sampling: sampling, n: max(m.n, 1), stop: stop,
            stopTokenIDs: array(m.stop_token_ids, m.n_stop_token_ids), ignoreEOS: m.ignore_eos != 0,
            stream: m.stream != 0, topLogprobs: m.top_logprobs, requireVersion: requireVersion,
            recompute: m.recompute != 0)
    }

    private static func samplingParams(_ p: UnsafeMutablePointer<Selm__V1__SamplingParams>?) throws(FieldError) -> SamplingParams {
        guard let m = p?.pointee else { return SamplingParams() }
        var s = SamplingParams()
        if m.optional_temperature_case == SELM__V1__SAMPLING_PARAMS__OPTIONAL_TEMPERATURE_TEMPERATURE {
            guard m.temperature.isFinite, m.temperature >= 0 else {
                throw FieldError("sampling.temperature", "must be a finite number ≥ 0 (got \(m.temperature))")
            }
            s.temperature = m.temperature
        }
        if m.optional_top_k_case == SELM__V1__SAMPLING_PARAMS__OPTIONAL_TOP_K_TOP_K {
            s.topK = m.top_k
        }
        if m.optional_top_p_case == SELM__V1__SAMPLING_PARAMS__OPTIONAL_TOP_P_TOP_P {
            guard m.top_p > 0, m.top_p <= 1 else { throw FieldError("sampling.top_p", "must be in (0, 1] (got \(m.top_p))") }
            s.topP = m.top_p
        }
        if m.optional_min_p_case == SELM__V1__SAMPLING_PARAMS__OPTIONAL_MIN_P_MIN_P {
            guard m.min_p >= 0, m.min_p <= 1 else { throw FieldError("sampling.min_p", "must be in [0, 1] (got \(m.min_p))") }
            s.minP = m.min_p
        }
        if m.optional_repetition_penalty_case == SELM__V1__SAMPLING_PARAMS__OPTIONAL_REPETITION_PENALTY_REPETITION_PENALTY {
            guard m.repetition_penalty.isFinite, m.repetition_penalty > 0 else {
                throw FieldError("sampling.repetition_penalty", "must be a finite number > 0 (got \(m.repetition_penalty))")
            }
            s.repetitionPenalty = m.repetition_penalty
        }
        if m.optional_presence_penalty_case == SELM__V1__SAMPLING_PARAMS__OPTIONAL_PRESENCE_PENALTY_PRESENCE_PENALTY {
            guard m.presence_penalty.isFinite else {
                throw FieldError("sampling.presence_penalty", "must be finite (got \(m.presence_penalty))")
            }
            s.presencePenalty = m.presence_penalty
        }
        if m.optional_frequency_penalty_case == SELM__V1__SAMPLING_PARAMS__OPTIONAL_FREQUENCY_PENALTY_FREQUENCY_PENALTY {
            guard m.frequency_penalty.isFinite else {
                throw FieldError("sampling.frequency_penalty", "must be finite (got \(m.frequency_penalty))")
            }
            s.frequencyPenalty = m.frequency_penalty
        }
        if m.optional_seed_case == SELM__V1__SAMPLING_PARAMS__OPTIONAL_SEED_SEED {
            s.seed = m.seed
        }
        if m.optional_max_tokens_case == SELM__V1__SAMPLING_PARAMS__OPTIONAL_MAX_TOKENS_MAX_TOKENS {
            guard m.max_tokens >= 1 else { throw FieldError("sampling.max_tokens", "must be at least 1") }
            s.maxTokens = m.max_tokens
        }
        return s
    }

    private static func scoreRequest(_ m: Selm__V1__ScoreRequest) throws(FieldError) -> ScoreRequest {
        guard m.n_items > 0 else { throw FieldError("items", "at least one item is required") }
        var items: [ScoreItem] = []
        items.reserveCapacity(m.n_items)
        for i in 0..<m.n_items {
            let item = m.items[i]!.pointee
            let prompt = try required(item.prompt, "items[\(i)].prompt") { p throws(FieldError) in
                try Unpacked.prompt(p, path: "items[\(i)].prompt")
            }
            let continuation = try required(item.continuation, "items[\(i)].continuation") { p throws(FieldError) in
                try response(p, path: "items[\(i)].continuation")
            }
            items.append(ScoreItem(prompt: prompt, continuation: continuation))
        }
        guard m.top_logprobs <= GenerateRequest.maxTopLogprobs else {
            throw FieldError("top_logprobs", "must be at most \(GenerateRequest.maxTopLogprobs) (got \(m.top_logprobs))")
        }
        let version: UInt64? = m.optional_version_case == SELM__V1__SCORE_REQUEST__OPTIONAL_VERSION_VERSION ? m.version : nil
        return ScoreRequest(items: items, chat: m.chat != 0, version: version, topLogprobs: m.top_logprobs)
    }

    private static func tokenizeRequest(_ m: Selm__V1__TokenizeRequest) throws(FieldError) -> TokenizeRequest {
        let input: TokenizeRequest.Input
        switch m.input_case {
        case SELM__V1__TOKENIZE_REQUEST__INPUT_MESSAGES:
            input = .messages(try messages(m.messages, path: "messages"))
        case SELM__V1__TOKENIZE_REQUEST__INPUT_TEXT:
            input = .text(try text(m.text, "text"))
        default:
            input = .text("")
        }
        return TokenizeRequest(input: input, addSpecial: m.add_special != 0, chat: m.chat != 0)
    }

    private static func submitPreferences(_ m: Selm__V1__SubmitPreferences) throws(FieldError) -> SubmitPreferences {
        guard m.n_rows > 0 else { throw FieldError("rows", "at least one row is required") }
        var rows: [PreferenceRow] = []
        rows.reserveCapacity(m.n_rows)
        for i in 0..<m.n_rows {
            let row = m.rows[i]!.pointee
            let path = "rows[\(i)]"
            let prompt = try required(row.prompt, "\(path).prompt") { p throws(FieldError) in
                try Unpacked.prompt(p, path: "\(path).prompt")
            }
            let chosen = try required(row.chosen, "\(path).chosen") { p throws(FieldError) in
                try response(p, path: "\(path).chosen")
            }
            let rejected = try required(row.rejected, "\(path).rejected") { p throws(FieldError) in
                try response(p, path: "\(path).rejected")
            }
            var reference: Response? = nil
            if let r = row.reference { reference = try response(r, path: "\(path).reference") }
            guard row.weight.isFinite, row.weight >= 0 else {
                throw FieldError("\(path).weight", "must be a finite number ≥ 0 (got \(row.weight))")
            }
            rows.append(PreferenceRow(prompt: prompt, chosen: chosen, rejected: rejected, reference: reference,
                                      weight: row.weight == 0 ? 1 : row.weight, source: try text(row.source, "\(path).source")))
        }
        return SubmitPreferences(rows: rows, chat: m.chat != 0)
    }

    // MARK: Validated building blocks

    private static func required<T, R>(_ p: UnsafeMutablePointer<T>?, _ path: String,
                                       _ body: (UnsafeMutablePointer<T>) throws(FieldError) -> R) throws(FieldError) -> R {
        guard let p else { throw FieldError(path, "is required") }
        return try body(p)
    }

    private static func prompt(_ p: UnsafeMutablePointer<Selm__V1__Prompt>?, path: String) throws(FieldError) -> Prompt {
        guard let m = p?.pointee else { throw FieldError(path, "is required") }
        switch m.kind_case {
        case SELM__V1__PROMPT__KIND_TEXT:
            return .text(try text(m.text, "\(path).text"))
        case SELM__V1__PROMPT__KIND_IDS:
            let ids = m.ids.map { array($0.pointee.ids, $0.pointee.n_ids) } ?? []
            guard !ids.isEmpty else { throw FieldError("\(path).ids", "must not be empty") }
            return .ids(ids)
        case SELM__V1__PROMPT__KIND_MESSAGES:
            return .messages(try messages(m.messages, path: "\(path).messages"))
        default:
            throw FieldError(path, "one of text, ids, messages is required")
        }
    }

    private static func response(_ p: UnsafeMutablePointer<Selm__V1__Response>, path: String) throws(FieldError) -> Response {
        let m = p.pointee
        switch m.kind_case {
        case SELM__V1__RESPONSE__KIND_TEXT:
            let t = try text(m.text, "\(path).text")
            guard !t.isEmpty else { throw FieldError("\(path).text", "must not be empty") }
            return .text(t)
        case SELM__V1__RESPONSE__KIND_IDS:
            let ids = m.ids.map { array($0.pointee.ids, $0.pointee.n_ids) } ?? []
            guard !ids.isEmpty else { throw FieldError("\(path).ids", "must not be empty") }
            return .ids(ids)
        default:
            throw FieldError(path, "one of text, ids is required")
        }
    }

    /// A conversation; `path` names the `Messages` field, its list is `path.messages`.
    private static func messages(_ p: UnsafeMutablePointer<Selm__V1__Messages>?, path: String) throws(FieldError) -> [ChatMessage] {
        let list = try chatMessages(p, path: path)
        guard !list.isEmpty else { throw FieldError("\(path).messages", "at least one message is required") }
        for (j, message) in list.enumerated() where message.role.isEmpty {
            throw FieldError("\(path).messages[\(j)].role", "must not be empty")
        }
        return list
    }

    private static func checkRelativePath(_ path: String, field: String) throws(FieldError) {
        if path.hasPrefix("/") { throw FieldError(field, "must be relative to the data directory") }
        if path.split(separator: "/").contains("..") { throw FieldError(field, "must not contain \"..\"") }
    }

    // MARK: Server messages (not validated)

    private static func serverBody(_ e: Selm__V1__Envelope) -> ServerMessage? {
        switch e.body_case {
        case SELM__V1__ENVELOPE__BODY_ERROR:
            let m = e.error!.pointee
            return .error(ErrorReply(code: ErrorCode(rawValue: Int32(bitPattern: m.code.rawValue)),
                                     message: string(m.message), field: string(m.field)))
        case SELM__V1__ENVELOPE__BODY_HELLO_REPLY:
            let m = e.hello_reply!.pointee
            return .helloReply(HelloReply(
                protocolVersion: m.protocol_version, serverVersion: string(m.server_version),
                modelName: string(m.model_name), modelPath: string(m.model_path), policyVersion: m.policy_version,
                vocabSize: m.vocab_size, contextLength: m.context_length, chatTemplate: string(m.chat_template),
                maxFrameBytes: m.max_frame_bytes))
        case SELM__V1__ENVELOPE__BODY_GENERATE_CHUNK:
            let m = e.generate_chunk!.pointee
            return .generateChunk(GenerateChunk(
                promptIndex: m.prompt_index, sampleIndex: m.sample_index, tokenIDs: array(m.token_ids, m.n_token_ids),
                textDelta: string(m.text_delta), logprobs: array(m.logprobs, m.n_logprobs),
                topLogprobs: topLogprobs(m.top_logprobs, m.n_top_logprobs)))
        case SELM__V1__ENVELOPE__BODY_SAMPLE_RESULT:
            let m = e.sample_result!.pointee
            return .sampleResult(SampleResult(
                promptIndex: m.prompt_index, sampleIndex: m.sample_index, tokenIDs: array(m.token_ids, m.n_token_ids),
                text: string(m.text), logprobs: array(m.logprobs, m.n_logprobs),
                topLogprobs: topLogprobs(m.top_logprobs, m.n_top_logprobs),
                finishReason: FinishReason(rawValue: Int32(bitPattern: m.finish_reason.rawValue)), version: m.version,
                firstVersion: m.first_version, promptTokens: m.prompt_tokens, completionTokens: m.completion_tokens))
        case SELM__V1__ENVELOPE__BODY_GENERATE_DONE:
            let m = e.generate_done!.pointee
            return .generateDone(GenerateDone(samples: m.samples, promptTokens: m.prompt_tokens,
                                              completionTokens: m.completion_tokens))
        case SELM__V1__ENVELOPE__BODY_CANCEL_REPLY:
            return .cancelReply(CancelReply(found: e.cancel_reply!.pointee.found != 0))
        case SELM__V1__ENVELOPE__BODY_SCORE_REPLY:
            let m = e.score_reply!.pointee
            var items: [ScoredItem] = []
            items.reserveCapacity(m.n_items)
            for i in 0..<m.n_items {
                let item = m.items[i]!.pointee
                items.append(ScoredItem(tokenIDs: array(item.token_ids, item.n_token_ids),
                                        logprobs: array(item.logprobs, item.n_logprobs),
                                        totalLogprob: item.total_logprob,
                                        topLogprobs: topLogprobs(item.top_logprobs, item.n_top_logprobs)))
            }
            return .scoreReply(ScoreReply(items: items, version: m.version))
        case SELM__V1__ENVELOPE__BODY_TOKENIZE_REPLY:
            let m = e.tokenize_reply!.pointee
            return .tokenizeReply(TokenizeReply(ids: array(m.ids, m.n_ids)))
        case SELM__V1__ENVELOPE__BODY_DETOKENIZE_REPLY:
            return .detokenizeReply(DetokenizeReply(text: string(e.detokenize_reply!.pointee.text)))
        case SELM__V1__ENVELOPE__BODY_PREFERENCE_ACK:
            let m = e.preference_ack!.pointee
            return .preferenceAck(PreferenceAck(firstSequence: m.first_sequence, lastSequence: m.last_sequence, rows: m.rows))
        case SELM__V1__ENVELOPE__BODY_STATUS_REPLY:
            let m = e.status_reply!.pointee
            var metrics: [String: Double] = [:]
            for i in 0..<m.n_learner_metrics {
                let entry = m.learner_metrics[i]!.pointee
                metrics[cString(entry.key)] = entry.value
            }
            return .statusReply(StatusReply(
                policyVersion: m.policy_version, learnerStep: m.learner_step, learnerMetrics: metrics,
                walLastSequence: m.wal_last_sequence, walConsumedSequence: m.wal_consumed_sequence,
                waitingRequests: m.waiting_requests, runningSequences: m.running_sequences,
                kvBlocksUsed: m.kv_blocks_used, kvBlocksTotal: m.kv_blocks_total,
                generatedTokensPerSecond: m.generated_tokens_per_second, uptimeSeconds: m.uptime_seconds,
                liveVersions: m.live_versions, connections: m.connections,
                dataDirBytes: m.data_dir_bytes, diskFreeBytes: m.disk_free_bytes, checkpoints: m.checkpoints))
        case SELM__V1__ENVELOPE__BODY_REFRESH_WEIGHTS_REPLY:
            return .refreshWeightsReply(RefreshWeightsReply(version: e.refresh_weights_reply!.pointee.version))
        case SELM__V1__ENVELOPE__BODY_SAVE_CHECKPOINT_REPLY:
            let m = e.save_checkpoint_reply!.pointee
            return .saveCheckpointReply(SaveCheckpointReply(path: string(m.path), learnerStep: m.learner_step,
                                                            walSequence: m.wal_sequence, version: m.version))
        case SELM__V1__ENVELOPE__BODY_VERSION_EVENT:
            let m = e.version_event!.pointee
            var metrics: [String: Double] = [:]
            for i in 0..<m.n_metrics {
                let entry = m.metrics[i]!.pointee
                metrics[cString(entry.key)] = entry.value
            }
            return .versionEvent(VersionEvent(version: m.version, learnerStep: m.learner_step, metrics: metrics,
                                              unixTime: m.unix_time))
        default:
            return nil
        }
    }

    private static func topLogprobs(_ list: UnsafeMutablePointer<UnsafeMutablePointer<Selm__V1__TopLogprobs>?>?,
                                    _ count: Int) -> [TopLogprobs] {
        guard let list, count > 0 else { return [] }
        return (0..<count).map { i in
            let t = list[i]!.pointee
            return TopLogprobs(tokenIDs: array(t.token_ids, t.n_token_ids), logprobs: array(t.logprobs, t.n_logprobs))
        }
    }

    private static func chatMessages(_ p: UnsafeMutablePointer<Selm__V1__Messages>?, path: String) throws(FieldError) -> [ChatMessage] {
        guard let m = p?.pointee, m.n_messages > 0 else { return [] }
        var list: [ChatMessage] = []
        list.reserveCapacity(m.n_messages)
        for i in 0..<m.n_messages {
            let message = m.messages[i]!.pointee
            list.append(ChatMessage(role: try text(message.role, "\(path).messages[\(i)].role"),
                                    content: try text(message.content, "\(path).messages[\(i)].content")))
        }
        return list
    }
}

// MARK: - Helpers

/// A request's string field (a protobuf-c `bytes`, see scripts/gen_proto.sh) as Swift, exactly: a
/// value holding a NUL byte (which C code, file names and the auth check would cut) or ill-formed
/// UTF-8 (which protobuf requires of `string`) is refused naming `field`.
private func text(_ b: ProtobufCBinaryData, _ field: @autoclosure () -> String) throws(FieldError) -> String {
    guard b.len > 0, let data = b.data else { return "" }
    let bytes = UnsafeBufferPointer(start: data, count: b.len)
    if let nul = bytes.firstIndex(of: 0) {
        throw FieldError(field(), "contains a NUL byte (at byte \(nul)); strings must not contain U+0000")
    }
    guard let s = String(validating: bytes, as: UTF8.self) else {
        throw FieldError(field(), "is not valid UTF-8")
    }
    return s
}

/// A reply's string field as Swift, NULs kept, ill-formed UTF-8 repaired with U+FFFD (replies are
/// not validated).
@inline(__always)
private func string(_ b: ProtobufCBinaryData) -> String {
    guard b.len > 0, let data = b.data else { return "" }
    return String(decoding: UnsafeBufferPointer(start: data, count: b.len), as: UTF8.self)
}

/// A map key (the only C string left in the generated code); NULL → "".
@inline(__always)
private func cString(_ p: UnsafeMutablePointer<CChar>?) -> String {
    guard let p else { return "" }
    return String(cString: p)
}

/// A copy of a protobuf-c repeated scalar field.
@inline(__always)
private func array<T>(_ p: UnsafeMutablePointer<T>?, _ count: Int) -> [T] {
    guard let p, count > 0 else { return [] }
    return Array(UnsafeBufferPointer(start: p, count: count))
}

/// Reads the top-level field 1 (the envelope id, a varint) from bytes protobuf-c refused, stopping
/// at the first damaged field; nil when no id precedes the damage. The last occurrence wins, as in
/// protobuf.
func scanEnvelopeID(_ bytes: UnsafeRawBufferPointer) -> UInt64? {
    scanEnvelope(bytes).id
}

/// The envelope id (field 1) and the number of the last length-delimited field ≥ 10 (the body)
/// found in possibly damaged envelope bytes, reading fields until the first damaged one. A body
/// field whose key is intact counts even when its length or contents are damaged.
func scanEnvelope(_ bytes: UnsafeRawBufferPointer) -> (id: UInt64?, body: UInt32?) {
    let n = bytes.count
    var i = 0
    var id: UInt64? = nil
    var body: UInt32? = nil

    func varint() -> UInt64? {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while i < n, shift < 64 {
            let b = bytes[i]
            i += 1
            value |= UInt64(b & 0x7f) << shift
            if b & 0x80 == 0 { return value }
            shift += 7
        }
        return nil
    }

    scan: while i < n {
        guard let key = varint(), key >> 3 != 0 else { break }
        switch key & 7 {
        case 0:
            guard let v = varint() else { break scan }
            if key >> 3 == 1 { id = v }
        case 1:
            guard n - i >= 8 else { break scan }
            i += 8
        case 2:
            if key >> 3 >= 10, key >> 3 <= UInt64(UInt32.max) { body = UInt32(key >> 3) }
            guard let length = varint(), length <= UInt64(n - i) else { break scan }
            i += Int(length)
        case 5:
            guard n - i >= 4 else { break scan }
            i += 4
        default:
            break scan
        }
    }
    return (id, body)
}
