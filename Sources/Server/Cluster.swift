import Engine
import Foundation
import Model
import PreferenceLog
import Wire

/// What one `selm serve` process is in a deployment (`selm serve --role`).
public enum ServerRole: String, Sendable, CaseIterable {
    /// Engine, preference log and learner in one process (a single machine; the default).
    case all
    /// A rollout replica: an engine and no learner; preferences and checkpoints are refused
    /// (`FAILED_PRECONDITION`), the log is never written. With `--follow` it serves its learner's
    /// versions (`WeightFollower`).
    case rollout
    /// The learner of a deployment: log, learner and an engine (for its own evaluation requests),
    /// and `FetchWeights`, served from an f32 copy of its newest published version.
    case learner
}

/// The f32 weights of a learner's newest published version, copied at publication, which
/// `FetchWeights` streams (a copy: the learner goes on training its own in place). Thread-safe.
final class PublishedWeights: @unchecked Sendable {
    struct Held: @unchecked Sendable {
        let version: UInt64
        let learnerStep: UInt64
        /// Never written after it is stored.
        let weights: ParameterSet
    }
    private let lock = NSLock()
    private var held: Held

    init(_ held: Held) { self.held = held }

    var current: Held { lock.withLock { held } }

    /// Keeps `h` when it is newer than the one held. Any thread.
    func store(_ h: Held) { lock.withLock { if h.version > held.version { held = h } } }
}

/// A `FetchWeights` reply stream in progress. Loop thread.
final class WeightStream {
    let request: Request
    let held: PublishedWeights.Held
    let chunkBytes: Int
    let corrupt: Bool
    /// The bytes' layout (f32, or the linear layers in bf16).
    let wire: WeightsWire
    var offset = 0
    var chunks: UInt32 = 0
    var crc: UInt32 = 0

    init(request: Request, held: PublishedWeights.Held, chunkBytes: Int, corrupt: Bool, wire: WeightsWire) {
        self.request = request
        self.held = held
        self.chunkBytes = chunkBytes
        self.corrupt = corrupt
        self.wire = wire
    }
}

/// A server's part in a deployment: its role, the weights it serves to followers, the
/// `FetchWeights` streams running, and the staleness of the preference rows it receives.
/// `published` is thread-safe; the rest is loop-thread only.
final class ClusterState: @unchecked Sendable {
    let role: ServerRole
    /// The learner a rollout replica follows ("HOST:PORT"), or nil.
    let following: String?
    /// Rows more than this many versions behind the newest are dropped (nil: none).
    let maxStaleness: UInt64?
    /// Set for `.learner` (by `SelmServer.init`).
    var published: PublishedWeights?
    /// Streams by connection id.
    var streams: [UInt64: [WeightStream]] = [:]
    /// Upper bounds of the staleness buckets (StatusReply.staleness).
    static let stalenessBounds: [UInt64] = [0, 1, 2, 4, 8, 16, 32, 64, UInt64.max]
    var staleness = [UInt64](repeating: 0, count: ClusterState.stalenessBounds.count)
    var sawVersionedRows = false
    var stalenessSum: Double = 0
    var staleDropped: UInt64 = 0
    var fetchesStarted = 0
    var weightBytesServed: UInt64 = 0
    /// Test seam: `SELM_TEST_CORRUPT_FETCH=N` flips one byte of the first chunk of the N-th
    /// FetchWeights stream this server serves (after its CRC was computed), as a link would.
    let corruptFetch: Int? = ProcessInfo.processInfo.environment["SELM_TEST_CORRUPT_FETCH"].flatMap { Int($0) }

    init(_ c: ServerConfiguration) {
        role = c.role
        following = c.follow
        maxStaleness = c.maxStaleness
    }

    func countStaleness(_ s: UInt64) {
        sawVersionedRows = true
        stalenessSum += Double(s)
        let i = Self.stalenessBounds.firstIndex { s <= $0 }!
        staleness[i] += 1
    }
}

