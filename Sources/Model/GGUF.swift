/// GGUF (llama.cpp's model file format, versions 2 and 3): header, typed metadata, tensor infos and
/// the aligned tensor data section, read from a memory-mapped file.
///
/// Layout: magic `GGUF`, u32 version, u64 tensor count, u64 metadata count; then the metadata
/// key/value pairs; then per tensor its name, dimension count, dimensions (innermost first), ggml type
/// and offset into the data section; the data section starts at the next multiple of
/// `general.alignment` (default 32). All integers are little-endian.
public final class GGUFFile: @unchecked Sendable {
    /// A metadata value of any of GGUF's thirteen value types.
    public enum Value: Equatable, Sendable {
        case uint(UInt64)      // UINT8, UINT16, UINT32, UINT64
        case int(Int64)        // INT8, INT16, INT32, INT64
        case float(Double)     // FLOAT32, FLOAT64
        case bool(Bool)
        case string(String)
        case array([Value])

        public var int: Int? {
            switch self {
            case let .uint(v): return v <= UInt64(Int.max) ? Int(v) : nil
            case let .int(v): return Int(v)
            default: return nil
            }
        }
        public var double: Double? {
            switch self {
            case let .float(v): return v
            case let .uint(v): return Double(v)
            case let .int(v): return Double(v)
            default: return nil
            }
        }
        public var string: String? { if case let .string(s) = self { return s } else { return nil } }
        public var bool: Bool? { if case let .bool(b) = self { return b } else { return nil } }
        public var array: [Value]? { if case let .array(a) = self { return a } else { return nil } }
    }

    /// One tensor's description. `dims` are in GGUF order (innermost, i.e. contiguous, first).
    public struct TensorInfo: Sendable {
        public let name: String
        public let dims: [Int]
        public let type: GGMLType
        public let rawType: UInt32
        /// Byte offset from the start of the file.
        public let offset: Int
        public var elementCount: Int { dims.reduce(1, *) }
    }

    public let file: MappedFile
    public let version: UInt32
    public let metadata: [String: Value]
    /// Metadata keys in file order.
    public let metadataKeys: [String]
    public let tensors: [TensorInfo]
    public let tensorsByName: [String: Int]
    public let alignment: Int
    public let dataOffset: Int

    public var path: String { file.path }

    public convenience init(path: String) throws {
        try self.init(file: MappedFile(path: path))
    }

