import Foundation

/// A byte-level BPE tokenizer (GPT-2 family: SmolLM, Llama-3, Qwen2): text ⇄ token ids.
///
/// Encoding: special tokens are cut out whole (longest first, leftmost first), the text between them
/// is split into words by the pre-tokenizer, each word's UTF-8 bytes are merged by BPE rank.
/// Decoding: each token's bytes are concatenated and read as UTF-8 (invalid bytes become U+FFFD).
///
/// Immutable after `init` apart from an internal, locked word cache: any thread may use one instance.
public final class Tokenizer: Sendable {
    /// Id of the beginning-of-sequence token, if the model has one.
    public let bosId: Int32?
    /// Id of the end-of-sequence token, if the model has one.
    public let eosId: Int32?
    /// Id of the unknown token, if the model has one.
    public let unkId: Int32?
    /// Id of the padding token, if the model has one.
    public let padId: Int32?
    /// Whether prompts should start with BOS (pass it as `encode(_:addBOS:)`'s argument).
    public let addBOS: Bool
    /// The chat template text (Jinja) the model ships, if any; see `ChatTemplate(templateText:)`.
    public let chatTemplateText: String?
    /// The pre-tokenizer this tokenizer splits text with.
    public let preTokenizer: PreTokenizerKind

    private let tokens: [String]
    private let types: [TokenType]
    /// UTF-8 of each vocabulary entry → its id (the first, if an entry repeats).
    private let idsByText: [[UInt8]: Int32]
    /// (vocabSize + 1) start of each token's decoded bytes in `decodedBytes`, then the end.
    private let decodedOffsets: [Int]
    private let decodedBytes: [UInt8]
    private let bpe: BPE
    private let specials: SpecialTokens
    private let normalizeNFC: Bool

    /// Number of entries in the vocabulary (ids are `0..<vocabSize`).
    public var vocabSize: Int { tokens.count }

    /// The most bytes of input text one token can stand for: the longest token's bytes (a special
    /// token's text included), times 3 when the text is NFC-normalised first (composition shrinks
    /// UTF-8 by at most 3×, Hangul jamo). So a text of more than `n × maxBytesPerToken` bytes encodes
    /// to more than `n` tokens — a bound checked before tokenizing — except for bytes the vocabulary
    /// cannot represent at all (no byte token and no unknown token), which produce no token.
    public let maxBytesPerToken: Int

