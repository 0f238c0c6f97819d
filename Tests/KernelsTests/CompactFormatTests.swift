import Foundation
import Kernels
import XCTest

/// The compact formats (include/compact.h): bf16 and q8 conversions exact on known values and
/// against reference roundings written from the definitions, on every instruction-set path; the
/// q8 error bound; GGUF Q8_0 import; packing by row ranges.
final class CompactFormatTests: XCTestCase {
    // MARK: bf16

    /// Round-to-nearest-even ties, subnormals, overflow, infinities and NaNs.
    func testBF16ConversionKnownValues() {
        let cases: [(UInt32, UInt16, String)] = [
            (0x3F80_0000, 0x3F80, "1"),
            (0x3F80_8000, 0x3F80, "tie between 0x3F80 and 0x3F81 → even (down)"),
            (0x3F81_8000, 0x3F82, "tie between 0x3F81 and 0x3F82 → even (up)"),
            (0x3F80_8001, 0x3F81, "just above a tie"),
            (0x3F80_7FFF, 0x3F80, "just below a tie"),
            (0xBF81_8000, 0xBF82, "negative tie → even"),
            (0x3FFF_FFFF, 0x4000, "mantissa carry bumps the exponent"),
            (0x0000_8000, 0x0000, "subnormal tie → even zero"),
            (0x0001_8000, 0x0002, "subnormal tie → even"),
            (0x0001_7FFF, 0x0001, "subnormal below a tie"),
            (0x007F_FFFF, 0x0080, "largest subnormal rounds to the smallest normal"),
            (0x8000_0001, 0x8000, "tiny negative → −0"),
            (0x8000_0000, 0x8000, "−0"),
            (0x7F7F_FFFF, 0x7F80, "FLT_MAX rounds to +inf"),
            (0x7F7F_7FFF, 0x7F7F, "below the overflow tie"),
            (0x7F80_0000, 0x7F80, "+inf"),
            (0xFF80_0000, 0xFF80, "−inf"),
            (0x7FC0_0000, 0x7FC0, "quiet NaN"),
            (0x7F80_0001, 0x7FC0, "signalling NaN → quiet"),
            (0xFFA0_0000, 0xFFE0, "negative NaN keeps its sign and payload top"),
        ]
        forEachISA { _, isa in
            let src = cases.map { Float(bitPattern: $0.0) }
            var dst = [UInt16](repeating: 0xDEAD, count: src.count)
            ck_f32_to_bf16(src, &dst, src.count)
            for (i, c) in cases.enumerated() {
                XCTAssertEqual(dst[i], c.1, "\(isa): \(c.2): 0x\(String(c.0, radix: 16))")
                XCTAssertEqual(Reference.bf16Bits(src[i]), c.1, "reference: \(c.2)")
            }
            var back = [Float](repeating: 0, count: dst.count)
            ck_bf16_to_f32(dst, &back, dst.count)
            for i in dst.indices { XCTAssertEqual(back[i].bitPattern, UInt32(dst[i]) << 16) }
        }
    }

    /// Random bit patterns (every exponent, NaNs included) against the reference rounding, and the
    /// bf16 weight packing giving back the same values.
    func testBF16ConversionRandomPatterns() {
        var rng = TestRNG(7)
        let n = 200_003
        let src = (0..<n).map { _ in Float(bitPattern: UInt32(truncatingIfNeeded: rng.next())) }
        let want = src.map(Reference.bf16Bits)
        forEachISA { _, isa in
            var dst = [UInt16](repeating: 0, count: n)
            ck_f32_to_bf16(src, &dst, n)
            let bad = (0..<n).filter { dst[$0] != want[$0] }
            XCTAssertTrue(bad.isEmpty, "\(isa): \(bad.count) mismatches, first 0x\(String(src[bad.first ?? 0].bitPattern, radix: 16))")
            // Packed weights (N = 37, K = 101: odd sizes, a partial panel) hold the same values.
            let (N, K) = (37, 101)
            let w = Weights.packed(Array(src[0..<N * K]), format: Int32(CK_BF16), n: N, k: K)
            for r in 0..<N {
                let row = w.row(r)
                for k in 0..<K where row[k].bitPattern != UInt32(want[r * K + k]) << 16 {
                    XCTFail("\(isa): packed (\(r), \(k)) = 0x\(String(row[k].bitPattern, radix: 16)), want 0x\(String(want[r * K + k], radix: 16))0000")
                    return
                }
            }
        }
    }

    // MARK: q8

