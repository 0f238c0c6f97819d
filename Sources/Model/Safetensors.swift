import DurableFile
import Foundation
import Kernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

#if _endian(big)
#error("safetensors I/O assumes a little-endian host")
#endif

// Safetensors (https://github.com/huggingface/safetensors): an 8-byte little-endian unsigned header
// length N, N bytes of UTF-8 JSON (padded with spaces so the data starts 8-byte aligned), then the
// data section. The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end)}
// (offsets relative to the data section), plus an optional "__metadata__" string -> string map. The
// tensors must tile the data section exactly: no overlaps, no holes, nothing after the last one.

/// A safetensors element type: the `dtype` string of the format ("F32", "BF16", "I64", ...).
public struct SafetensorsDType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }

    /// IEEE binary32.
    public static let f32 = SafetensorsDType(rawValue: "F32")
    /// IEEE binary16.
    public static let f16 = SafetensorsDType(rawValue: "F16")
    /// bfloat16 (the top half of a binary32).
    public static let bf16 = SafetensorsDType(rawValue: "BF16")

    /// Bits per element for the dtypes the format defines, nil for an unknown dtype string.
    public var bitsPerElement: Int? {
        switch rawValue {
        case "BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0": return 8
        case "I16", "U16", "F16", "BF16": return 16
        case "I32", "U32", "F32": return 32
        case "I64", "U64", "F64": return 64
        case "F4": return 4
        case "F6_E2M3", "F6_E3M2": return 6
        default: return nil
        }
    }

    /// Whether `SafetensorsFile.read` converts this dtype to float32 (F32, F16, BF16).
    public var isSupported: Bool { self == .f32 || self == .f16 || self == .bf16 }

    public var description: String { rawValue }
}

/// A safetensors file, memory-mapped. Opening it parses and validates the header (every failure is a
/// `ModelError` naming the file and the field or tensor); tensor bytes are read only on demand.
///
/// Thread: immutable after `init`; any thread may read tensors concurrently.
public final class SafetensorsFile: @unchecked Sendable {
    /// One tensor's header entry.
    public struct TensorInfo: Sendable, Equatable {
        /// The tensor's key in the header.
        public let name: String
        /// Element type as stored.
        public let dtype: SafetensorsDType
        /// Row-major shape, outermost first (as PyTorch); `[]` is a scalar.
        public let shape: [Int]
        /// Byte range of the data, from the start of the file.
        public let byteRange: Range<Int>
        /// Number of elements (the product of `shape`; 1 for a scalar).
        public let elementCount: Int
    }

    /// Headers larger than this are rejected (the reference implementation's limit).
    public static let maxHeaderBytes = 100_000_000

    /// The mapping the tensors are read from.
    public let file: MappedFile
    /// `__metadata__` (empty if absent).
    public let metadata: [String: String]
    /// All tensors, in the order of their data in the file.
    public let tensors: [TensorInfo]
    /// Tensor name -> index into `tensors`.
    public let tensorsByName: [String: Int]
    /// Offset of the data section from the start of the file (8 + header length).
    public let dataOffset: Int

    /// The file's path, as given to `init`.
    public var path: String { file.path }

    /// Opens and validates `path`.
    /// - Throws: `ModelError` naming the file and what is wrong (truncated header, header length beyond
    ///   the file, bad JSON, a missing or malformed dtype/shape/data_offsets, a size that does not match
    ///   dtype × shape, overlapping, out-of-range or non-contiguous offsets).
    public convenience init(path: String) throws {
        try self.init(file: MappedFile(path: path))
    }

