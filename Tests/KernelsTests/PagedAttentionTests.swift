import Foundation
import Kernels
import XCTest

/// The 16-bit KV cache's kernels (paged_attention.c): IEEE half conversions against Swift's own
/// `Float16`, and `ck_paged_attention_f16` against a double-precision reference written from the
/// definition, over shuffled block tables, on every instruction-set path this CPU has.
final class PagedAttentionTests: XCTestCase {
    func testHalfToFloatMatchesSwiftFloat16ForEveryBitPattern() {
        let all = (0...0xFFFF).map { UInt16($0) }
        forEachISA { _, name in
            var out = [Float](repeating: 0, count: all.count)
            ck_f16_to_f32(all, &out, all.count)
            for (h, f) in zip(all, out) {
                let want = Float(Float16(bitPattern: h))
                if want.isNaN { XCTAssertTrue(f.isNaN, "\(name): 0x\(String(h, radix: 16))"); continue }
                XCTAssertEqual(f.bitPattern, want.bitPattern, "\(name): 0x\(String(h, radix: 16))")
                if f.bitPattern != want.bitPattern { return }
            }
        }
    }

    func testFloatToHalfRoundsToNearestEvenAndSaturates() {
        var rng = TestRNG(11)
        var xs: [Float] = [0, -0, 1, -1, 65504, -65504, 65519.9, 65520, 1e9, -1e9, .infinity, -.infinity,
                           0x1p-24, 0x1p-25, 0x1.8p-25, 0x1p-26, 0x1.fffp-15, 6.1035156e-05, 1 + 0x1p-11, 1 + 0x3p-11,
                           .leastNonzeroMagnitude, .greatestFiniteMagnitude]
        for e in -30...17 { for _ in 0..<40 { xs.append(rng.float() * Float(sign: .plus, exponent: e, significand: 1)) } }
        // Exact ties between two halves, in the normal and the subnormal range.
        for _ in 0..<200 {
            let h = UInt16(truncatingIfNeeded: rng.next() & 0x7BFF)
            let a = Float(Float16(bitPattern: h)), b = Float(Float16(bitPattern: h + 1))
            xs.append((a + b) / 2)
        }
        forEachISA { _, name in
            var bits = [UInt16](repeating: 0, count: xs.count)
            ck_f32_to_f16(xs, &bits, xs.count)
            for (x, h) in zip(xs, bits) {
                let want: UInt16 = abs(x) >= 65504 ? Float16(x < 0 ? -65504 : 65504).bitPattern : Float16(x).bitPattern
                XCTAssertEqual(h, want, "\(name): \(x)")
            }
            var nan = [UInt16](repeating: 0, count: 9)
            ck_f32_to_f16([Float](repeating: .nan, count: 9), &nan, 9)
            XCTAssertTrue(nan.allSatisfy { Float16(bitPattern: $0).isNaN }, "\(name): NaN must stay NaN")
        }
    }