    /// Known blocks: exact scales, ties to even, the bump of a scale that rounded down, subnormal
    /// float16 scales, and blocks that cannot be represented.
    func testQ8QuantizerKnownBlocks() {
        func quant(_ v: [Float]) -> (d: UInt16, q: [Int8], bad: Int32) {
            var q = [Int8](repeating: 99, count: 32)
            var bad: Int32 = -1
            let d = ck_q8_quantize_block(v, Int32(v.count), &q, &bad)
            return (d, q, bad)
        }
        // max 127 → d = 1 exactly; ties of w/d at .5 go to even.
        var v: [Float] = [127, -127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3, 0]
        var r = quant(v)
        XCTAssertEqual(r.d, 0x3C00)
        XCTAssertEqual(Array(r.q[0..<10]), [127, -127, 0, 2, 2, 0, -2, -2, 3, 0])
        XCTAssertEqual(Array(r.q[10...]), [Int8](repeating: 0, count: 22), "values past n are zero")
        XCTAssertEqual(r.bad, 0)
        // All zeros: d = 0, q = 0.
        r = quant([Float](repeating: 0, count: 32))
        XCTAssertEqual(r.d, 0)
        XCTAssertEqual(r.q, [Int8](repeating: 0, count: 32))
        // A max whose /127 rounds DOWN in float16: d is bumped so that |q| ≤ 127.
        // 1 + 2^-10 is a float16 (spacing 2^-10 there); (127·(1 + 2^-10) + 0.03)/127 exceeds it by
        // 2.4e-4 < 2^-11, so it rounds down to it.
        let amax: Float = 127 * (1 + 0x1p-10) + 0.03
        XCTAssertLessThan(Float(Float16(amax / 127)) * 127, amax, "the case must round down")
        r = quant([amax, -amax / 2])
        XCTAssertEqual(r.d, Float16(amax / 127).nextUp.bitPattern)
        XCTAssertEqual(r.q[0], 127)
        // Subnormal float16 scales: max|w| = 1e-4 gives d ≈ 7.9e-7 (13.2 steps of 2^-24, rounded to
        // 13 and bumped to 14); max|w| = 1e-6 is below the smallest step: d = 2^-24 (bumped from 0).
        for (amax, steps) in [(Float(1e-4), UInt16(14)), (Float(1e-6), UInt16(1))] {
            v = (0..<32).map { Float($0 - 16) / 16 * amax }
            r = quant(v)
            XCTAssertEqual(r.d, steps, "max \(amax)")
            XCTAssertEqual(r.q[0], Int8((-amax / Float(Float16(bitPattern: steps))).rounded(.toNearestOrEven)))
        }
        // Non-finite or out-of-range blocks: NaN scale, zero q, counted.
        for bad: Float in [.nan, .infinity, -.infinity, 65504 * 127 * 1.01] {
            r = quant([1, bad, 2])
            XCTAssertTrue(Float(Float16(bitPattern: r.d)).isNaN, "\(bad)")
            XCTAssertEqual(r.bad, 1)
            XCTAssertEqual(r.q, [Int8](repeating: 0, count: 32))
        }
    }

    /// Random blocks over 12 decades: every packed value equals the reference quantiser's d·q on
    /// every path, and |w − d·q| ≤ d/2.
    func testQ8WeightsMatchReferenceAndBound() {
        let (N, K) = (35, 200)   // a partial panel, a partial last block
        var rng = TestRNG(11)
        var values = [Float]()
        for r in 0..<N {
            let scale = Float(pow(10.0, Double(r % 12) - 7))
            values += rng.floats(K, scale: scale)
        }
        values[3 * K + 40] = .nan        // row 3, block 1 becomes a NaN-scale block
        values[5 * K + 199] = .infinity  // row 5, last (partial) block
        forEachISA { _, isa in
            let w = Weights(format: Int32(CK_Q8), n: N, k: K)
            let bad = values.withUnsafeBufferPointer { ck_pack_f32(&w.w, $0.baseAddress, K, 0, Int32(N)) }
            XCTAssertEqual(bad, 2, isa)
            for r in 0..<N {
                let row = w.row(r)
                for b in 0..<(K + 31) / 32 {
                    let lo = r * K + b * 32, hi = min(lo + 32, (r + 1) * K)
                    let got = Array(row[(b * 32)..<(b * 32 + hi - lo)])
                    guard let ref = Reference.q8Weights(values[lo..<hi]) else {
                        XCTAssertTrue(got.allSatisfy { $0.isNaN }, "\(isa): bad block (\(r), \(b)) must dequantise to NaN")
                        continue
                    }
                    let d = Float(ref.d)
                    for i in got.indices {
                        let want = d * Float(ref.q[i])
                        if got[i].bitPattern != want.bitPattern {
                            XCTFail("\(isa): (\(r), \(b * 32 + i)) = \(got[i]), want \(want)"); return
                        }
                        let err = abs(values[lo + i] - got[i])
                        XCTAssertLessThanOrEqual(err, d / 2 * (1 + 0x1p-20), "\(isa): bound at (\(r), \(b * 32 + i))")
                    }
                }
            }
        }
    }

