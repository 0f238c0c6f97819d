import Foundation

extension LlamaConfig {
    /// Reads the blueprint from GGUF metadata (`llama.*` keys). Throws for any architecture but Llama.
    public init(gguf g: GGUFFile) throws {
        let arch = try g.string("general.architecture")
        guard arch == "llama" else { throw ModelError.unsupportedArchitecture(file: g.path, architecture: arch) }
        let nHeads = try g.int("llama.attention.head_count")
        var vocab = g.metadata["llama.vocab_size"]?.int
        if vocab == nil, let toks = g.metadata["tokenizer.ggml.tokens"]?.array { vocab = toks.count }
        if vocab == nil, let emb = g.tensor("token_embd.weight"), emb.dims.count == 2 { vocab = emb.dims[1] }
        guard let vocabSize = vocab else { throw ModelError.missingField(file: g.path, field: "llama.vocab_size") }
        if let t = g.metadata["llama.rope.scaling.type"]?.string, t != "none" {
            throw ModelError.badField(file: g.path, field: "llama.rope.scaling.type", reason: "rope scaling '\(t)' is not supported")
        }
        let dim = try g.int("llama.embedding_length")
        self.init(
            dim: dim,
            hiddenDim: try g.int("llama.feed_forward_length"),
            nLayers: try g.int("llama.block_count"),
            nHeads: nHeads,
            nKVHeads: try g.optionalInt("llama.attention.head_count_kv") ?? nHeads,
            vocabSize: vocabSize,
            contextLength: try g.int("llama.context_length"),
            ropeTheta: Float(try g.optionalDouble("llama.rope.freq_base") ?? 10000),
            rmsEps: Float(try g.double("llama.attention.layer_norm_rms_epsilon")),
            tiedEmbeddings: g.tensor("output.weight") == nil,
            headDim: try g.optionalInt("llama.attention.key_length"))
        try validate(file: g.path)
    }