    /// Validates an already mapped file (see `init(path:)`).
    public init(file: MappedFile) throws {
        self.file = file
        let path = file.path
        guard file.count >= 8 else {
            throw ModelError.truncated(file: path, what: "header length (needs 8 bytes, file has \(file.count))")
        }
        let declared = UInt64(littleEndian: file.base.loadUnaligned(as: UInt64.self))
        guard declared <= UInt64(file.count - 8) else {
            throw ModelError.truncated(file: path, what: "JSON header (declares \(declared) bytes, only \(file.count - 8) follow the length)")
        }
        let headerLength = Int(declared)
        guard headerLength <= Self.maxHeaderBytes else {
            throw ModelError.corrupt(file: path, what: "JSON header of \(headerLength) bytes exceeds the \(Self.maxHeaderBytes)-byte limit")
        }
        let header = UnsafeRawBufferPointer(start: file.base + 8, count: headerLength)
        guard header.first == UInt8(ascii: "{") else {
            throw ModelError.corrupt(file: path, what: "JSON header does not start with '{' (is this a safetensors file?)")
        }
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: Data(header))
        } catch {
            throw ModelError.corrupt(file: path, what: "JSON header is not valid JSON (\(error.localizedDescription))")
        }
        guard let top = object as? [String: Any] else {
            throw ModelError.corrupt(file: path, what: "JSON header is not an object")
        }

        dataOffset = 8 + headerLength
        let dataSize = file.count - dataOffset
        var md: [String: String] = [:]
        var list: [TensorInfo] = []
        var relative: [String: (Int, Int)] = [:]
        for (name, value) in top {
            if name == "__metadata__" {
                guard let dict = value as? [String: Any] else {
                    throw ModelError.badField(file: path, field: "__metadata__", reason: "expected an object of strings")
                }
                for (k, v) in dict {
                    guard let s = v as? String else {
                        throw ModelError.badField(file: path, field: "__metadata__.\(k)", reason: "expected a string")
                    }
                    md[k] = s
                }
                continue
            }
            guard let entry = value as? [String: Any] else {
                throw ModelError.badField(file: path, field: name, reason: "expected an object with dtype, shape and data_offsets")
            }
            guard let dtypeValue = entry["dtype"] else { throw ModelError.missingField(file: path, field: "\(name).dtype") }
            guard let dtypeName = dtypeValue as? String else {
                throw ModelError.badField(file: path, field: "\(name).dtype", reason: "expected a string")
            }
            let dtype = SafetensorsDType(rawValue: dtypeName)
            guard let shapeValue = entry["shape"] else { throw ModelError.missingField(file: path, field: "\(name).shape") }
            guard let shapeArray = shapeValue as? [Any], let shape = Self.nonNegativeInts(shapeArray) else {
                throw ModelError.badField(file: path, field: "\(name).shape", reason: "expected an array of non-negative integers")
            }
            guard let offsetsValue = entry["data_offsets"] else {
                throw ModelError.missingField(file: path, field: "\(name).data_offsets")
            }
            guard let offsetsArray = offsetsValue as? [Any], let offsets = Self.nonNegativeInts(offsetsArray),
                  offsets.count == 2, offsets[0] <= offsets[1] else {
                throw ModelError.badField(file: path, field: "\(name).data_offsets", reason: "expected [begin, end] with 0 <= begin <= end")
            }
            var count = 1
            for d in shape {
                let (p, overflow) = count.multipliedReportingOverflow(by: d)
                guard !overflow, p <= Int.max / 64 else {
                    throw ModelError.badField(file: path, field: "\(name).shape", reason: "\(shape) has too many elements")
                }
                count = p
            }
            let (begin, end) = (offsets[0], offsets[1])
            if let bits = dtype.bitsPerElement {
                guard count * bits % 8 == 0 else {
                    throw ModelError.badField(file: path, field: "\(name).shape", reason: "\(count) elements of \(dtype) is not a whole number of bytes")
                }
                let bytes = count * bits / 8
                guard end - begin == bytes else {
                    throw ModelError.badField(file: path, field: "\(name).data_offsets",
                                              reason: "[\(begin), \(end)) spans \(end - begin) bytes but \(dtype) × \(shape) needs \(bytes)")
                }
            }
            guard end <= dataSize else {
                throw ModelError.truncated(file: path, what: "data of tensor '\(name)' (data_offsets [\(begin), \(end)), the data section has \(dataSize) bytes)")
            }
            relative[name] = (begin, end)
            list.append(TensorInfo(name: name, dtype: dtype, shape: shape,
                                   byteRange: dataOffset + begin ..< dataOffset + end, elementCount: count))
        }

        // The tensors must tile the data section: sorted by offset, each starts where the last ended.
        list.sort { ($0.byteRange.lowerBound, $0.byteRange.upperBound, $0.name) < ($1.byteRange.lowerBound, $1.byteRange.upperBound, $1.name) }
        var expected = 0
        var previous: String? = nil
        for t in list {
            let (begin, end) = relative[t.name]!
            if begin < expected, let p = previous {
                let (pb, pe) = relative[p]!
                throw ModelError.corrupt(file: path, what: "tensors '\(p)' (data_offsets [\(pb), \(pe))) and '\(t.name)' ([\(begin), \(end))) overlap")
            }
            if begin > expected {
                throw ModelError.corrupt(file: path, what: "\(begin - expected) unused bytes before tensor '\(t.name)' (data_offsets [\(begin), \(end))); the format forbids holes")
            }
            expected = end
            previous = t.name
        }
        if expected != dataSize {
            throw ModelError.corrupt(file: path, what: "\(dataSize - expected) bytes after the last tensor's data; the format forbids trailing data")
        }

        metadata = md
        tensors = list
        var byName: [String: Int] = [:]
        for (i, t) in list.enumerated() { byName[t.name] = i }
        tensorsByName = byName
    }

    /// The tensor called `name`, or nil.
    public func tensor(_ name: String) -> TensorInfo? { tensorsByName[name].map { tensors[$0] } }

    /// The raw bytes of a tensor inside the mapping (valid while this object lives).
    public func data(of info: TensorInfo) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: file.base + info.byteRange.lowerBound, count: info.byteRange.count)
    }

    /// Reads a tensor as float32 (row-major, `info.elementCount` values) into `dst`. F16 and BF16 are
    /// converted exactly, as PyTorch's `.float()` does.
    /// - Throws: `ModelError.unsupportedTensorType` naming the file and tensor for any other dtype.
    public func read(_ info: TensorInfo, into dst: UnsafeMutablePointer<Float>) throws {
        // An entry of another file would read the wrong bytes (or past this mapping).
        guard let i = tensorsByName[info.name], tensors[i] == info else {
            throw ModelError.missingTensor(file: path, tensor: info.name)
        }
        let src = file.base + info.byteRange.lowerBound
        switch info.dtype {
        case .f32: dequant_f32_copy(src, dst, info.elementCount)
        case .f16: dequant_f16_to_f32(src, dst, info.elementCount)
        case .bf16: dequant_bf16_to_f32(src, dst, info.elementCount)
        default:
            throw ModelError.unsupportedTensorType(file: path, tensor: info.name, type: info.dtype.rawValue)
        }
    }

    /// Reads the tensor called `name` as float32 into `dst` (see `read(_:into:)`).
    /// - Throws: `ModelError.missingTensor` if there is no such tensor.
    public func read(_ name: String, into dst: UnsafeMutablePointer<Float>) throws {
        guard let info = tensor(name) else { throw ModelError.missingTensor(file: path, tensor: name) }
        try read(info, into: dst)
    }

    /// The tensor called `name` as a new float32 array (see `read(_:into:)`).
    public func floats(_ name: String) throws -> [Float] {
        guard let info = tensor(name) else { throw ModelError.missingTensor(file: path, tensor: name) }
        guard info.dtype.isSupported else {
            throw ModelError.unsupportedTensorType(file: path, tensor: name, type: info.dtype.rawValue)
        }
        return try [Float](unsafeUninitializedCapacity: info.elementCount) { buf, n in
            if info.elementCount > 0 { try read(info, into: buf.baseAddress!) }
            n = info.elementCount
        }
    }

    /// JSON integers that are >= 0 (rejects booleans, fractions and out-of-range numbers).
    static func nonNegativeInts(_ values: [Any]) -> [Int]? {
        var out: [Int] = []
        out.reserveCapacity(values.count)
        for v in values {
            guard let i = jsonInt(v), i >= 0 else { return nil }
            out.append(i)
        }
        return out
    }

    static func jsonInt(_ v: Any) -> Int? {
        guard let n = v as? NSNumber else { return nil }
        // Foundation represents JSON true/false as NSNumber with objCType "c", fractions as "d"/"f".
        let kind = String(cString: n.objCType)
        guard kind != "c", kind != "d", kind != "f" else { return nil }
        return n as? Int
    }
}

