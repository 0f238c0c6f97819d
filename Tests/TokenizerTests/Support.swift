import Foundation
import Model
import ModelBundle
import Tokenizer
import XCTest

/// Fixtures written by `scripts/reference/tokenizer.py` (Hugging Face tokenizers / transformers).
enum Fixtures {
    static var directory: URL {
        Bundle.module.url(forResource: "Fixtures", withExtension: nil)!
    }

    static func load<T: Decodable>(_ type: T.Type, _ name: String) throws -> T {
        let data = try Data(contentsOf: directory.appendingPathComponent(name))
        return try JSONDecoder().decode(T.self, from: data)
    }
}

struct EncodeFixture: Decodable {
    struct Case: Decodable {
        var text: String
        var ids: [Int32]
    }
    struct Agreement: Decodable {
        var loaded: Bool
        var agree: Bool?
    }
    var vocab_size: Int
    var cases: [Case]
    var literal_special_cases: [Case]
    var transformers_gguf: Agreement
}

/// The real SmolLM2 model, located by `$SELM_MODEL` or `<package root>/models/`.
enum SmolLM2 {
    struct MissingModel: Error, CustomStringConvertible {
        var path: String
        var description: String { "model not found at \(path): run `make model` (or set SELM_MODEL)" }
    }

    static var path: String {
        if let env = ProcessInfo.processInfo.environment["SELM_MODEL"], !env.isEmpty { return env }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return root.appendingPathComponent("models/SmolLM2-135M-Instruct.Q4_1.gguf").path
    }

    private static let loaded: Result<(TokenizerSpec, Tokenizer), any Error> = Result {
        guard FileManager.default.fileExists(atPath: path) else { throw MissingModel(path: path) }
        let spec = try TokenizerSpec(gguf: GGUFFile(path: path))
        return (spec, try Tokenizer(spec: spec))
    }

    /// The tokenizer built from the GGUF's metadata (loaded once); throws, failing the test, when the
    /// model is missing.
    static func tokenizer() throws -> Tokenizer { try loaded.get().1 }
    static func spec() throws -> TokenizerSpec { try loaded.get().0 }
}

/// Byte-exact comparison (Swift's `==` on strings is canonical equivalence: "é" == "e\u{301}").
func XCTAssertBytesEqual(_ a: String, _ b: String, _ message: @autoclosure () -> String = "", file: StaticString = #filePath, line: UInt = #line) {
    if Array(a.utf8) != Array(b.utf8) {
        XCTFail("\(a.debugDescription) != \(b.debugDescription) \(message())", file: file, line: line)
    }
}

/// GPT-2's bytes_to_unicode, written out again here so tests do not borrow the implementation's table.
func byteLevelSpelling(_ byte: UInt8) -> String {
    let printable = Set(Array(33...126) + Array(161...172) + Array(174...255))
    if printable.contains(Int(byte)) { return String(Unicode.Scalar(byte)) }
    let rank = (0..<Int(byte)).filter { !printable.contains($0) }.count
    return String(Unicode.Scalar(UInt32(256 + rank))!)
}

/// A tokenizer whose vocabulary is the 256 single bytes (ids = byte values) followed by `extra`
/// tokens, with the given merges and pre-tokenizer.
func byteTokenizer(
    extra: [String] = [], types: [Int]? = nil, merges: [String] = [], preTokenizer: PreTokenizerKind = .gpt2
) throws -> Tokenizer {
    let tokens = (0...255).map { byteLevelSpelling(UInt8($0)) } + extra
    let tokenTypes = types.map { [Int](repeating: 1, count: 256) + $0 }
    return try Tokenizer(spec: TokenizerSpec(tokens: tokens, merges: merges, tokenTypes: tokenTypes, preTokenizer: preTokenizer))
}
