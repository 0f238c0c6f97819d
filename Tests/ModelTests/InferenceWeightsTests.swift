import Foundation
import Kernels
@testable import Model
import XCTest

/// The engine's inference weights (issue 13): an f32 model computes exactly today's forward (the
/// same OpenBLAS calls on the same pointers), and a compact model (bf16, q8) holds packed linear
/// weights plus f32 embedding table and norms, no f32 linear weights.
final class InferenceWeightsTests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")

    func tiny(_ name: String) throws -> LlamaModel {
        try LlamaModel.load(huggingFaceDirectory: Self.fixtures.appendingPathComponent(name).path)
    }

    /// The forward pass as it was before compact weights (one sequence from position 0, no KV
    /// store): `matmul_forward` on the ParameterSet's pointers for every linear layer.
    func referenceLogits(_ m: LlamaModel, _ ids: [Int32]) -> [Float] {
        let c = m.config, w = m.weights, T = ids.count
        let dim = Int32(c.dim), qDim = Int32(c.qDim), kvDim = Int32(c.kvDim), hidden = Int32(c.hiddenDim)
        let hd = Int32(c.headDim), nH = Int32(c.nHeads), nKV = Int32(c.nKVHeads), T32 = Int32(T)
        func buf(_ n: Int) -> [Float] { [Float](repeating: 0, count: n) }
        var x = buf(T * c.dim), xn = buf(T * c.dim), rstd = buf(T), q = buf(T * c.qDim), k = buf(T * c.kvDim)
        var v = buf(T * c.kvDim), att = buf(T * c.qDim), probs = buf(c.nHeads * T * T), gate = buf(T * c.hiddenDim)
        var up = buf(T * c.hiddenDim), h = buf(T * c.hiddenDim), cosT = buf(T * c.headDim / 2), sinT = buf(T * c.headDim / 2)
        var scratch = buf(attention_scratch_floats(T32, nH, hd) + 1), logits = buf(T * c.vocabSize)
        let positions = (0..<T32).map { $0 }
        rope_tables(&cosT, &sinT, positions, T32, hd, c.ropeTheta)
        embedding_forward(&x, ids, w.tokenEmbedding, T32, dim)
        for l in 0..<c.nLayers {
            let p = w.layers[l]
            rmsnorm_forward(&xn, &rstd, x, p.attnNorm, T32, dim, c.rmsEps)
            matmul_forward(&q, xn, p.wq, T32, dim, qDim, 0)
            matmul_forward(&k, xn, p.wk, T32, dim, kvDim, 0)
            matmul_forward(&v, xn, p.wv, T32, dim, kvDim, 0)
            rope_forward(&q, cosT, sinT, T32, nH, hd, qDim)
            rope_forward(&k, cosT, sinT, T32, nKV, hd, kvDim)
            attention_forward(&att, &probs, q, k, v, T32, 0, nH, nKV, hd, qDim, kvDim, qDim, &scratch)
            matmul_forward(&x, att, p.wo, T32, qDim, dim, 1)
            rmsnorm_forward(&xn, &rstd, x, p.mlpNorm, T32, dim, c.rmsEps)
            matmul_forward(&gate, xn, p.wGate, T32, dim, hidden, 0)
            matmul_forward(&up, xn, p.wUp, T32, dim, hidden, 0)
            swiglu_forward(&h, gate, up, T * c.hiddenDim)
            matmul_forward(&x, h, p.wDown, T32, hidden, dim, 1)
        }
        rmsnorm_forward(&xn, &rstd, x, w.finalNorm, T32, dim, c.rmsEps)
        matmul_forward(&logits, xn, w.lmHead, T32, dim, Int32(c.vocabSize), 0)
        return logits
    }

    func logits(_ m: LlamaModel, _ ids: [Int32]) throws -> [Float] {
        var b = ForwardBatch()
        b.append(ids, startPos: 0, slot: 0, logits: .all)
        let acts = Activations(config: m.config)
        let p = try m.forward(b, kv: nil, acts: acts)
        return Array(UnsafeBufferPointer(start: p, count: ids.count * m.config.vocabSize))
    }

    func ids(_ n: Int, vocab: Int, seed: UInt64) -> [Int32] {
        var s = seed
        return (0..<n).map { _ in s = s &* 6364136223846793005 &+ 1442695040888963407; return Int32((s >> 33) % UInt64(vocab)) }
    }

    func testF32IsBitForBitTheForwardOfBefore() throws {
        for name in ["tiny-untied", "tiny-tied"] {
            let m = try tiny(name)
            for (n, seed) in [(1, 1), (7, 2), (40, 3)] {
                let t = ids(n, vocab: m.config.vocabSize, seed: UInt64(seed))
                let ref = referenceLogits(m, t)
                let mine = try logits(m, t)
                XCTAssertEqual(mine.map(\.bitPattern), ref.map(\.bitPattern), "\(name), \(n) tokens")
                // The engine's f32 snapshot (a copy) computes the same bits.
                let snap = try LlamaModel.inference(from: m.weights, precision: .f32)
                XCTAssertEqual(snap.precision, .f32)
                XCTAssertEqual(try logits(snap, t).map(\.bitPattern), ref.map(\.bitPattern), "\(name), \(n) tokens, snapshot")
            }
        }
    }

    func testCompactModelHoldsPackedLinearsAndF32EmbeddingAndNorms() throws {
        for name in ["tiny-untied", "tiny-tied"] {
            let m = try tiny(name)
            let c = m.config
            for p in [EnginePrecision.bf16, .q8] {
                let cm = try LlamaModel.inference(from: m.weights, precision: p)
                XCTAssertEqual(cm.precision, p)
                XCTAssertNil(cm.f32Weights, "a compact model keeps no f32 weights")
                var packed = 0
                for s in CompactStore.shapes(c) { packed += ck_weights_bytes(p == .bf16 ? Int32(CK_BF16) : Int32(CK_Q8), Int32(s.n), Int32(s.k)) }
                let f32Part = 4 * (c.vocabSize * c.dim + (1 + 2 * c.nLayers) * c.dim)
                XCTAssertEqual(cm.weightBytes, packed + f32Part, "\(name) \(p)")
                // The embedding table is f32 and exact: the first layer's input is the same rows.
                let t = ids(5, vocab: c.vocabSize, seed: 9)
                let a = try logits(cm, t), b = try logits(m, t)
                XCTAssertTrue(a.allSatisfy(\.isFinite))
                XCTAssertNotEqual(a, b, "\(p) products differ from f32 in the last bits at least")
                // The snapshot does not depend on the source after the call.
                let src = m.weights.copy()
                let cm2 = try LlamaModel.inference(from: src, precision: p)
                src.zero()
                XCTAssertEqual(try logits(cm2, t).map(\.bitPattern), a.map(\.bitPattern), "\(name) \(p): packing is a copy")
            }
        }
    }

    func testNonFiniteWeightsAreRefusedByQ8() throws {
        let m = try tiny("tiny-untied")
        let w = m.weights.copy()
        w.layers[1].wUp[3] = .nan
        XCTAssertThrowsError(try LlamaModel.inference(from: w, precision: .q8)) { e in
            guard case ModelError.badInput(let field, let reason) = e else { return XCTFail("\(e)") }
            XCTAssertEqual(field, "weights")
            XCTAssertTrue(reason.contains("1 blocks"), reason)
        }
    }
}

