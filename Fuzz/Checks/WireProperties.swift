import Wire

/// The properties the wire fuzzer asserts on every input (Fuzz/README.md), callable from XCTest
/// (Tests/WireTests/CorpusReplayTests.swift replays the committed corpus through them) and from the
/// libFuzzer target (Fuzz/wire), which traps on the first violation.
///
/// An input is used twice: as one frame body (no length prefix), decoded as a client request and as
/// a server reply; and as a byte stream cut into frames by `FrameDecoder`.
///
/// - Decoding never traps (the fuzzer runs with AddressSanitizer: no bad memory access either).
/// - Every decode error has a code that is neither `unspecified` nor unrecognized, a non-empty
///   description and `ErrorReply` message, and `invalidField` names a field and a reason.
/// - An envelope that decodes re-encodes to bytes that decode to an equal envelope (or, a NaN being
///   unequal to itself, to one with the very same encoding), and its complete frame (header + body) comes out of a
///   `FrameDecoder` as that same body.
/// - `FrameDecoder` yields the same frames and errors however the stream is split into chunks; it
///   never holds more than `maxFrameBytes` bytes, never yields a body larger than that, and reports
///   `frameTooLarge` only for a header announcing more.
///
/// Pure functions; any thread.
public enum WireProperties {
    /// The frame limit of the stream check: small, so oversize headers are common in fuzzed inputs.
    public static let streamLimit = 4096

    /// Every property violation `input` shows, as one line each (empty: none).
    public static func violations(_ input: [UInt8]) -> [String] {
        var problems: [String] = []
        checkBody(input, &problems)
        checkStream(input, &problems)
        return problems
    }

    // MARK: One body

    static func checkBody(_ body: [UInt8], _ problems: inout [String]) {
        do {
            let e = try Frame.decodeClient(body)
            let again = Frame.encodeBody(e)
            do {
                let e2 = try Frame.decodeClient(again)
                if !same(e, e2, again: again, encode: Frame.encodeBody) {
                    problems.append("client envelope changed across a re-encode: \(e) became \(e2)")
                }
            } catch {
                problems.append("re-encoded client envelope \(e) no longer decodes: \(error)")
            }
            checkFrame(again, name: "client \(e.body.name)", encode: { () throws(WireError) in try Frame.encode(e, maxFrameBytes: .max) }, &problems)
        } catch {
            checkError(error, context: "decodeClient", &problems)
        }
        do {
            let e = try Frame.decodeServer(body)
            let again = Frame.encodeBody(e)
            do {
                let e2 = try Frame.decodeServer(again)
                if !same(e, e2, again: again, encode: Frame.encodeBody) {
                    problems.append("server envelope changed across a re-encode: \(e) became \(e2)")
                }
            } catch {
                problems.append("re-encoded server envelope \(e) no longer decodes: \(error)")
            }
            checkFrame(again, name: "server \(e.body.name)", encode: { () throws(WireError) in try Frame.encode(e, maxFrameBytes: .max) }, &problems)
        } catch {
            checkError(error, context: "decodeServer", &problems)
        }
    }

    /// Equal envelopes, or — only when `a` holds a NaN, which compares unequal to itself — envelopes
    /// that encode to equal bytes. (The byte comparison alone would pass an encoder that drops a
    /// field: both sides would lose it alike.)
    static func same<T>(_ a: Envelope<T>, _ b: Envelope<T>, again: [UInt8], encode: (Envelope<T>) -> [UInt8]) -> Bool {
        a == b || (containsNaN(a) && encode(b) == again)
    }

    /// Whether a Float or Double anywhere inside `value` is a NaN.
    static func containsNaN(_ value: Any) -> Bool {
        if let f = value as? Float { return f.isNaN }
        if let d = value as? Double { return d.isNaN }
        return Mirror(reflecting: value).children.contains { containsNaN($0.value) }
    }

