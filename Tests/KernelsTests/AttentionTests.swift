import Foundation
import Kernels
import XCTest

/// `attention_forward` against a double-precision reference written from the definition
/// (softmax(scale·q·kᵀ) over the causal keys, then ·V, per KV group of G query heads). Decoding
/// sizes (n·G ≤ 8 query rows per group) take the direct path (AVX-512 for head sizes that are a
/// multiple of 16, else AVX2); larger n the OpenBLAS path; both must give the definition.
final class AttentionTests: XCTestCase {
    private func check(n: Int, p0: Int, nH: Int, nKV: Int, hd: Int, seed: UInt64, file: StaticString = #filePath, line: UInt = #line) {
        var rng = TestRNG(seed)
        let L = p0 + n, qDim = nH * hd, kvDim = nKV * hd, G = nH / nKV
        let q = rng.floats(n * qDim), k = rng.floats(L * kvDim), v = rng.floats(L * kvDim)
        var out = [Float](repeating: .nan, count: n * qDim)
        var probs = [Float](repeating: .nan, count: nKV * n * G * L)
        var scratch = [Float](repeating: 0, count: attention_scratch_floats(Int32(n), Int32(nH), Int32(hd)))
        attention_forward(&out, &probs, q, k, v, Int32(n), Int32(p0), Int32(nH), Int32(nKV), Int32(hd),
                          Int32(qDim), Int32(kvDim), Int32(qDim), &scratch)
        var worst = 0.0
        let scale = 1 / Double(hd).squareRoot()
        for t in 0..<n {
            for h in 0..<nH {
                let g = h / G, valid = p0 + t + 1
                var s = [Double](repeating: 0, count: valid)
                for j in 0..<valid {
                    var d = 0.0
                    for i in 0..<hd { d += Double(q[t * qDim + h * hd + i]) * Double(k[j * kvDim + g * hd + i]) }
                    s[j] = d * scale
                }
                let mx = s.max()!
                let e = s.map { Foundation.exp($0 - mx) }
                let z = e.reduce(0, +)
                for i in 0..<hd {
                    var o = 0.0
                    for j in 0..<valid { o += e[j] / z * Double(v[j * kvDim + g * hd + i]) }
                    worst = max(worst, abs(o - Double(out[t * qDim + h * hd + i])))
                }
            }
        }
        XCTAssertLessThan(worst, 2e-6, "n \(n) p0 \(p0) heads \(nH)/\(nKV) hd \(hd): max |Δ| \(worst)", file: file, line: line)
    }

    func testDecodingSizesMatchTheDefinition() {
        check(n: 1, p0: 0, nH: 9, nKV: 3, hd: 64, seed: 1)     // the first token: one key
        check(n: 1, p0: 130, nH: 9, nKV: 3, hd: 64, seed: 2)   // SmolLM2's shape, direct AVX-512 path
        check(n: 2, p0: 37, nH: 9, nKV: 3, hd: 64, seed: 3)    // 6 rows per group, causal within the pair
        check(n: 1, p0: 57, nH: 4, nKV: 2, hd: 24, seed: 4)    // head size not a multiple of 16
        check(n: 8, p0: 11, nH: 4, nKV: 4, hd: 16, seed: 5)    // 8 rows: the last direct size
    }

    func testPrefillSizesMatchTheDefinition() {
        check(n: 9, p0: 0, nH: 4, nKV: 4, hd: 16, seed: 6)     // 9 rows: the OpenBLAS path
        check(n: 40, p0: 20, nH: 9, nKV: 3, hd: 64, seed: 7)
    }
}
