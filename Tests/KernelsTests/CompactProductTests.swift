import Foundation
import Kernels
import XCTest

/// The compact products (include/compact.h) on every instruction-set path against double-precision
/// references, within the formats' analytical bounds: odd sizes (K not a multiple of 32 or 64, odd
/// N, M = 1, 3, 17, 33, 130), overwrite and accumulate, one and two threads; the paths agree with
/// each other; the SELM_KERNELS variable selects the path of a new process.
final class CompactProductTests: XCTestCase {
    static let rows = [1, 3, 17, 33, 130]
    static let shapes = [(n: 1, k: 1), (n: 33, k: 37), (n: 77, k: 95), (n: 64, k: 64), (n: 31, k: 576), (n: 100, k: 200)]
    static let u = 0x1p-24

    override func tearDown() { ck_set_threads(0) }

    /// Worst |got − want| / bound over the outputs (≤ 1 passes).
    func worstRatio(_ got: [Float], _ want: [Double], _ bound: [Double]) -> Double {
        var worst = 0.0
        for i in got.indices {
            let e = abs(Double(got[i]) - want[i])
            let r = e / max(bound[i], 1e-300)
            if r.isNaN { return .infinity }
            worst = max(worst, r)
        }
        return worst
    }

    /// bf16 reference: Σ x̂·ŵ in double (x̂, ŵ the reference-rounded operands) and the f32
    /// accumulation bound 1.01·(K+2)·u·(Σ|x̂·ŵ| + |y0|).
    func bf16Reference(x: [Float], w: [Float], y0: [Float]?, M: Int, N: Int, K: Int) -> (want: [Double], bound: [Double]) {
        let xb = x.map { Double(Reference.bf16($0)) }, wb = w.map { Double(Reference.bf16($0)) }
        var want = [Double](repeating: 0, count: M * N), bound = want
        xb.withUnsafeBufferPointer { xp in
            wb.withUnsafeBufferPointer { wp in
                for m in 0..<M {
                    for n in 0..<N {
                        var s = 0.0, a = 0.0
                        for k in 0..<K {
                            let p = xp[m * K + k] * wp[n * K + k]
                            s += p; a += abs(p)
                        }
                        if let y0 { s += Double(y0[m * N + n]); a += abs(Double(y0[m * N + n])) }
                        want[m * N + n] = s
                        bound[m * N + n] = 1.01 * Double(K + 2) * Self.u * a + 1e-37
                    }
                }
            }
        }
        return (want, bound)
    }

    func testBF16LinearAllPaths() {
        var rng = TestRNG(21)
        forEachISA { _, isa in
            for threads: Int32 in [1, 2] {
                ck_set_threads(threads)
                for (si, s) in Self.shapes.enumerated() {
                    let w = rng.floats(s.n * s.k)
                    let packed = Weights.packed(w, format: Int32(CK_BF16), n: s.n, k: s.k)
                    for M in Self.rows {
                        let x = rng.floats(M * s.k), y0 = rng.floats(M * s.n)
                        let acc = (M + si) % 2 == 1
                        var y = acc ? y0 : [Float](repeating: .nan, count: M * s.n)
                        ck_linear(&y, s.n, x, s.k, Int32(M), &packed.w, acc ? 1 : 0)
                        let ref = bf16Reference(x: x, w: w, y0: acc ? y0 : nil, M: M, N: s.n, K: s.k)
                        let r = worstRatio(y, ref.want, ref.bound)
                        XCTAssertLessThanOrEqual(r, 1, "\(isa) \(threads)T bf16 M=\(M) N=\(s.n) K=\(s.k) acc=\(acc)")
                    }
                }
            }
        }
    }

