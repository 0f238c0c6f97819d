import Foundation
import Learner
#if DEBUG
@testable import PreferenceLog
@testable import Server
#endif
import Wire

/// The seed corpus committed under Fuzz/corpus (regenerate with `make fuzz-seeds`): small valid inputs
/// of every kind plus damaged ones, named by what they are.
public enum SeedCorpus {
    /// Wire seeds from the Python-written fixture (Tests/WireTests/Fixtures/python_frames.json): every
    /// message type as a complete frame and as a bare body, the refused requests, every frame cut in
    /// the middle (torn), an oversize header, a zero-length frame, and all frames as one stream.
    public static func wire(pythonFixture path: String) throws -> [(name: String, bytes: [UInt8])] {
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
        var out: [(String, [UInt8])] = []
        var stream: [UInt8] = []
        for entry in json["frames"] as! [[String: Any]] {
            let name = entry["name"] as! String, direction = entry["direction"] as! String
            let frame = hex(entry["frame"] as! String)
            stream += frame
            out.append(("frame-\(direction)-\(name)", frame))
            out.append(("body-\(direction)-\(name)", Array(frame.dropFirst(Frame.headerSize))))
            out.append(("torn-\(direction)-\(name)", Array(frame.prefix(Frame.headerSize + (frame.count - Frame.headerSize) / 2))))
        }
        for entry in json["invalid"] as! [[String: Any]] {
            out.append(("invalid-\(entry["name"] as! String)", hex(entry["frame"] as! String)))
        }
        out.append(("stream-all-frames", stream))
        out.append(("oversize-header-then-frame", [0x00, 0x01, 0x00, 0x00] + [UInt8](repeating: 0xAB, count: 64) + stream.prefix(40)))
        out.append(("zero-length-frame", [0, 0, 0, 0]))
        out.append(("max-length-header", [0xFF, 0xFF, 0xFF, 0xFF, 0x08, 0x01]))
        return out
    }

    #if DEBUG
    /// Log seeds written by a real `PreferenceLog`: empty, one record, several (text-free id rows,
    /// references, weights, sources), and the damaged versions recovery must cut: a header or a
    /// payload cut short, a bad CRC, a sequence gap, garbage after the last record, an incomplete
    /// file header, a bad magic.
    public static func log() throws -> [(name: String, bytes: [UInt8])] {
        let empty = try writeLog([])
        let one = try writeLog([[PreferencePair(prompt: [1, 2, 3], chosen: [4], rejected: [5, 6])]])
        let several = try writeLog([
            [PreferencePair(prompt: [10, 11], chosen: [12, 2], rejected: [13, 2], reference: [14, 2], weight: 0.5)],
            [PreferencePair(prompt: [20], chosen: [21], rejected: [22]), PreferencePair(prompt: [23, 24], chosen: [25], rejected: [26], weight: 2)],
            [PreferencePair(prompt: Array(30..<60), chosen: Array(60..<70), rejected: Array(70..<75), reference: Array(75..<80))],
        ], sources: ["pairrm", "rule-based", ""])
        let h = PreferenceLog.fileHeaderSize, rh = PreferenceLog.recordHeaderSize
        let firstLength = Int(readLE32(several, h))
        let secondAt = h + rh + firstLength
        var badCRC = several
        badCRC[secondAt + 4] ^= 0x55
        var gap = several
        // Sequence 2 → 5 with a matching CRC: a gap, not a CRC failure.
        gap.replaceSubrange(secondAt + 8 ..< secondAt + 16, with: le64(5))
        let secondLength = Int(readLE32(gap, secondAt))
        let crc = PreferenceLog.recordCRC(length: UInt32(secondLength), sequence: 5,
                                          payload: Array(gap[secondAt + rh ..< secondAt + rh + secondLength]))
        gap.replaceSubrange(secondAt + 4 ..< secondAt + 8, with: le32(crc))
        var badMagic = one
        badMagic[0] = UInt8(ascii: "X")
        return [
            ("log-empty", empty),
            ("log-one-record", one),
            ("log-three-records", several),
            ("log-torn-record-header", Array(several.prefix(secondAt + 7))),
            ("log-torn-payload", Array(several.prefix(secondAt + rh + secondLength / 2))),
            ("log-bad-crc", badCRC),
            ("log-sequence-gap", gap),
            ("log-garbage-tail", several + (0..<40).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }),
            ("log-incomplete-file-header", Array(one.prefix(10))),
            ("log-bad-magic", badMagic),
        ]
    }

    /// The bytes of a log holding one record per batch, written through `PreferenceLog` itself.
    static func writeLog(_ batches: [[PreferencePair]], sources: [String] = []) throws -> [UInt8] {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("selm-seed-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let log = try PreferenceLog(directory: dir)
        log.start()
        for (i, batch) in batches.enumerated() {
            let done = DispatchSemaphore(value: 0)
            let source = i < sources.count ? sources[i] : ""
            log.append(batch, sources: batch.map { _ in source }) { _ in done.signal() }
            done.wait()
        }
        log.close()
        return Array(try Data(contentsOf: URL(fileURLWithPath: dir + "/" + PreferenceLog.fileName)))
    }

    static func le32(_ v: UInt32) -> [UInt8] { var b: [UInt8] = []; appendLE32(&b, v); return b }
    static func le64(_ v: UInt64) -> [UInt8] { var b: [UInt8] = []; appendLE64(&b, v); return b }
    #else
    /// Log seeds need a debug build (they use PreferenceLog's internal record codec).
    public static func log() throws -> [(name: String, bytes: [UInt8])] { throw CocoaError(.featureUnsupported) }
    #endif

    static func hex(_ s: String) -> [UInt8] {
        var out: [UInt8] = []
        var it = s.utf8.makeIterator()
        while let hi = it.next(), let lo = it.next() {
            func v(_ c: UInt8) -> UInt8 { c <= 57 ? c - 48 : c - 87 }
            out.append(v(hi) << 4 | v(lo))
        }
        return out
    }
}

