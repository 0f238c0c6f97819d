import DurableFile
import Foundation

/// The highest weight version ever issued on a data directory, kept in `DATA/version` (one decimal
/// number) so that version numbers never go back or repeat across restarts — a number always means
/// one set of weights.
///
/// Every number is written durably (temporary file, fsync, rename, directory fsync) before the call
/// that issues it returns, so before the engine, a subscriber or a client can see it: a crash at any
/// point leaves a file at least as high as every version anyone saw.
///
/// Thread-safe: one lock, held across the write, so numbers reach the file in the order they are
/// issued. Never call it on the loop thread (it fsyncs).
public final class VersionLedger: @unchecked Sendable {
    public static let fileName = "version"
    /// `DATA/version`.
    public let path: String
    private let lock = NSLock()
    private var recorded: UInt64

    /// Reads `directory/version` (missing: nothing issued yet).
    /// - Throws: `PreferenceLogError.io` when it exists but does not hold a number.
    init(directory: String) throws(PreferenceLogError) {
        path = directory + "/" + Self.fileName
        recorded = 0
        guard let data = FileManager.default.contents(atPath: path) else { return }
        let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard let v = UInt64(text) else {
            throw PreferenceLogError.io(path: path, reason: "does not hold a version number (\"\(text.prefix(40))\"); it records the highest weight version issued")
        }
        recorded = v
    }

    /// The highest version issued so far (0: none).
    public var highest: UInt64 { lock.lock(); defer { lock.unlock() }; return recorded }

    /// The version to serve the starting weights as (`selm serve` start, before the engine exists):
    /// the resumed checkpoint's own version when no other version was issued after it (the same
    /// weights keep their number), else one above the highest ever issued. Recorded before it returns.
    /// - Parameter resumedVersion: the version the resumed checkpoint's weights were published as
    ///   (nil or 0: not a resumed, published set of weights).
    public func begin(resumedVersion: UInt64?) throws(PreferenceLogError) -> UInt64 {
        lock.lock(); defer { lock.unlock() }
        if let r = resumedVersion, r > 0, r >= recorded {
            if r > recorded { try write(r) }  // a data directory from before this file existed
            return r
        }
        let v = recorded + 1
        try write(v)
        return v
    }

    /// Issues the next version: one above every version issued so far and above `after`.
    /// - Throws: `PreferenceLogError.io` when it cannot be recorded (then it is not issued).
    public func issue(after: UInt64 = 0) throws(PreferenceLogError) -> UInt64 {
        lock.lock(); defer { lock.unlock() }
        let v = max(recorded, after) + 1
        try write(v)
        return v
    }

    /// Records `version` as issued when it is above the highest (a server handed an engine that
    /// already serves it).
    public func record(_ version: UInt64) throws(PreferenceLogError) {
        lock.lock(); defer { lock.unlock() }
        if version > recorded { try write(version) }
    }

    /// Guarded by `lock`.
    private func write(_ v: UInt64) throws(PreferenceLogError) {
        do {
            let w = try DurableFileWriter(path: path)
            try w.write("\(v)\n")
            try w.commit()
        } catch {
            throw PreferenceLogError.io(path: path, reason: "cannot record version \(v): \(error)")
        }
        recorded = v
    }
}