    public init(file: MappedFile) throws {
        self.file = file
        let path = file.path
        var r = ByteReader(base: file.base, count: file.count, file: path)
        let magic = try r.read(UInt32.self, "header magic")
        guard magic == 0x4655_4747 else { throw ModelError.corrupt(file: path, what: "not a GGUF file: bad magic") }
        version = try r.read(UInt32.self, "header version")
        guard version == 2 || version == 3 else {
            throw ModelError.corrupt(file: path, what: "unsupported GGUF version \(version) (supported: 2, 3)")
        }
        let tensorCount = try r.read(UInt64.self, "header tensor count")
        let kvCount = try r.read(UInt64.self, "header metadata count")
        // Every KV needs at least 12 bytes and every tensor info at least 24: reject absurd counts early.
        guard kvCount <= UInt64(file.count / 12), tensorCount <= UInt64(file.count / 24) else {
            throw ModelError.corrupt(file: path, what: "header declares \(kvCount) metadata entries and \(tensorCount) tensors, more than the file can hold")
        }

        var md: [String: Value] = [:]
        var keys: [String] = []
        for i in 0..<Int(kvCount) {
            let key = try Self.readString(&r, "metadata key #\(i)")
            let type = try r.read(UInt32.self, "type of metadata '\(key)'")
            md[key] = try Self.readValue(&r, type: type, key: key, depth: 0)
            keys.append(key)
        }
        metadata = md
        metadataKeys = keys

        let align = md["general.alignment"]?.int ?? 32
        guard align > 0, align & (align - 1) == 0 else {
            throw ModelError.badField(file: path, field: "general.alignment", reason: "must be a power of two, got \(align)")
        }
        alignment = align

        var infos: [(String, [Int], UInt32, UInt64)] = []
        infos.reserveCapacity(Int(tensorCount))
        for i in 0..<Int(tensorCount) {
            let name = try Self.readString(&r, "name of tensor #\(i)")
            let nd = try r.read(UInt32.self, "dimension count of tensor '\(name)'")
            guard nd >= 1, nd <= 4 else { throw ModelError.corrupt(file: path, what: "tensor '\(name)' has \(nd) dimensions") }
            var dims: [Int] = []
            for d in 0..<Int(nd) {
                let v = try r.read(UInt64.self, "dimension \(d) of tensor '\(name)'")
                guard v > 0, v < 1 << 40 else { throw ModelError.corrupt(file: path, what: "tensor '\(name)' has dimension \(v)") }
                dims.append(Int(v))
            }
            let type = try r.read(UInt32.self, "type of tensor '\(name)'")
            let off = try r.read(UInt64.self, "offset of tensor '\(name)'")
            infos.append((name, dims, type, off))
        }
        let start = (r.offset + align - 1) / align * align
        dataOffset = start

        var list: [TensorInfo] = []
        var byName: [String: Int] = [:]
        for (name, dims, rawType, off) in infos {
            let type = GGMLType(rawValue: rawType) ?? .unknown
            guard off < UInt64(Int.max / 2) else { throw ModelError.corrupt(file: path, what: "tensor '\(name)' offset \(off)") }
            let info = TensorInfo(name: name, dims: dims, type: type, rawType: rawType, offset: start + Int(off))
            // Multiply checked: four dimensions below 2^40 can overflow Int (a trap in debug, a
            // wrapped, plausible-looking count under -Ounchecked). This also makes `elementCount`
            // safe to call later, whatever the type.
            var count = 1
            for d in dims {
                let (p, overflow) = count.multipliedReportingOverflow(by: d)
                guard !overflow else { throw ModelError.corrupt(file: path, what: "tensor '\(name)' has dimensions \(dims), too many elements") }
                count = p
            }
            if type != .unknown {
                guard count % type.blockSize == 0 else {
                    throw ModelError.corrupt(file: path, what: "tensor '\(name)' has \(count) elements, not a multiple of its \(type) block size \(type.blockSize)")
                }
                // Compare in blocks so that neither the byte count nor offset + bytes can overflow.
                let blocks = count / type.blockSize
                if info.offset > file.count || blocks > (file.count - info.offset) / type.blockBytes {
                    let bytes = blocks.multipliedReportingOverflow(by: type.blockBytes)
                    let needs = bytes.overflow ? "more than \(Int.max) bytes" : "\(bytes.partialValue) bytes at offset \(info.offset)"
                    throw ModelError.truncated(file: path, what: "data of tensor '\(name)' (needs \(needs), file has \(file.count))")
                }
            }
            byName[name] = list.count
            list.append(info)
        }
        tensors = list
        tensorsByName = byName
    }

    public func tensor(_ name: String) -> TensorInfo? { tensorsByName[name].map { tensors[$0] } }

    /// Pointer to the raw (possibly quantised) bytes of a tensor inside the mapping.
    public func data(of info: TensorInfo) -> UnsafeRawPointer { file.base + info.offset }

    // MARK: typed metadata accessors that name the missing field

    public func int(_ key: String) throws -> Int {
        guard let v = metadata[key] else { throw ModelError.missingField(file: path, field: key) }
        guard let i = v.int else { throw ModelError.badField(file: path, field: key, reason: "expected an integer") }
        return i
    }

    /// The integer at `key`, nil when absent; throws when present with another type.
    public func optionalInt(_ key: String) throws -> Int? { metadata[key] == nil ? nil : try int(key) }
    /// The number at `key`, nil when absent; throws when present with another type.
    public func optionalDouble(_ key: String) throws -> Double? { metadata[key] == nil ? nil : try double(key) }

    public func double(_ key: String) throws -> Double {
        guard let v = metadata[key] else { throw ModelError.missingField(file: path, field: key) }
        guard let d = v.double else { throw ModelError.badField(file: path, field: key, reason: "expected a number") }
        return d
    }

    public func string(_ key: String) throws -> String {
        guard let v = metadata[key] else { throw ModelError.missingField(file: path, field: key) }
        guard let s = v.string else { throw ModelError.badField(file: path, field: key, reason: "expected a string") }
        return s
    }

    public func strings(_ key: String) throws -> [String] {
        guard let v = metadata[key] else { throw ModelError.missingField(file: path, field: key) }
        guard let a = v.array else { throw ModelError.badField(file: path, field: key, reason: "expected an array of strings") }
        return try a.map {
            guard let s = $0.string else { throw ModelError.badField(file: path, field: key, reason: "expected an array of strings") }
            return s
        }
    }

    public func ints(_ key: String) throws -> [Int] {
        guard let v = metadata[key] else { throw ModelError.missingField(file: path, field: key) }
        guard let a = v.array else { throw ModelError.badField(file: path, field: key, reason: "expected an array of integers") }
        return try a.map {
            guard let i = $0.int else { throw ModelError.badField(file: path, field: key, reason: "expected an array of integers") }
            return i
        }
    }