/// The safetensors weights of a Hugging Face model directory: either one `model.safetensors` or
/// several shards listed by `model.safetensors.index.json` (`weight_map`: tensor name -> shard file).
/// `model.safetensors` wins if both exist, as in transformers.
///
/// Thread: immutable after `init`; any thread may read tensors concurrently.
public final class SafetensorsDirectory: @unchecked Sendable {
    /// Where a tensor lives.
    public struct Entry: Sendable {
        /// The file (shard) holding the tensor.
        public let file: SafetensorsFile
        /// The tensor's header entry in that file.
        public let info: SafetensorsFile.TensorInfo
    }

    /// The weights file of an unsharded checkpoint.
    public static let singleFileName = "model.safetensors"
    /// The index of a sharded checkpoint.
    public static let indexFileName = "model.safetensors.index.json"

    /// The directory, as given to `init`.
    public let directory: String
    /// The opened files (one, or every shard in name order).
    public let files: [SafetensorsFile]
    /// Tensor name -> file and header entry.
    public let entries: [String: Entry]

    /// Tensor names, sorted.
    public var names: [String] { entries.keys.sorted() }

    /// Opens `directory`/model.safetensors, or every shard named by
    /// `directory`/model.safetensors.index.json.
    /// - Throws: `ModelError.io` if neither exists; `ModelError` naming the index file and field for a
    ///   malformed index (missing `weight_map`, a shard name that is not a plain file name); a shard's
    ///   own open/validation error; `ModelError.missingTensor` naming the shard if the index lists a
    ///   tensor the shard lacks.
    public init(path directory: String) throws {
        self.directory = directory
        let single = (directory as NSString).appendingPathComponent(Self.singleFileName)
        let index = (directory as NSString).appendingPathComponent(Self.indexFileName)
        let fm = FileManager.default
        if fm.fileExists(atPath: single) {
            let f = try SafetensorsFile(path: single)
            files = [f]
            var map: [String: Entry] = [:]
            for t in f.tensors { map[t.name] = Entry(file: f, info: t) }
            entries = map
            return
        }
        guard fm.fileExists(atPath: index) else {
            throw ModelError.io(file: directory, reason: "no \(Self.singleFileName) or \(Self.indexFileName) in this directory")
        }
        let weightMap = try Self.readWeightMap(index)
        var opened: [String: SafetensorsFile] = [:]
        for shard in Set(weightMap.values).sorted() {
            opened[shard] = try SafetensorsFile(path: (directory as NSString).appendingPathComponent(shard))
        }
        var map: [String: Entry] = [:]
        for (name, shard) in weightMap {
            let f = opened[shard]!
            guard let info = f.tensor(name) else { throw ModelError.missingTensor(file: f.path, tensor: name) }
            map[name] = Entry(file: f, info: info)
        }
        files = opened.keys.sorted().map { opened[$0]! }
        entries = map
    }

