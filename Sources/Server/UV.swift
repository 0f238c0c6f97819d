import CUV
import Foundation

// Small helpers over libuv. The rules (libuv's docs/code examples):
// - handles and requests live in malloc'd memory that never moves; a handle is freed only in its
//   close callback, a request in its completion callback;
// - a write request owns its bytes (allocated together with the request) and frees them in its
//   callback, which libuv calls exactly once (with UV_ECANCELED if the stream closed first);
// - every uv_* call except uv_async_send happens on the loop thread.

/// "message (NAME)" for a libuv error code.
func uvErrorText(_ code: Int32) -> String {
    "\(String(cString: uv_strerror(code))) (\(String(cString: uv_err_name(code))))"
}

/// Zeroed memory for one libuv handle or request of type `T`; release it with `free`.
func uvAllocate<T>(_: T.Type) -> UnsafeMutablePointer<T> {
    calloc(1, MemoryLayout<T>.size)!.bindMemory(to: T.self, capacity: 1)
}

/// The `uv_handle_t` view of a handle.
func uvHandle<T>(_ p: UnsafeMutablePointer<T>) -> UnsafeMutablePointer<uv_handle_t> {
    UnsafeMutableRawPointer(p).assumingMemoryBound(to: uv_handle_t.self)
}

/// The `uv_stream_t` view of a TCP or pipe handle.
func uvStream<T>(_ p: UnsafeMutablePointer<T>) -> UnsafeMutablePointer<uv_stream_t> {
    UnsafeMutableRawPointer(p).assumingMemoryBound(to: uv_stream_t.self)
}

/// Close callback for handles that carry no retained object: frees the handle's memory.
let uvFreeOnClose: uv_close_cb = { handle in free(handle) }

/// Closes `handle` (unless already closing) and frees its memory in the close callback.
func uvCloseAndFree(_ handle: UnsafeMutablePointer<uv_handle_t>) {
    if uv_is_closing(handle) == 0 { uv_close(handle, uvFreeOnClose) }
}

/// A wake-up of the loop from any thread (`uv_async_t`): `signal()` is thread-safe and coalesces
/// (libuv runs the callback once for any number of signals since the last run), so the callback
/// must drain everything that accumulated. After `close()` signals are ignored, so a late signal
/// from another thread can never touch a freed handle.
final class LoopSignal: @unchecked Sendable {
    private let lock = NSLock()
    private var handle: UnsafeMutablePointer<uv_async_t>?
    /// Runs on the loop thread after one or more `signal()` calls.
    private let onWake: () -> Void

    /// Loop thread (or before the loop runs).
    init(loop: UnsafeMutablePointer<uv_loop_t>, onWake: @escaping () -> Void) {
        self.onWake = onWake
        let h = uvAllocate(uv_async_t.self)
        uv_async_init(loop, h) { h in
            let me = Unmanaged<LoopSignal>.fromOpaque(h!.pointee.data).takeUnretainedValue()
            me.onWake()
        }
        h.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        handle = h
    }

    /// Any thread: schedules `onWake` on the loop thread.
    func signal() {
        lock.lock()
        if let h = handle { uv_async_send(h) }
        lock.unlock()
    }

    /// Loop thread: stops accepting signals and closes the handle (its memory is freed in the close
    /// callback). The object must stay alive until then: the loop owner keeps it.
    func close() {
        lock.lock()
        let h = handle
        handle = nil
        lock.unlock()
        if let h { uvCloseAndFree(uvHandle(h)) }
    }
}

/// A queue of jobs for the loop thread: `post` (any thread) appends under a lock and signals the
/// loop; the loop runs every queued job on each wake-up, in posting order.
final class LoopMailbox: @unchecked Sendable {
    private let lock = NSLock()
    private var jobs: [@Sendable () -> Void] = []
    private var open = true
    private var wake: LoopSignal!

    /// Loop thread (or before the loop runs).
    init(loop: UnsafeMutablePointer<uv_loop_t>) {
        wake = LoopSignal(loop: loop) { [unowned self] in self.drain() }
    }

