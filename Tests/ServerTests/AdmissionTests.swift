import Foundation
import Wire
import XCTest

/// Issue 10, "Generation admission stalls", against the real `selm serve` on SmolLM2 (no learner;
/// versions published with RefreshWeights from a checkpoint inside the data directory): a new
/// request is admitted on the newest version while long generations run on older ones, and the
/// `--max-live-versions` limit retires versions (moving their sequences, ending requests pinned to
/// them with NOT_FOUND). All on one connection, so the order of replies is the order the
/// server sent them; deadlines only bound a failure.
final class AdmissionTests: XCTestCase {
    /// What one connection has received so far, per request id.
    final class Replies {
        let c: TestClient
        var chunks: [UInt64: Int] = [:]
        var samples: [UInt64: [SampleResult]] = [:]
        var done: [UInt64: GenerateDone] = [:]
        var errors: [UInt64: ErrorReply] = [:]
        var others: [UInt64: ServerMessage] = [:]
        /// Ids in the order their GenerateDone or Error arrived.
        var finished: [UInt64] = []

        init(_ c: TestClient) { self.c = c }

        /// Reads replies until `cond` holds; throws after `seconds`.
        func pump(_ what: String, seconds: Double = 60, until cond: () -> Bool) throws {
            let deadline = Date().addingTimeInterval(seconds)
            while !cond() {
                guard Date() < deadline else { throw TestError("\(what): not within \(Int(seconds)) s (finished so far: \(finished))") }
                guard let e = try c.receiveAny() else { throw TestError("\(what): connection closed") }
                switch e.body {
                case .generateChunk: chunks[e.id, default: 0] += 1
                case .sampleResult(let s): samples[e.id, default: []].append(s)
                case .generateDone(let d): done[e.id] = d; finished.append(e.id)
                case .error(let err): errors[e.id] = err; finished.append(e.id)
                default: others[e.id] = e.body
                }
            }
        }

        func call(_ id: UInt64, _ body: ClientMessage) throws -> ServerMessage {
            try c.send(id, body)
            try pump("reply to \(id)", until: { others[id] != nil })
            return others.removeValue(forKey: id)!
        }

        func refresh(_ id: UInt64) throws -> UInt64 {
            let r = try call(id, .refreshWeights(RefreshWeights(checkpoint: "ck")))
            guard case .refreshWeightsReply(let reply) = r else { throw TestError("RefreshWeights answered \(r)") }
            return reply.version
        }

        func status(_ id: UInt64) throws -> StatusReply {
            guard case .statusReply(let s) = try call(id, .status(StatusRequest())) else { throw TestError("status") }
            return s
        }
    }

    /// A data directory holding `ck/model.gguf` (SmolLM2 again: each refresh publishes the same
    /// weights as a new version).
    func dataDirWithCheckpoint() throws -> String {
        let data = try temporaryDirectory() + "/data"
        try FileManager.default.createDirectory(atPath: data + "/ck", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: ServerProcess.smol, toPath: data + "/ck/model.gguf")
        return data
    }

    func long(_ text: String, maxTokens: UInt32 = 4000, requireVersion: UInt64? = nil) -> ClientMessage {
        .generate(GenerateRequest(prompts: [.text(text)], chat: true, sampling: SamplingParams(temperature: 0, maxTokens: maxTokens),
                                  ignoreEOS: true, stream: true, requireVersion: requireVersion))
    }

    let short = ClientMessage.generate(GenerateRequest(prompts: [.text("Say hi.")], chat: true,
                                                       sampling: SamplingParams(temperature: 0, maxTokens: 4), ignoreEOS: true))