    /// Parses a `model.safetensors.index.json`: tensor name -> shard file name.
    static func readWeightMap(_ index: String) throws -> [String: String] {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: index)) } catch {
            throw ModelError.io(file: index, reason: "cannot read: \(error.localizedDescription)")
        }
        let object: Any
        do { object = try JSONSerialization.jsonObject(with: data) } catch {
            throw ModelError.corrupt(file: index, what: "not valid JSON (\(error.localizedDescription))")
        }
        guard let top = object as? [String: Any] else { throw ModelError.corrupt(file: index, what: "not a JSON object") }
        guard let wm = top["weight_map"] else { throw ModelError.missingField(file: index, field: "weight_map") }
        guard let dict = wm as? [String: Any] else {
            throw ModelError.badField(file: index, field: "weight_map", reason: "expected an object mapping tensor names to file names")
        }
        var out: [String: String] = [:]
        for (name, v) in dict {
            guard let shard = v as? String else {
                throw ModelError.badField(file: index, field: "weight_map.\(name)", reason: "expected a file name")
            }
            guard !shard.isEmpty, !shard.contains("/"), shard != ".", shard != ".." else {
                throw ModelError.badField(file: index, field: "weight_map.\(name)", reason: "'\(shard)' is not a file name in this directory")
            }
            out[name] = shard
        }
        return out
    }

    /// Where the tensor called `name` lives, or nil.
    public func tensor(_ name: String) -> Entry? { entries[name] }

    /// Reads the tensor called `name` as float32 into `dst` (see `SafetensorsFile.read`).
    /// - Throws: `ModelError.missingTensor` naming the directory if absent.
    public func read(_ name: String, into dst: UnsafeMutablePointer<Float>) throws {
        guard let e = entries[name] else { throw ModelError.missingTensor(file: directory, tensor: name) }
        try e.file.read(e.info, into: dst)
    }

    /// The tensor called `name` as a new float32 array.
    public func floats(_ name: String) throws -> [Float] {
        guard let e = entries[name] else { throw ModelError.missingTensor(file: directory, tensor: name) }
        return try e.file.floats(name)
    }
}