    /// Any thread: runs `job` on the loop thread soon. Returns false (and drops the job) once the
    /// mailbox is closed.
    @discardableResult
    func post(_ job: @escaping @Sendable () -> Void) -> Bool {
        lock.lock()
        guard open else { lock.unlock(); return false }
        jobs.append(job)
        lock.unlock()
        wake.signal()
        return true
    }

    /// Loop thread: runs everything queued (jobs posted meanwhile run on the next wake-up).
    func drain() {
        lock.lock()
        let batch = jobs
        jobs.removeAll(keepingCapacity: true)
        lock.unlock()
        for job in batch { job() }
    }

    /// Loop thread: runs what is queued, refuses further posts, closes the async handle.
    func close() {
        lock.lock(); open = false; lock.unlock()
        drain()
        wake.close()
    }
}

/// Parses "host:port" / "[v6]:port" into a socket address.
func parseSocketAddress(_ text: String, option: String) throws -> (host: String, port: Int32, storage: sockaddr_storage) {
    var host: Substring, portText: Substring
    if text.hasPrefix("[") {
        guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
            throw ServerError.configuration(option: option, reason: "expected [IPv6]:port, got \"\(text)\"")
        }
        host = text[text.index(after: text.startIndex)..<close]
        portText = text[text.index(close, offsetBy: 2)...]
    } else {
        guard let colon = text.lastIndex(of: ":") else {
            throw ServerError.configuration(option: option, reason: "expected host:port, got \"\(text)\"")
        }
        host = text[..<colon]
        portText = text[text.index(after: colon)...]
    }
    guard let port = Int32(portText), (0...65535).contains(port) else {
        throw ServerError.configuration(option: option, reason: "bad port \"\(portText)\"")
    }
    if host == "localhost" { host = "127.0.0.1" }
    var storage = sockaddr_storage()
    let ok = withUnsafeMutableBytes(of: &storage) { raw -> Bool in
        let h = String(host)
        if h.contains(":") {
            return uv_ip6_addr(h, port, raw.baseAddress!.assumingMemoryBound(to: sockaddr_in6.self)) == 0
        }
        return uv_ip4_addr(h, port, raw.baseAddress!.assumingMemoryBound(to: sockaddr_in.self)) == 0
    }
    guard ok else { throw ServerError.configuration(option: option, reason: "\"\(host)\" is not an IP address") }
    return (String(host), port, storage)
}

/// "ip:port" of a bound TCP handle (the real port when 0 was asked for).
func boundAddress(_ tcp: UnsafeMutablePointer<uv_tcp_t>) -> String {
    var storage = sockaddr_storage()
    var len = Int32(MemoryLayout<sockaddr_storage>.size)
    let rc = withUnsafeMutableBytes(of: &storage) { raw in
        uv_tcp_getsockname(tcp, raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), &len)
    }
    guard rc == 0 else { return "?" }
    return describe(&storage)
}

/// "ip:port" of a TCP peer.
func peerAddress(_ tcp: UnsafeMutablePointer<uv_tcp_t>) -> String {
    var storage = sockaddr_storage()
    var len = Int32(MemoryLayout<sockaddr_storage>.size)
    let rc = withUnsafeMutableBytes(of: &storage) { raw in
        uv_tcp_getpeername(tcp, raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), &len)
    }
    guard rc == 0 else { return "?" }
    return describe(&storage)
}

private func describe(_ storage: inout sockaddr_storage) -> String {
    var name = [CChar](repeating: 0, count: 64)
    let family = Int32(storage.ss_family)
    return withUnsafeBytes(of: &storage) { raw -> String in
        if family == AF_INET6 {
            let a = raw.baseAddress!.assumingMemoryBound(to: sockaddr_in6.self)
            uv_ip6_name(a, &name, name.count)
            return "[\(cText(name))]:\(UInt16(bigEndian: a.pointee.sin6_port))"
        }
        let a = raw.baseAddress!.assumingMemoryBound(to: sockaddr_in.self)
        uv_ip4_name(a, &name, name.count)
        return "\(cText(name)):\(UInt16(bigEndian: a.pointee.sin_port))"
    }
}

/// The text of a NUL-terminated C buffer.
private func cText(_ buffer: [CChar]) -> String {
    String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
