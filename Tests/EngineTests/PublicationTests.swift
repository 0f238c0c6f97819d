import Foundation
import Synchronization
import XCTest
@testable import Engine
import Model

/// One publish path: `publish(weights:learnerStep:metrics:)` is where a version number is issued
/// (by the owner's issuer, e.g. the server's on-disk ledger), and the step that installs the weights
/// announces it (`.published`) before any result of that version. Stepping by hand, no timing.
final class PublicationTests: XCTestCase {
    func engine() throws -> (GenerationEngine, LlamaModel) {
        let model = try Fixtures.tiny()
        var config = EngineConfig()
        config.kvCacheMB = 1
        return (try GenerationEngine(model: model, version: 4, tokenizer: Fixtures.tinyTokenizer, config: config), model)
    }

    func testTheIssuerNumbersAndTheInstallingStepAnnounces() throws {
        let (engine, model) = try engine()
        let asked = Mutex<[UInt64]>([])
        engine.setVersionIssuer { newest in
            asked.withLock { $0.append(newest) }
            return newest + 10
        }
        let v = try engine.publish(weights: Fixtures.perturbed(model, seed: 2), learnerStep: 3, metrics: ["loss": 0.5])
        XCTAssertEqual(v, 14)
        XCTAssertEqual(asked.withLock { $0 }, [4], "the issuer is asked with the newest version held")
        XCTAssertTrue(engine.drainEvents().isEmpty, "nothing is announced before a step installs it")

        var p = SamplerSettings()
        p.temperature = 0
        var r = GenerationRequest(prompt: [5, 6, 7], params: p, maxTokens: 2)
        r.ignoreEOS = true
        let id = try engine.submit(r)
        engine.step()
        let events = engine.drainEvents()
        guard case .published(let pub)? = events.first else { return XCTFail("first event: \(String(describing: events.first))") }
        XCTAssertEqual(pub, Publication(version: 14, learnerStep: 3, metrics: ["loss": 0.5]))
        XCTAssertEqual(engine.currentVersion, 14)
        var samples = events.compactMap { e -> FinishedSample? in if case .sample(let s) = e { s } else { nil } }
        samples += engine.runUntilIdle()[id]?.samples ?? []
        XCTAssertEqual(samples.map(\.version), [14])

        // A second publication is numbered above the first (the issuer sees it as the newest).
        XCTAssertEqual(try engine.publish(weights: Fixtures.perturbed(model, seed: 3)), 24)
        XCTAssertEqual(asked.withLock { $0 }, [4, 14])
    }

    func testAPublicationReplacedBeforeInstallIsAnnouncedWithItsReplacement() throws {
        let (engine, model) = try engine()
        let a = try engine.publish(weights: Fixtures.perturbed(model, seed: 2), learnerStep: 1)
        let b = try engine.publish(weights: Fixtures.perturbed(model, seed: 3), learnerStep: 2)
        XCTAssertEqual([a, b], [5, 6], "the default issuer counts up from the newest")
        engine.step()
        let announced = engine.drainEvents().compactMap { e -> UInt64? in
            if case .published(let p) = e { return p.version } else { return nil }
        }
        XCTAssertEqual(announced, [5, 6], "every number issued is announced once, in order")
        XCTAssertEqual(engine.currentVersion, 6)
    }

    func testARefusingIssuerPublishesNothing() throws {
        let (engine, model) = try engine()
        struct Full: Error {}
        engine.setVersionIssuer { _ in throw Full() }
        XCTAssertThrowsError(try engine.publish(weights: Fixtures.perturbed(model, seed: 2))) { XCTAssertTrue($0 is Full) }
        engine.step()
        XCTAssertTrue(engine.drainEvents().isEmpty)
        XCTAssertEqual(engine.currentVersion, 4)
        XCTAssertNil(engine.status().pendingVersion)
    }
}
