import Foundation
import Kernels
import XCTest

/// Deterministic uniform numbers in [−1, 1) (xorshift64*).
struct TestRNG {
    var state: UInt64
    init(_ seed: UInt64) { state = seed &* 0x9E37_79B9_7F4A_7C15 | 1 }
    mutating func next() -> UInt64 {
        state ^= state >> 12; state ^= state << 25; state ^= state >> 27
        return state &* 0x2545_F491_4F6C_DD1D
    }
    mutating func float() -> Float { Float(Double(next() >> 11) / Double(1 << 53) * 2 - 1) }
    mutating func floats(_ n: Int, scale: Float = 1) -> [Float] { (0..<n).map { _ in float() * scale } }
}

/// Reference roundings written from the formats' definitions (not from the C code's bit tricks).
enum Reference {
    /// bfloat16 (8 significant bits, float32's exponent range) nearest to x, ties to even, as its bits.
    static func bf16Bits(_ x: Float) -> UInt16 {
        if x.isNaN { return UInt16(truncatingIfNeeded: x.bitPattern >> 16) | 0x0040 }
        if x.isInfinite || x == 0 { return UInt16(truncatingIfNeeded: x.bitPattern >> 16) }
        let d = Double(x)
        // Spacing of bf16 values around |x|: 2^(e − 7), e the exponent (at least −126: subnormals).
        let e = max(Int(d.magnitude.exponent), -126)
        let ulp = Double(sign: .plus, exponent: e - 7, significand: 1)
        let r = (d / ulp).rounded(.toNearestOrEven) * ulp
        if r.magnitude >= 0x1p128 { return x < 0 ? 0xFF80 : 0x7F80 }
        return UInt16(truncatingIfNeeded: Float(r).bitPattern >> 16)
    }

    static func bf16(_ x: Float) -> Float { Float(bitPattern: UInt32(bf16Bits(x)) << 16) }

    /// The q8 weight quantiser of compact.h: d = the smallest float16 ≥ max|w|/127 (nearest, bumped
    /// when it rounded down), q = rne(w · (1/d)). nil for a bad block.
    static func q8Weights(_ w: ArraySlice<Float>) -> (d: Float16, q: [Int8])? {
        let amax = w.map { $0.magnitude }.max() ?? 0
        if w.contains(where: { !$0.isFinite }) || amax > 65504 * 127 { return nil }
        var d = Float16(amax / 127)
        if Float(d) * 127 < amax { d = d.nextUp }
        let id: Float = d == 0 ? 0 : 1 / Float(d)
        return (d, w.map { Int8(($0 * id).rounded(.toNearestOrEven)) })
    }

    /// The q8 activation quantiser: d = max|x|/127 in f32, q = rne(x · (1/d)).
    static func q8Activations(_ x: ArraySlice<Float>) -> (d: Float, q: [Int8]) {
        let amax = x.map { $0.magnitude }.max() ?? 0
        if x.contains(where: { !$0.isFinite }) { return (.nan, x.map { _ in 0 }) }
        if amax < 0x1p-100 { return (0, x.map { _ in 0 }) }
        let d = amax / 127, id = 1 / d
        return (d, x.map { Int8(max(-127, min(127, ($0 * id).rounded(.toNearestOrEven)))) })
    }
}

/// Runs `body` once per implementation this CPU has (SELM_KERNELS levels from the detected one
/// down to scalar), restoring the level afterwards.
func forEachISA(_ body: (_ level: Int32, _ name: String) throws -> Void) rethrows {
    let detected = ck_isa_detected()
    let before = ck_isa()
    defer { _ = ck_set_isa(before) }
    for level in stride(from: detected, through: 0, by: -1) {
        XCTAssertEqual(ck_set_isa(level), level)
        try body(level, String(cString: ck_isa_name(level)))
    }
}

/// Compact weights freed at the end of the test.
final class Weights {
    var w = ck_weights()
    init(format: Int32, n: Int, k: Int) {
        if ck_weights_alloc(&w, format, Int32(n), Int32(k)) != 0 { fatalError("ck_weights_alloc \(n)×\(k)") }
    }
    deinit { ck_weights_free(&w) }

    static func packed(_ values: [Float], format: Int32, n: Int, k: Int) -> Weights {
        let w = Weights(format: format, n: n, k: k)
        let bad = values.withUnsafeBufferPointer { ck_pack_f32(&w.w, $0.baseAddress, k, 0, Int32(n)) }
        if bad < 0 { fatalError("ck_pack_f32 refused \(n)×\(k)") }
        return w
    }

    func row(_ n: Int) -> [Float] {
        var out = [Float](repeating: .nan, count: Int(w.K))
        withUnsafePointer(to: &w) { p in out.withUnsafeMutableBufferPointer { ck_unpack_row(p, Int32(n), $0.baseAddress) } }
        return out
    }
}
