import Kernels

extension GGUFFile {
    /// Dequantises a whole tensor to float32, in GGUF element order (innermost dimension contiguous,
    /// i.e. a 2-D tensor with dims `[cols, rows]` comes out row-major `(rows, cols)`).
    ///
    /// The values are bit-identical to gguf-py's `gguf.quants.dequantize` and llama.cpp's
    /// `dequantize_row_*`. Supported types: see `GGMLType.isSupported`.
    ///
    /// - Parameter dst: room for `info.elementCount` floats.
    /// - Throws: `ModelError.unsupportedTensorType` naming the file, tensor and type.
    /// - Thread: any; reads only the immutable mapping.
    public func dequantize(_ info: TensorInfo, into dst: UnsafeMutablePointer<Float>) throws {
        try checkSupported(info)
        try run(info.type, data(of: info), dst, info.elementCount, info)
    }

    /// Dequantises a whole tensor into a new array (see `dequantize(_:into:)`).
    public func dequantize(_ info: TensorInfo) throws -> [Float] {
        try checkSupported(info)
        return try [Float](unsafeUninitializedCapacity: info.elementCount) { buf, count in
            try dequantize(info, into: buf.baseAddress!)
            count = info.elementCount
        }
    }

    /// Dequantises rows `rows` of a tensor viewed as 2-D: a row is `dims[0]` contiguous elements and
    /// there are `elementCount / dims[0]` rows (for an embedding table `token_embd.weight`, row `t` is
    /// token `t`'s vector). Costs only the rows asked for.
    ///
    /// - Parameter dst: room for `rows.count * info.dims[0]` floats.
    /// - Throws: `ModelError.unsupportedTensorType` for unsupported types; `ModelError.badField` if a
    ///   row is not a whole number of quantisation blocks; `ModelError.badInput` if `rows` is out of
    ///   range.
    /// - Thread: any.
    public func dequantizeRows(_ info: TensorInfo, rows: Range<Int>, into dst: UnsafeMutablePointer<Float>) throws {
        try checkSupported(info)
        let rowLength = info.dims[0]
        let rowCount = info.elementCount / rowLength
        guard rowLength % info.type.blockSize == 0 else {
            throw ModelError.badField(file: path, field: info.name,
                                      reason: "row length \(rowLength) is not a multiple of the \(info.type) block size \(info.type.blockSize)")
        }
        guard rows.lowerBound >= 0, rows.upperBound <= rowCount else {
            throw ModelError.badInput(field: "rows of tensor '\(info.name)'",
                                      reason: "\(rows) is outside 0..<\(rowCount)")
        }
        let rowBytes = rowLength / info.type.blockSize * info.type.blockBytes
        try run(info.type, data(of: info) + rows.lowerBound * rowBytes, dst, rows.count * rowLength, info)
    }

    private func checkSupported(_ info: TensorInfo) throws {
        guard info.type.isSupported else {
            let name = info.type == .unknown ? "unknown (ggml type id \(info.rawType))" : info.type.description
            throw ModelError.unsupportedTensorType(file: path, tensor: info.name, type: name)
        }
    }

    private func run(_ type: GGMLType, _ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ n: Int,
                     _ info: TensorInfo) throws {
        // `init` checked this for its own tensors; an info of another file must not read past the mapping.
        let start = src - file.base
        guard start >= 0, n / type.blockSize <= (file.count - start) / type.blockBytes else {
            throw ModelError.truncated(file: path, what: "data of tensor '\(info.name)' (not within this file)")
        }
        switch dequant_row(type.rawValue, src, dst, n) {
        case 0: return
        case -2:
            throw ModelError.corrupt(file: path, what: "tensor '\(info.name)': \(n) elements is not a multiple of the \(type) block size")
        default:
            throw ModelError.unsupportedTensorType(file: path, tensor: info.name, type: type.description)
        }
    }
}

/// IEEE float16 and bfloat16 <-> float32 conversions on raw little-endian bytes (as stored in GGUF
/// and safetensors files). float16/bfloat16 -> float32 is exact; float32 -> float16/bfloat16 rounds to
/// nearest even, as PyTorch's `.half()` / `.bfloat16()` do. Sources and destinations need no
/// particular alignment. Thread: any.
public enum HalfPrecision {
    /// Converts `count` float16 values at `src` to float32.
    public static func f16ToF32(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, count: Int) {
        dequant_f16_to_f32(src, dst, count)
    }

    /// Converts `count` bfloat16 values at `src` to float32.
    public static func bf16ToF32(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, count: Int) {
        dequant_bf16_to_f32(src, dst, count)
    }

    /// Converts `count` floats to float16 (2 bytes each at `dst`), rounding to nearest even.
    public static func f32ToF16(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, count: Int) {
        dequant_f32_to_f16(src, dst, count)
    }

    /// Converts `count` floats to bfloat16 (2 bytes each at `dst`), rounding to nearest even.
    public static func f32ToBF16(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, count: Int) {
        dequant_f32_to_bf16(src, dst, count)
    }

    /// The float32 value of float16 bits `bits`.
    public static func f16ToF32(_ bits: UInt16) -> Float { dequant_f16_value(bits) }
    /// The float16 bits nearest to `value` (ties to even).
    public static func f32ToF16(_ value: Float) -> UInt16 { dequant_f16_bits(value) }
    /// The float32 value of bfloat16 bits `bits`.
    public static func bf16ToF32(_ bits: UInt16) -> Float { dequant_bf16_value(bits) }
    /// The bfloat16 bits nearest to `value` (ties to even).
    public static func f32ToBF16(_ value: Float) -> UInt16 { dequant_bf16_bits(value) }
}
