import Foundation
import Kernels
import Model
import Wire

/// A Prometheus histogram with fixed upper bounds (seconds).
struct Histogram {
    let bounds: [Double]
    private(set) var counts: [UInt64]
    private(set) var sum: Double = 0
    private(set) var count: UInt64 = 0

    init(bounds: [Double]) {
        self.bounds = bounds
        counts = Array(repeating: 0, count: bounds.count)
    }

    mutating func observe(_ v: Double) {
        for (i, b) in bounds.enumerated() where v <= b { counts[i] += 1 }
        sum += v
        count += 1
    }

    /// The `q`-quantile, interpolated within the bucket holding it (as PromQL's histogram_quantile).
    func quantile(_ q: Double) -> Double {
        guard count > 0 else { return .nan }
        let rank = q * Double(count)
        var prevBound = 0.0, prevCount = 0.0
        for (i, b) in bounds.enumerated() {
            let c = Double(counts[i])
            if c >= rank {
                return c == prevCount ? b : prevBound + (b - prevBound) * (rank - prevCount) / (c - prevCount)
            }
            prevBound = b; prevCount = c
        }
        return bounds.last ?? .nan
    }

    func render(name: String, help: String, into out: inout String) {
        out += "# HELP \(name) \(help)\n# TYPE \(name) histogram\n"
        for (i, b) in bounds.enumerated() { out += "\(name)_bucket{le=\"\(promNumber(b))\"} \(counts[i])\n" }
        out += "\(name)_bucket{le=\"+Inf\"} \(count)\n\(name)_sum \(promNumber(sum))\n\(name)_count \(count)\n"
    }
}

/// The live figures a metrics scrape or a Status reply reports beside the counters; gathered on the
/// loop thread from the engine's, the learner's and the log's thread-safe status calls.
struct LiveFigures {
    var policyVersion: UInt64 = 0
    var learnerStep: UInt64 = 0
    var learnerMetrics: [String: Double] = [:]
    var walLastSequence: UInt64 = 0
    var walConsumedSequence: UInt64 = 0
    var walPendingBatches: Int = 0
    var waitingRequests: Int = 0
    var runningSequences: Int = 0
    var kvBlocksUsed: Int = 0
    var kvBlocksTotal: Int = 0
    var tokensPerSecond: Double = 0
    var liveVersions: Int = 0
    var connections: Int = 0
    var connectionObjects: Int = 0
    var tokenizerInputBytes: UInt64 = 0
    var uptime: Double = 0
    /// The engine's precision ("" without an engine), bytes of one weight snapshot, and its
    /// publication preparation (packing) figures.
    var enginePrecision = ""
    var snapshotBytes = 0
    var kvCachePrecision = ""
    var publishPacks: UInt64 = 0
    var lastPublishPackSeconds: Double = 0
    var publishPackSecondsTotal: Double = 0
    var publishSnapshots: UInt64 = 0
    var compactMemory = CompactMemoryPool.Counts()
}

/// Why the server closed a client connection (the `reason` label of
/// `selm_connections_dropped_total`).
enum DropReason: String, CaseIterable {
    /// A frame over the limit (`FRAME_TOO_LARGE`; before Hello the pre-auth limit).
    case frameTooLarge = "frame_too_large"
    /// Unread replies past `--max-output-bytes`.
    case outputCap = "output_cap"
    /// A Hello with the wrong auth token.
    case authFailed = "auth_failed"
    /// No successful Hello within `--hello-timeout`.
    case helloTimeout = "hello_timeout"
    /// Closed while waiting for its Hello to admit a newer connection (the pre-auth pool was full).
    case preAuthEvicted = "pre_auth_evicted"
    /// Refused on arrival: the pre-auth pool was full of connections too young to evict.
    case preAuthFull = "pre_auth_full"
    /// A Hello past `--max-connections` authenticated connections.
    case tooManyConnections = "too_many_connections"
}

