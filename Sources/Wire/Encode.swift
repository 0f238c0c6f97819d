// Swift values → protobuf-c structs, built in an arena that lives until the envelope is packed.

internal import SelmProtoC
internal import CProtobufC

/// A bump allocator holding every protobuf-c struct, array and string of one envelope being
/// encoded; everything is freed at once when the arena is released.
final class Arena {
    private static let chunkSize = 4096
    private var blocks: [UnsafeMutableRawPointer] = []
    private var cursor: UnsafeMutableRawPointer? = nil
    private var remaining = 0

    deinit {
        for block in blocks { block.deallocate() }
    }

    /// `byteCount` uninitialised bytes aligned to `alignment` (≤ 16).
    private func raw(_ byteCount: Int, alignment: Int) -> UnsafeMutableRawPointer {
        if let c = cursor {
            let pad = (alignment - Int(bitPattern: c) & (alignment - 1)) & (alignment - 1)
            if pad + byteCount <= remaining {
                let p = c + pad
                cursor = p + byteCount
                remaining -= pad + byteCount
                return p
            }
        }
        if byteCount > Self.chunkSize / 4 {
            let p = UnsafeMutableRawPointer.allocate(byteCount: byteCount, alignment: 16)
            blocks.append(p)
            return p
        }
        let c = UnsafeMutableRawPointer.allocate(byteCount: Self.chunkSize, alignment: 16)
        blocks.append(c)
        cursor = c + byteCount
        remaining = Self.chunkSize - byteCount
        return c
    }

    /// Room for one `T`, uninitialised (initialise it with the generated `*__init`).
    func new<T>(_: T.Type) -> UnsafeMutablePointer<T> {
        raw(MemoryLayout<T>.stride, alignment: MemoryLayout<T>.alignment).bindMemory(to: T.self, capacity: 1)
    }

    /// A copy of `values` (trivial element types only), or nil when empty.
    func array<T: BitwiseCopyable>(_ values: [T]) -> UnsafeMutablePointer<T>? {
        if values.isEmpty { return nil }
        let p = raw(MemoryLayout<T>.stride * values.count, alignment: MemoryLayout<T>.alignment)
            .bindMemory(to: T.self, capacity: values.count)
        values.withUnsafeBufferPointer { p.initialize(from: $0.baseAddress!, count: $0.count) }
        return p
    }

    /// An array of `count` message pointers filled by `make`, or nil when `count` is 0.
    func pointers<T, E>(_ elements: [E], _ make: (E) -> UnsafeMutablePointer<T>) -> UnsafeMutablePointer<UnsafeMutablePointer<T>?>? {
        if elements.isEmpty { return nil }
        let p = raw(MemoryLayout<UnsafeMutablePointer<T>?>.stride * elements.count,
                    alignment: MemoryLayout<UnsafeMutablePointer<T>?>.alignment)
            .bindMemory(to: UnsafeMutablePointer<T>?.self, capacity: elements.count)
        for (i, e) in elements.enumerated() { (p + i).initialize(to: make(e)) }
        return p
    }

    /// A copy of `string`'s UTF-8 as a protobuf-c `bytes` value (every string field of the generated
    /// C code is `bytes`, see scripts/gen_proto.sh): the exact length travels, NULs included.
    func string(_ string: String) -> ProtobufCBinaryData {
        var s = string
        return s.withUTF8 { utf8 in
            guard let base = utf8.baseAddress, utf8.count > 0 else { return ProtobufCBinaryData(len: 0, data: nil) }
            let p = raw(utf8.count, alignment: 1).bindMemory(to: UInt8.self, capacity: utf8.count)
            UnsafeMutableRawPointer(p).copyMemory(from: base, byteCount: utf8.count)
            return ProtobufCBinaryData(len: utf8.count, data: p)
        }
    }

