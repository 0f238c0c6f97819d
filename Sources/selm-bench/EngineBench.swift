// bench-engine: the generation engine on SmolLM2 — 32 concurrent sequences × (64-token prompt, 128
// new tokens): throughput, time to first token, inter-token latency; the same with a weight
// publication every second; batch-1 decode; where a decode step's time goes (BLAS vs the rest).
import Dispatch
import Engine
import Foundation
import Kernels
import Model
import ModelBundle
import Tokenizer

/// p-th percentile (0 ... 100) of `xs`, nearest rank.
func percentile(_ xs: [Double], _ p: Double) -> Double {
    guard !xs.isEmpty else { return .nan }
    let s = xs.sorted()
    return s[min(s.count - 1, max(0, Int((p / 100 * Double(s.count)).rounded(.up)) - 1))]
}

private func uptime() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

/// What the engine runs: weights and tokenizer (GGUF file or Hugging Face directory).
struct Loaded {
    var model: LlamaModel
    var tokenizer: Tokenizer

    init(path: String) throws {
        model = try LlamaModel.load(path: path)
        var isDir: ObjCBool = false
        _ = FileManager.default.fileExists(atPath: path, isDirectory: &isDir)
        tokenizer = isDir.boolValue ? try Tokenizer.load(huggingFaceDirectory: path) : try Tokenizer.load(gguf: GGUFFile(path: path))
    }
}

/// Figures of one 32 × 128 job.
struct JobFigures {
    var seconds = 0.0
    var tokens = 0
    var ttft: [Double] = []   // seconds, per request
    var itl: [Double] = []    // seconds, between consecutive tokens of a sample
    var publishes = 0
    var versionsSeen: Set<UInt64> = []
    var forwardsPerStep = 0.0
    var status: EngineStatus?
}

private final class Signal: @unchecked Sendable {
    let sem = DispatchSemaphore(value: 0)
    private let lock = NSLock()
    private var flag = false
    var done: Bool { lock.lock(); defer { lock.unlock() }; return flag }
    func finish() { lock.lock(); flag = true; lock.unlock() }
}

/// Runs `prompts` (each `maxTokens` new tokens, EOS ignored, streaming) on a fresh engine. All are
/// submitted before the engine thread starts (so they are admitted together, on version 1), except
/// that with `secondVersionFrom` the prompts from that index on are submitted after one step and
/// a publication, so they run on version 2 beside the others. With `publishEvery`, a second thread
/// copies the weights and publishes them as a new version at that interval (what the learner does).
func runJob(_ bundle: Loaded, prompts: [[Int32]], maxTokens: Int, params: SamplerSettings,
                    publishEvery: Double? = nil, copyEachTime: Bool = true, secondVersionFrom: Int? = nil) throws -> JobFigures {
    var cfg = EngineConfig()
    cfg.kvCacheMB = 512
    let engine = try GenerationEngine(model: bundle.model, tokenizer: bundle.tokenizer, config: cfg)
    let wake = Signal()
    engine.setWakeup { wake.sem.signal() }

    var fig = JobFigures()
    var submitted: [RequestID: UInt64] = [:]
    var last: [String: UInt64] = [:]
    func submit(_ ps: ArraySlice<[Int32]>) throws {
        for p in ps {
            var r = GenerationRequest(prompt: p, params: params, maxTokens: maxTokens)
            r.ignoreEOS = true
            r.stream = true
            submitted[try engine.submit(r)] = uptime()
        }
    }
    let t0 = uptime()
    if let k = secondVersionFrom {
        try submit(prompts[..<k])
        engine.step()
        try engine.publish(weights: bundle.model.weights.copy(), version: 2)
        try submit(prompts[k...])
    } else {
        try submit(prompts[...])
    }
    let before = engine.status()
    engine.start()
    let stopPublisher = Signal()
    let published = Locked(0)
    if let every = publishEvery {
        let model = bundle.model
        // Without copyEachTime one ready snapshot is published again and again under new versions
        // (nothing writes it), which isolates the engine's side of a publication.
        let ready = copyEachTime ? nil : model.weights.copy()
        Thread.detachNewThread {
            var version: UInt64 = 2
            while !stopPublisher.done {
                Thread.sleep(forTimeInterval: every)
                if stopPublisher.done { break }
                let w = ready ?? model.weights.copy()
                try? engine.publish(weights: w, version: version)
                version += 1
                published.mutate { $0 += 1 }
            }
        }
    }
    var done = 0
    var end = t0
    while done < prompts.count {
        _ = wake.sem.wait(timeout: .now() + 5)
        for e in engine.drainEvents() {
            switch e {
            case let .firstToken(id, time): fig.ttft.append(Double(time - submitted[id]!) * 1e-9)
            case let .chunk(c):
                let key = "\(c.id.raw)/\(c.promptIndex)/\(c.sampleIndex)"
                if let prev = last[key] { fig.itl.append(Double(c.time - prev) * 1e-9) }
                last[key] = c.time
                fig.tokens += c.tokens.count
            case let .sample(s): fig.versionsSeen.insert(s.version)
            case .done: done += 1; end = max(end, uptime())
            case let .error(_, err): throw err
            case .score, .published: break
            }
        }
    }
    stopPublisher.finish()
    fig.seconds = Double(end - t0) * 1e-9
    fig.publishes = published.value
    let after = engine.status()
    fig.status = after
    fig.forwardsPerStep = Double(after.forwards - before.forwards) / Double(max(1, after.steps - before.steps))
    engine.stop()
    return fig
}

