import Foundation
import XCTest
@testable import Model

/// GGUF files this project writes load back exactly; files of other architectures, or missing a
/// tensor, are refused with an error naming the file and what is wrong.
final class GGUFModelTests: XCTestCase {
    func tempPath(_ name: String) -> String {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("selm-gguf-\(UUID().uuidString)")
        try! FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: d) }
        return d.appendingPathComponent(name).path
    }

    /// An untied GQA model written as GGUF (Q/K permuted to llama.cpp's layout) loads back to the
    /// same weights and logits.
    func testRoundTripThroughGGUF() throws {
        let m = try LlamaModel.load(huggingFaceDirectory: TestSupport.fixture("tiny-untied").path)
        let path = tempPath("m.gguf")
        try m.saveGGUF(path: path, name: "tiny", metadata: [("tokenizer.ggml.model", .string("gpt2"))])
        let g = try GGUFFile(path: path)
        XCTAssertEqual(g.metadata["general.architecture"], .string("llama"))
        XCTAssertEqual(g.tensor("blk.0.attn_q.weight")?.dims, [64, 64])
        let back = try LlamaModel.load(gguf: g)
        XCTAssertEqual(back.config, m.config)
        XCTAssertEqual(Array(UnsafeBufferPointer(start: back.weights.data, count: back.weights.count)),
                       Array(UnsafeBufferPointer(start: m.weights.data, count: m.weights.count)))
        // The stored Q rows really are permuted (llama.cpp layout), not a verbatim copy.
        let stored = try g.dequantize(g.tensor("blk.0.attn_q.weight")!)
        let hf = Array(m.weights.tensor("model.layers.0.self_attn.q_proj.weight")!)
        XCTAssertNotEqual(stored, hf)
        XCTAssertEqual(stored.sorted(), hf.sorted())
    }

    func testOtherArchitectureIsRefused() throws {
        let m = try LlamaModel.load(huggingFaceDirectory: TestSupport.fixture("tiny-tied").path)
        let path = tempPath("gpt2.gguf")
        try GGUFWriter.write(path: path, metadata: [("general.architecture", .string("gpt2"))],
                             tensors: [.init(name: "token_embd.weight", dims: [64, 97], data: m.weights.tokenEmbedding)])
        XCTAssertThrowsError(try LlamaModel.load(gguf: GGUFFile(path: path))) { e in
            XCTAssertTrue("\(e)".contains("gpt2.gguf") && "\(e)".contains("'gpt2'"), "\(e)")
        }
    }

    func testMissingTensorAndFieldAreNamed() throws {
        let m = try LlamaModel.load(huggingFaceDirectory: TestSupport.fixture("tiny-tied").path)
        let path = tempPath("partial.gguf")
        try GGUFWriter.write(path: path, metadata: m.config.ggufMetadata,
                             tensors: [.init(name: "token_embd.weight", dims: [64, 97], data: m.weights.tokenEmbedding)])
        XCTAssertThrowsError(try LlamaModel.load(gguf: GGUFFile(path: path))) { e in
            XCTAssertTrue("\(e)".contains("partial.gguf") && "\(e)".contains("blk.0.attn_norm.weight"), "\(e)")
        }
        let path2 = tempPath("nofield.gguf")
        try GGUFWriter.write(path: path2, metadata: m.config.ggufMetadata.filter { $0.0 != "llama.block_count" }, tensors: [])
        XCTAssertThrowsError(try LlamaModel.load(gguf: GGUFFile(path: path2))) { e in
            XCTAssertTrue("\(e)".contains("llama.block_count"), "\(e)")
        }
    }
}
