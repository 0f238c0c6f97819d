import Foundation
import XCTest
import Model

/// Safetensors reading against files written by PyTorch's `safetensors` and transformers'
/// `save_pretrained` (values as torch's `.float()`), the writer, and malformed files.
/// Fixtures: scripts/reference/quant.py.
final class SafetensorsTests: XCTestCase {
    static let dir = Bundle.module.resourceURL!.appendingPathComponent("Fixtures/safetensors")

    struct Expected: Decodable {
        let dtype: String      // torch dtype name
        let shape: [Int]
        let expected: String
    }

    func expected() throws -> [String: [String: Expected]] {
        try JSONDecoder().decode([String: [String: Expected]].self, from: Data(contentsOf: Self.dir.appendingPathComponent("expected.json")))
    }

    func readFloats(_ relative: String) throws -> [Float] {
        let data = try Data(contentsOf: Self.dir.appendingPathComponent(relative))
        return data.withUnsafeBytes { raw in
            (0..<data.count / 4).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self))) }
        }
    }

    static let torchDType = ["float32": "F32", "float16": "F16", "bfloat16": "BF16"]

    func assertBitsEqual(_ got: [Float], _ want: [Float], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(got.count, want.count, what, file: file, line: line)
        for (i, (g, w)) in zip(got, want).enumerated() where g.bitPattern != w.bitPattern {
            XCTFail("\(what)[\(i)]: got \(g), want \(w)", file: file, line: line)
            return
        }
    }

    func temporaryDirectory() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("selm-st-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        return dir
    }

    // MARK: reading files written by PyTorch

    func testBasicFileMatchesTorch() throws {
        let f = try SafetensorsFile(path: Self.dir.appendingPathComponent("basic.safetensors").path)
        XCTAssertEqual(f.metadata, ["format": "pt", "producer": "selm fixture"])
        let want = try XCTUnwrap(try expected()["basic.safetensors"])
        XCTAssertEqual(Set(f.tensors.map(\.name)), Set(want.keys))
        XCTAssertEqual(Set(f.tensors.map(\.dtype.rawValue)), ["F32", "F16", "BF16"])
        for (name, e) in want {
            let info = try XCTUnwrap(f.tensor(name))
            XCTAssertEqual(info.dtype.rawValue, Self.torchDType[e.dtype], name)
            XCTAssertEqual(info.shape, e.shape, name)
            XCTAssertEqual(info.elementCount, e.shape.reduce(1, *), name)
            assertBitsEqual(try f.floats(name), try readFloats(e.expected), name)
        }
        XCTAssertEqual(f.tensor("scalar")?.shape, [])
        XCTAssertEqual(try f.floats("scalar"), [3.5])
        XCTAssertEqual(try f.floats("empty"), [])
        XCTAssertThrowsError(try f.floats("nope")) { e in
            XCTAssertEqual(e as? ModelError, .missingTensor(file: f.path, tensor: "nope"))
        }
    }

    func testShardedDirectoryMatchesTorch() throws {
        let path = Self.dir.appendingPathComponent("sharded").path
        let d = try SafetensorsDirectory(path: path)
        XCTAssertEqual(d.files.map { ($0.path as NSString).lastPathComponent },
                       ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"])
        let want = try XCTUnwrap(try expected()["sharded"])
        XCTAssertEqual(d.names, want.keys.sorted())
        let index = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path).appendingPathComponent("model.safetensors.index.json"))) as! [String: Any]
        let weightMap = index["weight_map"] as! [String: String]
        for (name, e) in want {
            let entry = try XCTUnwrap(d.tensor(name), name)
            XCTAssertEqual((entry.file.path as NSString).lastPathComponent, weightMap[name], name)
            XCTAssertEqual(entry.info.dtype, .bf16, name)
            XCTAssertEqual(entry.info.shape, e.shape, name)
            var out = [Float](repeating: .nan, count: entry.info.elementCount)
            try d.read(name, into: &out)
            assertBitsEqual(out, try readFloats(e.expected), name)
            assertBitsEqual(try d.floats(name), out, name)
        }
    }

    func testDirectoryWithOneFileAndWithNeither() throws {
        let dir = try temporaryDirectory()
        XCTAssertThrowsError(try SafetensorsDirectory(path: dir.path)) { e in
            guard case let .io(file, reason)? = e as? ModelError else { return XCTFail("\(e)") }
            XCTAssertEqual(file, dir.path)
            XCTAssertTrue(reason.contains("model.safetensors"), reason)
        }
        try FileManager.default.copyItem(at: Self.dir.appendingPathComponent("basic.safetensors"),
                                         to: dir.appendingPathComponent("model.safetensors"))
        let d = try SafetensorsDirectory(path: dir.path)
        XCTAssertEqual(d.files.count, 1)
        XCTAssertEqual(d.names, try expected()["basic.safetensors"]!.keys.sorted())
        XCTAssertEqual(try d.floats("scalar"), [3.5])
        XCTAssertThrowsError(try d.floats("nope")) { e in
            XCTAssertEqual(e as? ModelError, .missingTensor(file: dir.path, tensor: "nope"))
        }
    }

    func testBadIndexFilesNameTheFileAndField() throws {
        let src = Self.dir.appendingPathComponent("sharded")
        func directory(index: String, copyShards: Bool = true) throws -> URL {
            let dir = try temporaryDirectory()
            if copyShards {
                for s in ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"] {
                    try FileManager.default.copyItem(at: src.appendingPathComponent(s), to: dir.appendingPathComponent(s))
                }
            }
            try Data(index.utf8).write(to: dir.appendingPathComponent("model.safetensors.index.json"))
            return dir
        }
        func error(_ dir: URL) -> ModelError? {
            do { _ = try SafetensorsDirectory(path: dir.path); XCTFail("no error"); return nil } catch {
                guard let e = error as? ModelError else { XCTFail("\(error)"); return nil }
                return e
            }
        }
        var d = try directory(index: #"{"metadata": {}}"#)
        XCTAssertEqual(error(d), .missingField(file: d.appendingPathComponent("model.safetensors.index.json").path, field: "weight_map"))
        d = try directory(index: #"{"weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors"}}"#)
        XCTAssertEqual(error(d), .missingTensor(file: d.appendingPathComponent("model-00001-of-00002.safetensors").path, tensor: "lm_head.weight"))
        d = try directory(index: #"{"weight_map": {"x": "../elsewhere.safetensors"}}"#)
        XCTAssertEqual(error(d), .badField(file: d.appendingPathComponent("model.safetensors.index.json").path, field: "weight_map.x",
                                           reason: "'../elsewhere.safetensors' is not a file name in this directory"))
        d = try directory(index: #"{"weight_map": {"x": "missing.safetensors"}}"#)
        if let e = error(d) { XCTAssertTrue(e.description.contains(d.appendingPathComponent("missing.safetensors").path), "\(e)") }
        d = try directory(index: #"{"weight_map": "#)
        if let e = error(d) {
            guard case .corrupt(let file, _) = e else { return XCTFail("\(e)") }
            XCTAssertEqual(file, d.appendingPathComponent("model.safetensors.index.json").path)
        }
    }

    func testUnsupportedDTypeErrorsNameFileAndTensor() throws {
        let f = try SafetensorsFile(path: Self.dir.appendingPathComponent("unsupported.safetensors").path)
        XCTAssertEqual(try f.floats("ok"), [1, 1])
        for (name, dtype) in [("ids", "I64"), ("double", "F64")] {
            let info = try XCTUnwrap(f.tensor(name))
            XCTAssertEqual(info.dtype.rawValue, dtype)
            XCTAssertFalse(info.dtype.isSupported)
            var out = [Float](repeating: 0, count: info.elementCount)
            XCTAssertThrowsError(try f.read(info, into: &out)) { e in
                XCTAssertEqual(e as? ModelError, .unsupportedTensorType(file: f.path, tensor: name, type: dtype))
                XCTAssertTrue("\(e)".contains(f.path) && "\(e)".contains(name), "\(e)")
            }
            XCTAssertThrowsError(try f.floats(name))
        }
    }

    func testEntryOfAnotherFileIsRejected() throws {
        let basic = try SafetensorsFile(path: Self.dir.appendingPathComponent("basic.safetensors").path)
        let other = try SafetensorsFile(path: Self.dir.appendingPathComponent("unsupported.safetensors").path)
        let info = try XCTUnwrap(basic.tensor("model.weight_bf16"))
        var out = [Float](repeating: 0, count: info.elementCount)
        XCTAssertThrowsError(try other.read(info, into: &out)) { e in
            XCTAssertEqual(e as? ModelError, .missingTensor(file: other.path, tensor: "model.weight_bf16"))
        }
    }

    // MARK: writer

    /// Tensors of several shapes (scalar, empty, odd sizes so later tensors start 4- but not 8-aligned).
    func sampleTensors() -> [(String, [Int], [Float])] {
        var rng = SystemRandomNumberGenerator()
        func values(_ n: Int) -> [Float] { (0..<n).map { _ in Float.random(in: -3...3, using: &rng) } }
        var odd = values(5)
        odd[0] = -0.0; odd[1] = .infinity; odd[2] = .leastNonzeroMagnitude
        return [("model.embed_tokens.weight", [4, 3], values(12)), ("odd", [5], odd), ("scalar", [], [42]),
                ("empty", [0, 4], []), ("with \"quotes\" \\ and ünïcode\n", [3, 1, 2], values(6))]
    }

    func write(_ tensors: [(String, [Int], [Float])], to path: String, metadata: [String: String]) throws {
        // Keep the arrays alive and pass stable pointers.
        let buffers = tensors.map { t -> UnsafeMutablePointer<Float> in
            let p = UnsafeMutablePointer<Float>.allocate(capacity: max(t.2.count, 1))
            p.initialize(from: t.2, count: t.2.count)
            return p
        }
        defer { buffers.forEach { $0.deallocate() } }
        try writeSafetensors(path: path, tensors: zip(tensors, buffers).map { (name: $0.0.0, shape: $0.0.1, data: UnsafePointer($0.1)) },
                             metadata: metadata)
    }

    func testWriterRoundTrip() throws {
        let dir = try temporaryDirectory()
        let path = dir.appendingPathComponent("out.safetensors").path
        let tensors = sampleTensors()
        let metadata = ["format": "pt", "note": "tab\tquote\"backslash\\ é"]
        try write(tensors, to: path, metadata: metadata)
        // For checking by hand that Python's safetensors loads the output.
        if let copy = ProcessInfo.processInfo.environment["SELM_SAFETENSORS_WRITE_TO"] {
            try? FileManager.default.removeItem(atPath: copy)
            try FileManager.default.copyItem(atPath: path, toPath: copy)
        }
        let f = try SafetensorsFile(path: path)
        XCTAssertEqual(f.metadata, metadata)
        XCTAssertEqual(f.tensors.map(\.name), tensors.map(\.0))
        for (name, shape, values) in tensors {
            let info = try XCTUnwrap(f.tensor(name), name)
            XCTAssertEqual(info.dtype, .f32)
            XCTAssertEqual(info.shape, shape)
            assertBitsEqual(try f.floats(name), values, name)
        }
        // Nothing but the output is left in the directory.
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), ["out.safetensors"])

        // Overwriting replaces the file.
        try write([("only", [2], [1, 2])], to: path, metadata: [:])
        let g = try SafetensorsFile(path: path)
        XCTAssertEqual(g.metadata, [:])
        XCTAssertEqual(g.tensors.map(\.name), ["only"])
        XCTAssertEqual(try g.floats("only"), [1, 2])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), ["out.safetensors"])
    }

    func testWriterHeaderIsAlignedJSONWithContiguousOffsets() throws {
        let dir = try temporaryDirectory()
        let path = dir.appendingPathComponent("out.safetensors").path
        let tensors = sampleTensors()
        try write(tensors, to: path, metadata: ["k": "v"])
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let n = bytes[0..<8].enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        XCTAssertEqual((8 + n) % 8, 0, "data section must start 8-byte aligned")
        let header = Array(bytes[8..<8 + n])
        XCTAssertEqual(header.first, UInt8(ascii: "{"))
        let lastBrace = try XCTUnwrap(header.lastIndex(of: UInt8(ascii: "}")))
        XCTAssertTrue(header[(lastBrace + 1)...].allSatisfy { $0 == UInt8(ascii: " ") }, "padding must be spaces")
        XCTAssertLessThan(header.count - lastBrace - 1, 8)
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(header)) as? [String: Any])
        XCTAssertEqual(json["__metadata__"] as? [String: String], ["k": "v"])
        var offset = 0
        for (name, shape, values) in tensors {
            let entry = try XCTUnwrap(json[name] as? [String: Any], name)
            XCTAssertEqual(entry["dtype"] as? String, "F32")
            XCTAssertEqual(entry["shape"] as? [Int], shape)
            XCTAssertEqual(entry["data_offsets"] as? [Int], [offset, offset + 4 * values.count], name)
            let start = 8 + n + offset
            let stored = (0..<values.count).map { i in
                Float(bitPattern: (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[start + 4 * i + $1]) << (8 * $1) })
            }
            assertBitsEqual(stored, values, name)
            offset += 4 * values.count
        }
        XCTAssertEqual(json.count, tensors.count + 1)
        XCTAssertEqual(bytes.count, 8 + n + offset)
    }

    func testWriterErrorsNameTheFile() throws {
        let dir = try temporaryDirectory()
        let missing = dir.appendingPathComponent("no/such/dir/out.safetensors").path
        XCTAssertThrowsError(try write([("a", [1], [1])], to: missing, metadata: [:])) { e in
            guard case let .io(file, _)? = e as? ModelError else { return XCTFail("\(e)") }
            XCTAssertEqual(file, missing)
        }
        let path = dir.appendingPathComponent("out.safetensors").path
        XCTAssertThrowsError(try write([("a", [1], [1]), ("a", [1], [2])], to: path, metadata: [:])) { e in
            guard case let .badField(file, field, _)? = e as? ModelError else { return XCTFail("\(e)") }
            XCTAssertEqual(file, path); XCTAssertEqual(field, "a")
        }
        XCTAssertThrowsError(try write([("__metadata__", [1], [1])], to: path, metadata: [:]))
        XCTAssertThrowsError(try write([("neg", [-1], [])], to: path, metadata: [:]))
        XCTAssertFalse(FileManager.default.fileExists(atPath: path))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), [])
    }

    // MARK: malformed files

    /// Writes a safetensors file from a header string and data bytes (length prefix = header size
    /// unless `declared` is given) and returns the ModelError opening it throws.
    func openError(header: String, data: [UInt8] = [], declared: UInt64? = nil, raw: [UInt8]? = nil,
                   file: StaticString = #filePath, line: UInt = #line) throws -> ModelError? {
        let dir = try temporaryDirectory()
        let url = dir.appendingPathComponent("bad.safetensors")
        var bytes: [UInt8]
        if let raw { bytes = raw } else {
            let h = Array(header.utf8)
            bytes = withUnsafeBytes(of: (declared ?? UInt64(h.count)).littleEndian) { [UInt8]($0) } + h + data
        }
        try Data(bytes).write(to: url)
        do {
            _ = try SafetensorsFile(path: url.path)
            XCTFail("opened without error: \(header)", file: file, line: line)
            return nil
        } catch let e as ModelError {
            XCTAssertTrue(e.description.contains(url.path), "\(e) does not name the file", file: file, line: line)
            return e
        } catch {
            XCTFail("\(error) is not a ModelError", file: file, line: line)
            return nil
        }
    }

    func assertError(_ e: ModelError?, _ kind: String, mentions: [String], file: StaticString = #filePath, line: UInt = #line) {
        guard let e else { return }
        let k: String
        switch e {
        case .truncated: k = "truncated"
        case .corrupt: k = "corrupt"
        case .missingField: k = "missingField"
        case .badField: k = "badField"
        default: k = "other"
        }
        XCTAssertEqual(k, kind, "\(e)", file: file, line: line)
        for m in mentions { XCTAssertTrue(e.description.contains(m), "'\(e)' should mention '\(m)'", file: file, line: line) }
    }

    func testTruncatedHeaders() throws {
        assertError(try openError(header: "", raw: []), "truncated", mentions: ["header length"])
        assertError(try openError(header: "", raw: [1, 0, 0]), "truncated", mentions: ["header length"])
        assertError(try openError(header: "{}", declared: 40), "truncated", mentions: ["JSON header", "40"])
        assertError(try openError(header: "{}", declared: UInt64.max), "truncated", mentions: ["JSON header"])
        // A real file cut short: the last tensor's data runs past the end.
        let full = [UInt8](try Data(contentsOf: Self.dir.appendingPathComponent("basic.safetensors")))
        assertError(try openError(header: "", raw: Array(full.dropLast(3))), "truncated", mentions: ["vector_f16"])
        // Cut inside the header.
        assertError(try openError(header: "", raw: Array(full.prefix(100))), "truncated", mentions: ["JSON header"])
    }

    func testBadJSON() throws {
        assertError(try openError(header: "[1, 2]"), "corrupt", mentions: ["'{'"])
        assertError(try openError(header: #"{"a": {"dtype": "F32", "#), "corrupt", mentions: ["JSON"])
        assertError(try openError(header: "{\"a\": 1}\0\0\0"), "corrupt", mentions: ["JSON"])
        assertError(try openError(header: #"{"a": 1}"#), "badField", mentions: ["'a'"])
        assertError(try openError(header: #"{"__metadata__": {"k": 1}}"#), "badField", mentions: ["__metadata__.k"])
        assertError(try openError(header: #"{"__metadata__": []}"#), "badField", mentions: ["__metadata__"])
    }

    func testMissingAndMalformedFields() throws {
        let data = [UInt8](repeating: 0, count: 8)
        assertError(try openError(header: #"{"w": {"shape": [2], "data_offsets": [0, 8]}}"#, data: data), "missingField", mentions: ["w.dtype"])
        assertError(try openError(header: #"{"w": {"dtype": "F32", "data_offsets": [0, 8]}}"#, data: data), "missingField", mentions: ["w.shape"])
        assertError(try openError(header: #"{"w": {"dtype": "F32", "shape": [2]}}"#, data: data), "missingField", mentions: ["w.data_offsets"])
        assertError(try openError(header: #"{"w": {"dtype": 5, "shape": [2], "data_offsets": [0, 8]}}"#, data: data), "badField", mentions: ["w.dtype"])
        for shape in ["[-2]", "[2.5]", "[true]", "\"2\"", "[18446744073709551615]"] {
            assertError(try openError(header: #"{"w": {"dtype": "F32", "shape": \#(shape), "data_offsets": [0, 8]}}"#, data: data),
                        "badField", mentions: ["w.shape"])
        }
        for offsets in ["[8, 0]", "[0]", "[0, 8, 9]", "[0, -8]", "[0, 8.0e0]", "null"] {
            assertError(try openError(header: #"{"w": {"dtype": "F32", "shape": [2], "data_offsets": \#(offsets)}}"#, data: data),
                        "badField", mentions: ["w.data_offsets"])
        }
        assertError(try openError(header: #"{"w": {"dtype": "F32", "shape": [1099511627776, 1099511627776], "data_offsets": [0, 8]}}"#, data: data),
                    "badField", mentions: ["w.shape"])
        // Size not matching dtype × shape.
        assertError(try openError(header: #"{"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}"#, data: data),
                    "badField", mentions: ["w.data_offsets", "12"])
        assertError(try openError(header: #"{"w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 8]}}"#, data: data),
                    "badField", mentions: ["w.data_offsets"])
    }

    func testOverlappingOutOfRangeAndHoles() throws {
        let twelve = [UInt8](repeating: 0, count: 12)
        assertError(try openError(header: #"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}"#, data: twelve),
                    "corrupt", mentions: ["'a'", "'b'", "overlap"])
        assertError(try openError(header: #"{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}"#, data: twelve),
                    "truncated", mentions: ["'a'", "16"])
        assertError(try openError(header: #"{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}"#, data: twelve),
                    "corrupt", mentions: ["'b'", "holes"])
        assertError(try openError(header: #"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}"#, data: twelve),
                    "corrupt", mentions: ["4 bytes after"])
        // An unknown dtype opens (its size cannot be checked), but cannot be read.
        let dir = try temporaryDirectory()
        let url = dir.appendingPathComponent("future.safetensors")
        let h = Array(#"{"x": {"dtype": "F3_FUTURE", "shape": [3], "data_offsets": [0, 12]}}"#.utf8)
        try Data(withUnsafeBytes(of: UInt64(h.count).littleEndian) { [UInt8]($0) } + h + twelve).write(to: url)
        let f = try SafetensorsFile(path: url.path)
        XCTAssertThrowsError(try f.floats("x")) { e in
            XCTAssertEqual(e as? ModelError, .unsupportedTensorType(file: url.path, tensor: "x", type: "F3_FUTURE"))
        }
    }
}