    /// q8: against the exact product of the quantised operands (reference quantisers) within the
    /// accumulation bound, and against the exact f32 product within the quantisation bound.
    func testQ8LinearAllPaths() {
        var rng = TestRNG(22)
        forEachISA { _, isa in
            for threads: Int32 in [1, 2] {
                ck_set_threads(threads)
                for (si, s) in Self.shapes.enumerated() {
                    let w = rng.floats(s.n * s.k, scale: 0.1)
                    let packed = Weights.packed(w, format: Int32(CK_Q8), n: s.n, k: s.k)
                    let kb = (s.k + 31) / 32
                    // Reference weights: d_w·q_w per block (must equal the packed values: see the
                    // format tests), and the per-block d_w.
                    var wq = [Double](repeating: 0, count: s.n * s.k), wd = [Double](repeating: 0, count: s.n * kb)
                    for n in 0..<s.n {
                        for b in 0..<kb {
                            let lo = n * s.k + b * 32, hi = min(lo + 32, (n + 1) * s.k)
                            let r = Reference.q8Weights(w[lo..<hi])!
                            wd[n * kb + b] = Double(Float(r.d))
                            for i in lo..<hi { wq[i] = Double(Float(r.d)) * Double(r.q[i - lo]) }
                        }
                    }
                    for M in Self.rows {
                        let x = rng.floats(M * s.k), y0 = rng.floats(M * s.n)
                        let acc = (M + si) % 2 == 0
                        var y = acc ? y0 : [Float](repeating: .nan, count: M * s.n)
                        ck_linear(&y, s.n, x, s.k, Int32(M), &packed.w, acc ? 1 : 0)
                        var want = [Double](repeating: 0, count: M * s.n), bound = want
                        var exact = want, qbound = want
                        for m in 0..<M {
                            let xq = (0..<kb).map { b in Reference.q8Activations(x[(m * s.k + b * 32)..<min(m * s.k + b * 32 + 32, (m + 1) * s.k)]) }
                            for n in 0..<s.n {
                                var sum = 0.0, mag = 0.0, ex = 0.0, qb = 0.0
                                for b in 0..<kb {
                                    var blk = 0.0, xs = 0.0, ws = 0.0
                                    for i in 0..<xq[b].q.count {
                                        let k = b * 32 + i
                                        blk += Double(xq[b].q[i]) * wq[n * s.k + k]
                                        ex += Double(x[m * s.k + k]) * Double(w[n * s.k + k])
                                        xs += abs(Double(x[m * s.k + k])); ws += abs(wq[n * s.k + k])
                                    }
                                    let dx = Double(xq[b].d)
                                    sum += dx * blk; mag += abs(dx * blk)
                                    qb += dx / 2 * ws + wd[n * kb + b] / 2 * xs
                                }
                                let base = acc ? Double(y0[m * s.n + n]) : 0
                                want[m * s.n + n] = sum + base
                                bound[m * s.n + n] = 1.01 * Double(kb + 3) * Self.u * (mag + abs(base)) + 1e-37
                                exact[m * s.n + n] = ex + base
                                qbound[m * s.n + n] = qb * 1.001 + bound[m * s.n + n]
                            }
                        }
                        let tag = "\(isa) \(threads)T q8 M=\(M) N=\(s.n) K=\(s.k) acc=\(acc)"
                        XCTAssertLessThanOrEqual(worstRatio(y, want, bound), 1, tag + " vs quantised operands")
                        XCTAssertLessThanOrEqual(worstRatio(y, exact, qbound), 1, tag + " vs the f32 product")
                    }
                }
            }
        }
    }

    /// ck_gemm in the layouts of a linear layer's forward, input-gradient and weight-gradient
    /// products, f32 and bf16 operands, against the double reference of the bf16-rounded operands.
    func testGemmAllLayoutsAllPaths() {
        var rng = TestRNG(23)
        // (transA, transB, A bf16, B bf16, accumulate)
        let layouts = [(0, 0, false, false, false), (0, 1, true, false, true), (1, 1, false, true, true), (1, 0, true, true, false)]
        forEachISA { _, isa in
            for threads: Int32 in [1, 2] {
                ck_set_threads(threads)
                for s in Self.shapes {
                    for M in Self.rows {
                        for (ta, tb, abf, bbf, acc) in layouts {
                            let (N, K) = (s.n, s.k)
                            let a = rng.floats(M * K), b = rng.floats(N * K), c0 = rng.floats(M * N)
                            // Logical A (M×K) and B (N×K) for the reference.
                            let aL = ta == 0 ? a : (0..<M * K).map { a[($0 % K) * M + $0 / K] }
                            let bL = tb == 0 ? b : (0..<N * K).map { b[($0 % K) * N + $0 / K] }
                            var a16 = [UInt16](repeating: 0, count: a.count), b16 = [UInt16](repeating: 0, count: b.count)
                            ck_f32_to_bf16(a, &a16, a.count)
                            ck_f32_to_bf16(b, &b16, b.count)
                            var c = acc ? c0 : [Float](repeating: .nan, count: M * N)
                            a.withUnsafeBufferPointer { ap in b.withUnsafeBufferPointer { bp in
                                a16.withUnsafeBufferPointer { a16p in b16.withUnsafeBufferPointer { b16p in
                                    let A = ck_operand(data: abf ? UnsafeRawPointer(a16p.baseAddress) : UnsafeRawPointer(ap.baseAddress),
                                                       type: Int32(abf ? CK_BF16 : CK_F32), trans: Int32(ta), ld: ta == 0 ? K : M)
                                    let B = ck_operand(data: bbf ? UnsafeRawPointer(b16p.baseAddress) : UnsafeRawPointer(bp.baseAddress),
                                                       type: Int32(bbf ? CK_BF16 : CK_F32), trans: Int32(tb), ld: tb == 0 ? K : N)
                                    ck_gemm(Int32(M), Int32(N), Int32(K), A, B, &c, N, acc ? 1 : 0)
                                }}
                            }}
                            let ref = bf16Reference(x: aL, w: bL, y0: acc ? c0 : nil, M: M, N: N, K: K)
                            XCTAssertLessThanOrEqual(worstRatio(c, ref.want, ref.bound), 1,
                                                     "\(isa) \(threads)T gemm M=\(M) N=\(N) K=\(K) transA=\(ta) transB=\(tb) bf16=\(abf),\(bbf) acc=\(acc)")
                        }
                    }
                }
            }
        }
    }

