import Foundation

extension Tokenizer {
    /// Loads the tokenizer of a Hugging Face model directory: `tokenizer.json`, plus
    /// `tokenizer_config.json` and `chat_template.jinja` when present (see
    /// `TokenizerSpec(huggingFaceDirectory:)`).
    public static func load(huggingFaceDirectory directory: String) throws -> Tokenizer {
        try Tokenizer(spec: TokenizerSpec(huggingFaceDirectory: directory))
    }
}

extension TokenizerSpec {
    /// Reads a Hugging Face model directory.
    ///
    /// From `tokenizer.json`: `model` (type BPE: `vocab`, `merges` as `"a b"` strings or `["a", "b"]`
    /// pairs, `unk_token`, `ignore_merges`), `added_tokens` (special ones become control tokens,
    /// others user-defined), `normalizer` (none or NFC), `pre_tokenizer` (ByteLevel, or a Sequence of
    /// Digits / Split / ByteLevel matching one of the `PreTokenizerKind` regexes) and
    /// `post_processor` (a TemplateProcessing that starts with a special token means BOS is added).
    /// From `tokenizer_config.json`, which takes precedence: `bos_token`, `eos_token`, `unk_token`,
    /// `pad_token` (strings or `{"content": …}`), `add_bos_token` and `chat_template`. A
    /// `chat_template.jinja` file (transformers 5) overrides `chat_template`.
    ///
    /// Not read: added tokens' `lstrip` / `rstrip` / `single_word` / `normalized` options (every added
    /// token is matched exactly as written) and `decoder` (always byte-level).
    /// - Throws: `TokenizerError.io` / `.malformed` for unreadable files, `.unsupported` for a model,
    ///   normalizer or option this module does not implement, `.unknownPreTokenizer` naming the field.
    public init(huggingFaceDirectory directory: String) throws {
        let base = URL(fileURLWithPath: directory)
        let tokenizerPath = base.appendingPathComponent("tokenizer.json").path
        let root = try JSON.object(at: tokenizerPath)
        let file = "tokenizer.json"

        guard let model = root["model"] as? [String: Any] else {
            throw TokenizerError.malformed(file: tokenizerPath, field: "model", reason: "missing or not an object")
        }
        let modelType = model["type"] as? String ?? "BPE"
        guard modelType == "BPE" else { throw TokenizerError.unsupported(field: "model.type", value: modelType) }
        if model["byte_fallback"] as? Bool == true {
            throw TokenizerError.unsupported(field: "model.byte_fallback", value: "true")
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let value = model[key] as? String, !value.isEmpty {
                throw TokenizerError.unsupported(field: "model.\(key)", value: value)
            }
        }
        guard let vocab = model["vocab"] as? [String: Any] else {
            throw TokenizerError.malformed(file: tokenizerPath, field: "model.vocab", reason: "missing or not an object")
        }

        // Vocabulary by id: the model's entries, then the added tokens (which may extend it).
        var byId: [Int: String] = [:]
        var addedType: [Int: TokenType] = [:]
        for (token, value) in vocab {
            guard let id = JSON.int(value), id >= 0 else {
                throw TokenizerError.malformed(file: tokenizerPath, field: "model.vocab", reason: "id of '\(token)' is not a non-negative integer")
            }
            byId[id] = token
        }
        for (index, entry) in (root["added_tokens"] as? [[String: Any]] ?? []).enumerated() {
            guard let id = JSON.int(entry["id"]), id >= 0, let content = entry["content"] as? String else {
                throw TokenizerError.malformed(file: tokenizerPath, field: "added_tokens[\(index)]", reason: "needs an integer 'id' and a string 'content'")
            }
            byId[id] = content
            addedType[id] = entry["special"] as? Bool == true ? .control : .userDefined
        }
        let count = (byId.keys.max() ?? -1) + 1
        var tokens = [String](repeating: "", count: count)
        var types = [Int](repeating: TokenType.unused.rawValue, count: count)
        for (id, token) in byId {
            tokens[id] = token
            types[id] = (addedType[id] ?? .normal).rawValue
        }

        var merges: [String] = []
        if let list = model["merges"] as? [Any] {
            merges.reserveCapacity(list.count)
            for (index, item) in list.enumerated() {
                if let s = item as? String {
                    merges.append(s)
                } else if let pair = item as? [String], pair.count == 2 {
                    merges.append(pair[0] + " " + pair[1])
                } else {
                    throw TokenizerError.malformed(file: tokenizerPath, field: "model.merges[\(index)]", reason: "neither \"a b\" nor [\"a\", \"b\"]")
                }
            }
        }

        let normalizeNFC = try Self.nfc(from: root["normalizer"], file: file)
        let preTokenizer = try PreTokenizerKind(tokenizerJSON: root["pre_tokenizer"])

        let idByText = Dictionary(byId.map { ($0.value, $0.key) }, uniquingKeysWith: min)
        func id(of token: String?) -> Int32? {
            guard let token, let id = idByText[token] else { return nil }
            return Int32(id)
        }
        var unkId = id(of: model["unk_token"] as? String)
        var bosId: Int32?
        var eosId: Int32?
        var padId: Int32?
        var addBOS = false
        if let first = Self.leadingSpecialToken(of: root["post_processor"]) {
            bosId = id(of: first)
            addBOS = bosId != nil
        }

        var chatTemplate: String?
        let configPath = base.appendingPathComponent("tokenizer_config.json").path
        if FileManager.default.fileExists(atPath: configPath) {
            let config = try JSON.object(at: configPath)
            func tokenText(_ key: String) -> String? {
                if let s = config[key] as? String { return s }
                return (config[key] as? [String: Any])?["content"] as? String
            }
            bosId = id(of: tokenText("bos_token")) ?? bosId
            eosId = id(of: tokenText("eos_token"))
            unkId = id(of: tokenText("unk_token")) ?? unkId
            padId = id(of: tokenText("pad_token"))
            if let add = config["add_bos_token"] as? Bool { addBOS = add && bosId != nil }
            if let text = config["chat_template"] as? String {
                chatTemplate = text
            } else if let named = config["chat_template"] as? [[String: Any]] {
                let chosen = named.first { $0["name"] as? String == "default" } ?? named.first
                chatTemplate = chosen?["template"] as? String
            }
        }
        let jinjaPath = base.appendingPathComponent("chat_template.jinja").path
        if FileManager.default.fileExists(atPath: jinjaPath) {
            do {
                chatTemplate = try String(contentsOfFile: jinjaPath, encoding: .utf8)
            } catch {
                throw TokenizerError.io(path: jinjaPath, reason: error.localizedDescription)
            }
        }

        self.init(
            tokens: tokens, merges: merges, tokenTypes: types, preTokenizer: preTokenizer,
            bosId: bosId, eosId: eosId, unkId: unkId, padId: padId, addBOS: addBOS,
            ignoreMerges: model["ignore_merges"] as? Bool ?? false, normalizeNFC: normalizeNFC,
            chatTemplate: chatTemplate)
    }

