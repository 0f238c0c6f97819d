#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes a file so that a crash leaves either the old file or the complete new one: the bytes go
/// to a temporary name in the same directory, are fsynced, renamed over the destination, and the
/// directory is fsynced so the rename itself is durable.
public final class DurableFileWriter {
    public let path: String
    private let tempPath: String
    private var fd: Int32
    private var buffer: [UInt8] = []
    private var done = false

    public init(path: String) throws {
        self.path = path
        tempPath = path + ".tmp-\(getpid())"
        fd = open(tempPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw ModelError.io(file: path, reason: "cannot create \(tempPath): \(String(cString: strerror(errno)))") }
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
                throw ModelError.io(file: path, reason: "write failed: \(String(cString: strerror(errno)))")
            }
            off += n
        }
    }

    /// Flushes, fsyncs, renames into place and fsyncs the directory.
    public func commit() throws {
        try flushBuffer()
        guard fsync(fd) == 0 else { throw ModelError.io(file: path, reason: "fsync failed: \(String(cString: strerror(errno)))") }
        close(fd)
        done = true
        guard rename(tempPath, path) == 0 else {
            unlink(tempPath)
            throw ModelError.io(file: path, reason: "rename failed: \(String(cString: strerror(errno)))")
        }
        try DurableFileWriter.syncDirectory(of: path)
    }

    /// fsyncs the directory holding `path`, making a rename or creation in it durable.
    public static func syncDirectory(of path: String) throws {
        let dir = path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : "."
        let dfd = open(dir.isEmpty ? "/" : dir, O_RDONLY | O_DIRECTORY)
        guard dfd >= 0 else { throw ModelError.io(file: dir, reason: "cannot open directory: \(String(cString: strerror(errno)))") }
        defer { close(dfd) }
        guard fsync(dfd) == 0 else { throw ModelError.io(file: dir, reason: "fsync of directory failed: \(String(cString: strerror(errno)))") }
    }
}
