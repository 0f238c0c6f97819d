/// How text is cut into words before BPE. Each kind is a hand-written matcher over Unicode scalars
/// that returns exactly the pieces its regex (run by Oniguruma, as Hugging Face `tokenizers` does)
/// would, alternatives tried left to right:
///
/// - `gpt2`:   `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
/// - `smollm`: every `\p{N}` character is a piece of its own (HF `Digits(individual_digits: true)`),
///             then `gpt2` on the text between them (SmolLM, StarCoder).
/// - `llama3`: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
/// - `qwen2`:  as `llama3` with `\p{N}` (one digit per piece) instead of `\p{N}{1,3}`.
///
/// `\s` is the Unicode White_Space property. Case-insensitive `'s` also matches `'ſ` (U+017F folds
/// to `s` in Oniguruma; llama.cpp's hand-expanded `'[sS]` does not).
public enum PreTokenizerKind: String, Sendable, CaseIterable {
    /// GPT-2's regex (GGUF `gpt2`, `default`).
    case gpt2
    /// Single digits, then GPT-2's regex (GGUF `smollm`).
    case smollm
    /// Llama-3's regex: case-insensitive contractions, numbers in groups of up to three (GGUF `llama-bpe`).
    case llama3
    /// Qwen2's regex: Llama-3's with one digit per piece (GGUF `qwen2`).
    case qwen2

    /// The kind a GGUF file's `tokenizer.ggml.pre` names (absent means `default`, i.e. gpt2).
    /// - Throws: `TokenizerError.unknownPreTokenizer` naming the field for any other name.
    public init(ggufName: String) throws {
        switch ggufName {
        case "gpt2", "default": self = .gpt2
        case "smollm": self = .smollm
        case "llama-bpe", "llama3": self = .llama3
        case "qwen2": self = .qwen2
        default: throw TokenizerError.unknownPreTokenizer(field: "tokenizer.ggml.pre", value: ggufName)
        }
    }

    /// The pieces `text` is cut into (their concatenation is `text`).
    public func split(_ text: String) -> [String] {
        var text = text
        return text.withUTF8 { bytes in
            let scalars = ScalarText(utf8: bytes)
            var pieces: [String] = []
            forEachPiece(scalars) { range in
                let slice = UnsafeBufferPointer(rebasing: bytes[scalars.offsets[range.lowerBound]..<scalars.offsets[range.upperBound]])
                pieces.append(String(decoding: slice, as: UTF8.self))
            }
            return pieces
        }
    }

    /// Calls `body` with the scalar-index range of each piece of `text`, in order.
    func forEachPiece(_ text: ScalarText, _ body: (Range<Int>) -> Void) {
        let end = text.count
        var i = 0
        switch self {
        case .gpt2:
            while i < end {
                let n = text.gpt2Match(at: i, end: end)
                body(i..<i + n)
                i += n
            }
        case .smollm:
            while i < end {
                if text.classes[i] == CharClass.number {
                    body(i..<i + 1)
                    i += 1
                    continue
                }
                var segmentEnd = i + 1
                while segmentEnd < end, text.classes[segmentEnd] != CharClass.number { segmentEnd += 1 }
                while i < segmentEnd {
                    let n = text.gpt2Match(at: i, end: segmentEnd)
                    body(i..<i + n)
                    i += n
                }
            }
        case .llama3, .qwen2:
            let maxDigits = self == .llama3 ? 3 : 1
            while i < end {
                let n = text.llama3Match(at: i, end: end, maxDigits: maxDigits)
                body(i..<i + n)
                i += n
            }
        }
    }
}

/// Character classes the regexes tell apart. Exactly one of letter / number / space / other holds;
/// `newline` (CR or LF) comes with `space`.
enum CharClass {
    static let other: UInt8 = 0
    static let letter: UInt8 = 1   // \p{L}: Lu Ll Lt Lm Lo
    static let number: UInt8 = 2   // \p{N}: Nd Nl No
    static let space: UInt8 = 4    // \s: White_Space
    static let newline: UInt8 = 4 | 8

    static let ascii: [UInt8] = (0..<128).map { classify(UInt32($0)) }

    @inline(__always)
    static func of(_ v: UInt32) -> UInt8 { v < 128 ? ascii[Int(v)] : classify(v) }

    static func classify(_ v: UInt32) -> UInt8 {
        if v == 0x0A || v == 0x0D { return newline }
        guard let scalar = Unicode.Scalar(v) else { return other }
        let properties = scalar.properties
        switch properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
            return letter
        case .decimalNumber, .letterNumber, .otherNumber:
            return number
        default:
            return properties.isWhitespace ? space : other
        }
    }
}

/// Valid UTF-8 decoded to scalars, with each scalar's class and byte offset.
struct ScalarText {
    /// (count) scalar values.
    var scalars: [UInt32] = []
    /// (count) `CharClass` of each scalar.
    var classes: [UInt8] = []
    /// (count + 1) byte offset of each scalar in the UTF-8 text, then the text's length.
    var offsets: [Int] = []

    var count: Int { scalars.count }

