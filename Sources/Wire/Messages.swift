// Native Swift values for every message of Proto/selm.proto (package selm.v1).
//
// Field meanings are documented once, in Proto/selm.proto and Proto/README.md; the doc comments
// here say what the Swift side adds (defaults, normalisation done while decoding). Names follow the
// proto fields in lowerCamelCase ("token_ids" → `tokenIDs`, "ignore_eos" → `ignoreEOS`).
// Field paths in `WireError.invalidField` use the proto (snake_case) names, so every client
// language understands them.

// MARK: - Building blocks

/// One turn of a conversation (`selm.v1.ChatMessage`).
public struct ChatMessage: Sendable, Equatable {
    /// "system", "user", "assistant", ... as the chat template knows them; never empty after decoding.
    public var role: String
    /// The turn's text.
    public var content: String

    /// Creates the message; omitted arguments take the values an unset field decodes to.
    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

/// What a generation, a score or a preference row is conditioned on (`selm.v1.Prompt`).
public enum Prompt: Sendable, Equatable {
    /// Raw text; templated as one user turn when the request's `chat` is set.
    case text(String)
    /// Token ids used as they are (no template, no BOS added); never empty after decoding.
    case ids([UInt32])
    /// A conversation, always rendered with the chat template; never empty after decoding.
    case messages([ChatMessage])
}

/// A continuation of a prompt (`selm.v1.Response`): a preference row's responses, a score item's
/// continuation. Never empty after decoding.
public enum Response: Sendable, Equatable {
    /// Text, tokenized on its own and appended to the prompt's tokens.
    case text(String)
    /// Token ids appended as they are.
    case ids([UInt32])
}

/// The most likely alternatives at one position, most likely first (`selm.v1.TopLogprobs`).
public struct TopLogprobs: Sendable, Equatable {
    /// Alternative token ids.
    public var tokenIDs: [UInt32]
    /// Their natural-log probabilities, parallel to `tokenIDs`.
    public var logprobs: [Float]

    /// Creates the message; omitted arguments take the values an unset field decodes to.
    public init(tokenIDs: [UInt32] = [], logprobs: [Float] = []) {
        self.tokenIDs = tokenIDs
        self.logprobs = logprobs
    }
}

// MARK: - Handshake

/// First request on a connection (`selm.v1.Hello`).
public struct Hello: Sendable, Equatable {
    /// The protocol version this module speaks (`PROTOCOL_VERSION_CURRENT` in selm.proto).
    public static let currentProtocolVersion: UInt32 = 1

    /// The client's protocol version; decoding rejects 0 (unset). Whether a non-zero version is
    /// supported is the server's decision (`ErrorCode.unsupportedVersion`).
    public var protocolVersion: UInt32
    /// Shared secret, or empty.
    public var authToken: String
    /// Free-form client name for logs.
    public var clientName: String

    /// Creates the message; omitted arguments take the values an unset field decodes to.
    public init(protocolVersion: UInt32 = Hello.currentProtocolVersion, authToken: String = "", clientName: String = "") {
        self.protocolVersion = protocolVersion
        self.authToken = authToken
        self.clientName = clientName
    }
}

/// Reply to `Hello` (`selm.v1.HelloReply`).
public struct HelloReply: Sendable, Equatable {
    /// The server's protocol version.
    public var protocolVersion: UInt32
    /// The server's software version.
    public var serverVersion: String
    /// The served model's name.
    public var modelName: String
    /// Where the served model was loaded from.
    public var modelPath: String
    /// The current weight version.
    public var policyVersion: UInt64
    /// Token ids are below this.
    public var vocabSize: UInt32
    /// Maximum prompt + completion tokens per sequence.
    public var contextLength: UInt32
    /// Chat template source, or the name of the built-in one.
    public var chatTemplate: String
    /// The largest frame body the server accepts; size the client's `FrameDecoder`s to match.
    public var maxFrameBytes: UInt64

