import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The server's data directory (`--data-dir`): the preference log, checkpoints, anything a client
/// names by path. Client paths are confined to it: `resolveExisting` / `resolveNew` accept only
/// relative paths without `..` whose real location (every symlink resolved) is inside the
/// directory. Pure path logic plus `realpath`/`lstat`; any thread (the server calls it off the loop).
///
/// A symlink swapped in between the check and the use (a race with someone who can already write
/// to the data directory) is not defended against.
public struct DataDirectory: Sendable {
    /// The directory as given.
    public let path: String
    /// Its real path (symlinks resolved), the prefix every resolved path must have.
    public let realPath: String

    /// Uses `path`, creating it (mode 0700) when missing.
    /// - Throws: `ServerError.io` when it cannot be created or is not a directory.
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
