// job: the two jobs of bench-vs-llamacpp on the engine in-process, as one JSON line — batch-1 decode
// (one 64-token prompt, 128 new tokens) and B × (64-token prompt + 128 new tokens) submitted at once,
// the shapes llama.cpp's `llama-batched-bench -npp 64 -ntg 128 -npl 1,B` runs. scripts/bench_vs_llamacpp.py
// runs it alternately with llama.cpp and prints the ratios. --engine-precision f32|bf16|q8|q4 (default:
// the server's) chooses the engine's precision.
import Engine
import Foundation
import Model

func benchJob(_ modelPath: String) throws {
    let batch = Int(option("--batch", "32")) ?? 32
    let promptLength = Int(option("--prompt", "64")) ?? 64
    let newTokens = Int(option("--new", "128")) ?? 128
    let bundle = try Loaded(path: modelPath)  // --engine-precision, as selm serve's (same default)
    let prompts = benchPrompts(bundle.tokenizer, count: batch, length: promptLength)
    var params = SamplerSettings()
    params.temperature = 1.0
    params.topP = 0.95
    params.seed = 42
    _ = try runJob(bundle, prompts: Array(prompts.prefix(2)), maxTokens: 4, params: params)  // warm-up
    // `--no-batch-1`: the B-sequence job only (b1 figures 0).
    let one = CommandLine.arguments.contains("--no-batch-1") ? JobFigures(ttft: [0], itl: [1])
        : try runJob(bundle, prompts: [prompts[0]], maxTokens: newTokens, params: params)
    // `--decoding-step-tokens N`: the chunked-prefill budget (EngineConfig.decodingStepTokens) to try.
    var config = EngineConfig()
    config.decodingStepTokens = Int(option("--decoding-step-tokens", "\(config.decodingStepTokens)")) ?? config.decodingStepTokens
    let cpu0 = processCPUSeconds()
    // `--only-batch-1`: the batch-1 decode only (job figures 0).
    let many = CommandLine.arguments.contains("--only-batch-1") ? JobFigures(ttft: [0], itl: [1])
        : try runJob(bundle, prompts: prompts, maxTokens: newTokens, params: params, config: config)
    let jobCPU = processCPUSeconds() - cpu0
    let figures: [String: Double] = [
        "batch": Double(batch), "prompt": Double(promptLength), "new": Double(newTokens),
        // Decode speed at batch 1: tokens after the first over the time between them (as llama.cpp's S_TG).
        "b1_decode_tps": Double(one.itl.count) / one.itl.reduce(0, +),
        "b1_ttft_ms": 1000 * percentile(one.ttft, 50),
        "job_seconds": many.seconds, "job_cpu_seconds": jobCPU, "job_tokens": Double(many.tokens),
        "job_tps": many.seconds > 0 ? Double(many.tokens) / many.seconds : 0,
        "ttft_p50_ms": 1000 * percentile(many.ttft, 50), "ttft_p99_ms": 1000 * percentile(many.ttft, 99),
        "itl_p50_ms": 1000 * percentile(many.itl, 50), "itl_p99_ms": 1000 * percentile(many.itl, 99),
        "peak_rss_mb": peakRSSMB(), "decoding_step_tokens": Double(config.decodingStepTokens),
        "snapshot_mb": Double(bundle.model.weightBytes) / 1_048_576,
    ]
    let data = try JSONSerialization.data(withJSONObject: figures, options: [.sortedKeys])
    print(String(decoding: data, as: UTF8.self))
}

/// User + system CPU seconds of this process so far (all threads): the work a job did, which a
/// loaded machine inflates far less than its wall time.
func processCPUSeconds() -> Double {
    var u = rusage()
    getrusage(RUSAGE_SELF.rawValue, &u)
    return Double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + Double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-6
}
