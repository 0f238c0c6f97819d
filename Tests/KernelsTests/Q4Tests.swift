import Foundation
import Kernels
import XCTest

/// The 4-bit format CK_Q4 (include/compact.h): its quantiser against a reference written from the
/// format's definition, the packed bytes identical on every instruction-set path (from f32 and
/// bf16), ck_unpack_row, non-finite blocks counted, GGUF Q4_1 blocks coming back exactly, and the
/// product on every path against double-precision references within the stated bound.
final class Q4Tests: XCTestCase {
    static let u = 0x1p-24

    override func tearDown() { ck_set_threads(0) }

    /// The q4 quantiser of compact.h, in f32 arithmetic: m = f16(min) (+0 for a zero), d = f16(max(max − m, 0)/15),
    /// q = clamp(rne((w − m)·(1/d)), 0, 15). nil for a bad block.
    static func q4Weights(_ w: ArraySlice<Float>) -> (d: Float16, m: Float16, q: [UInt8])? {
        if w.contains(where: { !$0.isFinite }) { return nil }
        let lo = w.min()!, hi = w.max()!
        if lo.magnitude > 65504 { return nil }
        var m = Float16(lo)
        if m == 0 { m = 0 }   // a zero minimum is +0
        let dr = max(hi - Float(m), 0) / 15
        if dr > 65504 { return nil }
        let d = Float16(dr)
        let id: Float = d == 0 ? 0 : 1 / Float(d)
        return (d, m, w.map { UInt8(max(0, min(15, ((($0 - Float(m)) * id).rounded(.toNearestOrEven))))) })
    }

    /// ε_w of compact.h: the largest |w − (d·q + m)| the quantiser may leave.
    static func q4WeightBound(d: Float16, m: Float16) -> Double {
        0.501 * Double(d) + 0x1p-11 * abs(Double(m)) + 0x1p-21
    }

    /// Blocks of different kinds: uniform, all one sign, constant, tiny (subnormal float16 scales),
    /// large, one outlier.
    static func blocks(_ rng: inout TestRNG) -> [[Float]] {
        var out: [[Float]] = []
        for s: Float in [1, 0.02, 3e-6, 1e-9, 700, 30000] {
            out.append(rng.floats(32, scale: s))
            out.append(rng.floats(32, scale: s).map { abs($0) + s / 2 })
            out.append(rng.floats(32, scale: s).map { -abs($0) - s / 3 })
            var o = rng.floats(32, scale: s / 100); o[7] = s
            out.append(o)
        }
        out.append([Float](repeating: 0.3, count: 32))
        out.append([Float](repeating: 0, count: 32))
        out.append([-0.0, 0.5, 0, 0.25, -1e-9] + [Float](repeating: 0.125, count: 27))   // minimum rounds to −0: stored +0
        out.append(Array(rng.floats(32)[0..<13]))   // a partial block (K not a multiple of 32)
        return out
    }

    func testQuantiserFollowsTheDefinitionAndItsBound() {
        var rng = TestRNG(41)
        for (i, blk) in Self.blocks(&rng).enumerated() {
            var q = [UInt8](repeating: 99, count: 32)
            var mb: UInt16 = 0
            var bad: Int32 = -1
            let db = ck_q4_quantize_block(blk, Int32(blk.count), &q, &mb, &bad)
            let ref = Self.q4Weights(blk[...])!
            XCTAssertEqual(bad, 0)
            XCTAssertEqual(db, ref.d.bitPattern, "block \(i): d")
            XCTAssertEqual(mb, ref.m.bitPattern, "block \(i): m")
            XCTAssertEqual(Array(q[0..<blk.count]), ref.q, "block \(i): q")
            XCTAssertTrue(q[blk.count...].allSatisfy { $0 == 0 }, "block \(i): zero past n")
            let bound = Self.q4WeightBound(d: ref.d, m: ref.m)
            for (k, w) in blk.enumerated() {
                let e = abs(Double(ref.d) * Double(ref.q[k]) + Double(ref.m) - Double(w))
                XCTAssertLessThanOrEqual(e, bound, "block \(i) value \(k): \(w)")
            }
        }
        // Bad blocks: NaN, ±Inf, a minimum beyond float16, a range beyond 15·65504.
        for blk: [Float] in [[1, .nan, 2], [.infinity, 0], [-.infinity], [-70000, 1], [-60000, 1e6]] {
            var q = [UInt8](repeating: 0, count: 32)
            var mb: UInt16 = 0
            var bad: Int32 = 0
            let db = ck_q4_quantize_block(blk, Int32(blk.count), &q, &mb, &bad)
            XCTAssertEqual(bad, 1, "\(blk)")
            XCTAssertTrue(Float16(bitPattern: db).isNaN && Float16(bitPattern: mb).isNaN, "\(blk)")
        }
    }

