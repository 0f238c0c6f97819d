import Wire

/// One value of every message type (several for some), built natively. The same messages are
/// built with Python's protobuf under the same names by scripts/reference/wire.py; keep the two
/// lists in step.
enum Samples {
    static let client: [(name: String, envelope: Envelope<ClientMessage>)] = [
        ("hello", Envelope(id: 1, body: .hello(Hello(protocolVersion: 1, authToken: "s3cret", clientName: "selm-python/0.1")))),
        ("generate_full", Envelope(id: 2, body: .generate(GenerateRequest(
            prompts: [
                .text("What is the capital of France?"),
                .ids([1, 2, 3, 49151]),
                .messages([ChatMessage(role: "system", content: "You are terse."), ChatMessage(role: "user", content: "Hi 👋")]),
            ],
            chat: true,
            sampling: SamplingParams(temperature: 0.7, topK: 40, topP: 0.95, minP: 0.05, repetitionPenalty: 1.1,
                                     presencePenalty: 0.5, frequencyPenalty: -0.25, seed: 1_234_567_890_123, maxTokens: 64),
            n: 4, stop: ["\n\n", "User:"], stopTokenIDs: [2, 7], ignoreEOS: true, stream: true,
            topLogprobs: 5, requireVersion: 0, recompute: true)))),
        ("generate_minimal", Envelope(id: 3, body: .generate(GenerateRequest(prompts: [.text("")])))),
        ("generate_partial_sampling", Envelope(id: 31, body: .generate(GenerateRequest(
            prompts: [.text("Once upon a time")], sampling: SamplingParams(temperature: 0, maxTokens: 16), n: 2,
            requireVersion: 7)))),
        ("cancel", Envelope(id: 4, body: .cancel(Cancel(targetID: 2)))),
        ("score", Envelope(id: 5, body: .score(ScoreRequest(
            items: [
                ScoreItem(prompt: .text("2+2="), continuation: .text(" 4")),
                ScoreItem(prompt: .ids([5, 6]), continuation: .ids([7])),
            ],
            version: 3, topLogprobs: 2)))),
        ("tokenize_text", Envelope(id: 6, body: .tokenize(TokenizeRequest(input: .text("<|im_start|>user"), addSpecial: true)))),
        ("tokenize_messages", Envelope(id: 7, body: .tokenize(TokenizeRequest(
            input: .messages([ChatMessage(role: "user", content: "Hello"), ChatMessage(role: "assistant", content: "Hi!")]),
            chat: true)))),
        ("detokenize", Envelope(id: 8, body: .detokenize(DetokenizeRequest(ids: [1, 2, 3, UInt32.max])))),
        ("submit_preferences", Envelope(id: 9, body: .submitPreferences(SubmitPreferences(
            rows: [
                PreferenceRow(prompt: .text("Name a colour."), chosen: .text("Blue."), rejected: .text("Seven."),
                              reference: .text("Red."), weight: 0.5, source: "pairrm"),
                PreferenceRow(prompt: .ids([10, 11]), chosen: .ids([12]), rejected: .ids([13, 14])),
            ],
            chat: true)))),
        ("status", Envelope(id: 10, body: .status(StatusRequest()))),
        ("refresh_weights", Envelope(id: 11, body: .refreshWeights(RefreshWeights(checkpoint: "checkpoints/step-100")))),
        ("save_checkpoint", Envelope(id: 12, body: .saveCheckpoint(SaveCheckpoint()))),
        ("save_checkpoint_named", Envelope(id: 13, body: .saveCheckpoint(SaveCheckpoint(name: "manual/before-eval")))),
        ("subscribe_versions", Envelope(id: UInt64.max, body: .subscribeVersions(SubscribeVersions()))),
        ("score_entropy", Envelope(id: 14, body: .score(ScoreRequest(
            items: [ScoreItem(prompt: .text("Hi"), continuation: .ids([3, 4]))], entropy: true)))),
        ("submit_preferences_versioned", Envelope(id: 15, body: .submitPreferences(SubmitPreferences(
            rows: [PreferenceRow(prompt: .ids([1]), chosen: .ids([2]), rejected: .ids([3]), weight: 2, version: 41),
                   PreferenceRow(prompt: .ids([1]), chosen: .ids([4]), rejected: .ids([5]), weight: 1, version: 0)])))),
        ("fetch_weights", Envelope(id: 16, body: .fetchWeights(FetchWeights(version: 43, chunkBytes: 65536, dtype: "bf16")))),
        ("fetch_weights_newest", Envelope(id: 17, body: .fetchWeights(FetchWeights(chunkBytes: 1 << 20)))),  // 0 decodes as 1 MiB
    ]