    /// A NUL-terminated copy of `string`'s UTF-8, for map keys (the one `string` left in the C code;
    /// a key is cut at a NUL — the server's metric names have none).
    func cString(_ string: String) -> UnsafeMutablePointer<CChar> {
        var s = string
        return s.withUTF8 { utf8 in
            let p = raw(utf8.count + 1, alignment: 1).bindMemory(to: CChar.self, capacity: utf8.count + 1)
            if let base = utf8.baseAddress {
                UnsafeMutableRawPointer(p).copyMemory(from: base, byteCount: utf8.count)
            }
            p[utf8.count] = 0
            return p
        }
    }

    // MARK: Envelope

    func envelope(_ e: Envelope<ClientMessage>) -> UnsafeMutablePointer<Selm__V1__Envelope> {
        let env = new(Selm__V1__Envelope.self)
        selm__v1__envelope__init(env)
        env.pointee.id = e.id
        switch e.body {
        case .hello(let m):
            env.pointee.body_case = SELM__V1__ENVELOPE__BODY_HELLO
            env.pointee.hello = hello(m)
        case .generate(let m):
            env.pointee.body_case = SELM__V1__ENVELOPE__BODY_GENERATE
            env.pointee.generate = generateRequest(m)
        case .cancel(let m):
            env.pointee.body_case = SELM__V1__ENVELOPE__BODY_CANCEL
            let p = new(Selm__V1__Cancel.self)
            selm__v1__cancel__init(p)
            p.pointee.target_id = m.targetID
            env.pointee.cancel = p
        case .score(let m):
            env.pointee.body_case = SELM__V1__ENVELOPE__BODY_SCORE
            env.pointee.score = scoreRequest(m)
        case .tokenize(let m):
            env.pointee.body_case = SELM__V1__ENVELOPE__BODY_TOKENIZE
            env.pointee.tokenize = tokenizeRequest(m)
        case .detokenize(let m):
            env.pointee.body_case = SELM__V1__ENVELOPE__BODY_DETOKENIZE
            let p = new(Selm__V1__DetokenizeRequest.self)
            selm__v1__detokenize_request__init(p)
            p.pointee.n_ids = m.ids.count
            p.pointee.ids = array(m.ids)
            env.pointee.detokenize = p
        case .submitPreferences(let m):
            env.pointee.body_case = SELM__V1__ENVELOPE__BODY_SUBMIT_PREFERENCES
            env.pointee.submit_preferences = submitPreferences(m)
        case .status:
            env.pointee.body_case = SELM__V1__ENVELOPE__BODY_STATUS
            let p = new(Selm__V1__StatusRequest.self)
            selm__v1__status_request__init(p)
            env.pointee.status = p
        case .refreshWeights(let m):
            env.pointee.body_case = SELM__V1__ENVELOPE__BODY_REFRESH_WEIGHTS
            let p = new(Selm__V1__RefreshWeights.self)
            selm__v1__refresh_weights__init(p)
            p.pointee.checkpoint = string(m.checkpoint)
            env.pointee.refresh_weights = p
        case .saveCheckpoint(let m):
            env.pointee.body_case = SELM__V1__ENVELOPE__BODY_SAVE_CHECKPOINT
            let p = new(Selm__V1__SaveCheckpoint.self)
            selm__v1__save_checkpoint__init(p)
            p.pointee.name = string(m.name)
            env.pointee.save_checkpoint = p
        case .subscribeVersions:
            env.pointee.body_case = SELM__V1__ENVELOPE__BODY_SUBSCRIBE_VERSIONS
            let p = new(Selm__V1__SubscribeVersions.self)
            selm__v1__subscribe_versions__init(p)
            env.pointee.subscribe_versions = p
        }
        return env
    }