    /// Reads the blueprint from a Hugging Face `config.json`.
    public init(huggingFaceConfig url: URL) throws {
        let file = url.path
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw ModelError.io(file: file, reason: "cannot read: \(error.localizedDescription)")
        }
        guard let obj = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw ModelError.corrupt(file: file, what: "not a JSON object")
        }
        let modelType = obj["model_type"] as? String ?? "?"
        let archs = obj["architectures"] as? [String] ?? []
        guard modelType == "llama" || archs.contains("LlamaForCausalLM") else {
            throw ModelError.unsupportedArchitecture(file: file, architecture: archs.first ?? modelType)
        }
        func int(_ k: String, default d: Int? = nil) throws -> Int {
            guard let v = obj[k], !(v is NSNull) else {
                if let d { return d }
                throw ModelError.missingField(file: file, field: k)
            }
            guard let i = jsonInteger(v) else { throw ModelError.badField(file: file, field: k, reason: "expected an integer") }
            return i
        }
        func double(_ k: String, default d: Double) throws -> Double {
            guard let v = obj[k], !(v is NSNull) else { return d }
            guard let n = v as? NSNumber, !isJSONBoolean(v) else { throw ModelError.badField(file: file, field: k, reason: "expected a number") }
            return n.doubleValue
        }
        for flag in ["attention_bias", "mlp_bias"] where obj[flag].map({ isJSONBoolean($0) && ($0 as? Bool) == true }) == true {
            throw ModelError.badField(file: file, field: flag, reason: "biases are not supported")
        }
        if let rs = obj["rope_scaling"], !(rs is NSNull) {
            throw ModelError.badField(file: file, field: "rope_scaling", reason: "rope scaling is not supported")
        }
        // transformers ≥ 5 writes `rope_parameters: {rope_theta, rope_type}` instead of `rope_theta`.
        var ropeTheta = try double("rope_theta", default: 10000)
        if let rp = obj["rope_parameters"], !(rp is NSNull) {
            guard let d = rp as? [String: Any] else { throw ModelError.badField(file: file, field: "rope_parameters", reason: "expected an object") }
            if let type = d["rope_type"] as? String, type != "default" {
                throw ModelError.badField(file: file, field: "rope_parameters.rope_type", reason: "rope type '\(type)' is not supported")
            }
            if let t = d["rope_theta"] {
                guard let n = t as? NSNumber else { throw ModelError.badField(file: file, field: "rope_parameters.rope_theta", reason: "expected a number") }
                ropeTheta = n.doubleValue
            }
        }
        if let act = obj["hidden_act"] as? String, act != "silu" {
            throw ModelError.badField(file: file, field: "hidden_act", reason: "only silu is supported, got '\(act)'")
        }
        let nHeads = try int("num_attention_heads")
        var headDim: Int? = nil
        if let v = obj["head_dim"], !(v is NSNull) { headDim = try int("head_dim") }
        let tied: Bool
        if let v = obj["tie_word_embeddings"] {
            guard isJSONBoolean(v), let b = v as? Bool else { throw ModelError.badField(file: file, field: "tie_word_embeddings", reason: "expected true or false") }
            tied = b
        } else { tied = false }  // transformers' LlamaConfig default
        self.init(
            dim: try int("hidden_size"), hiddenDim: try int("intermediate_size"),
            nLayers: try int("num_hidden_layers"), nHeads: nHeads,
            nKVHeads: try int("num_key_value_heads", default: nHeads), vocabSize: try int("vocab_size"),
            contextLength: try int("max_position_embeddings", default: 2048),
            ropeTheta: Float(ropeTheta),
            rmsEps: Float(try double("rms_norm_eps", default: 1e-6)),
            tiedEmbeddings: tied,
            headDim: headDim)
        try validate(file: file)
    }

    /// GGUF tensor name for a Hugging Face parameter name.
    static func ggufName(_ hf: String) -> String {
        if hf == "model.embed_tokens.weight" { return "token_embd.weight" }
        if hf == "model.norm.weight" { return "output_norm.weight" }
        if hf == "lm_head.weight" { return "output.weight" }
        let parts = hf.split(separator: ".")  // model.layers.N.<module>.<proj>.weight
        let l = parts[2]
        let rest = parts[3...].joined(separator: ".")
        let map = [
            "input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
            "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
            "self_attn.o_proj.weight": "attn_output.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
            "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
            "mlp.down_proj.weight": "ffn_down.weight",
        ]
        return "blk.\(l).\(map[rest]!)"
    }
}

/// GGUF stores each head's Q and K rows permuted for llama.cpp's interleaved RoPE: within a head,
/// GGUF row 2i+j holds Hugging Face row j*(hd/2)+i. These move rows between the two orders.
enum RopePermutation {
    /// GGUF order → Hugging Face order, in place on a (heads*hd, cols) matrix.
    static func toHuggingFace(_ w: UnsafeMutablePointer<Float>, heads: Int, headDim hd: Int, cols: Int) {
        permute(w, heads: heads, hd: hd, cols: cols) { i, j in (src: 2 * i + j, dst: j * (hd / 2) + i) }
    }
    /// Hugging Face order → GGUF order.
    static func toGGUF(_ w: UnsafeMutablePointer<Float>, heads: Int, headDim hd: Int, cols: Int) {
        permute(w, heads: heads, hd: hd, cols: cols) { i, j in (src: j * (hd / 2) + i, dst: 2 * i + j) }
    }
    private static func permute(_ w: UnsafeMutablePointer<Float>, heads: Int, hd: Int, cols: Int,
                                _ map: (Int, Int) -> (src: Int, dst: Int)) {
        let tmp = UnsafeMutablePointer<Float>.allocate(capacity: hd * cols)
        defer { tmp.deallocate() }
        for h in 0..<heads {
            let head = w + h * hd * cols
            tmp.update(from: head, count: hd * cols)
            for i in 0..<hd / 2 { for j in 0..<2 {
                let m = map(i, j)
                (head + m.dst * cols).update(from: tmp + m.src * cols, count: cols)
            } }
        }
    }
}

