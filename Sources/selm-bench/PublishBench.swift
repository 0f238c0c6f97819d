// publish: what publishing every second costs the engine in its precision — the 32 × (64 + 128) job
// without publications, then with a publisher thread handing the engine the learner's live f32
// weights every `--every` seconds (the engine packs them on that thread, as OnlineLearner's
// publications do). Prints throughput, inter-token latency p50/p99 and the packing time.
import Dispatch
import Engine
import Foundation
import Kernels
import Model

func benchPublish(_ modelPath: String) throws {
    let every = Double(option("--every", "1")) ?? 1
    let name = option("--engine-precision", EnginePrecision.servingDefault.rawValue)
    guard let precision = EnginePrecision(rawValue: name) else { print("error: --engine-precision: expected f32, bf16, q8 or q4"); exit(2) }
    // As selm serve's default --compute-sharing: the publishing thread's packing counts as compute.
    kernels_set_sharing(Int32(KERNELS_SHARING_ADAPTIVE), 0)
    let loaded = try Loaded(path: modelPath)
    let live = loaded.source.weights                // the learner's weights (f32)
    let prompts = benchPrompts(loaded.tokenizer, count: 32, length: 64)
    var params = SamplerSettings()
    params.temperature = 1.0; params.topP = 0.95; params.seed = 42

    struct Figures { var seconds = 0.0, tokens = 0, itl: [Double] = [], publishes = 0, pack: [Double] = [] }
    func job(publishing: Bool) throws -> Figures {
        var cfg = EngineConfig()
        cfg.kvCacheMB = 512
        if let v = Double(option("--pack-slice", "")) { cfg.publishPackSlice = v }
        if let v = Double(option("--pack-pause", "")) { cfg.publishPackPause = v }
        if let v = Double(option("--pack-max-pause", "")) { cfg.publishPackMaxPause = v }
        let engine = try GenerationEngine(model: LlamaModel.inference(from: live, precision: precision), tokenizer: loaded.tokenizer, config: cfg)
        let wake = DispatchSemaphore(value: 0)
        engine.setWakeup { wake.signal() }
        for p in prompts {
            var r = GenerationRequest(prompt: p, params: params, maxTokens: 128)
            r.ignoreEOS = true; r.stream = true
            _ = try engine.submit(r)
        }
        let t0 = DispatchTime.now().uptimeNanoseconds
        engine.start()
        final class Stop: @unchecked Sendable { let lock = NSLock(); var stop = false; var packs: [Double] = []; let done = DispatchSemaphore(value: 0) }
        let ctl = Stop()
        if publishing {
            Thread.detachNewThread {
                var v: UInt64 = 2
                while true {
                    Thread.sleep(forTimeInterval: every)
                    ctl.lock.lock(); let s = ctl.stop; ctl.lock.unlock()
                    if s { break }
                    try? engine.publish(weights: live, version: v)
                    v += 1
                    let last = engine.status().lastPublishPackSeconds
                    ctl.lock.lock(); ctl.packs.append(last); ctl.lock.unlock()
                }
                ctl.done.signal()
            }
        }
        var f = Figures()
        var last: [String: UInt64] = [:]
        var done = 0, end = t0
        while done < prompts.count {
            _ = wake.wait(timeout: .now() + 5)
            for e in engine.drainEvents() {
                switch e {
                case let .chunk(c):
                    let key = "\(c.id.raw)/\(c.promptIndex)/\(c.sampleIndex)"
                    if let prev = last[key] { f.itl.append(Double(c.time - prev) * 1e-9) }
                    last[key] = c.time
                    f.tokens += c.tokens.count
                case .done: done += 1; end = max(end, DispatchTime.now().uptimeNanoseconds)
                case let .error(_, err): throw err
                default: break
                }
            }
        }
        ctl.lock.lock(); ctl.stop = true; ctl.lock.unlock()
        if publishing { ctl.done.wait() }
        f.seconds = Double(end - t0) * 1e-9
        f.pack = ctl.packs
        f.publishes = ctl.packs.count
        engine.stop()
        return f
    }
    let rounds = max(1, Int(option("--rounds", "3")) ?? 3)
    print("== bench-publish: \(precision) engine, 32 × (64 prompt + 128 new), publication every \(every) s from the live f32 weights; \(rounds) rounds, each the job without then with publications")
    func line(_ label: String, _ f: Figures) {
        print(String(format: "  %@ %6.2f s  %6.1f tok/s  inter-token p50 %6.1f ms  p99 %7.1f ms  publications %d",
                     label as NSString, f.seconds, Double(f.tokens) / f.seconds, 1000 * percentile(f.itl, 50), 1000 * percentile(f.itl, 99), f.publishes))
    }
    var losses: [Double] = [], added: [Double] = [], packs: [Double] = []
    for r in 1...rounds {
        let quiet = try job(publishing: false)
        let busy = try job(publishing: true)
        print("round \(r):")
        line("no publications    ", quiet)
        line("publish every \(every) s", busy)
        let loss = 100 * (1 - (Double(busy.tokens) / busy.seconds) / (Double(quiet.tokens) / quiet.seconds))
        let p99 = 1000 * (percentile(busy.itl, 99) - percentile(quiet.itl, 99))
        print(String(format: "  throughput loss %.1f %%, added p99 inter-token %.1f ms; snapshot made on the publishing thread in %.3f s median (%.3f max)",
                     loss, p99, percentile(busy.pack, 50), busy.pack.max() ?? 0))
        losses.append(loss); added.append(p99); packs += busy.pack
    }
    print(String(format: "median of %d rounds: throughput loss %.1f %% (goal ≤ 5 %%), added p99 inter-token %.1f ms (goal ≤ 10 ms); snapshot made in %.3f s median",
                 rounds, percentile(losses, 50), percentile(added, 50), percentile(packs, 50)))
    print(String(format: "peak RSS %.0f MB", peakRSSMB()))
}
