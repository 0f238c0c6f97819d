import Foundation
import Kernels
import XCTest

/// The learner's elementwise SwiGLU passes give every element the same arithmetic wherever a thread
/// split (kernels_parallel halves N) puts it: computed in two pieces at any cut, the bits are those
/// of one pass. Exact resume depends on it (activations are recomputed in batches of other sizes).
final class SplitInvarianceTests: XCTestCase {
    func testSwiGLUIsTheSameWhateverTheSplit() {
        var rng = TestRNG(31)
        let n = 53
        let gate = rng.floats(n, scale: 6), up = rng.floats(n), dh = rng.floats(n)
        forEachISA { _, name in
            var whole = [Float](repeating: 0, count: n)
            lf_swiglu_forward(&whole, gate, up, n)
            var dgW = [Float](repeating: 0.5, count: n), duW = [Float](repeating: -0.25, count: n)
            lf_swiglu_backward(&dgW, &duW, dh, gate, up, n, 1)
            for cut in [1, 5, 8, 13, 16, 27, 50] {
                var parts = [Float](repeating: 0, count: n)
                var dg = [Float](repeating: 0.5, count: n), du = [Float](repeating: -0.25, count: n)
                parts.withUnsafeMutableBufferPointer { h in
                    lf_swiglu_forward(h.baseAddress!, gate, up, cut)
                    lf_swiglu_forward(h.baseAddress! + cut, Array(gate[cut...]), Array(up[cut...]), n - cut)
                }
                dg.withUnsafeMutableBufferPointer { g in
                    du.withUnsafeMutableBufferPointer { u in
                        lf_swiglu_backward(g.baseAddress!, u.baseAddress!, dh, gate, up, cut, 1)
                        lf_swiglu_backward(g.baseAddress! + cut, u.baseAddress! + cut, Array(dh[cut...]), Array(gate[cut...]),
                                           Array(up[cut...]), n - cut, 1)
                    }
                }
                XCTAssertEqual(parts.map(\.bitPattern), whole.map(\.bitPattern), "\(name): forward split at \(cut)")
                XCTAssertEqual(dg.map(\.bitPattern), dgW.map(\.bitPattern), "\(name): gate gradient split at \(cut)")
                XCTAssertEqual(du.map(\.bitPattern), duW.map(\.bitPattern), "\(name): up gradient split at \(cut)")
            }
        }
    }
}