    /// Large enough to take the cache-blocked path with k-blocks, m-bands and per-unit packing
    /// (A not packed up front), and packed weights as B; plus the matmul_* wrappers.
    func testGemmBlockedAndWrappers() {
        var rng = TestRNG(24)
        let (T, C, OC) = (150, 1100, 70)   // reduction over C = 1100 > one k-block
        let x = rng.floats(T * C), w = rng.floats(OC * C), dy = rng.floats(T * OC)
        let packed = Weights.packed(w, format: Int32(CK_BF16), n: OC, k: C)
        forEachISA { _, isa in
            // forward, both with f32 weights and packed weights
            var y1 = [Float](repeating: .nan, count: T * OC), y2 = y1
            ck_matmul_forward_bf16(&y1, x, w, Int32(T), Int32(C), Int32(OC), 0)
            x.withUnsafeBufferPointer { xp in
                withUnsafePointer(to: &packed.w) { wp in
                    ck_gemm(Int32(T), Int32(OC), Int32(C), ck_operand(data: xp.baseAddress, type: Int32(CK_F32), trans: 0, ld: C),
                            ck_operand(data: wp, type: Int32(CK_PACKED), trans: 0, ld: 0), &y2, OC, 0)
                }
            }
            let f = bf16Reference(x: x, w: w, y0: nil, M: T, N: OC, K: C)
            XCTAssertLessThanOrEqual(worstRatio(y1, f.want, f.bound), 1, "\(isa) forward")
            XCTAssertEqual(y1, y2, "\(isa) packed B = f32 B rounded the same way")
            // backward: dx += dy·W (reduction over OC), dW += dyᵀ·x (reduction over T = 150, M = OC)
            let dx0 = rng.floats(T * C), dw0 = rng.floats(OC * C)
            var dx = dx0, dw = dw0
            ck_matmul_backward_bf16(&dx, &dw, dy, x, w, Int32(T), Int32(C), Int32(OC))
            let wT = (0..<C * OC).map { w[($0 % OC) * C + $0 / OC] }      // (C × OC): B of dx as N×K
            let dyT = (0..<OC * T).map { dy[($0 % T) * OC + $0 / T] }     // (OC × T)
            let xT = (0..<C * T).map { x[($0 % T) * C + $0 / T] }         // (C × T)
            let gx = bf16Reference(x: dy, w: wT, y0: dx0, M: T, N: C, K: OC)
            let gw = bf16Reference(x: dyT, w: xT, y0: dw0, M: OC, N: C, K: T)
            XCTAssertLessThanOrEqual(worstRatio(dx, gx.want, gx.bound), 1, "\(isa) dx")
            XCTAssertLessThanOrEqual(worstRatio(dw, gw.want, gw.bound), 1, "\(isa) dW")
        }
    }

    /// M large enough for two m-bands (K = 700: one k-block of 350 pairs, bands of ≤ 280 rows): the
    /// unpacked B is packed whole first and shared by the bands, stored by rows and transposed.
    func testGemmSharedPackedB() {
        var rng = TestRNG(27)
        let (M, N, K) = (300, 40, 700)
        let a = rng.floats(M * K), b = rng.floats(N * K), c0 = rng.floats(M * N)
        forEachISA { _, isa in
            for threads: Int32 in [1, 2] {
                ck_set_threads(threads)
                for tb in [0, 1] {
                    let bStored = tb == 0 ? b : (0..<N * K).map { b[($0 % N) * K + $0 / N] }   // K×N when transposed
                    var c = c0
                    a.withUnsafeBufferPointer { ap in bStored.withUnsafeBufferPointer { bp in
                        ck_gemm(Int32(M), Int32(N), Int32(K), ck_operand(data: ap.baseAddress, type: Int32(CK_F32), trans: 0, ld: K),
                                ck_operand(data: bp.baseAddress, type: Int32(CK_F32), trans: Int32(tb), ld: tb == 0 ? K : N), &c, N, 1)
                    }}
                    let ref = bf16Reference(x: a, w: b, y0: c0, M: M, N: N, K: K)
                    XCTAssertLessThanOrEqual(worstRatio(c, ref.want, ref.bound), 1, "\(isa) \(threads)T transB=\(tb)")
                }
            }
        }
    }

