import Foundation
import ModelBundle
@testable import Tokenizer
import XCTest

/// The Jinja interpreter against transformers' `apply_chat_template(tokenize=False)` on real chat
/// templates (fixture by scripts/reference/chat_templates.py), and unit tests of its pieces.
final class JinjaTemplateTests: XCTestCase {
    // MARK: the fixture

    private func field(_ v: JinjaValue, _ key: String) -> JinjaValue {
        if case let .dict(d) = v { return d[key] ?? .undefined(hint: key) }
        return .undefined(hint: key)
    }

    private func string(_ v: JinjaValue) -> String? {
        if case let .string(s) = v { return s }
        return nil
    }

    func testRealTemplatesRenderAsTransformersDoes() throws {
        let data = try Data(contentsOf: Fixtures.directory.appendingPathComponent("jinja_chat_templates.json"))
        let fixture = try JinjaValue(jsonText: String(decoding: data, as: UTF8.self))
        guard case let .list(templates) = field(fixture, "templates") else { return XCTFail("no templates") }
        let names = templates.compactMap { string(field($0, "name")) }
        for required in ["smollm2", "llama3.2", "qwen2.5", "mistral-nemo", "gemma2", "zephyr"] {
            XCTAssertTrue(names.contains(required), "fixture lacks \(required)")
        }
        var rendered = 0, raised = 0
        for t in templates {
            let name = try XCTUnwrap(string(field(t, "name")))
            var special: [String: String] = [:]
            if case let .dict(d) = field(t, "special_tokens") {
                for (k, v) in d.pairs { special[k] = string(v) }
            }
            let template = try JinjaChatTemplate(source: XCTUnwrap(string(field(t, "template"))), specialTokens: special)
            guard case let .list(cases) = field(t, "cases") else { return XCTFail("\(name): no cases") }
            for c in cases {
                var context: [String: JinjaValue] = ["messages": field(c, "messages"),
                                                     "add_generation_prompt": field(c, "add_generation_prompt"),
                                                     "tools": field(c, "tools")]
                if case let .dict(vars) = field(c, "variables") { for (k, v) in vars.pairs { context[k] = v } }
                let label = "\(name), \(string(field(c, "case")) ?? "?"), generation prompt \(field(c, "add_generation_prompt").text)"
                if let expected = string(field(c, "rendered")) {
                    do {
                        XCTAssertBytesEqual(try template.render(context: context), expected, label)
                        rendered += 1
                    } catch {
                        XCTFail("\(label): \(error)")
                    }
                } else {
                    let message = try XCTUnwrap(string(field(c, "error")), label)
                    XCTAssertThrowsError(try template.render(context: context), label) { e in
                        guard let e = e as? JinjaError else { return XCTFail("\(label): \(e)") }
                        // The template's own raise_exception: the same message. Other errors
                        // (Python's TypeError and the like): an error of ours too.
                        if string(field(c, "error_type")) == "TemplateError" {
                            XCTAssertEqual(e.kind, .raised, label)
                            XCTAssertEqual(e.message, message, label)
                        }
                    }
                    raised += 1
                }
            }
        }
        XCTAssertGreaterThan(rendered, 150)
        XCTAssertGreaterThan(raised, 10)
    }