    /// Packing from f32 and from bf16 gives the same bytes on every path; ck_unpack_row gives
    /// d·q + m of the reference quantiser; non-finite blocks are counted and unpack as NaN.
    func testPackingIsIdenticalOnEveryPathAndUnpacks() {
        var rng = TestRNG(42)
        for (n, k) in [(1, 32), (17, 95), (33, 576), (130, 64)] {
            let w = rng.floats(n * k, scale: 0.1)
            var w16 = [UInt16](repeating: 0, count: w.count)
            ck_f32_to_bf16(w, &w16, w.count)
            let wb = w16.map { Float(bitPattern: UInt32($0) << 16) }
            let bytes = Int(ck_weights_bytes(Int32(CK_Q4), Int32(n), Int32(k)))
            XCTAssertEqual(bytes, (n + 15) / 16 * ((k + 31) / 32) * 320)
            var first: [UInt8]? = nil
            forEachISA { _, isa in
                let a = Weights.packed(w, format: Int32(CK_Q4), n: n, k: k)
                let b = Weights(format: Int32(CK_Q4), n: n, k: k)
                XCTAssertEqual(w16.withUnsafeBufferPointer { ck_pack_bf16(&b.w, $0.baseAddress, k, 0, Int32(n)) }, 0)
                let c = Weights.packed(wb, format: Int32(CK_Q4), n: n, k: k)
                let got = Array(UnsafeRawBufferPointer(start: a.w.data, count: bytes).bindMemory(to: UInt8.self))
                if let first { XCTAssertEqual(got, first, "\(isa): the same bytes as the first path") } else { first = got }
                XCTAssertEqual(memcmp(b.w.data, c.w.data, bytes), 0, "\(isa): bf16 source = its f32 values")
                for r in 0..<n {
                    let row = a.row(r)
                    for b0 in stride(from: 0, to: k, by: 32) {
                        let ref = Self.q4Weights(w[(r * k + b0)..<(r * k + min(b0 + 32, k))])!
                        for i in 0..<ref.q.count {
                            XCTAssertEqual(row[b0 + i], Float(ref.d) * Float(ref.q[i]) + Float(ref.m), "\(isa) \(n)×\(k) row \(r) col \(b0 + i)")
                        }
                    }
                }
            }
        }
        // The quantiser's special blocks (tiny, constant, signed zeros, bad) as rows: the same bytes
        // and counts on every path.
        var special = Self.blocks(&rng).filter { $0.count == 32 }
        special += [[Float](repeating: .nan, count: 32), [1e6, -60000] + [Float](repeating: 0, count: 30)]
        let flat = special.flatMap { $0 }
        let bytes = Int(ck_weights_bytes(Int32(CK_Q4), Int32(special.count), 32))
        var firstSpecial: [UInt8]? = nil
        forEachISA { _, isa in
            let p = Weights(format: Int32(CK_Q4), n: special.count, k: 32)
            XCTAssertEqual(flat.withUnsafeBufferPointer { ck_pack_f32(&p.w, $0.baseAddress, 32, 0, Int32(special.count)) }, 2, isa)
            let got = Array(UnsafeRawBufferPointer(start: p.w.data, count: bytes).bindMemory(to: UInt8.self))
            if let firstSpecial { XCTAssertEqual(got, firstSpecial, "\(isa): special blocks packed as on the first path") } else { firstSpecial = got }
        }
        // Non-finite and out-of-range blocks: counted, their rows' blocks NaN, the others intact.
        var w = rng.floats(20 * 64)
        w[3] = .nan; w[64 + 40] = .infinity; w[17 * 64] = -1e6; w[19 * 64 + 63] = -.infinity
        forEachISA { _, isa in
            let p = Weights(format: Int32(CK_Q4), n: 20, k: 64)
            XCTAssertEqual(w.withUnsafeBufferPointer { ck_pack_f32(&p.w, $0.baseAddress, 64, 0, 16) }, 2, isa)
            XCTAssertEqual(w.withUnsafeBufferPointer { ck_pack_f32(&p.w, $0.baseAddress!, 64, 16, 20) }, 2, isa)
            XCTAssertTrue(p.row(0)[0..<32].allSatisfy { $0.isNaN } && !p.row(0)[32..<64].contains { $0.isNaN }, isa)
            XCTAssertTrue(p.row(1)[32..<64].allSatisfy { $0.isNaN }, isa)
            XCTAssertTrue(p.row(17)[0..<32].allSatisfy { $0.isNaN }, isa)
            XCTAssertFalse(p.row(2).contains { $0.isNaN }, isa)
            XCTAssertEqual(w.withUnsafeBufferPointer { ck_pack_f32(&p.w, $0.baseAddress, 64, 0, 15) }, -1, "a range ending inside a panel")
        }
    }

