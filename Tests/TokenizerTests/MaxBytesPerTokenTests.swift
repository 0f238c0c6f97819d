import Foundation
import XCTest
@testable import Tokenizer

/// `Tokenizer.maxBytesPerToken`: the bound the server checks a text's length against before
/// tokenizing (a text of more than n × maxBytesPerToken bytes encodes to more than n tokens).
final class MaxBytesPerTokenTests: XCTestCase {
    func testItIsTheLongestTokensBytes() throws {
        let tok = try SmolLM2.tokenizer()
        print("SmolLM2: maxBytesPerToken \(tok.maxBytesPerToken)")
        var longest = 0, longestID: Int32 = 0
        for id in 0..<Int32(tok.vocabSize) {
            var bytes: [UInt8] = []
            tok.appendBytes(of: id, skipSpecialTokens: false, to: &bytes)
            if bytes.count > longest { longest = bytes.count; longestID = id }
        }
        XCTAssertEqual(tok.maxBytesPerToken, longest)
        // The bound is tight: that token's text alone, repeated, is one token per copy at best.
        var bytes: [UInt8] = []
        tok.appendBytes(of: longestID, skipSpecialTokens: false, to: &bytes)
        let text = String(decoding: bytes, as: UTF8.self)
        XCTAssertGreaterThanOrEqual(tok.encode(text, parseSpecial: true).count * tok.maxBytesPerToken, text.utf8.count)
    }

    func testNoTextEncodesToFewerTokensThanTheBoundSays() throws {
        let tok = try SmolLM2.tokenizer()
        let texts = [String(repeating: "a", count: 100_000), String(repeating: " ", count: 50_000),
                     String(repeating: "-", count: 70_000), String(repeating: "<|im_start|>", count: 1000),
                     String(repeating: "ünïcödé ✓ 🙂 ", count: 3000), String(repeating: "\n\n", count: 9000)]
        for text in texts {
            let n = tok.encode(text, parseSpecial: true).count
            XCTAssertGreaterThanOrEqual(n * tok.maxBytesPerToken, text.utf8.count, String(text.prefix(20)))
        }
    }

    func testNFCTriplesTheBound() throws {
        let plain = try byteTokenizer(extra: ["ab"], merges: ["a b"])
        XCTAssertEqual(plain.maxBytesPerToken, 2)
        let tokens = (0...255).map { byteLevelSpelling(UInt8($0)) }
        let nfc = try Tokenizer(spec: TokenizerSpec(tokens: tokens, merges: [], preTokenizer: .gpt2, normalizeNFC: true))
        XCTAssertEqual(nfc.maxBytesPerToken, 3)
        // Decomposed Hangul (L V T jamo, 9 bytes) composes to one 3-byte syllable: 3 tokens.
        let jamo = String(repeating: "\u{1100}\u{1161}\u{11A8}", count: 100)
        XCTAssertEqual(jamo.utf8.count, 900)
        XCTAssertEqual(nfc.encode(jamo).count, 300)
        XCTAssertGreaterThanOrEqual(nfc.encode(jamo).count * nfc.maxBytesPerToken, jamo.utf8.count)
    }
}