    func envelope(_ e: Envelope<ServerMessage>) -> UnsafeMutablePointer<Selm__V1__Envelope> {
        let env = new(Selm__V1__Envelope.self)
        selm__v1__envelope__init(env)
        env.pointee.id = e.id
        switch e.body {
        case .error(let m):
            env.pointee.body_case = SELM__V1__ENVELOPE__BODY_ERROR
            let p = new(Selm__V1__Error.self)
            selm__v1__error__init(p)
            p.pointee.code = Selm__V1__ErrorCode(rawValue: UInt32(bitPattern: m.code.rawValue))
            p.pointee.message = string(m.message)
            p.pointee.field = string(m.field)
            env.pointee.error = p
        case .helloReply(let m):
            env.pointee.body_case = SELM__V1__ENVELOPE__BODY_HELLO_REPLY
            env.pointee.hello_reply = helloReply(m)
        case .generateChunk(let m):
            env.pointee.body_case = SELM__V1__ENVELOPE__BODY_GENERATE_CHUNK
            env.pointee.generate_chunk = generateChunk(m)
        case .sampleResult(let m):
            env.pointee.body_case = SELM__V1__ENVELOPE__BODY_SAMPLE_RESULT
            env.pointee.sample_result = sampleResult(m)
        case .generateDone(let m):
            env.pointee.body_case = SELM__V1__ENVELOPE__BODY_GENERATE_DONE
            let p = new(Selm__V1__GenerateDone.self)
            selm__v1__generate_done__init(p)
            p.pointee.samples = m.samples
            p.pointee.prompt_tokens = m.promptTokens
            p.pointee.completion_tokens = m.completionTokens
            env.pointee.generate_done = p
        case .cancelReply(let m):
            env.pointee.body_case = SELM__V1__ENVELOPE__BODY_CANCEL_REPLY
            let p = new(Selm__V1__CancelReply.self)
            selm__v1__cancel_reply__init(p)
            p.pointee.found = m.found ? 1 : 0
            env.pointee.cancel_reply = p
        case .scoreReply(let m):
            env.pointee.body_case = SELM__V1__ENVELOPE__BODY_SCORE_REPLY
            env.pointee.score_reply = scoreReply(m)
        case .tokenizeReply(let m):
            env.pointee.body_case = SELM__V1__ENVELOPE__BODY_TOKENIZE_REPLY
            let p = new(Selm__V1__TokenizeReply.self)
            selm__v1__tokenize_reply__init(p)
            p.pointee.n_ids = m.ids.count
            p.pointee.ids = array(m.ids)
            env.pointee.tokenize_reply = p
        case .detokenizeReply(let m):
            env.pointee.body_case = SELM__V1__ENVELOPE__BODY_DETOKENIZE_REPLY
            let p = new(Selm__V1__DetokenizeReply.self)
            selm__v1__detokenize_reply__init(p)
            p.pointee.text = string(m.text)
            env.pointee.detokenize_reply = p
        case .preferenceAck(let m):
            env.pointee.body_case = SELM__V1__ENVELOPE__BODY_PREFERENCE_ACK
            let p = new(Selm__V1__PreferenceAck.self)
            selm__v1__preference_ack__init(p)
            p.pointee.first_sequence = m.firstSequence
            p.pointee.last_sequence = m.lastSequence
            p.pointee.rows = m.rows
            env.pointee.preference_ack = p
        case .statusReply(let m):
            env.pointee.body_case = SELM__V1__ENVELOPE__BODY_STATUS_REPLY
            env.pointee.status_reply = statusReply(m)
        case .refreshWeightsReply(let m):
            env.pointee.body_case = SELM__V1__ENVELOPE__BODY_REFRESH_WEIGHTS_REPLY
            let p = new(Selm__V1__RefreshWeightsReply.self)
            selm__v1__refresh_weights_reply__init(p)
            p.pointee.version = m.version
            env.pointee.refresh_weights_reply = p
        case .saveCheckpointReply(let m):
            env.pointee.body_case = SELM__V1__ENVELOPE__BODY_SAVE_CHECKPOINT_REPLY
            let p = new(Selm__V1__SaveCheckpointReply.self)
            selm__v1__save_checkpoint_reply__init(p)
            p.pointee.path = string(m.path)
            p.pointee.learner_step = m.learnerStep
            p.pointee.wal_sequence = m.walSequence
            p.pointee.version = m.version
            env.pointee.save_checkpoint_reply = p
        case .versionEvent(let m):
            env.pointee.body_case = SELM__V1__ENVELOPE__BODY_VERSION_EVENT
            env.pointee.version_event = versionEvent(m)
        }
        return env
    }

