import CHTTPParser
import Foundation

/// One HTTP/1.x request, as `HTTPRequestParser` read it.
struct HTTPRequest {
    /// "GET", "POST", …
    var method: String
    /// The request target as sent ("/v1/completions?x=1").
    var target: String
    /// The target's path, without the query ("/v1/completions").
    var path: String { String(target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? "") }
    /// Header fields in order, names lowercased, values trimmed.
    var headers: [(name: String, value: String)] = []
    var body: [UInt8] = []
    /// HTTP/1.0 (no chunked replies; the connection closes unless it asked for keep-alive).
    var isHTTP10 = false
    /// The connection may carry another request after this one (`http_should_keep_alive`).
    var keepAlive = true

    /// The first header named `name` (lowercase).
    func header(_ name: String) -> String? { headers.first { $0.name == name }?.value }

    /// The credentials of an `Authorization: Bearer …` header (scheme case-insensitive), nil
    /// without one.
    var bearerToken: String? {
        guard let value = header("authorization"), value.count > 7, value.prefix(7).lowercased() == "bearer " else { return nil }
        return value.dropFirst(7).trimmingCharacters(in: .whitespaces)
    }
}

/// Why a request could not be read. The connection is answered with the status and closed.
enum HTTPParseError: Error, Equatable {
    /// Not HTTP/1.x (bad request line, bad header syntax, bad chunk encoding): 400, with
    /// http-parser's error name and description.
    case malformed(String)
    /// Request line + header fields over the limit: 431.
    case headersTooLarge(limit: Int)
    /// A body over the limit (by its Content-Length, or as chunks arrive): 413.
    case bodyTooLarge(limit: Int)

    var status: Int {
        switch self {
        case .malformed: 400
        case .headersTooLarge: 431
        case .bodyTooLarge: 413
        }
    }

    var message: String {
        switch self {
        case .malformed(let why): "malformed HTTP request: \(why)"
        case .headersTooLarge(let limit): "the request line and header fields exceed \(limit) bytes"
        case .bodyTooLarge(let limit): "the request body exceeds \(limit) bytes"
        }
    }
}

/// A request-by-request reader of an HTTP/1.x byte stream over Node's http-parser (libhttp-parser,
/// the parser Node used with libuv): feed it what the socket delivered, in any pieces; it stops
/// after each complete request (pipelined requests behind it stay unread until `parse` is called
/// again), so the server answers requests in order. Enforces the header and body limits while it
/// reads (a body over the limit is refused by its Content-Length before it is sent).
///
/// Loop thread only (one per connection).
final class HTTPRequestParser {
    enum Outcome {
        /// Every byte was taken; the request is not complete yet.
        case incomplete
        /// A complete request (the bytes after it were not read).
        case request(HTTPRequest)
        /// The stream is not acceptable HTTP; answer `error.status` and close.
        case failed(HTTPParseError)
    }

    let maxHeaderBytes: Int
    let maxBodyBytes: Int
    /// The request being read asked for `Expect: 100-continue` and its headers passed: the caller
    /// should write `100 Continue` (`takeContinue`).
    private var pendingContinue = false

    private let parser: UnsafeMutablePointer<http_parser>
    private var settings = http_parser_settings()
    // The request being read.
    private var method = ""
    private var target: [UInt8] = []
    private var headers: [(name: [UInt8], value: [UInt8])] = []
    private var lastWasValue = false
    private var headerBytes = 0
    private var body: [UInt8] = []
    private var complete: HTTPRequest?
    private var failure: HTTPParseError?
    private var failed = false

    init(maxHeaderBytes: Int, maxBodyBytes: Int) {
        self.maxHeaderBytes = maxHeaderBytes
        self.maxBodyBytes = maxBodyBytes
        parser = .allocate(capacity: 1)
        http_parser_init(parser, HTTP_REQUEST)
        parser.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        settings.on_message_begin = { p in me(p).beginMessage() }
        settings.on_url = { p, at, n in me(p).add(at, n, to: .url) }
        settings.on_header_field = { p, at, n in me(p).add(at, n, to: .field) }
        settings.on_header_value = { p, at, n in me(p).add(at, n, to: .value) }
        settings.on_headers_complete = { p in me(p).headersComplete() }
        settings.on_body = { p, at, n in me(p).add(at, n, to: .body) }
        settings.on_message_complete = { p in me(p).messageComplete() }
    }

    deinit { parser.deallocate() }

    /// Whether a `100 Continue` is due (once per request that asked for it).
    func takeContinue() -> Bool {
        defer { pendingContinue = false }
        return pendingContinue
    }