    /// Builds a tokenizer from a spec, checking it.
    /// - Throws: `TokenizerError.invalidSpec` when the vocabulary is empty, `tokenTypes` has another
    ///   length than `tokens`, a special id is out of range, or a merge names a token (or produces
    ///   one) the vocabulary lacks.
    public init(spec: TokenizerSpec) throws {
        let n = spec.tokens.count
        guard n > 0, n < Int(Int32.max) else {
            throw TokenizerError.invalidSpec(field: "tokens", reason: "vocabulary has \(n) entries")
        }
        for (field, id) in [("bosId", spec.bosId), ("eosId", spec.eosId), ("unkId", spec.unkId), ("padId", spec.padId)] {
            if let id, !(0..<Int32(n)).contains(id) {
                throw TokenizerError.invalidSpec(field: field, reason: "id \(id) is outside the vocabulary (0..<\(n))")
            }
        }

        var types: [TokenType]
        if let codes = spec.tokenTypes {
            guard codes.count == n else {
                throw TokenizerError.invalidSpec(field: "tokenTypes", reason: "\(codes.count) entries for \(n) tokens")
            }
            types = codes.map { TokenType(rawValue: $0) ?? .normal }
        } else {
            types = [TokenType](repeating: .normal, count: n)
            for id in [spec.bosId, spec.eosId, spec.padId].compactMap({ $0 }) { types[Int(id)] = .control }
            if let unk = spec.unkId { types[Int(unk)] = .unknown }
        }

        var idsByText: [[UInt8]: Int32] = [:]
        idsByText.reserveCapacity(n)
        for (id, token) in spec.tokens.enumerated() where idsByText[Array(token.utf8)] == nil {
            idsByText[Array(token.utf8)] = Int32(id)
        }

        // Merge ranks; a merge repeated later overrides the earlier rank (as Hugging Face's does).
        var merges: [UInt64: BPE.Merge] = [:]
        merges.reserveCapacity(spec.merges.count)
        for (rank, rule) in spec.merges.enumerated() {
            let utf8 = Array(rule.utf8)
            guard utf8.count >= 3, let space = utf8[1...].firstIndex(of: 0x20) else {
                throw TokenizerError.invalidSpec(field: "merges", reason: "merge #\(rank) '\(rule)' is not two tokens separated by a space")
            }
            let left = Array(utf8[..<space]), right = Array(utf8[(space + 1)...])
            guard let l = idsByText[left], let r = idsByText[right], let m = idsByText[left + right] else {
                throw TokenizerError.invalidSpec(field: "merges", reason: "merge #\(rank) '\(rule)' names or produces a token that is not in the vocabulary")
            }
            merges[BPE.key(l, r)] = BPE.Merge(rank: Int32(rank), id: m)
        }

        let byteIds: [Int32] = (0..<256).map { b in
            idsByText[Array(ByteLevel.encode([UInt8(b)]).utf8)] ?? -1
        }
        var wholeWords: [[UInt8]: Int32]?
        if spec.ignoreMerges {
            var map: [[UInt8]: Int32] = [:]
            for (id, token) in spec.tokens.enumerated() where types[id] == .normal {
                let bytes = ByteLevel.decode(token)
                if map[bytes] == nil { map[bytes] = Int32(id) }
            }
            wholeWords = map
        }

        var offsets: [Int] = [0]
        var decoded: [UInt8] = []
        offsets.reserveCapacity(n + 1)
        for (id, token) in spec.tokens.enumerated() {
            switch types[id] {
            case .control, .userDefined, .unknown: decoded.append(contentsOf: token.utf8)
            case .normal, .unused, .byte: decoded.append(contentsOf: ByteLevel.decode(token))
            }
            offsets.append(decoded.count)
        }

        var longest = 1
        for id in 0..<n { longest = max(longest, offsets[id + 1] - offsets[id]) }
        self.maxBytesPerToken = longest * (spec.normalizeNFC ? 3 : 1)
        self.tokens = spec.tokens
        self.types = types
        self.idsByText = idsByText
        self.decodedOffsets = offsets
        self.decodedBytes = decoded
        self.bpe = BPE(merges: merges, byteIds: byteIds, wholeWords: wholeWords, unkId: spec.unkId)
        self.specials = SpecialTokens(tokens: spec.tokens, types: types)
        self.preTokenizer = spec.preTokenizer
        self.normalizeNFC = spec.normalizeNFC
        self.bosId = spec.bosId
        self.eosId = spec.eosId
        self.unkId = spec.unkId
        self.padId = spec.padId
        self.addBOS = spec.addBOS
        self.chatTemplateText = spec.chatTemplate
    }

    // MARK: encoding

    /// Token ids of `text`.
    /// - Parameters:
    ///   - parseSpecial: match control tokens written in the text (`<|im_start|>`) as single tokens;
    ///     when false they are tokenized as ordinary text. User-defined added tokens always match.
    ///   - addBOS: start with `bosId` (callers normally pass `tokenizer.addBOS`); nothing is added
    ///     when the text already begins with the BOS token.
    public func encode(_ text: String, parseSpecial: Bool = true, addBOS: Bool = false) -> [Int32] {
        var out: [Int32] = []
        out.reserveCapacity(text.utf8.count / 3 + 2)
        var text = text
        text.withUTF8 { bytes in
            specials.split(bytes, parseSpecial: parseSpecial) { range in
                encodeOrdinary(UnsafeBufferPointer(rebasing: bytes[range]), into: &out)
            } special: { id in
                out.append(id)
            }
        }
        if addBOS, let bosId, out.first != bosId { out.insert(bosId, at: 0) }
        return out
    }

