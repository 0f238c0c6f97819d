import Foundation
import Model
import ModelBundle
import Tokenizer
import XCTest

/// The real SmolLM2 tokenizer (from the GGUF) against Hugging Face `tokenizers` on the same vocabulary.
final class SmolLM2Tests: XCTestCase {
    func testSpecFromGGUF() throws {
        let spec = try SmolLM2.spec()
        XCTAssertEqual(spec.tokens.count, 49152)
        XCTAssertEqual(spec.merges.count, 48900)
        XCTAssertEqual(spec.preTokenizer, .smollm)
        XCTAssertEqual(spec.bosId, 1)
        XCTAssertEqual(spec.eosId, 2)
        XCTAssertEqual(spec.unkId, 0)
        XCTAssertEqual(spec.padId, 2)
        XCTAssertFalse(spec.addBOS)
        XCTAssertFalse(spec.ignoreMerges)

        let tok = try SmolLM2.tokenizer()
        XCTAssertEqual(tok.vocabSize, 49152)
        XCTAssertEqual(tok.bosId, 1)
        XCTAssertEqual(tok.eosId, 2)
        XCTAssertEqual(tok.id(of: "<|im_start|>"), 1)
        XCTAssertEqual(tok.id(of: "<|im_end|>"), 2)
        XCTAssertEqual(tok.token(2), "<|im_end|>")
        XCTAssertNil(tok.token(49152))
        XCTAssertNil(tok.token(-1))
        XCTAssertTrue(tok.isSpecial(0))
        XCTAssertTrue(tok.isSpecial(16))
        XCTAssertFalse(tok.isSpecial(17))
        XCTAssertEqual(try ChatTemplate(templateText: XCTUnwrap(tok.chatTemplateText)),
                       .chatml(defaultSystem: "You are a helpful AI assistant named SmolLM, trained by Hugging Face"))
    }

    func testEncodeMatchesReference() throws {
        let tok = try SmolLM2.tokenizer()
        let fixture = try Fixtures.load(EncodeFixture.self, "smollm2_encode.json")
        XCTAssertEqual(fixture.vocab_size, tok.vocabSize)
        XCTAssertGreaterThan(fixture.cases.count, 250)
        var failures = 0
        for c in fixture.cases {
            let ids = tok.encode(c.text)
            if ids != c.ids {
                failures += 1
                XCTFail("encode(\(c.text.debugDescription)) = \(ids), reference \(c.ids)")
            }
        }
        XCTAssertEqual(failures, 0)
    }

    func testEncodeWithoutParsingSpecialTokensMatchesReference() throws {
        let tok = try SmolLM2.tokenizer()
        let fixture = try Fixtures.load(EncodeFixture.self, "smollm2_encode.json")
        XCTAssertFalse(fixture.literal_special_cases.isEmpty)
        for c in fixture.literal_special_cases {
            let ids = tok.encode(c.text, parseSpecial: false)
            XCTAssertEqual(ids, c.ids, c.text.debugDescription)
            XCTAssertFalse(ids.contains { tok.isSpecial($0) }, c.text.debugDescription)
        }
    }

    func testDecodeInvertsEncode() throws {
        let tok = try SmolLM2.tokenizer()
        let fixture = try Fixtures.load(EncodeFixture.self, "smollm2_encode.json")
        for c in fixture.cases {
            XCTAssertBytesEqual(tok.decode(c.ids), c.text)
            XCTAssertBytesEqual(tok.decode(tok.encode(c.text, parseSpecial: false)), c.text)
        }
    }

    /// The ids Hugging Face `tokenizers` gives `text` (smollm2_encode.json); fails the test when the
    /// fixture lacks it.
    func reference(_ text: String, file: StaticString = #filePath, line: UInt = #line) throws -> [Int32] {
        let fixture = try Fixtures.load(EncodeFixture.self, "smollm2_encode.json")
        guard let c = fixture.cases.first(where: { Array($0.text.utf8) == Array(text.utf8) }) else {
            XCTFail("\(text.debugDescription) is not in smollm2_encode.json (scripts/reference/tokenizer.py's HAND_CORPUS)", file: file, line: line)
            throw TokenizerTestError.missingCase
        }
        return c.ids
    }

