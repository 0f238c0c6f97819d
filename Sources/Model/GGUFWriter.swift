import DurableFile
/// Writes GGUF v3 files with F32 or BF16 tensors (durably: temp name, fsync, rename).
public enum GGUFWriter {
    /// A tensor to write: `dims` in GGUF order (contiguous dimension first).
    public struct Tensor {
        public var name: String
        public var dims: [Int]
        public var data: UnsafePointer<Float>
        /// `.f32`, or `.bf16` (converted while writing, `BF16Split.bf16`).
        public var type: GGMLType
        public init(name: String, dims: [Int], data: UnsafePointer<Float>, type: GGMLType = .f32) {
            precondition(type == .f32 || type == .bf16, "GGUFWriter writes F32 or BF16 tensors")
            self.name = name; self.dims = dims; self.data = data; self.type = type
        }
        var encoding: TensorEncoding { type == .bf16 ? .bf16 : .f32 }
    }

    public static let alignment = 32

    public static func write(path: String, metadata: [(String, GGUFFile.Value)], tensors: [Tensor]) throws {
        try modelIO { try writeFile(path: path, metadata: metadata, tensors: tensors) }
    }

    private static func writeFile(path: String, metadata: [(String, GGUFFile.Value)], tensors: [Tensor]) throws {
        let w = try DurableFileWriter(path: path)
        try w.write(le: UInt32(0x4655_4747))
        try w.write(le: UInt32(3))
        try w.write(le: UInt64(tensors.count))
        try w.write(le: UInt64(metadata.count))
        for (key, value) in metadata {
            try writeString(w, key)
            try writeTyped(w, value, key: key)
        }
        var offset = 0
        for t in tensors {
            try writeString(w, t.name)
            try w.write(le: UInt32(t.dims.count))
            for d in t.dims { try w.write(le: UInt64(d)) }
            try w.write(le: t.type.rawValue)
            try w.write(le: UInt64(offset))
            offset += align(t.dims.reduce(1, *) * t.encoding.bytesPerElement)
        }
        try pad(w)
        for t in tensors {
            let n = t.dims.reduce(1, *)
            try t.encoding.write(t.data, count: n, to: w)
            try pad(w)
        }
        try w.commit()
    }

    static func align(_ n: Int) -> Int { (n + alignment - 1) / alignment * alignment }

    static func pad(_ w: DurableFileWriter) throws {
        let n = align(w.offset) - w.offset
        if n > 0 { try w.write([UInt8](repeating: 0, count: n)) }
    }

    static func writeString(_ w: DurableFileWriter, _ s: String) throws {
        let b = Array(s.utf8)
        try w.write(le: UInt64(b.count))
        try w.write(b)
    }

    /// Value type codes: integers are written as INT32/UINT32 when they fit (as llama.cpp expects for
    /// sizes and token ids), else 64-bit; floats as FLOAT32 (GGUF's usual), strings, bools, arrays.
    static func typeCode(_ v: GGUFFile.Value) -> UInt32 {
        switch v {
        case let .uint(x): return x <= UInt64(UInt32.max) ? 4 : 10
        case let .int(x): return (Int64(Int32.min)...Int64(Int32.max)).contains(x) ? 5 : 11
        case .float: return 6
        case .bool: return 7
        case .string: return 8
        case .array: return 9
        }
    }

    static func writeTyped(_ w: DurableFileWriter, _ v: GGUFFile.Value, key: String) throws {
        try w.write(le: typeCode(v))
        try writeValue(w, v, as: typeCode(v))
    }

    static func writeValue(_ w: DurableFileWriter, _ v: GGUFFile.Value, as code: UInt32) throws {
        switch v {
        case .uint, .int:
            let i: Int64 = { if case let .int(x) = v { return x }; if case let .uint(x) = v { return Int64(bitPattern: x) }; return 0 }()
            switch code {
            case 4: try w.write(le: UInt32(truncatingIfNeeded: i))
            case 5: try w.write(le: Int32(truncatingIfNeeded: i))
            case 10: try w.write(le: UInt64(bitPattern: i))
            default: try w.write(le: i)
            }
        case let .float(x): try w.write(le: Float(x).bitPattern)
        case let .bool(b): try w.write([b ? 1 : 0])
        case let .string(s): try writeString(w, s)
        case let .array(a):
            // Elements share one type: the widest integer code among them, else the first's code.
            let codes = Set(a.map(typeCode))
            var elem = a.first.map(typeCode) ?? 4
            if codes.isSubset(of: [4, 5, 10, 11]) && !codes.isEmpty {
                if codes.contains(11) || (codes.contains(10) && codes.contains(5)) { elem = 11 }
                else if codes.contains(10) { elem = 10 }
                else if codes.contains(5) { elem = 5 }
                else { elem = 4 }
            }
            try w.write(le: elem)
            try w.write(le: UInt64(a.count))
            for x in a { try writeValue(w, x, as: elem) }
        }
    }
}