/// What a fuzz executable does when it is built without libFuzzer (`make test`'s debug build): it
/// replays files through the same properties, or writes the seed corpus.
public enum FuzzDriver {
    /// `fuzz-<target> FILE|DIR...` replays every file (exit 1 on the first violation);
    /// `fuzz-<target> --write-seeds DIR [FIXTURE]` writes the seed corpus.
    public static func main(target: String, violations: ([UInt8]) -> [String],
                            seeds: ([String]) throws -> [(name: String, bytes: [UInt8])]) -> Never {
        let args = Array(CommandLine.arguments.dropFirst())
        do {
            if args.first == "--write-seeds", args.count >= 2 {
                let dir = args[1]
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
                let list = try seeds(Array(args.dropFirst(2)))
                for (name, bytes) in list { try Data(bytes).write(to: URL(fileURLWithPath: dir + "/" + name)) }
                print("fuzz-\(target): wrote \(list.count) seeds to \(dir)")
                exit(0)
            }
            guard !args.isEmpty else {
                print("usage: fuzz-\(target) FILE|DIR... (replay) | --write-seeds DIR\nBuilt with -sanitize=fuzzer (make fuzz) it is a libFuzzer target.")
                exit(2)
            }
            var files = 0
            for path in args {
                for file in try corpusFiles(path) {
                    files += 1
                    let problems = violations(Array(try Data(contentsOf: URL(fileURLWithPath: file))))
                    if !problems.isEmpty {
                        print("fuzz-\(target): \(file): \(problems.joined(separator: "\n  "))")
                        exit(1)
                    }
                }
            }
            print("fuzz-\(target): \(files) inputs, no property violated")
            exit(0)
        } catch {
            print("fuzz-\(target): \(error)")
            exit(1)
        }
    }

    /// The files of a corpus directory (sorted), or the path itself when it is a file.
    public static func corpusFiles(_ path: String) throws -> [String] {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { throw CocoaError(.fileNoSuchFile) }
        guard isDir.boolValue else { return [path] }
        return try FileManager.default.contentsOfDirectory(atPath: path).filter { !$0.hasPrefix(".") }.sorted().map { path + "/" + $0 }
    }

    /// Runs the properties on one fuzzer input and traps on a violation (libFuzzer saves the input).
    public static func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int, _ violations: ([UInt8]) -> [String]) {
        let input = size > 0 && data != nil ? Array(UnsafeBufferPointer(start: data, count: size)) : []
        let problems = violations(input)
        if !problems.isEmpty { fatalError("property violated: \(problems.joined(separator: "; "))") }
    }
}

#if FUZZING
/// libFuzzer's entry point for programs that have their own `main` (LLVM ≥ 12).
@_silgen_name("LLVMFuzzerRunDriver")
private func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<CInt>,
                                 _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
                                 _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

extension FuzzDriver {
    /// Hands the command line to libFuzzer, which calls `callback` for every input; exits with its status.
    public static func runLibFuzzer(_ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> Never {
        var argc = CommandLine.argc
        var argv = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv, callback))
    }
}
#endif
