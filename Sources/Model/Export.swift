import DurableFile
import Foundation

extension LlamaConfig {
    /// transformers' `config.json` for this blueprint (LlamaForCausalLM, `dtype` float32 or bfloat16).
    public func huggingFaceConfigJSON(bosTokenId: Int?, eosTokenId: Int?, dtype: CheckpointDType = .f32) -> [String: Any] {
        var d: [String: Any] = [
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": dim, "intermediate_size": hiddenDim, "num_hidden_layers": nLayers,
            "num_attention_heads": nHeads, "num_key_value_heads": nKVHeads, "head_dim": headDim,
            "vocab_size": vocabSize, "max_position_embeddings": contextLength,
            "rope_theta": Double(ropeTheta), "rms_norm_eps": Double(rmsEps),
            "tie_word_embeddings": tiedEmbeddings, "hidden_act": "silu",
            "attention_bias": false, "mlp_bias": false, "torch_dtype": dtype.torchName, "use_cache": true,
        ]
        if let b = bosTokenId { d["bos_token_id"] = b }
        if let e = eosTokenId { d["eos_token_id"] = e }
        return d
    }

    /// GGUF `llama.*` metadata for this blueprint.
    public var ggufMetadata: [(String, GGUFFile.Value)] {
        [
            ("general.architecture", .string("llama")),
            ("llama.block_count", .uint(UInt64(nLayers))),
            ("llama.context_length", .uint(UInt64(contextLength))),
            ("llama.embedding_length", .uint(UInt64(dim))),
            ("llama.feed_forward_length", .uint(UInt64(hiddenDim))),
            ("llama.attention.head_count", .uint(UInt64(nHeads))),
            ("llama.attention.head_count_kv", .uint(UInt64(nKVHeads))),
            ("llama.attention.key_length", .uint(UInt64(headDim))),
            ("llama.attention.value_length", .uint(UInt64(headDim))),
            ("llama.rope.dimension_count", .uint(UInt64(headDim))),
            ("llama.rope.freq_base", .float(Double(ropeTheta))),
            ("llama.attention.layer_norm_rms_epsilon", .float(Double(rmsEps))),
            ("llama.vocab_size", .uint(UInt64(vocabSize))),
            ("general.file_type", .uint(0)),  // all F32
        ]
    }
}

extension ParameterSet {
    /// (HF name, shape, pointer) of every tensor, in layout order — what the safetensors writer takes.
    public var namedTensors: [(name: String, shape: [Int], data: UnsafePointer<Float>)] {
        layout.entries.map { ($0.name, $0.shape, UnsafePointer(data + $0.offset)) }
    }
}

extension LlamaModel {
    /// Writes a Hugging Face directory transformers loads: `config.json` and `model.safetensors`
    /// (`dtype`: F32, or BF16 rounded by `BF16Split`; HF tensor names; no `lm_head.weight` when
    /// tied). Each file is written durably.
    public func saveHuggingFace(directory: String, bosTokenId: Int?, eosTokenId: Int?, extraFiles: [String: Data] = [:],
                                dtype: CheckpointDType = .f32) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let encoding: TensorEncoding = dtype == .f32 ? .f32 : .bf16
        try writeSafetensors(path: directory + "/model.safetensors", encoded: weights.namedTensors.map { ($0.name, $0.shape, $0.data, encoding) },
                             metadata: ["format": "pt"])
        let json = try JSONSerialization.data(withJSONObject: config.huggingFaceConfigJSON(bosTokenId: bosTokenId, eosTokenId: eosTokenId, dtype: dtype),
                                              options: [.prettyPrinted, .sortedKeys])
        try modelIO {
            try writeDurably(path: directory + "/config.json", data: json)
            for (name, data) in extraFiles { try writeDurably(path: directory + "/" + name, data: data) }
        }
    }

    /// Writes a GGUF v3 file with F32 tensors under llama.cpp's names (Q and K rows permuted back to
    /// llama.cpp's RoPE layout) and `metadata` (e.g. the source's `tokenizer.*` keys) after the
    /// model's own `llama.*` keys. With `dtype` `.bf16` the matrices are BF16 (the same values as a
    /// BF16 `model.safetensors`) and the 1-D norm weights stay F32, as llama.cpp's converter does
    /// (`general.file_type` 32, MOSTLY_BF16).
    public func saveGGUF(path: String, name: String, metadata: [(String, GGUFFile.Value)], dtype: CheckpointDType = .f32) throws {
        var md = config.ggufMetadata
        if dtype == .bf16, let i = md.firstIndex(where: { $0.0 == "general.file_type" }) { md[i].1 = .uint(32) }
        md.append(("general.name", .string(name)))
        let own = Set(md.map { $0.0 })
        md += metadata.filter { !own.contains($0.0) && $0.0 != "general.alignment" }
        // Permuted copies of Q and K (the weights themselves stay in Hugging Face order).
        var owned: [UnsafeMutablePointer<Float>] = []
        defer { owned.forEach { $0.deallocate() } }
        var tensors: [GGUFWriter.Tensor] = []
        for e in weights.layout.entries {
            var src = UnsafePointer(weights.data + e.offset)
            let heads = e.name.hasSuffix("q_proj.weight") ? config.nHeads : e.name.hasSuffix("k_proj.weight") ? config.nKVHeads : 0
            if heads > 0 {
                let tmp = UnsafeMutablePointer<Float>.allocate(capacity: e.count)
                tmp.update(from: src, count: e.count)
                RopePermutation.toGGUF(tmp, heads: heads, headDim: config.headDim, cols: config.dim)
                owned.append(tmp)
                src = UnsafePointer(tmp)
            }
            tensors.append(.init(name: LlamaConfig.ggufName(e.name), dims: e.shape.reversed(), data: src,
                                 type: dtype == .bf16 && e.shape.count > 1 ? .bf16 : .f32))
        }
        try GGUFWriter.write(path: path, metadata: md, tensors: tensors)
    }
}

/// Runs `body`, reporting a failed durable write (`DurableFileError`) as `ModelError.io` naming the
/// file, as every writer of this module documents.
func modelIO<T>(_ body: () throws -> T) throws -> T {
    do { return try body() } catch let e as DurableFileError { throw ModelError.io(file: e.path, reason: e.reason) }
}