    /// GGUF Q4_1 blocks made by llama.cpp's quantiser come back exactly, through their dequantised
    /// values (ck_pack_f32) and as blocks (ck_pack_q4_1): the same packed bytes, and ck_unpack_row
    /// gives the file's values bit for bit.
    func testQ4_1BlocksComeBackExactly() {
        var rng = TestRNG(43)
        let (n, k) = (35, 192)
        let kb = k / 32
        var raw = [UInt8](repeating: 0, count: n * kb * 20)
        for blk in 0..<(n * kb) {
            let s: Float = [1, 0.01, 40, 1e-4][blk % 4]
            let x = rng.floats(32, scale: s).map { $0 + (blk % 3 == 0 ? s : 0) }
            // llama.cpp quantize_row_q4_1_ref
            let lo = x.min()!, hi = x.max()!
            let d = (hi - lo) / 15, id: Float = d != 0 ? 1 / d : 0
            let dh = Float16(d).bitPattern, mh = Float16(lo).bitPattern
            let o = blk * 20
            raw[o] = UInt8(dh & 0xFF); raw[o + 1] = UInt8(dh >> 8); raw[o + 2] = UInt8(mh & 0xFF); raw[o + 3] = UInt8(mh >> 8)
            for j in 0..<16 {
                let q0 = min(15, UInt8((x[j] - lo) * id + 0.5)), q1 = min(15, UInt8((x[j + 16] - lo) * id + 0.5))
                raw[o + 4 + j] = q0 | q1 << 4
            }
        }
        var values = [Float](repeating: 0, count: n * k)
        XCTAssertEqual(dequant_row(UInt32(DEQUANT_TYPE_Q4_1), raw, &values, values.count), 0)
        let bytes = Int(ck_weights_bytes(Int32(CK_Q4), Int32(n), Int32(k)))
        forEachISA { _, isa in
            let a = Weights.packed(values, format: Int32(CK_Q4), n: n, k: k)
            let b = Weights(format: Int32(CK_Q4), n: n, k: k)
            XCTAssertEqual(ck_pack_q4_1(&b.w, raw, kb * 20, 0, Int32(n)), 0)
            XCTAssertEqual(memcmp(a.w.data, b.w.data, bytes), 0, "\(isa): packing the dequantised values = copying the blocks")
            for r in 0..<n { XCTAssertEqual(a.row(r), Array(values[(r * k)..<((r + 1) * k)]), "\(isa) row \(r)") }
        }
        let q8 = Weights(format: Int32(CK_Q8), n: n, k: k)
        XCTAssertEqual(ck_pack_q4_1(&q8.w, raw, kb * 20, 0, Int32(n)), -1, "not a q4 matrix")
    }

