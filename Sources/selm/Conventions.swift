import ArgumentParser
import Foundation
import Logging
import Server

/// `--log-level`, on `selm serve` and `selm train`: the least severe level printed on stderr.
/// Lines are `SelmLogHandler`'s: ISO-8601 UTC time, level, logger label, message, `key=value`s.
struct LogOptions: ParsableArguments {
    @Option(help: "Least severe log level printed on stderr: trace, debug (adds one line per connection), info, warning or error.")
    var logLevel: String = "info"
    @Flag(help: .hidden) var verbose = false  // deprecated spelling of --log-level debug

    func validate() throws {
        if Logger.Level(rawValue: logLevel) == nil || !SelmLogging.levelNames.contains(logLevel) {
            throw ValidationError("--log-level: expected \(SelmLogging.levelNames.joined(separator: ", ")), got '\(logLevel)'")
        }
    }

    /// The level asked for (`--verbose`, deprecated, is `--log-level debug`).
    var level: Logger.Level {
        let asked = Logger.Level(rawValue: logLevel) ?? .info
        guard verbose else { return asked }
        deprecatedSpelling("--verbose", use: "--log-level debug")
        return min(asked, .debug)
    }
}

/// Commands whose log level the user sets (`selm` bootstraps logging with it before `run()`).
protocol LogLevelCommand {
    var logOptions: LogOptions { get }
}

/// Prints the one-line note for a deprecated spelling (once per process and spelling).
func deprecatedSpelling(_ old: String, use new: String) {
    deprecationLock.lock(); defer { deprecationLock.unlock() }
    guard !deprecationNoted.contains(old) else { return }
    deprecationNoted.insert(old)
    note("selm: warning: \(old) is deprecated; use \(new)")
}
nonisolated(unsafe) private var deprecationNoted: Set<String> = []
private let deprecationLock = NSLock()

/// The value of an option that has a new spelling and an old, hidden one: the new one's, or the old
/// one's (with the deprecation note). Both given: a usage error.
func resolveSpelling<T>(new: T?, old: T?, newName: String, oldName: String) throws -> T? {
    guard let old else { return new }
    if new != nil { throw ValidationError("\(oldName) is the deprecated spelling of \(newName): give only \(newName)") }
    deprecatedSpelling(oldName, use: newName)
    return old
}
