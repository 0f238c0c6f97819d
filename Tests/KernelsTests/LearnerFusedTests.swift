import Foundation
import Kernels
import XCTest

/// learner_fused.c's vectorised exponentials against libm in double precision, on every
/// implementation this CPU has (AVX-512, AVX2, scalar).
final class LearnerFusedTests: XCTestCase {
    /// exp within 2 ulp over the whole finite range, 0 below −87.34, +Inf above 88.72, NaN kept.
    func testExpAccuracyAndEdges() {
        forEachISA { _, name in
            var worst = 0.0
            var x: Float = -87.3
            while x < 88.7 {
                let want = Foundation.exp(Double(x)), got = Double(lf_exp(x))
                let ulp = Double(Float(want).ulp)
                worst = max(worst, abs(got - want) / ulp)
                x += 0.0137
            }
            XCTAssertLessThanOrEqual(worst, 2.0, "\(name): worst exp error \(worst) ulp")
            XCTAssertEqual(lf_exp(0), 1, "\(name)")
            XCTAssertEqual(lf_exp(-200), 0, "\(name)")
            XCTAssertEqual(lf_exp(-.infinity), 0, "\(name)")
            XCTAssertEqual(lf_exp(200), .infinity, "\(name)")
            XCTAssertEqual(lf_exp(.infinity), .infinity, "\(name)")
            XCTAssertTrue(lf_exp(.nan).isNaN, "\(name)")
        }
    }

    /// Log-sum-exp, the gathered log-prob gradient row and SwiGLU forward/backward equal their
    /// definitions (double precision) within float rounding, tails included (lengths not a
    /// multiple of the vector width).
    func testRowsMatchDefinitions() {
        forEachISA { _, name in
            var rng = TestRNG(7)
            for n in [1, 7, 16, 33, 1000] {
                let x = rng.floats(n, scale: 20)
                let mx = Double(x.max()!)
                let lse = mx + Foundation.log(x.reduce(0.0) { $0 + Foundation.exp(Double($1) - mx) })
                XCTAssertEqual(Double(lf_logsumexp_row(x, Int32(n))), lse, accuracy: 1e-5 * max(1, abs(lse)), "\(name) n \(n)")
                var d = [Float](repeating: 0, count: n)
                lf_scaled_exp_row(&d, x, Int32(n), Float(lse), -0.5)
                for i in 0..<n {
                    // x − l is rounded to float first (|x − l| < 64: ≤ 4e-6 absolute, so ≤ 4e-6 relative in exp).
                    let want = -0.5 * Foundation.exp(Double(x[i]) - Double(Float(lse)))
                    XCTAssertEqual(Double(d[i]), want, accuracy: 5e-6 * abs(want), "\(name) n \(n) i \(i)")
                }
                let g = rng.floats(n, scale: 8), u = rng.floats(n), dh = rng.floats(n)
                var h = [Float](repeating: 0, count: n)
                var dg = [Float](repeating: 1, count: n), du = [Float](repeating: 2, count: n)
                lf_swiglu_forward(&h, g, u, n)
                lf_swiglu_backward(&dg, &du, dh, g, u, n, 1)
                for i in 0..<n {
                    let gi = Double(g[i]), s = 1 / (1 + Foundation.exp(-gi))
                    XCTAssertEqual(Double(h[i]), gi * s * Double(u[i]), accuracy: 1e-5, "\(name) swiglu n \(n) i \(i)")
                    XCTAssertEqual(Double(du[i]), 2 + Double(dh[i]) * gi * s, accuracy: 1e-5, "\(name) dup n \(n) i \(i)")
                    XCTAssertEqual(Double(dg[i]), 1 + Double(dh[i]) * Double(u[i]) * s * (1 + gi * (1 - s)), accuracy: 1e-5,
                                   "\(name) dgate n \(n) i \(i)")
                }
                // Written instead of accumulated (what the backward uses, on buffers holding garbage):
                // the bits of accumulating onto zeros.
                var dg0 = [Float](repeating: 0, count: n), du0 = [Float](repeating: 0, count: n)
                var dgW = [Float](repeating: .nan, count: n), duW = [Float](repeating: .nan, count: n)
                lf_swiglu_backward(&dg0, &du0, dh, g, u, n, 1)
                lf_swiglu_backward(&dgW, &duW, dh, g, u, n, 0)
                XCTAssertEqual(dgW.map(\.bitPattern), dg0.map(\.bitPattern), "\(name) n \(n): written dgate")
                XCTAssertEqual(duW.map(\.bitPattern), du0.map(\.bitPattern), "\(name) n \(n): written dup")
            }
        }
    }
}