    /// ck_linear with q4 weights on every path, one and two threads, overwrite and accumulate: within
    /// the accumulation bound of the exact product of the quantised operands (reference
    /// quantisers), and within the stated bound of the exact f32 product.
    func testQ4LinearAllPaths() {
        var rng = TestRNG(44)
        let shapes = [(n: 1, k: 32), (n: 3, k: 64), (n: 17, k: 96), (n: 33, k: 576), (n: 130, k: 160), (n: 77, k: 95)]
        forEachISA { _, isa in
            XCTAssertEqual(String(cString: ck_path_name(Int32(CK_Q4))), isa == "avx512bf16" ? "avx512vnni" : isa)
        }
        for (si, s) in shapes.enumerated() {
            let w = rng.floats(s.n * s.k, scale: 0.1).map { $0 + 0.02 }
            let packed = Weights.packed(w, format: Int32(CK_Q4), n: s.n, k: s.k)
            let kb = (s.k + 31) / 32
            var wq = [Double](repeating: 0, count: s.n * s.k), wqi = wq
            var wd = [Double](repeating: 0, count: s.n * kb), wm = wd, we = wd
            for n in 0..<s.n {
                for b in 0..<kb {
                    let lo = n * s.k + b * 32, hi = min(lo + 32, (n + 1) * s.k)
                    let r = Self.q4Weights(w[lo..<hi])!
                    wd[n * kb + b] = Double(r.d); wm[n * kb + b] = Double(r.m)
                    we[n * kb + b] = Self.q4WeightBound(d: r.d, m: r.m)
                    for i in lo..<hi {
                        wqi[i] = Double(r.q[i - lo])
                        wq[i] = Double(r.d) * wqi[i] + Double(r.m)
                    }
                }
            }
            for M in [1, 3, 17, 33, 130] {
                let x = rng.floats(M * s.k), y0 = rng.floats(M * s.n)
                let acc = (M + si) % 2 == 0
                var want = [Double](repeating: 0, count: M * s.n), bound = want, exact = want, qbound = want
                for m in 0..<M {
                    let xq = (0..<kb).map { b in Reference.q8Activations(x[(m * s.k + b * 32)..<min(m * s.k + b * 32 + 32, (m + 1) * s.k)]) }
                    for n in 0..<s.n {
                        var sum = 0.0, mag = 0.0, ex = 0.0, qb = 0.0
                        for b in 0..<kb {
                            var iw = 0.0, sx = 0.0, xs = 0.0, ws = 0.0
                            for i in 0..<xq[b].q.count {
                                let k = b * 32 + i
                                iw += Double(xq[b].q[i]) * wqi[n * s.k + k]
                                sx += Double(xq[b].q[i])
                                ex += Double(x[m * s.k + k]) * Double(w[n * s.k + k])
                                xs += abs(Double(x[m * s.k + k])); ws += abs(wq[n * s.k + k])
                            }
                            let dx = Double(xq[b].d)
                            let t1 = wd[n * kb + b] * dx * iw, t2 = wm[n * kb + b] * dx * sx
                            sum += t1 + t2; mag += abs(t1) + abs(t2)
                            qb += dx / 2 * ws + we[n * kb + b] * xs
                        }
                        let base = acc ? Double(y0[m * s.n + n]) : 0
                        want[m * s.n + n] = sum + base
                        bound[m * s.n + n] = 1.01 * Double(2 * kb + 4) * Self.u * (mag + abs(base)) + 1e-37
                        exact[m * s.n + n] = ex + base
                        qbound[m * s.n + n] = qb * 1.001 + bound[m * s.n + n]
                    }
                }
                forEachISA { _, isa in
                    for threads: Int32 in [1, 2] {
                        ck_set_threads(threads)
                        var y = acc ? y0 : [Float](repeating: .nan, count: M * s.n)
                        ck_linear(&y, s.n, x, s.k, Int32(M), &packed.w, acc ? 1 : 0)
                        let tag = "\(isa) \(threads)T q4 M=\(M) N=\(s.n) K=\(s.k) acc=\(acc)"
                        XCTAssertLessThanOrEqual(Self.worstRatio(y, want, bound), 1, tag + " vs quantised operands")
                        XCTAssertLessThanOrEqual(Self.worstRatio(y, exact, qbound), 1, tag + " vs the f32 product")
                    }
                }
            }
        }
    }

    /// Worst |got − want| / bound (≤ 1 passes; NaN fails).
    static func worstRatio(_ got: [Float], _ want: [Double], _ bound: [Double]) -> Double {
        var worst = 0.0
        for i in got.indices {
            let r = abs(Double(got[i]) - want[i]) / max(bound[i], 1e-300)
            if r.isNaN { return .infinity }
            worst = max(worst, r)
        }
        return worst
    }
}