    // MARK: Building blocks

    func tokenIDs(_ ids: [UInt32]) -> UnsafeMutablePointer<Selm__V1__TokenIds> {
        let p = new(Selm__V1__TokenIds.self)
        selm__v1__token_ids__init(p)
        p.pointee.n_ids = ids.count
        p.pointee.ids = array(ids)
        return p
    }

    func messages(_ messages: [ChatMessage]) -> UnsafeMutablePointer<Selm__V1__Messages> {
        let p = new(Selm__V1__Messages.self)
        selm__v1__messages__init(p)
        p.pointee.n_messages = messages.count
        p.pointee.messages = pointers(messages) { m in
            let q = new(Selm__V1__ChatMessage.self)
            selm__v1__chat_message__init(q)
            q.pointee.role = string(m.role)
            q.pointee.content = string(m.content)
            return q
        }
        return p
    }

    func prompt(_ prompt: Prompt) -> UnsafeMutablePointer<Selm__V1__Prompt> {
        let p = new(Selm__V1__Prompt.self)
        selm__v1__prompt__init(p)
        switch prompt {
        case .text(let text):
            p.pointee.kind_case = SELM__V1__PROMPT__KIND_TEXT
            p.pointee.text = string(text)
        case .ids(let ids):
            p.pointee.kind_case = SELM__V1__PROMPT__KIND_IDS
            p.pointee.ids = tokenIDs(ids)
        case .messages(let list):
            p.pointee.kind_case = SELM__V1__PROMPT__KIND_MESSAGES
            p.pointee.messages = messages(list)
        }
        return p
    }

    func response(_ response: Response) -> UnsafeMutablePointer<Selm__V1__Response> {
        let p = new(Selm__V1__Response.self)
        selm__v1__response__init(p)
        switch response {
        case .text(let text):
            p.pointee.kind_case = SELM__V1__RESPONSE__KIND_TEXT
            p.pointee.text = string(text)
        case .ids(let ids):
            p.pointee.kind_case = SELM__V1__RESPONSE__KIND_IDS
            p.pointee.ids = tokenIDs(ids)
        }
        return p
    }

    func topLogprobs(_ list: [TopLogprobs]) -> UnsafeMutablePointer<UnsafeMutablePointer<Selm__V1__TopLogprobs>?>? {
        pointers(list) { t in
            let p = new(Selm__V1__TopLogprobs.self)
            selm__v1__top_logprobs__init(p)
            p.pointee.n_token_ids = t.tokenIDs.count
            p.pointee.token_ids = array(t.tokenIDs)
            p.pointee.n_logprobs = t.logprobs.count
            p.pointee.logprobs = array(t.logprobs)
            return p
        }
    }

    /// Map entries sorted by key, so equal dictionaries encode to equal bytes.
    func mapEntries<Entry>(_ map: [String: Double], init initialise: (UnsafeMutablePointer<Entry>) -> Void,
                           set: (UnsafeMutablePointer<Entry>, UnsafeMutablePointer<CChar>, Double) -> Void)
        -> UnsafeMutablePointer<UnsafeMutablePointer<Entry>?>? {
        pointers(map.sorted { $0.key < $1.key }) { kv in
            let p = new(Entry.self)
            initialise(p)
            set(p, cString(kv.key), kv.value)
            return p
        }
    }

    // MARK: Requests

    func hello(_ m: Hello) -> UnsafeMutablePointer<Selm__V1__Hello> {
        let p = new(Selm__V1__Hello.self)
        selm__v1__hello__init(p)
        p.pointee.protocol_version = m.protocolVersion
        p.pointee.auth_token = string(m.authToken)
        p.pointee.client_name = string(m.clientName)
        return p
    }

