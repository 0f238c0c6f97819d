import Foundation
import Kernels
import XCTest

/// The learner's fused attention (`attention_forward_batch` / `attention_backward_batch`, the kernels
/// of learner_fused.c) against the unfused definition computed in double precision — scores, causal
/// softmax, P·V, and the gradients written out product by product (dV = Pᵀ·dO, dP = dO·Vᵀ,
/// dS = P ⊙ (dP − rowsum(P ⊙ dP)), dQ = scale·dS·K, dK = scale·dSᵀ·Q) — whose own gradients are
/// checked by finite differences; on every instruction-set path this CPU has, for SmolLM2's shape
/// (9 query heads on 3 KV heads of 64: the AVX-512 path), a one-KV-head shape of head size 16 and a
/// head size of 24 (the portable loops everywhere). Sequence lengths cover decoding sizes (the
/// direct path), a sequence longer than one forward chunk (128 tokens) and lengths that are not
/// multiples of the blocks (16 query rows, 32 keys).
final class FusedAttentionTests: XCTestCase {
    struct Shape { var nH, nKV, hd: Int; var lens: [Int] }
    static let shapes = [
        Shape(nH: 9, nKV: 3, hd: 64, lens: [127, 1, 2, 40, 150]),
        Shape(nH: 4, nKV: 1, hd: 16, lens: [1, 7, 40, 2]),
        Shape(nH: 4, nKV: 2, hd: 24, lens: [33, 3, 1]),
    ]

    struct Problem {
        let s: Shape
        let q, k, v, dout: [Float]
        var T: Int { s.lens.reduce(0, +) }
        var qDim: Int { s.nH * s.hd }
        var kvDim: Int { s.nKV * s.hd }
        var starts: [Int32] { var a: [Int32] = []; var t = 0; for n in s.lens { a.append(Int32(t)); t += n }; return a }
        var counts: [Int32] { s.lens.map { Int32($0) } }

        init(_ s: Shape, seed: UInt64) {
            self.s = s
            var rng = TestRNG(seed)
            let T = s.lens.reduce(0, +)
            // Scores of a few units (softmax far from uniform), as in a trained model.
            let qs = Float(3 * (Double(s.hd) / 16).squareRoot())
            q = rng.floats(T * s.nH * s.hd, scale: qs); k = rng.floats(T * s.nKV * s.hd, scale: 1.5)
            v = rng.floats(T * s.nKV * s.hd); dout = rng.floats(T * s.nH * s.hd)
        }
    }

    /// The definition in double precision: out, lse and the gradients of Σ dout·out.
    struct Reference { var out, lse, dq, dk, dv: [Double] }

    static func reference(_ p: Problem, q: [Double]? = nil, k: [Double]? = nil, v: [Double]? = nil) -> Reference {
        let s = p.s, hd = s.hd, G = s.nH / s.nKV, qDim = p.qDim, kvDim = p.kvDim
        let q = q ?? p.q.map(Double.init), k = k ?? p.k.map(Double.init), v = v ?? p.v.map(Double.init)
        let dout = p.dout.map(Double.init)
        let scale = 1 / Double(hd).squareRoot()
        var r = Reference(out: .init(repeating: 0, count: p.T * qDim), lse: .init(repeating: 0, count: p.T * s.nH),
                          dq: .init(repeating: 0, count: p.T * qDim), dk: .init(repeating: 0, count: p.T * kvDim),
                          dv: .init(repeating: 0, count: p.T * kvDim))
        var t0 = 0
        for n in s.lens {
            for h in 0..<s.nH {
                let g = h / G
                func qi(_ t: Int, _ i: Int) -> Int { (t0 + t) * qDim + h * hd + i }
                func ki(_ j: Int, _ i: Int) -> Int { (t0 + j) * kvDim + g * hd + i }
                for t in 0..<n {
                    var sc = [Double](repeating: 0, count: t + 1)
                    for j in 0...t { var d = 0.0; for i in 0..<hd { d += q[qi(t, i)] * k[ki(j, i)] }; sc[j] = scale * d }
                    let mx = sc.max()!
                    let z = sc.reduce(0) { $0 + Foundation.exp($1 - mx) }
                    r.lse[(t0 + t) * s.nH + h] = mx + Foundation.log(z)
                    let P = sc.map { Foundation.exp($0 - mx) / z }
                    for i in 0..<hd { var o = 0.0; for j in 0...t { o += P[j] * v[ki(j, i)] }; r.out[qi(t, i)] = o }
                    // Backward, product by product.
                    var dP = [Double](repeating: 0, count: t + 1)
                    for j in 0...t {
                        var d = 0.0
                        for i in 0..<hd { d += dout[qi(t, i)] * v[ki(j, i)]; r.dv[ki(j, i)] += P[j] * dout[qi(t, i)] }
                        dP[j] = d
                    }
                    let rowDot = (0...t).reduce(0.0) { $0 + P[$1] * dP[$1] }
                    for j in 0...t {
                        let dS = P[j] * (dP[j] - rowDot)
                        for i in 0..<hd {
                            r.dq[qi(t, i)] += scale * dS * k[ki(j, i)]
                            r.dk[ki(j, i)] += scale * dS * q[qi(t, i)]
                        }
                    }
                }
            }
            t0 += n
        }
        return r
    }