    /// Every path gives the same results as the best one within twice the bound (the packed data
    /// are identical; only the order of f32 additions differs).
    func testPathsAgree() {
        var rng = TestRNG(25)
        let (M, N, K) = (33, 77, 300)
        let x = rng.floats(M * K), w = rng.floats(N * K, scale: 0.05)
        for format in [Int32(CK_BF16), Int32(CK_Q8)] {
            let packed = Weights.packed(w, format: format, n: N, k: K)
            var outputs: [(String, [Float])] = []
            forEachISA { _, isa in
                var y = [Float](repeating: .nan, count: M * N)
                ck_linear(&y, N, x, K, Int32(M), &packed.w, 0)
                outputs.append((isa, y))
            }
            let (best, yb) = outputs[0]
            var mag = [Double](repeating: 0, count: M * N)
            for m in 0..<M { for n in 0..<N { for k in 0..<K { mag[m * N + n] += abs(Double(x[m * K + k]) * Double(w[n * K + k])) } } }
            for (isa, y) in outputs.dropFirst() {
                let bound = mag.map { 2 * 1.01 * Double(K + 2) * Self.u * $0 * 1.02 + 1e-37 }
                XCTAssertLessThanOrEqual(worstRatio(y, yb.map(Double.init), bound), 1, "format \(format): \(isa) vs \(best)")
            }
        }
    }

    /// Two threads calling products at once: one gets the pool, the other runs alone; both right.
    /// Also the per-thread cap.
    func testConcurrentCallersAndThreadCap() {
        ck_set_threads(2)
        var rng = TestRNG(26)
        let (M, N, K) = (40, 300, 256)
        let x = rng.floats(M * K), w = rng.floats(N * K)
        let packed = Weights.packed(w, format: Int32(CK_BF16), n: N, k: K)
        var want = [Float](repeating: 0, count: M * N)
        ck_set_thread_max(1)
        ck_linear(&want, N, x, K, Int32(M), &packed.w, 0)
        ck_set_thread_max(0)
        final class Shared: @unchecked Sendable {
            let lock = NSLock()
            var mismatches = 0
            let w: Weights
            init(_ w: Weights) { self.w = w }
        }
        let shared = Shared(packed)
        let expected = want
        let group = DispatchGroup()
        for _ in 0..<4 {
            DispatchQueue.global().async(group: group) {
                for _ in 0..<50 {
                    var y = [Float](repeating: .nan, count: M * N)
                    withUnsafePointer(to: shared.w.w) { ck_linear(&y, N, x, K, Int32(M), $0, 0) }
                    if y != expected { shared.lock.lock(); shared.mismatches += 1; shared.lock.unlock() }
                }
            }
        }
        XCTAssertEqual(group.wait(timeout: .now() + 120), .success)
        XCTAssertEqual(shared.mismatches, 0, "results must not depend on how many threads ran the call")
    }

    /// SELM_KERNELS caps the instruction set of a new process; an unknown value is reported.
    func testEnvironmentSelectsPath() throws {
        let bench = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent(".build/debug/selm-bench")
        func run(_ value: String?) throws -> String {
            let p = Process()
            p.executableURL = bench
            p.arguments = ["kernels", "--paths"]
            var env = ProcessInfo.processInfo.environment
            env["SELM_KERNELS"] = value
            p.environment = env
            let out = Pipe()
            p.standardOutput = out
            p.standardError = out
            try p.run()
            let data = out.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            XCTAssertEqual(p.terminationStatus, 0)
            return String(decoding: data, as: UTF8.self)
        }
        let detected = ck_isa_detected()
        XCTAssertTrue(try run("scalar").contains("paths: bf16 scalar, q8 scalar"))
        if detected >= Int32(CK_ISA_AVX2) { XCTAssertTrue(try run("avx2").contains("paths: bf16 avx2, q8 avx2")) }
        if detected >= Int32(CK_ISA_AVX512VNNI) { XCTAssertTrue(try run("avx512vnni").contains("paths: bf16 avx2, q8 avx512vnni")) }
        if detected >= Int32(CK_ISA_AVX512BF16) { XCTAssertTrue(try run(nil).contains("paths: bf16 avx512bf16, q8 avx512vnni")) }
        let bad = try run("sse9")
        XCTAssertTrue(bad.contains("SELM_KERNELS=sse9 is not one of"), bad)
    }
}
