// bench-load: the real `selm serve` binary (release, learner on) under many concurrent clients
// mixing every kind of request, then the admission latency of a small generation while long ones
// run on older weight versions. Each figure is printed beside its goal or the same request's
// latency on the idle server, measured in the same run.
import Engine
import Foundation
import Wire

#if canImport(Glibc)
import Glibc
#endif

/// The request kinds of the mix, with their share of a client's requests.
private enum LoadKind: String, CaseIterable {
    case generate = "generate (16 tokens)"
    case streamCancel = "stream, cancelled midway"
    case score = "score"
    case tokenize = "tokenize"
    case preferences = "preferences (4 rows)"

    var weight: Int {
        switch self {
        case .generate: 30
        case .streamCancel: 15
        case .score: 20
        case .tokenize: 25
        case .preferences: 10
        }
    }
}

/// Latencies, counts and failures by request kind, shared by the client threads.
private final class LoadStats: @unchecked Sendable {
    private let lock = NSLock()
    private(set) var latencies: [LoadKind: [Double]] = [:]
    private(set) var failures: [LoadKind: [String: Int]] = [:]
    private(set) var examples: [String: String] = [:]

    func ok(_ k: LoadKind, _ seconds: Double) { lock.lock(); latencies[k, default: []].append(seconds); lock.unlock() }
    func fail(_ k: LoadKind, _ e: Error) {
        let f = e as? LoadFailure ?? LoadFailure(code: "OTHER", detail: "\(e)")
        lock.lock()
        failures[k, default: [:]][f.code, default: 0] += 1
        if examples[f.code] == nil { examples[f.code] = "\(k.rawValue): \(f.detail)" }
        lock.unlock()
    }
}

/// Token-id material built from the model's own output: chat prompts and pairs of its samples.
private struct LoadPool: Sendable {
    var prompts: [[UInt32]]
    var rows: [PreferenceRow]
    var texts: [String]
}

private let loadPrompts = [
    "Name three colors.", "What is the capital of France?", "Write a haiku about the sea.", "Count to five.",
    "Give me a synonym for happy.", "What is 12 times 7?", "Describe a cat in one sentence.", "Say hello in Spanish.",
    "What day comes after Monday?", "Suggest a name for a dog.", "Why is the sky blue?", "List two fruits.",
]

/// One request of kind `k` on `c`; throws a `LoadFailure` on an error reply or a broken connection.
private func runRequest(_ k: LoadKind, _ c: FrameClient, _ pool: LoadPool, _ rng: inout SplitMix64) throws {
    let prompt = pool.prompts[Int.random(in: 0..<pool.prompts.count, using: &rng)]
    switch k {
    case .generate:
        let s = try c.generate(GenerateRequest(prompts: [.ids(prompt)], sampling: SamplingParams(temperature: 0.8, maxTokens: 16)))
        guard s.count == 1 else { throw LoadFailure(code: "PROTOCOL", detail: "\(s.count) samples for n = 1") }
    case .streamCancel:
        let id = c.newID()
        try c.send(id, .generate(GenerateRequest(prompts: [.ids(prompt)], sampling: SamplingParams(temperature: 0.8, maxTokens: 64),
                                                 ignoreEOS: true, stream: true)))
        var chunks = 0, cancelID: UInt64? = nil, cancelReplied = false, done = false
        while !(done && (cancelID == nil || cancelReplied)) {
            let e = try c.receive()
            if e.id == cancelID, case .cancelReply = e.body { cancelReplied = true; continue }
            guard e.id == id else { continue }
            switch e.body {
            case .generateChunk:
                chunks += 1
                if chunks == 3 && cancelID == nil {
                    let cid = c.newID()
                    cancelID = cid
                    try c.send(cid, .cancel(Cancel(targetID: id)))
                }
            case .generateDone: done = true
            case .error(let err): throw LoadFailure.server(err)
            default: break
            }
        }
    case .score:
        let row = pool.rows[Int.random(in: 0..<pool.rows.count, using: &rng)]
        guard case .scoreReply = try c.call(.score(ScoreRequest(items: [ScoreItem(prompt: row.prompt, continuation: row.chosen)]))) else {
            throw LoadFailure(code: "PROTOCOL", detail: "Score not answered with ScoreReply")
        }
    case .tokenize:
        let text = pool.texts[Int.random(in: 0..<pool.texts.count, using: &rng)]
        guard case .tokenizeReply = try c.call(.tokenize(TokenizeRequest(input: .text(text)))) else {
            throw LoadFailure(code: "PROTOCOL", detail: "Tokenize not answered with TokenizeReply")
        }
    case .preferences:
        let rows = (0..<4).map { _ in pool.rows[Int.random(in: 0..<pool.rows.count, using: &rng)] }
        guard case .preferenceAck = try c.call(.submitPreferences(SubmitPreferences(rows: rows))) else {
            throw LoadFailure(code: "PROTOCOL", detail: "SubmitPreferences not answered with PreferenceAck")
        }
    }
}

