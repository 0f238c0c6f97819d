import Foundation
import Model
import Tokenizer
import XCTest
@testable import Engine

/// The engine's text entry points report what the model's own chat template says when it refuses
/// a conversation, instead of claiming the model has no template.
final class ChatTemplateErrorTests: XCTestCase {
    func testATemplateRefusalKeepsItsMessage() throws {
        let source = """
        {% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}\
        {{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}
        """
        let template = try ChatTemplate(modelTemplate: source, specialTokens: [:])
        var config = EngineConfig()
        config.kvCacheMB = 1
        let engine = try GenerationEngine(model: Fixtures.tiny(), tokenizer: Fixtures.tinyTokenizer, template: template, config: config)
        defer { engine.stop() }
        XCTAssertFalse(try engine.encode(messages: [ChatTurn(role: "user", content: "hi")]).isEmpty)
        XCTAssertThrowsError(try engine.encode(messages: [ChatTurn(role: "system", content: "x"), ChatTurn(role: "user", content: "hi")])) { e in
            guard case let EngineError.invalidRequest(field, reason)? = e as? EngineError else { return XCTFail("\(e)") }
            XCTAssertEqual(field, "chat")
            XCTAssertTrue(reason.contains("System role not supported"), reason)
        }
        let bare = try GenerationEngine(model: Fixtures.tiny(), tokenizer: Fixtures.tinyTokenizer, config: config)
        defer { bare.stop() }
        XCTAssertThrowsError(try bare.encode(text: "hi", chat: true)) { e in
            XCTAssertEqual(e as? EngineError, .noChatTemplate)
        }
    }
}