    /// Creates the message; omitted arguments take the values an unset field decodes to.
    public init(protocolVersion: UInt32 = Hello.currentProtocolVersion, serverVersion: String = "",
                modelName: String = "", modelPath: String = "", policyVersion: UInt64 = 0,
                vocabSize: UInt32 = 0, contextLength: UInt32 = 0, chatTemplate: String = "",
                maxFrameBytes: UInt64 = UInt64(Frame.defaultMaxFrameBytes)) {
        self.protocolVersion = protocolVersion
        self.serverVersion = serverVersion
        self.modelName = modelName
        self.modelPath = modelPath
        self.policyVersion = policyVersion
        self.vocabSize = vocabSize
        self.contextLength = contextLength
        self.chatTemplate = chatTemplate
        self.maxFrameBytes = maxFrameBytes
    }
}

// MARK: - Generation

/// Sampling settings (`selm.v1.SamplingParams`); `nil` = the server's default. Decoding checks the
/// ranges noted on each field.
public struct SamplingParams: Sendable, Equatable {
    /// ≥ 0, finite; 0 = greedy.
    public var temperature: Float?
    /// 0 = no limit.
    public var topK: UInt32?
    /// In (0, 1].
    public var topP: Float?
    /// In [0, 1].
    public var minP: Float?
    /// > 0, finite; 1 = off.
    public var repetitionPenalty: Float?
    /// Finite; 0 = off.
    public var presencePenalty: Float?
    /// Finite; 0 = off.
    public var frequencyPenalty: Float?
    /// Seed of the request's random streams; `nil` = random.
    public var seed: UInt64?
    /// ≥ 1.
    public var maxTokens: UInt32?

    /// Creates the message; omitted arguments take the values an unset field decodes to.
    public init(temperature: Float? = nil, topK: UInt32? = nil, topP: Float? = nil, minP: Float? = nil,
                repetitionPenalty: Float? = nil, presencePenalty: Float? = nil, frequencyPenalty: Float? = nil,
                seed: UInt64? = nil, maxTokens: UInt32? = nil) {
        self.temperature = temperature
        self.topK = topK
        self.topP = topP
        self.minP = minP
        self.repetitionPenalty = repetitionPenalty
        self.presencePenalty = presencePenalty
        self.frequencyPenalty = frequencyPenalty
        self.seed = seed
        self.maxTokens = maxTokens
    }

    /// True when no field is set (encoded as an absent `sampling` message).
    public var isEmpty: Bool { self == SamplingParams() }
}

/// Generate `n` samples for each prompt (`selm.v1.GenerateRequest`).
public struct GenerateRequest: Sendable, Equatable {
    /// Limit on `n` (inclusive).
    public static let maxSamplesPerPrompt: UInt32 = 64
    /// Limit on `topLogprobs` (inclusive), shared with `ScoreRequest`.
    public static let maxTopLogprobs: UInt32 = 20

    /// At least one; each valid (see `Prompt`).
    public var prompts: [Prompt]
    /// Apply the chat template to text prompts.
    public var chat: Bool
    /// All-`nil` when the request carried no `sampling` message.
    public var sampling: SamplingParams
    /// Samples per prompt, 1…64; decoding turns the wire's 0 into 1.
    public var n: UInt32
    /// Stop strings, none empty.
    public var stop: [String]
    /// Extra stop tokens (range-checked by the server, which knows the vocabulary).
    public var stopTokenIDs: [UInt32]
    /// Keep generating past EOS (until `maxTokens` or a stop).
    public var ignoreEOS: Bool
    /// Send `GenerateChunk`s.
    public var stream: Bool
    /// Alternatives per token, 0…20.
    public var topLogprobs: UInt32
    /// `nil`: bind to the current version at admission; otherwise run on exactly this version.
    public var requireVersion: UInt64?
    /// Re-prefill under new versions published while running.
    public var recompute: Bool

