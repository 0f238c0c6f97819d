import Foundation
import Model

/// One published weight set and its version. Kept alive while anything holds it: being current,
/// a request bound or pinned to it, a score task.
final class WeightSnapshot: @unchecked Sendable {
    let version: UInt64
    let model: LlamaModel
    /// Holders; guarded by the registry's lock.
    fileprivate var holders = 0
    /// Taken out of the live set to keep it within the limit; guarded by the registry's lock.
    fileprivate var retired = false

    init(version: UInt64, model: LlamaModel) {
        self.version = version
        self.model = model
    }
}

/// The live weight snapshots, the current one, and a publication waiting to be installed.
///
/// `publish` (any thread) only records the new weights; `installPending` (step thread, between two
/// steps) always makes them current, and retires other snapshots (the cheapest to give up) while
/// more than `maxLive` are live. A retired snapshot leaves the live set at once (nothing can pin it
/// any more; the scheduler moves or ends the requests bound to it); its memory goes with its last
/// holder (a score task already queued on it). A snapshot whose last holder lets go is removed, and
/// its memory is freed on a background queue so the step thread never pays for unmapping half a
/// gigabyte.
///
/// Thread: every method is thread-safe (one internal lock, never held across a forward pass).
final class VersionRegistry: @unchecked Sendable {
    private let lock = NSLock()
    /// Snapshots live at once at most (the current one included). Immutable.
    let maxLive: Int
    private var live: [UInt64: WeightSnapshot] = [:]
    private(set) var current: WeightSnapshot
    private var pending: WeightSnapshot?
    private var newest: UInt64
    /// The learner's reference version (`setReference`): held, never retired, not counted in
    /// `maxLive`.
    private var reference: WeightSnapshot?

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
    /// The highest version ever published (pending included).
    var newestVersion: UInt64 { locked { newest } }
    var liveVersions: [UInt64] { locked { live.keys.sorted() } }
    /// The version kept as the learner's reference (0: none).
    var referenceVersion: UInt64 { locked { reference?.version ?? 0 } }

    /// Keeps `version` alive as the learner's reference policy — held, never retired, beside the
    /// `maxLive` others — and lets go of the version kept before (freed when nothing else holds
    /// it). 0 lets go without keeping another. Returns false (keeping nothing) when `version` is
    /// not live.
    @discardableResult
    func setReference(_ version: UInt64) -> Bool {
        var dropped: WeightSnapshot?
        let kept: Bool = locked {
            if reference?.version == version && version != 0 { return true }
            var next: WeightSnapshot?
            if version != 0, let s = live[version] { s.holders += 1; next = s }
            if let old = reference {
                old.holders -= 1
                if old.holders == 0 {
                    if live[old.version] === old { live.removeValue(forKey: old.version) }
                    dropped = old
                }
            }
            reference = next
            return next != nil || version == 0
        }
        if let dropped { Self.freeInBackground(dropped) }
        return kept
    }

    /// Records a new snapshot's model, already in the engine's precision (replacing an older
    /// pending publication, which was never used).
    func publish(_ model: LlamaModel, version: UInt64) throws {
        let dropped: WeightSnapshot? = try locked {
            guard version > newest else { throw EngineError.staleVersion(version: version, newest: newest) }
            newest = version
            let old = pending
            pending = WeightSnapshot(version: version, model: model)
            return old
        }
        if let dropped { Self.freeInBackground(dropped) }
    }

    /// What the scheduler tells `installPending` about the requests bound to live snapshots.
    struct InstallPlan {
        /// One entry per `recompute` request: the snapshot it is bound to (it moves to the new one).
        var moving: [WeightSnapshot] = []
        /// Per version, what retiring it would cost: generation requests pinned to it (they would
        /// fail) and the computed KV positions of its unfinished sequences (they would be
        /// re-prefilled).
        var cost: [UInt64: (pinned: Int, tokens: Int)] = [:]
    }

    /// Makes the pending publication current, if there is one, in one atomic change:
    /// - the old current snapshot loses its "current" hold;
    /// - one hold on each of `plan().moving` passes to the new snapshot: those `recompute`
    ///   requests are bound to it now;
    /// - snapshots left without holders are removed;
    /// - while more than `maxLive` are live, one non-current snapshot is retired: removed from the
    ///   live set and returned, still held, for the scheduler to move or end what is bound to it.
    ///   The one retired is the cheapest by `plan().cost`: fewest pinned requests, then fewest
    ///   tokens to re-prefill, then the oldest. (Retiring the oldest first would move long
    ///   generations again and again under frequent publishing, re-prefilling ever longer
    ///   contexts, and fail pinned evaluations; the cheapest is usually the previous current
    ///   version, whose sequences are young.)
    /// `plan` is called under the lock, only when something is pending: it must not call back into
    /// the registry. Returns nil when nothing was pending. Step thread, between steps.
    func installPending(_ plan: () -> InstallPlan) -> (current: WeightSnapshot, retired: [WeightSnapshot])? {
        var freed: [WeightSnapshot] = []
        let result: (WeightSnapshot, [WeightSnapshot])? = locked {
            guard let p = pending else { return nil }
            let plan = plan()
            pending = nil
            let old = current
            p.holders = 1
            current = p
            live[p.version] = p
            old.holders -= 1
            for s in plan.moving { s.holders -= 1; p.holders += 1 }
            for s in [old] + plan.moving where s.holders == 0 && live[s.version] === s {
                live.removeValue(forKey: s.version)
                freed.append(s)
            }
            func key(_ s: WeightSnapshot) -> (Int, Int, UInt64) {
                let c = plan.cost[s.version] ?? (0, 0)
                return (c.pinned, c.tokens, s.version)
            }
            var retired: [WeightSnapshot] = []
            // The reference version is kept beside the `maxLive` others (unless it is the new current one).
            let ref = reference.flatMap { r in r !== p && live[r.version] === r ? r : nil }
            let limit = maxLive + (ref == nil ? 0 : 1)
            while live.count > limit, let victim = live.values.filter({ $0 !== p && $0 !== ref }).min(by: { key($0) < key($1) }) {
                live.removeValue(forKey: victim.version)
                victim.retired = true
                retired.append(victim)
            }
            return (p, retired)
        }
        for s in freed { Self.freeInBackground(s) }
        return result
    }

    /// Whether `s` was retired (no request may stay bound to it). Thread: any.
    func isRetired(_ s: WeightSnapshot) -> Bool {
        locked { s.retired }
    }

    /// Takes a hold on the current snapshot.
    func retainCurrent() -> WeightSnapshot {
        locked { current.holders += 1; return current }
    }

    /// Takes a hold on a live version, or nil when it is not alive (never was, freed, or retired).
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
            guard s.holders == 0 else { return false }
            if live[s.version] === s { live.removeValue(forKey: s.version) }
            return true
        }
        if freed { Self.freeInBackground(s) }
    }

    /// Drops the registry's reference on the reaper's thread a little later, after the step thread
    /// has let go of its own, so the last release (for f32, unmapping ~0.5 GB; a compact model's
    /// memory returns to `CompactMemoryPool`) happens off the step thread.
    private static func freeInBackground(_ s: WeightSnapshot) {
        Reaper.shared.drop(s, after: 0.5)
    }
}
