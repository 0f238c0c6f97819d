// bench-kernels: the compact-precision products (Sources/Kernels/compact*.c) on SmolLM2-135M's
// shapes, each figure beside the ceilings measured in the same run: the bf16 and VNNI peaks of a
// register-only loop, the memory bandwidth of a streaming read, and OpenBLAS sgemm on the same
// shape. Also the cost of making compact weights, the learner's three products per layer, and
// which OpenBLAS kernel core is fastest for sgemm here (one child process per core).
import Foundation
import Kernels

/// Median seconds of `samples` timings of `body`, each repeated until it takes ≥ `minTime`.
private func timeIt(samples: Int = 5, minTime: Double = 0.02, _ body: () -> Void) -> Double {
    body()
    var reps = 1
    var t0 = now()
    body()
    let one = max(now() - t0, 1e-7)
    reps = max(1, min(100_000, Int(minTime / one)))
    var ts: [Double] = []
    for _ in 0..<samples {
        t0 = now()
        for _ in 0..<reps { body() }
        ts.append((now() - t0) / Double(reps))
    }
    return ts.sorted()[samples / 2]
}

private func cpuModel() -> String {
    guard let s = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return "unknown CPU" }
    func field(_ name: String) -> String? {
        s.split(separator: "\n").first { $0.hasPrefix(name) }.map { String($0.split(separator: ":", maxSplits: 1).last ?? "").trimmingCharacters(in: .whitespaces) }
    }
    return "\(field("model name") ?? "?") (family \(field("cpu family") ?? "?"), model \(field("model\t") ?? "?"))"
}

/// SmolLM2-135M-Instruct: dim 576, hidden 1536, 30 layers, 9 heads / 3 KV heads of 64, vocab 49152.
private let layerShapes: [(name: String, n: Int, k: Int)] = [
    ("q", 576, 576), ("k", 192, 576), ("v", 192, 576), ("o", 576, 576),
    ("gate", 1536, 576), ("up", 1536, 576), ("down", 576, 1536),
]
private let nLayers = 30, vocab = 49152, dim = 576

private func randomFloats(_ n: Int, scale: Float, seed: UInt64) -> [Float] {
    var s = seed | 1
    return (0..<n).map { _ in
        s ^= s << 13; s ^= s >> 7; s ^= s << 17
        return (Float(s >> 40) / Float(1 << 24) * 2 - 1) * scale
    }
}

private final class Packed {
    var w = ck_weights()
    init(_ values: [Float], format: Int32, n: Int, k: Int) {
        // (Not inside precondition(): -Ounchecked release builds do not evaluate its condition.)
        if ck_weights_alloc(&w, format, Int32(n), Int32(k)) != 0 { fatalError("ck_weights_alloc \(n)×\(k)") }
        _ = values.withUnsafeBufferPointer { ck_pack_f32(&w, $0.baseAddress, k, 0, Int32(n)) }
    }
    deinit { ck_weights_free(&w) }
}

