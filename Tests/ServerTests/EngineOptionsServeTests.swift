import Foundation
import Wire
import XCTest

/// `selm serve --kv-cache-precision` and `--decoding-step-tokens` reach the engine: the start-up
/// line and `selm_engine_info` say what the cache holds, a generation runs on it, bad values are
/// usage errors naming the flag.
final class EngineOptionsServeTests: XCTestCase {
    private func generates(_ server: ServerProcess) throws {
        let c = try server.client()
        _ = try c.hello()
        let req = GenerateRequest(prompts: [.text("Name three colours.")], chat: true, sampling: SamplingParams(temperature: 0, maxTokens: 6))
        try c.send(1, .generate(req))
        var tokens = 0
        loop: while true {
            switch try c.receive(1) {
            case .sampleResult(let s): tokens = s.tokenIDs.count
            case .generateDone: break loop
            case .generateChunk: continue
            case let other: throw TestError("generate answered \(other)")
            }
        }
        XCTAssertGreaterThan(tokens, 0)
    }

    func testKVCachePrecisionFollowsTheEngineUnlessTold() throws {
        try requireSmol()
        for (args, engine, cache) in [(["--engine-precision", "bf16"], "bf16", "f16"), (["--engine-precision", "bf16", "--kv-cache-precision", "f32"], "bf16", "f32"),
                                       (["--engine-precision", "f32"], "f32", "f32"),
                                       (["--engine-precision", "f32", "--kv-cache-precision", "f16", "--decoding-step-tokens", "7"], "f32", "f16")] {
            let dir = try temporaryDirectory()
            let server = try ServerProcess(model: ServerProcess.smol, dataDir: dir + "/data", metrics: true, args: ["--no-learner"] + args)
            XCTAssertTrue(server.log.contains("engine precision \(engine)"), server.log)
            XCTAssertTrue(server.log.contains("KV cache \(cache)"), server.log)
            if args.contains("--decoding-step-tokens") { XCTAssertTrue(server.log.contains("decoding steps carry ≤ 7 tokens"), server.log) }
            let metrics = try server.scrapeMetrics()
            XCTAssertTrue(metrics.contains("selm_engine_info{precision=\"\(engine)\",kv_cache=\"\(cache)\""), metrics)
            try generates(server)
        }
    }

    func testBadValuesAreUsageErrorsNamingTheFlag() throws {
        for (args, flag) in [(["--kv-cache-precision", "f8"], "--kv-cache-precision"), (["--decoding-step-tokens", "0"], "--decoding-step-tokens")] {
            let r = try runSelmCLI(["serve", "--model", ServerProcess.tinyTied, "--address", "127.0.0.1:0"] + args)
            XCTAssertEqual(r.status, 64, r.stderr)
            XCTAssertTrue(r.stderr.contains(flag), r.stderr)
        }
    }
}
