import Foundation
import Learner

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
/// per checkpoint, `latest` naming the one a restart resumes from).
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

    /// Uses `path`, creating it (mode 0700) when missing; reads its version ledger.
    /// - Throws: `ServerError.io` when it cannot be created or is not a directory, or `version` is
    ///   unreadable.
    public init(_ path: String) throws {
        var isDir: ObjCBool = false
        if !FileManager.default.fileExists(atPath: path, isDirectory: &isDir) {
            do {
                try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true,
                                                        attributes: [.posixPermissions: 0o700])
            } catch {
                throw ServerError.io(path: path, reason: "cannot create the data directory: \(error.localizedDescription)")
            }
        } else if !isDir.boolValue {
            throw ServerError.io(path: path, reason: "not a directory")
        }
        self.path = path
        guard let real = Self.realpath(path) else { throw ServerError.io(path: path, reason: "cannot resolve: \(errnoText())") }
        realPath = real
        versions = try VersionLedger(directory: real)
        usage = DiskUsage(root: real)
    }

    /// The real path of `relative`, which must exist inside the directory.
    /// - Throws: `ServerError.refused` — `INVALID_ARGUMENT` for an empty, absolute or `..` path,
    ///   `NOT_FOUND` when it does not exist, `PERMISSION_DENIED` when it resolves outside.
    public func resolveExisting(_ relative: String, field: String) throws(ServerError) -> String {
        try checkSyntax(relative, field: field)
        let joined = path + "/" + relative
        guard let real = Self.realpath(joined) else {
            if errno == ENOENT || errno == ENOTDIR {
                throw ServerError.refused(code: .notFound, field: field, reason: "\"\(relative)\" does not exist in the data directory")
            }
            throw ServerError.refused(code: .notFound, field: field, reason: "\"\(relative)\" cannot be resolved: \(errnoText())")
        }
        guard isInside(real) else {
            throw ServerError.refused(code: .permissionDenied, field: field, reason: "\"\(relative)\" resolves outside the data directory")
        }
        return real
    }

    /// Where `relative` would be created: its deepest existing ancestor (and itself, when it exists,
    /// e.g. a checkpoint to replace) must resolve inside the directory. Returns the absolute path
    /// (real ancestor + the components still to create).
    /// - Throws: `ServerError.refused` — `INVALID_ARGUMENT` for an empty, absolute or `..` path,
    ///   `PERMISSION_DENIED` when it (or an ancestor) resolves outside.
    public func resolveNew(_ relative: String, field: String) throws(ServerError) -> String {
        try checkSyntax(relative, field: field)
        let parts = relative.split(separator: "/").map(String.init).filter { $0 != "." && !$0.isEmpty }
        guard !parts.isEmpty else { throw ServerError.invalid(field, "names the data directory itself") }
        // Walk down while components exist, resolving each (a symlink anywhere is followed).
        var resolved = realPath
        var i = 0
        while i < parts.count {
            let candidate = resolved + "/" + parts[i]
            var st = stat()
            if lstat(candidate, &st) != 0 { break }
            guard let real = Self.realpath(candidate) else {
                // A dangling symlink: where it points cannot be checked, so refuse it.
                throw ServerError.refused(code: .permissionDenied, field: field,
                                          reason: "\"\(parts[0...i].joined(separator: "/"))\" is a link that cannot be resolved")
            }
            guard isInside(real) else {
                throw ServerError.refused(code: .permissionDenied, field: field, reason: "\"\(relative)\" resolves outside the data directory")
            }
            resolved = real
            i += 1
        }
        return ([resolved] + parts[i...]).joined(separator: "/")
    }

    /// Where `SaveCheckpoint{name}` writes: `DATA/checkpoints/NAME` (absolute), a fresh name or an
    /// existing checkpoint to replace. `name` is one path component of 1–100 characters from
    /// `A-Z a-z 0-9 . _ -`, starting with a letter or digit; a leading `checkpoints/` (the path a
    /// save replied) is dropped. `latest` and names with the temporary suffixes of a save
    /// (`.partial-`, `.old-`, `.tmp-`) are reserved. So no name reaches the log, the version file,
    /// the `latest` pointer or anything outside the folder.
    /// - Throws: `ServerError.refused` (field `field`) — `INVALID_ARGUMENT` for a bad or reserved
    ///   name, or when `checkpoints/NAME` exists and is not a checkpoint directory (a real directory
    ///   holding `trainer_state.json`, or the journal learner's `journal_state.json`): nothing a save
    ///   did not create is ever replaced; `PERMISSION_DENIED` when `checkpoints` leads outside.
    public func checkpointDirectory(named raw: String, field: String) throws(ServerError) -> String {
        let prefix = Self.checkpointsFolder + "/"
        let name = raw.hasPrefix(prefix) ? String(raw.dropFirst(prefix.count)) : raw
        let bytes = Array(name.utf8)
        func isAlnum(_ b: UInt8) -> Bool { (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) }
        if bytes.isEmpty { throw ServerError.invalid(field, "names no checkpoint after \"\(prefix)\"") }
        if bytes.count > 100 { throw ServerError.invalid(field, "is longer than 100 characters") }
        if bytes.contains(UInt8(ascii: "/")) {
            throw ServerError.invalid(field, "must be a single name, not a path (checkpoints are saved as \(prefix)NAME)")
        }
        guard isAlnum(bytes[0]), bytes.allSatisfy({ isAlnum($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-") }) else {
            throw ServerError.invalid(field, "must start with a letter or digit and hold only A-Z a-z 0-9 . _ - (got \(String(reflecting: name)))")
        }
        if name == "latest" || (Checkpoint.temporarySuffixes + [".tmp-"]).contains(where: { name.contains($0) }) {
            throw ServerError.invalid(field, "\"\(name)\" is reserved (the resume pointer, or a temporary name of a save)")
        }
        _ = try resolveNew(prefix + name, field: field)  // the folder (a link?) stays inside
        let dir = checkpointsPath + "/" + name
        var st = stat()
        if lstat(dir, &st) == 0 && !Self.isCheckpointDirectory(dir) {
            throw ServerError.invalid(field, "\(prefix)\(name) exists and is not a checkpoint; choose another name")
        }
        return dir
    }

    /// Files whose presence makes a directory a checkpoint: the online learner's state and the
    /// journal learner's.
    static let checkpointMarkers = [Checkpoint.stateFile, "journal_state.json"]

    /// A real directory (not a link) holding a checkpoint marker file.
    static func isCheckpointDirectory(_ dir: String) -> Bool {
        var st = stat()
        guard lstat(dir, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else { return false }
        return checkpointMarkers.contains { lstat(dir + "/" + $0, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG }
    }

    /// Cleans `checkpoints/` after saves a crash interrupted (`Checkpoint.recoverInterruptedSaves`).
    /// Call at start, after the preference log is open (its lock proves no other server uses the
    /// directory). Returns lines for the log.
    public func recoverInterruptedSaves() -> [String] {
        let r = Checkpoint.recoverInterruptedSaves(in: checkpointsPath)
        guard !r.actions.isEmpty else { return [] }
        usage.refresh()
        return r.actions.map { "\(Self.checkpointsFolder)/: \($0)" }
            + (r.freedBytes > 0 ? ["\(Self.checkpointsFolder)/: \(byteText(r.freedBytes)) freed"] : [])
    }

    /// The path of `absolute` relative to the directory (for replies), or `absolute` itself.
    public func relative(_ absolute: String) -> String {
        absolute.hasPrefix(realPath + "/") ? String(absolute.dropFirst(realPath.count + 1)) : absolute
    }

    private func checkSyntax(_ relative: String, field: String) throws(ServerError) {
        if relative.isEmpty { throw ServerError.invalid(field, "must not be empty") }
        if relative.hasPrefix("/") { throw ServerError.invalid(field, "must be relative to the data directory") }
        if relative.split(separator: "/").contains("..") { throw ServerError.invalid(field, "must not contain \"..\"") }
        if relative.utf8.count > 4096 { throw ServerError.invalid(field, "is longer than 4096 bytes") }
    }

    private func isInside(_ real: String) -> Bool {
        real.hasPrefix(realPath == "/" ? "/" : realPath + "/") && real != realPath
    }

    static func realpath(_ p: String) -> String? {
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
    init(root: String) {
        self.root = root
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
        f.dataDirBytes = UInt64(max(0, Checkpoint.diskBytes(at: root)))
        f.freeBytes = UInt64(max(0, Checkpoint.freeBytes(at: root) ?? 0))
        let folder = root + "/" + DataDirectory.checkpointsFolder
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        f.checkpoints = names.filter { DataDirectory.isCheckpointDirectory(folder + "/" + $0) }.count
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
