import Engine
import Foundation
import PreferenceLog
import Model
import Wire

/// The server's `GenerationBackend` over the generation engine: native jobs in, wire messages out.
///
/// It numbers weight versions through the data directory's `VersionLedger` (each publication gets
/// the next number, strictly increasing, as the engine requires, recorded on disk before the engine
/// sees it) and maps the engine's request ids to the server's job ids. Thread-safe: the loop thread
/// submits, cancels and drains; the learner thread and pool threads publish. One lock guards the
/// maps (never held across an engine step or a disk write); another serializes publications.
final class EngineBackend: GenerationBackend, @unchecked Sendable {
    let engine: GenerationEngine
    private let lock = NSLock()
    private var jobOfRequest: [RequestID: UInt64] = [:]
    private var requestOfJob: [UInt64: RequestID] = [:]
    private let versions: VersionLedger
    private let publishLock = NSLock()

    init(engine: GenerationEngine, versions: VersionLedger) {
        self.engine = engine
        self.versions = versions
    }

    var currentVersion: UInt64 { engine.currentVersion }

    func setWakeup(_ wake: @escaping @Sendable () -> Void) { engine.setWakeup(wake) }

    func start() { engine.start() }

    func submit(_ job: GenerationJob) throws(ServerError) {
        let s = job.sampling
        var p = SamplerSettings()
        if let v = s.temperature { p.temperature = v }
        if let v = s.topK { p.topK = Int(v) }
        if let v = s.topP { p.topP = v }
        if let v = s.minP { p.minP = v }
        if let v = s.repetitionPenalty { p.repetitionPenalty = v }
        if let v = s.presencePenalty { p.presencePenalty = v }
        if let v = s.frequencyPenalty { p.frequencyPenalty = v }
        p.seed = s.seed
        let request = GenerationRequest(
            prompts: job.prompts, params: p, maxTokens: s.maxTokens.map { Int($0) }, n: job.n, stop: job.stop,
            stopTokenIDs: job.stopTokenIDs, ignoreEOS: job.ignoreEOS, topLogprobs: job.topLogprobs, stream: job.stream,
            recompute: job.recompute, requireVersion: job.requireVersion)
        lock.lock(); defer { lock.unlock() }
        do {
            let id = try engine.submit(request)
            jobOfRequest[id] = job.id
            requestOfJob[job.id] = id
        } catch {
            throw Self.refusal(error)
        }
    }

    func score(_ job: ScoreJob) throws(ServerError) {
        let request = ScoringRequest(items: job.items.map { ScoringItem(prompt: $0.prompt, continuation: $0.continuation) },
                                         version: job.version, topLogprobs: job.topLogprobs)
        lock.lock(); defer { lock.unlock() }
        do {
            let id = try engine.score(request)
            jobOfRequest[id] = job.id
            requestOfJob[job.id] = id
        } catch {
            throw Self.refusal(error)
        }
    }

    func cancel(_ jobID: UInt64) {
        lock.lock()
        let id = requestOfJob[jobID]
        lock.unlock()
        if let id { engine.cancel(id) }
    }

    func drainEvents() -> [BackendEvent] {
        let events = engine.drainEvents()
        guard !events.isEmpty else { return [] }
        var out: [BackendEvent] = []
        out.reserveCapacity(events.count)
        lock.lock(); defer { lock.unlock() }
        for e in events {
            guard let job = jobOfRequest[e.requestID] else { continue }
            switch e {
            case .firstToken:
                out.append(BackendEvent(jobID: job, firstToken: true))
            case .chunk(let c):
                if c.tokens.isEmpty && c.textDelta.isEmpty { continue }  // the closing chunk of a cancelled sample
                out.append(BackendEvent(jobID: job, message: .generateChunk(GenerateChunk(
                    promptIndex: UInt32(c.promptIndex), sampleIndex: UInt32(c.sampleIndex), tokenIDs: Self.ids(c.tokens),
                    textDelta: c.textDelta, logprobs: c.logprobs, topLogprobs: Self.top(c.topLogprobs)))))
            case .sample(let s):
                out.append(BackendEvent(jobID: job, message: .sampleResult(Self.sampleResult(s))))
            case .done(let d):
                out.append(BackendEvent(jobID: job, message: .generateDone(GenerateDone(
                    samples: UInt32(d.samples), promptTokens: UInt64(d.promptTokens), completionTokens: UInt64(d.completionTokens))),
                    last: true))
                forget(e.requestID, job)
            case .score(let r):
                out.append(BackendEvent(jobID: job, message: .scoreReply(ScoreReply(
                    items: r.items.map { Wire.ScoredItem(tokenIDs: Self.ids($0.tokens), logprobs: $0.logprobs,
                                                         totalLogprob: $0.totalLogprob, topLogprobs: Self.top($0.topLogprobs)) },
                    version: r.version)), last: true))
                forget(e.requestID, job)
            case .error(_, let err):
                out.append(BackendEvent(jobID: job, message: .error(Self.refusal(err).errorReply), last: true))
                forget(e.requestID, job)
            }
        }
        return out
    }

