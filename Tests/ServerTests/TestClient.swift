import Foundation
import Wire
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// A minimal blocking client over a raw socket: frames out with `Frame.encode`, frames in through a
/// `FrameDecoder`. Replies for other ids than the one awaited are kept for later calls.
final class TestClient {
    let fd: Int32
    private var decoder = FrameDecoder(maxFrameBytes: 64 << 20)
    private(set) var stash: [Envelope<ServerMessage>] = []
    /// Set once the server closed the connection (EOF or reset).
    private(set) var closedByPeer = false

    enum Target { case tcp(Int), unix(String) }

    init(_ target: Target, receiveBufferBytes: Int? = nil) throws {
        switch target {
        case .tcp(let port):
            fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            if let n = receiveBufferBytes {
                var v = Int32(n)
                setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, socklen_t(4))
            }
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = UInt16(port).bigEndian
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            let rc = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard rc == 0 else { Glibc.close(fd); throw TestError("connect to port \(port): \(String(cString: strerror(errno)))") }
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(4))
        case .unix(let path):
            fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
            let rc = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            guard rc == 0 else { Glibc.close(fd); throw TestError("connect to \(path): \(String(cString: strerror(errno)))") }
        }
        setTimeout(30)
    }

    deinit { Glibc.close(fd) }

    func setTimeout(_ seconds: Double) {
        var tv = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Writes raw bytes (all of them, or throws).
    func sendRaw(_ bytes: [UInt8]) throws {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + off, bytes.count - off, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw TestError("send: \(String(cString: strerror(errno)))")
            }
            off += n
        }
    }

    func send(_ id: UInt64, _ body: ClientMessage) throws {
        try sendRaw(try Frame.encode(Envelope(id: id, body: body)))
    }

    /// Raw frame body with a header.
    func sendFrame(body: [UInt8]) throws {
        let n = UInt32(body.count)
        try sendRaw([UInt8(n >> 24), UInt8((n >> 16) & 0xFF), UInt8((n >> 8) & 0xFF), UInt8(n & 0xFF)] + body)
    }

    /// The next frame from the socket (nil on EOF; throws on timeout).
    func receiveAny() throws -> Envelope<ServerMessage>? {
        if !stash.isEmpty { return stash.removeFirst() }
        return try readFrame()
    }

    private func readFrame() throws -> Envelope<ServerMessage>? {
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            if let body = try decoder.next() { return try Frame.decodeServer(body) }
            if closedByPeer { return nil }
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { closedByPeer = true; continue }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == ECONNRESET { closedByPeer = true; continue }
                throw TestError("recv: \(String(cString: strerror(errno)))")
            }
            buf.withUnsafeBytes { decoder.append(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        }
    }

    /// The next message for request `id` (others are stashed).
    func receive(_ id: UInt64) throws -> ServerMessage {
        if let i = stash.firstIndex(where: { $0.id == id }) { return stash.remove(at: i).body }
        while true {
            guard let e = try readFrame() else { throw TestError("connection closed while waiting for id \(id)") }
            if e.id == id { return e.body }
            stash.append(e)
        }
    }

    /// Sends a request and returns its first reply.
    func call(_ id: UInt64, _ body: ClientMessage) throws -> ServerMessage {
        try send(id, body)
        return try receive(id)
    }

    /// True once the server has closed the connection (reads until EOF, at most `timeout` s).
    func waitForClose(timeout: Double = 5) -> Bool {
        setTimeout(timeout)
        defer { setTimeout(30) }
        while true {
            do { if try readFrame() == nil { return true } } catch { return closedByPeer }
        }
    }

    func hello(token: String = "") throws -> HelloReply {
        let r = try call(0, .hello(Hello(authToken: token, clientName: "server-tests")))
        guard case .helloReply(let h) = r else { throw TestError("Hello answered \(r)") }
        return h
    }
}

struct TestError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// The error of a reply, or a failure.
func errorOf(_ m: ServerMessage, file: StaticString = #filePath, line: UInt = #line) -> ErrorReply? {
    if case .error(let e) = m { return e }
    XCTFail("expected an Error, got \(m)", file: file, line: line)
    return nil
}

func assertError(_ m: ServerMessage, _ code: ErrorCode, field: String? = nil, file: StaticString = #filePath, line: UInt = #line) {
    guard let e = errorOf(m, file: file, line: line) else { return }
    XCTAssertEqual(e.code, code, "message: \(e.message)", file: file, line: line)
    if let field { XCTAssertEqual(e.field, field, "message: \(e.message)", file: file, line: line) }
}