    /// Creates the message; omitted arguments take the values an unset field decodes to.
    public init(prompts: [Prompt], chat: Bool = false, sampling: SamplingParams = SamplingParams(), n: UInt32 = 1,
                stop: [String] = [], stopTokenIDs: [UInt32] = [], ignoreEOS: Bool = false, stream: Bool = false,
                topLogprobs: UInt32 = 0, requireVersion: UInt64? = nil, recompute: Bool = false) {
        self.prompts = prompts
        self.chat = chat
        self.sampling = sampling
        self.n = n
        self.stop = stop
        self.stopTokenIDs = stopTokenIDs
        self.ignoreEOS = ignoreEOS
        self.stream = stream
        self.topLogprobs = topLogprobs
        self.requireVersion = requireVersion
        self.recompute = recompute
    }
}

/// Newly produced tokens of one sample, streaming only (`selm.v1.GenerateChunk`).
public struct GenerateChunk: Sendable, Equatable {
    /// Index into `GenerateRequest.prompts`.
    public var promptIndex: UInt32
    /// Sample index, 0…n-1.
    public var sampleIndex: UInt32
    /// The new tokens.
    public var tokenIDs: [UInt32]
    /// Text completed by these tokens (may lag by a partial UTF-8 character or a held-back stop prefix).
    public var textDelta: String
    /// Parallel to `tokenIDs`.
    public var logprobs: [Float]
    /// One per token when requested, else empty.
    public var topLogprobs: [TopLogprobs]

    /// Creates the message; omitted arguments take the values an unset field decodes to.
    public init(promptIndex: UInt32 = 0, sampleIndex: UInt32 = 0, tokenIDs: [UInt32] = [], textDelta: String = "",
                logprobs: [Float] = [], topLogprobs: [TopLogprobs] = []) {
        self.promptIndex = promptIndex
        self.sampleIndex = sampleIndex
        self.tokenIDs = tokenIDs
        self.textDelta = textDelta
        self.logprobs = logprobs
        self.topLogprobs = topLogprobs
    }
}

/// Why a sample stopped (`selm.v1.FinishReason`).
public enum FinishReason: Sendable, Equatable, Hashable {
    /// 0 on the wire; a server never sends it.
    case unspecified
    /// End-of-sequence token or one of `stopTokenIDs`.
    case eos
    /// A stop string matched.
    case stop
    /// `maxTokens` or the context length reached.
    case length
    /// Cancelled by `Cancel`, or the connection closed.
    case cancelled
    /// A value this build does not know (sent by a newer peer); kept so it can be re-encoded.
    case unrecognized(Int32)

    /// The value on the wire.
    public var rawValue: Int32 {
        switch self {
        case .unspecified: 0
        case .eos: 1
        case .stop: 2
        case .length: 3
        case .cancelled: 4
        case .unrecognized(let v): v
        }
    }

    /// Maps any wire value; unknown ones become `.unrecognized`.
    public init(rawValue: Int32) {
        switch rawValue {
        case 0: self = .unspecified
        case 1: self = .eos
        case 2: self = .stop
        case 3: self = .length
        case 4: self = .cancelled
        default: self = .unrecognized(rawValue)
        }
    }
}

/// One finished sample (`selm.v1.SampleResult`).
public struct SampleResult: Sendable, Equatable {
    /// Index into `GenerateRequest.prompts`.
    public var promptIndex: UInt32
    /// Sample index, 0…n-1.
    public var sampleIndex: UInt32
    /// All completion tokens.
    public var tokenIDs: [UInt32]
    /// The completion's text (stop string removed).
    public var text: String
    /// Parallel to `tokenIDs`.
    public var logprobs: [Float]
    /// One per token when requested, else empty.
    public var topLogprobs: [TopLogprobs]
    /// Why the sample stopped.
    public var finishReason: FinishReason
    /// The weight version that produced the last token.
    public var version: UInt64
    /// The version bound at admission; differs from `version` only after a move (`recompute`, or its version retired).
    public var firstVersion: UInt64
    /// Tokens in the (templated) prompt.
    public var promptTokens: UInt32
    /// Completion tokens (= `tokenIDs.count`).
    public var completionTokens: UInt32

    /// Creates the message; omitted arguments take the values an unset field decodes to.
    public init(promptIndex: UInt32 = 0, sampleIndex: UInt32 = 0, tokenIDs: [UInt32] = [], text: String = "",
                logprobs: [Float] = [], topLogprobs: [TopLogprobs] = [], finishReason: FinishReason = .unspecified,
                version: UInt64 = 0, firstVersion: UInt64 = 0, promptTokens: UInt32 = 0, completionTokens: UInt32 = 0) {
        self.promptIndex = promptIndex
        self.sampleIndex = sampleIndex
        self.tokenIDs = tokenIDs
        self.text = text
        self.logprobs = logprobs
        self.topLogprobs = topLogprobs
        self.finishReason = finishReason
        self.version = version
        self.firstVersion = firstVersion
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
    }
}

/// Last reply to a `GenerateRequest` (`selm.v1.GenerateDone`).
public struct GenerateDone: Sendable, Equatable {
    /// SampleResults sent (prompts × n).
    public var samples: UInt32
    /// Prompt tokens summed over samples.
    public var promptTokens: UInt64
    /// Completion tokens summed over samples.
    public var completionTokens: UInt64

