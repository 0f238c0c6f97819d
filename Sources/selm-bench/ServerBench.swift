// bench-server: the RPC server's own overhead, measured against an in-process server on this
// machine (a real TCP loopback path, real fsyncs).
//
// Needs selm-bench to depend on "Server", "Wire", "ModelBundle" and "Engine" (Package.swift); until
// it does, this file compiles to nothing (the protocol's C module is only visible to dependents).
#if canImport(SelmProtoC)
import Engine
import Foundation
import PreferenceLog
import Learner
import ModelBundle
import Server
import Wire

#if canImport(Glibc)
import Glibc
#endif

/// A blocking benchmark client: one TCP connection, frames in and out.
private final class BenchClient {
    let fd: Int32
    private var decoder = FrameDecoder(maxFrameBytes: 64 << 20)
    private var buffer = [UInt8](repeating: 0, count: 1 << 16)

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = UInt16(port).bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { throw BenchError("connect: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(4))
        guard case .helloReply = try call(0, .hello(Hello(clientName: "selm-bench"))) else { throw BenchError("hello refused") }
    }

    deinit { Glibc.close(fd) }

    func send(_ id: UInt64, _ body: ClientMessage) throws {
        let frame = try Frame.encode(Envelope(id: id, body: body))
        var off = 0
        while off < frame.count {
            let n = frame.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + off, frame.count - off, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw BenchError("send failed") }
            off += n
        }
    }