    func sampling(_ s: SamplingParams) -> UnsafeMutablePointer<Selm__V1__SamplingParams> {
        let p = new(Selm__V1__SamplingParams.self)
        selm__v1__sampling_params__init(p)
        if let v = s.temperature {
            p.pointee.optional_temperature_case = SELM__V1__SAMPLING_PARAMS__OPTIONAL_TEMPERATURE_TEMPERATURE
            p.pointee.temperature = v
        }
        if let v = s.topK {
            p.pointee.optional_top_k_case = SELM__V1__SAMPLING_PARAMS__OPTIONAL_TOP_K_TOP_K
            p.pointee.top_k = v
        }
        if let v = s.topP {
            p.pointee.optional_top_p_case = SELM__V1__SAMPLING_PARAMS__OPTIONAL_TOP_P_TOP_P
            p.pointee.top_p = v
        }
        if let v = s.minP {
            p.pointee.optional_min_p_case = SELM__V1__SAMPLING_PARAMS__OPTIONAL_MIN_P_MIN_P
            p.pointee.min_p = v
        }
        if let v = s.repetitionPenalty {
            p.pointee.optional_repetition_penalty_case = SELM__V1__SAMPLING_PARAMS__OPTIONAL_REPETITION_PENALTY_REPETITION_PENALTY
            p.pointee.repetition_penalty = v
        }
        if let v = s.presencePenalty {
            p.pointee.optional_presence_penalty_case = SELM__V1__SAMPLING_PARAMS__OPTIONAL_PRESENCE_PENALTY_PRESENCE_PENALTY
            p.pointee.presence_penalty = v
        }
        if let v = s.frequencyPenalty {
            p.pointee.optional_frequency_penalty_case = SELM__V1__SAMPLING_PARAMS__OPTIONAL_FREQUENCY_PENALTY_FREQUENCY_PENALTY
            p.pointee.frequency_penalty = v
        }
        if let v = s.seed {
            p.pointee.optional_seed_case = SELM__V1__SAMPLING_PARAMS__OPTIONAL_SEED_SEED
            p.pointee.seed = v
        }
        if let v = s.maxTokens {
            p.pointee.optional_max_tokens_case = SELM__V1__SAMPLING_PARAMS__OPTIONAL_MAX_TOKENS_MAX_TOKENS
            p.pointee.max_tokens = v
        }
        return p
    }

    func generateRequest(_ m: GenerateRequest) -> UnsafeMutablePointer<Selm__V1__GenerateRequest> {
        let p = new(Selm__V1__GenerateRequest.self)
        selm__v1__generate_request__init(p)
        p.pointee.n_prompts = m.prompts.count
        p.pointee.prompts = pointers(m.prompts, prompt)
        p.pointee.chat = m.chat ? 1 : 0
        p.pointee.sampling = m.sampling.isEmpty ? nil : sampling(m.sampling)
        p.pointee.n = m.n
        p.pointee.n_stop = m.stop.count
        if !m.stop.isEmpty {
            let list = raw(MemoryLayout<ProtobufCBinaryData>.stride * m.stop.count,
                           alignment: MemoryLayout<ProtobufCBinaryData>.alignment)
                .bindMemory(to: ProtobufCBinaryData.self, capacity: m.stop.count)
            for (i, s) in m.stop.enumerated() { (list + i).initialize(to: string(s)) }
            p.pointee.stop = list
        }
        p.pointee.n_stop_token_ids = m.stopTokenIDs.count
        p.pointee.stop_token_ids = array(m.stopTokenIDs)
        p.pointee.ignore_eos = m.ignoreEOS ? 1 : 0
        p.pointee.stream = m.stream ? 1 : 0
        p.pointee.top_logprobs = m.topLogprobs
        if let v = m.requireVersion {
            p.pointee.optional_require_version_case = SELM__V1__GENERATE_REQUEST__OPTIONAL_REQUIRE_VERSION_REQUIRE_VERSION
            p.pointee.require_version = v
        }
        p.pointee.recompute = m.recompute ? 1 : 0
        return p
    }

