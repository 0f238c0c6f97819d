import Foundation
import Logging

/// The one log format of `selm serve` and `selm train` (swift-log backend): one line per event on
/// stderr,
///
///     2025-01-31T12:34:56.789Z info selm.serve: listening on tcp 127.0.0.1:7070 key=value …
///
/// an ISO-8601 UTC timestamp with milliseconds, the level (trace, debug, info, notice, warning,
/// error, critical), the logger's label, the message, then the metadata as `key=value` pairs sorted
/// by key. Events below the process-wide level (`--log-level`) are dropped before formatting.
/// Thread-safe: each line is one `write(2)`.
public struct SelmLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level
    let label: String

    public init(label: String, level: Logger.Level) {
        self.label = label
        self.logLevel = level
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var all = metadata
        if let m = event.metadata { all.merge(m) { _, new in new } }
        var line = SelmLogHandler.timestamp(Date()) + " \(event.level) \(label): \(event.message)"
        for (k, v) in all.sorted(by: { $0.key < $1.key }) { line += " \(k)=\(v)" }
        line += "\n"
        line.withUTF8 { buf in
            var p = buf.baseAddress!, left = buf.count
            while left > 0 {
                let n = write(STDERR_FILENO, p, left)
                if n <= 0 { if n < 0 && errno == EINTR { continue }; return }
                p += n; left -= n
            }
        }
    }

    /// `date` as ISO-8601 UTC with milliseconds: `2025-01-31T12:34:56.789Z`.
    public static func timestamp(_ date: Date) -> String {
        let t = date.timeIntervalSince1970
        var secs = time_t(t.rounded(.down))
        let ms = min(999, Int((t - Double(secs)) * 1000))
        var tm = tm()
        gmtime_r(&secs, &tm)
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", Int(tm.tm_year) + 1900, Int(tm.tm_mon) + 1, Int(tm.tm_mday),
                      Int(tm.tm_hour), Int(tm.tm_min), Int(tm.tm_sec), ms)
    }
}

/// Process-wide logging setup. `selm` bootstraps it once, before anything logs, with the level of
/// `--log-level` (default info); a library user that never calls `bootstrap` gets swift-log's own
/// default handler.
public enum SelmLogging {
    /// The levels `--log-level` accepts, most verbose first.
    public static let levelNames = ["trace", "debug", "info", "warning", "error"]

    /// Installs `SelmLogHandler` at `level` for every logger. Call once per process, first thing.
    public static func bootstrap(level: Logger.Level) {
        LoggingSystem.bootstrap { label in SelmLogHandler(label: label, level: level) }
    }
}

/// The server's logger (label `selm.serve`).
let serverLogger = Logger(label: "selm.serve")

/// One server event at `level` (info unless said). Any thread.
func serverLog(_ s: String, level: Logger.Level = .info) {
    serverLogger.log(level: level, "\(s)")
}
