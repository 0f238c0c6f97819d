import Foundation
import Model
import ModelBundle
import Tokenizer
import XCTest

/// The `model.gguf` of a checkpoint carries its tokenizer whatever the source: a Hugging Face
/// source's tokenizer is written as `tokenizer.ggml.*` metadata (`TokenizerSpec.ggufMetadata`) that
/// `TokenizerSpec(gguf:)` reads back as the same spec, and a source without a tokenizer gives a GGUF
/// that loads for token-id work, as the source did. (That transformers and `selm logits` agree on
/// such a checkpoint is checked by scripts/reference/checkpoint.py in `make test`.)
final class GGUFTokenizerExportTests: XCTestCase {
    static let modelFixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("ModelTests/Fixtures")

    func temporaryFile(_ name: String) throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("selm-ggufexport-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        return dir.appendingPathComponent(name).path
    }

    /// The tiny chat model (a Hugging Face directory with tokenizer.json): its GGUF loads as a
    /// bundle with the same tokenizer and template, encoding alike.
    func testAGGUFWrittenFromAHuggingFaceSourceLoadsWithItsTokenizer() throws {
        let source = try ModelBundle(path: Self.modelFixtures.appendingPathComponent("tiny-chat").path)
        XCTAssertEqual(source.ggufTokenizerMetadata.first?.0, "tokenizer.ggml.model")
        let path = try temporaryFile("model.gguf")
        try source.model.saveGGUF(path: path, name: "tiny-chat", metadata: source.ggufTokenizerMetadata)
        let back = try ModelBundle(path: path)
        let a = try source.tokenizer, b = try back.tokenizer
        XCTAssertEqual(b.vocabSize, a.vocabSize)
        XCTAssertEqual(b.bosId, a.bosId)
        XCTAssertEqual(b.eosId, a.eosId)
        XCTAssertEqual(back.template, source.template)
        XCTAssertEqual(back.stopTokenIds, source.stopTokenIds)
        for text in ["hello world", "<|im_start|>user\nhi<|im_end|>", "a b  c\n\n123 !?", ""] {
            XCTAssertEqual(b.encode(text), a.encode(text), text.debugDescription)
        }
        XCTAssertEqual(try TokenizerSpec(gguf: GGUFFile(path: path)),
                       try TokenizerSpec(huggingFaceDirectory: Self.modelFixtures.appendingPathComponent("tiny-chat").path))
    }

    /// Every tokenizer.json fixture (gpt2, llama3 with BOS and ignore_merges, qwen2 with NFC) through
    /// GGUF metadata and back: the same spec, but for NFC, which GGUF cannot say.
    func testEveryHuggingFaceSpecRoundTripsThroughGGUFMetadata() throws {
        let model = try LlamaModel.load(huggingFaceDirectory: Self.modelFixtures.appendingPathComponent("tiny-tied").path)
        for name in ["tiny-gpt2", "tiny-llama3", "tiny-qwen2"] {
            let spec = try TokenizerSpec(huggingFaceDirectory: Fixtures.directory.appendingPathComponent("hf/\(name)").path)
            let path = try temporaryFile("\(name).gguf")
            try model.saveGGUF(path: path, name: name, metadata: spec.ggufMetadata)
            var expected = spec
            expected.normalizeNFC = false
            XCTAssertEqual(try TokenizerSpec(gguf: GGUFFile(path: path)), expected, name)
        }
    }

    /// A source without a tokenizer (tiny-tied): its GGUF has no tokenizer metadata and loads as a
    /// token-ids-only bundle, like the source directory.
    func testAGGUFWithoutTokenizerMetadataLoadsForTokenIDs() throws {
        let source = try ModelBundle(path: Self.modelFixtures.appendingPathComponent("tiny-tied").path)
        XCTAssertNil(source.tokenizerIfAny)
        XCTAssertTrue(source.ggufTokenizerMetadata.isEmpty)
        let path = try temporaryFile("model.gguf")
        try source.model.saveGGUF(path: path, name: "tiny-tied", metadata: source.ggufTokenizerMetadata)
        let back = try ModelBundle(path: path)
        XCTAssertNil(back.tokenizerIfAny)
        XCTAssertEqual(back.model.config.vocabSize, 97)
        XCTAssertThrowsError(try back.tokenizer) { XCTAssertTrue("\($0)".contains("no tokenizer"), "\($0)") }
    }
}
