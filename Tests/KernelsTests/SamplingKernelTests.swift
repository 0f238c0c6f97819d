import Foundation
import Kernels
import XCTest

/// The sampler's row passes (sampling.c) against double-precision references, on every path.
final class SamplingKernelTests: XCTestCase {
    func testMaxAndExpSumMatchDoublePrecision() {
        var rng = TestRNG(21)
        for n in [1, 15, 16, 17, 100, 49152] {
            let x = rng.floats(n, scale: 30)
            forEachISA { _, name in
                let m = kernels_max(x, Int32(n))
                XCTAssertEqual(m, x.max()!, "\(name) n \(n)")
                for s: Float in [1, 0.7, 2.5] {
                    var w = [Float](repeating: .nan, count: n)
                    let sum = kernels_exp_sum(x, Int32(n), m, s, &w)
                    var want = 0.0, worst = 0.0
                    for i in 0..<n {
                        let e = Foundation.exp(Double((x[i] - m) * s))
                        want += e
                        worst = max(worst, abs(Double(w[i]) - e) / max(e, 1e-30))
                    }
                    XCTAssertLessThan(worst, 4e-7, "\(name) n \(n) s \(s): worst relative error of a weight")
                    XCTAssertEqual(sum, want, accuracy: want * 1e-6, "\(name) n \(n) s \(s)")
                }
            }
        }
    }

    func testFarBelowTheMaximumUnderflowsToZeroNotGarbage() {
        let x: [Float] = [0, -80, -87, -95, -103, -110, -200, -1e30, -.infinity] + [Float](repeating: -1000, count: 7)
        forEachISA { _, name in
            var w = [Float](repeating: .nan, count: x.count)
            let sum = kernels_exp_sum(x, Int32(x.count), 0, 1, &w)
            for (xi, wi) in zip(x, w) {
                let e = Foundation.exp(Double(xi))
                XCTAssertEqual(Double(wi), e, accuracy: max(e * 1e-6, 1e-44), "\(name): exp(\(xi))")
            }
            XCTAssertEqual(sum, 1, accuracy: 1e-6)
        }
    }

    func testLogProbIsTheLogSoftmax() {
        var rng = TestRNG(22)
        let x = rng.floats(49152, scale: 12)
        forEachISA { _, name in
            let m = Double(x.max()!)
            let lse = m + Foundation.log(x.reduce(0.0) { $0 + Foundation.exp(Double($1) - m) })
            for t in [0, 7, 49151] {
                XCTAssertEqual(Double(kernels_log_prob(x, Int32(x.count), Int32(t))), Double(x[t]) - lse, accuracy: 2e-5, name)
            }
        }
    }
}
