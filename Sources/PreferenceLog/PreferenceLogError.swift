/// Everything that can go wrong in this module. The server turns each case into its own error
/// (`ServerError(_:)`, one switch).
public enum PreferenceLogError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The preference log is unusable: not a log, locked by another process, unreadable, or a write
    /// or fsync failed (after which no further record is accepted, since what reached the disk is
    /// unknown).
    case log(path: String, reason: String)
    /// A file or directory of the data directory could not be created, read, written or synced.
    case io(path: String, reason: String)
    /// A path a client named is refused (`field` names the request field that carried it).
    case path(PathRefusal, field: String, reason: String)

    /// Why a client path is refused.
    public enum PathRefusal: Sendable, Equatable {
        /// Empty, absolute, with `..`, too long, or naming the data directory itself.
        case invalid
        /// Does not exist.
        case notFound
        /// Resolves (through a link) outside the data directory.
        case outside
    }

    public var description: String {
        switch self {
        case let .log(path, reason): return "preference log \(path): \(reason)"
        case let .io(path, reason): return "\(path): \(reason)"
        case let .path(_, field, reason): return field.isEmpty ? reason : "\(field): \(reason)"
        }
    }
}