    func forward(_ p: Problem) -> (out: [Float], lse: [Float]) {
        var out = [Float](repeating: .nan, count: p.T * p.qDim), lse = [Float](repeating: .nan, count: p.T * p.s.nH)
        attention_forward_batch(&out, &lse, p.q, p.k, p.v, p.starts, p.counts, Int32(p.s.lens.count), Int32(p.s.nH),
                                Int32(p.s.nKV), Int32(p.s.hd), Int32(p.qDim), Int32(p.kvDim), Int32(p.qDim))
        return (out, lse)
    }

    /// Gradients accumulated onto `base` (to show they are added, not written).
    func backward(_ p: Problem, out: [Float], lse: [Float], base: Float = 0) -> (dq: [Float], dk: [Float], dv: [Float]) {
        var dq = [Float](repeating: base, count: p.T * p.qDim), dk = [Float](repeating: base, count: p.T * p.kvDim)
        var dv = [Float](repeating: base, count: p.T * p.kvDim)
        attention_backward_batch(&dq, &dk, &dv, p.dout, out, lse, p.q, p.k, p.v, p.starts, p.counts, Int32(p.s.lens.count),
                                 Int32(p.s.nH), Int32(p.s.nKV), Int32(p.s.hd), Int32(p.qDim), Int32(p.kvDim), Int32(p.qDim))
        return (dq, dk, dv)
    }

    /// max |got − want| over max |want| (tensor-relative error).
    func relErr(_ got: [Float], _ want: [Double], minus base: Double = 0) -> Double {
        var e = 0.0, m = 1e-30
        for i in want.indices { e = max(e, abs(Double(got[i]) - base - want[i])); m = max(m, abs(want[i])) }
        return e / m
    }

    func testForwardAndBackwardMatchTheDefinition() {
        for (si, shape) in Self.shapes.enumerated() {
            let p = Problem(shape, seed: UInt64(10 + si))
            let ref = Self.reference(p)
            forEachISA { _, isa in
                let (out, lse) = forward(p)
                let tag = "\(isa), heads \(shape.nH)/\(shape.nKV) × \(shape.hd)"
                XCTAssertLessThan(relErr(out, ref.out), 4e-6, "\(tag): out")
                XCTAssertLessThan(relErr(lse, ref.lse), 4e-6, "\(tag): lse")
                let g = backward(p, out: out, lse: lse, base: 0.25)
                XCTAssertLessThan(relErr(g.dq, ref.dq, minus: 0.25), 1e-5, "\(tag): dq")
                XCTAssertLessThan(relErr(g.dk, ref.dk, minus: 0.25), 1e-5, "\(tag): dk")
                XCTAssertLessThan(relErr(g.dv, ref.dv, minus: 0.25), 1e-5, "\(tag): dv")
            }
        }
    }

    /// The double-precision reference's gradients are those of its forward: central differences of
    /// Σ dout·out with respect to single entries of q, k and v.
    func testReferenceGradientsAgreeWithFiniteDifferences() {
        let p = Problem(Shape(nH: 4, nKV: 2, hd: 8, lens: [5, 3]), seed: 3)
        let ref = Self.reference(p)
        let q = p.q.map(Double.init), k = p.k.map(Double.init), v = p.v.map(Double.init)
        func loss(_ r: Reference) -> Double { zip(r.out, p.dout).reduce(0) { $0 + $1.0 * Double($1.1) } }
        let h = 1e-6
        for i in stride(from: 0, to: q.count, by: 7) {
            var a = q, b = q; a[i] += h; b[i] -= h
            let fd = (loss(Self.reference(p, q: a)) - loss(Self.reference(p, q: b))) / (2 * h)
            XCTAssertEqual(fd, ref.dq[i], accuracy: 1e-7, "dq[\(i)]")
        }
        for i in stride(from: 0, to: k.count, by: 5) {
            var a = k, b = k; a[i] += h; b[i] -= h
            let fd = (loss(Self.reference(p, k: a)) - loss(Self.reference(p, k: b))) / (2 * h)
            XCTAssertEqual(fd, ref.dk[i], accuracy: 1e-7, "dk[\(i)]")
            var c = v, d = v; c[i] += h; d[i] -= h
            let fdv = (loss(Self.reference(p, v: c)) - loss(Self.reference(p, v: d))) / (2 * h)
            XCTAssertEqual(fdv, ref.dv[i], accuracy: 1e-7, "dv[\(i)]")
        }
    }

