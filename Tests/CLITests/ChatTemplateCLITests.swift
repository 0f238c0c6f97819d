import Foundation
import XCTest

/// `selm` renders the model's own Jinja chat template by default (`--template model`), with the
/// built-in ones as overrides, run as a user runs it on the tiny chat model (a Hugging Face
/// directory whose tokenizer_config.json carries the template).
final class ChatTemplateCLITests: XCTestCase {
    typealias Result = CLITests.Result

    private func run(_ args: [String]) throws -> Result {
        let p = Process()
        p.executableURL = CLITests.selm
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = FileHandle.nullDevice
        try p.run()
        let errData = Locked(Data())
        let done = DispatchSemaphore(value: 0)
        Thread { errData.set(err.fileHandleForReading.readDataToEndOfFile()); done.signal() }.start()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        done.wait()
        p.waitUntilExit()
        return Result(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
                      stderr: String(decoding: errData.get(), as: UTF8.self), data: o)
    }

    /// A copy of the tiny chat model whose chat template is `template`.
    private func tinyChat(template: String) throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("selm-template-\(UUID().uuidString.prefix(8))")
        try FileManager.default.copyItem(at: CLITests.modelFixtures.appendingPathComponent("tiny-chat"), to: dir)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        let configURL = dir.appendingPathComponent("tokenizer_config.json")
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: configURL)) as! [String: Any]
        config["chat_template"] = template
        try JSONSerialization.data(withJSONObject: config).write(to: configURL)
        return dir.path
    }

    private static let chatml = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"

    /// A template that refuses a system message (as Gemma's does): the refusal is the command's error,
    /// with the template's own message; `--template chatml` overrides the model's template.
    func testTheModelsTemplateRefusesAsItsJinjaSays() throws {
        let model = try tinyChat(template: "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}" + Self.chatml)
        let base = ["generate", "--model", model, "--chat", "--prompt", "hi", "--max-tokens", "1"]
        let ok = try run(base)
        XCTAssertEqual(ok.status, 0, ok.stderr)
        let refused = try run(base + ["--system", "be brief"])
        XCTAssertEqual(refused.status, 1, refused.stderr)
        XCTAssertTrue(refused.stderr.contains("System role not supported"), refused.stderr)
        XCTAssertTrue(refused.stderr.contains("line 1, column 44"), refused.stderr)
        let overridden = try run(base + ["--system", "be brief", "--template", "chatml"])
        XCTAssertEqual(overridden.status, 0, overridden.stderr)
        let explicit = try run(base + ["--system", "be brief", "--template", "model"])
        XCTAssertEqual(explicit.status, 1, explicit.stderr)
    }

    /// A template that is not valid Jinja: chat requests fail naming its line and column (the model
    /// still loads for token-id work); with `--template model` loading fails.
    func testAnInvalidTemplateIsNamedWithItsPosition() throws {
        let model = try tinyChat(template: "{% for message in messages %}\n{{ message['content'] }\n{% endfor %}")
        let chat = try run(["generate", "--model", model, "--chat", "--prompt", "hi", "--max-tokens", "1"])
        XCTAssertEqual(chat.status, 1, chat.stderr)
        XCTAssertTrue(chat.stderr.contains("line 2, column 23"), chat.stderr)
        XCTAssertTrue(chat.stderr.contains("--template chatml|zephyr|llama3"), chat.stderr)
        let plain = try run(["generate", "--model", model, "--prompt", "hi", "--max-tokens", "1"])
        XCTAssertEqual(plain.status, 0, plain.stderr)
        let explicit = try run(["generate", "--model", model, "--template", "model", "--prompt", "hi", "--max-tokens", "1"])
        XCTAssertEqual(explicit.status, 1, explicit.stderr)
        XCTAssertTrue(explicit.stderr.contains("--template model"), explicit.stderr)
    }

    /// `--template model` on a model that carries no template is a load error.
    func testTemplateModelNeedsATemplate() throws {
        let r = try run(["info", "--model", CLITests.modelFixtures.appendingPathComponent("tiny-tied").path, "--template", "model"])
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("--template model: the model carries no chat template"), r.stderr)
    }
}

/// A value shared between threads under a lock.
private final class Locked<T>: @unchecked Sendable {
    private var value: T
    private let lock = NSLock()
    init(_ v: T) { value = v }
    func get() -> T { lock.lock(); defer { lock.unlock() }; return value }
    func set(_ v: T) { lock.lock(); value = v; lock.unlock() }
}
