#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Where a `selm serve` listens.
public enum Endpoint: Sendable, Equatable, CustomStringConvertible {
    /// A TCP listener.
    case tcp(host: String, port: UInt16)
    /// A Unix-domain stream socket at this path.
    case unix(path: String)

    /// The default TCP address of `selm serve`.
    public static let defaultAddress = "127.0.0.1:7070"

    /// Parses "HOST:PORT" ("127.0.0.1:7070", "[::1]:7070", "localhost:7070").
    /// - Throws: `SelmClientError.invalidArgument` for anything else.
    public init(address: String) throws(SelmClientError) {
        guard let colon = address.lastIndex(of: ":"), let port = UInt16(address[address.index(after: colon)...]) else {
            throw .invalidArgument(field: "address", reason: "expected HOST:PORT, got \"\(address)\"")
        }
        var host = String(address[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { throw .invalidArgument(field: "address", reason: "expected HOST:PORT, got \"\(address)\"") }
        self = .tcp(host: host, port: port)
    }

    /// "127.0.0.1:7070" or "unix:/path".
    public var description: String {
        switch self {
        case .tcp(let host, let port): host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case .unix(let path): "unix:\(path)"
        }
    }
}

/// A connected stream socket (blocking). Sending is safe from one thread at a time, receiving from
/// one (other) thread; `shutdown()` may be called from any thread to wake a blocked receiver.
final class Socket: @unchecked Sendable {
    let fd: Int32

    private init(fd: Int32) { self.fd = fd }

    deinit { _ = Glibc.close(fd) }

    /// Connects to `endpoint`.
    static func connect(_ endpoint: Endpoint) throws(SelmClientError) -> Socket {
        switch endpoint {
        case .unix(let path): try connectUnix(path, endpoint: endpoint)
        case .tcp(let host, let port): try connectTCP(host, port, endpoint: endpoint)
        }
    }

    private static func connectUnix(_ path: String, endpoint: Endpoint) throws(SelmClientError) -> Socket {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard !bytes.isEmpty, bytes.count < capacity else {
            throw .connectFailed(endpoint: endpoint.description, reason: "a Unix socket path must be 1…\(capacity - 1) bytes")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .connectFailed(endpoint: endpoint.description, reason: errnoText()) }
        let s = Socket(fd: fd)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { throw .connectFailed(endpoint: endpoint.description, reason: errnoText()) }
        return s
    }

    private static func connectTCP(_ host: String, _ port: UInt16, endpoint: Endpoint) throws(SelmClientError) -> Socket {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>? = nil
        let rc = getaddrinfo(host, String(port), &hints, &list)
        guard rc == 0, let first = list else {
            throw .connectFailed(endpoint: endpoint.description, reason: String(cString: gai_strerror(rc)))
        }
        defer { freeaddrinfo(list) }
        var reason = "no address"
        var ai: UnsafeMutablePointer<addrinfo>? = first
        while let a = ai {
            ai = a.pointee.ai_next
            let fd = socket(a.pointee.ai_family, a.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), a.pointee.ai_protocol)
            if fd < 0 { reason = errnoText(); continue }
            let s = Socket(fd: fd)
            if Glibc.connect(fd, a.pointee.ai_addr, a.pointee.ai_addrlen) == 0 {
                var one: Int32 = 1
                _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
                return s
            }
            reason = errnoText()
        }
        throw .connectFailed(endpoint: endpoint.description, reason: reason)
    }

    /// Writes all of `bytes`. Never raises SIGPIPE.
    func sendAll(_ bytes: [UInt8]) throws(SelmClientError) {
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { raw in
                Glibc.send(fd, raw.baseAddress! + sent, raw.count - sent, Int32(MSG_NOSIGNAL))
            }
            if n < 0 {
                if errno == EINTR { continue }
                throw .connectionClosed(reason: "send failed: \(errnoText())")
            }
            sent += n
        }
    }

    /// Reads what is available (blocking until something is); returns 0 at end of stream.
    func receive(into buffer: UnsafeMutableRawBufferPointer) throws(SelmClientError) -> Int {
        while true {
            let n = recv(fd, buffer.baseAddress, buffer.count, 0)
            if n >= 0 { return n }
            if errno == EINTR { continue }
            throw .connectionClosed(reason: "receive failed: \(errnoText())")
        }
    }

    /// Shuts both directions down: a receiver blocked in `receive` returns 0.
    func shutdown() { _ = Glibc.shutdown(fd, Int32(SHUT_RDWR)) }
}

func errnoText() -> String { String(cString: strerror(errno)) }