    /// Gemma refuses a system message through the chat API as transformers does, with the message.
    func testGemmaRaisesThroughChatTemplate() throws {
        let gemma = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{{ '<start_of_turn>' + message['role'] + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
        let t = try ChatTemplate(modelTemplate: gemma, specialTokens: ["bos_token": "<bos>"])
        XCTAssertEqual(try t.render([.user(" hi ")], addGenerationPrompt: false), "<bos><start_of_turn>user\nhi<end_of_turn>\n")
        XCTAssertThrowsError(try t.render([.system("s"), .user("hi")], addGenerationPrompt: true)) {
            guard case let .chatTemplateFailed(reason) = $0 as? TokenizerError else { return XCTFail("\($0)") }
            XCTAssertTrue(reason.contains("System role not supported"), reason)
            XCTAssertTrue(reason.contains("line 1, column 59"), reason)
        }
        XCTAssertEqual(t.stopTokens, ["<end_of_turn>"])
        XCTAssertEqual(t.name, "model")
    }

    // MARK: the model's own template

    /// SmolLM2's own template through the interpreter renders what the built-in ChatML renders,
    /// and the model bundle uses it by default.
    func testSmolLM2BundleUsesItsOwnTemplate() throws {
        let bundle = try ModelBundle(path: SmolLM2.path)
        guard case let .jinja(own)? = bundle.template else { return XCTFail("\(String(describing: bundle.template))") }
        XCTAssertEqual(bundle.template?.name, "model")
        XCTAssertEqual(own.stopTokens, ["<|im_end|>"])
        let tok = try bundle.tokenizer
        XCTAssertEqual(bundle.stopTokenIds, [tok.eosId!])
        let builtIn = try ChatTemplate(templateText: XCTUnwrap(tok.chatTemplateText))
        for messages: [ChatTurn] in [[.user("Hi")], [.system("S"), .user("a"), .assistant("b"), .user("c")]] {
            for gen in [false, true] {
                XCTAssertBytesEqual(try own.render(messages, addGenerationPrompt: gen), try builtIn.render(messages, addGenerationPrompt: gen))
            }
        }
        let ids = try bundle.textEncoder().chat([.user("Hi")])
        XCTAssertEqual(ids.filter { tok.isSpecial($0) }, [1, 2, 1, 2, 1])
        // --template chatml still overrides; --template model is the default made explicit.
        XCTAssertEqual(try ModelBundle(path: SmolLM2.path, templateName: "chatml").template, .chatml(defaultSystem: nil))
        XCTAssertEqual(try ModelBundle(path: SmolLM2.path, templateName: "model").template, bundle.template)
    }

    func testInvalidModelTemplateIsAClearError() {
        XCTAssertThrowsError(try ChatTemplate(modelTemplate: "{% for m in messages %}\n{{ m.content }\n{% endfor %}", specialTokens: [:])) {
            guard case let .invalidChatTemplate(reason) = $0 as? TokenizerError else { return XCTFail("\($0)") }
            XCTAssertTrue(reason.contains("line 2, column 14: unexpected '}'"), reason)
        }
        XCTAssertThrowsError(try JinjaTemplate("{% if x %}a")) {
            XCTAssertEqual(($0 as? JinjaError)?.kind, .syntax)
            XCTAssertTrue("\($0)".contains("line 1"), "\($0)")
        }
        XCTAssertThrowsError(try JinjaTemplate("{% endfor %}")) { XCTAssertTrue("\($0)".contains("unexpected 'endfor'"), "\($0)") }
        XCTAssertThrowsError(try JinjaTemplate("{% include 'x' %}")) { XCTAssertTrue("\($0)".contains("unknown tag 'include'"), "\($0)") }
        XCTAssertThrowsError(try render("a\n  {{ 1 + 'x' }}")) {
            let e = $0 as? JinjaError
            XCTAssertEqual(e?.kind, .runtime)
            XCTAssertEqual(e?.line, 2)
            XCTAssertEqual(e?.message, "unsupported operand type(s) for +: 'int' and 'str'")
        }
    }

    // MARK: pieces of the interpreter

    private func render(_ source: String, _ context: [String: JinjaValue] = [:]) throws -> String {
        try JinjaTemplate(source).render(context)
    }

    func testWhitespaceControl() throws {
        // trim_blocks: the newline after a block tag goes; lstrip_blocks: indentation before it.
        XCTAssertEqual(try render("{% if true %}\n  yes\n  {% endif %}\nend"), "  yes\nend")
        XCTAssertEqual(try render("a  {%- if true -%}  b  {%- endif -%}  c"), "abc")
        XCTAssertEqual(try render("a {{- 'b' -}} c"), "abc")
        XCTAssertEqual(try render("{{ 'x' }}\n{{ 'y' }}"), "x\ny")      // no trim after }}
        XCTAssertEqual(try render("  {%+ if true %}x{% endif %}"), "  x")  // {%+ keeps the indentation
        XCTAssertEqual(try render("{% if true +%}\nx{% endif %}"), "\nx")  // +%} keeps the newline
        XCTAssertEqual(try render("a {# comment #}\nb"), "a b")
        XCTAssertEqual(try render("a\n    {# c #}\nb"), "a\nb")
        XCTAssertEqual(try render("x\n"), "x")                           // one trailing newline dropped
        XCTAssertEqual(try render("x\r\ny"), "x\ny")
        XCTAssertEqual(try render("{% raw %}{{ not }}{% endraw %}"), "{{ not }}")
    }

    func testLoops() throws {
        let items: JinjaValue = .list(["a", "b", "c"].map { .string($0) })
        XCTAssertEqual(try render("{% for x in xs %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ x }};{% endfor %}", ["xs": items]),
                       "103TrueFalse3a;212FalseFalse3b;321FalseTrue3c;")
        XCTAssertEqual(try render("{% for x in xs if x != 'b' %}{{ loop.index }}{{ x }}{% else %}none{% endfor %}", ["xs": items]), "1a2c")
        XCTAssertEqual(try render("{% for x in [] %}x{% else %}none{% endfor %}"), "none")
        XCTAssertEqual(try render("{% for x in xs %}{% if x == 'b' %}{% continue %}{% endif %}{% if x == 'c' %}{% break %}{% endif %}{{ x }}{% endfor %}", ["xs": items]), "a")
        XCTAssertEqual(try render("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }},{% endfor %}"), "a=1,b=2,")
        XCTAssertEqual(try render("{% for x in xs %}{{ loop.previtem is defined }}{{ loop.cycle('o', 'e') }}{% endfor %}", ["xs": items]), "FalseoTrueeTrueo")
        // set inside a loop does not leak; a namespace carries values out.
        XCTAssertEqual(try render("{% set n = 0 %}{% set ns = namespace(n=0) %}{% for x in xs %}{% set n = n + 1 %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ n }} {{ ns.n }}", ["xs": items]), "0 3")
    }

    func testExpressions() throws {
        XCTAssertEqual(try render("{{ 1 + 2 * 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }}"), "7 3 -4 1 2 3.5 1024")
        XCTAssertEqual(try render("{{ 'a' ~ 1 ~ none }} {{ 'ab' * 2 }} {{ [1] + [2] }}"), "a1None abab [1, 2]")
        XCTAssertEqual(try render("{{ 'abcdef'[1:] }} {{ 'abc'[::-1] }} {{ [1,2,3,4][1:3] }} {{ [1,2,3][-1] }} {{ 'abc'[-2:] }}"), "bcdef cba [2, 3] 3 bc")
        XCTAssertEqual(try render("{{ 1 < 2 < 3 }} {{ 'b' in 'abc' }} {{ 3 not in [1, 2] }} {{ 1 == 1.0 }} {{ not 0 }}"), "True True True True True")
        XCTAssertEqual(try render("{{ 'y' if x else 'n' }} {{ x or 'dflt' }} {{ 0 and 1 }}", ["x": .bool(false)]), "n dflt 0")
        XCTAssertEqual(try render("{{ {'a': [1, 'b'], 'c': none} }} {{ true }}"), "{'a': [1, 'b'], 'c': None} True")
        XCTAssertEqual(try render("{{ m.role }} {{ m['content'] }} {{ m.missing is defined }} [{{ m.missing }}]",
                                  ["m": .object(["role": .string("user"), "content": .string("hi")])]), "user hi False []")
        XCTAssertEqual(try render("{{ '%s=%d' % ('a', 3) }} {{ '{}-{name}'.format(1, name='x') }}"), "a=3 1-x")
        XCTAssertThrowsError(try render("{{ x.y }}")) { XCTAssertEqual(($0 as? JinjaError)?.message, "'x' is undefined") }
    }

    func testFilters() throws {
        XCTAssertEqual(try render("{{ '  a b \n' | trim }}|{{ 'xxaxx' | trim('x') }}|{{ 'abc' | upper }}|{{ 'ABC' | lower }}|{{ 'hello world' | capitalize }}|{{ 'hello-world x' | title }}"),
                       "a b|a|ABC|abc|Hello world|Hello-World X")
        XCTAssertEqual(try render("{{ [1, 2, 3] | length }} {{ 'héllo' | length }} {{ {'a': 1} | length }} {{ [3, 1, 2] | first }} {{ [3, 1, 2] | last }}"), "3 5 1 3 2")
        XCTAssertEqual(try render("{{ [1, 2, 3] | join(', ') }} {{ x | default('d') }} {{ '' | default('e', true) }} {{ none | string }}"), "1, 2, 3 d e None")
        XCTAssertEqual(try render("{{ 'aXbX' | replace('X', '-') }} {{ [3, 1, 2] | sort | list }} {{ [1, 2] | reverse | list }} {{ [1, 1, 2] | unique | list }}"), "a-b- [1, 2, 3] [2, 1] [1, 2]")
        XCTAssertEqual(try render("{{ {'b': 1, 'a': [1, 'é', none, true, 1.5]} | tojson }}"), #"{"b": 1, "a": [1, "é", null, true, 1.5]}"#)
        XCTAssertEqual(try render("{{ {'a': {'b': 1}} | tojson(indent=2) }}"), "{\n  \"a\": {\n    \"b\": 1\n  }\n}")
        XCTAssertEqual(try render("{{ 'a\"b\\n' | tojson }}"), #""a\"b\n""#)
        let messages: JinjaValue = .list([.object(["role": .string("user"), "content": .string("a")]),
                                          .object(["role": .string("assistant"), "content": .string("b")]),
                                          .object(["role": .string("user"), "content": .string("c")])])
        XCTAssertEqual(try render("{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | join }}|{{ messages | rejectattr('role', 'eq', 'user') | list | length }}|{{ messages | map(attribute='role') | unique | join(',') }}", ["messages": messages]),
                       "ac|1|user,assistant")
        XCTAssertEqual(try render("{% for k, v in {'x': 1} | items %}{{ k }}{{ v }}{% endfor %} {{ [1, 2, 3] | select('odd') | list }} {{ [1, 2, 3] | sum }} {{ 3.7 | int }} {{ '4' | int + 1 }} {{ 2.5 | round }}"), "x1 [1, 3] 6 3 5 3.0")
        XCTAssertEqual(try render("{{ 'a\nb' | indent(2) }}|{{ 'a\nb' | indent(2, true) }}"), "a\n  b|  a\n  b")
    }

    func testTestsAndMethods() throws {
        XCTAssertEqual(try render("{{ x is defined }} {{ y is none }} {{ 's' is string }} {{ {} is mapping }} {{ [] is iterable }} {{ 1 is number }} {{ 3 is odd }} {{ 4 is divisibleby 2 }} {{ 'a' is in 'abc' }} {{ y is not none }}",
                                  ["y": .none]), "False True True True True True True True True False")
        XCTAssertEqual(try render("{{ ' a '.strip() }}|{{ 'abc'.startswith('ab') }}|{{ 'abc'.endswith(('x', 'c')) }}|{{ 'a b  c'.split() }}|{{ 'a,b'.split(',') }}|{{ 'a b c'.split(' ', 1) }}|{{ 'x'.upper() }}|{{ 'abc'.replace('b', '') }}|{{ 'aXa'.rstrip('a') }}"),
                       "a|True|True|['a', 'b', 'c']|['a', 'b']|['a', 'b c']|X|ac|aX")
        let d: JinjaValue = .object(["a": .int(1), "b": .int(2)])
        XCTAssertEqual(try render("{{ d.get('a') }} {{ d.get('z', 0) }} {{ d.get('z') }} {{ d.keys() | list }} {{ d.values() | list }} {{ 'a' in d }}", ["d": d]), "1 0 None ['a', 'b'] [1, 2] True")
        // The sandbox refuses methods that modify (transformers' ImmutableSandboxedEnvironment).
        XCTAssertThrowsError(try render("{% set l = [] %}{{ l.append(1) }}")) { XCTAssertTrue("\($0)".contains("unsafe"), "\($0)") }
    }

    func testMacrosSetBlocksAndGlobals() throws {
        XCTAssertEqual(try render("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('A') }} {{ greet('B', punct='?') }}"), "Hi A! Hi B?")
        XCTAssertEqual(try render("{% set x %}a{{ 1 + 1 }}{% endset %}{{ x }}|{% set a, b = [1, 2] %}{{ b }}{{ a }}"), "a2|21")
        XCTAssertEqual(try render("{{ range(3) | list }} {{ range(1, 7, 2) | list }} {{ dict(a=1) }} {{ namespace(a=1).a }}"), "[0, 1, 2] [1, 3, 5] {'a': 1} 1")
        XCTAssertEqual(try render("{% filter upper %}abc{% endfilter %}"), "ABC")
        XCTAssertThrowsError(try render("\n{{ raise_exception('no ' ~ 'way') }}")) {
            let e = $0 as? JinjaError
            XCTAssertEqual(e?.kind, .raised)
            XCTAssertEqual(e?.message, "no way")
            XCTAssertEqual(e?.line, 2)
        }
        // strftime_now is local time, as Python's datetime.now().strftime.
        let today = try render("{{ strftime_now('%Y-%m-%d') }}")
        let f = DateFormatter()
        f.dateFormat = "yyyy-MM-dd"
        f.timeZone = .current
        XCTAssertTrue([f.string(from: Date()), f.string(from: Date().addingTimeInterval(-5))].contains(today), today)
        XCTAssertThrowsError(try render("{% set ns = namespace() %}{% set ns._x = 1 %}")) { XCTAssertTrue("\($0)".contains("underscore"), "\($0)") }
    }

    func testJSONReaderKeepsKeyOrder() throws {
        let v = try JinjaValue(jsonText: #"{"z": 1, "a": [true, null, 1.5, "\u00e9\ud83d\ude00"], "m": {}}"#)
        XCTAssertEqual(v.text, "{'z': 1, 'a': [True, None, 1.5, 'é😀'], 'm': {}}")
        XCTAssertThrowsError(try JinjaValue(jsonText: "{\"a\": }"))
    }
}