    /// Guarded by `lock`.
    private func forget(_ id: RequestID, _ job: UInt64) {
        jobOfRequest[id] = nil
        requestOfJob[job] = nil
    }

    func status() -> BackendStatus {
        let s = engine.status()
        return BackendStatus(policyVersion: s.currentVersion, waitingRequests: s.waitingRequests, runningSequences: s.runningSequences,
                             kvBlocksUsed: s.kvBlocksUsed, kvBlocksTotal: s.kvBlocksTotal, tokensPerSecond: s.tokensPerSecond,
                             liveVersions: s.liveVersions.count)
    }

    func publish(_ weights: ParameterSet) throws(ServerError) -> UInt64 {
        publishLock.lock(); defer { publishLock.unlock() }
        let version: UInt64
        do { version = try versions.issue(after: engine.currentVersion) } catch { throw ServerError(error) }
        do {
            try engine.publish(weights: weights, version: version)
        } catch {
            // Only a caller bug gets here (weights of another shape are refused before).
            serverLog("publish of version \(version) refused by the engine: \(error)")
            throw .refused(code: .internal, field: "", reason: "the engine refused version \(version): \(error)")
        }
        return version
    }

    func stop() { engine.stop() }

    // MARK: Conversions

    static func ids(_ a: [Int32]) -> [UInt32] { a.map { UInt32(bitPattern: $0) } }

    static func top(_ t: [[TokenLogprob]]) -> [TopLogprobs] {
        t.map { alts in TopLogprobs(tokenIDs: alts.map { UInt32(bitPattern: $0.id) }, logprobs: alts.map(\.logprob)) }
    }

    static func sampleResult(_ s: FinishedSample) -> Wire.SampleResult {
        let reason: Wire.FinishReason = switch s.finishReason {
        case .eos: .eos
        case .stop: .stop
        case .length: .length
        case .cancelled: .cancelled
        }
        return Wire.SampleResult(promptIndex: UInt32(s.promptIndex), sampleIndex: UInt32(s.sampleIndex), tokenIDs: ids(s.tokens),
                                 text: s.text, logprobs: s.logprobs, topLogprobs: top(s.topLogprobs), finishReason: reason,
                                 version: s.version, firstVersion: s.firstVersion, promptTokens: UInt32(s.promptTokens),
                                 completionTokens: UInt32(s.completionTokens))
    }

    /// The client-facing refusal for an engine error: its field as a proto path ("temperature" →
    /// "sampling.temperature", "prompts[0][3]" → "prompts[0].ids[3]").
    static func refusal(_ error: Error) -> ServerError {
        guard let e = error as? EngineError else { return .refused(code: .internal, field: "", reason: "\(error)") }
        switch e {
        case let .invalidRequest(field, reason):
            let outOfRange = reason.contains("outside the vocabulary") || reason.contains("context")
            return .refused(code: outOfRange ? .outOfRange : .invalidArgument, field: protoField(field), reason: reason)
        case .exceedsKVPool:
            return .refused(code: .resourceExhausted, field: "sampling.max_tokens", reason: e.description)
        case let .versionNotAlive(field, _, _):
            return .refused(code: .notFound, field: field, reason: e.description)
        case let .versionRetired(field, version, limit):
            return .refused(code: .notFound, field: field,
                            reason: "weight version \(version) was retired (live versions are limited to \(limit): selm serve --max-live-versions)")
        case .noChatTemplate:
            return .refused(code: .invalidArgument, field: "chat", reason: e.description)
        case .stopped:
            return .refused(code: .unavailable, field: "", reason: "the server is shutting down")
        default:
            if e.description.contains("cancelled") { return .refused(code: .cancelled, field: "", reason: e.description) }
            return .refused(code: .internal, field: "", reason: e.description)
        }
    }

    static let samplingFields: Set<String> = ["temperature", "top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                                              "frequency_penalty", "seed", "max_tokens"]

    static func protoField(_ field: String) -> String {
        if samplingFields.contains(field) { return "sampling." + field }
        // A token index written right after a prompt or continuation: "prompts[0][3]", "items[1].continuation[2]".
        var f = field.replacingOccurrences(of: "][", with: "].ids[")
        for name in [".prompt[", ".continuation["] {
            f = f.replacingOccurrences(of: name, with: name.dropLast() + ".ids[")
        }
        return f
    }
}
