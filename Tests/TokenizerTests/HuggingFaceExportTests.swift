import Foundation
import Tokenizer
import XCTest

/// `TokenizerSpec.huggingFaceFiles()`: the tokenizer.json / tokenizer_config.json written into
/// checkpoints read back to the same tokenizer. (That transformers' `AutoTokenizer` loads them and
/// tokenizes alike is checked by `scripts/reference/checkpoint.py`.)
final class HuggingFaceExportTests: XCTestCase {
    private func roundTrip(_ spec: TokenizerSpec) throws -> TokenizerSpec {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("selm-tokexport-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let files = try spec.huggingFaceFiles()
        XCTAssertEqual(Set(files.keys), ["tokenizer.json", "tokenizer_config.json"])
        for (name, data) in files { try data.write(to: dir.appendingPathComponent(name)) }
        return try TokenizerSpec(huggingFaceDirectory: dir.path)
    }

    func testSmolLM2FromGGUFRoundTripsAndEncodesLikeTheReference() throws {
        let spec = try SmolLM2.spec()
        let back = try roundTrip(spec)
        XCTAssertEqual(back.tokens, spec.tokens)
        XCTAssertEqual(back.merges, spec.merges)
        XCTAssertEqual(back.preTokenizer, .smollm)
        XCTAssertEqual(back.bosId, spec.bosId)
        XCTAssertEqual(back.eosId, spec.eosId)
        XCTAssertEqual(back.unkId, spec.unkId)
        XCTAssertEqual(back.padId, spec.padId)
        XCTAssertEqual(back.addBOS, spec.addBOS)
        XCTAssertEqual(back.ignoreMerges, spec.ignoreMerges)
        XCTAssertEqual(back.normalizeNFC, spec.normalizeNFC)
        XCTAssertEqual(back.chatTemplate, spec.chatTemplate)

        let tok = try Tokenizer(spec: back)
        XCTAssertTrue(tok.isSpecial(2))
        let fixture = try Fixtures.load(EncodeFixture.self, "smollm2_encode.json")
        for c in fixture.cases { XCTAssertEqual(tok.encode(c.text), c.ids, c.text.debugDescription) }
        for c in fixture.literal_special_cases {
            XCTAssertEqual(tok.encode(c.text, parseSpecial: false), c.ids, c.text.debugDescription)
        }
    }

    func testHuggingFaceTokenizersRoundTripExactly() throws {
        let names = ["tiny-gpt2", "tiny-llama3", "tiny-qwen2"]
        let specs = try names.map {
            try TokenizerSpec(huggingFaceDirectory: Fixtures.directory.appendingPathComponent("hf/\($0)").path)
        }
        for (name, spec) in zip(names, specs) {
            XCTAssertEqual(try roundTrip(spec), spec, name)
        }
        // The fixtures between them cover BOS added (llama3) and NFC (qwen2).
        XCTAssertTrue(specs.contains { $0.addBOS })
        XCTAssertTrue(specs.contains { $0.normalizeNFC })
    }
}