    /// The complete frame of an envelope whose body is `body` yields exactly `body` from a decoder.
    static func checkFrame(_ body: [UInt8], name: String, encode: () throws(WireError) -> [UInt8], _ problems: inout [String]) {
        let frame: [UInt8]
        do { frame = try encode() } catch {
            problems.append("\(name): Frame.encode failed: \(error)")
            return
        }
        var decoder = FrameDecoder(maxFrameBytes: max(body.count, 1))
        decoder.append(frame)
        do {
            let out = try decoder.next()
            if out != body { problems.append("\(name): FrameDecoder yielded \(out.map { "\($0.count) bytes" } ?? "nothing") for a \(body.count)-byte body") }
        } catch {
            problems.append("\(name): FrameDecoder refused its own frame: \(error)")
        }
        if !decoder.isAtFrameBoundary { problems.append("\(name): FrameDecoder not at a frame boundary after one whole frame") }
    }

    static func checkError(_ error: WireError, context: String, _ problems: inout [String]) {
        switch error.code {
        case .unspecified, .unrecognized: problems.append("\(context): error \(error) has code \(error.code)")
        default: break
        }
        if error.description.isEmpty { problems.append("\(context): error \(error.code) has an empty description") }
        if error.errorReply.message.isEmpty { problems.append("\(context): error \(error.code) has an empty ErrorReply message") }
        if error.errorReply.code != error.code { problems.append("\(context): ErrorReply code \(error.errorReply.code) ≠ \(error.code)") }
        if case let .invalidField(_, field, reason) = error, field.isEmpty || reason.isEmpty {
            problems.append("\(context): invalidField without a field or a reason: \(error)")
        }
        if case let .frameTooLarge(size, limit) = error, size <= UInt64(limit) {
            problems.append("\(context): frameTooLarge for \(size) bytes within the limit \(limit)")
        }
    }

    // MARK: A stream

    typealias Item = Result<[UInt8], WireError>

    static func drain(_ d: inout FrameDecoder, into out: inout [Item]) {
        while true {
            do {
                guard let body = try d.next() else { return }
                out.append(.success(body))
            } catch {
                out.append(.failure(error))
            }
        }
    }

    static func checkStream(_ input: [UInt8], _ problems: inout [String]) {
        let limit = streamLimit
        // The whole input in one append.
        var whole = FrameDecoder(maxFrameBytes: limit)
        var reference: [Item] = []
        whole.append(input)
        drain(&whole, into: &reference)
        if whole.bufferedByteCount > limit { problems.append("stream: \(whole.bufferedByteCount) bytes buffered, limit \(limit)") }
        // Chunks of 1…17 bytes (sizes taken from the input itself), drained after every append.
        var chunked = FrameDecoder(maxFrameBytes: limit)
        var pieces: [Item] = []
        var i = 0, k = 0
        while i < input.count {
            let n = 1 + Int(input[k % input.count]) % 17
            k += 1
            input[i..<min(i + n, input.count)].withUnsafeBytes { chunked.append($0) }
            if chunked.bufferedByteCount > limit { problems.append("stream: \(chunked.bufferedByteCount) bytes buffered, limit \(limit)") }
            drain(&chunked, into: &pieces)
            i += n
        }
        if pieces != reference {
            problems.append("stream: \(pieces.count) items in chunks, \(reference.count) in one append")
        }
        if chunked.isAtFrameBoundary != whole.isAtFrameBoundary || chunked.bufferedByteCount != whole.bufferedByteCount {
            problems.append("stream: decoder state differs between chunked and whole feeding")
        }
        // Expected frames, computed independently from the headers.
        var expected: [Item] = []
        var p = 0
        while input.count - p >= Frame.headerSize {
            let size = Int(input[p]) << 24 | Int(input[p + 1]) << 16 | Int(input[p + 2]) << 8 | Int(input[p + 3])
            p += Frame.headerSize
            if size > limit {
                expected.append(.failure(.frameTooLarge(size: UInt64(size), limit: limit)))
                p += size
            } else if input.count - p >= size {
                expected.append(.success(Array(input[p..<p + size])))
                p += size
            } else {
                break
            }
        }
        if reference != expected {
            problems.append("stream: FrameDecoder yielded \(reference.count) items, the headers say \(expected.count)")
        }
        for item in reference {
            switch item {
            case .success(let body):
                if body.count > limit { problems.append("stream: a \(body.count)-byte body passed the limit \(limit)") }
                checkBody(body, &problems)
            case .failure(let error):
                checkError(error, context: "FrameDecoder", &problems)
            }
        }
    }
}