/// The server's counters, rendered in Prometheus text format (version 0.0.4) at `GET /metrics`.
///
/// Loop thread only (every request is counted where it ends, on the loop thread).
final class ServerMetrics {
    /// (request type, outcome) → count; outcome is "ok" or the error code's name.
    private(set) var requests: [String: [String: UInt64]] = [:]
    var generatedTokens: UInt64 = 0
    var promptTokens: UInt64 = 0
    var framesIn: UInt64 = 0
    var framesOut: UInt64 = 0
    var bytesIn: UInt64 = 0
    var bytesOut: UInt64 = 0
    var connectionsAccepted: UInt64 = 0
    /// Connections the server closed, by reason (every reason present, 0 included).
    private(set) var connectionsDropped: [DropReason: UInt64] = Dictionary(uniqueKeysWithValues: DropReason.allCases.map { ($0, 0) })
    var preferenceRows: UInt64 = 0
    var timeToFirstToken = Histogram(bounds: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30])
    /// Per finished sample of ≥ 2 tokens: (last token − the request's first token) / (tokens − 1).
    var interTokenLatency = Histogram(bounds: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5])
    /// Per generation finished ok (socket Generate and the HTTP API): received → its last result.
    var endToEndLatency = Histogram(bounds: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120])
    var walAck = Histogram(bounds: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1])

    func countRequest(_ type: String, outcome: String) {
        requests[type, default: [:]][outcome, default: 0] += 1
    }

    func countDrop(_ reason: DropReason) {
        connectionsDropped[reason, default: 0] += 1
    }

    /// The whole exposition text.
    func render(_ live: LiveFigures) -> String {
        var o = ""
        o += "# HELP selm_requests_total Requests finished, by type and outcome (ok or the error code).\n# TYPE selm_requests_total counter\n"
        for type in requests.keys.sorted() {
            for outcome in requests[type]!.keys.sorted() {
                o += "selm_requests_total{type=\"\(type)\",outcome=\"\(outcome)\"} \(requests[type]![outcome]!)\n"
            }
        }
        func counter(_ name: String, _ help: String, _ v: UInt64) { o += "# HELP \(name) \(help)\n# TYPE \(name) counter\n\(name) \(v)\n" }
        func gauge(_ name: String, _ help: String, _ v: Double) { o += "# HELP \(name) \(help)\n# TYPE \(name) gauge\n\(name) \(promNumber(v))\n" }
        counter("selm_generated_tokens_total", "Completion tokens generated for clients.", generatedTokens)
        counter("selm_prompt_tokens_total", "Prompt tokens of finished samples.", promptTokens)
        timeToFirstToken.render(name: "selm_time_to_first_token_seconds",
                                help: "From receiving a GenerateRequest to its first token.", into: &o)
        interTokenLatency.render(name: "selm_inter_token_latency_seconds",
                                 help: "Per finished sample of two or more tokens: the mean gap between its consecutive tokens (from the request's first token to the sample's last, over tokens - 1).", into: &o)
        endToEndLatency.render(name: "selm_e2e_request_latency_seconds",
                               help: "From receiving a generation request (socket Generate or HTTP completion) to its last result, for requests that finished ok.", into: &o)
        walAck.render(name: "selm_preference_ack_seconds", help: "From receiving SubmitPreferences to its acknowledgement (after fsync).", into: &o)
        counter("selm_preference_rows_total", "Preference rows acknowledged.", preferenceRows)
        counter("selm_learner_steps_total", "Optimizer steps the learner has taken.", live.learnerStep)
        gauge("selm_learner_step_seconds", "Seconds the learner's last optimizer step took (0 before the first).", live.learnerMetrics["step_seconds"] ?? 0)
        o += "# HELP selm_learner_step_seconds_total Seconds spent in optimizer steps (this run).\n# TYPE selm_learner_step_seconds_total counter\nselm_learner_step_seconds_total \(promNumber(live.learnerMetrics["step_seconds_total"] ?? 0))\n"
        gauge("selm_learner_loss", "The learner's latest loss (NaN before its first step).", live.learnerMetrics["loss"] ?? .nan)
        if !live.learnerMetrics.isEmpty {
            o += "# HELP selm_learner_metric The learner's latest training metrics (TRL names).\n# TYPE selm_learner_metric gauge\n"
            for k in live.learnerMetrics.keys.sorted() {
                o += "selm_learner_metric{name=\"\(promLabel(k))\"} \(promNumber(live.learnerMetrics[k]!))\n"
            }
        }
        gauge("selm_policy_version", "The current weight version.", Double(live.policyVersion))
        gauge("selm_live_versions", "Weight versions still referenced.", Double(live.liveVersions))
        gauge("selm_kv_blocks_used", "Paged KV cache blocks in use.", Double(live.kvBlocksUsed))
        gauge("selm_kv_blocks_total", "Paged KV cache blocks in all.", Double(live.kvBlocksTotal))
        gauge("selm_kv_cache_usage_ratio", "Share of the paged KV cache's blocks in use (0 to 1).",
              live.kvBlocksTotal > 0 ? Double(live.kvBlocksUsed) / Double(live.kvBlocksTotal) : 0)
        gauge("selm_waiting_requests", "Generation requests not admitted yet.", Double(live.waitingRequests))
        gauge("selm_running_sequences", "Sequences being generated.", Double(live.runningSequences))
        gauge("selm_generated_tokens_per_second", "Recent generation throughput.", live.tokensPerSecond)
        gauge("selm_wal_last_sequence", "Last durable preference-log sequence.", Double(live.walLastSequence))
        gauge("selm_wal_consumed_sequence", "Last preference-log sequence the learner consumed.", Double(live.walConsumedSequence))
        gauge("selm_wal_records_pending", "Acknowledged preference records the learner has not consumed yet.",
              Double(live.walLastSequence &- min(live.walConsumedSequence, live.walLastSequence)))
        gauge("selm_wal_batches_unacknowledged", "Preference batches queued for the log, not yet on disk.", Double(live.walPendingBatches))
        gauge("selm_connections", "Open client connections.", Double(live.connections))
        gauge("selm_connection_objects", "Client connection objects in memory (open plus closing, socket and HTTP API; a leak check).", Double(live.connectionObjects))
        counter("selm_connections_accepted_total", "Client connections accepted.", connectionsAccepted)
        o += "# HELP selm_connections_dropped_total Client connections closed by the server, by reason.\n# TYPE selm_connections_dropped_total counter\n"
        for reason in DropReason.allCases {
            o += "selm_connections_dropped_total{reason=\"\(reason.rawValue)\"} \(connectionsDropped[reason] ?? 0)\n"
        }
        counter("selm_tokenizer_input_bytes_total", "Bytes of request text handed to the tokenizer (text fields, message roles and contents).",
                live.tokenizerInputBytes)
        counter("selm_frames_received_total", "Frames received.", framesIn)
        counter("selm_frames_sent_total", "Frames sent.", framesOut)
        counter("selm_received_bytes_total", "Bytes received from clients (socket protocol and HTTP API; metrics scrapes not counted).", bytesIn)
        counter("selm_sent_bytes_total", "Bytes sent to clients (socket protocol and HTTP API; metrics scrapes not counted).", bytesOut)
        gauge("selm_uptime_seconds", "Seconds since the server started.", live.uptime)
        // How engine and learner share the BLAS (selm serve --compute-sharing; split = none with one thread).
        let modes = ["none", "priority", "fifo", "adaptive"]
        let mode = Int(kernels_sharing_mode())
        o += "# HELP selm_compute_sharing_info How the engine and the learner share the BLAS (--compute-sharing: split is none with one BLAS thread).\n# TYPE selm_compute_sharing_info gauge\n"
        o += "selm_compute_sharing_info{mode=\"\(modes.indices.contains(mode) ? modes[mode] : "unknown")\"} 1\n"
        gauge("selm_blas_threads", "OpenBLAS threads per call (the most; adaptive sharing uses one each while both compute).", Double(kernels_blas_threads()))
        if !live.enginePrecision.isEmpty {
            o += "# HELP selm_engine_info The precision the engine computes generations, log-probs and scores in (f32, bf16, q8 or q4), what the KV cache holds keys and values in (f32 or f16), and the bytes of one weight snapshot.\n# TYPE selm_engine_info gauge\n"
            o += "selm_engine_info{precision=\"\(live.enginePrecision)\",kv_cache=\"\(live.kvCachePrecision)\",snapshot_bytes=\"\(live.snapshotBytes)\"} 1\n"
            gauge("selm_publish_pack_seconds", "Seconds the last publication took to convert the weights to the engine's precision (on the publishing thread).", live.lastPublishPackSeconds)
            counter("selm_publish_packs_total", "Publications converted to the engine's precision on the publishing thread.", live.publishPacks)
            counter("selm_publish_snapshots_total", "Publications whose compact weights the learner's optimizer pass made (nothing converted on publish).", live.publishSnapshots)
            o += "# HELP selm_compact_memory_total Compact weight models' memory by event: allocated fresh, reused from the last version released, freed (unmapped; in steady state a publishing learner frees none).\n# TYPE selm_compact_memory_total counter\n"
            for (event, n) in [("allocated", live.compactMemory.allocated), ("reused", live.compactMemory.reused), ("freed", live.compactMemory.freed)] {
                o += "selm_compact_memory_total{event=\"\(event)\"} \(n)\n"
            }
            o += "# HELP selm_publish_pack_seconds_total Seconds spent converting publications to the engine's precision.\n# TYPE selm_publish_pack_seconds_total counter\nselm_publish_pack_seconds_total \(promNumber(live.publishPackSecondsTotal))\n"
        }
        return o
    }
}

