import Engine
import Foundation
import Model
import PreferenceLog
import SelmClient

/// A rollout replica's link to its learner (`selm serve --role rollout --follow HOST:PORT`): it
/// subscribes to the learner's versions (`SubscribeVersions`: a push per publication, no polling)
/// and, whenever the learner announces a version newer than the one served here, pulls the newest
/// with `FetchWeights` — each chunk checked against its CRC-32C, then the whole against the total
/// CRC, the size and the tensor layout — and publishes it in the local engine under the learner's
/// number (`GenerationEngine.publish(weights:version:learnerStep:metrics:record:)`, recorded in the
/// replica's own `VersionLedger` first, so its numbers never go back across restarts).
///
/// A replica that falls behind (several versions announced while it fetched) fetches only the
/// newest; one that loses the learner reconnects every `retrySeconds` and catches up from the
/// subscription's first event (the learner's current version). Weights that fail a check are
/// refused (nothing published, logged) and fetched again.
///
/// Thread: `fetchFirst` blocks the calling thread; `start` runs the loop on a thread of its own.
public final class WeightFollower: @unchecked Sendable {
    /// "HOST:PORT" of the learner.
    public let address: String
    private let token: String?
    /// Seconds between attempts after a failure (and the subscription's poll for `stop`).
    public let retrySeconds: Double
    private let config: LlamaConfig
    private let layout: ParameterLayout
    /// What this replica asks for: the linear layers in bf16 when its engine computes in bf16 (it
    /// packs exactly the same weights from them, in ~0.6 of the bytes), else f32.
    public let dtype: WeightsWire.DType
    private let lock = NSLock()
    private var stopped = false
    /// The memory the last fetch was received into, reused by the next (the engine's `publish` and
    /// `LlamaModel.inference(from:)` read a fetch's weights during the call only): 4 bytes per
    /// parameter not allocated, zeroed and faulted in again per version. Fetches run one at a time
    /// (`fetchFirst`, then the follower's thread).
    private var spare: ParameterSet?
    private var thread: Thread?

    /// One verified download.
    public struct Fetched: @unchecked Sendable {
        public let version: UInt64
        public let learnerStep: UInt64
        public let weights: ParameterSet
        public let bytes: Int
        /// The element type the bytes came in ("f32" or "bf16").
        public let dtype: String
        public let seconds: Double
    }

    /// A check the learner's weights failed (nothing is published).
    public struct Refusal: Error, CustomStringConvertible {
        public let description: String
    }

    public init(address: String, token: String?, retrySeconds: Double, config: LlamaConfig, enginePrecision: EnginePrecision = .f32) {
        self.address = address
        self.token = token
        self.retrySeconds = retrySeconds
        self.config = config
        layout = ParameterLayout(config: config)
        dtype = enginePrecision == .bf16 ? .bf16 : .f32
    }

    private var isStopped: Bool { lock.withLock { stopped } }

    private func connect() throws -> SelmClient {
        try SelmClient(endpoint: try Endpoint(address: address), token: token, timeout: 120, clientName: "selm-follower")
    }

