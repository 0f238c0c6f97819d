import Foundation
import Kernels

/// How `FetchWeights` lays a model's weights out as bytes: the tensors of `ParameterLayout` in order,
/// without gaps, each in its wire element type.
///
/// - `.f32`: every tensor as little-endian binary32 — the weights themselves.
/// - `.bf16`: the linear layers' weights (every 2-D tensor but the embedding table: q, k, v, o, gate,
///   up, down and an untied output head — what a bf16 engine packs) as bfloat16 bits rounded to
///   nearest even (`ck_f32_to_bf16`, the rounding of the bf16 packer), the embedding table and the
///   norms as f32 (a bf16 engine keeps them in f32, and packs a tied head from the f32 table). A
///   bf16 engine fed the decoded weights packs exactly what it would pack from the f32 originals:
///   rounding a bf16 value to bf16 changes nothing. SmolLM2-135M: 326 MB instead of 538 MB.
public struct WeightsWire: Sendable {
    public enum DType: String, Sendable, CaseIterable {
        case f32, bf16
    }

    /// One tensor on the wire.
    public struct Segment: Sendable {
        public let entry: ParameterLayout.Entry
        /// Elements as bf16 (else f32).
        public let bf16: Bool
        /// Byte offset on the wire.
        public let offset: Int
        public var length: Int { entry.count * (bf16 ? 2 : 4) }
        public var dtype: String { bf16 ? "bf16" : "f32" }
    }

    public let dtype: DType
    public let segments: [Segment]
    public let totalBytes: Int

    public init(layout: ParameterLayout, dtype: DType) {
        self.dtype = dtype
        var off = 0
        var list: [Segment] = []
        for e in layout.entries {
            let s = Segment(entry: e, bf16: dtype == .bf16 && Self.isLinear(e), offset: off)
            list.append(s)
            off += s.length
        }
        segments = list
        totalBytes = off
    }

    /// A linear layer's weight: what a compact engine keeps packed.
    public static func isLinear(_ e: ParameterLayout.Entry) -> Bool {
        e.shape.count == 2 && e.name != "model.embed_tokens.weight"
    }

    /// Index of the segment holding wire byte `offset`.
    private func segment(at offset: Int) -> Int {
        var lo = 0, hi = segments.count - 1
        while lo < hi {
            let mid = (lo + hi + 1) / 2
            if segments[mid].offset <= offset { lo = mid } else { hi = mid - 1 }
        }
        return lo
    }

    /// Writes wire bytes [`offset`, `offset + count`) of `weights` to `dst`. Thread: any (reads
    /// `weights` only).
    public func encode(_ weights: ParameterSet, offset: Int, count: Int, into dst: UnsafeMutableRawPointer) {
        precondition(offset >= 0 && count >= 0 && offset + count <= totalBytes)
        let base = UnsafeRawPointer(weights.data)
        var o = offset, out = dst
        var i = count > 0 ? segment(at: offset) : segments.count
        var scratch: [UInt16] = []
        while o < offset + count {
            let s = segments[i]
            let a = o - s.offset, b = min(s.length, offset + count - s.offset)  // bytes of this segment
            if s.bf16 {
                let e0 = a / 2, e1 = (b + 1) / 2
                if scratch.count < e1 - e0 { scratch = [UInt16](repeating: 0, count: e1 - e0) }
                scratch.withUnsafeMutableBufferPointer { buf in
                    ck_f32_to_bf16(weights.data + s.entry.offset + e0, buf.baseAddress!, e1 - e0)
                    out.copyMemory(from: UnsafeRawPointer(buf.baseAddress!) + (a - 2 * e0), byteCount: b - a)
                }
            } else {
                out.copyMemory(from: base + s.entry.offset * 4 + a, byteCount: b - a)
            }
            out += b - a
            o += b - a
            i += 1
        }
    }

    /// Turns `weights`' memory, holding the wire bytes at its start (`totalBytes` of them, as
    /// received), into the weights, in place: bf16 widened (exact), f32 moved to its place. Every
    /// tensor's wire offset is at most its f32 offset, so working from the last tensor back (and
    /// within a tensor from its last element back) never overwrites bytes not yet read.
    public func decodeInPlace(_ weights: ParameterSet) {
        guard dtype != .f32 else { return }
        let raw = UnsafeMutableRawPointer(weights.data)
        for s in segments.reversed() {
            let dst = weights.data + s.entry.offset
            if s.bf16 {
                let bits = UnsafeRawPointer(raw + s.offset)
                var j = s.entry.count - 1
                while j >= 0 {
                    let h = UInt32(bits.loadUnaligned(fromByteOffset: 2 * j, as: UInt16.self).littleEndian)
                    dst[j] = Float(bitPattern: h << 16)
                    j -= 1
                }
            } else if s.offset != s.entry.offset * 4 {
                memmove(dst, raw + s.offset, s.length)  // the regions may overlap
            }
        }
    }

    /// Fills `weights` from a whole wire buffer (`totalBytes` bytes): f32 copied, bf16 widened
    /// (exact). Thread: the caller's.
    public func decode(_ src: UnsafeRawPointer, into weights: ParameterSet) {
        for s in segments {
            let dst = weights.data + s.entry.offset
            if s.bf16 {
                let bits = src + s.offset
                for j in 0..<s.entry.count {
                    let h = UInt32(bits.loadUnaligned(fromByteOffset: 2 * j, as: UInt16.self).littleEndian)
                    dst[j] = Float(bitPattern: h << 16)
                }
            } else {
                UnsafeMutableRawPointer(dst).copyMemory(from: src + s.offset, byteCount: s.length)
            }
        }
    }
}