/// Compact products share the cores as the BLAS does (README "Two cores, one BLAS"): under
/// `adaptive` a product runs on one kernel thread while another compute thread is inside a pass,
/// on all of them otherwise; results do not depend on it.
final class CompactSharingTests: XCTestCase {
    override func tearDown() { kernels_set_sharing(Int32(KERNELS_SHARING_NONE), 2e9) }

    func testAdaptiveCapsCompactProductsWhileBothCompute() throws {
        guard ck_threads() >= 2 else { throw XCTSkip("one kernel thread: nothing to cap") }
        let N = 256, K = 128, M = 4
        var w = ck_weights()
        XCTAssertEqual(ck_weights_alloc(&w, Int32(CK_Q8), Int32(N), Int32(K)), 0)
        defer { ck_weights_free(&w) }
        let src = (0..<N * K).map { Float(($0 * 7919) % 997) / 997 - 0.5 }
        XCTAssertEqual(ck_pack_f32(&w, src, K, 0, Int32(N)), 0)
        let x = (0..<M * K).map { Float(($0 * 104729) % 991) / 991 - 0.5 }
        var alone = [Float](repeating: 0, count: M * N), shared = alone
        kernels_set_sharing(Int32(KERNELS_SHARING_ADAPTIVE), 0)

        kernels_compute_enter()
        compact_linear_forward(&alone, x, &w, Int32(M), 0)
        XCTAssertEqual(kernels_compact_last_threads(), ck_threads(), "a lone compute thread gets every kernel thread")

        // Another compute thread (the learner) is inside a pass until told to leave.
        let entered = DispatchSemaphore(value: 0), leave = DispatchSemaphore(value: 0), left = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            kernels_compute_enter(); entered.signal()
            leave.wait()
            kernels_compute_exit(); left.signal()
        }
        entered.wait()
        compact_linear_forward(&shared, x, &w, Int32(M), 0)
        XCTAssertEqual(kernels_compact_last_threads(), 1, "while both compute, one kernel thread each")
        XCTAssertEqual(shared.map(\.bitPattern), alone.map(\.bitPattern))
        leave.signal(); left.wait()
        compact_linear_forward(&shared, x, &w, Int32(M), 0)
        XCTAssertEqual(kernels_compact_last_threads(), ck_threads())
        kernels_compute_exit()
    }
}