    /// Creates the message; omitted arguments take the values an unset field decodes to.
    public init(samples: UInt32 = 0, promptTokens: UInt64 = 0, completionTokens: UInt64 = 0) {
        self.samples = samples
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
    }
}

/// Cancel a running request of this connection (`selm.v1.Cancel`).
public struct Cancel: Sendable, Equatable {
    /// The id of the request to cancel.
    public var targetID: UInt64

    /// Creates the message; omitted arguments take the values an unset field decodes to.
    public init(targetID: UInt64) { self.targetID = targetID }
}

/// Reply to `Cancel` (`selm.v1.CancelReply`).
public struct CancelReply: Sendable, Equatable {
    /// Whether a running request with that id existed.
    public var found: Bool

    /// Creates the message; omitted arguments take the values an unset field decodes to.
    public init(found: Bool) { self.found = found }
}

// MARK: - Scoring

/// One (prompt, continuation) pair (`selm.v1.ScoreItem`).
public struct ScoreItem: Sendable, Equatable {
    /// The conditioning prompt.
    public var prompt: Prompt
    /// The tokens whose log-probabilities are returned.
    public var continuation: Response

    /// Creates the message; omitted arguments take the values an unset field decodes to.
    public init(prompt: Prompt, continuation: Response) {
        self.prompt = prompt
        self.continuation = continuation
    }
}

/// Log-probabilities of given continuations (`selm.v1.ScoreRequest`).
public struct ScoreRequest: Sendable, Equatable {
    /// At least one.
    public var items: [ScoreItem]
    /// Apply the chat template to text prompts.
    public var chat: Bool
    /// `nil` = the current version.
    public var version: UInt64?
    /// 0…20.
    public var topLogprobs: UInt32

    /// Creates the message; omitted arguments take the values an unset field decodes to.
    public init(items: [ScoreItem], chat: Bool = false, version: UInt64? = nil, topLogprobs: UInt32 = 0) {
        self.items = items
        self.chat = chat
        self.version = version
        self.topLogprobs = topLogprobs
    }
}

/// The score of one item (`selm.v1.ScoredItem`).
public struct ScoredItem: Sendable, Equatable {
    /// The continuation's tokens.
    public var tokenIDs: [UInt32]
    /// Parallel to `tokenIDs`.
    public var logprobs: [Float]
    /// Sum of `logprobs`.
    public var totalLogprob: Double
    /// Alternatives per continuation token, if requested.
    public var topLogprobs: [TopLogprobs]

    /// Creates the message; omitted arguments take the values an unset field decodes to.
    public init(tokenIDs: [UInt32] = [], logprobs: [Float] = [], totalLogprob: Double = 0, topLogprobs: [TopLogprobs] = []) {
        self.tokenIDs = tokenIDs
        self.logprobs = logprobs
        self.totalLogprob = totalLogprob
        self.topLogprobs = topLogprobs
    }
}

/// Reply to `ScoreRequest` (`selm.v1.ScoreReply`).
public struct ScoreReply: Sendable, Equatable {
    /// One per request item, same order.
    public var items: [ScoredItem]
    /// The weight version used.
    public var version: UInt64

    /// Creates the message; omitted arguments take the values an unset field decodes to.
    public init(items: [ScoredItem] = [], version: UInt64 = 0) {
        self.items = items
        self.version = version
    }
}

// MARK: - Tokenizer

/// Tokenize text or a conversation (`selm.v1.TokenizeRequest`).
public struct TokenizeRequest: Sendable, Equatable {
    /// What to tokenize (the proto's `input` oneof).
    public enum Input: Sendable, Equatable {
        /// Text (also what an unset `input` decodes to, as empty text).
        case text(String)
        /// A conversation rendered with the chat template; never empty after decoding.
        case messages([ChatMessage])
    }