/// `clients` threads, each on its own connection, sending requests of the mix back to back until
/// `seconds` pass; a failed connection is replaced.
private func runLoad(port: Int, pool: LoadPool, clients: Int, seconds: Double, seed: UInt64, stats: LoadStats) {
    let kinds = LoadKind.allCases.flatMap { k in Array(repeating: k, count: k.weight) }
    let deadline = Date().addingTimeInterval(seconds)
    let group = DispatchGroup()
    for i in 0..<clients {
        group.enter()
        let t = Thread {
            defer { group.leave() }
            var rng = SplitMix64(seed: seed &+ UInt64(i) &* 7919)
            var client: FrameClient? = nil
            while Date() < deadline {
                let k = kinds[Int.random(in: 0..<kinds.count, using: &rng)]
                do {
                    if client == nil { client = try FrameClient(port: port, timeout: 900) }
                    let t0 = Date()
                    try runRequest(k, client!, pool, &rng)
                    stats.ok(k, Date().timeIntervalSince(t0))
                } catch {
                    stats.fail(k, error)
                    if let f = error as? LoadFailure, ["DISCONNECTED", "TIMEOUT", "PROTOCOL"].contains(f.code) { client = nil }
                }
            }
        }
        t.stackSize = 512 << 10
        t.start()
    }
    group.wait()
}

private func msText(_ s: Double) -> String {
    s.isNaN ? "-" : s < 1 ? String(format: "%.1f ms", s * 1000) : String(format: "%.2f s", s)
}

