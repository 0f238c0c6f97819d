import DurableFile
/// The element type of a checkpoint's model files (`model.safetensors`, `model.gguf`):
/// `selm serve|train --checkpoint-dtype`.
public enum CheckpointDType: String, Sendable, CaseIterable, Codable {
    /// IEEE binary32: the learner's weights exactly.
    case f32
    /// bfloat16, rounded by `BF16Split` (half the bytes). A checkpoint written so keeps the f32
    /// weights' low halves beside the optimizer state, so resuming stays exact.
    case bf16

    /// transformers' name for it (`config.json`'s `torch_dtype`).
    public var torchName: String { self == .f32 ? "float32" : "bfloat16" }
    /// Bytes per weight in the model files.
    public var bytesPerElement: Int { self == .f32 ? 4 : 2 }
}

/// Splits an f32 weight into the bfloat16 a checkpoint's model files hold and a 16-bit residual, so
/// that the two give the f32 back bit for bit:
///
///     bf16     = (bits + 0x8000) >> 16          (round to nearest, ties away from zero)
///     residual = bits − bf16 << 16              (an Int16: in [−0x8000, 0x7FFF])
///     bits     = bf16 << 16 + residual          (all arithmetic modulo 2³²)
///
/// PyTorch rounds ties to even instead; the two differ only on exact ties (one weight in 65 536,
/// by one bf16 unit). Ties-to-even would not be invertible with 16 bits of residual (a tie rounded
/// up from an odd value and one kept from an even value give the same bf16 and the same low half).
public enum BF16Split {
    /// The bfloat16 bits of `x`.
    @inline(__always) public static func bf16(_ x: Float) -> UInt16 {
        UInt16(truncatingIfNeeded: (x.bitPattern &+ 0x8000) >> 16)
    }

    /// The residual of `x` against `bf16(x)`.
    @inline(__always) public static func residual(_ x: Float) -> Int16 {
        let hi = UInt32(bf16(x)) << 16
        return Int16(truncatingIfNeeded: Int32(bitPattern: x.bitPattern &- hi))
    }

    /// Turns `weights` — the bfloat16 values of a checkpoint as f32 (exact) — back into the f32
    /// master weights, adding each element's residual.
    public static func join(_ weights: UnsafeMutablePointer<Float>, residual: UnsafePointer<Int16>, count: Int) {
        for i in 0 ..< count {
            weights[i] = Float(bitPattern: weights[i].bitPattern &+ UInt32(bitPattern: Int32(residual[i])))
        }
    }

    /// Writes `count` elements of `src` encoded as `encoding` into `dst` (2 bytes each for
    /// `.bf16`/`.residual`, 4 for `.f32`), little-endian.
    static func encode(_ src: UnsafePointer<Float>, count: Int, as encoding: TensorEncoding, into dst: UnsafeMutableRawPointer) {
        switch encoding {
        case .f32: dst.copyMemory(from: src, byteCount: count * 4)
        case .bf16:
            let d = dst.assumingMemoryBound(to: UInt16.self)
            for i in 0 ..< count { d[i] = bf16(src[i]).littleEndian }
        case .bf16Residual:
            let d = dst.assumingMemoryBound(to: Int16.self)
            for i in 0 ..< count { d[i] = residual(src[i]).littleEndian }
        }
    }
}

/// How a writer stores an f32 tensor: as it is, as its bfloat16 (`BF16Split.bf16`), or as the
/// residual that gives the f32 back from that bfloat16 (`BF16Split.residual`, safetensors `I16`).
public enum TensorEncoding: Sendable, Equatable {
    case f32, bf16, bf16Residual

    var bytesPerElement: Int { self == .f32 ? 4 : 2 }
    var safetensorsDType: String {
        switch self { case .f32: return "F32"; case .bf16: return "BF16"; case .bf16Residual: return "I16" }
    }

    /// Writes `count` elements of `src` so encoded, converting 64 Ki elements at a time.
    func write(_ src: UnsafePointer<Float>, count: Int, to w: DurableFileWriter) throws {
        if self == .f32 { try w.write(floats: src, count: count); return }
        let chunk = 1 << 16
        let buf = UnsafeMutableRawPointer.allocate(byteCount: chunk * 2, alignment: 16)
        defer { buf.deallocate() }
        var i = 0
        while i < count {
            let n = min(chunk, count - i)
            BF16Split.encode(src + i, count: n, as: self, into: buf)
            try w.write(UnsafeRawBufferPointer(start: buf, count: n * 2))
            i += n
        }
    }
}
