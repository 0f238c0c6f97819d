import Foundation
import XCTest
import Learner
import Model
import SelmClient

/// `selm serve --precision bf16`: the online learner's steps run with bf16 products — its first
/// step's logged log-probs are the offline bf16 learner's on the same rows (and not the f32 one's),
/// and learning still moves the model toward the chosen responses.
final class LearnerPrecisionServerTests: XCTestCase {
    /// log π(chosen) − log π(rejected) for row 0's prompt under `version` (as OnlineLearningTests).
    func margin(_ client: SelmClient, version: UInt64) throws -> Double {
        let prompt = try client.tokenize(.init(input: .messages([.init(role: "user", content: "question 0")]), chat: true))
        let r = try client.score(ScoreRequest(items: [ScoreItem(prompt: .ids(prompt), continuation: .ids([300, 301, 302, 2])),
                                                      ScoreItem(prompt: .ids(prompt), continuation: .ids([400, 401, 402, 2]))],
                                              version: version))
        return r.items[0].totalLogprob - r.items[1].totalLogprob
    }

    func testServeTrainsInBF16() throws {
        let dir = try temporaryDirectory()
        let server = try ServerProcess(model: OnlineLearningTests.tinyChat, dataDir: dir,
                                       args: ["--lr", "5e-3", "--beta", "0.1", "--batch-size", "4", "--max-wait-seconds", "0",
                                              "--precision", "bf16"])
        let client = try SelmClient(endpoint: .tcp(host: "127.0.0.1", port: UInt16(server.port)), timeout: 60)
        defer { client.close(); server.stop() }
        let sub = try client.subscribeVersions()
        let first = try XCTUnwrap(sub.next(timeout: 10))
        let rows = try OnlineLearningTests.rows(client, count: 8)
        let before = try margin(client, version: first.version)
        XCTAssertEqual(try client.submitPreferences(rows).rows, 8)
        var events = [first]
        while events.last!.learnerStep < 2 { events.append(try XCTUnwrap(sub.next(timeout: 60), "no version event")) }
        let step1 = try XCTUnwrap(events.first { $0.learnerStep == 1 })
        let served = try XCTUnwrap(step1.metrics["logps/chosen"])

        // The same first step offline, in each precision.
        func offline(_ precision: MatmulPrecision) throws -> Double {
            let model = try LlamaModel.load(huggingFaceDirectory: OnlineLearningTests.tinyChat)
            var o = TrainingOptions()
            o.loss = LossConfig(type: .sigmoid, beta: 0.1, alpha: 0.001)
            o.learningRate = 5e-3
            let t = try Trainer(policy: model, reference: nil, options: o,
                                schedule: LRSchedule(kind: .constant, baseLR: 5e-3, warmupSteps: 0, totalSteps: 1))
            t.precision = precision
            let pairs = rows.prefix(4).map { r -> PreferencePair in
                func ids(_ p: Response?) -> [Int32]? { if case .ids(let v)? = p { return v.map { Int32($0) } }; return nil }
                guard case .ids(let prompt) = r.prompt else { fatalError("rows are ids") }
                return PreferencePair(prompt: prompt.map { Int32($0) }, chosen: ids(r.chosen)!, rejected: ids(r.rejected)!,
                                      reference: ids(r.reference))
            }
            let (result, _) = try t.microBatch(Array(pairs), keys: [0, 1, 2, 3], accumulateScale: 0)
            return result.metrics["logps/chosen"]!
        }
        let bf16 = try offline(.bf16), f32 = try offline(.f32)
        XCTAssertEqual(served, bf16, accuracy: 1e-4 * abs(bf16), "served step in bf16 (offline bf16 \(bf16), f32 \(f32))")
        XCTAssertGreaterThan(abs(served - f32), 10 * 1e-4 * abs(f32), "served \(served) is not the f32 learner's \(f32)")
        let after = try margin(client, version: events.last!.version)
        XCTAssertGreaterThan(after, before + 0.5, "margin \(before) → \(after)")
    }
}