    /// The activation quantiser (the x side of q8 products) against its definition.
    func testQ8ActivationQuantizer() {
        var rng = TestRNG(5)
        for trial in 0..<200 {
            let n = 1 + trial % 32
            var v = rng.floats(n, scale: Float(pow(10.0, Double(trial % 9) - 4)))
            if trial == 7 { v[0] = .nan }
            if trial == 8 { v = v.map { $0 * 1e-32 } }
            var q = [Int8](repeating: 99, count: 32)
            let d = ck_q8_quantize_act_block(v, Int32(n), &q)
            let ref = Reference.q8Activations(v[...])
            XCTAssertEqual(d.bitPattern, ref.d.bitPattern, "trial \(trial)")
            XCTAssertEqual(Array(q[0..<n]), ref.q, "trial \(trial)")
            if d.isFinite { for i in 0..<n { XCTAssertLessThanOrEqual(abs(v[i] - d * Float(q[i])), d / 2 * (1 + 0x1p-20)) } }
        }
    }

    /// GGUF Q8_0 blocks load exactly (the dequantiser of dequant.c agrees), q = −128 becomes −127.
    func testQ8_0Import() {
        let (N, K) = (19, 64)
        var rng = TestRNG(3)
        var blocks = [UInt8]()
        for r in 0..<N {
            for b in 0..<K / 32 {
                let d = Float16(Float(r + 1) * 0.01 * Float(b + 1))
                blocks += [UInt8(d.bitPattern & 0xFF), UInt8(d.bitPattern >> 8)]
                for i in 0..<32 { blocks.append(UInt8(bitPattern: (r == 2 && b == 1 && i == 5) ? -128 : Int8(truncatingIfNeeded: Int(rng.next() % 255) - 127))) }
            }
        }
        var want = [Float](repeating: 0, count: N * K)
        dequant_q8_0(blocks, &want, N * K)
        want[2 * K + 32 + 5] = want[2 * K + 32 + 5] / -128 * -127
        let w = Weights(format: Int32(CK_Q8), n: N, k: K)
        XCTAssertEqual(ck_pack_q8_0(&w.w, blocks, K / 32 * 34, 0, Int32(N)), 1)
        for r in 0..<N { XCTAssertEqual(w.row(r), Array(want[r * K..<(r + 1) * K]), "row \(r)") }
        let b16 = Weights(format: Int32(CK_BF16), n: N, k: K)
        XCTAssertEqual(ck_pack_q8_0(&b16.w, blocks, K / 32 * 34, 0, Int32(N)), -1, "bf16 weights refuse Q8_0")
    }

    /// Packing in panel-aligned row ranges (as a publisher would, a slice at a time) gives the same
    /// bytes as one call; misaligned ranges are refused.
    func testPackingByRowRanges() {
        for format in [Int32(CK_BF16), Int32(CK_Q8)] {
            let (N, K) = (70, 45)
            var rng = TestRNG(9)
            let values = rng.floats(N * K)
            let whole = Weights.packed(values, format: format, n: N, k: K)
            let parts = Weights(format: format, n: N, k: K)
            let pr = Int(ck_panel_rows(format))
            values.withUnsafeBufferPointer { p in
                var r = 0
                while r < N {
                    let e = min(N, r + pr)
                    XCTAssertGreaterThanOrEqual(ck_pack_f32(&parts.w, p.baseAddress, K, Int32(r), Int32(e)), 0)
                    r = e
                }
                XCTAssertEqual(ck_pack_f32(&parts.w, p.baseAddress, K, 1, Int32(N)), -1, "misaligned start")
                XCTAssertEqual(ck_pack_f32(&parts.w, p.baseAddress, K, 0, Int32(pr + 1)), -1, "misaligned end")
                XCTAssertEqual(ck_pack_f32(&parts.w, p.baseAddress, K - 1, 0, Int32(N)), -1, "row stride < K")
            }
            let bytes = ck_weights_bytes(format, Int32(N), Int32(K))
            XCTAssertEqual(memcmp(whole.w.data, parts.w.data, bytes), 0, "format \(format)")
        }
        XCTAssertEqual(ck_weights_bytes(Int32(CK_BF16), 32, 64), 32 * 64 * 2)
        XCTAssertEqual(ck_weights_bytes(Int32(CK_Q8), 16, 64), 16 * 64 / 32 * 34)
        var w = ck_weights()
        XCTAssertEqual(ck_weights_alloc(&w, 7, 4, 4), -1, "unknown format")
        XCTAssertEqual(ck_weights_alloc(&w, Int32(CK_Q8), 0, 4), -1, "empty")
    }
}