    /// Encodes text containing no special tokens: normalise, pre-tokenize, BPE each piece.
    private func encodeOrdinary(_ bytes: UnsafeBufferPointer<UInt8>, into out: inout [Int32]) {
        guard !bytes.isEmpty else { return }
        if normalizeNFC {
            var normalized = String(decoding: bytes, as: UTF8.self).precomposedStringWithCanonicalMapping
            normalized.withUTF8 { encodePieces($0, into: &out) }
        } else {
            encodePieces(bytes, into: &out)
        }
    }

    private func encodePieces(_ bytes: UnsafeBufferPointer<UInt8>, into out: inout [Int32]) {
        let text = ScalarText(utf8: bytes)
        preTokenizer.forEachPiece(text) { range in
            let piece = bytes[text.offsets[range.lowerBound]..<text.offsets[range.upperBound]]
            bpe.encode(UnsafeBufferPointer(rebasing: piece), into: &out)
        }
    }

    // MARK: decoding

    /// The text of `ids`: their bytes concatenated and read as UTF-8, invalid sequences replaced by
    /// U+FFFD. Special tokens appear as their text unless `skipSpecialTokens`; ids outside the
    /// vocabulary are skipped.
    public func decode(_ ids: [Int32], skipSpecialTokens: Bool = false) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(ids.count * 4)
        for id in ids { appendBytes(of: id, skipSpecialTokens: skipSpecialTokens, to: &bytes) }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// A decoder that turns ids into text one at a time, never splitting a character; see
    /// `StreamDecoder`.
    public func makeStreamDecoder(skipSpecialTokens: Bool = false) -> StreamDecoder {
        StreamDecoder(tokenizer: self, skipSpecialTokens: skipSpecialTokens)
    }

    func appendBytes(of id: Int32, skipSpecialTokens: Bool, to bytes: inout [UInt8]) {
        guard id >= 0, Int(id) < tokens.count else { return }
        if skipSpecialTokens, isSpecial(id) { return }
        bytes.append(contentsOf: decodedBytes[decodedOffsets[Int(id)]..<decodedOffsets[Int(id) + 1]])
    }

    // MARK: vocabulary

    /// Id of the vocabulary entry spelled exactly `tokenText` (byte-level spelling for ordinary
    /// tokens, e.g. `"Ġworld"`; special tokens as written, e.g. `"<|im_end|>"`).
    public func id(of tokenText: String) -> Int32? { idsByText[Array(tokenText.utf8)] }

    /// The vocabulary entry of `id`, as spelled in the vocabulary (`"Ġworld"`); nil when out of range.
    /// `decode([id])` gives its text instead.
    public func token(_ id: Int32) -> String? {
        id >= 0 && Int(id) < tokens.count ? tokens[Int(id)] : nil
    }

    /// Whether `id` is a control or unknown token (`<|im_end|>`, `<|endoftext|>`), as opposed to text.
    public func isSpecial(_ id: Int32) -> Bool {
        guard id >= 0, Int(id) < types.count else { return false }
        return types[Int(id)] == .control || types[Int(id)] == .unknown
    }
}

/// Turns token ids into text one id at a time, for streaming. Each `feed` returns only complete,
/// valid UTF-8: the leading bytes of a character whose remaining bytes have not arrived yet are held
/// back. The concatenation of every `feed` and the final `finish` equals `Tokenizer.decode` of all ids.
///
/// A value with its own state: keep one per generated sequence, on whichever thread feeds it.
public struct StreamDecoder: Sendable {
    private let tokenizer: Tokenizer
    private let skipSpecialTokens: Bool
    /// Bytes received but not yet returned (at most 3: an incomplete character).
    private var pending: [UInt8] = []

    init(tokenizer: Tokenizer, skipSpecialTokens: Bool) {
        self.tokenizer = tokenizer
        self.skipSpecialTokens = skipSpecialTokens
    }

    /// Adds one token; returns the text that is now complete (possibly empty).
    public mutating func feed(_ id: Int32) -> String {
        tokenizer.appendBytes(of: id, skipSpecialTokens: skipSpecialTokens, to: &pending)
        let ready = pending.count - Self.incompleteSuffixLength(pending)
        guard ready > 0 else { return "" }
        let text = String(decoding: pending[..<ready], as: UTF8.self)
        pending.removeFirst(ready)
        return text
    }

