import Foundation
import Learner

/// The preference log is where `OnlineLearner` reads acknowledged rows from.
extension PreferenceLog: PreferenceSource {
    /// Up to 64 durable records after `after`, in order, waiting up to `timeout` seconds when there
    /// are none yet; empty on timeout (or if a record cannot be read back, which is logged). Thread:
    /// the learner's.
    public func records(after: UInt64, timeout: Double) -> [(sequence: UInt64, pairs: [PreferencePair])] {
        if lastSequence <= after && timeout > 0 { _ = waitForRecords(after: after, timeout: timeout) }
        do {
            return try records(after: after, limit: 64).map { ($0.sequence, $0.pairs) }
        } catch {
            serverLog("learner cannot read the preference log: \(error)")
            return []
        }
    }
}
