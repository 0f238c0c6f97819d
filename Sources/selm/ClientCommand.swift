import ArgumentParser
import Foundation
import SelmClient
import Tokenizer

/// `selm client <call>`: talk to a running `selm serve` from the shell.
struct Client: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "client",
        abstract: "Call a running `selm serve`: generate, tokenize, score, submit preferences, status, refresh, save, subscribe.",
        discussion: """
        Every call connects to --address (default 127.0.0.1:7070) or --unix PATH, says Hello (with the \
        token in --auth-token-file, if given) and prints the reply. A request the server refuses prints its \
        error code, message and field ("INVALID_ARGUMENT: sampling.top_p: must be in (0, 1]") and exits with status 1.
        """,
        subcommands: [Hello.self, Generate.self, Tokenize.self, Detokenize.self, Score.self, Submit.self,
                      Status.self, Refresh.self, Save.self, Subscribe.self])
}

/// Where the server is and how to authenticate.
struct ClientConnectionOptions: ParsableArguments {
    @Option(help: "The server's TCP address, HOST:PORT (selm serve --address).") var address: String = Endpoint.defaultAddress
    @Option(help: "The server's Unix socket (instead of --address).") var unix: String?
    @Option(help: "File holding the server's auth token (the file of selm serve --auth-token-file).") var authTokenFile: String?
    @Option(name: .customLong("token-file"), help: .hidden) var tokenFile: String?  // deprecated spelling of --auth-token-file
    @Option(help: "Seconds to wait for each reply (default: no limit).") var timeout: Double?

    func validate() throws {
        _ = try resolveSpelling(new: authTokenFile, old: tokenFile, newName: "--auth-token-file", oldName: "--token-file")
    }