    /// Text or conversation.
    public var input: Input
    /// Parse special-token strings in the text as special tokens.
    public var addSpecial: Bool
    /// Wrap text as a user turn and apply the chat template.
    public var chat: Bool

    /// Creates the message; omitted arguments take the values an unset field decodes to.
    public init(input: Input, addSpecial: Bool = false, chat: Bool = false) {
        self.input = input
        self.addSpecial = addSpecial
        self.chat = chat
    }
}

/// Reply to `TokenizeRequest` (`selm.v1.TokenizeReply`).
public struct TokenizeReply: Sendable, Equatable {
    /// The token ids.
    public var ids: [UInt32]

    /// Creates the message; omitted arguments take the values an unset field decodes to.
    public init(ids: [UInt32]) { self.ids = ids }
}

/// Token ids back to text (`selm.v1.DetokenizeRequest`).
public struct DetokenizeRequest: Sendable, Equatable {
    /// The token ids to turn into text.
    public var ids: [UInt32]

    /// Creates the message; omitted arguments take the values an unset field decodes to.
    public init(ids: [UInt32]) { self.ids = ids }
}

/// Reply to `DetokenizeRequest` (`selm.v1.DetokenizeReply`).
public struct DetokenizeReply: Sendable, Equatable {
    /// The decoded text.
    public var text: String

    /// Creates the message; omitted arguments take the values an unset field decodes to.
    public init(text: String) { self.text = text }
}

// MARK: - Preferences

/// One preference (`selm.v1.PreferenceRow`): for `prompt`, `chosen` is preferred to `rejected`.
public struct PreferenceRow: Sendable, Equatable {
    /// The conditioning prompt.
    public var prompt: Prompt
    /// y_w.
    public var chosen: Response
    /// y_l.
    public var rejected: Response
    /// y_ref, the reference policy's own response (SELM's optimism term), if given.
    public var reference: Response?
    /// Finite, ≥ 0; decoding turns the wire's 0 into 1.
    public var weight: Float
    /// Free-form provenance.
    public var source: String

    /// Creates the message; omitted arguments take the values an unset field decodes to.
    public init(prompt: Prompt, chosen: Response, rejected: Response, reference: Response? = nil,
                weight: Float = 1, source: String = "") {
        self.prompt = prompt
        self.chosen = chosen
        self.rejected = rejected
        self.reference = reference
        self.weight = weight
        self.source = source
    }
}

/// Append preference rows to the WAL (`selm.v1.SubmitPreferences`).
public struct SubmitPreferences: Sendable, Equatable {
    /// At least one.
    public var rows: [PreferenceRow]
    /// Apply the chat template to text prompts.
    public var chat: Bool

    /// Creates the message; omitted arguments take the values an unset field decodes to.
    public init(rows: [PreferenceRow], chat: Bool = false) {
        self.rows = rows
        self.chat = chat
    }
}

/// Reply to `SubmitPreferences`, once durable (`selm.v1.PreferenceAck`).
public struct PreferenceAck: Sendable, Equatable {
    /// WAL sequence number of the first record written.
    public var firstSequence: UInt64
    /// WAL sequence number of the last record written.
    public var lastSequence: UInt64
    /// Rows accepted.
    public var rows: UInt32

    /// Creates the message; omitted arguments take the values an unset field decodes to.
    public init(firstSequence: UInt64, lastSequence: UInt64, rows: UInt32) {
        self.firstSequence = firstSequence
        self.lastSequence = lastSequence
        self.rows = rows
    }
}

// MARK: - Operations

/// Ask for the server's state (`selm.v1.StatusRequest`).
public struct StatusRequest: Sendable, Equatable {
    /// Creates the message; omitted arguments take the values an unset field decodes to.
    public init() {}
}

/// Reply to `StatusRequest` (`selm.v1.StatusReply`).
public struct StatusReply: Sendable, Equatable {
    /// The current weight version.
    public var policyVersion: UInt64
    /// Optimizer steps taken.
    public var learnerStep: UInt64
    /// "loss", "rewards/margins", ... (TRL names).
    public var learnerMetrics: [String: Double]
    /// Last WAL sequence written.
    public var walLastSequence: UInt64
    /// Last WAL sequence the learner consumed.
    public var walConsumedSequence: UInt64
    /// Generation requests not admitted yet.
    public var waitingRequests: UInt32
    /// Sequences being generated.
    public var runningSequences: UInt32
    /// Paged KV cache blocks in use.
    public var kvBlocksUsed: UInt32
    /// Paged KV cache blocks in all.
    public var kvBlocksTotal: UInt32
    /// Recent generation throughput.
    public var generatedTokensPerSecond: Double
    /// Seconds since the server started.
    public var uptimeSeconds: Double
    /// Weight versions still referenced (current included).
    public var liveVersions: UInt32
    /// Open client connections.
    public var connections: UInt32
    /// Bytes allocated under the data directory (measured off the loop, at most seconds old).
    public var dataDirBytes: UInt64
    /// Bytes free to the server on the data directory's filesystem.
    public var diskFreeBytes: UInt64
    /// Checkpoint directories in `DATA/checkpoints`.
    public var checkpoints: UInt32