/// `make bench-load`.
func benchLoad(_ modelPath: String) throws {
    let selm = option("--selm", ".build/release/selm")
    let clients = Int(option("--clients", "64")) ?? 64
    let seconds = Double(option("--seconds", "60")) ?? 60
    print("== bench-load: \(clients) clients × \(Int(seconds)) s against \(selm) serve --model \(modelPath) (learner on)")
    let dataDir = FileManager.default.temporaryDirectory.appendingPathComponent("selm-bench-load-\(getpid())").path
    let server = try ServeChild(selm: selm, model: modelPath, dataDir: dataDir, args: [
        "--max-connections", String(clients + 64), "--max-wait-seconds", "5", "--checkpoint-every", "0",
    ])
    defer {
        server.stop()
        try? FileManager.default.removeItem(atPath: dataDir)
        try? FileManager.default.removeItem(atPath: server.logPath)
    }
    let rssStart = server.rssMB
    print("server pid \(server.pid) on 127.0.0.1:\(server.port), data \(dataDir), log \(server.logPath)")

    // Prompts as the model's chat template makes them, and preference rows from pairs of its samples.
    let setup = try FrameClient(port: server.port)
    var pool = LoadPool(prompts: [], rows: [], texts: loadPrompts)
    for text in loadPrompts {
        guard case .tokenizeReply(let t) = try setup.call(.tokenize(TokenizeRequest(input: .messages([ChatMessage(role: "user", content: text)]),
                                                                                   chat: true))) else { continue }
        pool.prompts.append(t.ids)
        let samples = try setup.generate(GenerateRequest(prompts: [.ids(t.ids)], sampling: SamplingParams(temperature: 1.0, maxTokens: 24), n: 2))
        let ids = samples.sorted { $0.sampleIndex < $1.sampleIndex }.map(\.tokenIDs)
        if ids.count == 2, !ids[0].isEmpty, !ids[1].isEmpty, ids[0] != ids[1] {
            pool.rows.append(PreferenceRow(prompt: .ids(t.ids), chosen: .ids(ids[0]), rejected: .ids(ids[1]), source: "bench-load"))
        }
    }
    guard !pool.rows.isEmpty else { throw LoadFailure(code: "SETUP", detail: "no preference rows from the model's samples") }
    print("pool: \(pool.prompts.count) chat prompts, \(pool.rows.count) preference rows from the model's own sample pairs")

    // The same requests one at a time on the idle server: the figure each loaded latency is set against.
    var alone: [LoadKind: Double] = [:]
    var rng = SplitMix64(seed: 1)
    for k in LoadKind.allCases {
        var xs: [Double] = []
        for _ in 0..<5 {
            let t0 = Date()
            try runRequest(k, setup, pool, &rng)
            xs.append(Date().timeIntervalSince(t0))
        }
        alone[k] = quantile(xs, 0.5)
    }

    let warmup = min(10, seconds / 6)
    runLoad(port: server.port, pool: pool, clients: clients, seconds: warmup, seed: 99, stats: LoadStats())
    let rssWarm = server.rssMB
    let stats = LoadStats()
    let t0 = Date()
    // Server RSS once a second while the load runs: a just-published weight copy (~0.5 GB) comes and
    // goes within seconds, so growth is judged on the lowest figure of a window, not on one sample.
    let rssSeries = RSSSeries()
    let sampling = RunFlag()
    let serverPID = server.pid
    let sampler = Thread {
        while sampling.isSet {
            rssSeries.add(Date().timeIntervalSince(t0), ServeChild.rssMB(pid: serverPID))
            usleep(1_000_000)
        }
    }
    sampler.start()
    runLoad(port: server.port, pool: pool, clients: clients, seconds: seconds, seed: 7, stats: stats)
    sampling.clear()
    let wall = Date().timeIntervalSince(t0)
    let rssEnd = server.rssMB
    guard case .statusReply(let st) = try setup.call(.status(StatusRequest())) else { throw LoadFailure(code: "PROTOCOL", detail: "status") }

    print(String(format: "load: %d clients for %.0f s (after %.0f s of warm-up)", clients, wall, warmup))
    print("  kind                          count   rate     p50        p99        alone p50   failures")
    var totalFailures = 0
    for k in LoadKind.allCases {
        let xs = stats.latencies[k] ?? []
        let f = stats.failures[k] ?? [:]
        totalFailures += f.values.reduce(0, +)
        let ftext = f.isEmpty ? "0" : f.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
        print("  " + k.rawValue.padding(toLength: 28, withPad: " ", startingAt: 0)
              + String(format: "%7d   %5.2f/s  ", xs.count, Double(xs.count) / wall) + msText(quantile(xs, 0.5)).padding(toLength: 11, withPad: " ", startingAt: 0)
              + msText(quantile(xs, 0.99)).padding(toLength: 11, withPad: " ", startingAt: 0)
              + msText(alone[k] ?? .nan).padding(toLength: 12, withPad: " ", startingAt: 0) + ftext)
    }
    print("  failures: \(totalFailures) (goal: 0; any error reply or dropped connection counts)")
    for (code, example) in stats.examples.sorted(by: { $0.key < $1.key }) { print("    \(code), e.g. \(example)") }
    print(String(format: "  server RSS: %.0f MB at start, %.0f MB after the %.0f s warm-up, %.0f MB at the end, %.0f MB at most (machine 24 GB)",
                 rssStart, rssWarm, warmup, rssEnd, rssSeries.max))
    // Settled: the learner has taken its first steps (its activations and gradients exist) and the
    // engine has seen its largest batches; a fifth of the run, at least a minute when the run allows.
    let window = min(60, wall / 5)
    let settle = min(max(60, wall / 5), wall - 2 * window)
    let early = rssSeries.min(from: settle, to: settle + window), late = rssSeries.min(from: wall - window, to: wall)
    print(String(format: "  RSS growth: lowest %.0f MB in [%.0f s, %.0f s] → lowest %.0f MB in the last %.0f s: %+.1f %% (goal: < 10 %%)",
                 early, settle, settle + window, late, window, (late / early - 1) * 100))
    print("  learner: step \(st.learnerStep), policy version \(st.policyVersion) (\(st.liveVersions) live), WAL \(st.walLastSequence) records, \(st.walConsumedSequence) consumed")

    try admission(server: server, pool: pool)
    let status = server.stop()
    print("server exit status after SIGTERM: \(status) (goal: 0)")
}