/// Writes float32 tensors as a safetensors file, crash-safely: the bytes go to a temporary file in
/// the same directory, which is fsynced, renamed over `path`, and the directory fsynced. Tensors are
/// laid out in the order given, each `F32` with the given row-major shape (`[]` = scalar), reading
/// `shape.product` floats from `data`. The JSON header is padded with spaces to a multiple of 8 bytes,
/// so every tensor's data is 8-byte aligned in the file. `metadata` becomes `__metadata__` (omitted
/// when empty). The result loads with `safetensors.torch.load_file` and transformers.
///
/// - Throws: `ModelError.badField` naming the file and tensor for an empty, duplicate or reserved name
///   or a negative dimension; `ModelError.io` naming the file for any system-call failure (the
///   temporary file is removed).
/// - Thread: any; the pointers must stay valid for the call.
public func writeSafetensors(path: String, tensors: [(name: String, shape: [Int], data: UnsafePointer<Float>)],
                             metadata: [String: String] = [:]) throws {
    try writeSafetensors(path: path, encoded: tensors.map { ($0.name, $0.shape, $0.data, .f32) }, metadata: metadata)
}

/// `writeSafetensors` with each tensor stored as its `encoding` says: `F32`, `BF16`
/// (`BF16Split.bf16`) or `I16` (`BF16Split.residual`), converted while writing.
public func writeSafetensors(path: String, encoded tensors: [(name: String, shape: [Int], data: UnsafePointer<Float>, encoding: TensorEncoding)],
                             metadata: [String: String] = [:]) throws {
    var seen = Set<String>()
    var header = "{"
    var first = true
    if !metadata.isEmpty {
        header += "\"__metadata__\":{"
        header += metadata.keys.sorted().map { "\(jsonString($0)):\(jsonString(metadata[$0]!))" }.joined(separator: ",")
        header += "}"
        first = false
    }
    var offset = 0
    var sizes: [Int] = []
    for t in tensors {
        guard !t.name.isEmpty, t.name != "__metadata__" else {
            throw ModelError.badField(file: path, field: t.name, reason: "not a usable tensor name")
        }
        guard seen.insert(t.name).inserted else {
            throw ModelError.badField(file: path, field: t.name, reason: "tensor name given twice")
        }
        var count = 1
        for d in t.shape {
            let (p, overflow) = count.multipliedReportingOverflow(by: d)
            guard d >= 0, !overflow, p <= Int.max / 8 else {
                throw ModelError.badField(file: path, field: t.name, reason: "bad shape \(t.shape)")
            }
            count = p
        }
        let bytes = count * t.encoding.bytesPerElement
        if !first { header += "," }
        first = false
        header += "\(jsonString(t.name)):{\"dtype\":\"\(t.encoding.safetensorsDType)\",\"shape\":[\(t.shape.map(String.init).joined(separator: ","))],\"data_offsets\":[\(offset),\(offset + bytes)]}"
        offset += bytes
        sizes.append(bytes)
    }
    header += "}"
    var headerBytes = Array(header.utf8)
    headerBytes += [UInt8](repeating: UInt8(ascii: " "), count: (8 - headerBytes.count % 8) % 8)

    try modelIO {
        let w = try DurableFileWriter(path: path)
        try w.write(le: UInt64(headerBytes.count))
        try w.write(headerBytes)
        for (t, bytes) in zip(tensors, sizes) where bytes > 0 {
            try t.encoding.write(t.data, count: bytes / t.encoding.bytesPerElement, to: w)
        }
        try w.commit()
    }
}

/// A JSON string literal for `s`.
private func jsonString(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case _ where u.value < 0x20:
            out += "\\u" + String(repeating: "0", count: 4 - String(u.value, radix: 16).count) + String(u.value, radix: 16)
        default: out.unicodeScalars.append(u)
        }
    }
    return out + "\""
}