    // MARK: parsing

    static func readString(_ r: inout ByteReader, _ what: @autoclosure () -> String) throws -> String {
        let n = try r.read(UInt64.self, what())
        guard n <= UInt64(r.count) else { throw ModelError.truncated(file: r.file, what: what()) }
        let bytes = try r.readBytes(Int(n), what())
        return String(decoding: bytes, as: UTF8.self)
    }

    static func readValue(_ r: inout ByteReader, type: UInt32, key: String, depth: Int) throws -> Value {
        let what = "value of metadata '\(key)'"
        switch type {
        case 0: return .uint(UInt64(try r.read(UInt8.self, what)))
        case 1: return .int(Int64(try r.read(Int8.self, what)))
        case 2: return .uint(UInt64(try r.read(UInt16.self, what)))
        case 3: return .int(Int64(try r.read(Int16.self, what)))
        case 4: return .uint(UInt64(try r.read(UInt32.self, what)))
        case 5: return .int(Int64(try r.read(Int32.self, what)))
        case 6: return .float(Double(try r.readF32(what)))
        case 7:
            let b = try r.read(UInt8.self, what)
            guard b <= 1 else { throw ModelError.corrupt(file: r.file, what: "metadata '\(key)': bool value \(b)") }
            return .bool(b == 1)
        case 8: return .string(try readString(&r, what))
        case 9:
            guard depth < 4 else { throw ModelError.corrupt(file: r.file, what: "metadata '\(key)': arrays nested too deep") }
            let elemType = try r.read(UInt32.self, "element type of metadata '\(key)'")
            let n = try r.read(UInt64.self, "length of metadata '\(key)'")
            guard n <= UInt64(r.count - r.offset) else { throw ModelError.truncated(file: r.file, what: what) }
            var out: [Value] = []
            out.reserveCapacity(Int(n))
            for _ in 0..<Int(n) { out.append(try readValue(&r, type: elemType, key: key, depth: depth + 1)) }
            return .array(out)
        case 10: return .uint(try r.read(UInt64.self, what))
        case 11: return .int(try r.read(Int64.self, what))
        case 12: return .float(try r.readF64(what))
        default: throw ModelError.corrupt(file: r.file, what: "metadata '\(key)' has unknown value type \(type)")
        }
    }
}

/// ggml tensor storage types this project knows the size of. Only some are dequantised; see
/// `isSupported`.
public enum GGMLType: UInt32, Sendable, CustomStringConvertible {
    case f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8, q8_1 = 9
    case q2_K = 10, q3_K = 11, q4_K = 12, q5_K = 13, q6_K = 14, q8_K = 15
    case bf16 = 30
    case unknown = 0xFFFF_FFFF

    /// Elements per quantisation block.
    public var blockSize: Int {
        switch self {
        case .f32, .f16, .bf16, .unknown: return 1
        case .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q8_1: return 32
        case .q2_K, .q3_K, .q4_K, .q5_K, .q6_K, .q8_K: return 256
        }
    }

    /// Bytes per quantisation block.
    public var blockBytes: Int {
        switch self {
        case .f32: return 4
        case .f16, .bf16: return 2
        case .q4_0: return 18
        case .q4_1: return 20
        case .q5_0: return 22
        case .q5_1: return 24
        case .q8_0: return 34
        case .q8_1: return 36
        case .q2_K: return 84
        case .q3_K: return 110
        case .q4_K: return 144
        case .q5_K: return 176
        case .q6_K: return 210
        case .q8_K: return 292
        case .unknown: return 0
        }
    }

    /// Whether `dequantize` handles this type.
    public var isSupported: Bool {
        switch self {
        case .f32, .f16, .bf16, .q8_0, .q4_0, .q4_1, .q4_K, .q5_K, .q6_K: return true
        default: return false
        }
    }

    public var description: String {
        switch self {
        case .f32: return "F32"
        case .f16: return "F16"
        case .bf16: return "BF16"
        case .q4_0: return "Q4_0"
        case .q4_1: return "Q4_1"
        case .q5_0: return "Q5_0"
        case .q5_1: return "Q5_1"
        case .q8_0: return "Q8_0"
        case .q8_1: return "Q8_1"
        case .q2_K: return "Q2_K"
        case .q3_K: return "Q3_K"
        case .q4_K: return "Q4_K"
        case .q5_K: return "Q5_K"
        case .q6_K: return "Q6_K"
        case .q8_K: return "Q8_K"
        case .unknown: return "unknown"
        }
    }
}
