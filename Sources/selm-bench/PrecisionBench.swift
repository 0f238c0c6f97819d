// precision: the precision contract (README "Precision contract") — for each compact engine
// precision against the f32 engine: mean and max |Δ log-prob| per token over a fixed ~1000-token
// text (Tests/ModelTests/Fixtures/precision_text.txt), greedy agreement on 16 chat prompts × 64
// tokens, and beside them what the precision costs and buys: snapshot size, time to make a snapshot
// from f32 weights on one thread (what a publication costs the learner), batch-1 decode speed.
import Engine
import Foundation
import Kernels
import Model
import ModelBundle
import Tokenizer

func benchPrecision(_ modelPath: String) throws {
    let textPath = option("--text", "Tests/ModelTests/Fixtures/precision_text.txt")
    let textTokens = Int(option("--tokens", "1000")) ?? 1000
    let greedyTokens = Int(option("--greedy-tokens", "64")) ?? 64
    let bundle = try ModelBundle(path: modelPath)
    let base = bundle.model
    guard let text = try? String(contentsOfFile: textPath, encoding: .utf8) else {
        print("error: cannot read --text \(textPath)"); exit(1)
    }
    let tok = try bundle.tokenizer
    var ids = tok.encode(text, parseSpecial: false, addBOS: tok.addBOS)
    ids = Array(ids.prefix(min(textTokens + 1, base.config.contextLength)))
    let encoder = try bundle.textEncoder()
    let prompts = try PrecisionContract.chatPrompts.map { try encoder.chat([.user($0)]) }
    print("== bench-precision: \((modelPath as NSString).lastPathComponent), \(ids.count - 1) scored tokens of \((textPath as NSString).lastPathComponent), \(prompts.count) chat prompts × \(greedyTokens) greedy tokens")
    print("kernels: bf16 \(String(cString: ck_path_name(Int32(CK_BF16)))), q8 \(String(cString: ck_path_name(Int32(CK_Q8)))), q4 \(String(cString: ck_path_name(Int32(CK_Q4)))), \(ck_threads()) threads; f32: OpenBLAS \(String(cString: kernels_blas_core())), \(kernels_blas_threads()) threads")

    struct Run { var lp: [Float]; var greedy: [[Int32]]; var decodeTPS: Double; var pack: Double; var mb: Double }
    func run(_ p: EnginePrecision) throws -> Run {
        // The snapshot a publication makes (best of 3: the machine is shared).
        var model = try LlamaModel.inference(from: base.weights, precision: p)
        var pack = model.packSeconds
        for _ in 0..<2 {
            model = try LlamaModel.inference(from: base.weights, precision: p)
            pack = min(pack, model.packSeconds)
        }
        let lp = try PrecisionContract.tokenLogProbs(model, ids: ids)
        let t0 = now()
        let g = try PrecisionContract.greedy(model, prompts: prompts, tokens: greedyTokens)
        let dt = now() - t0
        return Run(lp: lp, greedy: g, decodeTPS: Double(g.reduce(0) { $0 + $1.count }) / dt, pack: pack,
                   mb: Double(model.weightBytes) / 1_048_576)
    }
    let ref = try run(.f32)
    print("precision  snapshot MB  snapshot made in  batch-1 decode  mean |Δ log-prob|  max |Δ log-prob|  greedy identical  mean matching prefix")
    func line(_ p: EnginePrecision, _ r: Run) {
        let d = PrecisionContract.LogProbDeviation(reference: ref.lp, other: r.lp)
        let g = PrecisionContract.GreedyAgreement(reference: ref.greedy, other: r.greedy)
        print(String(format: "%-9@  %11.1f  %14.3f s  %9.1f tok/s  %17.5f  %16.4f  %10d / %-3d  %15.1f / %d",
                     p.rawValue as NSString, r.mb, r.pack, r.decodeTPS, d.mean, d.max, Int((g.identical * Double(g.prompts)).rounded()),
                     g.prompts, g.meanPrefix, g.tokens))
    }
    line(.f32, ref)
    for p in [EnginePrecision.bf16, .q8, .q4] { line(p, try run(p)) }
    print("(batch-1 decode here: the offline generator, prefill included; f32 snapshot: a copy of the weights. The default engine precision is \(EnginePrecision.servingDefault).)")
    print(String(format: "peak RSS %.0f MB", peakRSSMB()))
}
