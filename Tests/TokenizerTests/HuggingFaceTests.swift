import Foundation
import Tokenizer
import XCTest

/// Loading tokenizer.json directories (small tokenizers trained with Hugging Face `tokenizers`).
final class HuggingFaceTests: XCTestCase {
    struct Fixture: Decodable {
        struct Case: Decodable {
            var text: String
            var ids: [Int32]
            var ids_with_special: [Int32]
        }
        struct Directory: Decodable {
            var vocab_size: Int
            var cases: [Case]
        }
    }

    private func directory(_ name: String) -> String {
        Fixtures.directory.appendingPathComponent("hf/\(name)").path
    }

    func testEncodingsMatchReference() throws {
        let fixture = try Fixtures.load([String: Fixture.Directory].self, "hf_encode.json")
        XCTAssertEqual(Set(fixture.keys), ["tiny-gpt2", "tiny-llama3", "tiny-qwen2"])
        for (name, expected) in fixture {
            let tok = try Tokenizer.load(huggingFaceDirectory: directory(name))
            XCTAssertEqual(tok.vocabSize, expected.vocab_size, name)
            for c in expected.cases {
                XCTAssertEqual(tok.encode(c.text), c.ids, "\(name): \(c.text.debugDescription)")
                XCTAssertEqual(tok.encode(c.text, addBOS: tok.addBOS), c.ids_with_special, "\(name): \(c.text.debugDescription)")
            }
        }
    }

    func testSettingsReadFromTheDirectory() throws {
        let gpt2 = try TokenizerSpec(huggingFaceDirectory: directory("tiny-gpt2"))
        XCTAssertEqual(gpt2.preTokenizer, .gpt2)
        XCTAssertFalse(gpt2.addBOS)
        XCTAssertFalse(gpt2.ignoreMerges)
        XCTAssertEqual(gpt2.bosId.map { gpt2.tokens[Int($0)] }, "<|endoftext|>")
        XCTAssertEqual(gpt2.eosId.map { gpt2.tokens[Int($0)] }, "<|im_end|>")   // given as {"content": …}
        XCTAssertEqual(try ChatTemplate(templateText: XCTUnwrap(gpt2.chatTemplate)), .chatml(defaultSystem: nil))

        let llama = try TokenizerSpec(huggingFaceDirectory: directory("tiny-llama3"))
        XCTAssertEqual(llama.preTokenizer, .llama3)
        XCTAssertTrue(llama.addBOS)   // from the TemplateProcessing post-processor
        XCTAssertTrue(llama.ignoreMerges)
        XCTAssertEqual(llama.bosId.map { llama.tokens[Int($0)] }, "<|begin_of_text|>")
        XCTAssertEqual(llama.eosId.map { llama.tokens[Int($0)] }, "<|eot_id|>")
        XCTAssertEqual(try ChatTemplate(templateText: XCTUnwrap(llama.chatTemplate)), .llama3)   // chat_template.jinja

        let qwen = try TokenizerSpec(huggingFaceDirectory: directory("tiny-qwen2"))
        XCTAssertEqual(qwen.preTokenizer, .qwen2)
        XCTAssertTrue(qwen.normalizeNFC)
        XCTAssertNil(qwen.bosId)
        XCTAssertEqual(try ChatTemplate(templateText: XCTUnwrap(qwen.chatTemplate)),
                       .chatml(defaultSystem: "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."))
    }

    func testDecodeInvertsEncode() throws {
        let tok = try Tokenizer.load(huggingFaceDirectory: directory("tiny-llama3"))
        for text in ["Hello world", "café 日本語 😀👍🏽", "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"] {
            XCTAssertBytesEqual(tok.decode(tok.encode(text)), text)
        }
    }

    func testUnknownPreTokenizerNamesTheField() throws {
        let dir = try copyOfFixture("tiny-gpt2") { json in
            json["pre_tokenizer"] = ["type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": false]
        }
        XCTAssertThrowsError(try Tokenizer.load(huggingFaceDirectory: dir)) {
            guard case let .unknownPreTokenizer(field, value) = $0 as? TokenizerError else { return XCTFail("\($0)") }
            XCTAssertEqual(field, "pre_tokenizer")
            XCTAssertTrue(value.contains("Metaspace"), value)
        }
        let split = try copyOfFixture("tiny-gpt2") { json in
            json["pre_tokenizer"] = ["type": "Sequence", "pretokenizers": [
                ["type": "Split", "pattern": ["Regex": "\\w+"], "behavior": "Isolated", "invert": false],
                ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false],
            ]]
        }
        XCTAssertThrowsError(try Tokenizer.load(huggingFaceDirectory: split)) {
            guard case .unknownPreTokenizer("pre_tokenizer", _) = $0 as? TokenizerError else { return XCTFail("\($0)") }
        }
    }

    func testUnsupportedModelAndMissingDirectory() throws {
        let wordPiece = try copyOfFixture("tiny-gpt2") { json in
            var model = json["model"] as! [String: Any]
            model["type"] = "WordPiece"
            json["model"] = model
        }
        XCTAssertThrowsError(try Tokenizer.load(huggingFaceDirectory: wordPiece)) {
            XCTAssertEqual($0 as? TokenizerError, .unsupported(field: "model.type", value: "WordPiece"))
        }
        XCTAssertThrowsError(try Tokenizer.load(huggingFaceDirectory: "/nonexistent/model")) {
            guard case .io = $0 as? TokenizerError else { return XCTFail("\($0)") }
        }
    }

    /// A temporary copy of a fixture directory with its tokenizer.json edited.
    private func copyOfFixture(_ name: String, edit: (inout [String: Any]) -> Void) throws -> String {
        let target = FileManager.default.temporaryDirectory.appendingPathComponent("tok-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: target, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: target) }
        let source = URL(fileURLWithPath: directory(name)).appendingPathComponent("tokenizer.json")
        var json = try JSONSerialization.jsonObject(with: Data(contentsOf: source)) as! [String: Any]
        edit(&json)
        try JSONSerialization.data(withJSONObject: json).write(to: target.appendingPathComponent("tokenizer.json"))
        return target.path
    }
}