    static let tops = [TopLogprobs(tokenIDs: [5, 9], logprobs: [-0.25, -1.5]), TopLogprobs(tokenIDs: [7], logprobs: [-0.125])]

    static let server: [(name: String, envelope: Envelope<ServerMessage>)] = [
        ("error", Envelope(id: 2, body: .error(ErrorReply(code: .invalidArgument, message: "prompts[2].ids: must not be empty",
                                                          field: "prompts[2].ids")))),
        ("error_unrecognized_code", Envelope(id: 3, body: .error(ErrorReply(code: .unrecognized(99), message: "from the future")))),
        ("hello_reply", Envelope(id: 1, body: .helloReply(HelloReply(
            protocolVersion: 1, serverVersion: "0.1.0", modelName: "SmolLM2-135M-Instruct",
            modelPath: "models/SmolLM2-135M-Instruct.Q4_1.gguf", policyVersion: 42, vocabSize: 49152,
            contextLength: 8192, chatTemplate: "chatml", maxFrameBytes: 16 << 20)))),
        ("generate_chunk", Envelope(id: 2, body: .generateChunk(GenerateChunk(
            promptIndex: 1, sampleIndex: 3, tokenIDs: [5, 7], textDelta: "Par", logprobs: [-0.25, -0.125], topLogprobs: tops)))),
        ("sample_result", Envelope(id: 2, body: .sampleResult(SampleResult(
            promptIndex: 0, sampleIndex: 1, tokenIDs: [5, 7, 2], text: "Paris.", logprobs: [-0.25, -0.125, -.infinity],
            topLogprobs: tops, finishReason: .stop, version: 41, firstVersion: 40, promptTokens: 12, completionTokens: 3)))),
        ("sample_result_unrecognized", Envelope(id: 2, body: .sampleResult(SampleResult(
            finishReason: .unrecognized(9), version: 1, firstVersion: 1)))),
        ("generate_done", Envelope(id: 2, body: .generateDone(GenerateDone(samples: 12, promptTokens: 144, completionTokens: 4096)))),
        ("cancel_reply", Envelope(id: 4, body: .cancelReply(CancelReply(found: true)))),
        ("score_reply", Envelope(id: 5, body: .scoreReply(ScoreReply(
            items: [ScoredItem(tokenIDs: [220, 19], logprobs: [-0.5, -2.0], totalLogprob: -2.5),
                    ScoredItem(tokenIDs: [7], logprobs: [-0.25], totalLogprob: -0.25, topLogprobs: [tops[0]])],
            version: 3)))),
        ("tokenize_reply", Envelope(id: 6, body: .tokenizeReply(TokenizeReply(ids: [1, 882, 198])))),
        ("detokenize_reply", Envelope(id: 8, body: .detokenizeReply(DetokenizeReply(text: "héllo wörld 🌍\n")))),
        ("preference_ack", Envelope(id: 9, body: .preferenceAck(PreferenceAck(firstSequence: 100, lastSequence: 101, rows: 2)))),
        ("status_reply", Envelope(id: 10, body: .statusReply(StatusReply(
            policyVersion: 42, learnerStep: 420, learnerMetrics: ["loss": 0.6875, "rewards/margins": 0.125, "grad_norm": 1.5],
            walLastSequence: 101, walConsumedSequence: 99, waitingRequests: 3, runningSequences: 8, kvBlocksUsed: 120,
            kvBlocksTotal: 512, generatedTokensPerSecond: 812.5, uptimeSeconds: 3600.25, liveVersions: 2, connections: 5)))),
        ("refresh_weights_reply", Envelope(id: 11, body: .refreshWeightsReply(RefreshWeightsReply(version: 43)))),
        ("save_checkpoint_reply", Envelope(id: 12, body: .saveCheckpointReply(SaveCheckpointReply(
            path: "checkpoints/step-420", learnerStep: 420, walSequence: 99, version: 42)))),
        ("version_event", Envelope(id: UInt64.max, body: .versionEvent(VersionEvent(
            version: 43, learnerStep: 430, metrics: ["loss": 0.5, "rewards/accuracies": 0.75], unixTime: 1_767_225_600.5)))),
        ("hello_reply_precision", Envelope(id: 1, body: .helloReply(HelloReply(
            protocolVersion: 1, serverVersion: "0.1.0", modelName: "m", modelPath: "m.gguf", policyVersion: 1, vocabSize: 32,
            contextLength: 64, chatTemplate: "chatml", maxFrameBytes: 1 << 20, enginePrecision: "bf16")))),
        ("preference_ack_stale", Envelope(id: 15, body: .preferenceAck(PreferenceAck(firstSequence: 102, lastSequence: 102, rows: 1, staleRows: 1)))),
        ("score_reply_entropy", Envelope(id: 14, body: .scoreReply(ScoreReply(
            items: [ScoredItem(tokenIDs: [3, 4], logprobs: [-1.5, -0.75], totalLogprob: -2.25, entropies: [2.5, 0.0625])],
            version: 7)))),
        ("status_reply_full", Envelope(id: 10, body: .statusReply(StatusReply(
            policyVersion: 43, learnerStep: 430, walLastSequence: 7, walConsumedSequence: 7, kvBlocksTotal: 512,
            uptimeSeconds: 12.5, liveVersions: 3, connections: 1, dataDirBytes: 123_456_789, diskFreeBytes: 1 << 40, checkpoints: 2,
            enginePrecision: "q8",
            staleness: [StalenessBucket(le: 0, rows: 10), StalenessBucket(le: 1, rows: 4), StalenessBucket(le: UInt64.max, rows: 1)],
            staleRowsDropped: 3, role: "rollout", following: "10.0.0.2:7000", referenceVersion: 41)))),
        ("version_event_reference", Envelope(id: UInt64.max, body: .versionEvent(VersionEvent(
            version: 44, learnerStep: 440, unixTime: 1_767_225_601.25, referenceVersion: 42)))),
        ("weights_chunk", Envelope(id: 16, body: .weightsChunk(WeightsChunk(offset: 1 << 20, data: [0, 1, 2, 128, 255], crc32c: 0xE306_9283)))),
        ("weights_done", Envelope(id: 16, body: .weightsDone(WeightsDone(
            version: 43, dtype: "bf16",
            tensors: [TensorLayout(name: "model.embed_tokens.weight", shape: [32, 8], offset: 0, length: 1024, dtype: "f32"),
                      TensorLayout(name: "model.layers.0.self_attn.q_proj.weight", shape: [8, 8], offset: 1024, length: 128, dtype: "bf16")],
            totalBytes: 1152, crc32c: 0x1234_5678, chunks: 2, learnerStep: 430)))),
    ]

    /// Every sample as a complete frame, client samples first.
    static func allFrames() throws -> [[UInt8]] {
        try client.map { try Frame.encode($0.envelope) } + server.map { try Frame.encode($0.envelope) }
    }
}