private final class Locked<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var v: T
    init(_ v: T) { self.v = v }
    var value: T { lock.lock(); defer { lock.unlock() }; return v }
    func mutate(_ f: (inout T) -> Void) { lock.lock(); f(&v); lock.unlock() }
}

/// Seconds of one forward's matrix products for `T` tokens, replayed through the same kernel
/// (`matmul_forward`) on the model's own weights: the BLAS part of a step.
private func blasSecondsPerForward(_ model: LlamaModel, T: Int, reps: Int = 20) -> Double {
    let c = model.config, w = model.weights
    let width = max(c.dim, c.hiddenDim, c.qDim)
    let inp = [Float](repeating: 0.01, count: T * width)
    var out = [Float](repeating: 0, count: T * max(c.vocabSize, width))
    func run() {
        for l in w.layers {
            matmul_forward(&out, inp, l.wq, Int32(T), Int32(c.dim), Int32(c.qDim), 0)
            matmul_forward(&out, inp, l.wk, Int32(T), Int32(c.dim), Int32(c.kvDim), 0)
            matmul_forward(&out, inp, l.wv, Int32(T), Int32(c.dim), Int32(c.kvDim), 0)
            matmul_forward(&out, inp, l.wo, Int32(T), Int32(c.qDim), Int32(c.dim), 1)
            matmul_forward(&out, inp, l.wGate, Int32(T), Int32(c.dim), Int32(c.hiddenDim), 0)
            matmul_forward(&out, inp, l.wUp, Int32(T), Int32(c.dim), Int32(c.hiddenDim), 0)
            matmul_forward(&out, inp, l.wDown, Int32(T), Int32(c.hiddenDim), Int32(c.dim), 1)
        }
        matmul_forward(&out, inp, w.lmHead, Int32(T), Int32(c.dim), Int32(c.vocabSize), 0)
    }
    run()
    let t0 = now()
    for _ in 0..<reps { run() }
    return (now() - t0) / Double(reps)
}

/// Seconds the calling thread spent inside sgemm/sgemv (counted by the Kernels module).
private let threadBLASSeconds: (@convention(c) () -> Double)? = kernels_thread_blas_seconds