    /// One batch: sequences with (p0, n), head shape; keys and values in a pool of shuffled blocks.
    private func check(_ shapes: [(p0: Int, n: Int)], nH: Int, nKV: Int, hd: Int, bs: Int, seed: UInt64,
                       file: StaticString = #filePath, line: UInt = #line) {
        var rng = TestRNG(seed)
        let kvDim = nKV * hd, qDim = nH * hd, G = nH / nKV
        let rows = shapes.reduce(0) { $0 + $1.n }
        let blocksNeeded = shapes.map { ($0.p0 + $0.n + bs - 1) / bs }
        let poolBlocks = blocksNeeded.reduce(0, +) + 3
        // Shuffled block ids, so no sequence's blocks are consecutive.
        var ids = Array(0..<Int32(poolBlocks))
        for i in stride(from: ids.count - 1, to: 0, by: -1) { ids.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
        var tables: [[Int32]] = []
        var next = 0
        for b in blocksNeeded { tables.append(Array(ids[next..<next + b])); next += b }
        let poolK = rng.floats(poolBlocks * bs * kvDim, scale: 2), poolV = rng.floats(poolBlocks * bs * kvDim)
        var k16 = [UInt16](repeating: 0, count: poolK.count), v16 = k16
        ck_f32_to_f16(poolK, &k16, poolK.count)
        ck_f32_to_f16(poolV, &v16, poolV.count)
        let q = rng.floats(rows * qDim)
        func key(_ s: Int, _ j: Int, _ i: Int, _ pool: [UInt16]) -> Double {
            Double(Float(Float16(bitPattern: pool[(Int(tables[s][j / bs]) * bs + j % bs) * kvDim + i])))
        }
        forEachISA { _, name in
            var out = [Float](repeating: .nan, count: rows * qDim)
            var row0 = 0
            var seqs: [ck_paged_seq] = []
            let flat = tables.flatMap { $0 }
            flat.withUnsafeBufferPointer { fb in
                var at = 0
                for (s, sh) in shapes.enumerated() {
                    seqs.append(ck_paged_seq(blocks: fb.baseAddress! + at, p0: Int32(sh.p0), n: Int32(sh.n), row0: Int32(row0)))
                    at += tables[s].count; row0 += sh.n
                }
                ck_paged_attention_f16(&out, Int32(qDim), q, Int32(qDim), k16, v16, Int32(bs), Int32(nH), Int32(nKV),
                                       Int32(hd), seqs, Int32(seqs.count))
            }
            var worst = 0.0
            let scale = 1 / Double(hd).squareRoot()
            row0 = 0
            for (s, sh) in shapes.enumerated() {
                for t in 0..<sh.n {
                    for h in 0..<nH {
                        let g = h / G, valid = sh.p0 + t + 1
                        let sc = (0..<valid).map { j in
                            (0..<hd).reduce(0.0) { $0 + Double(q[(row0 + t) * qDim + h * hd + $1]) * key(s, j, g * hd + $1, k16) } * scale
                        }
                        let mx = sc.max()!
                        let e = sc.map { Foundation.exp($0 - mx) }
                        let z = e.reduce(0, +)
                        for i in 0..<hd {
                            let o = (0..<valid).reduce(0.0) { $0 + e[$1] / z * key(s, $1, g * hd + i, v16) }
                            worst = max(worst, abs(o - Double(out[(row0 + t) * qDim + h * hd + i])))
                        }
                    }
                }
                row0 += sh.n
            }
            XCTAssertLessThan(worst, 4e-6, "\(name): heads \(nH)/\(nKV) hd \(hd) bs \(bs): max |Δ| \(worst)", file: file, line: line)
        }
    }

    func testDecodingBatchOverShuffledBlocksMatchesTheDefinition() {
        // SmolLM2's shape (9 query heads over 3 KV groups of 64): the first position, block edges,
        // two new positions (causal within them), one long context; AVX-512 path.
        check([(0, 1), (15, 1), (16, 1), (130, 1), (37, 2), (200, 1)], nH: 9, nKV: 3, hd: 64, bs: 16, seed: 1)
        // Llama-3's head size 128 (two passes of four chunks) with 4 query heads per KV group, 1–3 new
        // positions (tiles of 4, 8 and 12 rows), odd block size.
        check([(0, 1), (6, 2), (40, 3), (70, 1)], nH: 8, nKV: 2, hd: 128, bs: 7, seed: 6)
        // Head sizes 24 (AVX2 path on an AVX-512 machine) and 20 (portable path everywhere).
        check([(0, 1), (7, 1), (57, 2)], nH: 4, nKV: 2, hd: 24, bs: 4, seed: 2)
        check([(3, 1), (9, 3)], nH: 4, nKV: 4, hd: 20, bs: 5, seed: 3)
    }

    func testPrefillRowsAndManyThreadsMatchTheDefinition() {
        // More rows than a decode (the kernel is general), and enough work to use the pool's helpers.
        check([(0, 12), (20, 9)], nH: 9, nKV: 3, hd: 64, bs: 16, seed: 4)
        check((0..<24).map { (100 + 3 * $0, 1) }, nH: 9, nKV: 3, hd: 64, bs: 16, seed: 5)
    }
}
