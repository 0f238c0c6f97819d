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

/// GFLOP/s of ck_gemm on an n×n×n product with f32 operands rounded to bf16 (the learner's bf16
/// products: conversion and packing included), best of `reps`.
func bf16GemmGFLOPS(n: Int = 1024, reps: Int = 5) -> Double {
    let a = [Float](repeating: 0.5, count: n * n), b = [Float](repeating: 0.25, count: n * n)
    var c = [Float](repeating: 0, count: n * n)
    ck_matmul_forward_bf16(&c, a, b, Int32(n), Int32(n), Int32(n), 0)
    var best = 0.0
    for _ in 0..<reps {
        let t0 = now()
        ck_matmul_forward_bf16(&c, a, b, Int32(n), Int32(n), Int32(n), 0)
        best = max(best, 2 * Double(n * n * n) / (now() - t0) / 1e9)
    }
    return best
}

/// The reference venv of scripts/reference/requirements.txt (scripts/check_checkpoint.sh makes it), if
/// it is complete: ${SELM_CACHE:-${XDG_CACHE_HOME:-~/.cache}/selm-server}/venv-<first 16 hex of sha256>.
func referenceVenvPython() -> String? {
    let env = ProcessInfo.processInfo.environment
    let cache = env["SELM_CACHE"] ?? ((env["XDG_CACHE_HOME"] ?? (NSHomeDirectory() + "/.cache")) + "/selm-server")
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = ["sha256sum", "scripts/reference/requirements.txt"]
    let pipe = Pipe()
    p.standardOutput = pipe
    guard (try? p.run()) != nil else { return nil }
    p.waitUntilExit()
    let out = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    guard p.terminationStatus == 0, out.count >= 16 else { return nil }
    let venv = cache + "/venv-" + out.prefix(16)
    let fm = FileManager.default
    return fm.fileExists(atPath: venv + "/.complete") && fm.isExecutableFile(atPath: venv + "/bin/python") ? venv + "/bin/python" : nil
}

