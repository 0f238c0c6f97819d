// job: the two jobs of bench-vs-llamacpp on the engine in-process, as one JSON line — batch-1 decode
// (one 64-token prompt, 128 new tokens) and B × (64-token prompt + 128 new tokens) submitted at once,
// the shapes llama.cpp's `llama-batched-bench -npp 64 -ntg 128 -npl 1,B` runs. scripts/bench_vs_llamacpp.py
// runs it alternately with llama.cpp and prints the ratios. --engine-precision f32|bf16|q8 (default:
// the server's) chooses the engine's precision.
import Engine
import Foundation
import Model

func benchJob(_ modelPath: String) throws {
    let batch = Int(option("--batch", "32")) ?? 32
    let promptLength = Int(option("--prompt", "64")) ?? 64
    let newTokens = Int(option("--new", "128")) ?? 128
    var bundle = try Loaded(path: modelPath)
    // The engine's precision, as `selm serve --engine-precision` (same default).
    let precisionName = option("--engine-precision", EnginePrecision.servingDefault.rawValue)
    guard let precision = EnginePrecision(rawValue: precisionName) else {
        print("error: --engine-precision: expected f32, bf16 or q8"); exit(2)
    }
    bundle.model = try LlamaModel.inference(from: bundle.model.weights, precision: precision)
    let prompts = benchPrompts(bundle.tokenizer, count: batch, length: promptLength)
    var params = SamplerSettings()
    params.temperature = 1.0
    params.topP = 0.95
    params.seed = 42
    _ = try runJob(bundle, prompts: Array(prompts.prefix(2)), maxTokens: 4, params: params)  // warm-up
    let one = try runJob(bundle, prompts: [prompts[0]], maxTokens: newTokens, params: params)
    let many = try runJob(bundle, prompts: prompts, maxTokens: newTokens, params: params)
    let figures: [String: Double] = [
        "batch": Double(batch), "prompt": Double(promptLength), "new": Double(newTokens),
        // Decode speed at batch 1: tokens after the first over the time between them (as llama.cpp's S_TG).
        "b1_decode_tps": Double(one.itl.count) / one.itl.reduce(0, +),
        "b1_ttft_ms": 1000 * percentile(one.ttft, 50),
        "job_seconds": many.seconds, "job_tokens": Double(many.tokens),
        "job_tps": Double(many.tokens) / many.seconds,
        "ttft_p50_ms": 1000 * percentile(many.ttft, 50), "ttft_p99_ms": 1000 * percentile(many.ttft, 99),
        "itl_p50_ms": 1000 * percentile(many.itl, 50), "itl_p99_ms": 1000 * percentile(many.itl, 99),
        "peak_rss_mb": peakRSSMB(),
        "snapshot_mb": Double(bundle.model.weightBytes) / 1_048_576,
    ]
    let data = try JSONSerialization.data(withJSONObject: figures, options: [.sortedKeys])
    print(String(decoding: data, as: UTF8.self))
}