    func scoreRequest(_ m: ScoreRequest) -> UnsafeMutablePointer<Selm__V1__ScoreRequest> {
        let p = new(Selm__V1__ScoreRequest.self)
        selm__v1__score_request__init(p)
        p.pointee.n_items = m.items.count
        p.pointee.items = pointers(m.items) { item in
            let q = new(Selm__V1__ScoreItem.self)
            selm__v1__score_item__init(q)
            q.pointee.prompt = prompt(item.prompt)
            q.pointee.continuation = response(item.continuation)
            return q
        }
        p.pointee.chat = m.chat ? 1 : 0
        if let v = m.version {
            p.pointee.optional_version_case = SELM__V1__SCORE_REQUEST__OPTIONAL_VERSION_VERSION
            p.pointee.version = v
        }
        p.pointee.top_logprobs = m.topLogprobs
        return p
    }

    func tokenizeRequest(_ m: TokenizeRequest) -> UnsafeMutablePointer<Selm__V1__TokenizeRequest> {
        let p = new(Selm__V1__TokenizeRequest.self)
        selm__v1__tokenize_request__init(p)
        switch m.input {
        case .text(let text):
            p.pointee.input_case = SELM__V1__TOKENIZE_REQUEST__INPUT_TEXT
            p.pointee.text = string(text)
        case .messages(let list):
            p.pointee.input_case = SELM__V1__TOKENIZE_REQUEST__INPUT_MESSAGES
            p.pointee.messages = messages(list)
        }
        p.pointee.add_special = m.addSpecial ? 1 : 0
        p.pointee.chat = m.chat ? 1 : 0
        return p
    }

    func submitPreferences(_ m: SubmitPreferences) -> UnsafeMutablePointer<Selm__V1__SubmitPreferences> {
        let p = new(Selm__V1__SubmitPreferences.self)
        selm__v1__submit_preferences__init(p)
        p.pointee.n_rows = m.rows.count
        p.pointee.rows = pointers(m.rows) { row in
            let q = new(Selm__V1__PreferenceRow.self)
            selm__v1__preference_row__init(q)
            q.pointee.prompt = prompt(row.prompt)
            q.pointee.chosen = response(row.chosen)
            q.pointee.rejected = response(row.rejected)
            q.pointee.reference = row.reference.map(response)
            q.pointee.weight = row.weight
            q.pointee.source = string(row.source)
            return q
        }
        p.pointee.chat = m.chat ? 1 : 0
        return p
    }

    // MARK: Replies

    func helloReply(_ m: HelloReply) -> UnsafeMutablePointer<Selm__V1__HelloReply> {
        let p = new(Selm__V1__HelloReply.self)
        selm__v1__hello_reply__init(p)
        p.pointee.protocol_version = m.protocolVersion
        p.pointee.server_version = string(m.serverVersion)
        p.pointee.model_name = string(m.modelName)
        p.pointee.model_path = string(m.modelPath)
        p.pointee.policy_version = m.policyVersion
        p.pointee.vocab_size = m.vocabSize
        p.pointee.context_length = m.contextLength
        p.pointee.chat_template = string(m.chatTemplate)
        p.pointee.max_frame_bytes = m.maxFrameBytes
        return p
    }

    func generateChunk(_ m: GenerateChunk) -> UnsafeMutablePointer<Selm__V1__GenerateChunk> {
        let p = new(Selm__V1__GenerateChunk.self)
        selm__v1__generate_chunk__init(p)
        p.pointee.prompt_index = m.promptIndex
        p.pointee.sample_index = m.sampleIndex
        p.pointee.n_token_ids = m.tokenIDs.count
        p.pointee.token_ids = array(m.tokenIDs)
        p.pointee.text_delta = string(m.textDelta)
        p.pointee.n_logprobs = m.logprobs.count
        p.pointee.logprobs = array(m.logprobs)
        p.pointee.n_top_logprobs = m.topLogprobs.count
        p.pointee.top_logprobs = topLogprobs(m.topLogprobs)
        return p
    }