/// Per-step figures of steady decoding at batch `prompts.count`, driven with `step()` on this
/// thread: wall, forward, KV store, sampling, and BLAS (measured inside the forward's BLAS calls
/// when the Kernels module counts them, else nil).
private func decodeBreakdown(_ bundle: Loaded, prompts: [[Int32]], params: SamplerSettings, steps: Int)
    throws -> (step: Double, forward: Double, kv: Double, sample: Double, blas: Double?, tokensPerSecond: Double) {
    let engine = try GenerationEngine(model: bundle.model, tokenizer: bundle.tokenizer)
    for p in prompts {
        var r = GenerationRequest(prompt: p, params: params, maxTokens: steps + 8)
        r.ignoreEOS = true
        _ = try engine.submit(r)
    }
    // Prefill until every sequence decodes one token per step.
    while true {
        let r = engine.step()
        _ = engine.drainEvents()
        if r.tokens == prompts.count && r.generated == prompts.count { break }
    }
    let s0 = engine.status()
    let b0 = threadBLASSeconds?() ?? 0
    let t0 = now()
    for _ in 0..<steps { engine.step(); _ = engine.drainEvents() }
    let wall = now() - t0
    let b1 = threadBLASSeconds?() ?? 0
    let s1 = engine.status()
    let n = Double(steps)
    engine.stop()
    return (wall / n, (s1.forwardSeconds - s0.forwardSeconds) / n, (s1.kvSeconds - s0.kvSeconds) / n,
            (s1.sampleSeconds - s0.sampleSeconds) / n, threadBLASSeconds == nil ? nil : (b1 - b0) / n,
            Double(steps * prompts.count) / wall)
}

/// `count` distinct prompts of `length` tokens of English text (sentences from a small list, rotated):
/// the prompts of bench-engine and bench-vs-llamacpp.
func benchPrompts(_ tokenizer: Tokenizer, count: Int, length: Int) -> [[Int32]] {
    let sentences = [
        "The old lighthouse keeper climbed the spiral stairs every evening to light the lamp.",
        "Photosynthesis turns sunlight, water and carbon dioxide into sugar and oxygen.",
        "In 1969 two astronauts walked on the Moon while a third orbited above them.",
        "A good bread needs flour, water, salt, yeast and a lot of patience.",
        "The river carved a deep canyon through the red sandstone over millions of years.",
        "Write a short poem about the first snow of winter falling on a quiet village.",
        "Explain why the sky looks blue during the day and red at sunset.",
        "Our team meets on Mondays to plan the week and on Fridays to review it.",
    ]
    return (0..<count).map { i in
        var ids: [Int32] = []
        var j = i
        while ids.count < length {
            ids += tokenizer.encode("\(i + 1). " + sentences[j % sentences.count] + " ")
            j += 3
        }
        return Array(ids.prefix(length))
    }
}