/// The learner's fused attention (learner_fused.c) on the bench-learner step's shape: 12 sequences
/// of 127 tokens, SmolLM2's 9 query heads on 3 KV heads of 64; GFLOP/s of the causal products (a
/// forward is 2, a backward 5 — the recomputed scores included — products of 2·hd·n(n+1)/2 per
/// sequence and head), beside sgemm 1024³.
private func learnerAttention(sgemm: Double) {
    let nSeq = 12, n = 127, nH = 9, nKV = 3, hd = 64, T = nSeq * n, qDim = nH * hd, kvDim = nKV * hd
    let q = randomFloats(T * qDim, scale: 1, seed: 3), k = randomFloats(T * kvDim, scale: 1, seed: 4)
    let v = randomFloats(T * kvDim, scale: 1, seed: 5), dout = randomFloats(T * qDim, scale: 1, seed: 6)
    let starts = (0..<nSeq).map { Int32($0 * n) }, counts = [Int32](repeating: Int32(n), count: nSeq)
    var out = [Float](repeating: 0, count: T * qDim), lse = [Float](repeating: 0, count: T * nH)
    var dq = [Float](repeating: 0, count: T * qDim), dk = [Float](repeating: 0, count: T * kvDim), dv = dk
    let tf = timeIt {
        attention_forward_batch(&out, &lse, q, k, v, starts, counts, Int32(nSeq), Int32(nH), Int32(nKV), Int32(hd),
                                Int32(qDim), Int32(kvDim), Int32(qDim))
    }
    let tb = timeIt {
        attention_backward_batch(&dq, &dk, &dv, dout, out, lse, q, k, v, starts, counts, Int32(nSeq), Int32(nH), Int32(nKV),
                                 Int32(hd), Int32(qDim), Int32(kvDim), Int32(qDim))
    }
    // CPU seconds per call (both threads; steadier than wall time on a shared machine).
    func cpu(_ reps: Int, _ body: () -> Void) -> Double {
        var u0 = rusage(), u1 = rusage()
        getrusage(RUSAGE_SELF.rawValue, &u0)
        for _ in 0..<reps { body() }
        getrusage(RUSAGE_SELF.rawValue, &u1)
        func sec(_ u: rusage) -> Double { Double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + Double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6 }
        return (sec(u1) - sec(u0)) / Double(reps)
    }
    let cf = cpu(40) {
        attention_forward_batch(&out, &lse, q, k, v, starts, counts, Int32(nSeq), Int32(nH), Int32(nKV), Int32(hd),
                                Int32(qDim), Int32(kvDim), Int32(qDim))
    }
    let cb = cpu(20) {
        attention_backward_batch(&dq, &dk, &dv, dout, out, lse, q, k, v, starts, counts, Int32(nSeq), Int32(nH), Int32(nKV),
                                 Int32(hd), Int32(qDim), Int32(kvDim), Int32(qDim))
    }
    let product = Double(nSeq * nH) * 2 * Double(hd) * Double(n * (n + 1) / 2)
    print("\n-- learner attention (learner_fused.c), 12 sequences × 127 tokens, 9/3 heads of 64, per layer")
    print(String(format: "forward %.2f ms (%.1f GFLOP/s; %.2f ms of CPU), backward %.2f ms (%.1f GFLOP/s; %.2f ms of CPU); per bench-learner step (2 forwards, 1 backward, 30 layers) %.0f ms; sgemm 1024³ %.0f GFLOP/s",
                 tf * 1e3, 2 * product / tf / 1e9, cf * 1e3, tb * 1e3, 5 * product / tb / 1e9, cb * 1e3, 30 * (2 * tf + tb) * 1e3, sgemm))
}

/// Child mode of `--cores`: sgemm GFLOP/s for a few shapes under this process's OpenBLAS core.
private let coreShapes: [(m: Int, n: Int, k: Int)] = [(1024, 1024, 1024), (1, 576, 576), (32, 1536, 576), (256, 1536, 576),
                                                      (1536, 576, 576), (1536, 576, 1536), (1536, 49152, 576)]
private func sgemmOnly() {
    var figures: [String] = []
    for s in coreShapes {
        let a = randomFloats(s.m * s.k, scale: 1, seed: 1), b = randomFloats(s.n * s.k, scale: 1, seed: 2)
        var c = [Float](repeating: 0, count: s.m * s.n)
        let t = timeIt(samples: 5, minTime: 0.05) { matmul_forward(&c, a, b, Int32(s.m), Int32(s.k), Int32(s.n), 0) }
        figures.append(String(format: "%.1f", 2 * Double(s.m * s.n * s.k) / t / 1e9))
    }
    print("sgemm " + figures.joined(separator: " "))
}