    /// Reads from `bytes` up to the end of the next complete request.
    /// - Returns: the bytes used (all of them unless a request completed or the stream failed) and
    ///   the outcome.
    func parse(_ bytes: UnsafeRawBufferPointer) -> (used: Int, outcome: Outcome) {
        if failed { return (0, .failed(failure ?? .malformed("the stream failed before"))) }
        if HTTP_PARSER_ERRNO(parser) == HPE_PAUSED { http_parser_pause(parser, 0) }
        let used = bytes.isEmpty ? 0 : http_parser_execute(parser, &settings, bytes.baseAddress!.assumingMemoryBound(to: CChar.self), bytes.count)
        if let request = complete {
            complete = nil
            return (used, .request(request))
        }
        let errno = HTTP_PARSER_ERRNO(parser)
        if errno != HPE_OK {
            failed = true
            if failure == nil {
                failure = .malformed("\(String(cString: http_errno_name(errno))): \(String(cString: http_errno_description(errno)))")
            }
            return (used, .failed(failure!))
        }
        return (used, .incomplete)
    }

    // MARK: Callbacks (inside http_parser_execute)

    private enum Part { case url, field, value, body }

    private func beginMessage() -> Int32 {
        method = ""
        target = []
        headers = []
        lastWasValue = false
        headerBytes = 0
        body = []
        return 0
    }

    private func add(_ at: UnsafePointer<CChar>?, _ n: Int, to part: Part) -> Int32 {
        guard let at, n > 0 else { return 0 }
        let piece = UnsafeRawBufferPointer(start: at, count: n)
        if part == .body {
            guard body.count + n <= maxBodyBytes else { return fail(.bodyTooLarge(limit: maxBodyBytes)) }
            body.append(contentsOf: piece)
            return 0
        }
        headerBytes += n
        guard headerBytes <= maxHeaderBytes else { return fail(.headersTooLarge(limit: maxHeaderBytes)) }
        switch part {
        case .url: target.append(contentsOf: piece)
        case .field:
            if lastWasValue || headers.isEmpty { headers.append(([], [])) }
            headers[headers.count - 1].name.append(contentsOf: piece)
            lastWasValue = false
        case .value:
            if headers.isEmpty { headers.append(([], [])) }
            headers[headers.count - 1].value.append(contentsOf: piece)
            lastWasValue = true
        case .body: break
        }
        return 0
    }

    private func headersComplete() -> Int32 {
        let length = parser.pointee.content_length
        // ULLONG_MAX: no Content-Length (chunked, or no body).
        if length != UInt64.max, length > UInt64(maxBodyBytes) { return fail(.bodyTooLarge(limit: maxBodyBytes)) }
        method = String(cString: http_method_str(http_method(rawValue: parser.pointee.method)))
        if headers.contains(where: { String(decoding: $0.name, as: UTF8.self).lowercased() == "expect"
                                     && String(decoding: $0.value, as: UTF8.self).lowercased() == "100-continue" }) {
            pendingContinue = true
        }
        return 0
    }

    private func messageComplete() -> Int32 {
        var r = HTTPRequest(method: method, target: String(decoding: target, as: UTF8.self))
        r.headers = headers.map { (String(decoding: $0.name, as: UTF8.self).lowercased(),
                                   String(decoding: $0.value, as: UTF8.self).trimmingCharacters(in: .whitespaces)) }
        r.body = body
        r.isHTTP10 = parser.pointee.http_major == 1 && parser.pointee.http_minor == 0
        r.keepAlive = http_should_keep_alive(parser) != 0
        complete = r
        body = []
        // Stop here: the next request is read when the caller asks (after this one is answered).
        http_parser_pause(parser, 1)
        return 0
    }

    private func fail(_ e: HTTPParseError) -> Int32 {
        failure = e
        // -1, not 1: on_headers_complete takes 1 as "no body follows"; anything but 0, 1, 2 stops
        // http_parser_execute with a callback error (and so does any non-zero from a data callback).
        return -1
    }
}

/// The parser that owns `p` (its `data`).
private func me(_ p: UnsafeMutablePointer<http_parser>?) -> HTTPRequestParser {
    Unmanaged<HTTPRequestParser>.fromOpaque(p!.pointee.data).takeUnretainedValue()
}

/// http-parser's error of `p` (the C macro HTTP_PARSER_ERRNO, which Swift does not import).
private func HTTP_PARSER_ERRNO(_ p: UnsafeMutablePointer<http_parser>) -> http_errno {
    http_errno(rawValue: p.pointee.http_errno)
}
