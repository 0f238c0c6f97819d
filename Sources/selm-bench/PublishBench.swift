// publish: what publishing every second costs the engine in its precision — the 32 × (64 + 128) job
// without publications, then with a publisher thread handing the engine a new version every
// `--every` seconds. By default each version is a snapshot made as the learner makes it, by its
// optimizer pass (`AdamW.update(…, snapshot:)`: what that pass costs the learner is measured first
// and printed); `--snapshot pack` has the engine pack the live f32 weights on the publishing thread
// instead, paced (as RefreshWeights' and a replica's publications are). Prints throughput,
// inter-token latency p50/p99 and the packing time, per round and pooled over the rounds.
//
// Memory: the server's learner fills each snapshot in the memory of the version the engine released
// last (`CompactMemoryPool`), so in steady state a publication neither maps nor unmaps anything. The
// bench makes its snapshots before each job, so by default (`--recycle yes`) the pool keeps every
// version released during a job for the next job's snapshots, as the learner reuses them;
// `--recycle no` keeps the server's pool of one, and each version released during the job is then
// unmapped (on the reaper's thread) — what publishing would cost if memory were not reused.
import Dispatch
import Engine
import Foundation
import Kernels
import Learner
import Model

func benchPublish(_ modelPath: String) throws {
    let every = Double(option("--every", "1")) ?? 1
    let name = option("--engine-precision", EnginePrecision.servingDefault.rawValue)
    guard let precision = EnginePrecision(rawValue: name) else { print("error: --engine-precision: expected f32, bf16, q8 or q4"); exit(2) }
    // As selm serve's default --compute-sharing: the publishing thread's packing counts as compute.
    kernels_set_sharing(Int32(KERNELS_SHARING_ADAPTIVE), 0)
    let mode = option("--snapshot", "optimizer")
    guard ["optimizer", "pack"].contains(mode) else { print("error: --snapshot: expected optimizer or pack"); exit(2) }
    let fromOptimizer = mode == "optimizer" && precision != .f32
    let loaded = try Loaded(path: modelPath)
    let live = loaded.source.weights                // the learner's weights (f32)
    let config = live.config

    // The learner's side: its optimizer pass (AdamW over every weight, zero gradients, lr 0: the
    // weights stay the live ones), alone and filling a snapshot, alternated; and a packing pass of
    // its own, as a publication without a snapshot makes. Medians of 3.
    let optimizer = AdamW(config: config)
    let grads = ParameterSet(config: config)
    func seconds(_ body: () throws -> Void) rethrows -> Double {
        let t0 = DispatchTime.now().uptimeNanoseconds
        try body()
        return Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9
    }
    var plainPass: [Double] = [], fusedPass: [Double] = [], packPass: [Double] = []
    if precision != .f32 {
        for _ in 0..<3 {
            plainPass.append(seconds { optimizer.update(live, grads: grads, lr: 0) })
            let s = try CompactSnapshot(of: live, precision: precision)
            fusedPass.append(seconds { optimizer.update(live, grads: grads, lr: 0, snapshot: s) })
            packPass.append(try seconds { _ = try LlamaModel.inference(from: live, precision: precision) })
        }
    }
    /// Snapshots of the live weights made by the optimizer's pass, for the publisher to hand over.
    func makeSnapshots(_ n: Int) throws -> [CompactSnapshot] {
        try (0..<n).map { _ in
            let s = try CompactSnapshot(of: live, precision: precision)
            optimizer.update(live, grads: grads, lr: 0, snapshot: s)
            return s
        }
    }
    let prompts = benchPrompts(loaded.tokenizer, count: 32, length: 64)
    var params = SamplerSettings()
    params.temperature = 1.0; params.topP = 0.95; params.seed = 42

    struct Figures { var seconds = 0.0, tokens = 0, itl: [Double] = [], publishes = 0, pack: [Double] = [], snapshots: UInt64 = 0, prefill: UInt64 = 0, steps: UInt64 = 0, forwards: UInt64 = 0 }
    /// `snapshots`: handed over one per publication (none left: the publisher stops).
    func job(publishing: Bool, snapshots: [CompactSnapshot] = []) throws -> Figures {
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
        final class Stop: @unchecked Sendable {
            let lock = NSLock(); var stop = false; var packs: [Double] = []; let done = DispatchSemaphore(value: 0)
            var snapshots: [CompactSnapshot] = []
        }
        let ctl = Stop()
        ctl.snapshots = snapshots
        let useSnapshots = fromOptimizer
        if publishing {
            Thread.detachNewThread {
                while true {
                    // Sleeps `every`, waking early when the job is over.
                    let wake = Date().addingTimeInterval(every)
                    while Date() < wake && !ctl.lock.withLock({ ctl.stop }) { Thread.sleep(forTimeInterval: 0.01) }
                    ctl.lock.lock()
                    let s = ctl.stop || (useSnapshots && ctl.snapshots.isEmpty)
                    let snapshot = useSnapshots && !s ? ctl.snapshots.removeFirst() : nil
                    ctl.lock.unlock()
                    if s { break }
                    _ = try? engine.publish(weights: live, snapshot: snapshot)
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
        let st = engine.status()
        (f.snapshots, f.prefill, f.steps, f.forwards) = (st.publishSnapshots, st.promptTokensComputed, st.steps, st.forwards)
        engine.stop()
        return f
    }
    let rounds = max(1, Int(option("--rounds", "9")) ?? 9)
    let recycleOption = option("--recycle", "yes")
    guard ["yes", "no"].contains(recycleOption) else { print("error: --recycle: expected yes or no"); exit(2) }
    let recycle = recycleOption == "yes"
    print("== bench-publish: \(precision) engine, 32 × (64 prompt + 128 new), publication every \(every) s; \(rounds) rounds, each the job without and with publications (alternately first); released versions' memory \(recycle ? "reused" : "unmapped (--recycle no)")")
    if fromOptimizer {
        print("each version is a snapshot made by the learner's optimizer pass (as the server's learner publishes); on the learner's thread, medians of 3:")
        print(String(format: "  optimizer pass %.3f s alone, %.3f s filling the snapshot: the snapshot costs the learner %+.3f s per published step (a packing pass of its own: %.3f s)",
                     percentile(plainPass, 50), percentile(fusedPass, 50), percentile(fusedPass, 50) - percentile(plainPass, 50), percentile(packPass, 50)))
    } else {
        print("each version is packed from the live f32 weights by the engine on the publishing thread, paced (as RefreshWeights and replicas publish)")
        if !packPass.isEmpty { print(String(format: "  a packing pass alone, machine idle: %.3f s (median of 3)", percentile(packPass, 50))) }
    }
    func line(_ label: String, _ f: Figures) {
        print(String(format: "  %@ %6.2f s  %6.1f tok/s  inter-token p50 %6.1f ms  p99 %7.1f ms  publications %d  (prefilled %d tokens, %d steps, %d forwards)",
                     label as NSString, f.seconds, Double(f.tokens) / f.seconds, 1000 * percentile(f.itl, 50), 1000 * percentile(f.itl, 99), f.publishes,
                     Int(f.prefill), Int(f.steps), Int(f.forwards)))
    }
    var losses: [Double] = [], added: [Double] = [], packs: [Double] = []
    var quietAll = Figures(), busyAll = Figures()
    /// What publishing cost: throughput loss (%) and added p99 inter-token latency (ms).
    func cost(_ quiet: Figures, _ busy: Figures) -> (loss: Double, p99: Double) {
        (100 * (1 - (Double(busy.tokens) / busy.seconds) / (Double(quiet.tokens) / quiet.seconds)),
         1000 * (percentile(busy.itl, 99) - percentile(quiet.itl, 99)))
    }
    // Snapshots for a job with publications: enough for 1.3 × the first job's time (made before the
    // job: the learner makes each in its step, whose cost is the learner's, printed above).
    var needed = 0
    func publishingJob() throws -> Figures {
        if recycle { CompactMemoryPool.capacity = needed + 4 }
        let snapshots = try makeSnapshots(needed)
        settle()
        return try job(publishing: true, snapshots: snapshots)
    }
    /// Before a timed job: what the previous one released (snapshots, KV pool) is unmapped on
    /// background threads; let that finish, so it is timed with neither job.
    func settle() { Thread.sleep(forTimeInterval: 1) }
    for r in 1...rounds {
        // Alternate which job runs first (ABBA), so that neither always follows the other.
        var quiet = Figures(), busy = Figures()
        if r % 2 == 1 {
            settle()
            quiet = try job(publishing: false)
            if needed == 0 && fromOptimizer { needed = Int((quiet.seconds * 1.3 / every).rounded(.up)) + 2 }
            busy = try publishingJob()
        } else {
            busy = try publishingJob()
            settle()
            quiet = try job(publishing: false)
        }
        if fromOptimizer && busy.snapshots != UInt64(busy.publishes) {
            print("error: \(busy.publishes) publications, \(busy.snapshots) of them from snapshots"); exit(1)
        }
        print("round \(r):")
        line("no publications    ", quiet)
        line("publish every \(every) s", busy)
        let (loss, p99) = cost(quiet, busy)
        if fromOptimizer {
            print(String(format: "  throughput loss %.1f %%, added p99 inter-token %.1f ms; %d publications, each a snapshot from the optimizer (nothing packed on publish)",
                         loss, p99, busy.publishes))
        } else {
            print(String(format: "  throughput loss %.1f %%, added p99 inter-token %.1f ms; snapshot made on the publishing thread in %.3f s median (%.3f max)",
                         loss, p99, percentile(busy.pack, 50), busy.pack.max() ?? 0))
        }
        losses.append(loss); added.append(p99); packs += busy.pack
        quietAll.seconds += quiet.seconds; quietAll.tokens += quiet.tokens; quietAll.itl += quiet.itl
        busyAll.seconds += busy.seconds; busyAll.tokens += busy.tokens; busyAll.itl += busy.itl
    }
    let memory = CompactMemoryPool.statistics
    print("compact models' memory over the run: \(memory.allocated) allocated, \(memory.reused) reused, \(memory.freed) freed"
          + (recycle ? " (versions released during a job kept for the next job's snapshots, as the learner reuses them)"
                     : " (a pool of one: versions released during a job were unmapped)"))
    let (pooledLoss, pooledP99) = cost(quietAll, busyAll)
    print(String(format: "pooled over %d rounds (all tokens over all seconds; p99 of all %d and %d inter-token gaps): throughput loss %.1f %%, added p99 inter-token %.1f ms (p99 %.1f → %.1f ms, p50 %.1f → %.1f ms)",
                 rounds, quietAll.itl.count, busyAll.itl.count, pooledLoss, pooledP99,
                 1000 * percentile(quietAll.itl, 99), 1000 * percentile(busyAll.itl, 99), 1000 * percentile(quietAll.itl, 50), 1000 * percentile(busyAll.itl, 50)))
    print(String(format: "median of %d rounds: throughput loss %.1f %% (goal ≤ 5 %%), added p99 inter-token %.1f ms (goal ≤ 10 ms); %@",
                 rounds, percentile(losses, 50), percentile(added, 50),
                 (fromOptimizer ? String(format: "snapshots from the optimizer pass (%+.3f s each on the learner's thread)", percentile(fusedPass, 50) - percentile(plainPass, 50))
                                : String(format: "packed on publish in %.3f s median", percentile(packs, 50))) as NSString))
    print(String(format: "peak RSS %.0f MB", peakRSSMB()))
}
