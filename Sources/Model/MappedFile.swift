#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A read-only memory map of a whole file. Pages are loaded on demand by the kernel, so opening a
/// large checkpoint costs nothing until its bytes are read, and they count towards RSS only while
/// they are resident.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    public let count: Int
    public let base: UnsafeRawPointer

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw ModelError.io(file: path, reason: "cannot open: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw ModelError.io(file: path, reason: "cannot stat: \(String(cString: strerror(errno)))") }
        if (st.st_mode & S_IFMT) == S_IFDIR { throw ModelError.io(file: path, reason: "is a directory, expected a file") }
        count = Int(st.st_size)
        if count == 0 {
            base = UnsafeRawPointer(UnsafeMutableRawPointer.allocate(byteCount: 1, alignment: 16))
            return
        }
        guard let p = mmap(nil, count, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
            throw ModelError.io(file: path, reason: "cannot map: \(String(cString: strerror(errno)))")
        }
        base = UnsafeRawPointer(p)
    }

    /// Tells the kernel the mapped pages will not be needed again soon (frees page cache from RSS).
    public func dropPages() {
        if count > 0 { madvise(UnsafeMutableRawPointer(mutating: base), count, Int32(MADV_DONTNEED)) }
    }

    deinit {
        if count > 0 { munmap(UnsafeMutableRawPointer(mutating: base), count) }
        else { UnsafeMutableRawPointer(mutating: base).deallocate() }
    }
}

/// A bounds-checked little-endian reader over a byte range. Every read that would run past the end
/// throws `ModelError.truncated` naming `what` was being read.
struct ByteReader {
    let base: UnsafeRawPointer
    let count: Int
    let file: String
    var offset: Int = 0

    init(base: UnsafeRawPointer, count: Int, file: String) {
        self.base = base; self.count = count; self.file = file
    }

    mutating func need(_ n: Int, _ what: @autoclosure () -> String) throws {
        if n < 0 || offset > count - n { throw ModelError.truncated(file: file, what: what()) }
    }

    mutating func read<T: FixedWidthInteger>(_: T.Type, _ what: @autoclosure () -> String) throws -> T {
        try need(MemoryLayout<T>.size, what())
        let v = base.loadUnaligned(fromByteOffset: offset, as: T.self)
        offset += MemoryLayout<T>.size
        return T(littleEndian: v)
    }

    mutating func readF32(_ what: @autoclosure () -> String) throws -> Float {
        Float(bitPattern: try read(UInt32.self, what()))
    }

    mutating func readF64(_ what: @autoclosure () -> String) throws -> Double {
        Double(bitPattern: try read(UInt64.self, what()))
    }

    mutating func readBytes(_ n: Int, _ what: @autoclosure () -> String) throws -> UnsafeRawBufferPointer {
        try need(n, what())
        let b = UnsafeRawBufferPointer(start: base + offset, count: n)
        offset += n
        return b
    }
}