    /// Creates the message; omitted arguments take the values an unset field decodes to.
    public init(policyVersion: UInt64 = 0, learnerStep: UInt64 = 0, learnerMetrics: [String: Double] = [:],
                walLastSequence: UInt64 = 0, walConsumedSequence: UInt64 = 0, waitingRequests: UInt32 = 0,
                runningSequences: UInt32 = 0, kvBlocksUsed: UInt32 = 0, kvBlocksTotal: UInt32 = 0,
                generatedTokensPerSecond: Double = 0, uptimeSeconds: Double = 0, liveVersions: UInt32 = 0,
                connections: UInt32 = 0, dataDirBytes: UInt64 = 0, diskFreeBytes: UInt64 = 0, checkpoints: UInt32 = 0) {
        self.policyVersion = policyVersion
        self.learnerStep = learnerStep
        self.learnerMetrics = learnerMetrics
        self.walLastSequence = walLastSequence
        self.walConsumedSequence = walConsumedSequence
        self.waitingRequests = waitingRequests
        self.runningSequences = runningSequences
        self.kvBlocksUsed = kvBlocksUsed
        self.kvBlocksTotal = kvBlocksTotal
        self.generatedTokensPerSecond = generatedTokensPerSecond
        self.uptimeSeconds = uptimeSeconds
        self.liveVersions = liveVersions
        self.connections = connections
        self.dataDirBytes = dataDirBytes
        self.diskFreeBytes = diskFreeBytes
        self.checkpoints = checkpoints
    }
}

/// Load a checkpoint and publish it as a new version (`selm.v1.RefreshWeights`).
public struct RefreshWeights: Sendable, Equatable {
    /// Relative to the server's data directory; decoding rejects empty, absolute and ".." paths.
    public var checkpoint: String

    /// Creates the message; omitted arguments take the values an unset field decodes to.
    public init(checkpoint: String) { self.checkpoint = checkpoint }
}

/// Reply to `RefreshWeights` (`selm.v1.RefreshWeightsReply`).
public struct RefreshWeightsReply: Sendable, Equatable {
    /// The version the loaded weights were published as.
    public var version: UInt64

    /// Creates the message; omitted arguments take the values an unset field decodes to.
    public init(version: UInt64) { self.version = version }
}

/// Write a checkpoint (`selm.v1.SaveCheckpoint`).
public struct SaveCheckpoint: Sendable, Equatable {
    /// The checkpoint's name: saved as `DATA/checkpoints/NAME` (one name of A-Z a-z 0-9 . _ -; the
    /// server checks it); empty = automatic (`step-N`). Decoding rejects absolute and ".." paths.
    public var name: String

    /// Creates the message; omitted arguments take the values an unset field decodes to.
    public init(name: String = "") { self.name = name }
}

/// Reply to `SaveCheckpoint` (`selm.v1.SaveCheckpointReply`).
public struct SaveCheckpointReply: Sendable, Equatable {
    /// Where it was written, relative to the data directory.
    public var path: String
    /// Learner step it holds.
    public var learnerStep: UInt64
    /// Last WAL sequence consumed by the state it holds.
    public var walSequence: UInt64
    /// The weight version it holds (0: weights trained past the last published version).
    public var version: UInt64

