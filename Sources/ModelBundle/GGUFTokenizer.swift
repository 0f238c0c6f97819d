import Model
import Tokenizer

extension TokenizerSpec {
    /// The tokenizer a GGUF file describes in its metadata: `tokenizer.ggml.model` (must be `gpt2`,
    /// i.e. byte-level BPE), `.pre` (absent means `default`), `.tokens`, `.merges`, `.token_type`,
    /// `.bos_token_id`, `.eos_token_id`, `.unknown_token_id`, `.padding_token_id`, `.add_bos_token`
    /// (absent means false) and `tokenizer.chat_template`. Llama-3 files (`llama-bpe`) get
    /// `ignoreMerges`, as llama.cpp and the model's tokenizer.json do.
    /// - Throws: `ModelError.missingField` / `.badField` for absent or mistyped fields,
    ///   `TokenizerError.unsupported` for another tokenizer model, `.unknownPreTokenizer` naming
    ///   `tokenizer.ggml.pre`.
    public init(gguf: GGUFFile) throws {
        let model = try gguf.string("tokenizer.ggml.model")
        guard model == "gpt2" else { throw TokenizerError.unsupported(field: "tokenizer.ggml.model", value: model) }
        let pre = try gguf.metadata["tokenizer.ggml.pre"] == nil ? "default" : gguf.string("tokenizer.ggml.pre")
        let kind = try PreTokenizerKind(ggufName: pre)

        func id(_ key: String) throws -> Int32? {
            guard let value = try gguf.optionalInt(key) else { return nil }
            guard value >= 0, value <= Int(Int32.max) else {
                throw ModelError.badField(file: gguf.path, field: key, reason: "token id \(value) out of range")
            }
            return Int32(value)
        }
        var addBOS = false
        if let value = gguf.metadata["tokenizer.ggml.add_bos_token"] {
            guard let flag = value.bool else {
                throw ModelError.badField(file: gguf.path, field: "tokenizer.ggml.add_bos_token", reason: "expected a bool")
            }
            addBOS = flag
        }
        let chatTemplate = try gguf.metadata["tokenizer.chat_template"] == nil ? nil : gguf.string("tokenizer.chat_template")

        self.init(
            tokens: try gguf.strings("tokenizer.ggml.tokens"),
            merges: try gguf.strings("tokenizer.ggml.merges"),
            tokenTypes: try gguf.metadata["tokenizer.ggml.token_type"] == nil ? nil : gguf.ints("tokenizer.ggml.token_type"),
            preTokenizer: kind,
            bosId: try id("tokenizer.ggml.bos_token_id"),
            eosId: try id("tokenizer.ggml.eos_token_id"),
            unkId: try id("tokenizer.ggml.unknown_token_id"),
            padId: try id("tokenizer.ggml.padding_token_id"),
            addBOS: addBOS,
            ignoreMerges: kind == .llama3,
            chatTemplate: chatTemplate)
    }
}

extension TokenizerSpec {
    /// The `tokenizer.*` GGUF metadata that `init(gguf:)` reads back as this spec (what llama.cpp
    /// reads too): written into the `model.gguf` of a checkpoint whose source was a Hugging Face
    /// directory. A GGUF cannot say `normalizeNFC` (Qwen2's normalizer): that is lost.
    public var ggufMetadata: [(String, GGUFFile.Value)] {
        let pre: String
        switch preTokenizer {
        case .gpt2: pre = "gpt2"
        case .smollm: pre = "smollm"
        case .llama3: pre = "llama-bpe"
        case .qwen2: pre = "qwen2"
        }
        var md: [(String, GGUFFile.Value)] = [
            ("tokenizer.ggml.model", .string("gpt2")),
            ("tokenizer.ggml.pre", .string(pre)),
            ("tokenizer.ggml.tokens", .array(tokens.map { .string($0) })),
            ("tokenizer.ggml.merges", .array(merges.map { .string($0) })),
        ]
        if let types = tokenTypes { md.append(("tokenizer.ggml.token_type", .array(types.map { .int(Int64($0)) }))) }
        for (key, id) in [("bos", bosId), ("eos", eosId), ("unknown", unkId), ("padding", padId)] {
            if let id { md.append(("tokenizer.ggml.\(key)_token_id", .uint(UInt64(id)))) }
        }
        md.append(("tokenizer.ggml.add_bos_token", .bool(addBOS)))
        if let chatTemplate { md.append(("tokenizer.chat_template", .string(chatTemplate))) }
        return md
    }
}

extension Tokenizer {
    /// The tokenizer of a GGUF file (see `TokenizerSpec(gguf:)`).
    public static func load(gguf: GGUFFile) throws -> Tokenizer {
        try Tokenizer(spec: TokenizerSpec(gguf: gguf))
    }
}