/// Prometheus spelling of a float.
func promNumber(_ v: Double) -> String {
    if v.isNaN { return "NaN" }
    if v.isInfinite { return v > 0 ? "+Inf" : "-Inf" }
    if v == v.rounded(), abs(v) < 1e15 { return String(Int64(v)) }
    return String(v)
}

/// A label value with `\`, `"` and newlines escaped.
func promLabel(_ s: String) -> String {
    s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: "\\n")
}

extension ErrorCode {
    /// The outcome label of a request that failed with this code ("invalid_argument").
    var metricName: String {
        switch self {
        case .unspecified: "unspecified"
        case .invalidArgument: "invalid_argument"
        case .unauthenticated: "unauthenticated"
        case .notFound: "not_found"
        case .resourceExhausted: "resource_exhausted"
        case .frameTooLarge: "frame_too_large"
        case .malformed: "malformed"
        case .unknownBody: "unknown_body"
        case .unsupportedVersion: "unsupported_version"
        case .permissionDenied: "permission_denied"
        case .cancelled: "cancelled"
        case .internal: "internal"
        case .unavailable: "unavailable"
        case .outOfRange: "out_of_range"
        case .failedPrecondition: "failed_precondition"
        case .unrecognized(let v): "code_\(v)"
        }
    }
}
