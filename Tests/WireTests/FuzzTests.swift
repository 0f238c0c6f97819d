import FuzzChecks
import XCTest
@testable import Wire
import CProtobufC
#if canImport(Glibc)
import Glibc
#endif

/// Counts protobuf-c's allocations (single-threaded test use only).
enum CountingAllocator {
    nonisolated(unsafe) static var allocations = 0
    nonisolated(unsafe) static var live = 0
    static func reset() { allocations = 0; live = 0 }
}

let countingAlloc: @convention(c) (UnsafeMutableRawPointer?, Int) -> UnsafeMutableRawPointer? = { _, size in
    CountingAllocator.allocations += 1
    CountingAllocator.live += 1
    return malloc(size)
}

let countingFree: @convention(c) (UnsafeMutableRawPointer?, UnsafeMutableRawPointer?) -> Void = { _, pointer in
    if pointer != nil { CountingAllocator.live -= 1 }
    free(pointer)
}

/// SplitMix64: a small seeded generator so failures reproduce.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Random, truncated and mutated bytes through the properties the wire fuzzer asserts
/// (`WireProperties`, Fuzz/README.md): decoding never traps, every error has a real code, a
/// description and an `ErrorReply` message (an `invalidField` its field and reason), every decoded
/// envelope survives a re-encode, and `FrameDecoder` splits any stream as its headers say, however it
/// is chunked. And decoding frees everything protobuf-c allocated.
final class FuzzTests: XCTestCase {
    /// Decodes `body` both ways; any outcome but a crash is fine. Returns true if either decoded.
    @discardableResult
    func decodeBothWays(_ body: [UInt8]) -> Bool {
        let a = (try? Frame.decodeClient(body)) != nil
        let b = (try? Frame.decodeServer(body)) != nil
        return a || b
    }

    /// Checks `input` against every wire property; counts inputs with violations and reports the
    /// first few in full (one failure line per input, not per byte).
    struct PropertyCheck {
        var checked = 0
        var failing = 0
        mutating func check(_ input: [UInt8], _ what: @autoclosure () -> String, file: StaticString = #filePath, line: UInt = #line) {
            checked += 1
            let problems = WireProperties.violations(input)
            guard !problems.isEmpty else { return }
            failing += 1
            if failing <= 5 {
                XCTFail("\(what()): \(input.count) bytes [\(input.prefix(48).map { String(format: "%02x", $0) }.joined())]: "
                        + problems.joined(separator: "; "), file: file, line: line)
            }
        }
    }

    func testRandomBuffers() {
        var rng = SplitMix64(seed: 1)
        var outcomes: [String: Int] = [:]
        var props = PropertyCheck()
        for i in 0..<20_000 {
            let count = Int.random(in: 0...(i % 10 == 0 ? 2048 : 64), using: &rng)
            let bytes = (0..<count).map { _ in UInt8.random(in: 0...255, using: &rng) }
            props.check(bytes, "random buffer \(i)")
            let outcome: String
            switch clientError(bytes) {
            case nil: outcome = "decoded"
            case .malformed?: outcome = "malformed"
            case .missingBody?, .unknownBody?, .unexpectedBody?: outcome = "body"
            case .invalidField?: outcome = "invalid"
            case .frameTooLarge?: outcome = "too large"
            }
            outcomes[outcome, default: 0] += 1
        }
        XCTAssertEqual(props.failing, 0, "\(props.failing) of \(props.checked) random buffers break a wire property")
        // Random bytes mostly fail to parse, but some parse and reach the body checks.
        XCTAssertGreaterThan(outcomes["malformed", default: 0], 0, "\(outcomes)")
        XCTAssertGreaterThan(outcomes["body", default: 0], 0, "\(outcomes)")
    }

    func testTruncationsOfEveryValidFrame() throws {
        let bodies = Samples.client.map { Frame.encodeBody($0.envelope) } + Samples.server.map { Frame.encodeBody($0.envelope) }
        var props = PropertyCheck()
        var decoded = 0, refused = 0
        for (b, body) in bodies.enumerated() {
            for cut in 0..<body.count {
                let piece = Array(body[..<cut])
                props.check(piece, "body \(b) cut at \(cut)")
                if decodeBothWays(piece) { decoded += 1 } else { refused += 1 }
            }
        }
        XCTAssertEqual(props.failing, 0, "\(props.failing) of \(props.checked) truncations break a wire property")
        // The body is the envelope's last field (field order): a cut inside it leaves a length prefix
        // past the end (malformed), a cut before it no body. No proper prefix decodes.
        XCTAssertEqual(decoded, 0, "a truncated envelope decoded")
        XCTAssertEqual(refused, props.checked)
    }

    func testMutationsOfEveryValidFrame() {
        var rng = SplitMix64(seed: 2)
        let bodies = Samples.client.map { Frame.encodeBody($0.envelope) } + Samples.server.map { Frame.encodeBody($0.envelope) }
        var props = PropertyCheck()
        var decoded = 0
        for (b, body) in bodies.enumerated() {
            props.check(body, "body \(b) as it is")
            for k in 0..<400 {
                let m = mutate(body, &rng)
                props.check(m, "body \(b) mutation \(k)")
                if decodeBothWays(m) { decoded += 1 }
            }
        }
        XCTAssertEqual(props.failing, 0, "\(props.failing) of \(props.checked) mutated frames break a wire property")
        XCTAssertGreaterThan(decoded, props.checked / 10, "mutations mostly keep a decodable envelope, so re-encoding is exercised")
    }