    /// Whether tokenizer.json's `normalizer` asks for NFC (nil and an empty Sequence ask for nothing).
    private static func nfc(from value: Any?, file: String) throws -> Bool {
        guard let normalizer = value as? [String: Any] else { return false }
        switch normalizer["type"] as? String {
        case "NFC": return true
        case "Sequence":
            let parts = normalizer["normalizers"] as? [Any] ?? []
            if parts.isEmpty { return false }
            if parts.count == 1 { return try nfc(from: parts[0], file: file) }
            throw TokenizerError.unsupported(field: "normalizer", value: "Sequence of \(parts.count) normalizers")
        case let other:
            throw TokenizerError.unsupported(field: "normalizer", value: other ?? "?")
        }
    }

    /// The special token a TemplateProcessing post-processor puts before a single sequence (BOS), if
    /// any; looks inside a Sequence of post-processors.
    private static func leadingSpecialToken(of value: Any?) -> String? {
        guard let processor = value as? [String: Any] else { return nil }
        switch processor["type"] as? String {
        case "TemplateProcessing":
            guard let single = processor["single"] as? [[String: Any]],
                  let first = single.first?["SpecialToken"] as? [String: Any] else { return nil }
            return first["id"] as? String
        case "Sequence":
            let parts = processor["processors"] as? [Any] ?? []
            return parts.lazy.compactMap { leadingSpecialToken(of: $0) }.first
        default:
            return nil
        }
    }
}

