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

/// What the engine runs: weights and tokenizer (GGUF file or Hugging Face directory). `source` is
/// the f32 model as loaded (what a learner would publish from); `model` is what the engine serves,
/// in the precision of `--engine-precision` (default: `selm serve`'s).
struct Loaded {
    var source: LlamaModel
    var model: LlamaModel
    var tokenizer: Tokenizer
    var precision: EnginePrecision

    init(path: String) throws {
        source = try LlamaModel.load(path: path)
        var isDir: ObjCBool = false
        _ = FileManager.default.fileExists(atPath: path, isDirectory: &isDir)
        tokenizer = isDir.boolValue ? try Tokenizer.load(huggingFaceDirectory: path) : try Tokenizer.load(gguf: GGUFFile(path: path))
        let name = option("--engine-precision", EnginePrecision.servingDefault.rawValue)
        guard let p = EnginePrecision(rawValue: name) else {
            print("error: --engine-precision: expected f32, bf16, q8 or q4"); exit(2)
        }
        precision = p
        model = p == .f32 ? source : try LlamaModel.inference(from: source.weights, precision: p)
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
                    publishEvery: Double? = nil, secondVersionFrom: Int? = nil,
                    config: EngineConfig = EngineConfig()) throws -> JobFigures {
    var cfg = config
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
        try engine.publish(weights: bundle.source.weights, version: 2)
        try submit(prompts[k...])
    } else {
        try submit(prompts[...])
    }
    let before = engine.status()
    engine.start()
    let stopPublisher = Signal()
    let published = Locked(0)
    if let every = publishEvery {
        // What the learner does: hand its f32 weights over; the engine packs (or, for f32, copies)
        // them on this thread inside publish.
        let source = bundle.source.weights
        Thread.detachNewThread {
            var version: UInt64 = 2
            while !stopPublisher.done {
                Thread.sleep(forTimeInterval: every)
                if stopPublisher.done { break }
                try? engine.publish(weights: source, version: version)
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

/// One linear layer of the forward: y (T×n) = x (T×k) · Wᵀ, W the model's f32 (n, k) matrix.
struct LinearLayer {
    var n: Int
    var k: Int
    var weight: UnsafePointer<Float>
    /// The output head: it runs only for the rows whose logits are wanted.
    var isHead: Bool
}

/// The forward's linear layers in the order it runs them (7 per layer, then the output head).
func forwardLinears(_ model: LlamaModel) -> [LinearLayer] {
    let c = model.config, w = model.weights
    var out: [LinearLayer] = []
    for l in w.layers {
        for (m, n, k) in [(l.wq, c.qDim, c.dim), (l.wk, c.kvDim, c.dim), (l.wv, c.kvDim, c.dim), (l.wo, c.dim, c.qDim),
                          (l.wGate, c.hiddenDim, c.dim), (l.wUp, c.hiddenDim, c.dim), (l.wDown, c.dim, c.hiddenDim)] {
            out.append(LinearLayer(n: n, k: k, weight: UnsafePointer(m), isHead: false))
        }
    }
    out.append(LinearLayer(n: c.vocabSize, k: c.dim, weight: UnsafePointer(w.lmHead), isHead: true))
    return out
}

/// The product the engine runs its linear layers through, for the replays that give bench-engine
/// its ceilings: `run(i, y, x, T)` computes layer i of `layers` for T rows, reading the weights in
/// the form the engine reads them. `sgemm` is today's engine (OpenBLAS `matmul_forward` on the f32
/// weights); `compact` packs copies of the weights into the kernels' bf16 or 8-bit formats and runs
/// `ck_linear` (for when the engine serves compact weights). Select with `--engine-product`.
struct EngineProduct {
    var name: String
    var layers: [LinearLayer]
    /// Bytes of weights one forward streams: every linear layer once, the output head included.
    var weightBytes: Double
    var run: (_ layer: Int, _ y: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, _ T: Int) -> Void

    static func sgemm(_ model: LlamaModel) -> EngineProduct {
        let layers = forwardLinears(model)
        return EngineProduct(name: "sgemm (OpenBLAS \(String(cString: kernels_blas_core())), f32 weights)", layers: layers,
                             weightBytes: Double(layers.reduce(0) { $0 + 4 * $1.n * $1.k })) { i, y, x, T in
            let l = layers[i]
            matmul_forward(y, x, l.weight, Int32(T), Int32(l.k), Int32(l.n), 0)
        }
    }

    /// Owns packed copies of the weights for `compact`.
    private final class Packed: @unchecked Sendable {
        var w: [ck_weights]
        init(_ layers: [LinearLayer], format: Int32) {
            w = layers.map { l in
                var p = ck_weights()
                if ck_weights_alloc(&p, format, Int32(l.n), Int32(l.k)) != 0 { fatalError("ck_weights_alloc \(l.n)×\(l.k)") }
                _ = ck_pack_f32(&p, l.weight, l.k, 0, Int32(l.n))
                return p
            }
        }
        deinit { for i in w.indices { ck_weights_free(&w[i]) } }
    }

    static func compact(_ model: LlamaModel, format: Int32) -> EngineProduct {
        let layers = forwardLinears(model)
        let packed = Packed(layers, format: format)
        let name = format == Int32(CK_BF16) ? "bf16" : format == Int32(CK_Q4) ? "q4" : "q8"
        return EngineProduct(name: "ck_linear (\(name) weights, \(String(cString: ck_path_name(format))))", layers: layers,
                             weightBytes: Double(layers.reduce(0) { $0 + ck_weights_bytes(format, Int32($1.n), Int32($1.k)) })) { i, y, x, T in
            let l = layers[i]
            withExtendedLifetime(packed) { _ = packed.w.withUnsafeBufferPointer { ck_linear(y, l.n, x, l.k, Int32(T), $0.baseAddress! + i, 0) } }
        }
    }

    /// `f32` (default: what the engine runs today), `bf16`, `q8` or `q4`.
    static func named(_ name: String, _ model: LlamaModel) throws -> EngineProduct {
        switch name {
        case "f32", "sgemm": return sgemm(model)
        case "bf16": return compact(model, format: Int32(CK_BF16))
        case "q8": return compact(model, format: Int32(CK_Q8))
        case "q4": return compact(model, format: Int32(CK_Q4))
        default: throw ProductError(name: name)
        }
    }

    struct ProductError: Error, CustomStringConvertible {
        var name: String
        var description: String { "--engine-product \(name): expected f32, bf16, q8 or q4" }
    }

    /// Seconds and FLOPs of one forward's linear layers for `T` tokens of which `headRows` want
    /// logits, replayed back to back (median of `reps` after one warm-up).
    func replay(T: Int, headRows: Int, reps: Int = 5) -> (seconds: Double, flops: Double) {
        let width = layers.map(\.k).max() ?? 1
        let x = [Float](repeating: 0.01, count: T * width)
        var y = [Float](repeating: 0, count: layers.map { $0.n * ($0.isHead ? headRows : T) }.max() ?? 1)
        var flops = 0.0
        for l in layers { flops += 2 * Double(l.n * l.k * (l.isHead ? headRows : T)) }
        func once() {
            x.withUnsafeBufferPointer { xp in
                y.withUnsafeMutableBufferPointer { yp in
                    for (i, l) in layers.enumerated() where !l.isHead || headRows > 0 {
                        run(i, yp.baseAddress!, xp.baseAddress!, l.isHead ? headRows : T)
                    }
                }
            }
        }
        once()
        var ts: [Double] = []
        for _ in 0..<max(1, reps) {
            let t0 = now()
            once()
            ts.append(now() - t0)
        }
        return (ts.sorted()[ts.count / 2], flops)
    }
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

/// One step of `admissionTrace`.
struct TracedStep {
    var decodes: Int
    var prefill: Int
    var seconds: Double
}

/// The steps of `admissionTrace` and the job's latencies seen from the events.
struct Trace {
    var steps: [TracedStep] = []
    var ttft: [Double] = []
    var itl: [Double] = []
}

/// The 32-prompt job driven with `step()` on this thread (all prompts submitted first), step by
/// step: how many decode and prefill tokens each step ran and how long it took — where the
/// inter-token latency tail of the job comes from.
func admissionTrace(_ bundle: Loaded, prompts: [[Int32]], maxTokens: Int, params: SamplerSettings,
                    config: EngineConfig = EngineConfig()) throws -> Trace {
    let engine = try GenerationEngine(model: bundle.model, tokenizer: bundle.tokenizer, config: config)
    let t0 = uptime()
    for p in prompts {
        var r = GenerationRequest(prompt: p, params: params, maxTokens: maxTokens)
        r.ignoreEOS = true
        r.stream = true
        _ = try engine.submit(r)
    }
    var out = Trace()
    var last: [String: UInt64] = [:]
    while true {
        let s0 = now()
        let r = engine.step()
        let dt = now() - s0
        for e in engine.drainEvents() {
            switch e {
            case let .firstToken(_, time): out.ttft.append(Double(time - t0) * 1e-9)
            case let .chunk(c):
                let key = "\(c.id.raw)/\(c.promptIndex)/\(c.sampleIndex)"
                if let prev = last[key] { out.itl.append(Double(c.time - prev) * 1e-9) }
                last[key] = c.time
            default: break
            }
        }
        if r.tokens > 0 { out.steps.append(TracedStep(decodes: r.decodeTokens, prefill: r.prefillTokens, seconds: dt)) }
        if !r.hasWork { break }
    }
    engine.stop()
    return out
}

/// Prints the steps of a trace up to two after the last one with prefill, as "decodes+prefill
/// tokens: ms", and the median of the later, decode-only steps.
func printTrace(_ trace: Trace) {
    let steps = trace.steps
    let lastPrefill = steps.lastIndex { $0.prefill > 0 } ?? 0
    let head = steps.prefix(lastPrefill + 3)
    let rest = steps.dropFirst(head.count).map(\.seconds)
    print("    admission, step by step (decodes + prefill tokens: ms): " + head.map {
        String(format: "%d+%d: %.0f", $0.decodes, $0.prefill, 1000 * $0.seconds)
    }.joined(separator: ", "))
    print(String(format: "    %d steps in %.2f s (%d with prefill); later decode-only steps: median %.0f ms; the longest step carrying decodes: %.0f ms; TTFT p50 %.0f ms p99 %.0f ms; inter-token p50 %.0f ms p99 %.0f ms",
                 steps.count, steps.map(\.seconds).reduce(0, +), steps.filter { $0.prefill > 0 }.count,
                 1000 * percentile(rest, 50), 1000 * (steps.filter { $0.decodes > 0 }.map(\.seconds).max() ?? 0),
                 1000 * percentile(trace.ttft, 50), 1000 * percentile(trace.ttft, 99),
                 1000 * percentile(trace.itl, 50), 1000 * percentile(trace.itl, 99)))
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
    print(String(format: "model: %@, %.0f M parameters; engine precision %@ (--engine-precision), %.0f MB per snapshot; sampling: temperature 1, top-p 0.95, EOS ignored",
                 (modelPath as NSString).lastPathComponent, Double(model.parameterCount) / 1e6, bundle.precision.rawValue,
                 Double(model.weightBytes) / 1_048_576))

    func report(_ name: String, _ f: JobFigures, ceiling: String = "") {
        print(String(format: "%@: %.1f tokens/s (%d tokens in %.2f s)%@; TTFT p50 %.0f ms p99 %.0f ms; inter-token p50 %.0f ms p99 %.0f ms (p99/p50 %.1f) max %.0f ms",
                     name, Double(f.tokens) / f.seconds, f.tokens, f.seconds, ceiling, 1000 * percentile(f.ttft, 50),
                     1000 * percentile(f.ttft, 99), 1000 * percentile(f.itl, 50), 1000 * percentile(f.itl, 99),
                     percentile(f.itl, 99) / percentile(f.itl, 50), 1000 * (f.itl.max() ?? 0)))
    }

    if CommandLine.arguments.contains("--trace-only") {
        // The admission of the 32-prompt job alone, step by step (`--max-tokens-per-step N`, `--decoding-step-tokens N` to try budgets).
        var cfg = EngineConfig()
        cfg.maxTokensPerStep = Int(option("--max-tokens-per-step", "\(cfg.maxTokensPerStep)")) ?? cfg.maxTokensPerStep
        cfg.decodingStepTokens = Int(option("--decoding-step-tokens", "\(cfg.decodingStepTokens)")) ?? cfg.decodingStepTokens
        printTrace(try admissionTrace(bundle, prompts: prompts, maxTokens: 128, params: params, config: cfg))
        return
    }

    // Ceilings, measured in this run: the forward's linear layers replayed through the product the
    // engine uses (by default the one of its precision; `--engine-product f32|bf16|q8|q4`, f32 = OpenBLAS
    // sgemm), and the memory bandwidth of a streaming read.
    let product = try EngineProduct.named(option("--engine-product", bundle.precision.rawValue), bundle.source)
    let bandwidth = ck_stream_read_gbs(256 << 20, ck_threads(), 5)
    let c1 = product.replay(T: 1, headRows: 1, reps: 20)
    let c32 = product.replay(T: 32, headRows: 32)
    let cPrefill = product.replay(T: 512, headRows: 8, reps: 3)
    let bytesPerToken = product.weightBytes
    print(String(format: "ceilings (measured now; product: %@): one forward's linear layers at batch 1 %.1f ms (%.0f tokens/s, %.1f GB/s of weights), at batch 32 %.1f ms (%.0f tokens/s, %.1f GFLOP/s), 512 prompt tokens %.0f ms (%.1f GFLOP/s); streaming read %.1f GB/s on %d threads / %.0f MB of weights per token = %.0f tokens/s at batch 1",
                 product.name, 1000 * c1.seconds, 1 / c1.seconds, bytesPerToken / c1.seconds / 1e9,
                 1000 * c32.seconds, 32 / c32.seconds, c32.flops / c32.seconds / 1e9,
                 1000 * cPrefill.seconds, cPrefill.flops / cPrefill.seconds / 1e9,
                 bandwidth, Int(ck_threads()), bytesPerToken / 1e6, bandwidth * 1e9 / bytesPerToken))
    // The 32 × (64 + 128) job's products alone: 2048 prompt tokens in 512-token products, then
    // 127 decode steps at batch 32 (the first token comes from the prefill).
    let jobCeiling = Double(32 * 128) / (4 * cPrefill.seconds + 127 * c32.seconds)
    let jobCeilingText = String(format: " [ceiling: its linear layers alone %.0f tokens/s; inter-token floor %.0f ms]", jobCeiling, 1000 * c32.seconds)

    _ = try runJob(bundle, prompts: Array(prompts.prefix(4)), maxTokens: 8, params: params)  // warm-up
    let plain = try runJob(bundle, prompts: prompts, maxTokens: 128, params: params)
    report("32 × (64 + 128)", plain, ceiling: jobCeilingText)
    print(String(format: "    %.0f%% of the ceiling; admission: steps with sequences decoding carry at most %d tokens (decodes first, then prefill chunks); with nothing decoding, a wave of prompts prefills in steps of up to %d tokens and starts decoding together",
                 100 * Double(plain.tokens) / plain.seconds / jobCeiling, EngineConfig().decodingStepTokens, EngineConfig().maxTokensPerStep))
    printTrace(try admissionTrace(bundle, prompts: prompts, maxTokens: 128, params: params))
    let pub = try runJob(bundle, prompts: prompts, maxTokens: 128, params: params, publishEvery: 1.0)
    report("  same, publish every 1 s", pub, ceiling: jobCeilingText)
    let packs = pub.status.map { $0.publishPacks > 0 ? String(format: ", %.0f ms each on average", 1000 * $0.publishPackSecondsTotal / Double($0.publishPacks)) : "" } ?? ""
    print(String(format: "    %d publications (each a %.0f MB %@ snapshot made from the f32 weights on the publishing thread%@); samples on version %@; live at the end %@",
                 pub.publishes, Double(bundle.model.weightBytes) / 1_048_576, bundle.precision.rawValue, packs,
                 pub.versionsSeen.sorted().map(String.init).joined(separator: ","),
                 (pub.status?.liveVersions ?? []).map(String.init).joined(separator: ",")))
    print(String(format: "    added stall: inter-token p50 %+.1f ms, p99 %+.1f ms, max %+.1f ms; throughput %+.1f%%",
                 1000 * (percentile(pub.itl, 50) - percentile(plain.itl, 50)),
                 1000 * (percentile(pub.itl, 99) - percentile(plain.itl, 99)),
                 1000 * ((pub.itl.max() ?? 0) - (plain.itl.max() ?? 0)),
                 100 * (Double(pub.tokens) / pub.seconds / (Double(plain.tokens) / plain.seconds) - 1)))
    let mixed = try runJob(bundle, prompts: prompts, maxTokens: 128, params: params, secondVersionFrom: 16)
    report("  16 on version 1 + 16 on version 2", mixed)
    print(String(format: "    %.2f forwards per step (one per live version with work): each version's batch is a separate pass over its weights",
                 mixed.forwardsPerStep))

    // Batch 1: one 64-token prompt, 128 new tokens.
    let one = try runJob(bundle, prompts: [prompts[0]], maxTokens: 128, params: params)
    let b1 = Double(one.itl.count) / one.itl.reduce(0, +)
    print(String(format: "batch 1 decode: %.1f tokens/s (inter-token p50 %.1f ms); TTFT %.0f ms [ceilings: linear layers alone %.0f tokens/s (%.0f%%); memory bandwidth %.0f tokens/s (%.0f%%)]",
                 b1, 1000 * percentile(one.itl, 50), 1000 * percentile(one.ttft, 50),
                 1 / c1.seconds, 100 * b1 * c1.seconds, bandwidth * 1e9 / bytesPerToken, 100 * b1 * bytesPerToken / (bandwidth * 1e9)))

    // Where a steady 32-sequence decode step goes.
    let b = try decodeBreakdown(bundle, prompts: prompts, params: params, steps: 48)
    let replay = c32.seconds
    let blas = b.blas ?? replay
    let flops = c32.flops
    print(String(format: "decode step at batch 32: %.1f ms (%.0f tokens/s) = forward %.1f ms [BLAS %.1f ms %@, KV store %.2f ms, rest of the forward %.1f ms] + sampling/log-probs %.1f ms + text/events/scheduling %.1f ms",
                 1000 * b.step, b.tokensPerSecond, 1000 * b.forward, 1000 * blas,
                 b.blas == nil ? "(replayed: Kernels does not count BLAS time)" : "(measured in the BLAS calls)",
                 1000 * b.kv, 1000 * (b.forward - blas - b.kv), 1000 * b.sample, 1000 * (b.step - b.forward - b.sample)))
    print(String(format: "share of step time outside BLAS: %.0f%%; the step's BLAS runs at %.1f GFLOP/s (same products back to back: %.1f ms, %.1f GFLOP/s; sgemm 1024³: %.1f GFLOP/s)",
                 100 * max(0, b.step - blas) / b.step, flops / blas / 1e9, 1000 * replay, flops / replay / 1e9, gflops))
    print(String(format: "decode step at batch 32 vs its ceiling (its linear layers alone through %@: %.1f ms, %.1f GFLOP/s): %.0f%% (%.1f effective GFLOP/s)",
                 product.name, 1000 * replay, flops / replay / 1e9, 100 * replay / b.step, flops / b.step / 1e9))
    print("for scale on this machine: llama.cpp (Q4_1) decodes 83 tokens/s at batch 1; HF transformers generate reaches 58 tokens/s on this 32 × 128 job")
    print(String(format: "peak RSS %.0f MB", peakRSSMB()))
}