extension SelmServer {
    /// Requests this server's role does not serve, refused before anything else.
    func roleRefusal(_ body: ClientMessage) -> ServerError? {
        func refuse(_ reason: String) -> ServerError { .refused(code: .failedPrecondition, field: "", reason: reason) }
        switch body {
        case .submitPreferences where cluster.role == .rollout:
            return refuse("this server runs with --role rollout and keeps no preference log: send preferences to the learner")
        case .saveCheckpoint where cluster.role == .rollout:
            return refuse("this server runs with --role rollout and has no learner: send SaveCheckpoint to the learner")
        case .refreshWeights where cluster.following != nil:
            return refuse("this replica follows the learner at \(cluster.following!) (--follow): its versions come from the learner; send RefreshWeights to the learner")
        case .fetchWeights where cluster.role != .learner:
            return refuse("this server runs with --role \(cluster.role.rawValue): only a server started with --role learner serves FetchWeights")
        default:
            return nil
        }
    }

    /// Starts streaming the newest published version's weights (role learner).
    func fetchWeights(_ conn: Connection, id: UInt64, _ f: FetchWeights) {
        guard let store = cluster.published else {
            return fail(conn, id: id, type: "fetch_weights", .refused(code: .failedPrecondition, field: "", reason: "no weights are published here"))
        }
        let held = store.current
        if f.version != 0 && f.version != held.version {
            let reason = f.version > held.version
                ? "version \(f.version) is not stored yet (the newest stored is \(held.version)); retry"
                : "version \(f.version) is not the newest (\(held.version)); FetchWeights serves the newest version only"
            return fail(conn, id: id, type: "fetch_weights", .refused(code: .notFound, field: "version", reason: reason))
        }
        let chunk = Int(f.chunkBytes)
        if !FetchWeights.chunkBytesRange.contains(f.chunkBytes) || chunk + 1024 > config.maxFrameBytes {
            return fail(conn, id: id, type: "fetch_weights", .invalid("chunk_bytes",
                "must be in [4096, 8388608] (or 0 for 1 MiB) and fit in this server's frame limit of \(config.maxFrameBytes) bytes, got \(chunk)"))
        }
        guard let dtype = f.dtype.isEmpty ? .f32 : WeightsWire.DType(rawValue: f.dtype) else {
            return fail(conn, id: id, type: "fetch_weights", .invalid("dtype", "must be \"f32\" or \"bf16\" (or empty for f32), got \"\(f.dtype)\""))
        }
        guard let r = begin(conn, id: id, type: "fetch_weights", cancellable: true, subscription: false) else { return }
        cluster.fetchesStarted += 1
        let stream = WeightStream(request: r, held: held, chunkBytes: chunk, corrupt: cluster.fetchesStarted == cluster.corruptFetch,
                                  wire: WeightsWire(layout: held.weights.layout, dtype: dtype))
        cluster.streams[conn.id, default: []].append(stream)
        pumpWeights(conn)
    }

