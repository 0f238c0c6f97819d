import Foundation
import Model

/// One published weight set and its version. Kept alive while anything holds it: being current,
/// a request bound or pinned to it, a score task.
final class WeightSnapshot: @unchecked Sendable {
    let version: UInt64
    let model: LlamaModel
    /// Holders; guarded by the registry's lock.
    fileprivate var holders = 0

    init(version: UInt64, model: LlamaModel) {
        self.version = version
        self.model = model
    }
}

/// The live weight snapshots, the current one, and a publication waiting to be installed.
///
/// `publish` (any thread) only records the new weights; `installPending` (step thread, between two
/// steps) makes them current when the live-snapshot limit allows. A snapshot whose last holder lets
/// go is removed, and its memory is freed on a background queue so the step thread never pays for
/// unmapping half a gigabyte.
///
/// Thread: every method is thread-safe (one internal lock, never held across a forward pass).
final class VersionRegistry: @unchecked Sendable {
    private let lock = NSLock()
    private let maxLive: Int
    private var live: [UInt64: WeightSnapshot] = [:]
    private(set) var current: WeightSnapshot
    private var pending: WeightSnapshot?
    private var newest: UInt64

    init(model: LlamaModel, version: UInt64, maxLive: Int) {
        let s = WeightSnapshot(version: version, model: model)
        s.holders = 1
        current = s
        live[version] = s
        newest = version
        self.maxLive = max(1, maxLive)
    }

    private func locked<T>(_ f: () throws -> T) rethrows -> T {
        lock.lock(); defer { lock.unlock() }
        return try f()
    }

    var currentVersion: UInt64 { locked { current.version } }
    var pendingVersion: UInt64? { locked { pending?.version } }
    var liveVersions: [UInt64] { locked { live.keys.sorted() } }

    /// Whether new requests must wait for a pending publication.
    var admissionBlocked: Bool { locked { pending != nil } }

    /// Records new weights (replacing an older pending publication, which was never used).
    func publish(_ weights: ParameterSet, version: UInt64) throws {
        let model = LlamaModel(weights: weights)
        let dropped: WeightSnapshot? = try locked {
            guard version > newest else { throw EngineError.staleVersion(version: version, newest: newest) }
            newest = version
            let old = pending
            pending = WeightSnapshot(version: version, model: model)
            return old
        }
        if let dropped { Self.freeInBackground(dropped) }
    }

    /// Makes the pending publication current if the live limit allows (the old current snapshot
    /// counts only while something besides "being current" holds it). Returns the new current
    /// snapshot when it was installed. Step thread, between steps.
    func installPending() -> WeightSnapshot? {
        var freed: WeightSnapshot?
        let installed: WeightSnapshot? = locked {
            guard let p = pending else { return nil }
            let oldFreed = current.holders == 1
            guard live.count + 1 - (oldFreed ? 1 : 0) <= maxLive else { return nil }
            pending = nil
            let old = current
            old.holders -= 1
            if old.holders == 0 { live.removeValue(forKey: old.version); freed = old }
            p.holders = 1
            current = p
            live[p.version] = p
            return p
        }
        if let freed { Self.freeInBackground(freed) }
        return installed
    }

    /// Takes a hold on the current snapshot.
    func retainCurrent() -> WeightSnapshot {
        locked { current.holders += 1; return current }
    }

    /// Takes a hold on a live version, or nil when it is not alive.
    func retain(version: UInt64) -> WeightSnapshot? {
        locked {
            guard let s = live[version] else { return nil }
            s.holders += 1
            return s
        }
    }

    /// Lets go of a hold; frees the snapshot when it was the last.
    func release(_ s: WeightSnapshot) {
        let freed: Bool = locked {
            s.holders -= 1
            precondition(s.holders >= 0, "weight snapshot \(s.version) released too often")
            if s.holders == 0 { live.removeValue(forKey: s.version); return true }
            return false
        }
        if freed { Self.freeInBackground(s) }
    }

    /// Drops the registry's reference on another thread a little later, after the step thread
    /// has let go of its own, so the last release (unmapping ~0.5 GB) happens off the step thread.
    private static func freeInBackground(_ s: WeightSnapshot) {
        DispatchQueue.global(qos: .utility).asyncAfter(deadline: .now() + 0.5) { withExtendedLifetime(s) {} }
    }
}