    /// Creates the message; omitted arguments take the values an unset field decodes to.
    public init(path: String, learnerStep: UInt64 = 0, walSequence: UInt64 = 0, version: UInt64 = 0) {
        self.path = path
        self.learnerStep = learnerStep
        self.walSequence = walSequence
        self.version = version
    }
}

/// Subscribe to weight-version changes (`selm.v1.SubscribeVersions`).
public struct SubscribeVersions: Sendable, Equatable {
    /// Creates the message; omitted arguments take the values an unset field decodes to.
    public init() {}
}

/// A weight version was published (`selm.v1.VersionEvent`), pushed with the subscription's id.
public struct VersionEvent: Sendable, Equatable {
    /// The new version.
    public var version: UInt64
    /// Learner step it came from (0 for loaded weights).
    public var learnerStep: UInt64
    /// The learner's metrics at that step.
    public var metrics: [String: Double]
    /// Seconds since 1970.
    public var unixTime: Double

    /// Creates the message; omitted arguments take the values an unset field decodes to.
    public init(version: UInt64, learnerStep: UInt64 = 0, metrics: [String: Double] = [:], unixTime: Double = 0) {
        self.version = version
        self.learnerStep = learnerStep
        self.metrics = metrics
        self.unixTime = unixTime
    }
}

// MARK: - Errors

/// Error codes of `selm.v1.ErrorCode`.
public enum ErrorCode: Sendable, Equatable, Hashable {
    /// 0 on the wire; a server never sends it.
    case unspecified
    /// A field is missing or out of range (`ErrorReply.field` names it).
    case invalidArgument
    /// No Hello yet, or a wrong auth token.
    case unauthenticated
    /// A version, checkpoint or request id does not exist.
    case notFound
    /// Queue, KV cache or output buffer full.
    case resourceExhausted
    /// The frame exceeded the peer's size limit.
    case frameTooLarge
    /// The frame is not a valid Envelope.
    case malformed
    /// The envelope had no body, or one this peer does not know or does not accept.
    case unknownBody
    /// `Hello.protocolVersion` is not supported.
    case unsupportedVersion
    /// The request is not allowed.
    case permissionDenied
    /// The request was cancelled before it produced a result.
    case cancelled
    /// A server bug or I/O failure.
    case `internal`
    /// Shutting down or not ready.
    case unavailable
    /// A value exceeds a model limit (token id ≥ vocab size, prompt longer than the context).
    case outOfRange
    /// A value this build does not know (sent by a newer peer); kept so it can be re-encoded.
    case unrecognized(Int32)

    /// The value on the wire.
    public var rawValue: Int32 {
        switch self {
        case .unspecified: 0
        case .invalidArgument: 1
        case .unauthenticated: 2
        case .notFound: 3
        case .resourceExhausted: 4
        case .frameTooLarge: 5
        case .malformed: 6
        case .unknownBody: 7
        case .unsupportedVersion: 8
        case .permissionDenied: 9
        case .cancelled: 10
        case .internal: 11
        case .unavailable: 12
        case .outOfRange: 13
        case .unrecognized(let v): v
        }
    }

    /// Maps any wire value; unknown ones become `.unrecognized`.
    public init(rawValue: Int32) {
        switch rawValue {
        case 0: self = .unspecified
        case 1: self = .invalidArgument
        case 2: self = .unauthenticated
        case 3: self = .notFound
        case 4: self = .resourceExhausted
        case 5: self = .frameTooLarge
        case 6: self = .malformed
        case 7: self = .unknownBody
        case 8: self = .unsupportedVersion
        case 9: self = .permissionDenied
        case 10: self = .cancelled
        case 11: self = .internal
        case 12: self = .unavailable
        case 13: self = .outOfRange
        default: self = .unrecognized(rawValue)
        }
    }
}

/// The reply to a failed request (`selm.v1.Error`; renamed so it does not shadow `Swift.Error`).
public struct ErrorReply: Sendable, Equatable {
    /// What went wrong, as a code.
    public var code: ErrorCode
    /// Human-readable reason.
    public var message: String
    /// The offending field as a proto path ("prompts[2].ids", "sampling.top_p"), or empty.
    public var field: String

    /// Creates the message; omitted arguments take the values an unset field decodes to.
    public init(code: ErrorCode, message: String, field: String = "") {
        self.code = code
        self.message = message
        self.field = field
    }
}