func benchKernels(_ args: [String]) throws {
    if args.contains("--paths") {
        print("paths: bf16 \(String(cString: ck_path_name(Int32(CK_BF16)))), q8 \(String(cString: ck_path_name(Int32(CK_Q8)))), q4 \(String(cString: ck_path_name(Int32(CK_Q4))))")
        return
    }
    if args.contains("--sgemm-only") { sgemmOnly(); return }
    if args.contains("--attention-only") { learnerAttention(sgemm: sgemmGFLOPS()); return }
    let quick = args.contains("--quick")
    if let i = args.firstIndex(of: "--threads"), i + 1 < args.count, let n = Int32(args[i + 1]) {
        ck_set_threads(n)
        kernels_set_blas_threads(n)
    }
    let threads = Int(ck_threads())
    print("== bench-kernels (compact-precision products, Sources/Kernels/compact*.c)")
    print("CPU: \(cpuModel()); instruction set \(String(cString: ck_isa_name(ck_isa()))) (detected \(String(cString: ck_isa_name(ck_isa_detected())))); "
          + "paths: bf16 \(String(cString: ck_path_name(Int32(CK_BF16)))), q8 \(String(cString: ck_path_name(Int32(CK_Q8)))), q4 \(String(cString: ck_path_name(Int32(CK_Q4)))); \(threads) threads")
    print("OpenBLAS core \(String(cString: kernels_blas_core())) (best by cpuid: \(kernels_best_core_for_cpu().map { String(cString: $0) } ?? "-")), \(kernels_blas_threads()) threads")
    if let best = kernels_best_core_for_cpu(), kernels_core_rank(kernels_blas_core()) < kernels_core_rank(best) {
        print("note: OpenBLAS runs on \(String(cString: kernels_blas_core())) (OPENBLAS_CORETYPE=\(ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] ?? "unset")), "
              + "weaker than \(String(cString: best)): the sgemm figures are below what selm gets (OPENBLAS_CORETYPE=\(String(cString: best)) for those)")
    }
    print("Figures are medians of 5 timings; GB/s = bytes of weights per call / time (each call streams its weights once).")

    // Ceilings.
    let peakBF = ck_peak_bf16_gflops(Int32(threads), 0.3), peakBF1 = ck_peak_bf16_gflops(1, 0.3)
    let peakVNNI = ck_peak_vnni_gops(Int32(threads), 0.3)
    let stream = ck_stream_read_gbs(1 << 30, Int32(threads), 3), stream1 = ck_stream_read_gbs(1 << 30, 1, 3)
    let sgemm1024 = sgemmGFLOPS()
    print(String(format: "ceilings: bf16 dot peak %.0f GFLOP/s (%.0f on 1 thread); int8 VNNI peak %.0f GOP/s; streaming read %.1f GB/s (%.1f on 1 thread); sgemm 1024³ %.0f GFLOP/s",
                 peakBF, peakBF1, peakVNNI, stream, stream1, sgemm1024))

    // Engine products: y = x·Wᵀ on the model's shapes.
    print("\n-- y (M×N) = x (M×K) · Wᵀ: OpenBLAS sgemm (sgemv at M = 1) vs bf16, q8 and q4 weights")
    print("   K     N     M |  sgemm GF/s  GB/s |  bf16 GF/s  %peak  GB/s  %bw |   q8 GF/s  %peak  GB/s  %bw |   q4 GF/s  %peak  GB/s  %bw")
    let ms = quick ? [1, 32, 256] : [1, 8, 32, 256, 1536]
    let engineShapes = [(576, 576), (576, 192), (576, 1536), (576, 49152), (1536, 576)]
    for (k, n) in engineShapes {
        let w = randomFloats(n * k, scale: 0.05, seed: UInt64(n * k))
        let bf = Packed(w, format: Int32(CK_BF16), n: n, k: k), q8 = Packed(w, format: Int32(CK_Q8), n: n, k: k)
        let q4 = Packed(w, format: Int32(CK_Q4), n: n, k: k)
        for m in ms {
            let x = randomFloats(m * k, scale: 1, seed: UInt64(m))
            var y = [Float](repeating: 0, count: m * n)
            let flops = 2 * Double(m * n * k)
            let ts = timeIt { matmul_forward(&y, x, w, Int32(m), Int32(k), Int32(n), 0) }
            let tb = timeIt { ck_linear(&y, n, x, k, Int32(m), &bf.w, 0) }
            let tq = timeIt { ck_linear(&y, n, x, k, Int32(m), &q8.w, 0) }
            let t4 = timeIt { ck_linear(&y, n, x, k, Int32(m), &q4.w, 0) }
            let q4Bytes = Double(ck_weights_bytes(Int32(CK_Q4), Int32(n), Int32(k)))
            let bfBytes = Double(ck_weights_bytes(Int32(CK_BF16), Int32(n), Int32(k))), qBytes = Double(ck_weights_bytes(Int32(CK_Q8), Int32(n), Int32(k)))
            print(String(format: "%5d %5d %5d | %10.1f %5.1f | %9.1f %5.0f%% %5.1f %4.0f%% | %8.1f %5.0f%% %5.1f %4.0f%% | %8.1f %5.0f%% %5.1f %4.0f%%",
                         k, n, m, flops / ts / 1e9, 4 * Double(n * k) / ts / 1e9,
                         flops / tb / 1e9, 100 * flops / tb / 1e9 / peakBF, bfBytes / tb / 1e9, 100 * bfBytes / tb / 1e9 / stream,
                         flops / tq / 1e9, 100 * flops / tq / 1e9 / peakVNNI, qBytes / tq / 1e9, 100 * qBytes / tq / 1e9 / stream,
                         flops / t4 / 1e9, 100 * flops / t4 / 1e9 / peakVNNI, q4Bytes / t4 / 1e9, 100 * q4Bytes / t4 / 1e9 / stream))
        }
    }

    // A whole decode step's products: every layer's 7 matrices and the output head, weights from
    // memory (270 MB bf16 / 143 MB q8 / 84 MB q4 ≫ the caches) — the kernels' ceiling for decode tokens/s.
    print("\n-- one forward's linear layers (30 × 7 matrices + 49152×576 head), weights from memory")
    var layerW: [[Float]] = layerShapes.map { randomFloats($0.n * $0.k, scale: 0.05, seed: UInt64($0.n + $0.k)) }
    let headW = randomFloats(vocab * dim, scale: 0.05, seed: 99)
    for (fmt, name) in [(Int32(CK_BF16), "bf16"), (Int32(CK_Q8), "q8"), (Int32(CK_Q4), "q4")] {
        var mats: [Packed] = []
        for _ in 0..<nLayers { for (i, s) in layerShapes.enumerated() { mats.append(Packed(layerW[i], format: fmt, n: s.n, k: s.k)) } }
        let head = Packed(headW, format: fmt, n: vocab, k: dim)
        var bytes = Double(ck_weights_bytes(fmt, Int32(vocab), Int32(dim)))
        for m in mats { bytes += Double(ck_weights_bytes(fmt, m.w.N, m.w.K)) }
        for m in [1, 8, 32] {
            let x = randomFloats(m * 1536, scale: 1, seed: 5)
            var y = [Float](repeating: 0, count: m * vocab)
            let t = timeIt(samples: 5, minTime: 0.1) {
                for p in mats { ck_linear(&y, Int(p.w.N), x, Int(p.w.K), Int32(m), &p.w, 0) }
                ck_linear(&y, vocab, x, dim, Int32(m), &head.w, 0)
            }
            var flops = 2 * Double(m * vocab * dim)
            for p in mats { flops += 2 * Double(m) * Double(p.w.N) * Double(p.w.K) }
            print(String(format: "%@ M=%2d: %.2f ms = %.0f steps/s (%.0f tokens/s), %.1f GB/s (%.0f%% of streaming read), %.1f GFLOP/s",
                         name, m, t * 1e3, 1 / t, Double(m) / t, bytes / t / 1e9, 100 * bytes / t / 1e9 / stream, flops / t / 1e9))
        }
    }
    layerW = []

    // Making compact weights on the publishing thread (one thread, the pool is not used).
    print("\n-- compact copies of 135 M f32 parameters (30 layers + head), one thread")
    var sources = layerShapes.map { randomFloats($0.n * $0.k, scale: 0.05, seed: UInt64($0.n * 7 + $0.k)) }
    sources.append(headW)
    let shapes = layerShapes.map { ($0.n, $0.k) } + [(vocab, dim)]
    for (fmt, name) in [(Int32(CK_BF16), "bf16"), (Int32(CK_Q8), "q8"), (Int32(CK_Q4), "q4")] {
        let dst = shapes.map { s -> Packed in Packed([Float](repeating: 0, count: s.0 * s.1), format: fmt, n: s.0, k: s.1) }
        var params = 0.0
        let t = timeIt(samples: 3, minTime: 0) {
            params = 0
            for layer in 0..<nLayers {
                for i in 0..<layerShapes.count {
                    _ = sources[i].withUnsafeBufferPointer { ck_pack_f32(&dst[i].w, $0.baseAddress, shapes[i].1, 0, Int32(shapes[i].0)) }
                    params += Double(shapes[i].0 * shapes[i].1)
                    _ = layer
                }
            }
            let h = shapes.count - 1
            _ = sources[h].withUnsafeBufferPointer { ck_pack_f32(&dst[h].w, $0.baseAddress, dim, 0, Int32(vocab)) }
            params += Double(vocab * dim)
        }
        print(String(format: "%@: %.0f ms for %.0f M parameters (%.2f ns/parameter, %.1f GB/s read)", name, t * 1e3, params / 1e6,
                     t / params * 1e9, params * 4 / t / 1e9))
    }
    sources = []

    // The learner's products (issue 14): T = 1536 tokens, each linear layer's forward, input
    // gradient and weight gradient, OpenBLAS sgemm vs ck_gemm with bf16 operands (f32 in/out).
    print("\n-- learner products, T = 1536: sgemm (matmul_forward/backward) vs bf16 (ck_matmul_*_bf16)")
    print("   C    OC | forward sgemm  bf16 | dx sgemm  bf16 | dW sgemm  bf16 (GFLOP/s) | bf16 speed-up")
    let T = quick ? 512 : 1536
    var totalS = 0.0, totalB = 0.0
    for (c, oc, count) in [(576, 576, 2 * nLayers), (576, 192, 2 * nLayers), (576, 1536, 2 * nLayers), (1536, 576, nLayers), (576, 49152, 1)] {
        let x = randomFloats(T * c, scale: 1, seed: 3), w = randomFloats(oc * c, scale: 0.05, seed: 4), dy = randomFloats(T * oc, scale: 0.01, seed: 5)
        var y = [Float](repeating: 0, count: T * oc), dx = [Float](repeating: 0, count: T * c), dw = [Float](repeating: 0, count: oc * c)
        let flops = 2 * Double(T * c * oc)
        let fs = timeIt(samples: 3) { matmul_forward(&y, x, w, Int32(T), Int32(c), Int32(oc), 0) }
        let fb = timeIt(samples: 3) { ck_matmul_forward_bf16(&y, x, w, Int32(T), Int32(c), Int32(oc), 0) }
        let xs = timeIt(samples: 3) { matmul_backward(&dx, nil, dy, x, w, Int32(T), Int32(c), Int32(oc)) }
        let xb = timeIt(samples: 3) { ck_matmul_backward_bf16(&dx, nil, dy, x, w, Int32(T), Int32(c), Int32(oc)) }
        let ws = timeIt(samples: 3) { matmul_backward(nil, &dw, dy, x, w, Int32(T), Int32(c), Int32(oc)) }
        let wb = timeIt(samples: 3) { ck_matmul_backward_bf16(nil, &dw, dy, x, w, Int32(T), Int32(c), Int32(oc)) }
        totalS += Double(count) * (fs + xs + ws)
        totalB += Double(count) * (fb + xb + wb)
        print(String(format: "%5d %5d | %13.0f %5.0f | %8.0f %5.0f | %8.0f %5.0f            | %.2f×",
                     c, oc, flops / fs / 1e9, flops / fb / 1e9, flops / xs / 1e9, flops / xb / 1e9, flops / ws / 1e9, flops / wb / 1e9,
                     (fs + xs + ws) / (fb + xb + wb)))
    }
    print(String(format: "all of a step's linear-layer products (policy forward + backward, T = %d): sgemm %.0f ms, bf16 %.0f ms (%.2f×); bf16 peak %.0f GFLOP/s, sgemm 1024³ %.0f GFLOP/s",
                 T, totalS * 1e3, totalB * 1e3, totalS / totalB, peakBF, sgemm1024))

    learnerAttention(sgemm: sgemm1024)

    // OpenBLAS kernel cores: sgemm under each, in child processes (the core is chosen at load).
    if !quick {
        print("\n-- OpenBLAS kernel cores (OPENBLAS_CORETYPE), sgemm GFLOP/s, median of 5")
        print("core        " + coreShapes.map { String(format: "%d×%d×%d", $0.m, $0.n, $0.k) }.joined(separator: "  "))
        var best: (String, Double)? = nil
        for core in ["Haswell", "Zen", "SkylakeX", "Cooperlake"] {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: Bundle.main.executablePath ?? "/proc/self/exe")
            p.arguments = ["kernels", "--sgemm-only"] + (args.contains("--threads") ? ["--threads", String(threads)] : [])
            var env = ProcessInfo.processInfo.environment
            env["OPENBLAS_CORETYPE"] = core
            p.environment = env
            let out = Pipe()
            p.standardOutput = out
            try p.run()
            let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            let figs = text.split(separator: "\n").first { $0.hasPrefix("sgemm ") }?.split(separator: " ").dropFirst().compactMap { Double($0) } ?? []
            print(core.padding(toLength: 12, withPad: " ", startingAt: 0) + figs.map { String(format: "%9.0f", $0) }.joined(separator: " "))
            let mean = figs.isEmpty ? 0 : figs.reduce(0, +) / Double(figs.count)
            if mean > (best?.1 ?? 0) { best = (core, mean) }
        }
        if let best {
            print("fastest here: \(best.0); selm re-executes itself with \(kernels_best_core_for_cpu().map { String(cString: $0) } ?? "-") when OpenBLAS picked a weaker core (this process: \(String(cString: kernels_blas_core())))")
        }
    }
    print(String(format: "peak RSS %.0f MB", peakRSSMB()))
}
