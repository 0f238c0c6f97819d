import Foundation
import XCTest
@testable import Model

/// Tiny random Hugging Face checkpoints (tied, untied with one KV head, BF16 sharded) give the logits
/// transformers computes for them.
final class HuggingFaceTests: XCTestCase {
    func check(_ name: String) throws {
        let model = try LlamaModel.load(huggingFaceDirectory: TestSupport.fixture(name).path)
        let ref = try TestSupport.json("\(name).logits.json") as! [String: Any]
        let seqs = (ref["sequences"] as! [[NSNumber]]).map { $0.map { $0.int32Value } }
        let logits = (ref["logits"] as! [[[NSNumber]]]).map { $0.flatMap { $0.map { $0.floatValue } } }
        for (s, ids) in seqs.enumerated() {
            let err = TestSupport.relativeError(try model.logits(ids), logits[s])
            XCTAssertLessThanOrEqual(err, 1e-5, "\(name) sequence \(s) (length \(ids.count))")
        }
    }

    func testTiedGQA() throws { try check("tiny-tied") }
    func testUntiedSingleKVHead() throws { try check("tiny-untied") }
    func testBF16Sharded() throws { try check("tiny-bf16-sharded") }

    func testConfigFields() throws {
        let c = try LlamaConfig(huggingFaceConfig: TestSupport.fixture("tiny-untied/config.json"))
        XCTAssertEqual(c.nKVHeads, 1)
        XCTAssertFalse(c.tiedEmbeddings)
        XCTAssertEqual(c.ropeTheta, 500000)
        XCTAssertEqual(ParameterLayout(config: c).entry("lm_head.weight")?.shape, [97, 64])
        let t = try LlamaConfig(huggingFaceConfig: TestSupport.fixture("tiny-tied/config.json"))
        XCTAssertTrue(t.tiedEmbeddings)
        XCTAssertNil(ParameterLayout(config: t).entry("lm_head.weight"))
    }

    /// Copies a fixture directory to a temp dir so a test can damage it.
    func scratchCopy(_ name: String) throws -> URL {
        let dst = FileManager.default.temporaryDirectory.appendingPathComponent("selm-hf-\(UUID().uuidString)")
        try FileManager.default.copyItem(at: TestSupport.fixture(name), to: dst)
        addTeardownBlock { try? FileManager.default.removeItem(at: dst) }
        return dst
    }

    func editConfig(_ dir: URL, _ edit: (inout [String: Any]) -> Void) throws {
        let url = dir.appendingPathComponent("config.json")
        var obj = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
        edit(&obj)
        try JSONSerialization.data(withJSONObject: obj).write(to: url)
    }

    func assertError(_ dir: URL, contains parts: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try LlamaModel.load(huggingFaceDirectory: dir.path), file: file, line: line) { e in
            for p in parts { XCTAssertTrue("\(e)".contains(p), "'\(e)' should mention '\(p)'", file: file, line: line) }
        }
    }

    func testOtherArchitectureIsRefused() throws {
        let d = try scratchCopy("tiny-tied")
        try editConfig(d) { $0["model_type"] = "gpt2"; $0["architectures"] = ["GPT2LMHeadModel"] }
        assertError(d, contains: ["config.json", "GPT2LMHeadModel"])
    }

    func testMissingConfigFieldIsNamed() throws {
        let d = try scratchCopy("tiny-tied")
        try editConfig(d) { $0.removeValue(forKey: "hidden_size") }
        assertError(d, contains: ["config.json", "hidden_size"])
    }

    func testMissingTensorIsNamed() throws {
        let d = try scratchCopy("tiny-untied")
        try editConfig(d) { $0["tie_word_embeddings"] = false; $0["num_hidden_layers"] = 3 }
        assertError(d, contains: ["model.layers.2.input_layernorm.weight"])
    }

    func testWrongShapeIsNamed() throws {
        let d = try scratchCopy("tiny-tied")
        try editConfig(d) { $0["intermediate_size"] = 128 }
        assertError(d, contains: ["mlp.gate_proj.weight", "[128, 64]"])
    }

    func testTruncatedWeightsAreReported() throws {
        let d = try scratchCopy("tiny-tied")
        let f = d.appendingPathComponent("model.safetensors")
        let data = try Data(contentsOf: f)
        try data.prefix(data.count - 1000).write(to: f)
        assertError(d, contains: ["model.safetensors"])
    }
}