/// A long generation (2000 tokens, EOS ignored, streamed) on its own connection, read to its end
/// on a thread of its own: when it ended, how, after how many tokens, on which version.
private final class LongGeneration: @unchecked Sendable {
    let client: FrameClient
    let id: UInt64
    private let lock = NSLock()
    private var _end: (time: Date, tokens: UInt32, reason: FinishReason, version: UInt64)?
    private let finished = DispatchSemaphore(value: 0)

    /// Starts it and waits for its first chunk.
    init(port: Int, prompt: [UInt32]) throws {
        client = try FrameClient(port: port, timeout: 900)
        id = client.newID()
        try client.send(id, .generate(GenerateRequest(prompts: [.ids(prompt)], sampling: SamplingParams(temperature: 0.8, maxTokens: 2000),
                                                      ignoreEOS: true, stream: true)))
        while true {
            let e = try client.receive()
            guard e.id == id else { continue }
            if case .generateChunk = e.body { break }
            if case .error(let err) = e.body { throw LoadFailure.server(err) }
            if case .generateDone = e.body { throw LoadFailure(code: "PROTOCOL", detail: "a 2000-token generation ended at once") }
        }
        let (c, id) = (client, id)
        Thread { [self] in
            var result: SampleResult?
            while let e = try? c.receive() {
                guard e.id == id else { continue }
                if case .sampleResult(let r) = e.body { result = r }
                if case .generateDone = e.body { break }
                if case .error = e.body { break }
            }
            lock.lock()
            _end = (Date(), result?.completionTokens ?? 0, result?.finishReason ?? .unspecified, result?.firstVersion ?? 0)
            lock.unlock()
            finished.signal()
        }.start()
    }

    var end: (time: Date, tokens: UInt32, reason: FinishReason, version: UInt64)? { lock.lock(); defer { lock.unlock() }; return _end }

    /// Cancels it (if still running) and waits for its end.
    func cancelAndWait() {
        guard end == nil else { return }
        try? client.send(client.newID(), .cancel(Cancel(targetID: id)))
        if finished.wait(timeout: .now() + 120) == .success { finished.signal() }  // later calls return at once
    }
}