func benchLearner(_ path: String, _ options: [String]) throws {
    header("bench-learner")
    let rounds = options.firstIndex(of: "--steps").flatMap { Int(options[$0 + 1]) } ?? 3
    let withTorch = !options.contains("--no-torch")
    let (model, _) = try loadModel(path)
    var opts = TrainingOptions()
    opts.batchSize = 4
    let learner = try Trainer(policy: model, reference: nil, options: opts,
                              schedule: LRSchedule(kind: .constant, baseLR: 1e-6, warmupSteps: 0, totalSteps: 10))
    // 4 pairs × {chosen, rejected, reference} × 128 tokens (32 prompt + 96 response) = 1536 tokens.
    // scripts/bench_learner_torch.py builds the same ids.
    func ids(_ n: Int, _ seed: Int) -> [Int32] { (0..<n).map { Int32(100 + (($0 + 1) * (seed * 7919 + 13)) % 40000) } }
    let pairs = (0..<4).map { i in
        PreferencePair(prompt: ids(32, i), chosen: ids(96, 10 + i), rejected: ids(96, 20 + i), reference: ids(96, 30 + i))
    }
    let tokens = 4 * 3 * 128
    let modes: [MatmulPrecision] = [.f32, .bf16]
    var key: UInt64 = 0
    /// One step in `mode` with fresh keys (the reference forward is part of every measured step, as
    /// for fresh rows): seconds, and seconds inside the linear layers' products (sgemm / bf16 kernels).
    /// `sections` collects the seconds of each pass outside the products (kernels.h KS_*).
    var sections: [MatmulPrecision: [Double]] = [:]
    func step(_ mode: MatmulPrecision) throws -> (Double, Double) {
        learner.precision = mode
        let keys = (0..<4).map { _ in key += 1; return key }
        let b0 = kernels_thread_product_seconds()
        let s0 = (0..<Int(KS_COUNT)).map { kernels_thread_section_seconds(Int32($0)) }
        let t0 = now()
        _ = try learner.step([(pairs, keys)])
        let t = now() - t0
        var acc = sections[mode] ?? [Double](repeating: 0, count: Int(KS_COUNT))
        for i in 0..<Int(KS_COUNT) { acc[i] += kernels_thread_section_seconds(Int32(i)) - s0[i] }
        sections[mode] = acc
        return (t, kernels_thread_product_seconds() - b0)
    }
    var rss: [MatmulPrecision: Double] = [:]
    for m in modes { _ = try step(m); rss[m] = peakRSSMB() }  // warm-up; peak RSS after each mode's first step
    sections = [:]
    var times: [MatmulPrecision: [(Double, Double)]] = [:]
    for _ in 0..<rounds { for m in modes { times[m, default: []].append(try step(m)) } }  // alternately
    let sgemm = sgemmGFLOPS()
    let bf16Gemm = bf16GemmGFLOPS()
    let peak = ck_peak_bf16_gflops(Int32(ck_threads()), 0.3)
    let params = Double(model.parameterCount)
    let flops = 6 * params * Double(tokens) + 2 * params * Double(tokens)
    print(String(format: "ceilings (this run): sgemm 1024³ %.1f GFLOP/s; bf16 ck_gemm 1024³ (f32 in/out) %.1f GFLOP/s; vdpbf16ps register peak %.1f GFLOP/s (%d threads, %@)",
                 sgemm, bf16Gemm, peak, ck_threads(), String(cString: ck_path_name(Int32(CK_BF16)))))
    var median: [MatmulPrecision: Double] = [:]
    for m in modes {
        let sorted = times[m]!.sorted { $0.0 < $1.0 }
        let (t, inside) = sorted[sorted.count / 2]
        median[m] = t
        let gf = flops / t / 1e9
        let ceiling = m == .f32 ? sgemm : bf16Gemm
        print(String(format: "%@ step (4 pairs × 3 × 128 = %d tokens): %.2f s (median of %d), %.0f tokens/s; %.1f GFLOP/s (8·params·tokens) = %.0f%% of %@ %.1f; outside the products %.2f s = %.0f%%; peak RSS %.0f MB = %.0f MB per 1000 tokens",
                     m.rawValue, tokens, t, sorted.count, Double(tokens) / t, gf, 100 * gf / ceiling,
                     m == .f32 ? "sgemm" : "bf16 ck_gemm", ceiling, t - inside, 100 * (t - inside) / t, rss[m]!, rss[m]! / (Double(tokens) / 1000)))
    }
    print(String(format: "bf16 / f32 step: %.2f", median[.bf16]! / median[.f32]!))
    // Where the time outside the products goes (means over the measured rounds; shares of the mean step).
    for m in modes {
        let n = Double(times[m]!.count)
        let step = times[m]!.reduce(0) { $0 + $1.0 } / n, inside = times[m]!.reduce(0) { $0 + $1.1 } / n
        let secs = sections[m]!.map { $0 / n }
        var line = String(format: "%@ outside the products (mean of %d steps: %.2f s of %.2f s = %.1f%%):", m.rawValue,
                          Int(n), step - inside, step, 100 * (step - inside) / step)
        for i in secs.indices.sorted(by: { secs[$0] > secs[$1] }) where secs[i] >= 0.0005 {
            line += String(format: " %@ %.3f s (%.1f%%),", String(cString: kernels_section_name(Int32(i))), secs[i], 100 * secs[i] / step)
        }
        let rest = step - inside - secs.reduce(0, +)
        line += String(format: " the rest (zeroing, copies, loss, Swift) %.3f s (%.1f%%)", rest, 100 * rest / step)
        print(line)
    }
    guard withTorch else { return }
    guard let python = referenceVenvPython() else {
        print("PyTorch: no reference venv (scripts/check_checkpoint.sh makes it); skipped")
        return
    }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: python)
    p.arguments = ["scripts/bench_learner_torch.py", "--model", path, "--steps", String(rounds)]
    let pipe = Pipe()
    p.standardOutput = pipe
    try p.run()
    let out = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    guard p.terminationStatus == 0, let line = String(decoding: out, as: UTF8.self).split(separator: "\n").last,
          let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
          let tf = obj["f32"] as? [Double], let tb = obj["bf16"] as? [Double] else {
        print("PyTorch: scripts/bench_learner_torch.py failed (status \(p.terminationStatus))")
        return
    }
    let mf = tf.sorted()[tf.count / 2], mb = tb.sorted()[tb.count / 2]
    print(String(format: "PyTorch %@ (%d threads, f32 and autocast-bf16 alternately, same step): f32 %.2f s, autocast-bf16 %.2f s (medians of %d); peak RSS %.0f MB",
                 obj["torch"] as? String ?? "?", obj["threads"] as? Int ?? 0, mf, mb, tf.count, obj["peak_rss_mb"] as? Double ?? 0))
    print(String(format: "ratios: selm bf16 / PyTorch f32 %.2f (goal ≤ 0.5), selm bf16 / PyTorch autocast-bf16 %.2f (goal < 1), selm f32 / PyTorch f32 %.2f",
                 median[.bf16]! / mf, median[.bf16]! / mb, median[.f32]! / mf))
}

let args = CommandLine.arguments
guard args.count >= 2 else {
    print("usage: selm-bench model|learner|engine|job|precision|publish|server|load|http|soak|kernels --model PATH [options]"); exit(2)
}
var modelPath = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
if let i = args.firstIndex(of: "--model"), i + 1 < args.count { modelPath = args[i + 1] }
// selm re-executes itself with the best OpenBLAS core for this CPU (selm/main.swift); the learner
// benchmark does the same so its f32 figures are selm's.
if args[1] == "learner", ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] == nil,
   ProcessInfo.processInfo.environment["SELM_NO_BLAS_REEXEC"] == nil, let best = kernels_best_core_for_cpu(),
   kernels_core_rank(kernels_blas_core()) < kernels_core_rank(best) {
    setenv("OPENBLAS_CORETYPE", best, 1)
    setenv("SELM_NO_BLAS_REEXEC", "1", 1)
    execv("/proc/self/exe", CommandLine.unsafeArgv)
}
do {
    switch args[1] {
    case "model": try benchModel(modelPath)
    case "learner": try benchLearner(modelPath, Array(args.dropFirst(2)))
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