    /// A sequence's results do not depend on the batch around it (exact resume recomputes in other
    /// batches) nor on how its work is split between the two threads: the batch forward is bit for
    /// bit attention_forward on each sequence alone (the KV-store path the engine and `selm logits`
    /// take), and the batch backward bit for bit a batch of that sequence alone.
    func testEachSequenceIsComputedAsIfAlone() {
        for (si, shape) in Self.shapes.enumerated() {
            let p = Problem(shape, seed: UInt64(20 + si))
            let (out, lse) = forward(p)
            let g = backward(p, out: out, lse: lse)
            var t0 = 0
            for (i, n) in shape.lens.enumerated() {
                let qr = t0 * p.qDim..<(t0 + n) * p.qDim, kr = t0 * p.kvDim..<(t0 + n) * p.kvDim
                let one = Problem(s: Shape(nH: shape.nH, nKV: shape.nKV, hd: shape.hd, lens: [n]),
                                  q: Array(p.q[qr]), k: Array(p.k[kr]), v: Array(p.v[kr]), dout: Array(p.dout[qr]))
                var alone = [Float](repeating: .nan, count: n * p.qDim)
                var probs = [Float](repeating: 0, count: shape.nH * n * n)
                var scratch = [Float](repeating: 0, count: attention_scratch_floats(Int32(n), Int32(shape.nH), Int32(shape.hd)))
                attention_forward(&alone, &probs, one.q, one.k, one.v, Int32(n), 0, Int32(shape.nH), Int32(shape.nKV),
                                  Int32(shape.hd), Int32(p.qDim), Int32(p.kvDim), Int32(p.qDim), &scratch)
                XCTAssertEqual(alone.map(\.bitPattern), out[qr].map(\.bitPattern), "shape \(si), sequence \(i): forward")
                let (o1, l1) = forward(one)
                let g1 = backward(one, out: o1, lse: l1)
                XCTAssertEqual(l1.map(\.bitPattern), lse[t0 * shape.nH..<(t0 + n) * shape.nH].map(\.bitPattern), "shape \(si), sequence \(i): lse")
                XCTAssertEqual(g1.dq.map(\.bitPattern), g.dq[qr].map(\.bitPattern), "shape \(si), sequence \(i): dq")
                XCTAssertEqual(g1.dk.map(\.bitPattern), g.dk[kr].map(\.bitPattern), "shape \(si), sequence \(i): dk")
                XCTAssertEqual(g1.dv.map(\.bitPattern), g.dv[kr].map(\.bitPattern), "shape \(si), sequence \(i): dv")
                t0 += n
            }
        }
    }

    /// A prompt prefilled in chunks (attention_forward with p0 > 0 over the earlier keys) gets the same
    /// bits as in one pass: a query row's result does not depend on the rows computed with it.
    func testChunkedPrefillEqualsOnePass() {
        let shape = Shape(nH: 9, nKV: 3, hd: 64, lens: [300])
        let p = Problem(shape, seed: 41)
        let n = 300
        func run(_ n: Int, _ p0: Int, _ qOff: Int) -> [Float] {
            var out = [Float](repeating: .nan, count: n * p.qDim)
            var probs = [Float](repeating: 0, count: shape.nH * n * (p0 + n))
            var scratch = [Float](repeating: 0, count: attention_scratch_floats(Int32(n), Int32(shape.nH), Int32(shape.hd)))
            attention_forward(&out, &probs, Array(p.q[(qOff * p.qDim)...]), p.k, p.v, Int32(n), Int32(p0), Int32(shape.nH),
                              Int32(shape.nKV), Int32(shape.hd), Int32(p.qDim), Int32(p.kvDim), Int32(p.qDim), &scratch)
            return out
        }
        let whole = run(n, 0, 0)
        for cut in [37, 128, 200] {
            let a = run(cut, 0, 0), b = run(n - cut, cut, cut)
            XCTAssertEqual((a + b).map(\.bitPattern), whole.map(\.bitPattern), "cut at \(cut)")
        }
    }
}

extension FusedAttentionTests.Problem {
    init(s: FusedAttentionTests.Shape, q: [Float], k: [Float], v: [Float], dout: [Float]) {
        self.s = s; self.q = q; self.k = k; self.v = v; self.dout = dout
    }
}