func benchEngine(_ modelPath: String) throws {
    header("bench-engine")
    let gflops = sgemmGFLOPS()
    let bundle = try Loaded(path: modelPath)
    let model = bundle.model
    let prompts = benchPrompts(bundle.tokenizer, count: 32, length: 64)
    var params = SamplerSettings()
    params.temperature = 1.0
    params.topP = 0.95
    params.seed = 42
    print(String(format: "model: %@, %.0f M parameters; sampling: temperature 1, top-p 0.95, EOS ignored",
                 (modelPath as NSString).lastPathComponent, Double(model.parameterCount) / 1e6))

    func report(_ name: String, _ f: JobFigures) {
        print(String(format: "%@: %.1f tokens/s (%d tokens in %.2f s); TTFT p50 %.0f ms p99 %.0f ms; inter-token p50 %.0f ms p99 %.0f ms max %.0f ms",
                     name, Double(f.tokens) / f.seconds, f.tokens, f.seconds, 1000 * percentile(f.ttft, 50),
                     1000 * percentile(f.ttft, 99), 1000 * percentile(f.itl, 50), 1000 * percentile(f.itl, 99),
                     1000 * (f.itl.max() ?? 0)))
    }

    _ = try runJob(bundle, prompts: Array(prompts.prefix(4)), maxTokens: 8, params: params)  // warm-up
    let plain = try runJob(bundle, prompts: prompts, maxTokens: 128, params: params)
    report("32 × (64 + 128)", plain)
    let pub = try runJob(bundle, prompts: prompts, maxTokens: 128, params: params, publishEvery: 1.0)
    report("  same, publish every 1 s", pub)
    print(String(format: "    %d publications (each a %.0f MB copy of the weights made on the publishing thread, as the learner must); samples on version %@; live at the end %@",
                 pub.publishes, Double(model.parameterCount * 4) / 1_048_576,
                 pub.versionsSeen.sorted().map(String.init).joined(separator: ","),
                 (pub.status?.liveVersions ?? []).map(String.init).joined(separator: ",")))
    print(String(format: "    added stall: inter-token p50 %+.1f ms, p99 %+.1f ms, max %+.1f ms; throughput %+.1f%%",
                 1000 * (percentile(pub.itl, 50) - percentile(plain.itl, 50)),
                 1000 * (percentile(pub.itl, 99) - percentile(plain.itl, 99)),
                 1000 * ((pub.itl.max() ?? 0) - (plain.itl.max() ?? 0)),
                 100 * (Double(pub.tokens) / pub.seconds / (Double(plain.tokens) / plain.seconds) - 1)))
    let swapOnly = try runJob(bundle, prompts: prompts, maxTokens: 128, params: params, publishEvery: 1.0, copyEachTime: false)
    report("  same, publish every 1 s of a ready snapshot (no copy: the swap alone)", swapOnly)
    print(String(format: "    %d publications; added stall: inter-token p50 %+.1f ms, p99 %+.1f ms, max %+.1f ms; throughput %+.1f%%",
                 swapOnly.publishes, 1000 * (percentile(swapOnly.itl, 50) - percentile(plain.itl, 50)),
                 1000 * (percentile(swapOnly.itl, 99) - percentile(plain.itl, 99)),
                 1000 * ((swapOnly.itl.max() ?? 0) - (plain.itl.max() ?? 0)),
                 100 * (Double(swapOnly.tokens) / swapOnly.seconds / (Double(plain.tokens) / plain.seconds) - 1)))
    let mixed = try runJob(bundle, prompts: prompts, maxTokens: 128, params: params, secondVersionFrom: 16)
    report("  16 on version 1 + 16 on version 2", mixed)
    print(String(format: "    %.2f forwards per step (one per live version with work): each version's batch is a separate pass over its weights",
                 mixed.forwardsPerStep))

    // Batch 1: one 64-token prompt, 128 new tokens.
    let one = try runJob(bundle, prompts: [prompts[0]], maxTokens: 128, params: params)
    print(String(format: "batch 1 decode: %.1f tokens/s (inter-token p50 %.1f ms); TTFT %.0f ms",
                 Double(one.itl.count) / one.itl.reduce(0, +), 1000 * percentile(one.itl, 50), 1000 * percentile(one.ttft, 50)))

    // Where a steady 32-sequence decode step goes.
    let b = try decodeBreakdown(bundle, prompts: prompts, params: params, steps: 48)
    let replay = blasSecondsPerForward(model, T: 32)
    let blas = b.blas ?? replay
    let flops = 2.0 * Double(model.parameterCount) * 32
    print(String(format: "decode step at batch 32: %.1f ms (%.0f tokens/s) = forward %.1f ms [BLAS %.1f ms %@, KV store %.2f ms, rest of the forward %.1f ms] + sampling/log-probs %.1f ms + text/events/scheduling %.1f ms",
                 1000 * b.step, b.tokensPerSecond, 1000 * b.forward, 1000 * blas,
                 b.blas == nil ? "(replayed: Kernels does not count BLAS time)" : "(measured in the BLAS calls)",
                 1000 * b.kv, 1000 * (b.forward - blas - b.kv), 1000 * b.sample, 1000 * (b.step - b.forward - b.sample)))
    print(String(format: "share of step time outside BLAS: %.0f%%; the step's BLAS runs at %.1f GFLOP/s (same products back to back: %.1f ms, %.1f GFLOP/s; sgemm 1024³: %.1f GFLOP/s)",
                 100 * max(0, b.step - blas) / b.step, flops / blas / 1e9, 1000 * replay, flops / replay / 1e9, gflops))
    print("for scale on this machine: llama.cpp (Q4_1) decodes 83 tokens/s at batch 1; HF transformers generate reaches 58 tokens/s on this 32 × 128 job")
    print(String(format: "peak RSS %.0f MB", peakRSSMB()))
}