    /// Returns whatever is held back (an unfinished character becomes U+FFFD) and resets.
    public mutating func finish() -> String {
        defer { pending.removeAll() }
        return String(decoding: pending, as: UTF8.self)
    }

    /// Length of the suffix of `bytes` that is a proper prefix of a well-formed UTF-8 character (a
    /// lead byte followed by fewer continuation bytes than it needs, each in its allowed range), or 0.
    /// Bytes that can never become valid are not held: they decode to U+FFFD now exactly as they
    /// would later.
    static func incompleteSuffixLength(_ bytes: [UInt8]) -> Int {
        let n = bytes.count
        var i = n - 1
        while i >= 0, n - i <= 3, bytes[i] & 0xC0 == 0x80 { i -= 1 }
        guard i >= 0 else { return 0 }
        let need: Int
        switch bytes[i] {
        case 0xC2...0xDF: need = 2
        case 0xE0...0xEF: need = 3
        case 0xF0...0xF4: need = 4
        default: return 0
        }
        let have = n - i
        guard have < need else { return 0 }
        if have >= 2 {
            // The second byte of E0, ED, F0 and F4 sequences has a narrower range (no overlongs,
            // surrogates or values above U+10FFFF).
            let second = bytes[i + 1]
            switch bytes[i] {
            case 0xE0: guard second >= 0xA0 else { return 0 }
            case 0xED: guard second <= 0x9F else { return 0 }
            case 0xF0: guard second >= 0x90 else { return 0 }
            case 0xF4: guard second <= 0x8F else { return 0 }
            default: break
            }
        }
        return have
    }
}

/// Finds special and added tokens in text: at each position the longest token starting there, the
/// leftmost position first (Hugging Face's leftmost-longest Aho-Corasick match).
struct SpecialTokens: Sendable {
    private struct Entry: Sendable {
        var bytes: [UInt8]
        var id: Int32
        /// User-defined tokens match even when special tokens are not parsed.
        var always: Bool
    }

    private let entries: [Entry]
    /// Indices into `entries` by first byte, longest first.
    private let byFirstByte: [[Int]]

    init(tokens: [String], types: [TokenType]) {
        var entries: [Entry] = []
        var seen = Set<[UInt8]>()
        for (id, token) in tokens.enumerated() {
            let type = types[id]
            guard type == .control || type == .userDefined || type == .unknown else { continue }
            let bytes = Array(token.utf8)
            guard !bytes.isEmpty, seen.insert(bytes).inserted else { continue }
            entries.append(Entry(bytes: bytes, id: Int32(id), always: type == .userDefined))
        }
        var table = [[Int]](repeating: [], count: 256)
        for (index, entry) in entries.enumerated() { table[Int(entry.bytes[0])].append(index) }
        for b in 0..<256 { table[b].sort { entries[$0].bytes.count > entries[$1].bytes.count } }
        self.entries = entries
        self.byFirstByte = table
    }

    /// Splits `bytes` into ordinary text ranges and matched token ids, in order.
    func split(
        _ bytes: UnsafeBufferPointer<UInt8>, parseSpecial: Bool,
        text: (Range<Int>) -> Void, special: (Int32) -> Void
    ) {
        let n = bytes.count
        guard !entries.isEmpty else {
            if n > 0 { text(0..<n) }
            return
        }
        var start = 0
        var i = 0
        scan: while i < n {
            for index in byFirstByte[Int(bytes[i])] {
                let entry = entries[index]
                guard parseSpecial || entry.always else { continue }
                let length = entry.bytes.count
                guard i + length <= n else { continue }
                let equal = entry.bytes.withUnsafeBufferPointer { memcmp($0.baseAddress!, bytes.baseAddress! + i, length) == 0 }
                if equal {
                    if start < i { text(start..<i) }
                    special(entry.id)
                    i += length
                    start = i
                    continue scan
                }
            }
            i += 1
        }
        if start < n { text(start..<n) }
    }
}
