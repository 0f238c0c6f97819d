// selm-bench: the benchmarks behind `make bench-*`. Each prints its figures beside the ceiling they
// are judged against, measured in the same run (sgemm GFLOP/s on this machine).
import Foundation
import Kernels
import Learner
import Model

#if canImport(Glibc)
import Glibc
#endif

func now() -> Double { Date().timeIntervalSince1970 }

func peakRSSMB() -> Double {
    var u = rusage()
    getrusage(RUSAGE_SELF.rawValue, &u)
    return Double(u.ru_maxrss) / 1024
}

/// sgemm GFLOP/s for an n×n×n product (the ceiling every figure is set against).
func sgemmGFLOPS(n: Int = 1024, reps: Int = 10) -> Double {
    let a = [Float](repeating: 0.5, count: n * n), b = [Float](repeating: 0.25, count: n * n)
    var c = [Float](repeating: 0, count: n * n)
    matmul_forward(&c, a, b, Int32(n), Int32(n), Int32(n), 0)
    let t0 = now()
    for _ in 0..<reps { matmul_forward(&c, a, b, Int32(n), Int32(n), Int32(n), 0) }
    return 2 * Double(n * n * n) * Double(reps) / (now() - t0) / 1e9
}

func header(_ title: String) {
    print("== \(title)")
    print("OpenBLAS core \(String(cString: kernels_blas_core())), \(kernels_blas_threads()) threads; sgemm 1024³: \(String(format: "%.1f", sgemmGFLOPS())) GFLOP/s")
}

func loadModel(_ path: String) throws -> (LlamaModel, Double) {
    let t0 = now()
    let m = try LlamaModel.load(path: path)
    return (m, now() - t0)
}

func benchModel(_ path: String) throws {
    header("bench-model")
    let (model, loadSeconds) = try loadModel(path)
    print(String(format: "load: %.2f s, peak RSS %.0f MB (targets: ≤ 2 s, ≤ 1536 MB)", loadSeconds, peakRSSMB()))
    let c = model.config
    let acts = Activations(config: c)
    // Prefill: one 256-token prompt.
    let prompt = (0..<256).map { Int32(100 + ($0 * 37) % 40000) }
    var b = ForwardBatch()
    b.append(prompt, startPos: 0, slot: 0, logits: .last)
    let kv1 = ContiguousKVStore(config: c, slots: 1, capacity: 512)
    _ = try model.forward(b, kv: kv1, acts: acts)
    var t0 = now()
    let reps = 5
    for _ in 0..<reps { _ = try model.forward(b, kv: kv1, acts: acts) }
    let prefill = Double(256 * reps) / (now() - t0)
    // Matrix-product FLOPs: 2 per weight per token for the layers; the output head (vocab × dim) only
    // for rows whose logits are computed (the last one of a prefill, every one of a decode step).
    let head = 2.0 * Double(c.vocabSize * c.dim)
    let layers = 2.0 * Double(model.parameterCount) - head
    print(String(format: "prefill (1 × 256 tokens): %.0f tokens/s = %.1f GFLOP/s of matrix products", prefill,
                 (prefill * layers + head * Double(reps) / (now() - t0)) / 1e9))
    // Decode at batch 1 and 32 after a 64-token prompt each.
    for batch in [1, 32] {
        let kv = ContiguousKVStore(config: c, slots: batch, capacity: 64 + 129)
        var pre = ForwardBatch()
        for s in 0..<batch { pre.append((0..<64).map { Int32(200 + s + $0) }, startPos: 0, slot: s, logits: .last) }
        _ = try model.forward(pre, kv: kv, acts: acts)
        let steps = batch == 1 ? 64 : 32
        t0 = now()
        for i in 0..<steps {
            var d = ForwardBatch()
            for s in 0..<batch { d.append([Int32(300 + s + i)], startPos: 64 + i, slot: s, logits: .last) }
            _ = try model.forward(d, kv: kv, acts: acts)
        }
        let tps = Double(batch * steps) / (now() - t0)
        print(String(format: "decode batch %2d: %.0f tokens/s = %.1f GFLOP/s of matrix products", batch, tps, tps * (layers + head) / 1e9))
    }
    print(String(format: "peak RSS %.0f MB", peakRSSMB()))
}

func benchLearner(_ path: String) throws {
    header("bench-learner")
    let (model, _) = try loadModel(path)
    var opts = TrainingOptions()
    opts.batchSize = 4
    let learner = try Trainer(policy: model, reference: nil, options: opts,
                              schedule: LRSchedule(kind: .constant, baseLR: 1e-6, warmupSteps: 0, totalSteps: 10))
    // 4 pairs × {chosen, rejected, reference} × 128 tokens (32 prompt + 96 response) = 1536 tokens.
    func ids(_ n: Int, _ seed: Int) -> [Int32] { (0..<n).map { Int32(100 + (($0 + 1) * (seed * 7919 + 13)) % 40000) } }
    let pairs = (0..<4).map { i in
        PreferencePair(prompt: ids(32, i), chosen: ids(96, 10 + i), rejected: ids(96, 20 + i), reference: ids(96, 30 + i))
    }
    let tokens = 4 * 3 * 128
    _ = try learner.step([(pairs, [0, 1, 2, 3])])  // warm-up (also fills the reference cache)
    var times: [Double] = []
    for k in 0..<3 {
        // New keys: the reference forward is part of every measured step, as for fresh rows.
        let keys = (0..<4).map { UInt64(100 + 4 * k + $0) }
        let t0 = now()
        _ = try learner.step([(pairs, keys)])
        times.append(now() - t0)
    }
    let step = times.sorted()[1]
    let params = Double(model.parameterCount)
    let flops = 6 * params * Double(tokens) + 2 * params * Double(tokens)
    let ceiling = sgemmGFLOPS()
    print(String(format: "step (4 pairs × 3 × 128 = %d tokens): %.2f s (median of 3), %.0f tokens/s", tokens, step, Double(tokens) / step))
    print(String(format: "achieved %.1f GFLOP/s (8·params·tokens) = %.0f%% of sgemm %.1f GFLOP/s (target ≥ 80%%)",
                 flops / step / 1e9, 100 * flops / step / 1e9 / ceiling, ceiling))
    print(String(format: "peak RSS %.0f MB; PyTorch 2.15 + MKL on this machine: 20 s for this step (77 tokens/s)", peakRSSMB()))
}

let args = CommandLine.arguments
guard args.count >= 2 else {
    print("usage: selm-bench model|learner|engine|job|precision|publish|server|load|http|soak|kernels --model PATH [options]"); exit(2)
}
var modelPath = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
if let i = args.firstIndex(of: "--model"), i + 1 < args.count { modelPath = args[i + 1] }
do {
    switch args[1] {
    case "model": try benchModel(modelPath)
    case "learner": try benchLearner(modelPath)
    case "engine": try benchEngine(modelPath)
    case "server": try benchServer(modelPath)
    case "load": try benchLoad(modelPath)
    case "http": try benchHTTP(modelPath)
    case "soak": try soakRestarts(modelPath)
    case "kernels": try benchKernels(Array(args.dropFirst(2)))
    case "job": try benchJob(modelPath)
    case "precision": try benchPrecision(modelPath)
    case "publish": try benchPublish(modelPath)
    default: print("unknown benchmark \(args[1])"); exit(2)
    }
} catch {
    print("error: \(error)"); exit(1)
}
