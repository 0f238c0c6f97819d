import Foundation
import Kernels
import XCTest

/// The learner's RMSNorm backward (chunks of 32 rows on both cores, each chunk's weight gradient summed
/// on its own and the chunks added in order), the gradient norm's sum of squares (fixed chunks) and
/// AdamW with clipping's factor folded into its pass, against their definitions in double precision
/// and against the separate scaling pass they replace.
final class NormOptimizerTests: XCTestCase {
    /// dx_j = r·w_j·dy_j − r³/C·x_j·Σ_i dy_i·w_i·x_i and dw_j = Σ_rows dy_j·x_j·r, both accumulated, for
    /// row counts around the chunk size; the forward's r = (mean x² + eps)^(−1/2); and rmsnorm_apply
    /// (the backward's recomputation of the output) equal to the forward's output bit for bit.
    func testRMSNormMatchesTheDefinition() {
        var rng = TestRNG(5)
        let C = 83
        for T in [1, 31, 32, 33, 100] {
            let x = rng.floats(T * C, scale: 3), w = rng.floats(C), dy = rng.floats(T * C)
            var out = [Float](repeating: 0, count: T * C), rstd = [Float](repeating: 0, count: T)
            rmsnorm_forward(&out, &rstd, x, w, Int32(T), Int32(C), 1e-5)
            // The backward's recomputation of the output from rstd has the forward's bits.
            var again = [Float](repeating: .nan, count: T * C)
            rmsnorm_apply(&again, x, w, rstd, Int32(T), Int32(C))
            XCTAssertEqual(again.map(\.bitPattern), out.map(\.bitPattern), "T \(T): recomputed output")
            var dx = [Float](repeating: 0.5, count: T * C), dw = [Float](repeating: -0.25, count: C)
            rmsnorm_backward(&dx, &dw, dy, x, w, rstd, Int32(T), Int32(C))
            var wantDW = [Double](repeating: -0.25, count: C)
            var worstDX = 0.0, worstR = 0.0
            for t in 0..<T {
                let row = t * C
                let ms = (0..<C).reduce(0.0) { $0 + Double(x[row + $1]) * Double(x[row + $1]) } / Double(C)
                let r = 1 / (ms + 1e-5).squareRoot()
                worstR = max(worstR, abs(Double(rstd[t]) - r) / r)
                let dot = (0..<C).reduce(0.0) { $0 + Double(dy[row + $1]) * Double(w[$1]) * Double(x[row + $1]) }
                for j in 0..<C {
                    let want = 0.5 + r * Double(w[j]) * Double(dy[row + j]) - r * r * r / Double(C) * Double(x[row + j]) * dot
                    worstDX = max(worstDX, abs(Double(dx[row + j]) - want))
                    wantDW[j] += Double(dy[row + j]) * Double(x[row + j]) * r
                }
            }
            let worstDW = (0..<C).map { abs(Double(dw[$0]) - wantDW[$0]) }.max()!
            XCTAssertLessThan(worstR, 1e-6, "T \(T): rstd")
            XCTAssertLessThan(worstDX, 1e-5, "T \(T): input gradient")
            XCTAssertLessThan(worstDW, 1e-5 * Double(T), "T \(T): weight gradient")
        }
    }

    /// The sum of squares over fixed chunks equals the double-precision sum (to rounding), for sizes
    /// around the chunk (65 536 values).
    func testSumOfSquaresMatchesTheDefinition() {
        var rng = TestRNG(9)
        for n in [0, 1, 1000, 65536, 65537, 300_001] {
            let x = rng.floats(n, scale: 2)
            let want = x.reduce(0.0) { $0 + Double($1) * Double($1) }
            XCTAssertEqual(sum_squares(x, n), want, accuracy: 1e-12 * max(1, want), "n \(n)")
        }
    }

    /// AdamW with gscale gives the bits of scaling the gradient in a separate pass first (what the
    /// trainer did before folding clipping in), and gscale 1 the bits of the plain update.
    func testAdamWScaleFoldedIntoTheUpdate() {
        var rng = TestRNG(13)
        let n = 1037
        let p0 = rng.floats(n), g = rng.floats(n, scale: 5), m0 = rng.floats(n, scale: 0.1)
        let v0 = rng.floats(n).map { $0 * $0 * 0.01 }
        let k: Float = 0.3817
        func update(_ grad: [Float], _ scale: Float) -> ([Float], [Float], [Float]) {
            var p = p0, m = m0, v = v0
            adamw_update(&p, grad, &m, &v, n, 0.9, 0.999, 1e-8, 1 - 1e-3 * 0.01, 1e-3 / (1 - 0.9 * 0.9), Float((1 - 0.999 * 0.999).squareRoot()), scale)
            return (p, m, v)
        }
        let folded = update(g, k), separate = update(g.map { $0 * k }, 1)
        XCTAssertEqual(folded.0.map(\.bitPattern), separate.0.map(\.bitPattern), "weights")
        XCTAssertEqual(folded.1.map(\.bitPattern), separate.1.map(\.bitPattern), "first moment")
        XCTAssertEqual(folded.2.map(\.bitPattern), separate.2.map(\.bitPattern), "second moment")
        XCTAssertNotEqual(update(g, 1).0.map(\.bitPattern), folded.0.map(\.bitPattern), "the scale is applied")
    }
}