    /// The reported defect: two long streamed generations (4000 tokens, ignore_eos) on the two
    /// versions before the current one, then a 4-token Generate completes while both still stream
    /// (before: it waited 45–90 s for them to end). Default limit (3): nothing moves.
    func testShortRequestCompletesWhileLongGenerationsRunOnTwoOlderVersions() throws {
        try requireSmol()
        let server = try ServerProcess(model: ServerProcess.smol, dataDir: try dataDirWithCheckpoint(), args: ["--no-learner"])
        let r = Replies(try server.client())
        let v0 = try r.c.hello().policyVersion

        try r.c.send(1, long("Tell me a long story about a lighthouse."))
        try r.pump("first chunk of 1", until: { r.chunks[1, default: 0] > 0 })
        let v1 = try r.refresh(100)
        try r.c.send(2, long("Tell me a long story about a forest."))
        try r.pump("first chunk of 2", until: { r.chunks[2, default: 0] > 0 })
        let v2 = try r.refresh(101)
        XCTAssertEqual([v1, v2], [v0 + 1, v0 + 2])

        try r.c.send(3, short)
        try r.pump("the 4-token request", until: { r.finished.contains(3) })
        XCTAssertNil(r.errors[3])
        XCTAssertEqual(r.samples[3]?.first?.tokenIDs.count, 4)
        XCTAssertEqual(r.samples[3]?.first?.version, v2, "bound to the newest version")
        XCTAssertEqual(r.finished, [3], "the long generations are still running")
        let st = try r.status(102)
        XCTAssertEqual(st.policyVersion, v2)
        XCTAssertEqual(st.liveVersions, 3)
        XCTAssertEqual(st.runningSequences, 2)

        for id: UInt64 in [1, 2] { _ = try r.call(10 + id, .cancel(Cancel(targetID: id))) }
        try r.pump("the cancelled generations", until: { r.done[1] != nil && r.done[2] != nil })
        XCTAssertEqual(r.samples[1]?.map(\.finishReason), [.cancelled])
        XCTAssertEqual(r.samples[1]?.map(\.version), [v0], "within the limit a sequence keeps its version")
        XCTAssertEqual(r.samples[2]?.map(\.version), [v1])
        XCTAssertLessThan(r.samples[1]?.first?.tokenIDs.count ?? 4000, 4000)
        XCTAssertEqual(server.stop(), 0, server.log)
    }

    /// `--max-live-versions 1`: publishing a version retires the one before it. Its unpinned
    /// generation moves to the new version (its SampleResult reports first_version v0, version v1);
    /// one pinned to it with require_version ends with NOT_FOUND on `require_version`; a 4-token
    /// request completes on the new version while the moved one keeps streaming.
    func testRetiredVersionMovesSequencesAndEndsPinnedOnes() throws {
        try requireSmol()
        let server = try ServerProcess(model: ServerProcess.smol, dataDir: try dataDirWithCheckpoint(),
                                       args: ["--no-learner", "--max-live-versions", "1"])
        let r = Replies(try server.client())
        let v0 = try r.c.hello().policyVersion

        try r.c.send(1, long("Tell me a long story about a lighthouse."))
        try r.c.send(2, long("Tell me a long story about a cat.", requireVersion: v0))
        try r.pump("first chunks of 1 and 2", until: { r.chunks[1, default: 0] > 0 && r.chunks[2, default: 0] > 0 })
        let v1 = try r.refresh(100)
        try r.pump("the pinned request's end", until: { r.finished.contains(2) })
        let e = try XCTUnwrap(r.errors[2])
        XCTAssertEqual(e.code, .notFound)
        XCTAssertEqual(e.field, "require_version")
        XCTAssertEqual(e.message, "require_version: weight version \(v0) was retired (live versions are limited to 1: selm serve --max-live-versions)")
        XCTAssertNil(r.samples[2])

        try r.c.send(3, short)
        try r.pump("the 4-token request", until: { r.finished.contains(3) })
        XCTAssertEqual(r.samples[3]?.first?.version, v1)
        XCTAssertEqual(r.finished, [2, 3], "the moved generation is still running")
        let st = try r.status(101)
        XCTAssertEqual(st.liveVersions, 1)
        XCTAssertEqual(st.runningSequences, 1)

        let before = r.chunks[1, default: 0]
        try r.pump("more chunks of the moved generation", until: { r.chunks[1, default: 0] > before })
        _ = try r.call(11, .cancel(Cancel(targetID: 1)))
        try r.pump("the cancelled generation", until: { r.done[1] != nil })
        let moved = try XCTUnwrap(r.samples[1]?.first)
        XCTAssertEqual(moved.finishReason, .cancelled)
        XCTAssertEqual(moved.firstVersion, v0)
        XCTAssertEqual(moved.version, v1, "moved off the retired version")
        XCTAssertEqual(server.stop(), 0, server.log)
    }

    /// `--max-live-versions` below 1 is refused before anything loads.
    func testMaxLiveVersionsMustBePositive() throws {
        let dir = try temporaryDirectory()
        XCTAssertThrowsError(try ServerProcess(model: ServerProcess.tiny, dataDir: dir + "/data", args: ["--max-live-versions", "0"])) {
            XCTAssertTrue("\($0)".contains("--max-live-versions: must be ≥ 1"), "\($0)")
        }
    }
}
