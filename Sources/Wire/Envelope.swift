/// One frame's payload (`selm.v1.Envelope`): a request id and a body.
///
/// `Body` is `ClientMessage` for client → server frames and `ServerMessage` for server → client
/// frames. Encode with `Frame.encode(_:)`, decode with `Frame.decodeClient(_:)` /
/// `Frame.decodeServer(_:)`.
public struct Envelope<Body: Sendable & Equatable>: Sendable, Equatable {
    /// Client-chosen request id; every reply carries the id of its request, and version pushes
    /// carry the id of their `SubscribeVersions` request.
    public var id: UInt64
    /// The message.
    public var body: Body

    /// An envelope carrying `body` for request `id`.
    public init(id: UInt64, body: Body) {
        self.id = id
        self.body = body
    }
}

/// A request, client → server (the client half of the `Envelope.body` oneof, fields 10–39).
public enum ClientMessage: Sendable, Equatable {
    /// Field 10: first request on a connection.
    case hello(Hello)
    /// Field 11.
    case generate(GenerateRequest)
    /// Field 12.
    case cancel(Cancel)
    /// Field 13.
    case score(ScoreRequest)
    /// Field 14.
    case tokenize(TokenizeRequest)
    /// Field 15.
    case detokenize(DetokenizeRequest)
    /// Field 16.
    case submitPreferences(SubmitPreferences)
    /// Field 17.
    case status(StatusRequest)
    /// Field 18.
    case refreshWeights(RefreshWeights)
    /// Field 19.
    case saveCheckpoint(SaveCheckpoint)
    /// Field 20.
    case subscribeVersions(SubscribeVersions)

    /// The proto field name of this case ("generate", "submit_preferences"), for logs and metrics.
    public var name: String {
        switch self {
        case .hello: "hello"
        case .generate: "generate"
        case .cancel: "cancel"
        case .score: "score"
        case .tokenize: "tokenize"
        case .detokenize: "detokenize"
        case .submitPreferences: "submit_preferences"
        case .status: "status"
        case .refreshWeights: "refresh_weights"
        case .saveCheckpoint: "save_checkpoint"
        case .subscribeVersions: "subscribe_versions"
        }
    }
}

/// A reply or push, server → client (the server half of the `Envelope.body` oneof, fields 40–79).
public enum ServerMessage: Sendable, Equatable {
    /// Field 40: the request failed; nothing more follows for its id.
    case error(ErrorReply)
    /// Field 41.
    case helloReply(HelloReply)
    /// Field 42: streaming only.
    case generateChunk(GenerateChunk)
    /// Field 43: one per sample.
    case sampleResult(SampleResult)
    /// Field 44: last reply to a generation.
    case generateDone(GenerateDone)
    /// Field 45.
    case cancelReply(CancelReply)
    /// Field 46.
    case scoreReply(ScoreReply)
    /// Field 47.
    case tokenizeReply(TokenizeReply)
    /// Field 48.
    case detokenizeReply(DetokenizeReply)
    /// Field 49: sent once the rows are durable.
    case preferenceAck(PreferenceAck)
    /// Field 50.
    case statusReply(StatusReply)
    /// Field 51.
    case refreshWeightsReply(RefreshWeightsReply)
    /// Field 52.
    case saveCheckpointReply(SaveCheckpointReply)
    /// Field 53: pushed for a `SubscribeVersions` request.
    case versionEvent(VersionEvent)

    /// The proto field name of this case ("sample_result", "error"), for logs and metrics.
    public var name: String {
        switch self {
        case .error: "error"
        case .helloReply: "hello_reply"
        case .generateChunk: "generate_chunk"
        case .sampleResult: "sample_result"
        case .generateDone: "generate_done"
        case .cancelReply: "cancel_reply"
        case .scoreReply: "score_reply"
        case .tokenizeReply: "tokenize_reply"
        case .detokenizeReply: "detokenize_reply"
        case .preferenceAck: "preference_ack"
        case .statusReply: "status_reply"
        case .refreshWeightsReply: "refresh_weights_reply"
        case .saveCheckpointReply: "save_checkpoint_reply"
        case .versionEvent: "version_event"
        }
    }
}