    func receive() throws -> Envelope<ServerMessage> {
        while true {
            if let body = try decoder.next() { return try Frame.decodeServer(body) }
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { throw BenchError("connection closed") }
            buffer.withUnsafeBytes { decoder.append(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        }
    }

    func call(_ id: UInt64, _ body: ClientMessage) throws -> ServerMessage {
        try send(id, body)
        while true {
            let e = try receive()
            if e.id == id { return e.body }
        }
    }
}

private struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

private func ms(_ s: Double) -> String { String(format: "%.3f ms", s * 1000) }

/// Runs `body` on `n` threads at once and waits for all of them.
private func onThreads(_ n: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let group = DispatchGroup()
    for i in 0..<n {
        group.enter()
        let t = Thread { body(i); group.leave() }
        t.stackSize = 1 << 20
        t.start()
    }
    group.wait()
}

private final class Samples: @unchecked Sendable {
    private let lock = NSLock()
    private(set) var values: [Double] = []
    var failures = 0
    func add(_ v: [Double]) { lock.lock(); values += v; lock.unlock() }
    func fail() { lock.lock(); failures += 1; lock.unlock() }
}

/// `make bench-server`: Tokenize round trips (1 and 64 connections), preference acknowledgement
/// latency (one fsync each, and group commit under 16 writers), and generation throughput through
/// the server against the in-process engine on the same job.
func benchServer(_ modelPath: String) throws {
    header("bench-server")
    let bundle = try ModelBundle(path: modelPath)
    let dataDir = FileManager.default.temporaryDirectory.appendingPathComponent("selm-bench-server-\(getpid())").path
    defer { try? FileManager.default.removeItem(atPath: dataDir) }
    let data = try DataDirectory.serving(dataDir)
    let log = try PreferenceLog(directory: data.realPath)
    var config = ServerConfiguration()
    config.tcp = "127.0.0.1:0"
    config.handleSignals = false
    var engineConfig = EngineConfig()
    engineConfig.kvCacheMB = 512
    let tok = try bundle.tokenizer
    let server = try SelmServer(configuration: config, bundle: bundle,
                                engine: try GenerationEngine(model: bundle.model, tokenizer: tok, template: bundle.template, config: engineConfig),
                                learner: NoLearner(), log: log, dataDirectory: data)
    let port = server.tcpPort
    let loopThread = Thread { try? server.run() }
    loopThread.start()
    defer {
        server.shutdown()
        while !loopThread.isFinished { usleep(10_000) }
    }
    print("server: in-process, TCP loopback 127.0.0.1:\(port), data dir on \(dataDir)")

    // Tokenize round trips.
    let text = "The quick brown fox jumps over the lazy dog. Online preference learning with SELM."
    let tokenize = ClientMessage.tokenize(TokenizeRequest(input: .text(text)))
    for connections in [1, 64] {
        let perConnection = connections == 1 ? 20_000 : 600
        let samples = Samples()
        let t0 = now()
        onThreads(connections) { _ in
            do {
                let c = try BenchClient(port: port)
                var lat: [Double] = []
                lat.reserveCapacity(perConnection)
                for i in 0..<perConnection {
                    let s = now()
                    guard case .tokenizeReply = try c.call(UInt64(i + 1), tokenize) else { throw BenchError("tokenize failed") }
                    lat.append(now() - s)
                }
                samples.add(lat)
            } catch { samples.fail() }
        }
        let wall = now() - t0
        print(String(format: "tokenize, %2d connection%@: %6.0f round trips/s, latency p50 %@ p99 %@ (%d requests%@)",
                     connections, connections == 1 ? " " : "s", Double(samples.values.count) / wall,
                     ms(quantile(samples.values, 0.5)), ms(quantile(samples.values, 0.99)), samples.values.count,
                     samples.failures > 0 ? ", \(samples.failures) connections failed" : ""))
    }

    // Preference acknowledgements: each is an fsync on this disk.
    let row = PreferenceRow(prompt: .ids(Array(1...64)), chosen: .ids(Array(100...163)), rejected: .ids(Array(200...263)))
    for writers in [1, 16] {
        let perWriter = writers == 1 ? 300 : 60
        let samples = Samples()
        let t0 = now()
        onThreads(writers) { _ in
            do {
                let c = try BenchClient(port: port)
                var lat: [Double] = []
                for i in 0..<perWriter {
                    let s = now()
                    guard case .preferenceAck = try c.call(UInt64(i + 1), .submitPreferences(SubmitPreferences(rows: [row]))) else {
                        throw BenchError("submit failed")
                    }
                    lat.append(now() - s)
                }
                samples.add(lat)
            } catch { samples.fail() }
        }
        let wall = now() - t0
        print(String(format: "preference ack (fsync), %2d writer%@: %6.0f acks/s, latency p50 %@ p99 %@",
                     writers, writers == 1 ? " " : "s", Double(samples.values.count) / wall,
                     ms(quantile(samples.values, 0.5)), ms(quantile(samples.values, 0.99))))
    }
    print(String(format: "ceiling: appending 600 bytes + fdatasync in the same directory takes %@ (p50)", ms(measureFsync(dataDir))))

    // Generation: 32 sequences, 64-token prompts, 128 new tokens each, greedy, EOS ignored —
    // through the server (32 connections) and on an in-process engine of the same model and
    // settings, alternately. Every run has prompts of its own (no prefix-cache hits).
    let sequences = 32, promptLength = 64, newTokens = 128
    func prompts(_ run: Int) -> [[Int32]] {
        var out: [[Int32]] = []
        for i in 0..<sequences {
            var p: [Int32] = []
            for j in 0..<promptLength { p.append(Int32(100 + (run * 104_729 + i * 7919 + j * 37) % 40000)) }
            out.append(p)
        }
        return out
    }
    let local = try GenerationEngine(model: bundle.model, tokenizer: tok, template: bundle.template, config: engineConfig)
    let wake = DispatchSemaphore(value: 0)
    local.setWakeup { wake.signal() }
    local.start()
    defer { local.stop() }
    func inProcess(_ run: Int, tokens maxTokens: Int = newTokens) throws -> Double {
        let t0 = now()
        for p in prompts(run) {
            var request = GenerationRequest(prompts: [p], maxTokens: maxTokens, ignoreEOS: true)
            request.params.temperature = 0  // greedy
            _ = try local.submit(request)
        }
        var done = 0, tokens = 0
        while done < sequences {
            wake.wait()
            for e in local.drainEvents() {
                if case .done(let d) = e { done += 1; tokens += d.completionTokens }
            }
        }
        return Double(tokens) / (now() - t0)
    }
    func throughServer(_ run: Int, stream: Bool, tokens maxTokens: Int = newTokens) -> (rate: Double, ttft: Double) {
        let counts = Samples(), ttft = Samples()
        let start = DispatchSemaphore(value: 0)
        let ready = DispatchGroup(), finished = DispatchGroup()
        let ps = prompts(run)
        for i in 0..<sequences {
            ready.enter(); finished.enter()
            let prompt = ps[i].map { UInt32($0) }
            Thread {
                defer { finished.leave() }
                guard let c = try? BenchClient(port: port) else { ready.leave(); counts.fail(); return }
                ready.leave()
                start.wait()
                let t0 = now()
                do {
                    try c.send(1, .generate(GenerateRequest(prompts: [.ids(prompt)],
                                                            sampling: Wire.SamplingParams(temperature: 0, maxTokens: UInt32(maxTokens)),
                                                            ignoreEOS: true, stream: stream)))
                    var first = true
                    while true {
                        let e = try c.receive()
                        if first, case .generateChunk = e.body { ttft.add([now() - t0]); first = false }
                        if case .generateDone(let d) = e.body { counts.add([Double(d.completionTokens)]); break }
                        if case .error(let err) = e.body { throw BenchError(err.message) }
                    }
                } catch { counts.fail() }
            }.start()
        }
        ready.wait()
        let t0 = now()
        for _ in 0..<sequences { start.signal() }
        finished.wait()
        return (counts.values.reduce(0, +) / (now() - t0), quantile(ttft.values, 0.5))
    }
    // Warm-up: both engines, short jobs.
    _ = try inProcess(1000, tokens: 8)
    _ = throughServer(1001, stream: true, tokens: 8)
    // Rounds alternate the three paths so that load from elsewhere on the machine hits all alike;
    // the medians are compared.
    var rows: [(Double, Double, Double, Double)] = []
    for round in 0..<3 {
        let e = try inProcess(10 * round + 1)
        let s = throughServer(10 * round + 2, stream: false)
        let st = throughServer(10 * round + 3, stream: true)
        rows.append((e, s.rate, st.rate, st.ttft))
    }
    print(String(format: "generation %d × (%d prompt + %d new tokens), greedy, fresh prompts per run:", sequences, promptLength, newTokens))
    for (k, r) in rows.enumerated() {
        print(String(format: "  round %d: in-process engine %6.1f tokens/s | server %6.1f | server, streamed %6.1f, first chunk p50 %@",
                     k + 1, r.0, r.1, r.2, ms(r.3)))
    }
    let e = quantile(rows.map(\.0), 0.5), sv = quantile(rows.map(\.1), 0.5), st = quantile(rows.map(\.2), 0.5)
    print(String(format: "  median: in-process %.1f, server %.1f (%+.1f%%), streamed %.1f (%+.1f%%) tokens/s (target: server within 5%% of in-process)",
                 e, sv, 100 * (sv - e) / e, st, 100 * (st - e) / e))
}

/// p50 of appending one record-sized write (600 bytes) + fdatasync to a scratch file in `dir`:
/// what one acknowledgement costs at least.
private func measureFsync(_ dir: String) -> Double {
    let path = dir + "/fsync-probe"
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0o600)
    defer { Glibc.close(fd); unlink(path) }
    let block = [UInt8](repeating: 1, count: 600)
    var times: [Double] = []
    for _ in 0..<300 {
        let t = now()
        _ = block.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        fdatasync(fd)
        times.append(now() - t)
    }
    return quantile(times, 0.5)
}
#endif