    func connect() throws -> SelmClient {
        var token: String? = nil
        if let tokenFile = try resolveSpelling(new: authTokenFile, old: tokenFile, newName: "--auth-token-file", oldName: "--token-file") {
            guard let data = FileManager.default.contents(atPath: tokenFile), let text = String(data: data, encoding: .utf8) else {
                throw CLIError.file(path: tokenFile, reason: "cannot read --auth-token-file")
            }
            token = text.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        return try SelmClient(address: address, unix: unix, token: token, timeout: timeout)
    }
}

/// Checks a request with the rules the server applies (the `Wire` decoder's validation, run on the
/// encoded request), so a bad flag value is a usage error reported before connecting.
/// - Throws: `ValidationError` naming the flag ("--top-p: must be in (0, 1] (got 1.5)") or, for a
///   nested field, its request path ("prompts[1].ids: must not be empty").
func validateRequest(_ body: ClientMessage) throws {
    do { _ = try Frame.decodeClient(Frame.encodeBody(Envelope(id: 1, body: body))) } catch {
        guard case let .invalidField(_, field, reason) = error else { throw ValidationError("\(error)") }
        let name = field.hasPrefix("sampling.") ? String(field.dropFirst("sampling.".count)) : field
        if name.contains(where: { $0 == "." || $0 == "[" }) { throw ValidationError("\(field): \(reason)") }
        throw ValidationError("\(name.count == 1 ? "-" : "--")\(name.replacingOccurrences(of: "_", with: "-")): \(reason)")
    }
}

/// Writes to stdout at once, unbuffered (streamed text and events must not wait for a newline or
/// a full buffer); every output of `selm client` goes through here, so nothing is reordered.
private func emit(_ s: String) {
    FileHandle.standardOutput.write(Data(s.utf8))
}

/// `emit` with a newline.
private func say(_ s: String) { emit(s + "\n") }

private func finishName(_ r: FinishReason) -> String {
    switch r {
    case .unspecified: "unspecified"
    case .eos: "eos"
    case .stop: "stop"
    case .length: "length"
    case .cancelled: "cancelled"
    case .unrecognized(let v): "reason_\(v)"
    }
}

private func topJSON(_ entries: [TopLogprobs]) -> [[[Any]]] {
    entries.map { e in zip(e.tokenIDs, e.logprobs).map { [Int($0), Double($1)] } }
}

private func sampleJSON(_ s: SampleResult) -> [String: Any] {
    var d: [String: Any] = [
        "type": "sample", "prompt_index": Int(s.promptIndex), "sample_index": Int(s.sampleIndex),
        "token_ids": s.tokenIDs.map { Int($0) }, "text": s.text, "logprobs": s.logprobs.map { Double($0) },
        "finish_reason": finishName(s.finishReason), "version": s.version, "first_version": s.firstVersion,
        "prompt_tokens": Int(s.promptTokens), "completion_tokens": Int(s.completionTokens),
    ]
    if !s.topLogprobs.isEmpty { d["top_logprobs"] = topJSON(s.topLogprobs) }
    return d
}

private func chunkJSON(_ c: GenerateChunk) -> [String: Any] {
    var d: [String: Any] = [
        "type": "chunk", "prompt_index": Int(c.promptIndex), "sample_index": Int(c.sampleIndex),
        "token_ids": c.tokenIDs.map { Int($0) }, "text_delta": c.textDelta, "logprobs": c.logprobs.map { Double($0) },
    ]
    if !c.topLogprobs.isEmpty { d["top_logprobs"] = topJSON(c.topLogprobs) }
    return d
}

private func metricsText(_ m: [String: Double]) -> String {
    // A metric without a value this step (logps/pi_response when no row carried a reference
    // response) arrives as NaN and is shown as n/a.
    m.keys.sorted().map { "\($0)=\(m[$0]!.isFinite ? String(format: "%.6g", m[$0]!) : "n/a")" }.joined(separator: " ")
}

extension Client {
    struct Hello: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Connect and print what the server says about itself.")
        @OptionGroup var connection: ClientConnectionOptions
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let client = try connection.connect()
            defer { client.close() }
            let h = client.hello
            if json {
                say(jsonText([
                    "protocol_version": Int(h.protocolVersion), "server_version": h.serverVersion, "model_name": h.modelName,
                    "model_path": h.modelPath, "policy_version": h.policyVersion, "vocab_size": Int(h.vocabSize),
                    "context_length": Int(h.contextLength), "chat_template": h.chatTemplate, "max_frame_bytes": h.maxFrameBytes,
                ] as [String: Any], pretty: true))
                return
            }
            say("""
            server          \(client.endpoint) (selm \(h.serverVersion), protocol \(h.protocolVersion))
            model           \(h.modelName) (\(h.modelPath))
            policy version  \(h.policyVersion)
            vocabulary      \(h.vocabSize) tokens, context \(h.contextLength) tokens
            chat template   \(h.chatTemplate.count > 60 ? String(h.chatTemplate.prefix(57)) + "..." : h.chatTemplate)
            max frame       \(h.maxFrameBytes) bytes
            """)
        }
    }

    struct Generate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Generate completions; prints each sample's text (or JSON lines with --json).")
        @OptionGroup var connection: ClientConnectionOptions
        @Option(help: "A prompt text (repeat for several prompts).") var prompt: [String] = []
        @Option(help: "A prompt as comma-separated token ids (repeatable).") var promptIds: [String] = []
        @Flag(help: "Apply the model's chat template (a text prompt is the user's message).") var chat = false
        @Option(help: "System message (implies --chat).") var system: String?
        @Option(name: .short, help: "Samples per prompt (1…64).") var n: UInt32 = 1
        @Option(help: "Maximum new tokens per sample (default: the server's, 256).") var maxTokens: UInt32?
        @Option(help: "Sampling temperature; 0 = greedy (default: the server's, 1.0).") var temperature: Float?
        @Option(help: "Nucleus sampling mass, in (0, 1] (default: the server's, 1 = off).") var topP: Float?
        @Option(help: "Keep the k most likely tokens (default: the server's, 0 = off).") var topK: UInt32?
        @Option(help: "Drop tokens below min-p × the top probability (default: the server's, 0 = off).") var minP: Float?
        @Option(help: "Repetition penalty (default: the server's, 1 = off).") var repetitionPenalty: Float?
        @Option(help: "Presence penalty (default: the server's, 0 = off).") var presencePenalty: Float?
        @Option(help: "Frequency penalty (default: the server's, 0 = off).") var frequencyPenalty: Float?
        @Option(help: "Random seed (default: a random one per request).") var seed: UInt64?
        @Option(help: "Stop string (repeatable).") var stop: [String] = []
        @Flag(help: "Keep generating past EOS.") var ignoreEos = false
        @Option(help: "Alternatives reported per token (0…20; shown with --json).") var topLogprobs: UInt32 = 0
        @Option(help: "Run on exactly this weight version (default: the current one).") var requireVersion: UInt64?
        @Flag(help: "Move running sequences to newly published versions.") var recompute = false
        @Flag(help: "Print text as it is generated.") var stream = false
        @Flag(help: "Print JSON lines: one per sample (and per chunk with --stream), then a \"done\" line.") var json = false

        /// Sampling flags, n and --prompt-ids are checked here, before connecting.
        func validate() throws {
            if prompt.isEmpty && promptIds.isEmpty { throw ValidationError("give --prompt TEXT or --prompt-ids IDS") }
            if n == 0 { throw ValidationError("-n: must be at least 1") }
            try validateRequest(.generate(try request()))
        }

        func request() throws -> GenerateRequest {
            var prompts: [Prompt] = prompt.map { text in
                if let system { return .messages([ChatMessage(role: "system", content: system), ChatMessage(role: "user", content: text)]) }
                return .text(text)
            }
            for ids in promptIds { prompts.append(.ids(try parseTokenList(ids, field: "--prompt-ids").map { UInt32(bitPattern: $0) })) }
            let sampling = SamplingParams(temperature: temperature, topK: topK, topP: topP, minP: minP,
                                          repetitionPenalty: repetitionPenalty, presencePenalty: presencePenalty,
                                          frequencyPenalty: frequencyPenalty, seed: seed, maxTokens: maxTokens)
            return GenerateRequest(prompts: prompts, chat: chat || system != nil, sampling: sampling, n: n, stop: stop,
                                   ignoreEOS: ignoreEos, stream: stream, topLogprobs: topLogprobs,
                                   requireVersion: requireVersion, recompute: recompute)
        }

        func run() throws {
            let req = try request()
            let client = try connection.connect()
            defer { client.close() }
            let many = req.prompts.count * Int(max(req.n, 1)) > 1
            let s = try client.generateStream(req)
            defer { s.close() }
            // Text is printed live only for a single sample; several samples are printed whole:
            // as each finishes with --stream, in (prompt, sample) order at the end without it.
            var live = false
            while let event = try s.next() {
                switch event {
                case .chunk(let c):
                    if json { say(jsonText(chunkJSON(c))) } else if !many { emit(c.textDelta); live = true }
                case .sample(let r):
                    if json {
                        if stream { say(jsonText(sampleJSON(r))) }
                    } else if !many {
                        if live { emit("\n") } else { say(r.text) }
                        note("[\(sampleInfo(r))]")
                    } else if stream {
                        printSample(r)
                    }
                }
            }
            let ordered = s.samples.sorted { ($0.promptIndex, $0.sampleIndex) < ($1.promptIndex, $1.sampleIndex) }
            if !stream {
                for r in ordered {
                    if json { say(jsonText(sampleJSON(r))) } else if many { printSample(r) }
                }
            }
            if json, let d = s.done {
                say(jsonText(["type": "done", "samples": Int(d.samples), "prompt_tokens": d.promptTokens,
                                "completion_tokens": d.completionTokens] as [String: Any]))
            }
        }
    }
}