extension LlamaModel {
    /// Loads a GGUF file, dequantising every tensor to f32 (two threads) and undoing llama.cpp's
    /// Q/K row permutation so the weights are exactly transformers' for the same file.
    public static func load(gguf g: GGUFFile) throws -> LlamaModel {
        let config = try LlamaConfig(gguf: g)
        let params = ParameterSet(config: config)
        var jobs: [(ParameterLayout.Entry, GGUFFile.TensorInfo)] = []
        for e in params.layout.entries {
            let name = LlamaConfig.ggufName(e.name)
            guard let info = g.tensor(name) else { throw ModelError.missingTensor(file: g.path, tensor: name) }
            let expected = Array(e.shape.reversed())  // GGUF lists the contiguous dimension first
            var found = info.dims
            while found.count > expected.count, found.last == 1 { found.removeLast() }
            guard found == expected else {
                throw ModelError.badTensorShape(file: g.path, tensor: name, expected: expected, found: info.dims)
            }
            guard info.type.isSupported else {
                throw ModelError.unsupportedTensorType(file: g.path, tensor: name, type: info.type == .unknown ? "ggml type \(info.rawType)" : info.type.description)
            }
            jobs.append((e, info))
        }
        let errors = ErrorBox()
        let work = jobs
        DispatchQueue.concurrentPerform(iterations: 2) { worker in
            for (idx, job) in work.enumerated() where idx % 2 == worker {
                do {
                    let (e, info) = job
                    let dst = params.data + e.offset
                    try g.dequantize(info, into: dst)
                    if e.name.hasSuffix("q_proj.weight") {
                        RopePermutation.toHuggingFace(dst, heads: config.nHeads, headDim: config.headDim, cols: config.dim)
                    } else if e.name.hasSuffix("k_proj.weight") {
                        RopePermutation.toHuggingFace(dst, heads: config.nKVHeads, headDim: config.headDim, cols: config.dim)
                    }
                } catch { errors.set(error) }
            }
        }
        if let e = errors.error { throw e }
        return LlamaModel(weights: params)
    }
}

/// First error raised by concurrent workers.
final class ErrorBox: @unchecked Sendable {
    private let lock = NSLock()
    private(set) var error: Error?
    func set(_ e: Error) { lock.lock(); if error == nil { error = e }; lock.unlock() }
}

extension LlamaModel {
    /// Loads a Hugging Face model directory: `config.json` plus `model.safetensors` or a sharded
    /// index; F32, F16 and BF16 tensors. With `tie_word_embeddings` the output head is the embedding
    /// (an `lm_head.weight` in the files is then ignored, as transformers does).
    public static func load(huggingFaceDirectory dir: String) throws -> LlamaModel {
        let config = try LlamaConfig(huggingFaceConfig: URL(fileURLWithPath: dir).appendingPathComponent("config.json"))
        let st = try SafetensorsDirectory(path: dir)
        let params = ParameterSet(config: config)
        var jobs: [(ParameterLayout.Entry, SafetensorsDirectory.Entry)] = []
        for e in params.layout.entries {
            guard let entry = st.entries[e.name] else { throw ModelError.missingTensor(file: dir, tensor: e.name) }
            guard entry.info.shape == e.shape else {
                throw ModelError.badTensorShape(file: entry.file.path, tensor: e.name, expected: e.shape, found: entry.info.shape)
            }
            jobs.append((e, entry))
        }
        let errors = ErrorBox()
        let work = jobs
        DispatchQueue.concurrentPerform(iterations: 2) { worker in
            for (idx, job) in work.enumerated() where idx % 2 == worker {
                do { try job.1.file.read(job.1.info, into: params.data + job.0.offset) } catch { errors.set(error) }
            }
        }
        if let e = errors.error { throw e }
        return LlamaModel(weights: params)
    }

    /// Loads a `.gguf` file or a Hugging Face directory, whichever `path` is.
    public static func load(path: String) throws -> LlamaModel {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw ModelError.io(file: path, reason: "no such file or directory")
        }
        return isDir.boolValue ? try load(huggingFaceDirectory: path) : try load(gguf: GGUFFile(path: path))
    }
}
