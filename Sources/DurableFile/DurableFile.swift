// DurableFile: crash-safe file writing and the small POSIX helpers around it, in one place for every
// module that writes files which must survive a crash — checkpoints and exports (Model, Learner), the
// preference log and the version ledger (PreferenceLog). Owns: `DurableFileWriter` (temporary name,
// fsync, rename, directory fsync), `writeDurably`, `syncDirectory`, positional read/write loops,
// disk-usage figures, and its error type `DurableFileError`. May import: Foundation / the C library
// only.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// A file-system call failed: the path concerned and why (errno's text).
public struct DurableFileError: Error, Sendable, Equatable, CustomStringConvertible {
    public var path: String
    public var reason: String
    public init(path: String, reason: String) { self.path = path; self.reason = reason }
    public var description: String { "\(path): \(reason)" }
}

/// The text of the current `errno`. Any thread (errno is per thread).
public func errnoText() -> String { String(cString: strerror(errno)) }

/// Writes a file so that a crash leaves either the old file or the complete new one: the bytes go
/// to a temporary name in the same directory, are fsynced, renamed over the destination, and the
/// directory is fsynced so the rename itself is durable. One writer per file; any thread.
public final class DurableFileWriter {
    public let path: String
    private let tempPath: String
    private var fd: Int32
    private var buffer: [UInt8] = []
    private var done = false

    /// Creates the temporary file `path.tmp-PID`.
    /// - Throws: `DurableFileError` naming `path`.
    public init(path: String) throws {
        self.path = path
        tempPath = path + ".tmp-\(getpid())"
        fd = open(tempPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw DurableFileError(path: path, reason: "cannot create \(tempPath): \(errnoText())") }
        buffer.reserveCapacity(1 << 20)
    }

    deinit {
        if !done { close(fd); unlink(tempPath) }
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        offset += bytes.count
        if bytes.count >= 1 << 16 {
            try flushBuffer()
            try writeAll(bytes)
        } else {
            buffer.append(contentsOf: bytes)
            if buffer.count >= 1 << 20 { try flushBuffer() }
        }
    }

    public func write(_ bytes: [UInt8]) throws { try bytes.withUnsafeBytes { try write($0) } }
    public func write(_ s: String) throws { try write(Array(s.utf8)) }
    public func write<T: FixedWidthInteger>(le v: T) throws { try withUnsafeBytes(of: v.littleEndian) { try write($0) } }
    public func write(floats p: UnsafePointer<Float>, count: Int) throws {
        try write(UnsafeRawBufferPointer(start: p, count: count * 4))
    }

    /// Bytes written so far (buffered or not).
    public private(set) var offset = 0

    private func flushBuffer() throws {
        if buffer.isEmpty { return }
        let b = buffer
        buffer.removeAll(keepingCapacity: true)
        try b.withUnsafeBytes { try writeAll($0) }
    }

    private func writeAll(_ bytes: UnsafeRawBufferPointer) throws {
        var off = 0
        while off < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + off, bytes.count - off)
            if n < 0 {
                if errno == EINTR { continue }
                throw DurableFileError(path: path, reason: "write failed: \(errnoText())")
            }
            off += n
        }
    }

    /// Flushes, fsyncs, renames into place and fsyncs the directory.
    public func commit() throws {
        try flushBuffer()
        guard fsync(fd) == 0 else { throw DurableFileError(path: path, reason: "fsync failed: \(errnoText())") }
        close(fd)
        done = true
        guard rename(tempPath, path) == 0 else {
            unlink(tempPath)
            throw DurableFileError(path: path, reason: "rename failed: \(errnoText())")
        }
        try syncDirectory(of: path)
    }
}

/// Writes `data` to `path` durably (temporary name, fsync, rename, directory fsync).
/// - Throws: `DurableFileError` naming `path`.
public func writeDurably(path: String, data: Data) throws {
    let w = try DurableFileWriter(path: path)
    try data.withUnsafeBytes { try w.write($0) }
    try w.commit()
}

/// fsyncs the directory holding `path`, making a rename or creation in it durable.
/// - Throws: `DurableFileError` naming the directory.
public func syncDirectory(of path: String) throws {
    let dir = path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : "."
    try syncDirectory(dir.isEmpty ? "/" : dir)
}

/// fsyncs the directory `dir` itself.
/// - Throws: `DurableFileError` naming `dir`.
public func syncDirectory(_ dir: String) throws {
    let dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard dfd >= 0 else { throw DurableFileError(path: dir, reason: "cannot open directory: \(errnoText())") }
    defer { close(dfd) }
    guard fsync(dfd) == 0 else { throw DurableFileError(path: dir, reason: "fsync of directory failed: \(errnoText())") }
}

/// Writes all of `bytes` at `offset` (retrying short writes and EINTR); false on failure (errno set).
public func pwriteAll(_ fd: Int32, _ bytes: [UInt8], at offset: Int64) -> Bool {
    bytes.withUnsafeBytes { buf in
        var done = 0
        while done < buf.count {
            let n = pwrite(fd, buf.baseAddress! + done, buf.count - done, off_t(offset + Int64(done)))
            if n < 0 { if errno == EINTR { continue }; return false }
            done += n
        }
        return true
    }
}

/// Fills `bytes` from `offset` (retrying short reads and EINTR); false on failure or end of file
/// (errno set, EIO for a short file).
public func preadAll(_ fd: Int32, _ bytes: inout [UInt8], at offset: Int64) -> Bool {
    let count = bytes.count
    return bytes.withUnsafeMutableBytes { buf in
        var done = 0
        while done < count {
            let n = pread(fd, buf.baseAddress! + done, count - done, off_t(offset + Int64(done)))
            if n < 0 { if errno == EINTR { continue }; return false }
            if n == 0 { errno = EIO; return false }
            done += n
        }
        return true
    }
}

/// Bytes allocated on disk under `path` (a `du`-like walk; links not followed; 0 when missing).
public func diskBytes(at path: String) -> Int64 {
    var st = stat()
    guard lstat(path, &st) == 0 else { return 0 }
    var total = Int64(st.st_blocks) * 512
    if (st.st_mode & S_IFMT) == S_IFDIR, let names = try? FileManager.default.contentsOfDirectory(atPath: path) {
        for name in names { total += diskBytes(at: path + "/" + name) }
    }
    return total
}

/// Bytes available to this process on the filesystem holding `path` (statvfs), nil when unknown.
public func freeBytes(at path: String) -> Int64? {
    var s = statvfs()
    guard statvfs(path, &s) == 0 else { return nil }
    return Int64(s.f_bavail) * Int64(s.f_frsize)
}