private func sampleInfo(_ r: SampleResult) -> String {
    "version \(r.version), \(r.completionTokens) tokens, \(finishName(r.finishReason))"
}

private func printSample(_ r: SampleResult) {
    say("── prompt \(r.promptIndex) sample \(r.sampleIndex) (\(sampleInfo(r))) ──")
    say(r.text)
}

extension Client {
    struct Tokenize: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the server's token ids of a text as a JSON array.")
        @OptionGroup var connection: ClientConnectionOptions
        @Option(help: "The text.") var text: String
        @Flag(help: "Wrap the text as a user turn and apply the chat template.") var chat = false
        @Flag(help: "Parse special-token text such as <|im_start|> as special tokens.") var addSpecial = false

        func run() throws {
            let client = try connection.connect()
            defer { client.close() }
            say(jsonText(try client.tokenize(text, chat: chat, addSpecial: addSpecial).map { Int($0) }))
        }
    }

    struct Detokenize: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the text of token ids.")
        @OptionGroup var connection: ClientConnectionOptions
        @Option(help: "Comma-separated token ids.") var tokens: String

        func validate() throws { _ = try parseTokenList(tokens, field: "--tokens") }

        func run() throws {
            let ids = try parseTokenList(tokens, field: "--tokens").map { UInt32(bitPattern: $0) }
            let client = try connection.connect()
            defer { client.close() }
            say(try client.detokenize(ids))
        }
    }

    struct Score: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the log-probabilities of a continuation given a prompt (teacher forcing).")
        @OptionGroup var connection: ClientConnectionOptions
        @Option(help: "The prompt text.") var prompt: String?
        @Option(help: "The prompt as comma-separated token ids.") var promptIds: String?
        @Option(help: "The continuation text.") var continuation: String?
        @Option(help: "The continuation as comma-separated token ids.") var continuationIds: String?
        @Flag(help: "Apply the chat template to the prompt.") var chat = false
        @Option(help: "Score under this weight version (default: the current one).") var version: UInt64?
        @Option(help: "Alternatives reported per token (0…20).") var topLogprobs: UInt32 = 0
        @Flag(help: "Also print the entropy (nats) of the model's full next-token distribution at each token.") var entropy = false
        @Flag(help: "Print JSON.") var json = false

        func validate() throws {
            if (prompt == nil) == (promptIds == nil) { throw ValidationError("give exactly one of --prompt and --prompt-ids") }
            if (continuation == nil) == (continuationIds == nil) {
                throw ValidationError("give exactly one of --continuation and --continuation-ids")
            }
            try validateRequest(.score(try request()))
        }

        func request() throws -> ScoreRequest {
            let p: Prompt = if let prompt { .text(prompt) } else {
                .ids(try parseTokenList(promptIds!, field: "--prompt-ids").map { UInt32(bitPattern: $0) })
            }
            let c: Response = if let continuation { .text(continuation) } else {
                .ids(try parseTokenList(continuationIds!, field: "--continuation-ids").map { UInt32(bitPattern: $0) })
            }
            return ScoreRequest(items: [ScoreItem(prompt: p, continuation: c)], chat: chat, version: version, topLogprobs: topLogprobs,
                                entropy: entropy)
        }

        func run() throws {
            let req = try request()
            let client = try connection.connect()
            defer { client.close() }
            let reply = try client.score(req)
            guard let item = reply.items.first else { throw SelmClientError.protocolViolation("score reply without items") }
            if json {
                var d: [String: Any] = ["version": reply.version, "token_ids": item.tokenIDs.map { Int($0) },
                                        "logprobs": item.logprobs.map { Double($0) }, "total_logprob": item.totalLogprob]
                if !item.topLogprobs.isEmpty { d["top_logprobs"] = topJSON(item.topLogprobs) }
                if !item.entropies.isEmpty { d["entropies"] = item.entropies.map { Double($0) } }
                say(jsonText(d))
                return
            }
            say("total log-prob \(String(format: "%.6f", item.totalLogprob)) over \(item.tokenIDs.count) tokens (version \(reply.version))")
            for (i, (id, lp)) in zip(item.tokenIDs, item.logprobs).enumerated() {
                let h = i < item.entropies.count ? "\t" + String(format: "%.6f", item.entropies[i]) : ""
                say("\(id)\t\(String(format: "%.6f", lp))" + h)
            }
        }
    }

    struct Submit: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Submit preference rows from a JSONL file, in batches; prints each batch's WAL acknowledgement.",
            discussion: """
            One JSON object per line, as TRL writes them (read as `selm train` reads them): "prompt", \
            "chosen", "rejected" and optionally "reference_response" as text (a prompt may also be a list \
            of {"role", "content"} messages), or token ids: "prompt_ids", "chosen_ids", "rejected_ids", \
            "reference_ids". Optional "weight" (0 = 1.0) and "source". Other keys are ignored. \
            With a conversational prompt, responses may be lists of messages too (ending with the \
            assistant's); they are sent as messages and the server encodes them as TRL (and `selm \
            train`) does.
            """)
        @OptionGroup var connection: ClientConnectionOptions
        @Option(help: "The JSONL file (- for stdin).") var data: String
        @Option(help: "Rows per request.") var batchSize = 64
        @Flag(help: "Apply the chat template to text prompts.") var chat = false
        @Option(help: "Provenance for rows without a \"source\".") var source: String?
        @Flag(help: "Print each acknowledgement as a JSON line.") var json = false

        func validate() throws {
            if batchSize < 1 { throw ValidationError("--batch-size must be at least 1") }
        }

        func run() throws {
            let rows = try PreferenceRows.read(data, defaultSource: source ?? "")
            if rows.isEmpty { throw CLIError.file(path: data, reason: "--data holds no rows") }
            let client = try connection.connect()
            defer { client.close() }
            var first = 0
            while first < rows.count {
                let batch = Array(rows[first..<min(first + batchSize, rows.count)])
                let ack: PreferenceAck
                do { ack = try client.submitPreferences(batch.map(\.row), chat: chat) } catch let e {
                    // Name the file line of a refused row ("rows[3].chosen" → line of row 3 of this batch).
                    if case .server(_, _, let field, _) = e, let i = PreferenceRows.rowIndex(field), i < batch.count {
                        throw CLIError.line(path: data, line: batch[i].line, reason: "row refused by the server: \(e)")
                    }
                    throw e
                }
                if json {
                    say(jsonText(["first_row": first + 1, "rows": Int(ack.rows), "first_sequence": ack.firstSequence,
                                    "last_sequence": ack.lastSequence] as [String: Any]))
                } else {
                    say("rows \(first + 1)-\(first + batch.count): acknowledged \(ack.rows) rows, WAL sequence \(ack.firstSequence)\(ack.lastSequence != ack.firstSequence ? "-\(ack.lastSequence)" : "")")
                }
                first += batch.count
            }
            if !json { say("submitted \(rows.count) rows") }
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the server's state: versions, learner, WAL, queue, KV cache.")
        @OptionGroup var connection: ClientConnectionOptions
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let client = try connection.connect()
            defer { client.close() }
            let s = try client.status()
            if json {
                say(jsonText([
                    "policy_version": s.policyVersion, "reference_version": s.referenceVersion,
                    "learner_step": s.learnerStep, "learner_metrics": s.learnerMetrics,
                    "wal_last_sequence": s.walLastSequence, "wal_consumed_sequence": s.walConsumedSequence,
                    "waiting_requests": Int(s.waitingRequests), "running_sequences": Int(s.runningSequences),
                    "kv_blocks_used": Int(s.kvBlocksUsed), "kv_blocks_total": Int(s.kvBlocksTotal),
                    "generated_tokens_per_second": s.generatedTokensPerSecond, "uptime_seconds": s.uptimeSeconds,
                    "live_versions": Int(s.liveVersions), "connections": Int(s.connections),
                    "data_dir_bytes": s.dataDirBytes, "disk_free_bytes": s.diskFreeBytes, "checkpoints": Int(s.checkpoints),
                ] as [String: Any], pretty: true))
                return
            }
            say("""
            policy version   \(s.policyVersion) (\(s.liveVersions) live)\(s.referenceVersion > 0 ? ", reference version \(s.referenceVersion)" : "")
            learner          step \(s.learnerStep)\(s.learnerMetrics.isEmpty ? "" : ": " + metricsText(s.learnerMetrics))
            WAL              last sequence \(s.walLastSequence), consumed \(s.walConsumedSequence)
            requests         \(s.waitingRequests) waiting, \(s.runningSequences) sequences running
            KV cache         \(s.kvBlocksUsed) / \(s.kvBlocksTotal) blocks
            throughput       \(String(format: "%.1f", s.generatedTokensPerSecond)) tokens/s
            connections      \(s.connections)
            data directory   \(String(format: "%.2f", Double(s.dataDirBytes) / 1e9)) GB used, \(String(format: "%.2f", Double(s.diskFreeBytes) / 1e9)) GB free, \(s.checkpoints) checkpoints
            uptime           \(String(format: "%.1f", s.uptimeSeconds)) s
            """)
        }
    }

    struct Refresh: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Load a checkpoint from the server's data directory and publish it as a new version.")
        @OptionGroup var connection: ClientConnectionOptions
        @Option(name: [.customLong("checkpoint"), .customLong("name")],
                help: "Checkpoint path relative to the server's data directory (the path `selm client save` printed, checkpoints/NAME).")
        var checkpoint: String

        func run() throws {
            let client = try connection.connect()
            defer { client.close() }
            let version = try client.refreshWeights(checkpoint: checkpoint)
            say("published \(checkpoint) as version \(version)")
        }
    }

    struct Save: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Write a checkpoint of the learner's state.")
        @OptionGroup var connection: ClientConnectionOptions
        @Option(help: "Checkpoint name, saved as checkpoints/NAME in the data directory: A-Z a-z 0-9 . _ - (default: step-<learner step>).") var name: String?
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let client = try connection.connect()
            defer { client.close() }
            let r = try client.saveCheckpoint(name: name ?? "")
            if json {
                say(jsonText(["path": r.path, "learner_step": r.learnerStep, "wal_sequence": r.walSequence,
                                "version": r.version] as [String: Any]))
            } else {
                say("saved \(r.path) (learner step \(r.learnerStep), WAL sequence \(r.walSequence), version \(r.version))")
            }
        }
    }

    struct Subscribe: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print weight-version events as they come (the current version first); stop with Ctrl-C.")
        @OptionGroup var connection: ClientConnectionOptions
        @Option(help: "Stop after this many events (default: run until interrupted).") var count: Int?
        @Flag(help: "Print JSON lines.") var json = false

        func run() throws {
            let client = try connection.connect()
            defer { client.close() }
            let sub = try client.subscribeVersions()
            defer { sub.close() }
            var seen = 0
            while count.map({ seen < $0 }) ?? true, let e = try sub.next() {
                seen += 1
                if json {
                    say(jsonText(["version": e.version, "learner_step": e.learnerStep, "metrics": e.metrics,
                                    "unix_time": e.unixTime] as [String: Any]))
                } else {
                    let time = ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: e.unixTime))
                    say("version \(e.version)  step \(e.learnerStep)  \(time)\(e.metrics.isEmpty ? "" : "  " + metricsText(e.metrics))")
                }
            }
        }
    }
}

