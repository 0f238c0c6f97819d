import Foundation
import XCTest
@testable import SelmClient

extension ServeProcess {
    /// A learner that takes one step per preference row at once (batch 1, no waiting), with a
    /// learning rate at which one step moves SmolLM2's greedy log-probs by ~1e-2 (far above the 1e-4
    /// at which served and offline log-probs agree) without changing its answers.
    static let learnerArgs = ["--lr", "1e-5", "--batch-size", "1", "--max-wait-seconds", "0"]
}

/// `selm generate --model M --prompt P --chat --max-tokens N --json` (greedy) run offline, in a
/// process of its own: ids (with the stop token, if any) and their log-probs.
struct OfflineGreedy {
    var ids: [UInt32]
    var logprobs: [Float]

    init(model: String, chatPrompt: String, maxTokens: Int) throws {
        let r = try ServeProcess.run(["generate", "--model", model, "--prompt", chatPrompt, "--chat", "--max-tokens", "\(maxTokens)", "--json",
                                      "--engine-precision", "f32"])
        guard r.status == 0 else { throw TestFailure("selm generate --model \(model) exited \(r.status): \(r.stderr)") }
        guard let j = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any],
              let ids = j["ids"] as? [Int], let lps = j["logprobs"] as? [Double]
        else { throw TestFailure("selm generate --json printed \(r.stdout)") }
        self.ids = ids.map { UInt32($0) }
        logprobs = lps.map { Float($0) }
    }
}

/// How far a served sample is from an offline answer: infinity when the tokens differ, else the
/// largest per-token log-prob difference.
func logprobDistance(_ s: SampleResult, _ offline: OfflineGreedy) -> Double {
    guard s.tokenIDs == offline.ids else { return .infinity }
    return zip(s.logprobs, offline.logprobs).map { Double(abs($0 - $1)) }.max() ?? 0
}

/// The next version event above `after` (the wait is only a failure bound).
func nextVersion(_ sub: VersionSubscription, after: UInt64) throws -> VersionEvent {
    while true {
        guard let e = try sub.next(timeout: 300) else { throw TestFailure("no version after \(after) within 300 s") }
        if e.version > after { return e }
    }
}

/// Returns once a thread is blocked in `sub.next()` (the deadline is only a failure bound).
func waitUntilBlocked(_ sub: VersionSubscription) throws {
    let deadline = Date().addingTimeInterval(60)
    while sub.mailbox.waiters == 0 {
        guard Date() < deadline else { throw TestFailure("no thread blocked in next() within 60 s") }
        usleep(1000)
    }
}