extension PreTokenizerKind {
    /// The regex patterns of Split pre-tokenizers, as tokenizer.json files spell them.
    static let splitPatterns: [String: PreTokenizerKind] = [
        #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#: .gpt2,
        #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#: .llama3,
        #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#: .qwen2,
    ]

    /// The kind a tokenizer.json `pre_tokenizer` describes:
    /// `ByteLevel(use_regex: true)` → gpt2;
    /// `Sequence[Digits(individual_digits: true), ByteLevel(use_regex: true)]` → smollm;
    /// `Sequence[Split(pattern, Isolated), ByteLevel(use_regex: false)]` → the kind of the pattern.
    /// ByteLevel must not add a prefix space.
    /// - Throws: `TokenizerError.unknownPreTokenizer(field: "pre_tokenizer", …)` for anything else.
    init(tokenizerJSON value: Any?) throws {
        let field = "pre_tokenizer"
        func unknown(_ what: String) -> TokenizerError { .unknownPreTokenizer(field: field, value: what) }
        guard let object = value as? [String: Any] else { throw unknown("null") }
        var parts: [[String: Any]] = [object]
        if object["type"] as? String == "Sequence" {
            parts = object["pretokenizers"] as? [[String: Any]] ?? []
        }
        let summary = "[" + parts.map { $0["type"] as? String ?? "?" }.joined(separator: ", ") + "]"
        guard let last = parts.last, last["type"] as? String == "ByteLevel" else { throw unknown(summary) }
        if last["add_prefix_space"] as? Bool == true { throw unknown("ByteLevel(add_prefix_space: true)") }
        let usesRegex = last["use_regex"] as? Bool ?? true
        let before = parts.dropLast()

        switch (before.count, usesRegex) {
        case (0, true):
            self = .gpt2
        case (1, true) where before[0]["type"] as? String == "Digits" && before[0]["individual_digits"] as? Bool == true:
            self = .smollm
        case (1, false) where before[0]["type"] as? String == "Split":
            let split = before[0]
            let pattern = (split["pattern"] as? [String: Any])?["Regex"] as? String
            guard let pattern, let kind = Self.splitPatterns[pattern],
                  split["behavior"] as? String == "Isolated", split["invert"] as? Bool != true else {
                throw unknown("Split(\(pattern ?? "non-regex pattern"))")
            }
            self = kind
        default:
            throw unknown(summary)
        }
    }
}

/// Minimal JSON access over Foundation's `JSONSerialization`.
enum JSON {
    static func object(at path: String) throws -> [String: Any] {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw TokenizerError.io(path: path, reason: "cannot read: \(error.localizedDescription)")
        }
        let parsed: Any
        do {
            parsed = try JSONSerialization.jsonObject(with: data)
        } catch {
            throw TokenizerError.malformed(file: path, field: "(root)", reason: "not valid JSON: \(error.localizedDescription)")
        }
        guard let object = parsed as? [String: Any] else {
            throw TokenizerError.malformed(file: path, field: "(root)", reason: "not a JSON object")
        }
        return object
    }

    /// An integer from a parsed JSON number (which Foundation may hand back as Int, Double or NSNumber).
    static func int(_ value: Any?) -> Int? {
        if let i = value as? Int { return i }
        if let d = value as? Double, d == d.rounded(), abs(d) < 1e15 { return Int(d) }
        return nil
    }
}
