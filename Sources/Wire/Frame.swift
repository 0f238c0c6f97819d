internal import SelmProtoC

/// Frames on the socket: a 4-byte big-endian body length N, then N bytes holding one serialized
/// `selm.v1.Envelope`.
///
/// All functions are pure and thread-safe; on the server they run on the loop thread.
public enum Frame {
    /// Size of the length prefix.
    public static let headerSize = 4
    /// Default limit on a frame's body (16 MiB), for `FrameDecoder` and `encode`.
    public static let defaultMaxFrameBytes = 16 << 20

    // MARK: Encoding

    /// Encodes a request as a complete frame (header + body).
    /// - Throws: `WireError.frameTooLarge` if the body would exceed `maxFrameBytes` (the peer's
    ///   limit; a frame larger than 4 GiB − 1 can never be sent).
    public static func encode(_ envelope: Envelope<ClientMessage>,
                              maxFrameBytes: Int = defaultMaxFrameBytes) throws(WireError) -> [UInt8] {
        let arena = Arena()
        return try packFrame(arena.envelope(envelope), header: true, maxFrameBytes: maxFrameBytes)
    }

    /// Encodes a reply or push as a complete frame (header + body).
    /// - Throws: `WireError.frameTooLarge` if the body would exceed `maxFrameBytes` (the client's
    ///   limit; a frame larger than 4 GiB − 1 can never be sent).
    public static func encode(_ envelope: Envelope<ServerMessage>,
                              maxFrameBytes: Int = defaultMaxFrameBytes) throws(WireError) -> [UInt8] {
        let arena = Arena()
        return try packFrame(arena.envelope(envelope), header: true, maxFrameBytes: maxFrameBytes)
    }

    /// The serialized `Envelope` alone, without the length prefix (what `FrameDecoder` yields).
    public static func encodeBody(_ envelope: Envelope<ClientMessage>) -> [UInt8] {
        let arena = Arena()
        return try! packFrame(arena.envelope(envelope), header: false, maxFrameBytes: Int.max)
    }

    /// The serialized `Envelope` alone, without the length prefix (what `FrameDecoder` yields).
    public static func encodeBody(_ envelope: Envelope<ServerMessage>) -> [UInt8] {
        let arena = Arena()
        return try! packFrame(arena.envelope(envelope), header: false, maxFrameBytes: Int.max)
    }

    // MARK: Decoding

    /// Decodes and validates one frame body (no length prefix) received by the server.
    /// - Throws: `WireError.malformed`, `.missingBody`, `.unknownBody`, `.unexpectedBody` (a
    ///   server message), or `.invalidField`; each carries the envelope id when it could be read.
    public static func decodeClient(_ body: UnsafeRawBufferPointer) throws(WireError) -> Envelope<ClientMessage> {
        try Unpacked.decodeClient(body)
    }

    /// Decodes and validates one frame body (no length prefix) received by the server.
    public static func decodeClient(_ body: [UInt8]) throws(WireError) -> Envelope<ClientMessage> {
        try body.withUnsafeBytes { bytes in Result { () throws(WireError) in try Unpacked.decodeClient(bytes) } }.get()
    }

    /// The proto name of the request ("generate") a client frame body carries — also when the body
    /// could not be decoded (damaged, or refused by a field check): read from the envelope's body
    /// field number if that is a request (10–39) this build knows; nil otherwise. For counting
    /// refused requests by type.
    public static func requestType(of body: [UInt8]) -> String? {
        body.withUnsafeBytes { bytes -> String? in
            guard let number = scanEnvelope(bytes).body, (10..<40).contains(number) else { return nil }
            return Unpacked.knownBodyName(number)
        }
    }

    /// Decodes one frame body (no length prefix) received by a client. Replies are not validated
    /// beyond what protobuf checks.
    /// - Throws: `WireError.malformed`, `.missingBody`, `.unknownBody`, or `.unexpectedBody` (a
    ///   client request).
    public static func decodeServer(_ body: UnsafeRawBufferPointer) throws(WireError) -> Envelope<ServerMessage> {
        try Unpacked.decodeServer(body)
    }

    /// Decodes one frame body (no length prefix) received by a client.
    public static func decodeServer(_ body: [UInt8]) throws(WireError) -> Envelope<ServerMessage> {
        try body.withUnsafeBytes { bytes in Result { () throws(WireError) in try Unpacked.decodeServer(bytes) } }.get()
    }
}

/// Splits a byte stream into frame bodies.
///
/// Feed it whatever the socket delivered with `append(_:)`, then call `next()` until it returns
/// `nil`. Headers are parsed as bytes arrive: a header announcing more than `maxFrameBytes` is
/// reported by `next()` as `WireError.frameTooLarge` (in stream order, after the frames before it)
/// and that frame's body is then discarded as it arrives, never buffered; the frames after it
/// decode normally, so the caller may answer with an error and keep the connection, or close it.
///
/// Not thread-safe: one decoder per connection, used from one thread (the server's loop thread).
public struct FrameDecoder: Sendable {
    /// The largest body accepted. May be changed between frames: it applies to every header read
    /// after the change (use `appendUntilReady(_:)` to stop reading headers at a frame boundary).
    public var maxFrameBytes: Int {
        didSet { precondition(maxFrameBytes >= 0, "maxFrameBytes must not be negative") }
    }