/// The admission latency of a small generation while long ones run on two older versions.
private func admission(server: ServeChild, pool: LoadPool) throws {
    let port = server.port
    let subscriber = try FrameClient(port: port, timeout: 900)
    let subID = subscriber.newID()
    try subscriber.send(subID, .subscribeVersions(SubscribeVersions()))
    func nextVersion(after v: UInt64, within seconds: Double) throws -> UInt64? {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            let e = try subscriber.receive()
            if e.id == subID, case .versionEvent(let ev) = e.body, ev.version > v { return ev.version }
        }
        return nil
    }
    guard case .versionEvent(let first) = try subscriber.receive().body else { throw LoadFailure(code: "PROTOCOL", detail: "no VersionEvent") }
    // Preference batches keep arriving so the learner trains and publishes.
    let feeding = RunFlag()
    let feeder = Thread {
        guard let c = try? FrameClient(port: port) else { return }
        var rng = SplitMix64(seed: 5)
        while feeding.isSet {
            _ = try? runRequest(.preferences, c, pool, &rng)
            usleep(500_000)
        }
    }
    feeder.start()
    defer { feeding.clear() }
    let wait = 900.0
    let a = try LongGeneration(port: port, prompt: pool.prompts[0])
    defer { a.cancelAndWait() }
    guard let v1 = try nextVersion(after: first.version, within: wait) else {
        print("admission: no new version within \(Int(wait)) s; not measured"); return
    }
    let b = try LongGeneration(port: port, prompt: pool.prompts[1])
    defer { b.cancelAndWait() }
    guard let v2 = try nextVersion(after: v1, within: wait) else {
        print("admission: no second new version within \(Int(wait)) s; not measured"); return
    }
    let small = try FrameClient(port: port, timeout: 900)
    guard case .statusReply(let st) = try small.call(.status(StatusRequest())) else { throw LoadFailure(code: "PROTOCOL", detail: "status") }
    let id = small.newID()
    let t0 = Date()
    try small.send(id, .generate(GenerateRequest(prompts: [.ids(pool.prompts[2])], sampling: SamplingParams(temperature: 0, maxTokens: 4),
                                                 stream: true)))
    var firstToken = Double.nan, done = Double.nan, version: UInt64 = 0
    while done.isNaN {
        let e = try small.receive()
        guard e.id == id else { continue }
        switch e.body {
        case .generateChunk: if firstToken.isNaN { firstToken = Date().timeIntervalSince(t0) }
        case .sampleResult(let s): version = s.version
        case .generateDone: done = Date().timeIntervalSince(t0)
        case .error(let err): throw LoadFailure.server(err)
        default: break
        }
    }
    let ends = [a.end, b.end]
    a.cancelAndWait(); b.cancelAndWait()
    func describe(_ name: String, _ g: LongGeneration, _ endBefore: (time: Date, tokens: UInt32, reason: FinishReason, version: UInt64)?) -> String {
        if let e = endBefore {
            return "\(name) (version \(e.version)) ended \(msText(e.time.timeIntervalSince(t0))) after the small one was sent, \(e.tokens) tokens (\(e.reason))"
        }
        return "\(name) (version \(g.end?.version ?? 0)) still running when the small one finished"
    }
    print("admission: long generations A on version \(first.version), B on \(v1); version \(v2) published; at that moment "
          + "\(st.runningSequences) sequences running, \(st.waitingRequests) requests waiting, \(st.liveVersions) versions live")
    print(String(format: "  a 4-token generate: first token %@, done %@, on version %llu (goal: first token ≤ 1 s)",
                 msText(firstToken), msText(done), version))
    print("  " + describe("A", a, ends[0]) + "; " + describe("B", b, ends[1]))
}

/// (seconds, MB) samples of the server's RSS, appended by one thread and read after it stopped.
final class RSSSeries: @unchecked Sendable {
    private let lock = NSLock()
    private var samples: [(t: Double, mb: Double)] = []
    func add(_ t: Double, _ mb: Double) { lock.lock(); samples.append((t, mb)); lock.unlock() }
    var max: Double { lock.lock(); defer { lock.unlock() }; return samples.map(\.mb).max() ?? .nan }
    /// The lowest sample with t in [from, to] (nan when there is none).
    func min(from: Double, to: Double) -> Double {
        lock.lock(); defer { lock.unlock() }
        return samples.filter { $0.t >= from && $0.t <= to }.map(\.mb).min() ?? .nan
    }
}

/// A flag one thread clears to stop another.
final class RunFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = true
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
    func clear() { lock.lock(); value = false; lock.unlock() }
}