    init(utf8 p: UnsafeBufferPointer<UInt8>) {
        let n = p.count
        scalars.reserveCapacity(n)
        classes.reserveCapacity(n)
        offsets.reserveCapacity(n + 1)
        var i = 0
        while i < n {
            let b0 = UInt32(p[i])
            let v: UInt32
            let length: Int
            if b0 < 0x80 {
                v = b0; length = 1
            } else if b0 < 0xE0 {
                v = (b0 & 0x1F) << 6 | UInt32(p[i + 1] & 0x3F); length = 2
            } else if b0 < 0xF0 {
                v = (b0 & 0x0F) << 12 | UInt32(p[i + 1] & 0x3F) << 6 | UInt32(p[i + 2] & 0x3F); length = 3
            } else {
                v = (b0 & 0x07) << 18 | UInt32(p[i + 1] & 0x3F) << 12 | UInt32(p[i + 2] & 0x3F) << 6 | UInt32(p[i + 3] & 0x3F)
                length = 4
            }
            scalars.append(v)
            classes.append(CharClass.of(v))
            offsets.append(i)
            i += length
        }
        offsets.append(n)
    }

    /// Index just past the run of scalars of class `cls` starting at `i` (bounded by `end`).
    @inline(__always)
    func run(of cls: UInt8, from i: Int, end: Int) -> Int {
        var j = i
        while j < end, classes[j] == cls { j += 1 }
        return j
    }

    /// Index just past the run of `\s` scalars starting at `i`.
    @inline(__always)
    func spaceRun(from i: Int, end: Int) -> Int {
        var j = i
        while j < end, classes[j] & CharClass.space != 0 { j += 1 }
        return j
    }

    /// Length of `'s|'t|'re|'ve|'m|'ll|'d` at `i` (an apostrophe), or 0.
    func contraction(at i: Int, end: Int, ignoringCase: Bool) -> Int {
        guard i + 1 < end else { return 0 }
        @inline(__always) func lower(_ v: UInt32) -> UInt32 {
            guard ignoringCase else { return v }
            if v >= 0x41 && v <= 0x5A { return v + 0x20 }
            return v == 0x17F ? 0x73 : v   // ſ folds to s
        }
        switch lower(scalars[i + 1]) {
        case 0x73, 0x74, 0x6D, 0x64: return 2   // s t m d
        case 0x72, 0x76:                          // re ve
            return i + 2 < end && lower(scalars[i + 2]) == 0x65 ? 3 : 0
        case 0x6C:                                // ll
            return i + 2 < end && lower(scalars[i + 2]) == 0x6C ? 3 : 0
        default: return 0
        }
    }

    /// Length of the GPT-2 regex's match at `i`, the text ending at `end`.
    func gpt2Match(at i: Int, end: Int) -> Int {
        let v = scalars[i]
        if v == 0x27 {
            let n = contraction(at: i, end: end, ignoringCase: false)
            if n > 0 { return n }
        }
        // ` ?\p{L}+ | ?\p{N}+ | ?[^\s\p{L}\p{N}]+`: an optional space, then a run of one class.
        var start = i
        if v == 0x20, i + 1 < end, classes[i + 1] & CharClass.space == 0 { start = i + 1 }
        let cls = classes[start]
        if cls & CharClass.space == 0 { return run(of: cls, from: start, end: end) - i }
        return whitespaceMatch(at: i, end: end)
    }

    /// `\s+(?!\S)|\s+` at `i` (a space character): a run followed by the end takes it all; a longer run
    /// leaves its last character to the word that follows.
    @inline(__always)
    func whitespaceMatch(at i: Int, end: Int) -> Int {
        let e = spaceRun(from: i, end: end)
        if e == end || e - i == 1 { return e - i }
        return e - i - 1
    }

    /// Length of the Llama-3 (maxDigits 3) or Qwen2 (maxDigits 1) regex's match at `i`.
    func llama3Match(at i: Int, end: Int, maxDigits: Int) -> Int {
        let v = scalars[i]
        let cls = classes[i]
        if v == 0x27 {
            let n = contraction(at: i, end: end, ignoringCase: true)
            if n > 0 { return n }
        }
        // `[^\r\n\p{L}\p{N}]?\p{L}+`
        if cls == CharClass.letter { return run(of: CharClass.letter, from: i, end: end) - i }
        if cls == CharClass.other || cls == CharClass.space, i + 1 < end, classes[i + 1] == CharClass.letter {
            return run(of: CharClass.letter, from: i + 1, end: end) - i
        }
        // `\p{N}{1,maxDigits}`
        if cls == CharClass.number { return min(run(of: CharClass.number, from: i, end: end) - i, maxDigits) }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
        var start = i
        if v == 0x20, i + 1 < end, classes[i + 1] == CharClass.other { start = i + 1 }
        if classes[start] == CharClass.other {
            let e = run(of: CharClass.other, from: start, end: end)
            return run(of: CharClass.newline, from: e, end: end) - i
        }
        // `\s*[\r\n]+`: the space run up to and including its last CR/LF.
        let e = spaceRun(from: i, end: end)
        var last = e - 1
        while last >= i, classes[last] != CharClass.newline { last -= 1 }
        if last >= i { return last + 1 - i }
        return whitespaceMatch(at: i, end: end)
    }
}
