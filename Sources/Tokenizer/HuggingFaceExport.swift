import Foundation

extension TokenizerSpec {
    /// The Hugging Face tokenizer files that describe this tokenizer: `tokenizer.json` (BPE model with
    /// the vocabulary and merges, special and user-defined tokens as `added_tokens`, the
    /// pre-tokenizer of `preTokenizer`, NFC when asked, a BOS TemplateProcessing when `addBOS`,
    /// byte-level decoder) and `tokenizer_config.json` (bos / eos / unk / pad tokens, `add_bos_token`,
    /// `chat_template`). Checkpoints of a GGUF model carry them so that transformers' `AutoTokenizer`
    /// loads the checkpoint directory; `TokenizerSpec(huggingFaceDirectory:)` reads them back to the
    /// same tokenizer.
    public func huggingFaceFiles() throws -> [String: Data] {
        func token(_ id: Int32?) -> String? { id.flatMap { Int($0) < tokens.count ? tokens[Int($0)] : nil } }
        func type(_ id: Int) -> TokenType {
            if let t = tokenTypes, id < t.count, let kind = TokenType(rawValue: t[id]) { return kind }
            return [bosId, eosId, unkId, padId].contains(Int32(id)) ? .control : .normal
        }

        var vocab: [String: Int] = [:]
        var added: [[String: Any]] = []
        for (id, text) in tokens.enumerated() {
            if vocab[text] == nil { vocab[text] = id }
            let kind = type(id)
            if kind == .control || kind == .userDefined || kind == .unknown {
                added.append(["id": id, "content": text, "single_word": false, "lstrip": false, "rstrip": false,
                              "normalized": false, "special": kind != .userDefined])
            }
        }

        let byteLevel: (Bool) -> [String: Any] = { regex in
            ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex]
        }
        let preTokenizerJSON: [String: Any]
        switch preTokenizer {
        case .gpt2:
            preTokenizerJSON = byteLevel(true)
        case .smollm:
            preTokenizerJSON = ["type": "Sequence", "pretokenizers": [["type": "Digits", "individual_digits": true], byteLevel(true)]]
        case .llama3, .qwen2:
            let pattern = PreTokenizerKind.splitPatterns.first { $0.value == preTokenizer }!.key
            preTokenizerJSON = ["type": "Sequence", "pretokenizers": [
                ["type": "Split", "pattern": ["Regex": pattern], "behavior": "Isolated", "invert": false], byteLevel(false)]]
        }

        var postProcessor: Any = NSNull()
        if addBOS, let bos = token(bosId), let id = bosId {
            postProcessor = [
                "type": "TemplateProcessing",
                "single": [["SpecialToken": ["id": bos, "type_id": 0]], ["Sequence": ["id": "A", "type_id": 0]]],
                "pair": [["SpecialToken": ["id": bos, "type_id": 0]], ["Sequence": ["id": "A", "type_id": 0]],
                         ["SpecialToken": ["id": bos, "type_id": 1]], ["Sequence": ["id": "B", "type_id": 1]]],
                "special_tokens": [bos: ["id": bos, "ids": [Int(id)], "tokens": [bos]]],
            ] as [String: Any]
        }

        let tokenizerJSON: [String: Any] = [
            "version": "1.0",
            "truncation": NSNull(), "padding": NSNull(),
            "added_tokens": added,
            "normalizer": normalizeNFC ? ["type": "NFC"] as Any : NSNull(),
            "pre_tokenizer": preTokenizerJSON,
            "post_processor": postProcessor,
            "decoder": ["type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true],
            "model": [
                "type": "BPE", "dropout": NSNull(), "unk_token": token(unkId) as Any? ?? NSNull(),
                "continuing_subword_prefix": NSNull(), "end_of_word_suffix": NSNull(),
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignoreMerges,
                "vocab": vocab, "merges": merges,
            ] as [String: Any],
        ]

        var config: [String: Any] = [
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": addBOS, "add_eos_token": false,
            "clean_up_tokenization_spaces": false,
        ]
        for (key, id) in [("bos_token", bosId), ("eos_token", eosId), ("unk_token", unkId), ("pad_token", padId)] {
            config[key] = token(id) as Any? ?? NSNull()
        }
        if let chatTemplate { config["chat_template"] = chatTemplate }

        let options: JSONSerialization.WritingOptions = [.sortedKeys, .withoutEscapingSlashes]
        return [
            "tokenizer.json": try JSONSerialization.data(withJSONObject: tokenizerJSON, options: options),
            "tokenizer_config.json": try JSONSerialization.data(withJSONObject: config, options: options.union(.prettyPrinted)),
        ]
    }
}
