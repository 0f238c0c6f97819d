import PreferenceLog
import Wire

/// Everything that can go wrong in the server: refusing one request (`refused`, sent back as an
/// `Error` message) or setting up and running the server's own parts.
public enum ServerError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A request is refused: `code` and `field` (a proto path such as "prompts[0].ids", or empty)
    /// go back to the client in an `Error` message with `reason`; the connection carries on.
    case refused(code: ErrorCode, field: String, reason: String)
    /// A command-line option or configuration value is unusable (`option` names it).
    case configuration(option: String, reason: String)
    /// Binding or listening on an address failed.
    case listen(address: String, reason: String)
    /// A file or directory could not be read, written or synced.
    case io(path: String, reason: String)
    /// The preference log is unusable (bad header, unreadable record before the tail, a failed
    /// write or fsync — after which no further batch is accepted, since what reached the disk is
    /// unknown).
    case log(path: String, reason: String)

    /// Shorthand for `.refused` with `ErrorCode.invalidArgument`.
    static func invalid(_ field: String, _ reason: String) -> ServerError {
        .refused(code: .invalidArgument, field: field, reason: reason)
    }

    /// The server's view of the preference log's (and data directory's) errors: a refused client
    /// path keeps its field (`INVALID_ARGUMENT`, `NOT_FOUND`, `PERMISSION_DENIED`).
    public init(_ e: PreferenceLogError) {
        switch e {
        case let .log(path, reason): self = .log(path: path, reason: reason)
        case let .io(path, reason): self = .io(path: path, reason: reason)
        case let .path(refusal, field, reason):
            let code: ErrorCode = switch refusal {
            case .invalid: .invalidArgument
            case .notFound: .notFound
            case .outside: .permissionDenied
            }
            self = .refused(code: code, field: field, reason: reason)
        }
    }

    /// The `Error` message for the client. Operational failures become `ERROR_CODE_INTERNAL`
    /// (`UNAVAILABLE` for a failed log, which refuses all further batches).
    public var errorReply: ErrorReply {
        switch self {
        case let .refused(code, field, reason):
            return ErrorReply(code: code, message: field.isEmpty ? reason : "\(field): \(reason)", field: field)
        case .log:
            return ErrorReply(code: .unavailable, message: description)
        default:
            return ErrorReply(code: .internal, message: description)
        }
    }

    /// One line for logs and messages.
    public var description: String {
        switch self {
        case let .refused(code, field, reason): return "refused (\(code)): \(field.isEmpty ? "" : field + ": ")\(reason)"
        case let .configuration(option, reason): return "\(option): \(reason)"
        case let .listen(address, reason): return "cannot listen on \(address): \(reason)"
        case let .io(path, reason): return "\(path): \(reason)"
        case let .log(path, reason): return "preference log \(path): \(reason)"
        }
    }
}
