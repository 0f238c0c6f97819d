import Foundation
import Tokenizer
import XCTest

/// Each pre-tokenizer against Oniguruma running its regex (Hugging Face `pre_tokenizers.Split`).
final class PreTokenizerTests: XCTestCase {
    struct Fixture: Decodable {
        struct Case: Decodable {
            var text: String
            var gpt2: [String]
            var smollm: [String]
            var llama3: [String]
            var qwen2: [String]

            func pieces(_ kind: PreTokenizerKind) -> [String] {
                switch kind {
                case .gpt2: return gpt2
                case .smollm: return smollm
                case .llama3: return llama3
                case .qwen2: return qwen2
                }
            }
        }
        var cases: [Case]
    }

    func testSplitsMatchReference() throws {
        let fixture = try Fixtures.load(Fixture.self, "pretokenize.json")
        XCTAssertGreaterThan(fixture.cases.count, 400)
        for kind in PreTokenizerKind.allCases {
            var failures = 0
            for c in fixture.cases {
                let pieces = kind.split(c.text)
                // Compare bytes: Swift's String == would equate canonically equivalent pieces.
                if pieces.map({ Array($0.utf8) }) != c.pieces(kind).map({ Array($0.utf8) }) {
                    failures += 1
                    if failures <= 10 {
                        XCTFail("\(kind) split \(c.text.debugDescription) into \(pieces), reference \(c.pieces(kind))")
                    }
                }
            }
            XCTAssertEqual(failures, 0, "\(kind)")
        }
    }

    func testKindsDiffer() {
        // The cases that tell the kinds apart, spelled out.
        XCTAssertEqual(PreTokenizerKind.gpt2.split("a 1234"), ["a", " 1234"])
        XCTAssertEqual(PreTokenizerKind.smollm.split("a 1234"), ["a", " ", "1", "2", "3", "4"])
        XCTAssertEqual(PreTokenizerKind.llama3.split("a 1234"), ["a", " ", "123", "4"])
        XCTAssertEqual(PreTokenizerKind.qwen2.split("a 1234"), ["a", " ", "1", "2", "3", "4"])
        XCTAssertEqual(PreTokenizerKind.gpt2.split("I'LL"), ["I", "'", "LL"])
        XCTAssertEqual(PreTokenizerKind.llama3.split("I'LL"), ["I", "'LL"])
        XCTAssertEqual(PreTokenizerKind.gpt2.split("x  \n\ny"), ["x", "  \n", "\n", "y"])
        XCTAssertEqual(PreTokenizerKind.llama3.split("x  \n\ny"), ["x", "  \n\n", "y"])
        XCTAssertEqual(PreTokenizerKind.gpt2.split(""), [])
    }

    func testGGUFNames() throws {
        XCTAssertEqual(try PreTokenizerKind(ggufName: "smollm"), .smollm)
        XCTAssertEqual(try PreTokenizerKind(ggufName: "gpt2"), .gpt2)
        XCTAssertEqual(try PreTokenizerKind(ggufName: "default"), .gpt2)
        XCTAssertEqual(try PreTokenizerKind(ggufName: "llama-bpe"), .llama3)
        XCTAssertEqual(try PreTokenizerKind(ggufName: "llama3"), .llama3)
        XCTAssertEqual(try PreTokenizerKind(ggufName: "qwen2"), .qwen2)
        XCTAssertThrowsError(try PreTokenizerKind(ggufName: "deepseek-llm")) {
            XCTAssertEqual($0 as? TokenizerError, .unknownPreTokenizer(field: "tokenizer.ggml.pre", value: "deepseek-llm"))
        }
    }
}