/// A model file's Q8_0 tensors survive the load (dequantised to f32) and the q8 packing exactly:
/// packing the loaded f32 gives the same bytes as packing the file's blocks directly
/// (`ck_pack_q8_0`). llama.cpp's quantiser (d = amax/127 stored as float16, q = round(x/d)) gives
/// every block's largest value |q| = 127, so the scale found again from d·q is the file's d.
final class Q8FromGGUFTests: XCTestCase {
    func testPackingTheLoadedQ8_0IsExact() throws {
        let N = 48, K = 96, blocks = K / 32
        var raw = [UInt8](repeating: 0, count: N * blocks * 34)
        var f32 = [Float](repeating: 0, count: N * K)
        var s: UInt64 = 11
        func next() -> Float { s = s &* 6364136223846793005 &+ 1442695040888963407; return Float(Int64(bitPattern: s) >> 11) / Float(1 << 52) }
        for r in 0..<N {
            for b in 0..<blocks {
                let scale = Float(1 << (r % 7)) * 0.01
                let x = (0..<32).map { _ in next() * scale }
                let amax = x.map(abs).max()!
                let d = amax / 127, id: Float = d != 0 ? 1 / d : 0
                let dh = Float16(d)
                let o = (r * blocks + b) * 34
                withUnsafeBytes(of: dh.bitPattern.littleEndian) { raw[o] = $0[0]; raw[o + 1] = $0[1] }
                for j in 0..<32 {
                    let q = Int8(max(-127, min(127, (x[j] * id).rounded())))   // llama.cpp: roundf
                    raw[o + 2 + j] = UInt8(bitPattern: q)
                    f32[r * K + b * 32 + j] = Float(dh) * Float(q)            // what the loader dequantises
                }
            }
        }
        var a = ck_weights(), b = ck_weights()
        XCTAssertEqual(ck_weights_alloc(&a, Int32(CK_Q8), Int32(N), Int32(K)), 0)
        XCTAssertEqual(ck_weights_alloc(&b, Int32(CK_Q8), Int32(N), Int32(K)), 0)
        defer { ck_weights_free(&a); ck_weights_free(&b) }
        XCTAssertEqual(ck_pack_f32(&a, f32, K, 0, Int32(N)), 0)
        XCTAssertEqual(ck_pack_q8_0(&b, raw, blocks * 34, 0, Int32(N)), 0)
        XCTAssertEqual(memcmp(a.data, b.data, ck_weights_bytes(Int32(CK_Q8), Int32(N), Int32(K))), 0, "the same packed bytes")
    }
}
