import Tokenizer

/// Turns one sample's tokens into text for streaming and matches stop strings on that text across
/// token boundaries.
///
/// Bytes come from the tokenizer's `StreamDecoder` (whole UTF-8 characters only). A stop string
/// found anywhere in the text ends the sample and the text is cut before it. Text that could still
/// turn out to be the beginning of a stop string is held back from the deltas, so nothing after a
/// cut is ever streamed: the deltas always concatenate to the final text.
///
/// Thread: whichever thread owns the sample (the engine's step thread).
struct TextAssembler {
    private var decoder: StreamDecoder
    private let stops: [[UInt8]]
    private let longestStop: Int
    /// (bytes) the text so far.
    private(set) var bytes: [UInt8] = []
    /// Bytes already handed out as deltas.
    private var emitted = 0
    /// Where a stop string begins, once one is found.
    private(set) var cut: Int?

    init(decoder: StreamDecoder, stops: [String]) {
        self.decoder = decoder
        self.stops = stops.map { Array($0.utf8) }.filter { !$0.isEmpty }
        self.longestStop = self.stops.map(\.count).max() ?? 0
    }

    /// Adds one token's text. Returns the delta now safe to stream and whether a stop string was
    /// found (then the delta ends right before it).
    mutating func append(_ token: Int32) -> (delta: String, stopped: Bool) {
        precondition(cut == nil, "text appended after a stop string")
        let piece = decoder.feed(token)
        return add(Array(piece.utf8))
    }

    /// Flushes an unfinished character (as U+FFFD) and returns every byte not yet streamed (up to
    /// a stop string's cut). Call once when the sample ends for any reason.
    mutating func finish() -> String {
        if cut == nil {
            let rest = Array(decoder.finish().utf8)
            if !rest.isEmpty { _ = add(rest) }
        }
        let end = cut ?? bytes.count
        defer { emitted = end }
        return end > emitted ? String(decoding: bytes[emitted..<end], as: UTF8.self) : ""
    }

    /// The final text (cut before a stop string).
    var text: String { String(decoding: bytes[..<(cut ?? bytes.count)], as: UTF8.self) }

    private mutating func add(_ piece: [UInt8]) -> (delta: String, stopped: Bool) {
        let before = bytes.count
        bytes.append(contentsOf: piece)
        guard longestStop > 0 else { return (takeDelta(upTo: bytes.count), false) }
        // A match must end in the new bytes (none existed before), so it starts at most
        // longestStop - 1 bytes before them.
        if let at = firstStop(from: max(0, before - (longestStop - 1))) {
            cut = at
            return (takeDelta(upTo: at), true)
        }
        return (takeDelta(upTo: bytes.count - heldBack()), false)
    }

    private mutating func takeDelta(upTo end: Int) -> String {
        guard end > emitted else { return "" }
        defer { emitted = end }
        return String(decoding: bytes[emitted..<end], as: UTF8.self)
    }

    /// Earliest start ≥ `from` of any stop string in `bytes`.
    private func firstStop(from: Int) -> Int? {
        var best: Int?
        let n = bytes.count
        for s in stops where s.count <= n {
            var i = from
            while i + s.count <= n, i < (best ?? Int.max) {
                if bytes[i] == s[0] && bytes[i..<i + s.count].elementsEqual(s) { best = i; break }
                i += 1
            }
        }
        return best
    }

    /// Length of the longest suffix of `bytes` that is a proper prefix of a stop string.
    private func heldBack() -> Int {
        let n = bytes.count
        var best = 0
        for s in stops {
            var len = min(s.count - 1, n)
            while len > best {
                if bytes[(n - len)...].elementsEqual(s[..<len]) { best = len; break }
                len -= 1
            }
        }
        return best
    }
}
