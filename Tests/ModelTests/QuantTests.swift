import Foundation
import XCTest
import Model

/// GGUF dequantisation against gguf-py (`gguf.quants.dequantize`), half-precision conversions against
/// PyTorch and Swift's Float16, and GGUFFile's handling of truncated or corrupt files.
/// Fixtures: scripts/reference/quant.py.
final class QuantTests: XCTestCase {
    struct Manifest: Decodable {
        struct Tensor: Decodable {
            let name: String
            let type: String
            let dims: [Int]
            let count: Int
            let expected: String?
        }
        let file: String
        let tensors: [Tensor]
    }

    static let quantDir = Bundle.module.resourceURL!.appendingPathComponent("Fixtures/quant")

    func manifest() throws -> Manifest {
        try JSONDecoder().decode(Manifest.self, from: Data(contentsOf: Self.quantDir.appendingPathComponent("manifest.json")))
    }

    func fixture() throws -> GGUFFile {
        try GGUFFile(path: Self.quantDir.appendingPathComponent("fixture.gguf").path)
    }

    func readFloats(_ relative: String) throws -> [Float] {
        let data = try Data(contentsOf: Self.quantDir.appendingPathComponent(relative))
        return data.withUnsafeBytes { raw in
            (0..<data.count / 4).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self))) }
        }
    }

    /// Asserts bit-identical floats, reporting the number of mismatches and the first one.
    func assertBitsEqual(_ got: [Float], _ want: [Float], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(got.count, want.count, "\(what): element count", file: file, line: line)
        var bad = 0
        var first: Int? = nil
        for i in 0..<min(got.count, want.count) where got[i].bitPattern != want[i].bitPattern {
            bad += 1
            if first == nil { first = i }
        }
        if let i = first {
            XCTFail("\(what): \(bad) of \(want.count) values differ; first at \(i): got \(got[i]) (0x\(String(got[i].bitPattern, radix: 16))), want \(want[i]) (0x\(String(want[i].bitPattern, radix: 16)))", file: file, line: line)
        }
    }

    // MARK: dequantisation vs gguf-py

    func testEverySupportedTypeMatchesGGUFPyBitExactly() throws {
        let g = try fixture()
        var covered = Set<String>()
        for t in try manifest().tensors {
            guard let expected = t.expected else { continue }
            let info = try XCTUnwrap(g.tensor(t.name), t.name)
            XCTAssertEqual(info.type.description, t.type, t.name)
            XCTAssertEqual(info.dims, t.dims, t.name)
            XCTAssertEqual(info.elementCount, t.count, t.name)
            let got = try g.dequantize(info)
            assertBitsEqual(got, try readFloats(expected), "\(t.name) (\(t.type))")
            covered.insert(t.type)
        }
        XCTAssertEqual(covered, ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K"])
        for type in covered { XCTAssertTrue(g.tensors.first { $0.type.description == type }!.type.isSupported, type) }
    }

    func testRowRangesMatchSlicesOfTheWholeTensor() throws {
        let g = try fixture()
        for t in try manifest().tensors {
            guard let expected = t.expected else { continue }
            let info = try XCTUnwrap(g.tensor(t.name))
            let all = try readFloats(expected)
            let cols = info.dims[0]
            let rows = info.elementCount / cols
            for range in [0..<rows, 1..<rows - 1, rows - 1..<rows, 2..<2] {
                var out = [Float](repeating: .nan, count: max(range.count * cols, 1))
                try g.dequantizeRows(info, rows: range, into: &out)
                assertBitsEqual(Array(out.prefix(range.count * cols)), Array(all[range.lowerBound * cols ..< range.upperBound * cols]),
                                "\(t.name) rows \(range)")
            }
            var out = [Float](repeating: 0, count: cols)
            XCTAssertThrowsError(try g.dequantizeRows(info, rows: rows..<rows + 1, into: &out), t.name) { e in
                XCTAssertTrue("\(e)".contains(t.name), "\(e)")
            }
        }
    }

    func testUnsupportedTypesThrowNamingFileTensorAndType() throws {
        let g = try fixture()
        for (name, type) in [("bad.q5_0", "Q5_0"), ("bad.q2_k", "Q2_K")] {
            let info = try XCTUnwrap(g.tensor(name))
            XCTAssertFalse(info.type.isSupported)
            var out = [Float](repeating: 0, count: info.elementCount)
            XCTAssertThrowsError(try g.dequantize(info, into: &out)) { e in
                XCTAssertEqual(e as? ModelError, .unsupportedTensorType(file: g.path, tensor: name, type: type))
                let text = "\(e)"
                XCTAssertTrue(text.contains(g.path) && text.contains(name) && text.contains(type), text)
            }
            XCTAssertThrowsError(try g.dequantizeRows(info, rows: 0..<1, into: &out)) { e in
                XCTAssertEqual(e as? ModelError, .unsupportedTensorType(file: g.path, tensor: name, type: type))
            }
        }
    }

    // MARK: the real model vs gguf-py

    /// `SELM_MODEL`, else `<package root>/models/SmolLM2-135M-Instruct.Q4_1.gguf`.
    static func modelPath() -> String {
        if let p = ProcessInfo.processInfo.environment["SELM_MODEL"], !p.isEmpty { return p }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return root.appendingPathComponent("models/SmolLM2-135M-Instruct.Q4_1.gguf").path
    }

    struct Checksums: Decodable {
        struct Tensor: Decodable {
            let type: String
            let dims: [Int]
            let count: Int
            let sum: Double
            let sum_squares: Double
            let bits_hash: String
            let sample_indices: [Int]
            let sample_bits: [UInt32]
        }
        let model: String
        let tensors: [String: Tensor]
    }

    /// Σ bits(x_i)·(2i+1) mod 2^64, as `_tensor_bits_hash` in scripts/reference/quant.py.
    static func bitsHash(_ v: [Float]) -> UInt64 {
        var h: UInt64 = 0
        for i in 0..<v.count { h &+= UInt64(v[i].bitPattern) &* (2 &* UInt64(i) &+ 1) }
        return h
    }

    func testSmolLM2TensorsMatchGGUFPy() throws {
        let path = Self.modelPath()
        guard FileManager.default.fileExists(atPath: path) else {
            XCTFail("model \(path) not found: run `make model` (or set SELM_MODEL)")
            return
        }
        let g = try GGUFFile(path: path)
        let sums = try JSONDecoder().decode(Checksums.self, from: Data(contentsOf: Self.quantDir.appendingPathComponent("smollm2_checksums.json")))
        XCTAssertEqual(sums.tensors.count, 2)
        for (name, want) in sums.tensors {
            let info = try XCTUnwrap(g.tensor(name), name)
            XCTAssertEqual(info.type.description, want.type, name)
            XCTAssertEqual(info.dims, want.dims, name)
            let v = try g.dequantize(info)
            XCTAssertEqual(v.count, want.count, name)
            for (i, bits) in zip(want.sample_indices, want.sample_bits) {
                XCTAssertEqual(v[i].bitPattern, bits, "\(name)[\(i)]: got \(v[i]), want \(Float(bitPattern: bits))")
            }
            XCTAssertEqual(String(Self.bitsHash(v), radix: 16).leftPadded(16), want.bits_hash, "\(name): bit hash (some element differs)")
            // The sums only differ by summation order (gguf-py: numpy pairwise in float64).
            var s = 0.0, s2 = 0.0
            for x in v { s += Double(x); s2 += Double(x) * Double(x) }
            XCTAssertEqual(s, want.sum, accuracy: 1e-9 * max(1, want.sum_squares), name)
            XCTAssertEqual(s2, want.sum_squares, accuracy: 1e-9 * want.sum_squares, name)
        }
    }

    // MARK: half precision

    #if !(os(macOS) && arch(x86_64))
    func testF16ToF32IsExactForAllBitPatterns() {
        var bits = [UInt16](repeating: 0, count: 65536)
        for i in 0..<65536 { bits[i] = UInt16(i) }
        var bulk = [Float](repeating: 0, count: 65536)
        bits.withUnsafeBytes { HalfPrecision.f16ToF32($0.baseAddress!, &bulk, count: 65536) }
        var bad = 0
        for i in 0..<65536 {
            let want = Float(Float16(bitPattern: UInt16(i)))
            let got = HalfPrecision.f16ToF32(UInt16(i))
            let ok = want.isNaN ? got.isNaN && bulk[i].isNaN : got.bitPattern == want.bitPattern && bulk[i].bitPattern == want.bitPattern
            if !ok { bad += 1; if bad < 5 { XCTFail("f16 0x\(String(i, radix: 16)): got \(got) / \(bulk[i]), want \(want)") } }
        }
        XCTAssertEqual(bad, 0)
    }
    #endif

    func testF32ToHalfRoundsLikePyTorch() throws {
        let n = 8192
        let data = try Data(contentsOf: Self.quantDir.appendingPathComponent("rounding.bin"))
        XCTAssertEqual(data.count, n * 8)
        var floats = [Float](repeating: 0, count: n), half = [UInt16](repeating: 0, count: n), bf = half
        data.withUnsafeBytes { raw in
            for i in 0..<n {
                floats[i] = Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
                half[i] = UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * n + 2 * i, as: UInt16.self))
                bf[i] = UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 6 * n + 2 * i, as: UInt16.self))
            }
        }
        var bulkHalf = [UInt8](repeating: 0, count: 2 * n), bulkBF = bulkHalf
        HalfPrecision.f32ToF16(floats, &bulkHalf, count: n)
        HalfPrecision.f32ToBF16(floats, &bulkBF, count: n)
        var badHalf = 0, badBF = 0
        for i in 0..<n {
            let h = HalfPrecision.f32ToF16(floats[i]), b = HalfPrecision.f32ToBF16(floats[i])
            let hb = UInt16(bulkHalf[2 * i]) | UInt16(bulkHalf[2 * i + 1]) << 8
            let bb = UInt16(bulkBF[2 * i]) | UInt16(bulkBF[2 * i + 1]) << 8
            XCTAssertEqual(h, hb); XCTAssertEqual(b, bb)
            if floats[i].isNaN {
                // NaN payloads are not specified; only NaN-ness is.
                if !(HalfPrecision.f16ToF32(h).isNaN && HalfPrecision.bf16ToF32(b).isNaN) { badHalf += 1 }
                continue
            }
            if h != half[i] { badHalf += 1; if badHalf < 5 { XCTFail("f16 of \(floats[i]) (0x\(String(floats[i].bitPattern, radix: 16))): got 0x\(String(h, radix: 16)), torch 0x\(String(half[i], radix: 16))") } }
            if b != bf[i] { badBF += 1; if badBF < 5 { XCTFail("bf16 of \(floats[i]) (0x\(String(floats[i].bitPattern, radix: 16))): got 0x\(String(b, radix: 16)), torch 0x\(String(bf[i], radix: 16))") } }
            // And back: exact.
            XCTAssertEqual(HalfPrecision.bf16ToF32(b).bitPattern, UInt32(b) << 16)
        }
        XCTAssertEqual(badHalf, 0)
        XCTAssertEqual(badBF, 0)
    }

    // MARK: truncated and corrupt GGUF files

    func temporaryDirectory() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("selm-quant-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        return dir
    }

    /// Opens `bytes` written to a temporary file; returns the error (failing if there is none or it is
    /// not a ModelError naming the file).
    func openError(_ bytes: [UInt8], in dir: URL, _ label: String, file: StaticString = #filePath, line: UInt = #line) -> ModelError? {
        let url = dir.appendingPathComponent("\(label).gguf")
        XCTAssertNoThrow(try Data(bytes).write(to: url), file: file, line: line)
        defer { try? FileManager.default.removeItem(at: url) }
        do {
            _ = try GGUFFile(path: url.path)
            XCTFail("\(label): opened without error", file: file, line: line)
            return nil
        } catch let e as ModelError {
            XCTAssertTrue(e.description.contains(url.path), "\(label): \(e) does not name the file", file: file, line: line)
            return e
        } catch {
            XCTFail("\(label): \(error) is not a ModelError", file: file, line: line)
            return nil
        }
    }

    func fixtureBytes() throws -> [UInt8] {
        [UInt8](try Data(contentsOf: Self.quantDir.appendingPathComponent("fixture.gguf")))
    }

    /// Offset of the first occurrence of the length-prefixed GGUF string `s` (its u64 length field).
    func offsetOfString(_ s: String, in bytes: [UInt8]) -> Int? {
        var needle = withUnsafeBytes(of: UInt64(s.utf8.count).littleEndian) { [UInt8]($0) }
        needle += Array(s.utf8)
        guard bytes.count >= needle.count else { return nil }
        for i in 0...(bytes.count - needle.count) where bytes[i] == needle[0] && Array(bytes[i..<i + needle.count]) == needle { return i }
        return nil
    }

    func testTruncatedFilesThrowNamingFileAndPart() throws {
        let bytes = try fixtureBytes()
        let g = try fixture()
        let dir = try temporaryDirectory()
        // The end of the last tensor's data (GGUFWriter pads the file after it to the alignment).
        let dataEnd = g.tensors.map { $0.offset + $0.elementCount / $0.type.blockSize * $0.type.blockBytes }.max()!
        // Every cut inside the header, metadata and tensor infos; every 97 bytes inside the data.
        var cuts = Array(0..<g.dataOffset)
        cuts += Array(stride(from: g.dataOffset, to: dataEnd, by: 97)) + [dataEnd - 1]
        for cut in cuts {
            guard let e = openError(Array(bytes[..<cut]), in: dir, "cut\(cut)") else { continue }
            switch e {
            case let .truncated(_, what), let .corrupt(_, what):
                XCTAssertFalse(what.isEmpty)
            default:
                XCTFail("cut at \(cut): unexpected \(e)")
            }
        }
        // Spot checks that the message says what was being read. (Cuts before 24 bytes per declared
        // tensor are rejected earlier, as "more than the file can hold".)
        let name = "t.q4_k"
        let info = try XCTUnwrap(offsetOfString(name, in: bytes))
        let index = try XCTUnwrap(g.tensors.firstIndex { $0.name == name })
        XCTAssertGreaterThan(info, 24 * g.tensors.count)
        let checks: [(Int, String)] = [
            (2, "magic"), (6, "version"),
            (info + 4, "tensor #\(index)"),        // inside the tensor's name
            (info + 14 + 2, name),                 // its dimension count
            (info + 18 + 3, name),                 // its first dimension
            (info + 34 + 1, name),                 // its type
            (info + 38 + 4, name),                 // its data offset
            (dataEnd - 1, "data of tensor"),
        ]
        for (cut, needle) in checks {
            if let e = openError(Array(bytes[..<cut]), in: dir, "check\(cut)") {
                XCTAssertTrue(e.description.contains(needle), "cut at \(cut): '\(e)' should mention \(needle)")
            }
        }
    }

    func testBadMagicAndVersionAreRejected() throws {
        let bytes = try fixtureBytes()
        let dir = try temporaryDirectory()
        var b = bytes
        b[0] ^= 0xFF
        if let e = openError(b, in: dir, "magic") { XCTAssertTrue(e.description.contains("magic"), "\(e)") }
        for version: UInt32 in [0, 1, 4, 0xFFFF_FFFF] {
            var b = bytes
            withUnsafeBytes(of: version.littleEndian) { b.replaceSubrange(4..<8, with: $0) }
            if let e = openError(b, in: dir, "version\(version)") { XCTAssertTrue(e.description.contains("version"), "\(e)") }
        }
    }

    func testAbsurdCountsAndLengthsAreRejected() throws {
        let bytes = try fixtureBytes()
        let dir = try temporaryDirectory()
        func patched(_ offset: Int, _ value: UInt64) -> [UInt8] {
            var b = bytes
            withUnsafeBytes(of: value.littleEndian) { b.replaceSubrange(offset..<offset + 8, with: $0) }
            return b
        }
        _ = openError(patched(8, 1 << 62), in: dir, "tensorcount")
        _ = openError(patched(8, UInt64.max), in: dir, "tensorcount-max")
        _ = openError(patched(16, 1 << 62), in: dir, "kvcount")
        _ = openError(patched(24, UInt64.max), in: dir, "keylength")          // first metadata key's length
        let name = try XCTUnwrap(offsetOfString("t.q4_k", in: bytes))
        _ = openError(patched(name, 1 << 40), in: dir, "namelength")
        // The tensor's data offset (after name, n_dims, 2 dims, type) pointing past the end.
        _ = openError(patched(name + 8 + 6 + 4 + 16 + 4, 1 << 40), in: dir, "dataoffset")
        var b = bytes
        withUnsafeBytes(of: UInt32(7).littleEndian) { b.replaceSubrange(name + 14..<name + 18, with: $0) }
        _ = openError(b, in: dir, "ndims")
    }

    /// Dimensions whose product overflows Int must be rejected, not trap.
    func testDimensionsWhoseProductOverflowsAreRejected() throws {
        let bytes = try fixtureBytes()
        let dir = try temporaryDirectory()
        let name = try XCTUnwrap(offsetOfString("t.q4_k", in: bytes))
        var b = bytes
        for d in 0..<2 {
            withUnsafeBytes(of: UInt64((1 << 40) - 256).littleEndian) {
                b.replaceSubrange(name + 18 + 8 * d..<name + 26 + 8 * d, with: $0)
            }
        }
        _ = openError(b, in: dir, "dims-overflow")
    }
}

private extension String {
    func leftPadded(_ n: Int) -> String { String(repeating: "0", count: max(0, n - count)) + self }
}