    /// Bytes of a partial header (< 4) or partial body.
    private var partial: [UInt8] = []
    /// Body length of the frame being collected, once its header is complete.
    private var bodyLength: Int? = nil
    /// Body bytes of an oversize frame still to discard.
    private var skipRemaining: UInt64 = 0
    /// Complete frames and errors not yet returned by `next()`, in stream order.
    private var ready: [Result<[UInt8], WireError>] = []
    private var readyHead = 0

    /// A decoder refusing bodies larger than `maxFrameBytes` (default 16 MiB).
    public init(maxFrameBytes: Int = Frame.defaultMaxFrameBytes) {
        precondition(maxFrameBytes >= 0, "maxFrameBytes must not be negative")
        self.maxFrameBytes = maxFrameBytes
    }

    /// Bytes held for an incomplete frame (a partial header or body); skipped bytes not counted.
    public var bufferedByteCount: Int { partial.count }

    /// True when no frame is being assembled or skipped (a clean place to close the stream).
    public var isAtFrameBoundary: Bool { partial.isEmpty && bodyLength == nil && skipRemaining == 0 }

    /// Consumes a chunk of the stream (any size, any split).
    public mutating func append(_ bytes: UnsafeRawBufferPointer) {
        _ = consume(bytes, stopWhenReady: false)
    }

    /// Consumes bytes from the start of `bytes` until a frame (or an oversize-frame error) is ready
    /// for `next()`, and returns how many it consumed (all of them when no frame completes; none
    /// when one was already waiting). Between two calls the caller may change `maxFrameBytes`
    /// knowing that no later header has been judged yet — the server reads a connection's frames
    /// before Hello under a small limit, and the frames after a Hello under the full one, even when
    /// both arrive in one read.
    public mutating func appendUntilReady(_ bytes: UnsafeRawBufferPointer) -> Int {
        consume(bytes, stopWhenReady: true)
    }

    private mutating func consume(_ bytes: UnsafeRawBufferPointer, stopWhenReady: Bool) -> Int {
        guard let base = bytes.baseAddress else { return 0 }
        var p = base.assumingMemoryBound(to: UInt8.self)
        var left = bytes.count
        while left > 0 {
            if stopWhenReady && readyHead < ready.count { break }
            if skipRemaining > 0 {
                let k = Int(min(skipRemaining, UInt64(left)))
                skipRemaining -= UInt64(k)
                p += k; left -= k
                continue
            }
            if let n = bodyLength {
                // Whole body present and nothing buffered: copy it out in one go.
                if partial.isEmpty && left >= n {
                    ready.append(.success(Array(UnsafeBufferPointer(start: p, count: n))))
                    p += n; left -= n
                    bodyLength = nil
                    continue
                }
                let k = min(n - partial.count, left)
                partial.append(contentsOf: UnsafeBufferPointer(start: p, count: k))
                p += k; left -= k
                if partial.count == n {
                    ready.append(.success(partial))
                    partial = []
                    bodyLength = nil
                }
                continue
            }
            // Header.
            let k = min(Frame.headerSize - partial.count, left)
            partial.append(contentsOf: UnsafeBufferPointer(start: p, count: k))
            p += k; left -= k
            if partial.count == Frame.headerSize {
                let size = UInt64(partial[0]) << 24 | UInt64(partial[1]) << 16 | UInt64(partial[2]) << 8 | UInt64(partial[3])
                partial = []
                if size > UInt64(maxFrameBytes) {
                    ready.append(.failure(.frameTooLarge(size: size, limit: maxFrameBytes)))
                    skipRemaining = size
                } else if size == 0 {
                    ready.append(.success([]))
                } else {
                    bodyLength = Int(size)
                    partial.reserveCapacity(min(Int(size), 64 << 10))
                }
            }
        }
        return bytes.count - left
    }

    /// Consumes a chunk of the stream given as an array.
    public mutating func append(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { append($0) }
    }

    /// The next complete frame body (without its header), or `nil` if more bytes are needed.
    /// - Throws: `WireError.frameTooLarge(size:limit:)` once for each oversize frame, in order.
    public mutating func next() throws(WireError) -> [UInt8]? {
        guard readyHead < ready.count else { return nil }
        let item = ready[readyHead]
        ready[readyHead] = .success([])
        readyHead += 1
        if readyHead == ready.count {
            ready.removeAll(keepingCapacity: ready.capacity <= 64)
            readyHead = 0
        }
        return try item.get()
    }
}

// MARK: - Packing

/// Packs an envelope built in an arena; the arena must outlive this call.
private func packFrame(_ envelope: UnsafeMutablePointer<Selm__V1__Envelope>, header: Bool,
                       maxFrameBytes: Int) throws(WireError) -> [UInt8] {
    let size = selm__v1__envelope__get_packed_size(envelope)
    guard size <= maxFrameBytes, !header || size <= Int(UInt32.max) else {
        throw .frameTooLarge(size: UInt64(size), limit: maxFrameBytes)
    }
    let offset = header ? Frame.headerSize : 0
    if offset + size == 0 { return [] }
    return [UInt8](unsafeUninitializedCapacity: offset + size) { buffer, count in
        let base = buffer.baseAddress!
        if header {
            base[0] = UInt8(truncatingIfNeeded: size >> 24)
            base[1] = UInt8(truncatingIfNeeded: size >> 16)
            base[2] = UInt8(truncatingIfNeeded: size >> 8)
            base[3] = UInt8(truncatingIfNeeded: size)
        }
        let written = selm__v1__envelope__pack(envelope, base + offset)
        precondition(written == size, "protobuf-c packed \(written) bytes, expected \(size)")
        count = offset + size
    }
}