    enum TokenizerTestError: Error { case missingCase }

    /// Special tokens are matched whole, wherever they stand, and text around them is encoded as if
    /// they were a boundary (the space before one stays a separate piece): as `tokenizers` does.
    func testSpecialTokensMatchedWhole() throws {
        let tok = try SmolLM2.tokenizer()
        for text in ["<|im_start|>", "<|im_start|><|im_end|><|endoftext|>", "x<|im_start|>user\nhi<|im_end|>", "a <|im_end|>",
                     "a ", "<|im_start", "<<|im_end|>>", "x<|im_start|>y <|im_end|> z"] {
            XCTAssertEqual(tok.encode(text), try reference(text), text.debugDescription)
        }
        XCTAssertEqual(try reference("<|im_start|><|im_end|><|endoftext|>"), [1, 2, 0])
        XCTAssertEqual(try reference("a <|im_end|>"), try reference("a ") + [2])
        XCTAssertFalse(try reference("<|im_start").contains(1), "an unfinished special token is text")
        XCTAssertEqual(try reference("<<|im_end|>>").filter { tok.isSpecial($0) }, [2])
        XCTAssertEqual(tok.decode(tok.encode("a <|im_end|>"), skipSpecialTokens: true), "a ")
    }

    /// `addBOS` puts id 1 in front of what `tokenizers` gives, unless the text already starts with it.
    func testAddBOS() throws {
        let tok = try SmolLM2.tokenizer()
        XCTAssertEqual(tok.bosId, 1)
        XCTAssertEqual(tok.encode("Hi", addBOS: true), [1] + (try reference("Hi")))
        XCTAssertEqual(try reference("<|im_start|>Hi").first, 1)
        XCTAssertEqual(tok.encode("<|im_start|>Hi", addBOS: true), try reference("<|im_start|>Hi"))
    }

    func testStreamDecoderEqualsDecode() throws {
        let tok = try SmolLM2.tokenizer()
        let fixture = try Fixtures.load(EncodeFixture.self, "smollm2_encode.json")
        for c in fixture.cases {
            var stream = tok.makeStreamDecoder()
            var chunks = c.ids.map { stream.feed($0) }
            chunks.append(stream.finish())
            XCTAssertBytesEqual(chunks.joined(), tok.decode(c.ids))
            // Valid text never produces a replacement character on the way.
            for chunk in chunks { XCTAssertFalse(chunk.unicodeScalars.contains("\u{FFFD}"), c.text.debugDescription) }
        }
    }

    func testStreamDecoderHoldsBackSplitCharacters() throws {
        let tok = try SmolLM2.tokenizer()
        var sawSplit = 0
        for text in ["😀", "👨‍👩‍👧‍👦", "中文文本", "한국어 텍스트", "🇫🇷"] {
            let ids = tok.encode(text)
            var stream = tok.makeStreamDecoder()
            var out = ""
            for id in ids {
                let chunk = stream.feed(id)
                // Each chunk is whole characters of the text, in order.
                XCTAssertTrue(text.unicodeScalars.starts(with: (out + chunk).unicodeScalars), "\(text): \((out + chunk).debugDescription)")
                if chunk.isEmpty { sawSplit += 1 }
                out += chunk
            }
            XCTAssertEqual(stream.finish(), "")
            XCTAssertBytesEqual(out, text)
        }
        XCTAssertGreaterThan(sawSplit, 0, "expected some character to span tokens")
    }

    func testStreamDecoderFlushesIncompleteCharacterAsReplacement() throws {
        let tok = try SmolLM2.tokenizer()
        let ids = tok.encode("😀")
        XCTAssertGreaterThan(ids.count, 1)
        var stream = tok.makeStreamDecoder()
        XCTAssertEqual(stream.feed(ids[0]), "")
        XCTAssertEqual(stream.finish(), "\u{FFFD}")
        XCTAssertEqual(tok.decode([ids[0]]), "\u{FFFD}")
        XCTAssertEqual(stream.feed(tok.encode("a")[0]), "a")
    }
}
