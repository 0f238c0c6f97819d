/// Every way the engine refuses a request or a publication, or fails one it accepted. Each case is
/// a code (the server maps each case to a protocol error code in one switch, never by reading the
/// text) and names the field or value concerned so the message alone tells the caller what to fix.
/// Field names are the wire protocol's field paths (`sampling.temperature`, `n`,
/// `prompts[0].ids[3]`, `sampling.max_tokens`, `items[1].continuation.ids[2]`, ...).
public enum EngineError: Error, CustomStringConvertible, Equatable, Sendable {
    /// A request field holds a value it may never hold: a sampling parameter out of its range, `n`,
    /// `top_logprobs`, an empty prompt, continuation or stop string, conflicting options.
    case invalidRequest(field: String, reason: String)
    /// A request does not fit this model: a token id outside its vocabulary, a prompt that fills the
    /// context, a prompt + `max_tokens` (or a prompt + continuation) beyond the context length.
    case outOfRange(field: String, reason: String)
    /// The request's worst case (prompt + `max_tokens` for every sample of one prompt) needs more KV
    /// blocks than the whole pool holds, so it could never be admitted; `field` is `max_tokens`.
    case exceedsKVPool(field: String, blocksNeeded: Int, blocksTotal: Int, blockSize: Int)
    /// `require_version` (or a score's `version`) names a weight version the engine no longer (or
    /// never) held; `alive` lists those it holds.
    case versionNotAlive(field: String, version: UInt64, alive: [UInt64])
    /// A request pinned with `require_version` lost its version before it finished: a publication
    /// made more than `limit` (`EngineConfig.maxLiveVersions`) versions live and this one was
    /// retired (the cheapest to give up; pinned requests make a version expensive). Unpinned
    /// requests on it move to the newest version instead; a pinned one cannot keep its contract
    /// and ends with this (an `.error` event, after the samples that had already finished).
    case versionRetired(field: String, version: UInt64, limit: Int)
    /// `publish` got a version not greater than the newest one already published.
    case staleVersion(version: UInt64, newest: UInt64)
    /// `publish` got weights for another architecture (different `LlamaConfig`).
    case incompatibleWeights(reason: String)
    /// `chat` was requested but the engine was created without a chat template.
    case noChatTemplate
    /// An `EngineConfig` value is unusable (block size, pool size, budget, limits).
    case invalidConfig(field: String, reason: String)
    /// A score request was cancelled before it ran (cancelled generation requests instead end
    /// their samples with finish reason `cancelled`).
    case cancelled
    /// The engine has been stopped and takes no more work.
    case stopped
    /// The model failed while running an accepted request (reported through an `.error` event).
    case forwardFailed(reason: String)

    public var description: String {
        switch self {
        case let .invalidRequest(field, reason), let .outOfRange(field, reason): return "\(field): \(reason)"
        case let .exceedsKVPool(field, needed, total, bs):
            return "\(field): the request needs \(needed) KV blocks of \(bs) tokens but the whole pool has \(total); lower max_tokens or n, or enlarge the KV cache"
        case let .versionNotAlive(field, version, alive):
            return "\(field): weight version \(version) is not alive (alive: \(alive.map(String.init).joined(separator: ", ")))"
        case let .versionRetired(field, version, limit):
            return "\(field): weight version \(version) was retired (live versions are limited to \(limit))"
        case let .staleVersion(version, newest):
            return "version: \(version) is not newer than the newest published version \(newest)"
        case let .incompatibleWeights(reason): return "weights: \(reason)"
        case .noChatTemplate: return "chat: the model has no chat template; send token ids or plain text"
        case let .invalidConfig(field, reason): return "engine config \(field): \(reason)"
        case .cancelled: return "the request was cancelled"
        case .stopped: return "the engine is stopped"
        case let .forwardFailed(reason): return "forward pass failed: \(reason)"
        }
    }
}