/// Preference rows read from JSONL by the shared TRL row parser (`TRLRow`, as `selm train` reads
/// them) and turned into wire rows; the server encodes their text by the same rule as `selm train`.
enum PreferenceRows {
    struct Entry {
        var row: PreferenceRow
        /// 1-based line in the file.
        var line: Int
    }

    /// The row index of a field path like "rows[3].chosen".
    static func rowIndex(_ field: String) -> Int? {
        guard field.hasPrefix("rows["), let close = field.firstIndex(of: "]") else { return nil }
        return Int(field[field.index(field.startIndex, offsetBy: 5)..<close])
    }

    /// - Throws: `TRLRowError` naming "path:line" and the field (the parser's rules: a
    ///   conversational response needs a conversational prompt and ends with the assistant's turn).
    static func read(_ path: String, defaultSource: String) throws -> [Entry] {
        let data: Data
        if path == "-" { data = FileHandle.standardInput.readDataToEndOfFile() } else {
            guard let d = FileManager.default.contents(atPath: path) else { throw CLIError.file(path: path, reason: "cannot read --data") }
            data = d
        }
        return try TRLRow.read(jsonl: data, name: path).map { row, line in
            Entry(row: wireRow(row, defaultSource: defaultSource), line: line)
        }
    }

    static func wireRow(_ r: TRLRow, defaultSource: String) -> PreferenceRow {
        func ids(_ i: [Int32]) -> [UInt32] { i.map { UInt32(bitPattern: $0) } }
        func messages(_ m: [ChatTurn]) -> [ChatMessage] { m.map { ChatMessage(role: $0.role, content: $0.content) } }
        // A conversational response travels as messages; the server encodes it as TRL does.
        func response(_ x: TRLRow.Response) -> Response {
            switch x {
            case .text(let t): return .text(t)
            case .ids(let i): return .ids(ids(i))
            case .messages(let m): return .messages(messages(m))
            }
        }
        let prompt: Prompt
        switch r.prompt {
        case .text(let t): prompt = .text(t)
        case .messages(let m): prompt = .messages(messages(m))
        case .ids(let i): prompt = .ids(ids(i))
        }
        return PreferenceRow(prompt: prompt, chosen: response(r.chosen), rejected: response(r.rejected),
                             reference: r.reference.map(response), weight: r.weight, source: r.source ?? defaultSource)
    }
}
