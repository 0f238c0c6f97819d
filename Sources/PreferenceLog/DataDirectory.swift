import DurableFile
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The server's data directory (`--data-dir`): the preference log, checkpoints, the version ledger,
/// anything a client names by path. Client paths are confined to it: `resolveExisting` /
/// `resolveNew` accept only relative paths without `..` whose real location (every symlink
/// resolved) is inside the directory. Checkpoints a client names live in their own namespace,
/// `DATA/checkpoints/NAME` (`checkpointDirectory`). Path logic plus `realpath`/`lstat`; any thread.
///
/// Layout: `preferences.wal` (the log), `version` (`VersionLedger`), `checkpoints/` (one directory
/// per checkpoint, `latest` naming the one a restart resumes from). What makes a directory of
/// `checkpoints/` a checkpoint is the learner's knowledge (`isCheckpoint`, given by the server).
///
/// A symlink swapped in between the check and the use (a race with someone who can already write
/// to the data directory) is not defended against.
public struct DataDirectory: Sendable {
    /// The directory as given.
    public let path: String
    /// Its real path (symlinks resolved), the prefix every resolved path must have.
    public let realPath: String
    /// The highest weight version issued here (`DATA/version`).
    public let versions: VersionLedger
    /// Disk use of the directory, measured off the loop (Status).
    public let usage: DiskUsage

    /// The folder of checkpoints, relative to the directory.
    public static let checkpointsFolder = "checkpoints"
    /// `DATA/checkpoints`.
    public var checkpointsPath: String { realPath + "/" + Self.checkpointsFolder }

    /// Whether a path in `checkpoints/` is a checkpoint (counted in `usage`, replaceable by a save).
    public let isCheckpoint: @Sendable (String) -> Bool

    /// Uses `path`, creating it (mode 0700) when missing; reads its version ledger.
    /// - Parameter isCheckpoint: what makes an entry of `checkpoints/` a checkpoint (default: being a
    ///   real directory).
    /// - Throws: `PreferenceLogError.io` when it cannot be created or is not a directory, or
    ///   `version` is unreadable.
    public init(_ path: String, isCheckpoint: @escaping @Sendable (String) -> Bool = DataDirectory.isRealDirectory) throws(PreferenceLogError) {
        var isDir: ObjCBool = false
        if !FileManager.default.fileExists(atPath: path, isDirectory: &isDir) {
            do {
                try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true,
                                                        attributes: [.posixPermissions: 0o700])
            } catch {
                throw PreferenceLogError.io(path: path, reason: "cannot create the data directory: \(error.localizedDescription)")
            }
        } else if !isDir.boolValue {
            throw PreferenceLogError.io(path: path, reason: "not a directory")
        }
        self.path = path
        guard let real = Self.realpath(path) else { throw PreferenceLogError.io(path: path, reason: "cannot resolve: \(errnoText())") }
        realPath = real
        self.isCheckpoint = isCheckpoint
        versions = try VersionLedger(directory: real)
        usage = DiskUsage(root: real, isCheckpoint: isCheckpoint)
    }

    /// The real path of `relative`, which must exist inside the directory.
    /// - Throws: `PreferenceLogError.path` — `.invalid` for an empty, absolute or `..` path,
    ///   `.notFound` when it does not exist, `.outside` when it resolves outside.
    public func resolveExisting(_ relative: String, field: String) throws(PreferenceLogError) -> String {
        try checkSyntax(relative, field: field)
        let joined = path + "/" + relative
        guard let real = Self.realpath(joined) else {
            if errno == ENOENT || errno == ENOTDIR {
                throw PreferenceLogError.path(.notFound, field: field, reason: "\"\(relative)\" does not exist in the data directory")
            }
            throw PreferenceLogError.path(.notFound, field: field, reason: "\"\(relative)\" cannot be resolved: \(errnoText())")
        }
        guard isInside(real) else {
            throw PreferenceLogError.path(.outside, field: field, reason: "\"\(relative)\" resolves outside the data directory")
        }
        return real
    }

    /// Where `relative` would be created: its deepest existing ancestor (and itself, when it exists,
    /// e.g. a checkpoint to replace) must resolve inside the directory. Returns the absolute path
    /// (real ancestor + the components still to create).
    /// - Throws: `PreferenceLogError.path` — `.invalid` for an empty, absolute or `..` path,
    ///   `.outside` when it (or an ancestor) resolves outside.
    public func resolveNew(_ relative: String, field: String) throws(PreferenceLogError) -> String {
        try checkSyntax(relative, field: field)
        let parts = relative.split(separator: "/").map(String.init).filter { $0 != "." && !$0.isEmpty }
        guard !parts.isEmpty else { throw PreferenceLogError.path(.invalid, field: field, reason: "names the data directory itself") }
        // Walk down while components exist, resolving each (a symlink anywhere is followed).
        var resolved = realPath
        var i = 0
        while i < parts.count {
            let candidate = resolved + "/" + parts[i]
            var st = stat()
            if lstat(candidate, &st) != 0 { break }
            guard let real = Self.realpath(candidate) else {
                // A dangling symlink: where it points cannot be checked, so refuse it.
                throw PreferenceLogError.path(.outside, field: field,
                                          reason: "\"\(parts[0...i].joined(separator: "/"))\" is a link that cannot be resolved")
            }
            guard isInside(real) else {
                throw PreferenceLogError.path(.outside, field: field, reason: "\"\(relative)\" resolves outside the data directory")
            }
            resolved = real
            i += 1
        }
        return ([resolved] + parts[i...]).joined(separator: "/")
    }

    /// The path of `absolute` relative to the directory (for replies), or `absolute` itself.
    public func relative(_ absolute: String) -> String {
        absolute.hasPrefix(realPath + "/") ? String(absolute.dropFirst(realPath.count + 1)) : absolute
    }

    private func checkSyntax(_ relative: String, field: String) throws(PreferenceLogError) {
        func invalid(_ r: String) -> PreferenceLogError { .path(.invalid, field: field, reason: r) }
        if relative.isEmpty { throw invalid("must not be empty") }
        if relative.hasPrefix("/") { throw invalid("must be relative to the data directory") }
        if relative.split(separator: "/").contains("..") { throw invalid("must not contain \"..\"") }
        if relative.utf8.count > 4096 { throw invalid("is longer than 4096 bytes") }
    }

    private func isInside(_ real: String) -> Bool {
        real.hasPrefix(realPath == "/" ? "/" : realPath + "/") && real != realPath
    }

    /// A real directory (not a link): the default checkpoint test.
    public static func isRealDirectory(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// `path` with every link resolved, nil when it cannot be (errno set).
    public static func realpath(_ p: String) -> String? {
        guard let r = Glibc.realpath(p, nil) else { return nil }
        defer { free(r) }
        return String(cString: r)
    }
}