    /// Downloads the learner's newest version and checks it. Thread: any (blocks).
    /// - Throws: `Refusal` for weights that fail a check, `SelmClientError` for the link.
    public func fetch(_ client: SelmClient, version: UInt64 = 0) throws -> Fetched {
        let started = Date()
        let weights = lock.withLock { () -> ParameterSet in
            defer { spare = nil }
            return spare ?? ParameterSet(config: config)
        }
        defer { lock.withLock { spare = weights } }
        // Received into the weights' own memory (the wire bytes are never more than the f32 ones),
        // then decoded in place: no second copy of the model.
        let total = layout.totalCount * 4
        let dst = UnsafeMutableRawPointer(weights.data)
        let stream = try client.stream(.fetchWeights(FetchWeights(version: version, dtype: dtype == .f32 ? "" : dtype.rawValue)))
        defer { stream.close() }
        var offset = 0, crc: UInt32 = 0, chunks: UInt32 = 0
        while true {
            switch try stream.next() {
            case .weightsChunk(let c):
                guard c.offset == UInt64(offset), offset + c.data.count <= total else {
                    throw Refusal(description: "weights chunk \(chunks) at offset \(c.offset) (\(c.data.count) bytes) does not continue the \(offset) bytes received (of \(total))")
                }
                let got = c.data.withUnsafeBytes { CRC32C.update(0, $0) }
                guard got == c.crc32c else {
                    throw Refusal(description: String(format: "weights chunk %u at offset %d: CRC32C 0x%08x of the bytes received does not match 0x%08x sent; refused", chunks, offset, got, c.crc32c))
                }
                crc = c.data.withUnsafeBytes { CRC32C.update(crc, $0) }
                c.data.withUnsafeBytes { (dst + offset).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
                offset += c.data.count
                chunks += 1
            case .weightsDone(let d):
                let wire = try check(d, received: offset, crc: crc, chunks: chunks)
                wire.decodeInPlace(weights)
                if let bad = weights.firstNonFinite() {
                    throw Refusal(description: "version \(d.version) refused: a non-finite weight: \(bad)")
                }
                return Fetched(version: d.version, learnerStep: d.learnerStep, weights: weights, bytes: offset,
                               dtype: d.dtype, seconds: Date().timeIntervalSince(started))
            case let other:
                throw Refusal(description: "unexpected \(other.name) in a FetchWeights stream")
            }
        }
    }

    /// Checks what the learner says it sent against what arrived and against this model's layout
    /// in the dtype it says (f32 — what a learner that does not know `FetchWeights.dtype` sends —
    /// or the bf16 one asked for); returns that layout.
    private func check(_ d: WeightsDone, received: Int, crc: UInt32, chunks: UInt32) throws -> WeightsWire {
        func refuse(_ s: String) -> Refusal { Refusal(description: "version \(d.version) refused: \(s)") }
        guard let dt = WeightsWire.DType(rawValue: d.dtype), dt == .f32 || dt == dtype else {
            throw refuse("dtype \"\(d.dtype)\" (this replica asked for \(dtype.rawValue))")
        }
        let wire = WeightsWire(layout: layout, dtype: dt)
        guard d.totalBytes == UInt64(wire.totalBytes), UInt64(received) == d.totalBytes, d.chunks == chunks else {
            throw refuse("\(received) bytes in \(chunks) chunks received; the learner sent \(d.totalBytes) in \(d.chunks), this model has \(wire.totalBytes) in \(dt.rawValue)")
        }
        guard crc == d.crc32c else { throw refuse(String(format: "CRC32C 0x%08x of all bytes does not match 0x%08x", crc, d.crc32c)) }
        guard d.tensors.count == wire.segments.count else {
            throw refuse("\(d.tensors.count) tensors, this model has \(wire.segments.count) (another architecture?)")
        }
        for (t, s) in zip(d.tensors, wire.segments) {
            let e = s.entry
            // An f32 stream from a learner that predates TensorLayout.dtype leaves it empty.
            guard t.name == e.name, t.shape == e.shape.map({ UInt64($0) }), t.offset == UInt64(s.offset), t.length == UInt64(s.length),
                  t.dtype == s.dtype || (t.dtype.isEmpty && dt == .f32) else {
                throw refuse("tensor \(t.name) \(t.shape) \(t.dtype) at \(t.offset) does not match this model's \(e.name) \(e.shape) \(s.dtype) at \(s.offset)")
            }
        }
        return wire
    }

    /// The learner's newest version, retried every `retrySeconds` until it arrives and passes
    /// every check (logged) — a replica starts on its learner's weights, never on its own.
    public func fetchFirst() -> Fetched {
        while true {
            do {
                let client = try connect()
                defer { client.close() }
                let f = try fetch(client)
                serverLog("follow \(address): version \(f.version) fetched (\(f.bytes) bytes of \(f.dtype) in \(String(format: "%.3f", f.seconds)) s)")
                return f
            } catch {
                serverLog("follow \(address): \(error); retrying in \(retrySeconds) s")
                Thread.sleep(forTimeInterval: retrySeconds)
            }
        }
    }

    /// Follows the learner on a thread of its own from `version` (the one the engine serves).
    public func start(engine: GenerationEngine, ledger: VersionLedger, from version: UInt64) {
        let t = Thread { [self] in run(engine: engine, ledger: ledger, local: version) }
        t.name = "selm-follower"
        lock.withLock { thread = t }
        t.start()
    }

    /// Ends the loop (at its next poll). Thread: any.
    public func stop() { lock.withLock { stopped = true } }

    private func run(engine: GenerationEngine, ledger: VersionLedger, local start: UInt64) {
        var local = start
        while !isStopped {
            do {
                let client = try connect()
                defer { client.close() }
                let subscription = try client.subscribeVersions()
                var target = local
                while !isStopped {
                    // Take every announced version (a replica that fell behind skips to the newest).
                    var wait: Double? = target > local ? 0 : retrySeconds
                    while let e = try subscription.next(timeout: wait) {
                        target = max(target, e.version)
                        wait = 0
                    }
                    if subscription.isClosed { throw Refusal(description: "the learner ended the version subscription") }
                    guard target > local else { continue }
                    // The version announced, by number: NOT_FOUND costs no bytes when the learner has
                    // not stored it yet (retried shortly) or has a newer one (announced next).
                    let f: Fetched
                    do { f = try fetch(client, version: target) } catch SelmClientError.server(code: .notFound, _, _, _) {
                        Thread.sleep(forTimeInterval: min(retrySeconds, 0.02))
                        continue
                    }
                    if f.version > local {
                        let t0 = Date()
                        try engine.publish(weights: f.weights, version: f.version, learnerStep: f.learnerStep) { v in try ledger.record(v) }
                        serverLog("follow \(address): version \(f.version) fetched (\(f.bytes) bytes of \(f.dtype) in \(String(format: "%.3f", f.seconds)) s) and published (\(String(format: "%.3f", Date().timeIntervalSince(t0))) s)")
                        local = f.version
                    }
                }
            } catch {
                if isStopped { return }
                serverLog("follow \(address): \(error); retrying in \(retrySeconds) s")
                Thread.sleep(forTimeInterval: retrySeconds)
            }
        }
    }
}
