import Foundation
import Tokenizer
import XCTest

/// Behaviour checked on small hand-made vocabularies (no model or fixture needed).
final class TokenizerUnitTests: XCTestCase {
    func testMergesApplyByRank() throws {
        // Vocabulary: bytes, then "ab" (256), "bc" (257), "abc" (258).
        let extra = ["ab", "bc", "abc"]
        // "b c" outranks "a b": "abc" → a + bc (no merge a+bc exists) → [a, bc].
        let bcFirst = try byteTokenizer(extra: extra, merges: ["b c", "a b", "ab c"])
        XCTAssertEqual(bcFirst.encode("abc"), [97, 257])
        // "a b" first: ab + c → abc.
        let abFirst = try byteTokenizer(extra: extra, merges: ["a b", "b c", "ab c"])
        XCTAssertEqual(abFirst.encode("abc"), [258])
        // Equal pairs merge left to right: "aaa" with "a a" → [aa, a].
        let aa = try byteTokenizer(extra: ["aa"], merges: ["a a"])
        XCTAssertEqual(aa.encode("aaa"), [256, 97])
        XCTAssertEqual(aa.encode("aaaa"), [256, 256])
        // Merges never cross pre-tokenizer pieces: " a" and "a" are separate words.
        XCTAssertEqual(aa.encode("a a"), [97, 32, 97])
    }

    func testSpecialTokensLongestAndLeftmostFirst() throws {
        // 256: "<|x|>" (control), 257: "<|x|>y" (control), 258: "<think>" (user-defined).
        let tok = try byteTokenizer(extra: ["<|x|>", "<|x|>y", "<think>"], types: [3, 3, 4])
        XCTAssertEqual(tok.encode("<|x|>yz"), [257, 122])
        XCTAssertEqual(tok.encode("<|x|>z"), [256, 122])
        XCTAssertEqual(tok.encode("a<|x|><|x|>"), [97, 256, 256])
        XCTAssertTrue(tok.isSpecial(256))
        XCTAssertFalse(tok.isSpecial(258))
        // Without parsing special tokens, control tokens are text but user-defined ones still match.
        XCTAssertEqual(tok.encode("<|x|><think>", parseSpecial: false), Array("<|x|>".utf8).map(Int32.init) + [258])
        XCTAssertEqual(tok.decode([256, 97, 258]), "<|x|>a<think>")
        XCTAssertEqual(tok.decode([256, 97, 258], skipSpecialTokens: true), "a<think>")
    }

    func testStreamDecoderOverAllByteSplits() throws {
        let tok = try byteTokenizer()
        let text = "é中😀a\u{301}"
        let ids = Array(text.utf8).map(Int32.init)
        var stream = tok.makeStreamDecoder()
        let chunks = ids.map { stream.feed($0) }
        XCTAssertEqual(chunks, ["", "é", "", "", "中", "", "", "", "😀", "a", "", "\u{301}"])
        XCTAssertEqual(stream.finish(), "")
    }

    func testStreamDecoderEqualsDecodeOnArbitraryBytes() throws {
        let tok = try byteTokenizer()
        // Interesting bytes: ASCII, continuation bytes, every kind of lead byte incl. invalid ones.
        let alphabet: [UInt8] = [0x41, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC2, 0xDF, 0xE0, 0xE2, 0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xFF]
        var rng = SplitMix(seed: 7)
        for _ in 0..<3000 {
            let ids = (0..<Int(rng.next() % 9)).map { _ in Int32(alphabet[Int(rng.next() % UInt64(alphabet.count))]) }
            var stream = tok.makeStreamDecoder()
            var out = ids.map { stream.feed($0) }.joined()
            out += stream.finish()
            XCTAssertBytesEqual(out, tok.decode(ids), "\(ids)")
        }
    }

    func testStreamDecoderEmitsReplacementForBytesThatCanNeverComplete() throws {
        let tok = try byteTokenizer()
        var stream = tok.makeStreamDecoder()
        XCTAssertEqual(stream.feed(0xE0), "")
        XCTAssertEqual(stream.feed(0x80), "\u{FFFD}\u{FFFD}")   // E0 80 is never valid: no hold
        XCTAssertEqual(stream.feed(0xF0), "")
        XCTAssertEqual(stream.feed(0x9F), "")
        XCTAssertEqual(stream.finish(), "\u{FFFD}")
    }

    func testInvalidSpecsAreRejected() {
        let tokens = ["a", "b", "ab"]
        XCTAssertThrowsError(try Tokenizer(spec: TokenizerSpec(tokens: tokens, merges: ["a c"], preTokenizer: .gpt2))) {
            guard case .invalidSpec(field: "merges", _) = $0 as? TokenizerError else { return XCTFail("\($0)") }
        }
        XCTAssertThrowsError(try Tokenizer(spec: TokenizerSpec(tokens: tokens, merges: ["ab"], preTokenizer: .gpt2))) {
            guard case .invalidSpec(field: "merges", _) = $0 as? TokenizerError else { return XCTFail("\($0)") }
        }
        XCTAssertThrowsError(try Tokenizer(spec: TokenizerSpec(tokens: tokens, merges: [], tokenTypes: [1, 1], preTokenizer: .gpt2))) {
            guard case .invalidSpec(field: "tokenTypes", _) = $0 as? TokenizerError else { return XCTFail("\($0)") }
        }
        XCTAssertThrowsError(try Tokenizer(spec: TokenizerSpec(tokens: tokens, merges: [], preTokenizer: .gpt2, eosId: 3))) {
            guard case .invalidSpec(field: "eosId", _) = $0 as? TokenizerError else { return XCTFail("\($0)") }
        }
        XCTAssertThrowsError(try Tokenizer(spec: TokenizerSpec(tokens: [], merges: [], preTokenizer: .gpt2)))
    }

    func testErrorsDescribeThemselves() {
        let error = TokenizerError.unknownPreTokenizer(field: "tokenizer.ggml.pre", value: "falcon")
        XCTAssertTrue(error.description.contains("tokenizer.ggml.pre"))
        XCTAssertTrue(error.description.contains("falcon"))
    }
}

/// Small seeded generator for test inputs.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
