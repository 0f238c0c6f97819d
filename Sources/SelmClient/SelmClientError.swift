import Wire

/// Everything that can make a `SelmClient` call fail.
///
/// A request the server refused is `.server`, carrying the server's code, message and the offending
/// field as a proto path ("sampling.top_p", "rows[0].chosen"); the other cases are failures of the
/// connection or of this side.
public enum SelmClientError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The server answered request `requestID` with an `Error` (which ends that request).
    case server(code: ErrorCode, message: String, field: String, requestID: UInt64)
    /// The server could not be reached (`endpoint` as given, `reason` from the system).
    case connectFailed(endpoint: String, reason: String)
    /// The connection is closed (by the server, a network failure, or `SelmClient.close()`); requests
    /// still waiting end with this error.
    case connectionClosed(reason: String)
    /// No reply to `requestID` arrived within `seconds`.
    case timeout(requestID: UInt64, seconds: Double)
    /// A request of `size` bytes would exceed the receiver's frame limit (`limit`): the server's
    /// `max_frame_bytes` for requests, this client's limit for replies.
    case frameTooLarge(size: UInt64, limit: Int)
    /// The server sent something this client did not expect (an undecodable frame, a reply of the
    /// wrong kind).
    case protocolViolation(String)
    /// An argument was refused before anything was sent (`field` names it).
    case invalidArgument(field: String, reason: String)

    /// The server's error code (`.server`), or the code the failure corresponds to, if any.
    public var code: ErrorCode? {
        switch self {
        case .server(let code, _, _, _): code
        case .frameTooLarge: .frameTooLarge
        case .invalidArgument: .invalidArgument
        default: nil
        }
    }

    /// The offending request field as a proto path, or "".
    public var field: String {
        switch self {
        case .server(_, _, let field, _): field
        case .invalidArgument(let field, _): field
        default: ""
        }
    }

    /// The proto name of an error code without its prefix: "INVALID_ARGUMENT", "NOT_FOUND".
    public static func name(of code: ErrorCode) -> String {
        if case .unrecognized(let v) = code { return "CODE_\(v)" }  // as the Python client says it
        return code.protoName
    }

    /// One line with the code, the message and the field (unless the message names it already):
    /// "INVALID_ARGUMENT: sampling.top_p: must be in (0, 1]", "NOT_FOUND: no such version (field require_version)".
    public var description: String {
        switch self {
        case .server(let code, let message, let field, _):
            field.isEmpty || message.contains(field)
                ? "\(Self.name(of: code)): \(message)" : "\(Self.name(of: code)): \(message) (field \(field))"
        case .connectFailed(let endpoint, let reason): "cannot connect to \(endpoint): \(reason)"
        case .connectionClosed(let reason): "connection closed: \(reason)"
        case .timeout(let id, let seconds): "no reply to request \(id) within \(seconds) s"
        case .frameTooLarge(let size, let limit): "FRAME_TOO_LARGE: frame of \(size) bytes exceeds the limit of \(limit) bytes"
        case .protocolViolation(let what): "protocol violation: \(what)"
        case .invalidArgument(let field, let reason): "INVALID_ARGUMENT: \(field): \(reason)"
        }
    }
}