    /// Loop thread: sends the next chunks of `conn`'s weight streams while its unsent replies stay
    /// under a quarter of `--max-output-bytes` (called again as writes complete), then WeightsDone.
    func pumpWeights(_ conn: Connection) {
        guard var list = cluster.streams[conn.id] else { return }
        let budget = config.maxOutputBytes / 4
        while let s = list.first {
            guard alive(conn, s.request), !s.request.cancelled else {
                if alive(conn, s.request) { end(conn, s.request, error: .refused(code: .cancelled, field: "", reason: "cancelled")) }
                list.removeFirst()
                continue
            }
            let total = s.wire.totalBytes
            while s.offset < total && conn.output.count + conn.queuedBytes < budget && !conn.closing {
                let n = min(s.chunkBytes, total - s.offset)
                var data = [UInt8](unsafeUninitializedCapacity: n) { buf, made in
                    s.wire.encode(s.held.weights, offset: s.offset, count: n, into: buf.baseAddress!)
                    made = n
                }
                let crc = data.withUnsafeBytes { CRC32C.update(0, $0) }
                s.crc = data.withUnsafeBytes { CRC32C.update(s.crc, $0) }
                if s.corrupt && s.chunks == 0 { data[n / 2] ^= 0x40 }
                send(conn, Envelope(id: s.request.id, body: .weightsChunk(WeightsChunk(offset: UInt64(s.offset), data: data, crc32c: crc))))
                s.offset += n
                s.chunks += 1
                cluster.weightBytesServed += UInt64(n)
            }
            guard s.offset >= total else { break }  // resumes when writes complete
            let layout = s.wire.segments.map {
                TensorLayout(name: $0.entry.name, shape: $0.entry.shape.map { UInt64($0) }, offset: UInt64($0.offset),
                             length: UInt64($0.length), dtype: $0.dtype)
            }
            send(conn, Envelope(id: s.request.id, body: .weightsDone(WeightsDone(
                version: s.held.version, dtype: s.wire.dtype.rawValue, tensors: layout, totalBytes: UInt64(total), crc32c: s.crc,
                chunks: s.chunks, learnerStep: s.held.learnerStep))))
            end(conn, s.request, outcome: "ok")
            list.removeFirst()
        }
        cluster.streams[conn.id] = list.isEmpty ? nil : list
    }

    /// Staleness at intake: every row with a `version` is counted in the histogram (the newest
    /// published version minus its own); with `--max-staleness K` rows more than K behind are
    /// removed. Returns the rows kept and the number dropped.
    /// - Throws: INVALID_ARGUMENT naming `rows[i].version` for a version newer than the newest.
    func admitStaleness(_ p: SubmitPreferences) throws(ServerError) -> (SubmitPreferences, Int) {
        // The newest version as Status reports it: the engine's installed one may be ahead of the
        // last announcement this loop has drained.
        let newest = max(lastVersionEvent.version, currentPolicyVersion)
        for (i, row) in p.rows.enumerated() {
            if let v = row.version, v > newest {
                throw .invalid("rows[\(i)].version", "version \(v) is newer than this learner's newest version \(newest)")
            }
        }
        var kept = p
        kept.rows = []
        var dropped = 0
        for row in p.rows {
            if let v = row.version {
                let staleness = newest - v
                cluster.countStaleness(staleness)
                if let k = cluster.maxStaleness, staleness > k {
                    dropped += 1
                    continue
                }
            }
            kept.rows.append(row)
        }
        cluster.staleDropped += UInt64(dropped)
        return (kept, dropped)
    }

    /// The staleness histogram as StatusReply carries it (empty before a row with a version).
    var stalenessBuckets: [StalenessBucket] {
        guard cluster.sawVersionedRows else { return [] }
        return zip(ClusterState.stalenessBounds, cluster.staleness).map { StalenessBucket(le: $0, rows: $1) }
    }

    /// Prometheus lines of the deployment figures (appended to /metrics).
    func renderClusterMetrics() -> String {
        var o = "# HELP selm_preference_staleness_versions Staleness of preference rows received with a version (newest version minus the row's), at intake.\n# TYPE selm_preference_staleness_versions histogram\n"
        var cumulative: UInt64 = 0
        for (b, n) in zip(ClusterState.stalenessBounds, cluster.staleness) {
            cumulative += n
            o += "selm_preference_staleness_versions_bucket{le=\"\(b == UInt64.max ? "+Inf" : String(b))\"} \(cumulative)\n"
        }
        o += "selm_preference_staleness_versions_sum \(promNumber(cluster.stalenessSum))\nselm_preference_staleness_versions_count \(cumulative)\n"
        o += "# HELP selm_preference_stale_rows_dropped_total Preference rows dropped by --max-staleness.\n# TYPE selm_preference_stale_rows_dropped_total counter\nselm_preference_stale_rows_dropped_total \(cluster.staleDropped)\n"
        o += "# HELP selm_weights_served_bytes_total Weight bytes sent in FetchWeights streams.\n# TYPE selm_weights_served_bytes_total counter\nselm_weights_served_bytes_total \(cluster.weightBytesServed)\n"
        return o
    }
}
