/// Everything that can go wrong turning bytes into messages or messages into frames.
///
/// Each case knows the request id when it could be read (`requestID`) and converts to the
/// `ErrorReply` the server sends back (`errorReply`), so a connection handler can answer
/// `Envelope(id: error.requestID ?? 0, body: .error(error.errorReply))` and go on reading.
public enum WireError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A frame of `size` body bytes exceeds `limit`: reported by `FrameDecoder` as soon as the
    /// 4-byte header is read (the body is then skipped, never buffered), and by `Frame.encode`
    /// when a message would not fit. → `ErrorCode.frameTooLarge`.
    case frameTooLarge(size: UInt64, limit: Int)
    /// protobuf-c could not unpack the frame body as an `Envelope` (truncated, bad varint or wire
    /// type, ...). `id` is the envelope's id if the bytes before the damage held one.
    /// → `ErrorCode.malformed`.
    case malformed(id: UInt64?)
    /// The envelope has no body at all. → `ErrorCode.unknownBody`.
    case missingBody(id: UInt64)
    /// The envelope's body is field `fieldNumber`, which this build does not know (a newer peer,
    /// or garbage). → `ErrorCode.unknownBody`.
    case unknownBody(id: UInt64, fieldNumber: UInt32)
    /// The body is a known message of the other direction (a reply sent to the server, or a
    /// request sent to a client); `body` is its proto field name. → `ErrorCode.unknownBody`.
    case unexpectedBody(id: UInt64, body: String)
    /// A request field is missing or invalid; `field` is its proto path ("prompts[2].ids",
    /// "sampling.top_p") and `reason` says what is wrong. → `ErrorCode.invalidArgument`.
    case invalidField(id: UInt64, field: String, reason: String)

    /// The id of the request this error is about, when known.
    public var requestID: UInt64? {
        switch self {
        case .frameTooLarge: nil
        case .malformed(let id): id
        case .missingBody(let id), .unknownBody(let id, _), .unexpectedBody(let id, _), .invalidField(let id, _, _): id
        }
    }

    /// The wire error code for this error.
    public var code: ErrorCode {
        switch self {
        case .frameTooLarge: .frameTooLarge
        case .malformed: .malformed
        case .missingBody, .unknownBody, .unexpectedBody: .unknownBody
        case .invalidField: .invalidArgument
        }
    }

    /// The `Error` message to send back to the peer.
    public var errorReply: ErrorReply {
        switch self {
        case .invalidField(_, let field, let reason): ErrorReply(code: code, message: "\(field): \(reason)", field: field)
        default: ErrorReply(code: code, message: description)
        }
    }

    /// A one-line explanation, for logs and `ErrorReply.message`.
    public var description: String {
        switch self {
        case .frameTooLarge(let size, let limit): "frame of \(size) bytes exceeds the limit of \(limit) bytes"
        case .malformed: "frame is not a valid selm.v1.Envelope"
        case .missingBody: "envelope has no body"
        case .unknownBody(_, let number): "envelope body field \(number) is unknown to this peer"
        case .unexpectedBody(_, let body): "envelope body \"\(body)\" is not accepted in this direction"
        case .invalidField(_, let field, let reason): "invalid field \(field): \(reason)"
        }
    }
}