    /// One random edit of `body`: flipped bits, a replaced byte, inserted random bytes or a deleted range.
    func mutate(_ body: [UInt8], _ rng: inout SplitMix64) -> [UInt8] {
        var m = body
        switch Int.random(in: 0..<4, using: &rng) {
        case 0:  // flip bits
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                m[Int.random(in: 0..<m.count, using: &rng)] ^= UInt8(1) << UInt8.random(in: 0..<8, using: &rng)
            }
        case 1:  // replace a byte
            m[Int.random(in: 0..<m.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
        case 2:  // insert random bytes
            let bytes = (0..<Int.random(in: 1...8, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            m.insert(contentsOf: bytes, at: Int.random(in: 0...m.count, using: &rng))
        default:  // delete a range
            let start = Int.random(in: 0..<m.count, using: &rng)
            m.removeSubrange(start..<min(m.count, start + Int.random(in: 1...8, using: &rng)))
        }
        return m
    }

    /// A long stream of frames — sample envelopes, mutated ones, random bodies of 0 … 700 bytes —
    /// cut into random chunks through one long-lived decoder (limit 512): it never buffers or yields
    /// more than the limit, reports `frameTooLarge` exactly for the headers above it (skipping their
    /// bodies), and yields exactly the other bodies, in order; every yielded body keeps the body
    /// properties, and random chunks of the stream the stream properties.
    func testRandomStreamThroughFrameDecoder() {
        var rng = SplitMix64(seed: 3)
        let bodies = Samples.client.map { Frame.encodeBody($0.envelope) } + Samples.server.map { Frame.encodeBody($0.envelope) }
        var all: [UInt8] = []
        var expectedFrames: [[UInt8]] = [], expectedTooLarge: [UInt64] = []
        for _ in 0..<3_000 {
            var body: [UInt8]
            switch Int.random(in: 0..<10, using: &rng) {
            case 0..<4: body = bodies.randomElement(using: &rng)!
            case 4..<7: body = mutate(bodies.randomElement(using: &rng)!, &rng)
            default: body = (0..<Int.random(in: 0...700, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            }
            let n = UInt32(body.count)
            all += [UInt8(n >> 24), UInt8((n >> 16) & 0xFF), UInt8((n >> 8) & 0xFF), UInt8(n & 0xFF)] + body
            if body.count > 512 { expectedTooLarge.append(UInt64(body.count)) } else { expectedFrames.append(body) }
        }
        var decoder = FrameDecoder(maxFrameBytes: 512)
        var props = PropertyCheck()
        var frames: [[UInt8]] = [], tooLarge: [UInt64] = []
        var at = 0, c = 0
        while at < all.count {
            let chunk = Array(all[at..<min(all.count, at + Int.random(in: 0...300, using: &rng))])
            at += chunk.count
            c += 1
            if c % 10 == 0 { props.check(chunk, "chunk \(c)") }
            decoder.append(chunk)
            XCTAssertLessThanOrEqual(decoder.bufferedByteCount, 512)
            while true {
                do {
                    guard let body = try decoder.next() else { break }
                    XCTAssertLessThanOrEqual(body.count, 512)
                    frames.append(body)
                    props.check(body, "frame \(frames.count) of the stream")
                } catch {
                    guard case let .frameTooLarge(size, limit) = error else { XCTFail("\(error)"); continue }
                    XCTAssertEqual(limit, 512)
                    tooLarge.append(size)
                }
            }
        }
        XCTAssertTrue(decoder.isAtFrameBoundary)
        XCTAssertEqual(props.failing, 0, "\(props.failing) of \(props.checked) chunks and frames break a wire property")
        XCTAssertEqual(frames.count, expectedFrames.count)
        XCTAssertTrue(frames == expectedFrames, "the decoder's frames differ from what the headers say")
        XCTAssertEqual(tooLarge, expectedTooLarge)
        XCTAssertGreaterThan(tooLarge.count, 100)
    }

    /// Thousands of decodes of valid, malformed, truncated, mutated and wrong-direction frames
    /// through a counting allocator: every block protobuf-c allocates is freed.
    func testEveryProtobufCAllocationIsFreed() throws {
        let bodies = Samples.client.map { Frame.encodeBody($0.envelope) } + Samples.server.map { Frame.encodeBody($0.envelope) }
        var rng = SplitMix64(seed: 4)
        var allocator = ProtobufCAllocator(alloc: countingAlloc, free: countingFree, allocator_data: nil)
        CountingAllocator.reset()
        withUnsafeMutablePointer(to: &allocator) { Unpacked.allocator = $0 }
        defer { Unpacked.allocator = nil }
        for _ in 0..<300 {
            for body in bodies {
                decodeBothWays(body)
                decodeBothWays(Array(body.dropLast(Int.random(in: 1...body.count, using: &rng))))
                var m = body
                m[Int.random(in: 0..<m.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                decodeBothWays(m)
            }
            for _ in 0..<20 {
                decodeBothWays((0..<Int.random(in: 0...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) })
            }
        }
        Unpacked.allocator = nil
        XCTAssertGreaterThan(CountingAllocator.allocations, 100_000)
        XCTAssertEqual(CountingAllocator.live, 0, "\(CountingAllocator.live) protobuf-c blocks leaked")
    }
}
