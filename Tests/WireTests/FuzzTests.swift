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

/// Random, truncated and mutated bytes never crash the decoders, and decoding frees everything
/// protobuf-c allocated.
final class FuzzTests: XCTestCase {
    /// Decodes `body` both ways; any outcome but a crash is fine. Returns true if either decoded.
    @discardableResult
    func decodeBothWays(_ body: [UInt8]) -> Bool {
        let a = (try? Frame.decodeClient(body)) != nil
        let b = (try? Frame.decodeServer(body)) != nil
        return a || b
    }

    func testRandomBuffers() {
        var rng = SplitMix64(seed: 1)
        var outcomes: [String: Int] = [:]
        for i in 0..<20_000 {
            let count = Int.random(in: 0...(i % 10 == 0 ? 2048 : 64), using: &rng)
            let bytes = (0..<count).map { _ in UInt8.random(in: 0...255, using: &rng) }
            decodeBothWays(bytes)
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
        // Random bytes mostly fail to parse, but some parse and reach the body checks.
        XCTAssertGreaterThan(outcomes["malformed", default: 0], 0, "\(outcomes)")
        XCTAssertGreaterThan(outcomes["body", default: 0], 0, "\(outcomes)")
    }

    func testTruncationsOfEveryValidFrame() throws {
        let bodies = Samples.client.map { Frame.encodeBody($0.envelope) } + Samples.server.map { Frame.encodeBody($0.envelope) }
        for body in bodies {
            for cut in 0..<body.count { decodeBothWays(Array(body[..<cut])) }
        }
    }

    func testMutationsOfEveryValidFrame() {
        var rng = SplitMix64(seed: 2)
        let bodies = Samples.client.map { Frame.encodeBody($0.envelope) } + Samples.server.map { Frame.encodeBody($0.envelope) }
        for body in bodies {
            for _ in 0..<400 {
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
                decodeBothWays(m)
            }
        }
    }

    func testRandomStreamThroughFrameDecoder() {
        var rng = SplitMix64(seed: 3)
        var decoder = FrameDecoder(maxFrameBytes: 512)
        var frames = 0, tooLarge = 0
        for _ in 0..<5_000 {
            let bytes = (0..<Int.random(in: 0...300, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            decoder.append(bytes)
            XCTAssertLessThanOrEqual(decoder.bufferedByteCount, 512)
            while true {
                do {
                    guard let body = try decoder.next() else { break }
                    frames += 1
                    XCTAssertLessThanOrEqual(body.count, 512)
                    decodeBothWays(body)
                } catch {
                    tooLarge += 1
                }
            }
        }
        XCTAssertGreaterThan(tooLarge, 0)
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