    func sampleResult(_ m: SampleResult) -> UnsafeMutablePointer<Selm__V1__SampleResult> {
        let p = new(Selm__V1__SampleResult.self)
        selm__v1__sample_result__init(p)
        p.pointee.prompt_index = m.promptIndex
        p.pointee.sample_index = m.sampleIndex
        p.pointee.n_token_ids = m.tokenIDs.count
        p.pointee.token_ids = array(m.tokenIDs)
        p.pointee.text = string(m.text)
        p.pointee.n_logprobs = m.logprobs.count
        p.pointee.logprobs = array(m.logprobs)
        p.pointee.n_top_logprobs = m.topLogprobs.count
        p.pointee.top_logprobs = topLogprobs(m.topLogprobs)
        p.pointee.finish_reason = Selm__V1__FinishReason(rawValue: UInt32(bitPattern: m.finishReason.rawValue))
        p.pointee.version = m.version
        p.pointee.first_version = m.firstVersion
        p.pointee.prompt_tokens = m.promptTokens
        p.pointee.completion_tokens = m.completionTokens
        return p
    }

    func scoreReply(_ m: ScoreReply) -> UnsafeMutablePointer<Selm__V1__ScoreReply> {
        let p = new(Selm__V1__ScoreReply.self)
        selm__v1__score_reply__init(p)
        p.pointee.n_items = m.items.count
        p.pointee.items = pointers(m.items) { item in
            let q = new(Selm__V1__ScoredItem.self)
            selm__v1__scored_item__init(q)
            q.pointee.n_token_ids = item.tokenIDs.count
            q.pointee.token_ids = array(item.tokenIDs)
            q.pointee.n_logprobs = item.logprobs.count
            q.pointee.logprobs = array(item.logprobs)
            q.pointee.total_logprob = item.totalLogprob
            q.pointee.n_top_logprobs = item.topLogprobs.count
            q.pointee.top_logprobs = topLogprobs(item.topLogprobs)
            return q
        }
        p.pointee.version = m.version
        return p
    }

    func statusReply(_ m: StatusReply) -> UnsafeMutablePointer<Selm__V1__StatusReply> {
        let p = new(Selm__V1__StatusReply.self)
        selm__v1__status_reply__init(p)
        p.pointee.policy_version = m.policyVersion
        p.pointee.learner_step = m.learnerStep
        p.pointee.n_learner_metrics = m.learnerMetrics.count
        p.pointee.learner_metrics = mapEntries(m.learnerMetrics, init: selm__v1__status_reply__learner_metrics_entry__init) {
            $0.pointee.key = $1
            $0.pointee.value = $2
        }
        p.pointee.wal_last_sequence = m.walLastSequence
        p.pointee.wal_consumed_sequence = m.walConsumedSequence
        p.pointee.waiting_requests = m.waitingRequests
        p.pointee.running_sequences = m.runningSequences
        p.pointee.kv_blocks_used = m.kvBlocksUsed
        p.pointee.kv_blocks_total = m.kvBlocksTotal
        p.pointee.generated_tokens_per_second = m.generatedTokensPerSecond
        p.pointee.uptime_seconds = m.uptimeSeconds
        p.pointee.live_versions = m.liveVersions
        p.pointee.connections = m.connections
        p.pointee.data_dir_bytes = m.dataDirBytes
        p.pointee.disk_free_bytes = m.diskFreeBytes
        p.pointee.checkpoints = m.checkpoints
        return p
    }

    func versionEvent(_ m: VersionEvent) -> UnsafeMutablePointer<Selm__V1__VersionEvent> {
        let p = new(Selm__V1__VersionEvent.self)
        selm__v1__version_event__init(p)
        p.pointee.version = m.version
        p.pointee.learner_step = m.learnerStep
        p.pointee.n_metrics = m.metrics.count
        p.pointee.metrics = mapEntries(m.metrics, init: selm__v1__version_event__metrics_entry__init) {
            $0.pointee.key = $1
            $0.pointee.value = $2
        }
        p.pointee.unix_time = m.unixTime
        return p
    }
}
