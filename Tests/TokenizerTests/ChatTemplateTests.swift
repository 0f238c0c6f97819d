import Foundation
import Tokenizer
import XCTest

/// Chat renderings against transformers' Jinja rendering of the models' own templates.
final class ChatTemplateTests: XCTestCase {
    struct Fixture: Decodable {
        struct Message: Decodable {
            var role: String
            var content: String
        }
        struct Render: Decodable {
            var messages: [Message]
            var add_generation_prompt: Bool
            var rendered: String
        }
        struct Template: Decodable {
            var name: String
            var model: String
            var template: String
            var kind: String
            var default_system: String?
            var renders: [Render]
        }
        var templates: [Template]
    }

    func testRecognizesTemplatesAndRendersThemByteForByte() throws {
        let fixture = try Fixtures.load(Fixture.self, "chat_templates.json")
        XCTAssertEqual(Set(fixture.templates.map(\.kind)), ["chatml", "zephyr", "llama3"])
        for t in fixture.templates {
            let template = try XCTUnwrap(ChatTemplate.recognize(t.template), "\(t.name) (\(t.model)) not recognised")
            XCTAssertEqual(template.name, t.kind, t.name)
            if case let .chatml(defaultSystem) = template {
                XCTAssertEqual(defaultSystem, t.default_system, t.name)
            }
            XCTAssertEqual(t.renders.count, 6)
            for r in t.renders {
                let messages = r.messages.map { ChatTurn(role: $0.role, content: $0.content) }
                let rendered = try template.render(messages, addGenerationPrompt: r.add_generation_prompt)
                XCTAssertBytesEqual(rendered, r.rendered, "\(t.name), generation prompt \(r.add_generation_prompt)")
            }
        }
    }

    func testNamedTemplates() throws {
        XCTAssertEqual(try ChatTemplate(name: "chatml"), .chatml(defaultSystem: nil))
        XCTAssertEqual(try ChatTemplate(name: "Zephyr"), .zephyr)
        XCTAssertEqual(try ChatTemplate(name: "llama3"), .llama3)
        XCTAssertThrowsError(try ChatTemplate(name: "alpaca")) {
            XCTAssertEqual($0 as? TokenizerError, .unknownTemplateName("alpaca"))
        }
    }

    func testStopTokens() {
        XCTAssertEqual(ChatTemplate.chatml(defaultSystem: nil).stopTokens, ["<|im_end|>"])
        XCTAssertEqual(ChatTemplate.zephyr.stopTokens, ["</s>"])
        XCTAssertEqual(ChatTemplate.llama3.stopTokens, ["<|eot_id|>"])
    }

    func testUnknownTemplateIsAnError() {
        // google/gemma-2-2b-it's template: neither ChatML, Zephyr nor Llama-3.
        let gemma = "{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + message['role'] + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
        XCTAssertNil(ChatTemplate.recognize(gemma))
        XCTAssertThrowsError(try ChatTemplate(templateText: gemma)) {
            guard case let .unrecognizedChatTemplate(excerpt) = $0 as? TokenizerError else { return XCTFail("\($0)") }
            XCTAssertTrue(excerpt.contains("bos_token"))
        }
    }

    func testSmolLM2TemplateRendersToTheTokensTheModelExpects() throws {
        let tok = try SmolLM2.tokenizer()
        let template = try ChatTemplate(templateText: XCTUnwrap(tok.chatTemplateText))
        let prompt = try template.render([.user("Hi")], addGenerationPrompt: true)
        let ids = tok.encode(prompt)
        XCTAssertEqual(ids.first, tok.id(of: "<|im_start|>"))
        XCTAssertEqual(ids.filter { tok.isSpecial($0) }, [1, 2, 1, 2, 1])
        XCTAssertEqual(template.stopTokens.compactMap { tok.id(of: $0) }, [tok.eosId])
    }
}