/// Disk figures of a data directory, as Status reports them.
public struct DiskFigures: Sendable, Equatable {
    /// Bytes allocated under the directory (log, checkpoints, everything; links not followed).
    public var dataDirBytes: UInt64 = 0
    /// Bytes free to the server on the directory's filesystem.
    public var freeBytes: UInt64 = 0
    /// Checkpoint directories in `checkpoints/`.
    public var checkpoints: Int = 0
    /// When they were measured.
    public var measured = Date.distantPast
}

/// Measures a data directory (a `du`-like walk and `statvfs`) and keeps the last figures, so that
/// Status never walks the disk on the loop thread: `figures` returns the cached ones at once and,
/// when they are older than `maxAge`, starts one background re-measure. Saves and prunes call
/// `refreshInBackground()`. Thread-safe.
public final class DiskUsage: @unchecked Sendable {
    public let root: String
    /// Age after which a read of `figures` starts a re-measure, seconds.
    public var maxAge: TimeInterval = 5
    private let lock = NSLock()
    private var cached = DiskFigures()
    private var measuring = false
    private var again = false

    /// Measures nothing yet: call `refresh()` once the directory is set up (`selm serve` does right
    /// before serving), or the first read of `figures` measures in the background.
    private let isCheckpoint: @Sendable (String) -> Bool

    init(root: String, isCheckpoint: @escaping @Sendable (String) -> Bool) {
        self.root = root
        self.isCheckpoint = isCheckpoint
    }

    /// The last figures (any thread, returns at once); refreshes them in the background when stale.
    public var figures: DiskFigures {
        lock.lock()
        let f = cached
        lock.unlock()
        if Date().timeIntervalSince(f.measured) > maxAge { refreshInBackground() }
        return f
    }

    /// Measures now, on the calling thread (never the loop thread).
    public func refresh() {
        var f = DiskFigures()
        f.dataDirBytes = UInt64(max(0, diskBytes(at: root)))
        f.freeBytes = UInt64(max(0, freeBytes(at: root) ?? 0))
        let folder = root + "/" + DataDirectory.checkpointsFolder
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        f.checkpoints = names.filter { isCheckpoint(folder + "/" + $0) }.count
        f.measured = Date()
        lock.lock(); cached = f; lock.unlock()
    }

    /// Re-measures on a background queue; calls while one runs coalesce into one more. Any thread.
    public func refreshInBackground() {
        lock.lock()
        if measuring { again = true; lock.unlock(); return }
        measuring = true
        lock.unlock()
        DispatchQueue.global(qos: .utility).async { [self] in
            while true {
                refresh()
                lock.lock()
                if again { again = false; lock.unlock(); continue }
                measuring = false
                lock.unlock()
                return
            }
        }
    }
}
